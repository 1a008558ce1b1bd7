//! The commands, wired from validated settings to the parts that do the work.
//!
//! `main.rs` parses and maps the result to an exit code; this module takes the lock, opens
//! the ledger, checks the account, reads the source, runs the runner and words the summary.
//! Tests call [`import`] directly with their own shutdown token.

use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::config::{Credentials, Limits, Target};
use crate::exit::Exit;
use crate::ledger::runs::ManifestRead;
use crate::ledger::{self, Ingested, OnChanged, State, listings};
use crate::progress::{self, Display};
use crate::runner::{
    DEFAULT_LIST_SETTLE, Ending, FatalStop, Floors, ListSummary, RunOptions, Runner,
};
use crate::source::bucket::{BucketSpec, Lister};
use crate::source::filter::Filters;
use crate::source::manifest::ManifestFormat;

mod check;
mod dry_run;
mod ingest;
mod ledger_commands;
pub mod record;
mod resolve;
mod session;
mod settings;
mod summary;

pub use check::{CheckJob, check};
pub use dry_run::{analyze_dry_run, dry_run};
pub use ledger_commands::{backup, forget, ledger_endpoint, report, status};
pub use resolve::resolve;
pub use settings::{analysis_plan, emulator_config, floors};

use record::RunRecord;
use session::Session;

/// Where the manifest comes from.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// No manifest: the keys come from a bucket listing, or the run resumes what the ledger
    /// holds.
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
    /// Where to list unfinished listings a run without a source continues.
    pub s3: Option<crate::source::bucket::S3Place>,
    pub filters: Filters,
    pub on_changed: OnChanged,
    pub retry_failed: bool,
    pub retry_import_failed: bool,
    /// Import the manifest's good rows though some are malformed (they are listed).
    pub skip_bad_rows: bool,
    /// How long MI's asset list may take to show a new asset.
    pub list_settle: Duration,
    /// The protocol's floors: today's values unless `MI_IMPORT_FLOORS` lowers them (tests).
    pub floors: Floors,
    /// An MI served in this process (a test's emulator) to talk to instead of the network at
    /// `target`'s endpoint.
    pub local_mi: Option<crate::api::local::Local>,
    /// Listing requests to Object Storage at once.
    pub list_concurrency: usize,
    pub options: RunOptions,
    pub display: Display,
}

impl ImportJob {
    /// A job with no source yet: no manifest or listing, no filters, no confirmation,
    /// nothing shown. Each command sets what it needs on top.
    pub fn new(db: PathBuf, target: Target, credentials: Credentials, limits: Limits) -> Self {
        Self {
            db,
            target,
            credentials,
            limits,
            manifest: Manifest::None,
            manifest_format: ManifestFormat::Csv,
            default_bucket: None,
            listing: None,
            s3: None,
            filters: Filters::default(),
            on_changed: OnChanged::Report,
            retry_failed: false,
            retry_import_failed: false,
            skip_bad_rows: false,
            list_settle: DEFAULT_LIST_SETTLE,
            floors: Floors::default(),
            local_mi: None,
            list_concurrency: crate::source::bucket::DEFAULT_LIST_CONCURRENCY,
            options: RunOptions {
                allow_other_bucket: false,
                buckets: Vec::new(),
                confirm: None,
                analyze: None,
                cutoff: Default::default(),
            },
            display: Display::Quiet,
        }
    }

    /// The client of the job's MI: the one served in this process if the job names one, the
    /// network at the target's endpoint otherwise.
    fn mi_client(&self) -> Result<crate::api::MiClient> {
        let (target, credentials) = (self.target.clone(), self.credentials.clone());
        match &self.local_mi {
            Some(mi) => {
                crate::api::MiClient::local(mi.clone(), target, credentials, self.limits.timeout)
            }
            None => crate::api::MiClient::new(target, credentials, self.limits.timeout),
        }
    }

    fn manifest_given(&self) -> bool {
        !matches!(self.manifest, Manifest::None)
    }
}

