//! The bucket source: NCP Object Storage listed page by page with ListObjects (v1).
//!
//! ListObjects v1 is what every S3-compatible server answers (NCP's older documentation said
//! its Object Storage refuses ListObjectsV2; its current documentation describes V2 too), and
//! the SDK's paginator exists only for V2: this is a loop on `marker`, taking `NextMarker`
//! when the service sends one and the last key of the page otherwise. Keys are asked for URL-encoded (XML cannot carry every byte a key may hold)
//! and decoded here. Pages may come in no particular order; the ledger de-duplicates.

use anyhow::{Result, bail};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials as S3Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::list_objects::ListObjectsError;
use aws_sdk_s3::types::EncodingType;
use percent_encoding::percent_decode_str;
use std::time::{Duration, SystemTime};

use crate::config::Credentials;
use crate::retry::{Backoff, Disposition, Retryable};

/// Keys per page: the most ListObjects returns.
pub const PAGE_SIZE: i32 = 1000;
/// Listing requests at once by default: rclone's default for its listing workers (checkers),
/// few enough to stay far from any per-account limit of Object Storage.
pub const DEFAULT_LIST_CONCURRENCY: usize = 8;

/// NCP Object Storage regions and their endpoints (docs/service.md, "Object Storage").
pub const REGIONS: &[(&str, &str)] = &[
    ("kr-standard", "https://kr.object.ncloudstorage.com"),
    ("us-standard", "https://us.object.ncloudstorage.com"),
    ("sg-standard", "https://sg.object.ncloudstorage.com"),
    ("jp-standard", "https://jp.object.ncpstorage.com"),
    ("de-standard", "https://de.object.ncloudstorage.com"),
];
pub const DEFAULT_REGION: &str = "kr-standard";

/// Where Object Storage is and how to read it, for listings named later (a run without a
/// source continues the listings an earlier run left unfinished).
#[derive(Debug, Clone)]
pub struct S3Place {
    pub endpoint: String,
    pub region: String,
    pub credentials: Credentials,
}

impl S3Place {
    pub fn spec(&self, bucket: String, prefix: String) -> BucketSpec {
        BucketSpec {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket,
            prefix,
            credentials: self.credentials.clone(),
        }
    }
}

/// Where to list.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub credentials: Credentials,
}

