//! `run --dry-run`: the account checked (two safe look-ups), the source read against the
//! ledger inside a transaction that is rolled back. Sends nothing, changes nothing, and says
//! what a run would do and how long it would take.

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::ingest;
use super::{ImportJob, summary};
use crate::ledger::{self, Ingested, Ledger, Scope, State, listings};
use crate::runner::ListSummary;
use crate::source::bucket::Lister;

/// Import-status checks per key when the ledger has no history of its own to tell.
const ASSUMED_CHECKS_PER_KEY: f64 = 1.5;

/// What a run with these settings would do.
pub async fn dry_run(job: &ImportJob, shutdown: CancellationToken) -> Result<String> {
    let source = match job.manifest_given() {
        true => Some(ingest::prepare(job, &shutdown).await?),
        false => None,
    };
    let lister = job
        .listing
        .as_ref()
        .map(|spec| Lister::new(spec, job.limits.timeout));
    if let Some(lister) = &lister {
        lister.check_bucket().await?;
    }
    let account = describe_account(job).await?;
    // A dry run creates nothing: with no ledger yet, it reads the source into one in memory.
    let (_lock, mut ledger) = if job.db.exists() {
        let lock = crate::lock::acquire(&job.db, "run --dry-run")?;
        (Some(lock), Ledger::open(&job.db)?)
    } else {
        (None, Ledger::open_in_memory()?)
    };
    let tx = ledger.conn_mut().transaction()?;
    let scope = Scope::open(
        &tx,
        &job.target.endpoint,
        &job.target.workspace,
        &job.target.project,
    )?;
    let mut read = Ingested::default();
    let now = crate::clock::now();
    let mut bad_rows = ingest::BadRows::default();
    let mut unchanged = None;
    if let (Some(path), Some(source)) = (ingest::path_key(&job.manifest), source) {
        let earlier = ledger::runs::manifest_read(&tx, &scope, &path, &ingest::settings(job))?;
        let mut opened = ingest::open(job, earlier, source)?;
        unchanged = opened.continues.clone();
        loop {
            let batch = opened.next_batch(&job.filters, now);
            read.known += batch.known_rows;
            for e in &batch.bad_rows {
                bad_rows.add(e);
            }
            if let Some(e) = batch.broken {
                return Err(crate::exit::input(anyhow::anyhow!(
                    "{}: {e}",
                    job.manifest.name()
                )));
            }
            read += ledger::keys::insert_keys(&tx, &scope, &batch.keys, job.on_changed)?;
            if batch.last {
                break;
            }
        }
    }
    if bad_rows.count > 0 && !job.skip_bad_rows {
        return Err(bad_rows.error(
            &job.manifest.name(),
            "a run would send nothing; fix the file, or run with --skip-bad-rows to import the rest",
        ));
    }
    let mut listed = None;
    if let (Some(spec), Some(lister)) = (&job.listing, lister) {
        listed = Some(list_into(&tx, &scope, spec, lister, job, &shutdown, &mut read).await?);
    }
    let counts = ledger::keys::counts(&tx, Some(&scope))?;
    let reasons = ledger::keys::skip_reasons(&tx, &scope)?;
    let checks_per_key = checks_per_key(&tx, &scope)?;
    let kept_limit = ledger::facts::get(&tx, &scope, ledger::facts::Fact::RateLimit)?
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|l| *l > 0.0);
    let to_analyze = match &job.options.analyze {
        Some(plan) => {
            let asked = ledger::analyses::count_to_analyze(&tx, &scope, plan.pick)?;
            let every = ledger::analyses::Pick {
                asked_only: false,
                ..plan.pick
            };
            let all = ledger::analyses::count_to_analyze(&tx, &scope, every)?;
            Some((asked, all - asked))
        }
        None => None,
    };
    tx.rollback()?;
    let get = |s: State| ledger::keys::count_in(&counts, s);
    let retried = |wanted: bool, s: State| if wanted { get(s) } else { 0 };
    let to_send = get(State::Pending)
        + get(State::Uncertain)
        + retried(job.retry_failed, State::Failed)
        + retried(job.retry_import_failed, State::ImportFailed);
    let done = get(State::Registered) + get(State::Completed) + get(State::ImportFailed);
    let mut text = listed
        .map(|l| summary::describe_listing(&l, job.on_changed))
        .unwrap_or_default();
    let read_line = match unchanged {
        Some(earlier) if read.rows() == 0 => format!(
            "unchanged since it was read on {} ({})",
            crate::clock::ms_text(earlier.read_at),
            summary::count(earlier.rows, "row", "rows")
        ),
        Some(_) => format!(
            "{} appended since it was last read, {} new to the ledger",
            summary::count(read.rows(), "row", "rows"),
            read.added()
        ),
        None => format!(
            "{}, {} new to the ledger",
            summary::count(read.rows(), "row", "rows"),
            read.added()
        ),
    };
    text.push_str(&format!(
        "dry run: nothing was sent and the ledger is unchanged\n{account}\n\
         {}: {read_line}\n\
         would send {to_send} keys ({} of them uncertain, to be checked in MI's asset list first)\n\
         already done: {done} ({} completed, {} registered awaiting confirmation, {} import_failed)\n\
         failed earlier: {} ({})\n\
         ineligible, never sent: {}\n",
        job.manifest.name(),
        get(State::Uncertain),
        get(State::Completed),
        get(State::Registered),
        get(State::ImportFailed),
        get(State::Failed),
        if job.retry_failed {
            "included above: --retry-failed"
        } else {
            "not sent; add --retry-failed to send them"
        },
        get(State::Skipped),
    ));
    for (reason, n) in reasons {
        text.push_str(&format!("  {n:>8}  {reason}\n"));
    }
    // Not billed, but counted against the rate: a run's look-ups of lost answers.
    text.push_str(&format!(
        "keys whose answer is lost are looked up in MI's asset list; where the list cannot tell their candidates apart, a run asks at most {} of those assets' details (one request each, within --rate)\n",
        crate::runner::DETAILS_PER_RUN
    ));
    if let Some((asked, unasked)) = to_analyze {
        let awaiting = get(State::Registered);
        text.push_str(&format!(
            "would request at most {} analyses, each billed: {asked} of keys completed already that a run with --analyze sent, \
             and one for each of the {awaiting} registered and {to_send} to send whose import completes in the run\n",
            asked + awaiting + to_send
        ));
        if unasked > 0 {
            text.push_str(&format!(
                "{unasked} completed {} imported without --analyze {} not analysed by a run: `mi-import analyze` requests {}\n",
                crate::runner::plural(unasked, "key", "keys"),
                crate::runner::plural(unasked, "is", "are"),
                crate::runner::plural(unasked, "it", "them"),
            ));
        }
    }
    let confirming = job.options.confirm.is_some();
    let checks = if confirming {
        (to_send as f64 * checks_per_key).ceil() as u64
    } else {
        0
    };
    text.push_str(&match job.limits.rate {
        Some(rate) => {
            let (pace, assumed) = match kept_limit {
                Some(limit) if limit < rate => (
                    limit,
                    format!(" (MI kept about {limit:.0} requests/s in an earlier run; that pace is assumed)"),
                ),
                _ => (rate, ", assuming MI does not throttle".to_string()),
            };
            format!(
                "at --rate {rate}{assumed}: about {} for {} imports{}\n",
                humantime::format_duration(std::time::Duration::from_secs(
                    ((to_send + checks) as f64 / pace).ceil() as u64
                )),
                to_send,
                if confirming {
                    format!(
                        " and about {checks} import-status checks ({checks_per_key:.1} a key), which share the rate"
                    )
                } else {
                    String::new()
                }
            )
        }
        None => match kept_limit {
            Some(limit) => format!(
                "no rate limit set: MI kept about {limit:.0} requests/s in an earlier run, so about {} for {} imports\n",
                humantime::format_duration(std::time::Duration::from_secs(
                    ((to_send + checks) as f64 / limit).ceil() as u64
                )),
                to_send
            ),
            None => "no rate limit set: the service's own limit decides the time\n".into(),
        },
    });
    Ok(text)
}

