//! Resolved, validated settings: credentials, endpoints, limits.
//!
//! The command line (`cli.rs`) gives raw values; this module turns them into types the rest of
//! the program can trust, and owns every default. Secrets live only in [`Credentials`], whose
//! `Debug` prints no secret, so no log line or error can leak one by accident.

use anyhow::{Context, Result, bail};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// MI's public endpoint. The old host `maiu.apigw.ntruss.com` predates the service's rename.
pub const DEFAULT_ENDPOINT: &str = "https://mi.apigw.ntruss.com";
/// Requests per second when the user sets none: MI documents no limit for the import call, and
/// another MI call states 1,000 per minute; 10/s stays well under that.
pub const DEFAULT_RATE: f64 = 10.0;
/// Requests in flight when the user sets none: enough to hide latency at the default rate.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Attempts per key before it is `failed`; covers a few minutes of 429s and 5xx.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Per-request timeout: MI answers in well under a second when healthy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The ledger file when `--db` is not given.
pub const DEFAULT_DB: &str = "mi-import.db";

pub const ENV_ACCESS_KEY: &str = "NCLOUD_ACCESS_KEY";
pub const ENV_SECRET_KEY: &str = "NCLOUD_SECRET_KEY";
/// Names the profile of `~/.ncloud/configure` to use, as `--profile` does.
pub const ENV_PROFILE: &str = "NCLOUD_PROFILE";

/// An NCP key pair. The secret never leaves through `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key: String,
    secret_key: String,
}

impl Credentials {
    pub fn new(access_key: String, secret_key: String) -> Self {
        Self {
            access_key,
            secret_key,
        }
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// From `~/.ncloud/configure`'s `profile` when one is named (`--profile`, or
    /// `NCLOUD_PROFILE`); else from `NCLOUD_ACCESS_KEY`/`NCLOUD_SECRET_KEY`; else from the
    /// file's first profile that has both keys.
    pub fn discover(profile: Option<&str>) -> Result<Self> {
        let profile = profile
            .map(str::to_owned)
            .or_else(|| std::env::var(ENV_PROFILE).ok())
            .filter(|p| !p.trim().is_empty());
        let from_env = (
            std::env::var(ENV_ACCESS_KEY).ok().filter(|v| !v.is_empty()),
            std::env::var(ENV_SECRET_KEY).ok().filter(|v| !v.is_empty()),
        );
        if profile.is_none() {
            match from_env {
                (Some(access), Some(secret)) => return Ok(Self::new(access, secret)),
                (Some(_), None) | (None, Some(_)) => bail!(
                    "only one of {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} is set\n\
                     hint: set both, or neither to use ~/.ncloud/configure"
                ),
                (None, None) => {}
            }
        }
        let Some(path) = ncloud_configure_path() else {
            bail!(
                "no NCP credentials found\nhint: set {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}, or HOME for ~/.ncloud/configure"
            );
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(_) => bail!(
                "no NCP credentials found\n\
                 hint: set {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}, or write \
                 ncloud_access_key_id and ncloud_secret_access_key in ~/.ncloud/configure"
            ),
        };
        check_private(&path)?;
        Self::from_configure(&text, profile.as_deref())
            .with_context(|| format!("reading credentials from {}", path.display()))
    }

    /// Parses the NCP CLI's `configure` file tolerantly: `name = value` lines, optional INI
    /// headers, other keys ignored, `#` and `;` comments (whole lines, or after a value). The
    /// named profile's keys, or the first profile that has both.
    pub fn from_configure(text: &str, profile: Option<&str>) -> Result<Self> {
        let (mut access, mut secret) = (None, None);
        let mut section: Option<&str> = None;
        let mut found_profile = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                if profile.is_none() && access.is_some() && secret.is_some() {
                    break;
                }
                section = Some(name.trim());
                found_profile |= profile == section;
                continue;
            }
            if profile.is_some() && section != profile {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let value = strip_comment(value).trim().trim_matches('"').to_owned();
            match name.trim() {
                "ncloud_access_key_id" => access = Some(value),
                "ncloud_secret_access_key" => secret = Some(value),
                _ => {}
            }
        }
        if let Some(wanted) = profile
            && !found_profile
        {
            bail!(
                "the file has no profile [{wanted}]\nhint: name one of its [sections] with --profile (or NCLOUD_PROFILE)"
            );
        }
        match (access, secret) {
            (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok(Self::new(a, s)),
            _ => bail!(
                "the file lacks ncloud_access_key_id or ncloud_secret_access_key{}\n\
                 hint: add both lines, e.g. `ncloud_access_key_id = ...`",
                profile.map(|p| format!(" in [{p}]")).unwrap_or_default()
            ),
        }
    }
}

/// A value without an inline comment: `AK123 # work account` is `AK123`.
fn strip_comment(value: &str) -> &str {
    let cut = value
        .char_indices()
        .find(|(i, c)| {
            (*c == '#' || *c == ';') && value[..*i].ends_with(|p: char| p.is_whitespace())
        })
        .map(|(i, _)| i);
    match cut {
        Some(i) => &value[..i],
        None => value,
    }
}

/// A credentials file others may change is refused, as OpenSSH refuses such keys; one others
/// may read draws a warning.
fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            bail!(
                "{} may be changed by other users (mode {:o}): its keys cannot be trusted\nhint: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        if mode & 0o044 != 0 {
            tracing::warn!(
                "{} may be read by other users (mode {:o}); it holds your secret key: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    Ok(())
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

fn ncloud_configure_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".ncloud").join("configure"))
}

