//! The pipeline: ledger → claim → limiter → MI → ledger, with retries, a fatal stop, a
//! failure-rate breaker, graceful shutdown, and reconciliation of uncertain keys.
//!
//! The runner never decides what an answer means (that is `api::error`) nor how long to wait
//! (`retry`); it moves keys between states and keeps the promise that matters most: a key is
//! `in_flight` on disk before its request leaves, and a key whose outcome is unknown is looked
//! up in MI's asset list before it is sent again.

use anyhow::Result;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, Call, MiClient, Registered};
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Claimed, Outcome, Scope, State};
use crate::limiter::Limiter;
use crate::progress::Stats;
use crate::retry::{Backoff, Disposition, Finished, Retryable, with_retries};

mod confirm;
mod listing;
mod outbox;
mod preflight;
mod reconciling;

pub use listing::ListSummary;

use preflight::Refusal;

/// Keys taken from the ledger per claim: one fsync covers them all, and at most this many are
/// left `in_flight` (to reconcile) if the process is killed.
const MAX_CLAIM: usize = 256;
/// Keys admitted per unit of concurrency: some wait for a retry while others are sent.
const ADMITTED_PER_SLOT: usize = 4;
/// How long a shutdown waits for requests already sent before it gives up on them (they are
/// reconciled next run).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Reconcile-and-resend rounds in one run before the rest is left `uncertain`.
const MAX_ROUNDS: u32 = 5;
/// The breaker looks only after this many finished keys.
const BREAKER_MIN_FINISHED: u64 = 100;
/// Page size for the asset list: the largest MI serves.
const LIST_PAGE: u32 = crate::api::client::MAX_PAGE_SIZE;

/// Why a run stopped before its work was done, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalStop {
    pub message: String,
    pub hint: Option<String>,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// No key is left to send in this run (some may be failed or uncertain).
    Finished,
    /// A fatal answer or the breaker stopped dispatch; untouched keys stay pending.
    Fatal(FatalStop),
    /// Shutdown was requested.
    Interrupted,
    /// Preflight found the settings wrong before anything was sent.
    Refused(FatalStop),
}

/// What a run does besides sending pending keys.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Check the account before the first import.
    pub preflight: bool,
    pub allow_other_bucket: bool,
    /// Buckets the run will send from though the ledger may not list them yet (a listing).
    pub buckets: Vec<String>,
    /// Confirm registered assets, for at most this long after the last import.
    pub confirm: Option<Duration>,
}

/// Whether a source is still adding keys while dispatch runs (a bucket listing). Dispatch
/// waits for more instead of ending when it finds nothing pending.
#[derive(Debug, Default)]
pub struct Feed {
    open: std::sync::atomic::AtomicBool,
    arrived: tokio::sync::Notify,
}

impl Feed {
    pub fn open(&self) {
        self.open.store(true, Relaxed);
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Relaxed)
    }

    /// New keys are in the ledger.
    pub fn arrived(&self) {
        self.arrived.notify_one();
    }

    /// The source has nothing more.
    pub fn close(&self) {
        self.open.store(false, Relaxed);
        self.arrived.notify_one();
    }
}

/// Everything one run needs.
#[derive(Clone)]
pub struct Runner {
    pub client: MiClient,
    pub writer: LedgerWriter,
    pub limiter: Arc<Limiter>,
    pub stats: Arc<Stats>,
    pub scope: Scope,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Cancelled from outside (a signal): finish what is in flight, send nothing new.
    pub shutdown: CancellationToken,
    /// A source still adding keys (a listing), if any.
    pub feed: Arc<Feed>,
    /// Results of sent keys, written a moment later in batches.
    outcomes: Arc<outbox::Outbox<Outcome>>,
    checks: Arc<outbox::Outbox<crate::ledger::checks::CheckResult>>,
    stop: CancellationToken,
    fatal: Arc<Mutex<Option<FatalStop>>>,
}

/// One answer to an idempotent MI call, judged as that call: what `with_retries` needs.
struct Answer<T> {
    call: Call,
    result: Result<T, ApiError>,
}

impl<T> Retryable for Answer<T> {
    fn disposition(&self) -> Disposition {
        match &self.result {
            Ok(_) => Disposition::Success,
            Err(e) => e.disposition_for(self.call),
        }
    }
}

/// One try at one key.
enum Attempt {
    NotSent,
    Answered(Result<Registered, ApiError>),
}

