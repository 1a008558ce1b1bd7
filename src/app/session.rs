//! One command's hold on the ledger: the lock, the writer, its row in `runs`, and the
//! way it ends (counts, exit code, summary, the write-ahead log folded into the file).

use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

use super::record::{self, RunRecord};
use super::{ImportJob, ImportResult, summary};
use crate::exit::Exit;
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Ingested, Ledger, Scope, State};
use crate::limiter::Limiter;
use crate::lock::LedgerLock;
use crate::runner::{Ending, Pace, Runner};

pub(crate) struct Session {
    pub writer: LedgerWriter,
    pub scope: Scope,
    pub run_id: i64,
    pub started: Instant,
    /// When it started, in the ledger's time (rows first seen since are this run's).
    pub started_ms: i64,
    /// The highest key row before this command: rows above it are the ones it added.
    pub rows_before: i64,
    /// The ledger file did not exist before this command: one refused leaves none behind.
    pub created: bool,
    /// Manifest rows this run left out as malformed.
    pub bad_rows: Option<record::BadRowsRecord>,
    _lock: LedgerLock,
}

impl Session {
    /// Takes the ledger's lock, opens it, and starts the command's row in `runs`.
    pub fn open(job: &ImportJob, command: &str) -> Result<Self> {
        let lock = crate::lock::acquire(&job.db, command)?;
        let created =
            crate::ledger::open::recognise(&job.db)? == crate::ledger::open::Found::Nothing;
        let ledger = Ledger::open(&job.db)?;
        let conn = ledger.conn();
        let scope = Scope::open(
            conn,
            &job.target.endpoint,
            &job.target.workspace,
            &job.target.project,
        )?;
        let run_id = ledger::start_run(
            conn,
            command,
            Some(&scope),
            job.limits.timeout,
            job.floors.heartbeat,
        )?;
        let rows_before = ledger::keys::last_row(conn)?;
        // The writer ends by itself once every handle (the runner's too) is dropped;
        // every write is awaited, so nothing is left unwritten when the command returns.
        let (writer, _task) = LedgerWriter::spawn(ledger, Some(run_id));
        Ok(Self {
            writer,
            scope,
            run_id,
            started: Instant::now(),
            started_ms: crate::clock::now_ms(),
            rows_before,
            created,
            bad_rows: None,
            _lock: lock,
        })
    }

    pub fn runner(&self, job: &ImportJob, shutdown: CancellationToken) -> Result<Runner> {
        let client = job.mi_client()?;
        let limiter = Arc::new(match &job.limits.setting {
            crate::config::RateSetting::Schedule(_) => {
                Limiter::with_rate(&job.limits.setting, job.limits.concurrency)
            }
            crate::config::RateSetting::Fixed(_) => {
                Limiter::new(job.limits.rate, job.limits.concurrency)
            }
        });
        let pace = Pace {
            max_attempts: job.limits.max_attempts,
            list_settle: job.list_settle,
            floors: job.floors,
        };
        let mut runner = Runner::new(
            client,
            self.writer.clone(),
            limiter,
            self.scope.clone(),
            self.run_id,
            pace,
            shutdown,
        );
        runner.asks_analysis = job.options.analyze.is_some();
        runner.cutoff = job.options.cutoff;
        Ok(runner)
    }

    /// Removes what this command added to the ledger: a run refused before anything was
    /// sent leaves no trace of its rows (a typo in a setting must not linger in `status`).
    pub async fn undo_rows(&self) -> Result<()> {
        let (scope, above) = (self.scope.clone(), self.rows_before);
        self.writer
            .write(move |t| {
                ledger::keys::forget_rows_after(t, &scope, above)?;
                ledger::scopes::forget_scope_if_empty(t, &scope)
            })
            .await
    }

