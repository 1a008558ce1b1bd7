//! `run --dry-run`: the source read against the ledger inside a transaction that is rolled
//! back. Sends nothing, changes nothing, and says what a run would do.

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::{ImportJob, Manifest, next_batch, open_manifest};
use crate::exit::input;
use crate::ledger::listings;
use crate::ledger::{self, Ingested, Ledger, Scope, State};
use crate::runner::ListSummary;
use crate::source::bucket::Lister;

/// What a run with these settings would do.
pub async fn dry_run(job: &ImportJob) -> Result<String> {
    let reader = match job.manifest {
        Manifest::None => None,
        _ => Some(open_manifest(job)?),
    };
    let _lock = crate::lock::acquire(&job.db, "run --dry-run")?;
    let mut ledger = Ledger::open(&job.db)?;
    let scope = Scope {
        workspace: job.target.workspace.clone(),
        project: job.target.project.clone(),
    };
    let tx = ledger.conn_mut().transaction()?;
    let mut read = Ingested::default();
    let now = std::time::SystemTime::now();
    if let Some(mut reader) = reader {
        loop {
            let batch = next_batch(&mut reader, &job.filters, now);
            if let Some(e) = batch.bad_row {
                return Err(input(anyhow::anyhow!("{}: {e}", job.manifest.name())));
            }
            read += ledger::insert_keys(&tx, &scope, &batch.keys)?;
            if batch.last {
                break;
            }
        }
    }
    let mut listed = None;
    if let Some(spec) = &job.listing {
        let lister = Lister::new(spec, job.limits.timeout);
        let listing = listings::new_listing(&tx, &scope, &spec.bucket, &spec.prefix)?;
        let mut summary = ListSummary::default();
        let mut marker: Option<String> = None;
        let never = CancellationToken::new();
        loop {
            let finished = crate::retry::with_retries(
                job.limits.max_attempts,
                crate::retry::Backoff::default(),
                &never,
                |_| async { crate::source::bucket::Listed(lister.page(marker.as_deref()).await) },
            )
            .await;
            let page = finished
                .last
                .0
                .map_err(|e| anyhow::anyhow!("{e}\nhint: {}", e.hint()))?;
            let seen = page.objects.len() as u64;
            let rows = summary.judge_page(&spec.bucket, page.objects, &job.filters);
            let (got, changed) = listings::record_page(
                &tx,
                &scope,
                listing,
                &rows,
                seen,
                page.next_marker.as_deref(),
                job.on_changed,
            )?;
            summary.add_page(seen, &got, changed);
            read += got;
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => break,
            }
        }
        summary.complete = true;
        listed = Some(summary);
    }
    let counts = ledger::counts(&tx, Some(&scope))?;
    let reasons = ledger::skip_reasons(&tx, &scope)?;
    tx.rollback()?;
    let get = |s: State| ledger::count_in(&counts, s);
    let to_send = get(State::Pending)
        + get(State::Uncertain)
        + if job.retry_failed {
            get(State::Failed)
        } else {
            0
        };
    let done = get(State::Registered) + get(State::Completed) + get(State::ImportFailed);
    let mut text = listed
        .map(|l| super::summary::describe_listing(&l, job.on_changed))
        .unwrap_or_default();
    text.push_str(&format!(
        "dry run: nothing was sent and the ledger is unchanged\n\
         {}: {} rows, {} new to the ledger\n\
         would send {to_send} keys ({} of them uncertain, to be checked in MI's asset list first)\n\
         already done: {done} ({} completed, {} registered awaiting confirmation, {} import_failed)\n\
         failed earlier: {} ({})\n\
         ineligible, never sent: {}\n",
        job.manifest.name(),
        read.rows(),
        read.added(),
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
    text.push_str(&match job.limits.rate {
        Some(rate) => format!(
            "at --rate {rate}: about {} for the imports
",
            humantime::format_duration(std::time::Duration::from_secs(
                to_send.div_ceil(rate as u64)
            ))
        ),
        None => "no rate limit set: the service's own limit decides the time
"
        .into(),
    });
    Ok(text)
}