impl ImportResult {
    /// A run stopped by a signal before its manifest could even be opened (a FIFO with no
    /// writer yet): nothing was read, recorded or sent.
    fn stopped(job: &ImportJob) -> Self {
        ImportResult {
            exit: Exit::Interrupted,
            ending: Ending::Interrupted,
            ingested: Ingested::default(),
            counts: Vec::new(),
            this_run: Vec::new(),
            analyses_failed: 0,
            requests: 0,
            listed: None,
            summary: format!(
                "stopped before {} could be opened: nothing was read, recorded or sent\n",
                job.manifest.name()
            ),
            next_steps: String::new(),
            record: RunRecord {
                exit_code: crate::exit::interrupted().code(),
                ending: record::EndingRecord::of(&Ending::Interrupted),
                this_run: Default::default(),
                failures: Vec::new(),
                failures_total: 0,
                ledger: Default::default(),
                rate_at_end: None,
                bad_rows: None,
            },
        }
    }
}

/// What a run did, for the caller and the summary.
#[derive(Debug, Clone)]
pub struct ImportResult {
    pub exit: Exit,
    pub ending: Ending,
    pub ingested: Ingested,
    /// Every key of the scope, per state.
    pub counts: Vec<(State, u64)>,
    /// Keys this run left failed, import_failed or uncertain: what decides its exit code.
    pub this_run: Vec<(State, u64)>,
    /// Analyses this run saw fail, be cancelled, or be refused (they make it exit 1 too).
    pub analyses_failed: u64,
    pub requests: u64,
    pub listed: Option<ListSummary>,
    /// What happened, for the operator.
    pub summary: String,
    /// What to do about it (the commands to run next), printed after the summary.
    pub next_steps: String,
    /// The same for programs.
    pub record: RunRecord,
}