impl Retryable for Attempt {
    fn disposition(&self) -> Disposition {
        match self {
            Attempt::NotSent => Disposition::Abandoned,
            Attempt::Answered(Ok(_)) => Disposition::Success,
            Attempt::Answered(Err(e)) => e.disposition_for(Call::Register),
        }
    }
}

impl Runner {
    pub fn new(
        client: MiClient,
        writer: LedgerWriter,
        limiter: Arc<Limiter>,
        scope: Scope,
        max_attempts: u32,
        shutdown: CancellationToken,
    ) -> Self {
        let stop = shutdown.child_token();
        let gauge = limiter.gauge();
        Self {
            client,
            writer,
            limiter,
            stats: Arc::new(Stats {
                current_rate: gauge,
                ..Stats::default()
            }),
            scope,
            max_attempts,
            backoff: Backoff::default(),
            shutdown,
            feed: Arc::new(Feed::default()),
            outcomes: Arc::default(),
            checks: Arc::default(),
            stop,
            fatal: Arc::new(Mutex::new(None)),
        }
    }

    /// Sends every pending key of the scope (reconciling uncertain ones first) while confirming
    /// registered ones.
    pub async fn run(&self, options: &RunOptions) -> Result<Ending> {
        let dispatch_done = CancellationToken::new();
        let importing = async {
            let ending = self.import(options).await;
            dispatch_done.cancel();
            ending
        };
        let confirming = async {
            match options.confirm {
                Some(patience) => self.confirm(&dispatch_done, patience).await,
                None => Ok(()),
            }
        };
        let (ending, confirmed) = tokio::join!(importing, confirming);
        let ending = ending?;
        confirmed?;
        Ok(match ending {
            Ending::Refused(_) => ending,
            _ => self.ending().unwrap_or(ending),
        })
    }

    /// Only confirms registered assets (the `confirm` command).
    pub async fn confirm_only(&self, patience: Duration) -> Result<Ending> {
        let done = CancellationToken::new();
        done.cancel();
        self.confirm(&done, patience).await?;
        Ok(self.ending().unwrap_or(Ending::Finished))
    }

    async fn import(&self, options: &RunOptions) -> Result<Ending> {
        let scope = self.scope.clone();
        let recovered = self
            .writer
            .write(move |t| ledger::mark_in_flight_uncertain(t, &scope))
            .await?;
        if recovered > 0 {
            tracing::warn!(
                "{recovered} keys were being sent when a run stopped; checking MI before sending them again"
            );
        }
        if options.preflight {
            let scope = self.scope.clone();
            let mut buckets = self
                .writer
                .write(move |t| ledger::buckets_to_send(t, &scope))
                .await?;
            buckets.extend(options.buckets.iter().cloned());
            buckets.sort();
            buckets.dedup();
            if !buckets.is_empty() {
                match self.preflight(&buckets, options.allow_other_bucket).await {
                    None => {}
                    Some(Refusal::Fatal(stop)) => self.stop_for(stop),
                    Some(Refusal::Settings(stop)) => {
                        self.stop.cancel();
                        return Ok(Ending::Refused(stop));
                    }
                }
            }
        }
        for round in 1..=MAX_ROUNDS {
            if let Some(ending) = self.ending() {
                return Ok(ending);
            }
            self.reconcile().await?;
            if let Some(ending) = self.ending() {
                return Ok(ending);
            }
            let scope = self.scope.clone();
            let counts = self
                .writer
                .write(move |t| ledger::counts(t, Some(&scope)))
                .await?;
            let pending = ledger::count_in(&counts, State::Pending);
            if pending == 0 && !self.feed.is_open() {
                return Ok(Ending::Finished);
            }
            if round == 1 {
                self.stats.queued.fetch_add(pending, Relaxed);
            }
            tracing::debug!("round {round}: {pending} keys to send");
            self.dispatch().await?;
        }
        Ok(self.ending().unwrap_or(Ending::Finished))
    }

