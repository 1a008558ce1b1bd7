//! MI's documented rules for what it accepts, applied before any call (docs/service.md, "Media the
//! service accepts"). Pure: a key and what is known of its size in, a reason to skip out.
//!
//! Resolution, duration and codec cannot be known from a listing; MI reports those through
//! import-status as `INVALID_METADATA`.

/// Largest video MI accepts: 10 GB.
pub const MAX_VIDEO_BYTES: u64 = 10 * 1000 * 1000 * 1000;
/// Largest image MI accepts: 10 MB.
pub const MAX_IMAGE_BYTES: u64 = 10 * 1000 * 1000;
/// Longest key Object Storage holds, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

const VIDEO: &[&str] = &["mp4", "mkv", "mov", "webm"];
// `.jpeg` is not in MI's list; it is refused until the service is known to take it.
const IMAGE: &[&str] = &["jpg", "png", "heic"];

/// What kind of media a key names, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Video,
    Image,
}

/// The media kind of a key, if MI takes its extension (case-insensitive).
pub fn media_kind(key: &str) -> Option<Media> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let (_, ext) = name.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    if VIDEO.contains(&ext.as_str()) {
        Some(Media::Video)
    } else if IMAGE.contains(&ext.as_str()) {
        Some(Media::Image)
    } else {
        None
    }
}

/// Why MI would refuse this key, or `None` if it may be sent. `size` is checked only when known.
pub fn refusal(key: &str, size: Option<u64>) -> Option<String> {
    if key.is_empty() {
        return Some("empty key".into());
    }
    if key.ends_with('/') {
        return Some("folder marker (key ends with /)".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Some("key longer than 1,024 bytes".into());
    }
    let Some(kind) = media_kind(key) else {
        let ext = key
            .rsplit('/')
            .next()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| e);
        return Some(match ext {
            Some(e) => format!("unsupported format .{e} (MI takes mp4 mkv mov webm jpg png heic)"),
            None => "no file extension (MI takes mp4 mkv mov webm jpg png heic)".into(),
        });
    };
    let limit = match kind {
        Media::Video => MAX_VIDEO_BYTES,
        Media::Image => MAX_IMAGE_BYTES,
    };
    match size {
        Some(0) => Some("empty object (0 bytes)".into()),
        Some(s) if s > limit => Some(format!(
            "too large: {s} bytes, MI takes {} up to {limit} bytes",
            if kind == Media::Video {
                "video"
            } else {
                "images"
            }
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_formats_in_any_case() {
        for k in [
            "a.mp4",
            "x/y/B.MKV",
            "c.Mov",
            "d.webm",
            "e.jpg",
            "f.PNG",
            "g.heic",
        ] {
            assert_eq!(refusal(k, None), None, "{k}");
        }
    }

    #[test]
    fn refuses_other_formats_folders_and_extensionless_keys() {
        assert!(refusal("a.avi", None).unwrap().contains(".avi"));
        assert!(refusal("a.jpeg", None).unwrap().contains(".jpeg"));
        assert!(refusal("dir/", None).unwrap().contains("folder"));
        assert!(
            refusal("dir.mp4/README", None)
                .unwrap()
                .contains("no file extension")
        );
        assert!(refusal("", None).is_some());
    }

    #[test]
    fn size_rules_apply_only_when_size_is_known() {
        assert_eq!(refusal("big.jpg", None), None);
        assert_eq!(refusal("ok.jpg", Some(MAX_IMAGE_BYTES)), None);
        assert!(
            refusal("big.jpg", Some(MAX_IMAGE_BYTES + 1))
                .unwrap()
                .contains("too large")
        );
        assert!(refusal("big.mp4", Some(MAX_VIDEO_BYTES + 1)).is_some());
        assert!(refusal("empty.mp4", Some(0)).unwrap().contains("0 bytes"));
    }
}
