//! `check`: a first look at an account, sending nothing that changes anything. Each line says
//! what was looked at and whether it is fine, or what to fix: the key pair and the machine's
//! clock (from the gateway's `Date`), the workspace and its linked bucket, the project, one
//! page of MI's asset list and what it shows (how it names assets, whether entries carry
//! sizes, times and import status, in what order its IDs come, how many a page holds), and
//! one page of the bucket (readable, and how much of it MI would take). A command that exits
//! 0 here means a run would start. What it learns of the asset list is kept in the ledger,
//! as a run's first look would keep it.

use anyhow::Result;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::api::{Answer, ApiError, Call, MiClient};
use crate::config::{Credentials, Limits, Target};
use crate::ledger::{self, Ledger, Scope};
use crate::limiter::Limiter;
use crate::retry::{Backoff, with_retries};
use crate::source::bucket::{BucketSpec, Lister};

/// The gateway refuses signatures this far from its clock; warn well before.
const CLOCK_WARN: Duration = Duration::from_secs(60);
const CLOCK_REFUSED: Duration = Duration::from_secs(300);
/// Entries looked at on the first page of the asset list.
const LIST_LOOK: u32 = 100;

/// What `check` needs.
pub struct CheckJob {
    pub db: std::path::PathBuf,
    pub target: Target,
    pub credentials: Credentials,
    pub limits: Limits,
    /// Where the key pair came from, for its line.
    pub credentials_from: String,
    /// The bucket to look at (else the workspace's), where Object Storage is.
    pub bucket: Option<String>,
    pub prefix: String,
    pub s3: crate::source::bucket::S3Place,
}

/// The lines of the check, and whether a run would start.
pub struct Checked {
    pub text: String,
    pub ready: bool,
}

struct Lines {
    text: String,
    ready: bool,
}

impl Lines {
    fn ok(&mut self, what: &str, said: impl std::fmt::Display) {
        let _ = writeln!(self.text, "ok       {what}: {said}");
    }
    fn note(&mut self, what: &str, said: impl std::fmt::Display) {
        let _ = writeln!(self.text, "note     {what}: {said}");
    }
    fn problem(&mut self, what: &str, said: impl std::fmt::Display, hint: &str) {
        self.ready = false;
        let _ = writeln!(self.text, "PROBLEM  {what}: {said}\n         hint: {hint}");
    }
}

pub async fn check(job: CheckJob) -> Result<Checked> {
    let mut lines = Lines {
        text: String::new(),
        ready: true,
    };
    let access = job.credentials.access_key();
    lines.ok(
        "key pair",
        format!(
            "access key {}… from {}",
            access.chars().take(4).collect::<String>(),
            job.credentials_from
        ),
    );
    let client = MiClient::new(
        job.target.clone(),
        job.credentials.clone(),
        job.limits.timeout,
    )?;
    let limiter = Limiter::with_rate(&job.limits.setting, 1);
    let attempts = job.limits.max_attempts;
    // ---- the key pair, the clock, the workspace
    let linked = match retried(attempts, &limiter, Call::Lookup, || {
        client.workspace_dated()
    })
    .await
    {
        Ok((workspace, date)) => {
            clock_line(&mut lines, date);
            let linked = crate::runner::linked_bucket(&workspace).map(str::to_owned);
            lines.ok(
                "workspace",
                format!(
                    "`{}`{}",
                    job.target.workspace,
                    match &linked {
                        Some(b) => format!(", linked to bucket `{}`", crate::escape::shown(b)),
                        None => ", its details name no linked bucket".into(),
                    }
                ),
            );
            linked
        }
        Err(e) => {
            answer_problem(&mut lines, "workspace", &e);
            return Ok(Checked {
                text: lines.text,
                ready: false,
            });
        }
    };
    // ---- the project
    match retried(attempts, &limiter, Call::Lookup, || client.project()).await {
        Ok(_) => lines.ok("project", format!("`{}`", job.target.project)),
        Err(e) => {
            answer_problem(&mut lines, "project", &e);
            return Ok(Checked {
                text: lines.text,
                ready: false,
            });
        }
    }
    // ---- what MI's asset list shows
    let page = retried(attempts, &limiter, Call::ListAssets, || {
        client.list_assets(1, LIST_LOOK)
    })
    .await;
    let mut carries_status = None;
    match page {
        Ok(page) => {
            carries_status = page.assets.first().map(|a| a.upload_status.is_some());
            describe_list(&mut lines, &page);
            if let Some(first) = page.assets.first() {
                let details = retried(attempts, &limiter, Call::Asset, || {
                    client.asset_details(first.asset_id)
                })
                .await;
                describe_details(&mut lines, first.asset_id, details);
            }
        }
        Err(e) => lines.problem(
            "asset list",
            format!("cannot be read: {e}"),
            "a run needs it to settle keys whose answers were lost; check the key pair's permissions",
        ),
    }
    // ---- the bucket
    let bucket = job.bucket.clone().or(linked.clone());
    match (&bucket, &linked) {
        (Some(b), Some(l)) if b != l => lines.problem(
            "bucket",
            format!(
                "`{}` is not the workspace's bucket `{}`",
                crate::escape::shown(b),
                crate::escape::shown(l)
            ),
            "a run refuses it unless --allow-other-bucket (whether MI takes other buckets is not documented)",
        ),
        _ => {}
    }
    match bucket {
        Some(bucket) => look_at_bucket(&mut lines, &job, bucket).await,
        None => lines.note(
            "bucket",
            "none named and none linked: pass --bucket to look at one",
        ),
    }
    if lines.ready {
        remember(&job, carries_status)?;
        lines
            .text
            .push_str("a run would start with these settings\n");
    } else {
        lines
            .text
            .push_str("a run would not start: mend what the lines above name\n");
    }
    Ok(Checked {
        text: lines.text,
        ready: lines.ready,
    })
}