    fn ending(&self) -> Option<Ending> {
        if let Some(fatal) = self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(Ending::Fatal(fatal));
        }
        self.shutdown.is_cancelled().then_some(Ending::Interrupted)
    }

    /// Stops dispatch for good: nothing more is sent; the reason becomes the run's ending.
    pub fn stop_for(&self, fatal: FatalStop) {
        let mut slot = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!("stopping: {}", fatal.message);
            *slot = Some(fatal);
        }
        self.stop.cancel();
    }

    // ---- dispatch ---------------------------------------------------------------------------

    async fn dispatch(&self) -> Result<()> {
        self.outcomes
            .flushing_during(&self.writer, ledger::record, self.send_pending())
            .await
    }

    async fn send_pending(&self) -> Result<()> {
        let slots = self.limiter.concurrency();
        let admission = Arc::new(Semaphore::new(slots * ADMITTED_PER_SLOT));
        let mut tasks = JoinSet::new();
        'claiming: while !self.stop.is_cancelled() {
            let (scope, want) = (self.scope.clone(), (slots * 2).clamp(1, MAX_CLAIM));
            let batch = self
                .writer
                .write(move |t| ledger::claim(t, &scope, want))
                .await?;
            if batch.is_empty() {
                if !self.feed.is_open() {
                    break;
                }
                tokio::select! {
                    _ = self.feed.arrived.notified() => continue,
                    _ = self.stop.cancelled() => break,
                }
            }
            let mut batch = batch.into_iter();
            while let Some(key) = batch.next() {
                let permit = tokio::select! {
                    p = admission.clone().acquire_owned() => p.expect("never closed"),
                    _ = self.stop.cancelled() => {
                        self.release(std::iter::once(key).chain(batch).collect()).await?;
                        break 'claiming;
                    }
                };
                let runner = self.clone();
                tasks.spawn(async move { runner.import_one(key, permit).await });
                while let Some(done) = tasks.try_join_next() {
                    done??;
                }
            }
        }
        self.drain(tasks).await
    }

    /// Waits for the keys still being sent; on shutdown, only for a while.
    async fn drain(&self, mut tasks: JoinSet<Result<()>>) -> Result<()> {
        let wait_all = async {
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::pin!(wait_all);
        tokio::select! {
            result = &mut wait_all => return result,
            _ = self.shutdown.cancelled() => {}
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut wait_all).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    "requests still unanswered after {SHUTDOWN_GRACE:?}; they will be checked next run"
                );
                Ok(())
            }
        }
    }

    /// Puts claimed keys that were never sent back to `pending`.
    async fn release(&self, keys: Vec<Claimed>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let outcomes: Vec<Outcome> = keys
            .iter()
            .map(|k| Outcome {
                id: k.id,
                ..Default::default()
            })
            .collect();
        self.stats
            .released
            .fetch_add(outcomes.len() as u64, Relaxed);
        self.writer
            .write(move |t| ledger::record(t, &outcomes))
            .await?;
        Ok(())
    }

    async fn import_one(&self, key: Claimed, _admitted: OwnedSemaphorePermit) -> Result<()> {
        let finished = with_retries(self.max_attempts, self.backoff, &self.stop, |attempt| {
            let key = &key;
            async move {
                let _slot = tokio::select! {
                    slot = self.limiter.admit() => slot,
                    _ = self.stop.cancelled() => return Attempt::NotSent,
                };
                if self.stop.is_cancelled() {
                    return Attempt::NotSent;
                }
                if attempt > 1 {
                    self.stats.retries.fetch_add(1, Relaxed);
                }
                self.stats.requests.fetch_add(1, Relaxed);
                let answer = self.client.register(&key.bucket, &key.key).await;
                self.note(answer.as_ref().err());
                Attempt::Answered(answer)
            }
        })
        .await;
        let (outcome, fatal) = outcome_of(&key, finished, self.max_attempts);
        self.count(&outcome);
        if let Some(error) = fatal {
            self.stop_for(FatalStop {
                message: format!("{error} (while registering {}/{})", key.bucket, key.key),
                hint: error.hint().map(str::to_owned),
            });
        }
        self.outcomes.push(outcome);
        Ok(())
    }

    /// Makes an idempotent MI call through the limiter, retried as its answers say.
    async fn call_mi<T, F, Fut>(&self, call: Call, send: F) -> Finished<Answer<T>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        with_retries(self.max_attempts, self.backoff, &self.stop, |_| async {
            let _slot = self.limiter.admit().await;
            self.stats.requests.fetch_add(1, Relaxed);
            let result = send().await;
            self.note(result.as_ref().err());
            Answer { call, result }
        })
        .await
    }

    /// Every MI answer passes here: a 429 slows the whole run down.
    fn note(&self, error: Option<&ApiError>) {
        if error.is_some_and(|e| e.status() == Some(429)) {
            self.stats.throttled.fetch_add(1, Relaxed);
            self.limiter.throttled();
        }
    }

    fn count(&self, outcome: &Outcome) {
        let counter = match outcome.state {
            Some(State::Registered) => &self.stats.registered,
            Some(State::Failed) => &self.stats.failed,
            Some(State::Uncertain) => &self.stats.uncertain,
            _ => &self.stats.released,
        };
        counter.fetch_add(1, Relaxed);
        let failed = self.stats.failed.load(Relaxed);
        let finished = self.stats.finished();
        if finished >= BREAKER_MIN_FINISHED && failed * 2 > finished {
            self.stop_for(FatalStop {
                message: format!("{failed} of the {finished} keys finished so far failed permanently"),
                hint: Some(
                    "something is wrong with the input or the account, not with single keys; \
                     see `mi-import report --state failed`, fix the cause, then run with --retry-failed"
                        .into(),
                ),
            });
        }
    }
}

