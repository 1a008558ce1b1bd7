//! The commands, wired from validated settings to the parts that do the work.
//!
//! `main.rs` parses and maps the result to an exit code; this module opens the ledger, takes
//! the lock, reads the source, runs the runner and prints the summary. Tests call
//! [`import`] directly with their own shutdown token.

use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::MiClient;
use crate::config::{Credentials, Limits, Target};
use crate::exit::{Exit, input};
use crate::ledger::listings::{self, OnChanged};
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Ingested, Ledger, Scope, State};
use crate::limiter::Limiter;
use crate::progress::{self, Display};
use crate::runner::{Ending, ListSummary, RunOptions, Runner};
use crate::source::bucket::{BucketSpec, Lister};
use crate::source::filter::Filters;
use crate::source::judged;
use crate::source::manifest::{ManifestFormat, ManifestReader};

/// Rows per ledger transaction while reading a manifest: large enough that a million-row
/// manifest needs a few hundred commits, small enough to keep memory flat.
const INGEST_BATCH: usize = 5_000;

/// Where the manifest comes from.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// No manifest: the keys come from a bucket listing.
    None,
    File(PathBuf),
    /// Text built into the binary (the demo's), with a name for messages.
    Builtin {
        name: &'static str,
        text: &'static str,
    },
}

impl Manifest {
    fn name(&self) -> String {
        match self {
            Manifest::None => "the listing".into(),
            Manifest::File(p) => p.display().to_string(),
            Manifest::Builtin { name, .. } => (*name).to_owned(),
        }
    }
}

/// One `run`, fully resolved.
#[derive(Debug, Clone)]
pub struct ImportJob {
    pub db: PathBuf,
    pub target: Target,
    pub credentials: Credentials,
    pub limits: Limits,
    pub manifest: Manifest,
    pub manifest_format: ManifestFormat,
    pub default_bucket: Option<String>,
    /// List this bucket prefix (with `Manifest::None`).
    pub listing: Option<BucketSpec>,
    pub filters: Filters,
    pub on_changed: OnChanged,
    pub retry_failed: bool,
    pub options: RunOptions,
    pub display: Display,
}

/// What a run did, for the caller and the summary.
#[derive(Debug, Clone)]
pub struct ImportResult {
    pub exit: Exit,
    pub ending: Ending,
    pub ingested: Ingested,
    pub counts: Vec<(State, u64)>,
    pub requests: u64,
    pub listed: Option<ListSummary>,
    pub summary: String,
}