/// One read-only MI call through the limiter, retried as its answers say.
async fn retried<T, F, Fut>(
    attempts: u32,
    limiter: &Limiter,
    call: Call,
    send: F,
) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let never = tokio_util::sync::CancellationToken::new();
    with_retries(attempts, Backoff::default(), &never, |_| async {
        let _slot = limiter.admit().await;
        Answer {
            call,
            result: send().await,
        }
    })
    .await
    .last
    .result
}

fn clock_line(lines: &mut Lines, date: Option<SystemTime>) {
    let Some(theirs) = date else {
        lines.note(
            "clock",
            "the gateway's answer has no Date header to compare with",
        );
        return;
    };
    let ours = SystemTime::now();
    let (skew, ahead) = match ours.duration_since(theirs) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    let said = format!(
        "this machine is {}s {} the gateway",
        skew.as_secs(),
        if ahead { "ahead of" } else { "behind" }
    );
    if skew >= CLOCK_REFUSED {
        lines.problem(
            "clock",
            said,
            "the gateway refuses signatures more than 5 minutes off: set the clock (NTP)",
        );
    } else if skew >= CLOCK_WARN {
        lines.note(
            "clock",
            format!("{said}; the gateway refuses 5 minutes off: set the clock (NTP)"),
        );
    } else {
        lines.ok("clock", said);
    }
}

fn answer_problem(lines: &mut Lines, what: &str, error: &ApiError) {
    let hint = error
        .hint()
        .unwrap_or("MI is not answering; try again later, or check --endpoint");
    lines.problem(what, format!("{error}"), hint);
}

