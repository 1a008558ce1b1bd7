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
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

use crate::api::MiClient;
use crate::config::{Credentials, Limits, Target};
use crate::exit::{Exit, input};
mod dry_run;
mod summary;

pub use dry_run::dry_run;

use crate::ledger::listings::{self, OnChanged};
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Ingested, Ledger, NewKey, Scope, State};
use crate::limiter::Limiter;
use crate::progress::{self, Display};
use crate::runner::{Ending, ListSummary, RunOptions, Runner};
use crate::source::bucket::{BucketSpec, Lister};
use crate::source::filter::Filters;
use crate::source::judged;
use crate::source::manifest::{ManifestError, ManifestFormat, ManifestReader};

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

impl ImportJob {
    /// A job with no source yet: no manifest or listing, no filters, preflight on, no
    /// confirmation, nothing shown. Each command sets what it needs on top.
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
            filters: Filters::default(),
            on_changed: OnChanged::Report,
            retry_failed: false,
            options: RunOptions {
                preflight: true,
                allow_other_bucket: false,
                buckets: Vec::new(),
                confirm: None,
            },
            display: Display::Quiet,
        }
    }

    fn manifest_given(&self) -> bool {
        !matches!(self.manifest, Manifest::None)
    }
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
    /// What happened, for the operator.
    pub summary: String,
    /// What to do about it (the commands to run next), printed after the summary.
    pub next_steps: String,
}