/// What one key's attempts mean for its row, and the error that must stop the run, if any.
fn outcome_of(
    key: &Claimed,
    finished: Finished<Attempt>,
    max_attempts: u32,
) -> (Outcome, Option<ApiError>) {
    let sent = match finished.last {
        Attempt::NotSent => finished.attempts - 1,
        Attempt::Answered(_) => finished.attempts,
    };
    let mut outcome = Outcome {
        id: key.id,
        attempts: sent,
        ..Default::default()
    };
    let error = match finished.last {
        Attempt::NotSent => return (outcome, None),
        Attempt::Answered(Ok(registered)) => {
            outcome.state = Some(State::Registered);
            outcome.asset_id = Some(registered.asset_id);
            outcome.trace_id = registered.trace_id;
            return (outcome, None);
        }
        Attempt::Answered(Err(error)) => error,
    };
    outcome.http_status = error.status();
    outcome.error_code = error.code().map(str::to_owned);
    outcome.trace_id = error.trace_id().map(str::to_owned);
    outcome.message = Some(error.detail());
    let disposition = error.disposition_for(Call::Register);
    outcome.state = match disposition {
        _ if finished.interrupted => None,
        Disposition::Retry { .. } => {
            outcome.message = Some(format!(
                "gave up after {max_attempts} attempts: {}",
                error.detail()
            ));
            Some(State::Failed)
        }
        Disposition::Uncertain => Some(State::Uncertain),
        Disposition::Permanent => Some(State::Failed),
        Disposition::Fatal => return (outcome, Some(error)),
        Disposition::Success | Disposition::Abandoned => None,
    };
    (outcome, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Claimed {
        Claimed {
            id: 9,
            bucket: "b".into(),
            key: "k.mp4".into(),
        }
    }

    fn answered(status: u16, attempts: u32) -> Finished<Attempt> {
        let err = ApiError::from_answer(
            status,
            br#"{"code":"10001","message":"bad"}"#,
            Some("t".into()),
            None,
        );
        Finished {
            last: Attempt::Answered(Err(err)),
            attempts,
            interrupted: false,
        }
    }

    #[test]
    fn permanent_error_fails_the_key_with_details() {
        let (o, fatal) = outcome_of(&key(), answered(400, 1), 5);
        assert_eq!(o.state, Some(State::Failed));
        assert_eq!(
            (o.attempts, o.http_status, o.error_code.as_deref()),
            (1, Some(400), Some("10001"))
        );
        assert_eq!(o.trace_id.as_deref(), Some("t"));
        assert!(fatal.is_none());
    }

    #[test]
    fn fatal_error_leaves_the_key_pending_and_stops() {
        let (o, fatal) = outcome_of(&key(), answered(401, 1), 5);
        assert_eq!(o.state, None, "pending, not failed");
        assert!(fatal.is_some());
    }

    #[test]
    fn exhausted_retries_fail_and_interrupted_retries_wait() {
        let (o, _) = outcome_of(&key(), answered(429, 5), 5);
        assert_eq!(o.state, Some(State::Failed));
        assert!(o.message.unwrap().starts_with("gave up after 5 attempts"));
        let mut f = answered(503, 2);
        f.interrupted = true;
        assert_eq!(outcome_of(&key(), f, 5).0.state, None);
    }

    #[test]
    fn lost_answer_is_uncertain_and_unsent_attempt_is_not_counted() {
        let lost = ApiError::NoAnswer {
            message: "reset".into(),
            timed_out: false,
        };
        let f = Finished {
            last: Attempt::Answered(Err(lost)),
            attempts: 1,
            interrupted: false,
        };
        assert_eq!(outcome_of(&key(), f, 5).0.state, Some(State::Uncertain));
        let f = Finished {
            last: Attempt::NotSent,
            attempts: 3,
            interrupted: false,
        };
        let (o, _) = outcome_of(&key(), f, 5);
        assert_eq!((o.state, o.attempts), (None, 2));
    }
}
