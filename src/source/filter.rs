//! The user's own filters, on top of MI's rules: globs, sizes, modification times, and a
//! settle window. Pure. A key a filter leaves out is not the run's business: it is not
//! recorded at all, so a later run (a wider filter, an object that has settled) still finds
//! it new. A rule that needs a fact the source does not give (a manifest without sizes) is
//! not applied.

use anyhow::{Context, Result, bail};
use globset::{GlobSet, GlobSetBuilder};
use std::time::{Duration, SystemTime};

/// Why a key was left out, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    Pattern,
    Size,
    Modified,
    /// Modified within `--min-age`: perhaps still being uploaded; the next run looks again.
    Settling,
}

/// The filters of one run.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// The glob patterns as given, for [`Filters::fingerprint`].
    patterns: (Vec<String>, Vec<String>),
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub modified_after: Option<SystemTime>,
    pub modified_before: Option<SystemTime>,
    pub min_age: Option<Duration>,
}

impl Filters {
    /// Globs match the whole key (`*` stays within one path segment, `**` crosses them).
    pub fn with_globs(mut self, include: &[String], exclude: &[String]) -> Result<Self> {
        self.include = glob_set(include, "--include")?;
        self.exclude = glob_set(exclude, "--exclude")?;
        self.patterns = (include.to_vec(), exclude.to_vec());
        Ok(self)
    }

    /// Every setting, as text: two runs with the same text keep the same keys.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.patterns,
            self.min_size,
            self.max_size,
            self.modified_after,
            self.modified_before,
            self.min_age,
        )
    }

    /// `None` if the key is in; else which rule left it out.
    pub fn verdict(
        &self,
        key: &str,
        size: Option<u64>,
        modified: Option<SystemTime>,
        now: SystemTime,
    ) -> Option<Left> {
        if self.include.as_ref().is_some_and(|g| !g.is_match(key))
            || self.exclude.as_ref().is_some_and(|g| g.is_match(key))
        {
            return Some(Left::Pattern);
        }
        if let Some(size) = size
            && (self.min_size.is_some_and(|m| size < m) || self.max_size.is_some_and(|m| size > m))
        {
            return Some(Left::Size);
        }
        if let Some(modified) = modified {
            if self.modified_after.is_some_and(|t| modified <= t)
                || self.modified_before.is_some_and(|t| modified >= t)
            {
                return Some(Left::Modified);
            }
            if self
                .min_age
                .is_some_and(|age| now.duration_since(modified).unwrap_or_default() < age)
            {
                return Some(Left::Settling);
            }
        }
        None
    }
}

fn glob_set(patterns: &[String], flag: &str) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .with_context(|| {
                format!("{flag} `{p}` is not a valid glob\nhint: e.g. {flag} '**/*.mp4'")
            })?;
        set.add(glob);
    }
    Ok(Some(set.build()?))
}

/// A size like `500`, `10MB`, `1.5GiB` (decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB).
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a size\nhint: e.g. 500, 10MB, 2GiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => bail!(
            "unknown size unit `{other}` in `{text}`\nhint: use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB"
        ),
    };
    Ok((number * factor as f64).round() as u64)
}

/// A time like `2024-05-01` or `2024-05-01T12:00:00Z` (UTC).
pub fn parse_time(text: &str) -> Result<SystemTime> {
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    humantime::parse_rfc3339_weak(full.trim_end_matches('Z')).with_context(|| {
        format!("`{text}` is not a date\nhint: use 2024-05-01 or 2024-05-01T12:00:00Z (UTC)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        parse_time("2026-11-28T12:00:00Z").unwrap()
    }

    #[test]
    fn globs_match_whole_keys() {
        let f = Filters::default()
            .with_globs(
                &["**/*.mp4".into(), "stills/*.jpg".into()],
                &["**/tmp/**".into()],
            )
            .unwrap();
        assert_eq!(f.verdict("a/b/c.mp4", None, None, now()), None);
        assert_eq!(f.verdict("stills/x.jpg", None, None, now()), None);
        assert_eq!(
            f.verdict("stills/deep/x.jpg", None, None, now()),
            Some(Left::Pattern)
        );
        assert_eq!(
            f.verdict("a/tmp/c.mp4", None, None, now()),
            Some(Left::Pattern)
        );
        assert!(Filters::default().with_globs(&["a[".into()], &[]).is_err());
    }

    #[test]
    fn size_rules_apply_only_when_the_size_is_known() {
        let f = Filters {
            min_size: Some(10),
            max_size: Some(100),
            ..Default::default()
        };
        assert_eq!(f.verdict("k", Some(5), None, now()), Some(Left::Size));
        assert_eq!(f.verdict("k", Some(500), None, now()), Some(Left::Size));
        assert_eq!(f.verdict("k", Some(50), None, now()), None);
        assert_eq!(f.verdict("k", None, None, now()), None);
    }

    #[test]
    fn times_and_settle_window() {
        let f = Filters {
            modified_after: Some(parse_time("2026-01-01").unwrap()),
            min_age: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let old = parse_time("2025-06-01").unwrap();
        let fresh = now() - Duration::from_secs(60);
        let settled = now() - Duration::from_secs(7200);
        assert_eq!(f.verdict("k", None, Some(old), now()), Some(Left::Modified));
        assert_eq!(
            f.verdict("k", None, Some(fresh), now()),
            Some(Left::Settling)
        );
        assert_eq!(f.verdict("k", None, Some(settled), now()), None);
        assert_eq!(f.verdict("k", None, None, now()), None);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("500").unwrap(), 500);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("1.5GiB").unwrap(), 1_610_612_736);
        assert!(parse_size("ten").unwrap_err().to_string().contains("hint:"));
        assert!(parse_size("5XB").is_err());
    }
}