/// Runs one import: lock, ledger, account, source, dispatch, summary.
pub async fn import(job: ImportJob, shutdown: CancellationToken) -> Result<ImportResult> {
    let source = match job.manifest_given() {
        true => match ingest::prepare(&job, &shutdown).await {
            Ok(source) => Some(source),
            Err(e) if e.is::<ingest::Stopped>() => return Ok(ImportResult::stopped(&job)),
            Err(e) => return Err(e),
        },
        false => None,
    };
    let listing_check = match &job.listing {
        Some(spec) => Some(Lister::new(spec, job.limits.timeout)),
        None => None,
    };
    if let Some(lister) = &listing_check {
        lister.check_bucket().await?;
    }
    let mut session = Session::open(&job, "run")?;
    let runner = session.runner(&job, shutdown.clone())?;

    // ---- the account first: a wrong workspace or project stops here, with nothing recorded
    let linked = match runner.preflight().await? {
        Ok(linked) => linked,
        Err(stop) => return refused(session, &runner, stop, &job).await,
    };

    // ---- the source: a file not read before is looked over first, then recorded while its
    // keys are sent; a pipe, a file read before (appended or changed), or a file with a bad
    // row is recorded before anything is sent
    let listings = listings_to_run(&job, &session).await?;
    let opened = match source {
        Some(source) => Some(open_manifest(&job, &session, source).await?),
        None => None,
    };
    let looked = match &opened {
        // Worth a second read only where many rows may be new: a path not read before (one
        // read before costs its changed chunks, not a million look-ups).
        Some(o) if !o.read_before && o.rereadable && listings.is_empty() => {
            match ingest::look_over(&job, &shutdown).await {
                Err(e) if e.is::<ingest::Stopped>() => {
                    return session.finish(&runner, Ending::Interrupted, &job).await;
                }
                other => other?,
            }
        }
        _ => None,
    };
    let mut ingested = Ingested::default();
    let mut streamed = None;
    // What to remember of a read done before sending, once the run is not refused.
    let mut record = None;
    match (opened, looked) {
        (Some(opened), Some(looked)) => streamed = Some((opened, looked)),
        (Some(opened), None) => {
            let read = match read_manifest(&job, &session, opened, &shutdown, None).await {
                Err(e) if e.is::<ingest::Stopped>() => {
                    return session.finish(&runner, Ending::Interrupted, &job).await;
                }
                other => other?,
            };
            session.bad_rows = read.bad_rows();
            ingested = read.counts;
            record = read.record;
        }
        (None, _) => {}
    }
    let mut options = job.options.clone();
    options
        .buckets
        .extend(listings.iter().map(|l| l.bucket.clone()));
    if let Some((_, looked)) = &streamed {
        options.buckets.extend(looked.buckets.iter().cloned());
    }
    if let Some(stop) = runner
        .refuse_other_buckets(linked.as_deref(), &options)
        .await?
    {
        session.undo_rows().await?;
        return refused(session, &runner, Ending::Refused(stop), &job).await;
    }
    remember_read(&job, &session, record).await?;
    requeue(&job, &session).await?;

    // ---- dispatch, with the bucket listings (if any) feeding it
    let mut opened = Vec::new();
    // One request at a time: a flat listing, one page after another, is fastest.
    let flat = job.list_concurrency <= 1;
    for spec in &listings {
        let (s, bucket, prefix) = (
            session.scope.clone(),
            spec.bucket.clone(),
            spec.prefix.clone(),
        );
        let state = session
            .writer
            .write(move |t| listings::open_listing(t, &s, &bucket, &prefix, flat))
            .await?;
        let lister = std::sync::Arc::new(Lister::new(spec, job.limits.timeout));
        opened.push((lister, spec.bucket.clone(), state));
    }
    if !opened.is_empty() {
        runner.feed.open();
    }
    let listing_pass = async {
        // However the listing ends (an error too), dispatch stops waiting for more keys; a
        // run without listings leaves the feed to its other source.
        let _closer = (!opened.is_empty()).then(|| runner.feed.closer());
        let mut summary: Option<ListSummary> = None;
        for (lister, bucket, state) in &opened {
            let one = runner
                .list_bucket(
                    lister,
                    bucket,
                    state.clone(),
                    &job.filters,
                    job.on_changed,
                    job.list_concurrency,
                )
                .await;
            let one = match one {
                Ok(one) => one,
                Err(error) => {
                    // Dispatch must not go on without the ledger: stop it, then report.
                    runner.halt_for(FatalStop {
                        message: format!("the listing stopped: {error:#}"),
                        hint: None,
                    });
                    return Err(error);
                }
            };
            summary = Some(summary.map_or(one, |s| s + one));
        }
        Ok::<_, anyhow::Error>(summary)
    };
    // A file looked over is recorded while its keys are sent: dispatch waits for its rows
    // until the read ends.
    if let Some((_, looked)) = &streamed {
        runner.feed.open();
        if looked.rows > 0 {
            runner.feed.brings_keys();
        }
    }
    let reading = async {
        let Some((opened, looked)) = streamed else {
            return Ok(None);
        };
        let _closer = runner.feed.closer();
        let stats = runner.stats.clone();
        let feeding = ingest::Feeding {
            buckets: looked.buckets,
            feed: runner.feed.clone(),
            added: Box::new(move |added: &Ingested| {
                stats.queued.fetch_add(
                    added.new + added.requeued,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }),
            rows_before: session.rows_before,
        };
        let read = read_manifest(&job, &session, opened, &shutdown, Some(feeding)).await;
        match &read {
            Ok(read) => remember_read(&job, &session, read.record.clone()).await?,
            Err(e) if e.is::<ingest::Stopped>() => {}
            Err(e) => runner.halt_for(FatalStop {
                message: format!("{e:#}"),
                hint: None,
            }),
        }
        read.map(Some)
    };
    let (ending, listed, read) = with_progress(&runner, job.display, async {
        tokio::join!(runner.run(&options), listing_pass, reading)
    })
    .await;
    let read = match read {
        Err(e) if e.is::<ingest::Stopped>() => None,
        other => other?,
    };
    if let Some(read) = read {
        session.bad_rows = read.bad_rows();
        ingested = read.counts;
    }
    let (ending, listed) = (ending?, listed?);
    if let (Ending::Finished, Some(ListSummary { complete: true, .. })) = (&ending, listed) {
        for (_, _, state) in &opened {
            let id = state.id;
            session
                .writer
                .write(move |t| listings::close_listing(t, id))
                .await?;
        }
    }

    // ---- wrap up
    let prefix = listed
        .map(|l| summary::describe_listing(&l, job.on_changed))
        .unwrap_or_default();
    let mut result = session.finish(&runner, ending, &job).await?;
    result.summary.insert_str(0, &prefix);
    result.ingested = ingested;
    result.listed = listed;
    Ok(result)
}

/// Ends a run that was refused before anything was sent.
async fn refused(
    session: Session,
    runner: &Runner,
    ending: Ending,
    job: &ImportJob,
) -> Result<ImportResult> {
    let s = session.scope.clone();
    session
        .writer
        .write(move |t| ledger::scopes::forget_scope_if_empty(t, &s))
        .await?;
    let created = session.created;
    let mut result = session.finish(runner, ending, job).await?;
    if created {
        // A ledger this refused command made holds nothing worth keeping.
        for suffix in ["", "-wal", "-shm"] {
            let mut path = job.db.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
        summary::ledger_not_kept(&mut result.summary, &job.db);
    }
    Ok(result)
}

/// The manifest opened for its rows: from its start, or right after what an earlier read of
/// the same bytes recorded.
async fn open_manifest(
    job: &ImportJob,
    session: &Session,
    source: ingest::Source,
) -> Result<ingest::Opened> {
    let path = ingest::path_key(&job.manifest).expect("a manifest was given");
    let (s, settings) = (session.scope.clone(), ingest::settings(job));
    let earlier = session
        .writer
        .write(move |t| ledger::runs::manifest_read(t, &s, &path, &settings))
        .await?;
    ingest::open(job, earlier, source)
}

/// What reading a manifest into the ledger brought.
struct ManifestDone {
    counts: Ingested,
    /// What to remember of the read (nothing, for a pipe: the next run reads it whole).
    record: Option<ManifestRead>,
    bad: ingest::BadRows,
}

impl ManifestDone {
    fn bad_rows(&self) -> Option<record::BadRowsRecord> {
        (self.bad.count > 0).then(|| record::BadRowsRecord {
            named: self.bad.named.clone(),
            count: self.bad.count,
        })
    }
}

/// Remembers a manifest's read (by path and settings), so the next run reads only what is new.
async fn remember_read(
    job: &ImportJob,
    session: &Session,
    read: Option<ManifestRead>,
) -> Result<()> {
    if let (Some(read), Some(path)) = (read, ingest::path_key(&job.manifest)) {
        let (s, settings) = (session.scope.clone(), ingest::settings(job));
        session
            .writer
            .write(move |t| ledger::runs::remember_manifest(t, &s, &path, &settings, &read))
            .await?;
    }
    Ok(())
}

/// Reads the manifest (only what is new of it) into the ledger, while keys are sent if
/// `feeding`; says what it found.
async fn read_manifest(
    job: &ImportJob,
    session: &Session,
    opened: ingest::Opened,
    shutdown: &CancellationToken,
    feeding: Option<ingest::Feeding>,
) -> Result<ManifestDone> {
    let continued = opened.continues.clone();
    let result = ingest::ingest(
        opened,
        job,
        &session.writer,
        &session.scope,
        shutdown,
        feeding,
    )
    .await;
    let read = match result {
        Ok(read) => read,
        Err(error) => {
            if !error.is::<ingest::Stopped>() {
                let (run_id, summary) = (
                    session.run_id,
                    json!({"error": format!("{error:#}")}).to_string(),
                );
                session
                    .writer
                    .write(move |t| ledger::finish_run(t, run_id, Exit::Usage.code(), &summary))
                    .await?;
            }
            return Err(error);
        }
    };
    let (ingested, name) = (read.counts, job.manifest.name());
    match &continued {
        Some(earlier) if ingested.rows() == 0 => tracing::info!(
            "{name}: unchanged since it was read on {} ({} rows); not read again",
            crate::clock::ms_text(earlier.read_at),
            earlier.rows
        ),
        Some(_) => tracing::info!(
            "{name}: {} rows appended since it was last read; {} new keys ({} of them ineligible)",
            ingested.rows(),
            ingested.added(),
            ingested.new_skipped
        ),
        None => tracing::info!(
            "{name}: {} new keys ({} of them ineligible), {} duplicate or already known",
            ingested.added(),
            ingested.new_skipped,
            ingested.known
        ),
    }
    if read.bad_rows.count > 0 {
        tracing::warn!(
            "{name}: {} malformed and left out (--skip-bad-rows):\n{}",
            summary::count(read.bad_rows.count, "row was", "rows were"),
            read.bad_rows.listed("  ").trim_end()
        );
    }
    if read.held_back {
        tracing::info!(
            "{name}: its last line has no line end yet and the file grew while it was read; that line waits for the next run"
        );
    }
    if !read.rereadable {
        tracing::info!(
            "{name} is a pipe or device: it was read once, and the next run reads it whole"
        );
        return Ok(ManifestDone {
            counts: ingested,
            record: None,
            bad: read.bad_rows,
        });
    }
    Ok(ManifestDone {
        counts: ingested,
        record: Some(read.record),
        bad: read.bad_rows,
    })
}

/// The listings this run goes through: the one asked for, or, with no source at all, those
/// an earlier run left unfinished.
async fn listings_to_run(job: &ImportJob, session: &Session) -> Result<Vec<BucketSpec>> {
    if let Some(spec) = &job.listing {
        return Ok(vec![spec.clone()]);
    }
    let (Some(place), false) = (&job.s3, job.manifest_given()) else {
        return Ok(Vec::new());
    };
    let s = session.scope.clone();
    let open = session
        .writer
        .write(move |t| listings::unfinished(t, &s))
        .await?;
    Ok(open
        .into_iter()
        .map(|(bucket, prefix)| place.spec(bucket, prefix))
        .collect())
}

/// `--retry-failed`, `--retry-import-failed`: those keys go back to pending.
async fn requeue(job: &ImportJob, session: &Session) -> Result<()> {
    for (wanted, state, what) in [
        (job.retry_failed, State::Failed, "failed"),
        (
            job.retry_import_failed,
            State::ImportFailed,
            "import_failed",
        ),
    ] {
        if wanted {
            let s = session.scope.clone();
            let n = session
                .writer
                .write(move |t| ledger::keys::requeue(t, &s, state))
                .await?;
            tracing::info!(
                "{n} {what} {} will be sent again",
                crate::runner::plural(n as u64, "key", "keys")
            );
        }
    }
    Ok(())
}

/// `confirm`: polls import-status of every registered key of the project until final.
pub async fn confirm(
    job: ImportJob,
    patience: Duration,
    shutdown: CancellationToken,
) -> Result<ImportResult> {
    crate::ledger::Ledger::open_existing(&job.db)?;
    let session = Session::open(&job, "confirm")?;
    let runner = session.runner(&job, shutdown)?;
    let ending = with_progress(&runner, job.display, runner.confirm_only(patience)).await?;
    session.finish(&runner, ending, &job).await
}

/// `analyze`: requests analysis of completed keys of the project (once each) and follows
/// the analyses already requested, for at most `patience`.
pub async fn analyze(
    job: ImportJob,
    plan: crate::runner::AnalysisPlan,
    patience: Duration,
    shutdown: CancellationToken,
) -> Result<ImportResult> {
    crate::ledger::Ledger::open_existing(&job.db)?;
    let session = Session::open(&job, "analyze")?;
    let runner = session.runner(&job, shutdown)?;
    runner
        .stats
        .analyses_only
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let ending = with_progress(&runner, job.display, runner.analyze_only(&plan, patience)).await?;
    session.finish(&runner, ending, &job).await
}

/// Runs `work` while progress is shown, and clears the display afterwards.
async fn with_progress<T>(
    runner: &Runner,
    display: Display,
    work: impl std::future::Future<Output = T>,
) -> T {
    let done = CancellationToken::new();
    let shown = tokio::spawn(progress::show(runner.stats.clone(), display, done.clone()));
    let output = work.await;
    done.cancel();
    let _ = shown.await;
    output
}

/// A refusal for the summary and `main`.
pub fn refusal(message: String, hint: Option<String>) -> Ending {
    Ending::Refused(FatalStop { message, hint })
}