/// Where MI is and which project the keys go to.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: String,
    pub workspace: String,
    pub project: String,
}

/// Refuses a plain-http endpoint on a host that is not this machine, unless allowed: every
/// request is signed, and the gateway's replies carry the project's data. Loopback
/// (`127.0.0.0/8`, `::1`, `localhost`) is for the emulator and tests.
pub fn check_transport(endpoint: &str, flag: &str, allow_insecure_http: bool) -> Result<()> {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return Ok(());
    };
    if url.scheme() != "http" || allow_insecure_http {
        return Ok(());
    }
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    };
    if !loopback {
        bail!(
            "{flag} {endpoint} is plain http to another machine: signed requests and their answers would cross the network unencrypted\nhint: use https, or pass --allow-insecure-http if this network is yours"
        );
    }
    Ok(())
}

/// An endpoint as the ledger names it: without a trailing `/`, so one service has one name.
pub fn endpoint_name(endpoint: &str) -> String {
    endpoint.trim().trim_end_matches('/').to_owned()
}

impl Target {
    pub fn new(endpoint: &str, workspace: Option<String>, project: Option<String>) -> Result<Self> {
        let endpoint = endpoint_name(endpoint);
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!(
                "endpoint `{endpoint}` is not an http(s) URL\n\
                 hint: use e.g. --endpoint {DEFAULT_ENDPOINT}"
            );
        }
        let workspace = required(workspace, "--workspace", "MI_WORKSPACE")?;
        let project = project_id(&required(project, "--project", "MI_PROJECT_ID")?);
        Ok(Self {
            endpoint,
            workspace,
            project,
        })
    }
}

/// A project ID as MI numbers it: `01001` and `1001` are one project (leading zeros of a
/// numeric ID are dropped), so one project never gets two scopes in the ledger.
pub fn project_id(text: &str) -> String {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = text.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }.to_owned()
    } else {
        text.to_owned()
    }
}

fn required(value: Option<String>, flag: &str, env: &str) -> Result<String> {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => bail!("{flag} is required\nhint: pass {flag} or set {env}"),
    }
}

/// How hard the runner may push.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request starts per second; `None` means no rate limit (benchmarks, the emulator).
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub timeout: Duration,
}