    /// Counts, exit code and summary; closes the run's row, and folds the write-ahead log
    /// into the ledger file so the file alone is complete.
    pub async fn finish(
        self,
        runner: &Runner,
        ending: Ending,
        job: &ImportJob,
    ) -> Result<ImportResult> {
        let (s, run, since) = (self.scope.clone(), self.run_id, self.started_ms);
        let pick = job.options.analyze.as_ref().map(|plan| plan.pick);
        let (counts, trouble, analyses_failed, unasked, failures, skipped) = self
            .writer
            .write(move |t| {
                // Completed keys a run with --analyze leaves for `mi-import analyze`.
                let unasked = match pick {
                    Some(pick) => {
                        let every = ledger::analyses::Pick {
                            asked_only: false,
                            ..pick
                        };
                        ledger::analyses::count_to_analyze(t, &s, every)?
                            - ledger::analyses::count_to_analyze(t, &s, pick)?
                    }
                    None => 0,
                };
                Ok((
                    ledger::keys::counts(t, Some(&s))?,
                    ledger::keys::trouble_of_run(t, &s, run)?,
                    ledger::analyses::failed_in_run(t, &s, run)?,
                    unasked,
                    ledger::keys::failures_of_run(t, &s, run, record::FAILURES_NAMED)?,
                    ledger::keys::skipped_since(t, &s, since)?,
                ))
            })
            .await?;
        let exit = match exit_for(&ending, &trouble) {
            Exit::Success if analyses_failed > 0 => Exit::Trouble,
            other => other,
        };
        let requests = runner.stats.requests.load(Relaxed);
        let summary = summary::summarize(
            &counts,
            &trouble,
            &runner.stats,
            self.started.elapsed(),
            &job.db,
        );
        let mut next_steps = summary::next_steps(&counts, &ending, &runner.stats);
        if unasked > 0 {
            next_steps.push_str(&format!(
                "{} imported without --analyze {} not analysed by a run (each analysis is billed): `mi-import analyze` requests {}\n",
                summary::count(unasked, "completed key", "completed keys"),
                crate::runner::plural(unasked, "is", "are"),
                crate::runner::plural(unasked, "it", "them"),
            ));
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let record = RunRecord {
            exit_code: exit.code(),
            ending: record::EndingRecord::of(&ending),
            this_run: record::ThisRun::of(&runner.stats, &trouble, skipped, elapsed),
            failures_total: trouble
                .iter()
                .filter(|(s, _)| s.is_trouble())
                .map(|(_, n)| n)
                .sum(),
            failures: failures
                .into_iter()
                .map(|(bucket, key, state, message)| record::Failure {
                    bucket,
                    key,
                    state: state.as_str().to_owned(),
                    message,
                })
                .collect(),
            ledger: counts
                .iter()
                .map(|(s, n)| (s.as_str().to_owned(), *n))
                .collect(),
            rate_at_end: rate_at_end(&runner.stats),
            bad_rows: self.bad_rows.clone(),
        };
        let stored = serde_json::to_string(&record)?;
        let run_id = self.run_id;
        self.writer
            .write(move |t| ledger::finish_run(t, run_id, exit.code(), &stored))
            .await?;
        if let Err(e) = Ledger::open(&job.db).and_then(|l| l.checkpoint()) {
            tracing::debug!("the ledger's write-ahead log stays beside it: {e:#}");
        }
        Ok(ImportResult {
            exit,
            ending,
            ingested: Ingested::default(),
            counts,
            this_run: trouble,
            analyses_failed,
            requests,
            listed: None,
            summary,
            next_steps,
            record,
        })
    }
}

/// The exit code: about what this run did, not what earlier runs left.
pub(crate) fn exit_for(ending: &Ending, this_run: &[(State, u64)]) -> Exit {
    match ending {
        Ending::Fatal(_) => Exit::Fatal,
        Ending::Refused(_) => Exit::Usage,
        Ending::Interrupted => crate::exit::interrupted(),
        Ending::Finished | Ending::StoppedOnTime(_)
            if this_run.iter().any(|(s, n)| s.is_trouble() && *n > 0) =>
        {
            Exit::Trouble
        }
        Ending::Finished | Ending::StoppedOnTime(_) => Exit::Success,
    }
}

/// The limiter's rate when the run ended (requests/s), `None` without a limit.
fn rate_at_end(stats: &crate::progress::Stats) -> Option<f64> {
    let milli = stats.current_rate.load(Relaxed);
    (milli > 0).then(|| (milli as f64 / 100.0).round() / 10.0)
}