/// `analyze --dry-run`: how many completed keys would be sent for analysis, and how many
/// analyses are still being followed. Reads the ledger only.
pub fn analyze_dry_run(job: &ImportJob, plan: &crate::runner::AnalysisPlan) -> Result<String> {
    let ledger = Ledger::open_existing(&job.db)?;
    let scope = Scope::find(
        ledger.conn(),
        &job.target.endpoint,
        &job.target.workspace,
        &job.target.project,
    )?
        .ok_or_else(|| {
            crate::exit::input(anyhow::anyhow!(
                "the ledger holds nothing for workspace `{}`, project `{}`\nhint: `mi-import status` lists what it holds",
                job.target.workspace,
                job.target.project
            ))
        })?;
    let to_send = ledger::analyses::count_to_analyze(ledger.conn(), &scope, plan.pick)?;
    let counts = ledger::analyses::analysis_counts(ledger.conn(), Some(&scope))?;
    let following: u64 = ["REQUESTING", "UNSURE", "WAIT_ANALYZE", "ANALYZING"]
        .iter()
        .map(|s| counts.get(*s).copied().unwrap_or(0))
        .sum();
    Ok(format!(
        "dry run: nothing was sent\nwould request analysis of {to_send} completed keys (each billed), and follow {following} analyses already requested\n"
    ))
}

