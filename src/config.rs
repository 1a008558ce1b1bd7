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
pub const DEFAULT_RATE: &str = "10";
/// Requests in flight when the user sets none: enough to hide latency at the default rate.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Attempts per key before it is `failed`; covers a few minutes of 429s and 5xx.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Per-request timeout: MI answers in well under a second when healthy.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The ledger file when `--db` is not given.
pub const DEFAULT_DB: &str = "mi-import.db";
/// The most requests in flight `--concurrency` may ask for: far more than any rate MI allows
/// needs, and each one holds a connection and a task.
pub const MAX_CONCURRENCY: usize = 1024;

/// A duration as the command line takes it: `30s`, `10m`, `1h30m`, or a bare number of
/// seconds (`30`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return if seconds.is_finite() && seconds >= 0.0 {
            Ok(Duration::from_secs_f64(seconds))
        } else {
            Err(format!("`{text}` is no length of time"))
        };
    }
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 30s, 10m, 1h30m)"))
}

/// `--rate`: requests per second, `0` for no limit, or a schedule by the local time of day
/// in rclone's `--bwlimit` form, `"08:00,5 20:00,20 23:30,off"`: from each time on, that rate
/// (`off`: no limit), the last one running on past midnight to the first.
#[derive(Debug, Clone, PartialEq)]
pub enum RateSetting {
    /// One rate all day; `None`: no limit.
    Fixed(Option<f64>),
    /// (minute of the day, rate from then on), in order.
    Schedule(Vec<(u32, Option<f64>)>),
}

impl RateSetting {
    /// The rate at `minute` of the (local) day.
    pub fn at(&self, minute: u32) -> Option<f64> {
        match self {
            RateSetting::Fixed(rate) => *rate,
            RateSetting::Schedule(steps) => {
                let before = steps.iter().rev().find(|(at, _)| *at <= minute);
                before.or(steps.last()).and_then(|(_, rate)| *rate)
            }
        }
    }

    /// The highest rate it allows (`None`: no limit at some time of day).
    pub fn highest(&self) -> Option<f64> {
        match self {
            RateSetting::Fixed(rate) => *rate,
            RateSetting::Schedule(steps) => steps
                .iter()
                .map(|(_, r)| *r)
                .try_fold(0.0f64, |most, r| r.map(|r| most.max(r))),
        }
    }
}

fn parse_rate_value(text: &str) -> std::result::Result<Option<f64>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok((rate > 0.0).then_some(rate)),
        _ => Err(format!(
            "`{text}` is no rate: a number of requests per second (0 or `off` for no limit), e.g. --rate 10, --rate 0.5, or --rate \"08:00,5 20:00,20\""
        )),
    }
}

/// Parses `--rate` (see [`RateSetting`]).
pub fn parse_rate(text: &str) -> std::result::Result<RateSetting, String> {
    let text = text.trim();
    if !text.contains(',') {
        return parse_rate_value(text).map(RateSetting::Fixed);
    }
    let mut steps = Vec::new();
    for step in text.split_whitespace() {
        let Some((time, rate)) = step.split_once(',') else {
            return Err(format!("`{step}`: a step is HH:MM,RATE (e.g. 08:00,5)"));
        };
        let minute = time
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|(h, m)| *h < 24 && *m < 60)
            .map(|(h, m)| h * 60 + m)
            .ok_or_else(|| format!("`{time}` is no time of day (HH:MM, 00:00 to 23:59)"))?;
        if steps.last().is_some_and(|(at, _)| *at >= minute) {
            return Err(format!("`{step}`: the schedule's times must grow"));
        }
        steps.push((minute, parse_rate_value(rate)?));
    }
    Ok(RateSetting::Schedule(steps))
}

/// The moment of the next `HH:MM` (local time) to come: later today, or tomorrow.
pub fn next_time_of_day(text: &str) -> Result<std::time::SystemTime> {
    let minute = text
        .trim()
        .split_once(':')
        .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
        .filter(|(h, m)| *h < 24 && *m < 60)
        .map(|(h, m)| h * 60 + m)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--stop-at `{text}` is no time of day\nhint: HH:MM, e.g. --stop-at 06:30"
            )
        })?;
    let now = local_minute();
    let ahead = match (minute + 1440 - now) % 1440 {
        0 => 1440,
        n => n,
    };
    let now = crate::clock::now();
    let into_minute = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() % 60)
        .unwrap_or(0);
    Ok(now + Duration::from_secs(u64::from(ahead) * 60 - into_minute))
}

/// Globs from a file, one a line: blank lines and `#` comments left out.
pub fn globs_from(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}\nhint: check the path of the glob file",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// The local time of day, in minutes since midnight.
pub fn local_minute() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r reads `now` and writes only into `tm`, which it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        (tm.tm_hour * 60 + tm.tm_min) as u32
    } else {
        ((now / 60) % 1440) as u32
    }
}

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
    /// Request starts per second now; `None` means no rate limit (benchmarks, the emulator).
    pub rate: Option<f64>,
    /// The rate as given: one, or a schedule by time of day that the limiter follows.
    pub setting: RateSetting,
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
        if concurrency > MAX_CONCURRENCY {
            bail!(
                "--concurrency {concurrency} is more than this tool takes ({MAX_CONCURRENCY})\nhint: MI's rate, not the number in flight, bounds a run: --concurrency 8 to 64 is plenty"
            );
        }
        if max_attempts == 0 {
            bail!("--max-attempts must be at least 1");
        }
        if timeout.is_zero() {
            bail!("--timeout must be longer than zero\nhint: e.g. --timeout 30s");
        }
        let rate = (rate > 0.0).then_some(rate);
        Ok(Self {
            rate,
            setting: RateSetting::Fixed(rate),
            concurrency,
            max_attempts,
            timeout,
        })
    }
}

impl Limits {
    /// Limits whose rate is `setting` (a schedule's current step, followed as time passes).
    pub fn with_setting(
        setting: RateSetting,
        concurrency: usize,
        max_attempts: u32,
        timeout: Duration,
    ) -> Result<Self> {
        let now = setting.at(local_minute());
        let mut limits = Self::new(now.unwrap_or(0.0), concurrency, max_attempts, timeout)?;
        limits.setting = setting;
        Ok(limits)
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
    fn durations_may_be_bare_seconds_and_rates_a_schedule() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1").is_err());
        assert_eq!(parse_rate("10").unwrap(), RateSetting::Fixed(Some(10.0)));
        assert_eq!(parse_rate("0").unwrap(), RateSetting::Fixed(None));
        assert!(parse_rate("-1").unwrap_err().contains("no rate"));
        let day = parse_rate("08:00,5 20:00,20 23:30,off").unwrap();
        assert_eq!(
            day.at(7 * 60),
            None,
            "before the first step: the last runs on"
        );
        assert_eq!(day.at(8 * 60), Some(5.0));
        assert_eq!(day.at(19 * 60 + 59), Some(5.0));
        assert_eq!(day.at(20 * 60), Some(20.0));
        assert_eq!(day.at(23 * 60 + 45), None);
        assert_eq!(day.highest(), None);
        assert_eq!(
            parse_rate("08:00,5 20:00,20").unwrap().highest(),
            Some(20.0)
        );
        assert!(parse_rate("20:00,5 08:00,20").is_err());
        assert!(parse_rate("25:00,5").is_err());
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