/// The endpoint for `region`, unless the user named one.
pub fn endpoint_for(region: &str, endpoint: Option<String>) -> Result<String> {
    if let Some(endpoint) = endpoint {
        return Ok(endpoint.trim_end_matches('/').to_owned());
    }
    match REGIONS.iter().find(|(name, _)| *name == region) {
        Some((_, url)) => Ok((*url).to_owned()),
        None => bail!(
            "unknown Object Storage region `{region}`\nhint: one of {}, or pass --s3-endpoint",
            REGIONS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// S3 credentials: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` when both are set, else the
/// NCP key pair (Object Storage accepts it).
pub fn s3_credentials(ncp: &Credentials) -> Credentials {
    match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Ok(a), Ok(s)) if !a.is_empty() && !s.is_empty() => Credentials::new(a, s),
        _ => ncp.clone(),
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The key, decoded; for a key that cannot be decoded, the text as Object Storage sent it.
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// Why the key cannot be imported as listed (it does not decode, or holds a NUL): it is
    /// recorded `skipped` with this reason, and the listing goes on.
    pub problem: Option<String>,
}

/// One page, and where the next starts (`None`: the listing is complete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub objects: Vec<Object>,
    /// Folders directly below the listed prefix (asked for with a delimiter).
    pub subfolders: Vec<String>,
    pub next_marker: Option<String>,
}

/// A failed page.
#[derive(Debug, Clone, thiserror::Error)]
#[error("listing bucket `{bucket}`: {}", crate::escape::shown(message))]
pub struct ListError {
    pub bucket: String,
    pub message: String,
    pub status: Option<u16>,
    pub retryable: bool,
}

impl ListError {
    pub fn hint(&self) -> &'static str {
        if self.message.contains("does not advance") {
            return "Object Storage (or a proxy before it) does not follow the listing's marker; check --s3-endpoint, or list a narrower --prefix";
        }
        match self.status {
            Some(401 | 403) => {
                "check that the key pair may read this bucket (or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            }
            Some(404) => "check --bucket, --s3-region and --s3-endpoint",
            _ => "check --s3-endpoint and the network; run again to resume the listing",
        }
    }
}

/// A page's outcome, for the retry loop.
struct Listed(Result<Page, ListError>);

impl Retryable for Listed {
    fn disposition(&self) -> Disposition {
        match &self.0 {
            Ok(_) => Disposition::Success,
            Err(e) if e.retryable => Disposition::Retry { after: None },
            Err(_) => Disposition::Fatal,
        }
    }
}

/// Lists one bucket prefix.
pub struct Lister {
    client: aws_sdk_s3::Client,
    endpoint: String,
    bucket: String,
    prefix: String,
}

impl Lister {
    pub fn new(spec: &BucketSpec, timeout: Duration) -> Self {
        let credentials = S3Credentials::new(
            spec.credentials.access_key(),
            spec.credentials.secret_key(),
            None,
            None,
            "mi-import",
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&spec.endpoint)
            .region(Region::new(spec.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true)
            .http_client(super::s3_http::http_client())
            .interceptor(super::s3_http::BoundedAnswers)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(timeout)
                    .build(),
            )
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            endpoint: spec.endpoint.clone(),
            bucket: spec.bucket.clone(),
            prefix: spec.prefix.clone(),
        }
    }

    /// Asks for the bucket (HeadBucket), to learn before anything else whether it exists and
    /// may be read: an input error (exit 2) naming the bucket if not.
    pub async fn check_bucket(&self) -> anyhow::Result<()> {
        let answer = self.client.head_bucket().bucket(&self.bucket).send().await;
        let Err(error) = answer else {
            return Ok(());
        };
        let (b, at) = (&self.bucket, &self.endpoint);
        let text = match &error {
            SdkError::ServiceError(ctx) => match ctx.raw().status().as_u16() {
                404 => format!(
                    "bucket `{b}` does not exist at {at}\nhint: check --bucket, and --s3-region or --s3-endpoint"
                ),
                status @ (401 | 403) => format!(
                    "the key pair may not read bucket `{b}` at {at} (HTTP {status})\nhint: check that the key pair may read this bucket (or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
                ),
                status => format!(
                    "cannot read bucket `{b}` at {at} (HTTP {status})\nhint: check --s3-endpoint, and try again later"
                ),
            },
            other => format!(
                "cannot reach Object Storage at {at}: {}\nhint: check --s3-endpoint (or --s3-region) and the network",
                root_cause(other)
            ),
        };
        Err(crate::exit::input(anyhow::anyhow!(text)))
    }

    /// The prefix this lister was made for.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// [`Lister::page`], retried as its answers say, up to `attempts`; with whether `stop`
    /// cut the retries short (the error is then not the listing's own).
    pub async fn page_retried(
        &self,
        prefix: &str,
        marker: Option<&str>,
        flat: bool,
        attempts: u32,
        backoff: Backoff,
        stop: &tokio_util::sync::CancellationToken,
    ) -> (Result<Page, ListError>, bool) {
        let finished = crate::retry::with_retries(attempts, backoff, stop, |_| async {
            Listed(self.page(prefix, marker, flat).await)
        })
        .await;
        (finished.last.0, finished.interrupted)
    }

    /// The page of `prefix` after `marker` (from the start when `None`): everything below the
    /// prefix (`flat`), or its objects and its subfolders (with a `/` delimiter).
    pub async fn page(
        &self,
        prefix: &str,
        marker: Option<&str>,
        flat: bool,
    ) -> Result<Page, ListError> {
        let answer = self
            .client
            .list_objects()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter((!flat).then(|| "/".to_owned()))
            .max_keys(PAGE_SIZE)
            .encoding_type(EncodingType::Url)
            .set_marker(marker.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let encoded = answer.encoding_type() == Some(&EncodingType::Url);
        let decode = |text: &str| {
            if encoded {
                decode_key(text)
            } else {
                Ok(text.to_owned())
            }
        };
        let mut objects = Vec::with_capacity(answer.contents().len());
        for object in answer.contents() {
            // A page that does not parse whole is an answer that broke off, never a page of
            // fewer objects (or of empty ones).
            let (Some(raw), Some(size)) = (object.key(), object.size()) else {
                return Err(ListError {
                    retryable: true,
                    ..self.bad(format!(
                        "a listed object without a Key or a Size after marker {}: the page did not parse whole",
                        shown_marker(marker)
                    ))
                });
            };
            let (key, problem) = match decode(raw) {
                Ok(key) => {
                    let problem = crate::source::key_problem(&key);
                    (key, problem)
                }
                Err(why) => (
                    raw.to_owned(),
                    Some(format!("{why} (kept as listed, encoded)")),
                ),
            };
            objects.push(Object {
                key,
                size: size.max(0) as u64,
                etag: object.e_tag().map(|e| e.trim_matches('"').to_owned()),
                last_modified: object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok()),
                problem,
            });
        }
        let mut subfolders = Vec::with_capacity(answer.common_prefixes().len());
        for folder in answer.common_prefixes() {
            let Some(raw) = folder.prefix() else { continue };
            subfolders.push(decode(raw).map_err(|m| self.bad(format!("folder `{raw}`: {m}")))?);
        }
        let next_marker = if answer.is_truncated() == Some(true) {
            // Without NextMarker, the page ends at its greatest key, or past its greatest
            // folder (everything below it is the folder's own part).
            let last = objects
                .last()
                .map(|o| o.key.clone())
                .into_iter()
                .chain(subfolders.last().map(|f| past_folder(f)))
                .max();
            // The service's NextMarker where it gives one; never a marker that would bring
            // the page's last folder back.
            let next = match answer.next_marker() {
                Some(m) => Some(decode(m).map_err(|e| self.bad(format!("next marker: {e}")))?),
                None => None,
            }
            .into_iter()
            .chain(last)
            .max();
            match (&next, marker) {
                (None, _) => {
                    return Err(self.bad(format!(
                        "a truncated page with no keys and no next marker after marker {}, under prefix `{}`",
                        shown_marker(marker),
                        crate::escape::shown(prefix)
                    )));
                }
                // A marker that does not move on would list the same page for ever.
                (Some(next), Some(was)) if next.as_str() <= was => {
                    return Err(self.bad(format!(
                        "the listing does not advance: after marker {} under prefix `{}`, Object Storage points back to {}",
                        shown_marker(marker),
                        crate::escape::shown(prefix),
                        shown_marker(Some(next))
                    )));
                }
                _ => {}
            }
            next
        } else {
            None
        };
        Ok(Page {
            objects,
            subfolders,
            next_marker,
        })
    }

    /// A listing error that retrying cannot mend.
    fn bad(&self, message: String) -> ListError {
        ListError {
            bucket: self.bucket.clone(),
            message,
            status: None,
            retryable: false,
        }
    }

    fn error(&self, error: SdkError<ListObjectsError, HttpResponse>) -> ListError {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        let (status, retryable, message) = match &error {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let code = ctx.err().code().unwrap_or("error");
                let text = ctx.err().message().unwrap_or("");
                (
                    Some(status),
                    status == 429 || status >= 500,
                    format!(
                        "HTTP {status} {code}{}{text}",
                        if text.is_empty() { "" } else { ": " }
                    ),
                )
            }
            SdkError::TimeoutError(_) => (None, true, "timed out".to_owned()),
            SdkError::DispatchFailure(_) => (
                None,
                true,
                format!("cannot reach Object Storage: {}", root_cause(&error)),
            ),
            SdkError::ResponseError(_) => (
                None,
                true,
                format!("the answer broke off: {}", root_cause(&error)),
            ),
            other => (
                None,
                false,
                aws_sdk_s3::error::DisplayErrorContext(other).to_string(),
            ),
        };
        ListError {
            bucket: self.bucket.clone(),
            message,
            status,
            retryable,
        }
    }
}