/// Lists the bucket into the transaction as a run would (parts side by side, up to
/// `--list-concurrency` at once), counting what it finds.
async fn list_into(
    tx: &rusqlite::Transaction<'_>,
    scope: &Scope,
    spec: &crate::source::bucket::BucketSpec,
    lister: Lister,
    job: &ImportJob,
    shutdown: &CancellationToken,
    read: &mut Ingested,
) -> Result<ListSummary> {
    let lister = std::sync::Arc::new(lister);
    let flat = job.list_concurrency <= 1;
    let state = listings::open_listing(tx, scope, &spec.bucket, &spec.prefix, flat)?;
    let mut summary = ListSummary::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut busy: Vec<i64> = Vec::new();
    let width = job.list_concurrency.max(1);
    loop {
        for part in listings::parts_to_list(tx, state.id, &busy, width - tasks.len())? {
            busy.push(part.id);
            let (lister, stop, attempts) =
                (lister.clone(), shutdown.clone(), job.limits.max_attempts);
            tasks.spawn(async move {
                let backoff = crate::retry::Backoff::default();
                let (page, _) = lister
                    .page_retried(
                        &part.prefix,
                        part.marker.as_deref(),
                        part.flat,
                        attempts,
                        backoff,
                        &stop,
                    )
                    .await;
                (part, page)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (part, page) = done?;
        busy.retain(|id| *id != part.id);
        let page = page.map_err(|e| anyhow::anyhow!("{e}\nhint: {}", e.hint()))?;
        let seen = page.objects.len() as u64;
        let rows = summary.judge_page(&spec.bucket, page.objects, &job.filters);
        let record = listings::PageRecord {
            listing: state.id,
            part: part.id,
            keys: &rows,
            seen,
            next_marker: page.next_marker.as_deref(),
            subfolders: &page.subfolders,
            spread: listings::spread_for(width),
        };
        let (got, _) = listings::record_page(tx, scope, &record, job.on_changed)?;
        summary.add_page(seen, &got);
        *read += got;
    }
    summary.complete = true;
    Ok(summary)
}

/// The two look-ups a run starts with: a wrong key pair, workspace or project shows here.
async fn describe_account(job: &ImportJob) -> Result<String> {
    let client = job.mi_client()?;
    let t = &job.target;
    let refused = |what: String, e: crate::api::ApiError| {
        let hint = e
            .hint()
            .unwrap_or("MI is not answering; try again later, or check --endpoint");
        crate::exit::fatal(anyhow::anyhow!(
            "preflight: cannot read the {what}: {e} (at {})\nhint: {hint}",
            t.endpoint
        ))
    };
    // Retried as a run retries them: a throttled or briefly failing gateway is no refusal.
    let ask = |workspace: bool| {
        let client = &client;
        let never = CancellationToken::new();
        async move {
            crate::retry::with_retries(
                job.limits.max_attempts,
                crate::retry::Backoff::default(),
                &never,
                |_| async {
                    let result = if workspace {
                        client.workspace().await
                    } else {
                        client.project().await
                    };
                    crate::api::Answer {
                        call: crate::api::Call::Lookup,
                        result,
                    }
                },
            )
            .await
            .last
            .result
        }
    };
    let workspace = ask(true)
        .await
        .map_err(|e| refused(format!("workspace `{}`", t.workspace), e))?;
    ask(false)
        .await
        .map_err(|e| refused(format!("project `{}`", t.project), e))?;
    Ok(match crate::runner::linked_bucket(&workspace) {
        Some(bucket) => format!(
            "the account answers: workspace `{}` (linked to bucket `{bucket}`), project `{}`",
            t.workspace, t.project
        ),
        None => format!(
            "the account answers: workspace `{}`, project `{}`",
            t.workspace, t.project
        ),
    })
}

/// Import-status checks per confirmed key so far in this project, or an assumption.
fn checks_per_key(conn: &rusqlite::Connection, scope: &Scope) -> rusqlite::Result<f64> {
    let (checks, keys) = ledger::import_status::checks_of_settled(conn, scope)?;
    Ok(if keys >= 20 {
        checks as f64 / keys as f64
    } else {
        ASSUMED_CHECKS_PER_KEY
    })
}