/// Runs one import: lock, ledger, manifest, dispatch, summary.
pub async fn import(job: ImportJob, shutdown: CancellationToken) -> Result<ImportResult> {
    let reader = match job.manifest {
        Manifest::None => None,
        _ => Some(open_manifest(&job)?),
    };
    let _lock = crate::lock::acquire(&job.db, "run")?;
    let ledger = Ledger::open(&job.db)?;
    let scope = Scope {
        workspace: job.target.workspace.clone(),
        project: job.target.project.clone(),
    };
    let run_id = ledger::start_run(ledger.conn(), "run", Some(&scope))?;
    let (writer, writer_thread) = LedgerWriter::spawn(ledger);
    let started = Instant::now();

    let ingested = match ingest(reader, &job, &writer, &scope).await {
        Ok(ingested) => ingested,
        Err(error) => {
            let summary = json!({"error": format!("{error:#}")}).to_string();
            writer
                .write(move |t| ledger::finish_run(t, run_id, Exit::Usage.code(), &summary))
                .await?;
            return Err(error);
        }
    };
    tracing::info!(
        "{}: {} new keys ({} of them ineligible), {} duplicate or already known",
        job.manifest.name(),
        ingested.new + ingested.new_skipped,
        ingested.new_skipped,
        ingested.known
    );
    if job.retry_failed {
        let s = scope.clone();
        let requeued = writer.write(move |t| ledger::requeue_failed(t, &s)).await?;
        tracing::info!("{requeued} failed keys will be sent again");
    }

    let client = MiClient::new(
        job.target.clone(),
        job.credentials.clone(),
        job.limits.timeout,
    )?;
    let limiter = Arc::new(Limiter::new(job.limits.rate, job.limits.concurrency));
    let runner = Runner::new(
        client,
        writer.clone(),
        limiter,
        scope.clone(),
        job.limits.max_attempts,
        shutdown,
    );
    let mut options = job.options.clone();
    let listing = match &job.listing {
        Some(spec) => {
            let (s, bucket, prefix) = (scope.clone(), spec.bucket.clone(), spec.prefix.clone());
            let state = writer
                .write(move |t| listings::open_listing(t, &s, &bucket, &prefix))
                .await?;
            options.buckets.push(spec.bucket.clone());
            runner.feed.open();
            Some((
                Lister::new(spec, job.limits.timeout),
                spec.bucket.clone(),
                state,
            ))
        }
        None => None,
    };
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(progress::show(
        runner.stats.clone(),
        job.display,
        progress_done.clone(),
    ));
    let listing_id = listing.as_ref().map(|(_, _, state)| state.id);
    let listing_pass = async {
        match &listing {
            Some((lister, bucket, state)) => runner
                .list_bucket(lister, bucket, state.clone(), &job.filters, job.on_changed)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (ending, listed) = tokio::join!(runner.run(&options), listing_pass);
    let listed = listed?;
    if let (Ok(Ending::Finished), Some(id), Some(ListSummary { complete: true, .. })) =
        (&ending, listing_id, listed)
    {
        writer
            .write(move |t| listings::close_listing(t, id))
            .await?;
    }
    progress_done.cancel();
    let _ = progress.await;
    let ending = ending?;

    let s = scope.clone();
    let counts = writer.write(move |t| ledger::counts(t, Some(&s))).await?;
    let exit = exit_for(&ending, &counts);
    let requests = runner.stats.requests.load(Relaxed);
    let mut summary = summarize(&counts, &runner, started.elapsed(), &job.db);
    if let Some(listed) = &listed {
        summary.insert_str(0, &describe_listing(listed, job.on_changed));
    }
    let record = json!({
        "counts": counts.iter().map(|(s, n)| (s.as_str(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        "requests": requests,
        "ending": format!("{ending:?}"),
    })
    .to_string();
    writer
        .write(move |t| ledger::finish_run(t, run_id, exit.code(), &record))
        .await?;
    drop(runner);
    drop(writer);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    Ok(ImportResult {
        exit,
        ending,
        ingested,
        counts,
        requests,
        listed,
        summary,
    })
}

fn describe_listing(listed: &ListSummary, on_changed: OnChanged) -> String {
    let mut text = format!(
        "listing: {} objects in {} pages, {} new to the ledger",
        listed.objects, listed.pages, listed.new
    );
    if listed.left_out > 0 {
        text.push_str(&format!(", {} left out by the filters", listed.left_out));
    }
    if listed.settling > 0 {
        text.push_str(&format!(
            ", {} too recent (--min-age; the next run looks again)",
            listed.settling
        ));
    }
    if !listed.complete {
        text.push_str("; not finished: the next run resumes it");
    }
    text.push('\n');
    if listed.changed > 0 {
        text.push_str(&match on_changed {
            OnChanged::Report => format!(
                "{} registered objects changed since (ETag or size); left alone, see the report's changed_at, or pass --on-changed reimport\n",
                listed.changed
            ),
            OnChanged::Reimport => format!("{} changed objects were registered again\n", listed.changed),
        });
    }
    text
}

fn open_manifest(job: &ImportJob) -> Result<ManifestReader<Box<dyn std::io::Read + Send>>> {
    let name = job.manifest.name();
    let input_stream: Box<dyn std::io::Read + Send> = match &job.manifest {
        Manifest::File(path) => Box::new(
            std::fs::File::open(path)
                .with_context(|| {
                    format!(
                        "cannot open the manifest {}\nhint: check the path given to --manifest",
                        path.display()
                    )
                })
                .map_err(input)?,
        ),
        Manifest::Builtin { text, .. } => Box::new(text.as_bytes()),
        Manifest::None => Box::new(&b""[..]),
    };
    ManifestReader::new(
        input_stream,
        job.manifest_format,
        job.default_bucket.clone(),
    )
    .map_err(|e| input(anyhow::anyhow!("{name}: {e}")))
}

/// Reads the whole manifest into the ledger before anything is sent, so a bad row stops the
/// run with nothing sent; rows before it stay recorded.
async fn ingest(
    reader: Option<ManifestReader<Box<dyn std::io::Read + Send>>>,
    job: &ImportJob,
    writer: &LedgerWriter,
    scope: &Scope,
) -> Result<Ingested> {
    let Some(mut reader) = reader else {
        return Ok(Ingested::default());
    };
    let name = job.manifest.name();
    let filters = job.filters.clone();
    let (writer, scope) = (writer.clone(), scope.clone());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut total = Ingested::default();
        loop {
            let mut batch = Vec::with_capacity(INGEST_BATCH);
            let mut bad_row = None;
            let now = std::time::SystemTime::now();
            for row in reader.by_ref() {
                match row {
                    Ok(row) if filters.verdict(&row.key, row.size, None, now).is_some() => continue,
                    Ok(row) => batch.push(judged(row.bucket, row.key, row.size)),
                    Err(e) => {
                        bad_row = Some(e);
                        break;
                    }
                }
                if batch.len() == INGEST_BATCH {
                    break;
                }
            }
            let last = batch.len() < INGEST_BATCH || bad_row.is_some();
            let s = scope.clone();
            let got = handle.block_on(writer.write(move |t| ledger::insert_keys(t, &s, &batch)))?;
            total.new += got.new;
            total.new_skipped += got.new_skipped;
            total.known += got.known;
            if let Some(e) = bad_row {
                let before = total.new + total.new_skipped + total.known;
                return Err(input(anyhow::anyhow!(
                    "{name}: {e}\nnothing was sent; the {before} rows before it are recorded and will be imported once the file is fixed"
                )));
            }
            if last {
                return Ok(total);
            }
        }
    })
    .await?
}

fn exit_for(ending: &Ending, counts: &[(State, u64)]) -> Exit {
    match ending {
        Ending::Fatal(_) => Exit::Fatal,
        Ending::Refused(_) => Exit::Usage,
        Ending::Interrupted => Exit::Interrupted,
        Ending::Finished if counts.iter().any(|(s, n)| s.is_trouble() && *n > 0) => Exit::Trouble,
        Ending::Finished => Exit::Success,
    }
}

fn summarize(
    counts: &[(State, u64)],
    runner: &Runner,
    elapsed: std::time::Duration,
    db: &Path,
) -> String {
    let stats = &runner.stats;
    let get = |s: State| {
        counts
            .iter()
            .find(|(st, _)| *st == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let reconciled = stats.reconciled.load(Relaxed);
    let mut text = format!(
        "this run: {} registered, {} failed in {:.1}s; {} requests, {} retries, {} throttled\n",
        stats.registered.load(Relaxed) + reconciled,
        stats.failed.load(Relaxed),
        elapsed.as_secs_f64(),
        stats.requests.load(Relaxed),
        stats.retries.load(Relaxed),
        stats.throttled.load(Relaxed),
    );
    let polls = stats.polls.load(Relaxed);
    if polls > 0 {
        text.push_str(&format!(
            "confirmation: {} completed, {} import_failed, {} still in progress ({polls} import-status checks)\n",
            stats.completed.load(Relaxed),
            stats.import_failed.load(Relaxed),
            get(State::Registered),
        ));
    }
    if reconciled > 0 {
        text.push_str(&format!(
            "{reconciled} keys whose answer was lost were found registered in MI's asset list, not sent again\n"
        ));
    }
    let states: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let states = if states.is_empty() {
        "empty".to_owned()
    } else {
        states.join(", ")
    };
    text.push_str(&format!("ledger {}: {states}\n", db.display()));
    if get(State::ImportFailed) > 0 {
        text.push_str(
            "MI could not import some files: `mi-import report --state import_failed` shows why\n",
        );
    }
    if get(State::Registered) > 0 && polls > 0 {
        text.push_str("`mi-import confirm` checks the keys still in progress later\n");
    }
    if get(State::Failed) > 0 {
        text.push_str("see `mi-import report --state failed`; run again with --retry-failed to send failed keys again\n");
    }
    if get(State::Uncertain) > 0 {
        text.push_str("uncertain keys could not be checked against MI; the next run checks them before sending\n");
    }
    if get(State::Pending) > 0 {
        text.push_str("pending keys will be sent by the next run of the same command\n");
    }
    text
}

/// `confirm`: polls import-status of every registered key of the project until final.
pub async fn confirm(
    job: ImportJob,
    patience: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<ImportResult> {
    let _lock = crate::lock::acquire(&job.db, "confirm")?;
    let ledger = open_existing(&job.db)?;
    let scope = Scope {
        workspace: job.target.workspace.clone(),
        project: job.target.project.clone(),
    };
    let run_id = ledger::start_run(ledger.conn(), "confirm", Some(&scope))?;
    let (writer, writer_thread) = LedgerWriter::spawn(ledger);
    let started = Instant::now();
    let client = MiClient::new(
        job.target.clone(),
        job.credentials.clone(),
        job.limits.timeout,
    )?;
    let limiter = Arc::new(Limiter::new(job.limits.rate, job.limits.concurrency));
    let runner = Runner::new(
        client,
        writer.clone(),
        limiter,
        scope.clone(),
        job.limits.max_attempts,
        shutdown,
    );
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(progress::show(
        runner.stats.clone(),
        job.display,
        progress_done.clone(),
    ));
    let ending = runner.confirm_only(patience).await;
    progress_done.cancel();
    let _ = progress.await;
    let ending = ending?;
    let s = scope.clone();
    let counts = writer.write(move |t| ledger::counts(t, Some(&s))).await?;
    let exit = exit_for(&ending, &counts);
    let summary = summarize(&counts, &runner, started.elapsed(), &job.db);
    let record =
        json!({"polls": runner.stats.polls.load(Relaxed), "ending": format!("{ending:?}")})
            .to_string();
    writer
        .write(move |t| ledger::finish_run(t, run_id, exit.code(), &record))
        .await?;
    let requests = runner.stats.polls.load(Relaxed);
    drop(runner);
    drop(writer);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    Ok(ImportResult {
        exit,
        ending,
        ingested: Ingested::default(),
        counts,
        requests,
        listed: None,
        summary,
    })
}

/// `run --dry-run`: reads the manifest against the ledger inside a transaction that is rolled
/// back, and says what a run would do. Sends nothing, changes nothing.
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
    let mut add = |got: Ingested| {
        read.new += got.new;
        read.new_skipped += got.new_skipped;
        read.known += got.known;
    };
    let now = std::time::SystemTime::now();
    if let Some(mut reader) = reader {
        loop {
            let mut batch = Vec::with_capacity(INGEST_BATCH);
            let mut rows = 0;
            for row in reader.by_ref().take(INGEST_BATCH) {
                rows += 1;
                let row =
                    row.map_err(|e| input(anyhow::anyhow!("{}: {e}", job.manifest.name())))?;
                if job.filters.verdict(&row.key, row.size, None, now).is_none() {
                    batch.push(judged(row.bucket, row.key, row.size));
                }
            }
            add(ledger::insert_keys(&tx, &scope, &batch)?);
            if rows < INGEST_BATCH {
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
            let mut rows = Vec::with_capacity(page.objects.len());
            for object in page.objects {
                match crate::runner::judge(&spec.bucket, object, &job.filters, now) {
                    Ok(row) => rows.push(row),
                    Err(crate::source::filter::Left::Settling) => summary.settling += 1,
                    Err(_) => summary.left_out += 1,
                }
            }
            let (got, changed) = listings::record_page(
                &tx,
                &scope,
                listing,
                &rows,
                seen,
                page.next_marker.as_deref(),
                job.on_changed,
            )?;
            summary.pages += 1;
            summary.objects += seen;
            summary.new += got.new + got.new_skipped;
            summary.changed += changed;
            add(got);
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
    let get = |s: State| {
        counts
            .iter()
            .find(|(st, _)| *st == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let to_send = get(State::Pending)
        + get(State::Uncertain)
        + if job.retry_failed {
            get(State::Failed)
        } else {
            0
        };
    let done = get(State::Registered) + get(State::Completed) + get(State::ImportFailed);
    let mut text = listed
        .map(|l| describe_listing(&l, job.on_changed))
        .unwrap_or_default();
    text.push_str(&format!(
        "dry run: nothing was sent and the ledger is unchanged\n\
         {}: {} rows, {} new to the ledger\n\
         would send {to_send} keys ({} of them uncertain, to be checked in MI's asset list first)\n\
         already done: {done} ({} completed, {} registered awaiting confirmation, {} import_failed)\n\
         failed earlier: {} ({})\n\
         ineligible, never sent: {}\n",
        job.manifest.name(),
        read.new + read.new_skipped + read.known,
        read.new + read.new_skipped,
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

/// `status`: counts per state and the last run.
pub fn status(db: &Path, as_json: bool) -> Result<String> {
    let ledger = open_existing(db)?;
    let view = crate::report::status_view(ledger.conn())?;
    Ok(if as_json {
        serde_json::to_string_pretty(&view)? + "\n"
    } else {
        crate::report::render_status(&view)
    })
}

/// `report`: one row per key to stdout or a file.
pub fn report(db: &Path, args: &crate::cli::ReportArgs) -> Result<u64> {
    let ledger = open_existing(db)?;
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))
                .map_err(input)?;
            crate::report::write_report(ledger.conn(), args.format, args.state, file)
        }
        None => crate::report::write_report(
            ledger.conn(),
            args.format,
            args.state,
            std::io::stdout().lock(),
        ),
    }
}

fn open_existing(db: &Path) -> Result<Ledger> {
    if !db.exists() {
        return Err(input(anyhow::anyhow!(
            "no ledger at {}\nhint: run `mi-import run` first, or pass --db with the ledger's path",
            db.display()
        )));
    }
    Ledger::open(db)
}