/// A marker for a message: quoted and escaped, or "none" for the start.
fn shown_marker(marker: Option<&str>) -> String {
    match marker {
        Some(m) => format!("`{}`", crate::escape::shown(m)),
        None => "none (the first page)".into(),
    }
}

/// The root cause of a failed request (refused, DNS, TLS), in one line.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        last = e.to_string();
        source = e.source();
    }
    last
}

/// A marker past (practically) every key below `folder`, and before any key that is not
/// below it, so the next page of its parent does not name the folder again: the folder
/// followed by the greatest character there is. (A key below it that itself began with that
/// character would only bring the folder back once more, which the ledger takes as known.)
pub fn past_folder(folder: &str) -> String {
    format!("{folder}{}", char::MAX.to_string().repeat(4))
}

/// Decodes a key S3 sent URL-encoded: `%XX` escapes, and `+` for a space (as S3 encodes, and
/// as botocore and the AWS Java SDK decode).
pub fn decode_key(text: &str) -> Result<String, &'static str> {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| "the decoded key is not valid UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_percent_escapes_and_plus() {
        assert_eq!(
            decode_key("a+b%2Bc%25d%2F%ED%95%9C.mp4").unwrap(),
            "a b+c%d/한.mp4"
        );
        assert_eq!(decode_key("plain/key.mp4").unwrap(), "plain/key.mp4");
        assert!(decode_key("%FF").is_err());
    }

    #[test]
    fn a_marker_past_a_folder_skips_all_below_it_and_nothing_after() {
        let marker = past_folder("2024/05/");
        for below in ["2024/05/zzz.mp4", "2024/05/\u{10FFFF}", "2024/05/한국.mp4"] {
            assert!(below < marker.as_str(), "{below}");
        }
        for after in ["2024/050", "2024/050-late.mp4", "2024/06/a.mp4", "2024/05~"] {
            assert!(after > marker.as_str(), "{after}");
        }
    }

    #[test]
    fn regions_resolve_to_their_endpoints() {
        assert_eq!(
            endpoint_for("kr-standard", None).unwrap(),
            "https://kr.object.ncloudstorage.com"
        );
        assert_eq!(
            endpoint_for("jp-standard", None).unwrap(),
            "https://jp.object.ncpstorage.com"
        );
        assert_eq!(
            endpoint_for("xx", Some("http://127.0.0.1:9/".into())).unwrap(),
            "http://127.0.0.1:9"
        );
        let err = endpoint_for("mars-standard", None).unwrap_err().to_string();
        assert!(
            err.contains("de-standard") && err.contains("hint:"),
            "{err}"
        );
    }
}