impl Limits {
    pub fn new(
        rate: f64,
        concurrency: usize,
        max_attempts: u32,
        timeout: Duration,
    ) -> Result<Self> {
        if !rate.is_finite() || rate < 0.0 {
            bail!(
                "--rate must be a number of requests per second, 0 for no limit\nhint: e.g. --rate 10 or --rate 0.5"
            );
        }
        if concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if max_attempts == 0 {
            bail!("--max-attempts must be at least 1");
        }
        if timeout.is_zero() {
            bail!("--timeout must be longer than zero\nhint: e.g. --timeout 30s");
        }
        Ok(Self {
            rate: (rate > 0.0).then_some(rate),
            concurrency,
            max_attempts,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials::new("AKID".into(), "s3cr3t-value".into());
        let shown = format!("{c:?}");
        assert!(shown.contains("AKID"));
        assert!(!shown.contains("s3cr3t-value"));
    }

    #[test]
    fn configure_file_with_profile_and_other_keys() {
        let text = "[DEFAULT]\nncloud_access_key_id = AK1\nncloud_secret_access_key=SK1\n\
                    ncloud_api_url = https://ncloud.apigw.ntruss.com\n\n[other]\n\
                    ncloud_access_key_id = AK2\nncloud_secret_access_key = SK2\n";
        let c = Credentials::from_configure(text, None).unwrap();
        assert_eq!((c.access_key(), c.secret_key()), ("AK1", "SK1"));
        let other = Credentials::from_configure(text, Some("other")).unwrap();
        assert_eq!((other.access_key(), other.secret_key()), ("AK2", "SK2"));
        let err = Credentials::from_configure(text, Some("nope")).unwrap_err();
        assert!(err.to_string().contains("no profile [nope]"), "{err}");
    }

    #[test]
    fn comments_in_the_configure_file_are_not_part_of_a_key() {
        let text = "# my keys\n; old style\nncloud_access_key_id = AK1 # work\nncloud_secret_access_key = S#K1 ; note\n";
        let c = Credentials::from_configure(text, None).unwrap();
        assert_eq!((c.access_key(), c.secret_key()), ("AK1", "S#K1"));
    }

    #[test]
    fn configure_file_missing_secret_is_an_error_with_hint() {
        let err = Credentials::from_configure("ncloud_access_key_id = AK\n", None).unwrap_err();
        assert!(format!("{err}").contains("hint:"));
    }

    #[test]
    fn target_requires_workspace_and_project() {
        let err = Target::new(DEFAULT_ENDPOINT, None, Some("1".into())).unwrap_err();
        assert!(err.to_string().contains("--workspace is required"));
        let t = Target::new("http://x/", Some("ws".into()), Some("1".into())).unwrap();
        assert_eq!(t.endpoint, "http://x");
    }

    #[test]
    fn zero_rate_means_unlimited_and_fractions_are_rates() {
        let l = Limits::new(0.0, 1, 1, DEFAULT_TIMEOUT).unwrap();
        assert_eq!(l.rate, None);
        assert_eq!(
            Limits::new(0.5, 1, 1, DEFAULT_TIMEOUT).unwrap().rate,
            Some(0.5)
        );
        assert!(Limits::new(5.0, 0, 1, DEFAULT_TIMEOUT).is_err());
        assert!(Limits::new(-1.0, 1, 1, DEFAULT_TIMEOUT).is_err());
    }

    #[test]
    fn plain_http_is_only_for_this_machine_unless_allowed() {
        for ok in [
            "https://mi.apigw.ntruss.com",
            "http://127.0.0.1:8080",
            "http://[::1]:9",
            "http://localhost:1",
        ] {
            assert!(check_transport(ok, "--endpoint", false).is_ok(), "{ok}");
        }
        let err = check_transport("http://10.0.0.5:8080", "--endpoint", false).unwrap_err();
        assert!(err.to_string().contains("--allow-insecure-http"), "{err}");
        assert!(check_transport("http://10.0.0.5:8080", "--endpoint", true).is_ok());
    }

    #[test]
    fn numeric_project_ids_lose_leading_zeros() {
        assert_eq!(project_id("01001"), "1001");
        assert_eq!(project_id("1001"), "1001");
        assert_eq!(project_id("000"), "0");
        assert_eq!(project_id("p-01"), "p-01");
        let t = Target::new("http://x", Some("ws".into()), Some("0042".into())).unwrap();
        assert_eq!(t.project, "42");
    }
}