/// What the first page of the asset list shows about the readings docs/service.md marks unsure.
fn describe_list(lines: &mut Lines, page: &crate::api::AssetPage) {
    let entries = &page.assets;
    let totals = match (page.total_count, page.total_pages) {
        (Some(count), Some(pages)) => format!(
            "{} in {}",
            super::summary::count(count, "asset", "assets"),
            super::summary::count(u64::from(pages), "page", "pages")
        ),
        (Some(count), None) => {
            format!("{count} assets; no totalPage (read to the end by its entries)")
        }
        _ => "no totals (absence is never proven from it: lost answers stay uncertain)".into(),
    };
    lines.ok(
        "asset list",
        format!(
            "{totals}; the first page holds {} of the {LIST_LOOK} asked for",
            entries.len()
        ),
    );
    if entries.is_empty() {
        lines.note(
            "asset list",
            "the project is empty: how it names, times and numbers assets is learned from the first run's own",
        );
        return;
    }
    let with =
        |f: &dyn Fn(&crate::api::AssetSummary) -> bool| entries.iter().filter(|a| f(a)).count();
    let n = entries.len();
    let folders = with(&|a| a.file_name.contains('/'));
    lines.ok(
        "names",
        if folders > 0 {
            format!("{folders} of {n} names hold a folder: the list names assets by their full key")
        } else {
            format!("no name of {n} holds a folder: the list names assets by file name only, or keys have no folders (learned from the first run's own assets)")
        },
    );
    let sized = with(&|a| a.size.is_some());
    let timed = with(&|a| a.created.is_some());
    let status = with(&|a| a.upload_status.is_some());
    lines.ok(
        "entries carry",
        format!(
            "sizes {sized}/{n}, creation times {timed}/{n}, import status {status}/{n}{}",
            if status == n {
                " (imports are confirmed by paging the list)"
            } else {
                ""
            }
        ),
    );
    let ids: Vec<i64> = entries.iter().map(|a| a.asset_id).collect();
    let order = if ids.windows(2).all(|w| w[0] < w[1]) {
        "ascending"
    } else if ids.windows(2).all(|w| w[0] > w[1]) {
        "descending (newest first?)"
    } else {
        "in no order"
    };
    lines.ok("asset IDs", format!("come {order} on the page"));
}

async fn look_at_bucket(lines: &mut Lines, job: &CheckJob, bucket: String) {
    let spec: BucketSpec = job.s3.spec(bucket.clone(), job.prefix.clone());
    let lister = Lister::new(&spec, job.limits.timeout);
    if let Err(e) = lister.check_bucket().await {
        let text = format!("{e:#}");
        let (said, hint) = text
            .split_once("\nhint: ")
            .unwrap_or((&text, "check --s3-endpoint"));
        lines.problem("bucket", said, hint);
        return;
    }
    let never = tokio_util::sync::CancellationToken::new();
    let (page, _) = lister
        .page_retried(
            &job.prefix,
            None,
            true,
            job.limits.max_attempts,
            Backoff::default(),
            &never,
        )
        .await;
    match page {
        Ok(page) => {
            let n = page.objects.len();
            let eligible = page
                .objects
                .iter()
                .filter(|o| {
                    o.problem.is_none()
                        && crate::source::eligibility::refusal(&o.key, Some(o.size)).is_none()
                })
                .count();
            lines.ok(
                "bucket",
                format!(
                    "`{}` prefix `{}` is readable: its first page holds {n} objects{}, {eligible} of them media MI takes",
                    crate::escape::shown(&bucket),
                    crate::escape::shown(&job.prefix),
                    if page.next_marker.is_some() { " (and more follow)" } else { "" },
                ),
            );
        }
        Err(e) => lines.problem("bucket", e.to_string(), e.hint()),
    }
}

/// What one asset's details say: whether they name the object key it was made from, which
/// tells apart assets of one file name where the list names them by file name only.
fn describe_details(
    lines: &mut Lines,
    asset: i64,
    details: Result<crate::api::AssetDetails, ApiError>,
) {
    match details {
        Ok(d) => match d.key {
            Some(key) => lines.ok(
                "asset details",
                format!(
                    "name the object key an asset was made from (asset {asset}: `{}`{}): they tell apart assets of one file name",
                    crate::escape::shown(&key),
                    d.bucket
                        .map(|b| format!(" in `{}`", crate::escape::shown(&b)))
                        .unwrap_or_default()
                ),
            ),
            None => lines.ok(
                "asset details",
                format!(
                    "name no object key (asset {asset}): assets of one file name are told apart by the list alone"
                ),
            ),
        },
        Err(e) => lines.note("asset details", format!("asset {asset}'s cannot be read: {e}")),
    }
}

/// Keeps what the look taught, as a run's first look would: whether the asset list carries
/// each import's status.
fn remember(job: &CheckJob, carries_status: Option<bool>) -> Result<()> {
    let Some(carries) = carries_status else {
        return Ok(());
    };
    let _lock = crate::lock::acquire(&job.db, "check")?;
    let ledger = Ledger::open(&job.db)?;
    let scope = Scope::open(
        ledger.conn(),
        &job.target.endpoint,
        &job.target.workspace,
        &job.target.project,
    )?;
    ledger::facts::set(
        ledger.conn(),
        &scope,
        ledger::facts::Fact::ListUploadStatus,
        if carries { "yes" } else { "no" },
    )?;
    ledger.checkpoint()
}