/// Runs one import: lock, ledger, manifest, dispatch, summary.
pub async fn import(job: ImportJob, shutdown: CancellationToken) -> Result<ImportResult> {
    let reader = match job.manifest {
        Manifest::None => None,
        _ => Some(open_manifest(&job)?),
    };
    let _lock = crate::lock::acquire(&job.db, "run")?;
    let session = Session::open(&job, "run", Ledger::open(&job.db)?)?;
    let (writer, scope) = (&session.writer, &session.scope);

    // ---- the manifest goes into the ledger before anything is sent, unless this very
    // manifest was read in full before (the ledger never forgets a key)
    let fingerprint = match job.manifest_given() {
        true => Some(manifest_fingerprint(&job)?),
        false => None,
    };
    let already = match &fingerprint {
        Some(fp) => {
            let (s, fp) = (scope.clone(), fp.clone());
            writer
                .write(move |t| ledger::manifest_read(t, &s, &fp))
                .await?
        }
        None => None,
    };
    let reader = match &already {
        Some((read_at, rows)) => {
            tracing::info!(
                "{}: unchanged since it was read on {read_at} ({rows} rows); not read again",
                job.manifest.name()
            );
            None
        }
        None => reader,
    };
    let ingested = match ingest(reader, &job, writer, scope).await {
        Ok(ingested) => ingested,
        Err(error) => {
            let (run_id, summary) = (
                session.run_id,
                json!({"error": format!("{error:#}")}).to_string(),
            );
            writer
                .write(move |t| ledger::finish_run(t, run_id, Exit::Usage.code(), &summary))
                .await?;
            return Err(error);
        }
    };
    if let (Some(fp), None) = (&fingerprint, &already) {
        let (s, fp, rows) = (scope.clone(), fp.clone(), ingested.rows());
        writer
            .write(move |t| ledger::remember_manifest(t, &s, &fp, rows))
            .await?;
    }
    if job.manifest_given() && already.is_none() {
        tracing::info!(
            "{}: {} new keys ({} of them ineligible), {} duplicate or already known",
            job.manifest.name(),
            ingested.added(),
            ingested.new_skipped,
            ingested.known
        );
    }
    if job.retry_failed {
        let s = scope.clone();
        let requeued = writer.write(move |t| ledger::requeue_failed(t, &s)).await?;
        tracing::info!("{requeued} failed keys will be sent again");
    }

    // ---- dispatch, with the bucket listing (if any) feeding it
    let runner = session.runner(&job, shutdown)?;
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
    let listing_pass = async {
        match &listing {
            Some((lister, bucket, state)) => runner
                .list_bucket(lister, bucket, state.clone(), &job.filters, job.on_changed)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (ending, listed) = with_progress(&runner, job.display, async {
        tokio::join!(runner.run(&options), listing_pass)
    })
    .await;
    let (ending, listed) = (ending?, listed?);
    if let (Ending::Finished, Some((_, _, state)), Some(ListSummary { complete: true, .. })) =
        (&ending, &listing, listed)
    {
        let id = state.id;
        writer
            .write(move |t| listings::close_listing(t, id))
            .await?;
    }

    // ---- wrap up
    let prefix = listed
        .map(|l| summary::describe_listing(&l, job.on_changed))
        .unwrap_or_default();
    let mut result = session.finish(&runner, ending, &job.db).await?;
    result.summary.insert_str(0, &prefix);
    result.ingested = ingested;
    result.listed = listed;
    Ok(result)
}

/// `confirm`: polls import-status of every registered key of the project until final.
pub async fn confirm(
    job: ImportJob,
    patience: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<ImportResult> {
    let _lock = crate::lock::acquire(&job.db, "confirm")?;
    let session = Session::open(&job, "confirm", open_existing(&job.db)?)?;
    let runner = session.runner(&job, shutdown)?;
    let ending = with_progress(&runner, job.display, runner.confirm_only(patience)).await?;
    session.finish(&runner, ending, &job.db).await
}

/// One command's hold on the ledger: its writer thread and its row in `runs`.
struct Session {
    writer: LedgerWriter,
    scope: Scope,
    run_id: i64,
    started: Instant,
}

impl Session {
    fn open(job: &ImportJob, command: &str, ledger: Ledger) -> Result<Self> {
        let scope = Scope {
            workspace: job.target.workspace.clone(),
            project: job.target.project.clone(),
        };
        let run_id = ledger::start_run(ledger.conn(), command, Some(&scope))?;
        // The thread ends by itself once every writer handle (the runner's too) is dropped;
        // every write is awaited, so nothing is left unwritten when the command returns.
        let (writer, _thread) = LedgerWriter::spawn(ledger);
        Ok(Self {
            writer,
            scope,
            run_id,
            started: Instant::now(),
        })
    }

    fn runner(&self, job: &ImportJob, shutdown: CancellationToken) -> Result<Runner> {
        let client = MiClient::new(
            job.target.clone(),
            job.credentials.clone(),
            job.limits.timeout,
        )?;
        let limiter = Arc::new(Limiter::new(job.limits.rate, job.limits.concurrency));
        Ok(Runner::new(
            client,
            self.writer.clone(),
            limiter,
            self.scope.clone(),
            job.limits.max_attempts,
            shutdown,
        ))
    }

    /// Counts, exit code and summary; closes the run's row and the writer.
    async fn finish(self, runner: &Runner, ending: Ending, db: &Path) -> Result<ImportResult> {
        let s = self.scope.clone();
        let counts = self
            .writer
            .write(move |t| ledger::counts(t, Some(&s)))
            .await?;
        let exit = exit_for(&ending, &counts);
        let requests = runner.stats.requests.load(Relaxed);
        let summary = summary::summarize(&counts, &runner.stats, self.started.elapsed(), db);
        let next_steps = summary::next_steps(&counts, &runner.stats);
        let record = json!({
            "counts": counts.iter().map(|(s, n)| (s.as_str(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "requests": requests,
            "throttled": runner.stats.throttled.load(Relaxed),
            "rate_at_end": rate_at_end(&runner.stats),
            "ending": format!("{ending:?}"),
        })
        .to_string();
        let run_id = self.run_id;
        self.writer
            .write(move |t| ledger::finish_run(t, run_id, exit.code(), &record))
            .await?;
        Ok(ImportResult {
            exit,
            ending,
            ingested: Ingested::default(),
            counts,
            requests,
            listed: None,
            summary,
            next_steps,
        })
    }
}

/// The limiter's rate when the run ended (requests/s), `None` without a limit.
fn rate_at_end(stats: &crate::progress::Stats) -> Option<f64> {
    let milli = stats.current_rate.load(Relaxed);
    (milli > 0).then(|| (milli as f64 / 100.0).round() / 10.0)
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

/// A manifest's identity for skipping it: its bytes, and every setting that shapes its rows.
fn manifest_fingerprint(job: &ImportJob) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(format!(
        "mi-import {}|{:?}|{:?}|{}\n",
        env!("CARGO_PKG_VERSION"),
        job.manifest_format,
        job.default_bucket,
        job.filters.fingerprint()
    ));
    match &job.manifest {
        Manifest::None => {}
        Manifest::Builtin { text, .. } => hash.update(text.as_bytes()),
        Manifest::File(path) => {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("cannot open the manifest {}", path.display()))
                .map_err(input)?;
            std::io::copy(&mut file, &mut hash)
                .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    Ok(format!("{:x}", hash.finalize()))
}

pub(crate) fn open_manifest(job: &ImportJob) -> Result<Reader> {
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

type Reader = ManifestReader<Box<dyn std::io::Read + Send>>;

/// The next rows of a manifest for the ledger.
struct Batch {
    /// Up to [`INGEST_BATCH`] rows that pass the filters, judged.
    keys: Vec<NewKey>,
    /// The malformed row that ended the batch early.
    bad_row: Option<ManifestError>,
    /// Nothing is left to read after this batch.
    last: bool,
}

fn next_batch(reader: &mut Reader, filters: &Filters, now: SystemTime) -> Batch {
    let mut keys = Vec::with_capacity(INGEST_BATCH);
    for row in reader.by_ref() {
        match row {
            Ok(row) if filters.verdict(&row.key, row.size, None, now).is_some() => continue,
            Ok(row) => keys.push(judged(row.bucket, row.key, row.size)),
            Err(e) => {
                return Batch {
                    keys,
                    bad_row: Some(e),
                    last: true,
                };
            }
        }
        if keys.len() == INGEST_BATCH {
            return Batch {
                keys,
                bad_row: None,
                last: false,
            };
        }
    }
    Batch {
        keys,
        bad_row: None,
        last: true,
    }
}

/// Reads the whole manifest into the ledger before anything is sent, so a bad row stops the
/// run with nothing sent; rows before it stay recorded.
async fn ingest(
    reader: Option<Reader>,
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
            let Batch {
                keys,
                bad_row,
                last,
            } = next_batch(&mut reader, &filters, SystemTime::now());
            let s = scope.clone();
            total += handle.block_on(writer.write(move |t| ledger::insert_keys(t, &s, &keys)))?;
            if let Some(e) = bad_row {
                return Err(input(anyhow::anyhow!(
                    "{name}: {e}\nnothing was sent; the {} rows before it are recorded and will be imported once the file is fixed",
                    total.rows()
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
