//! The pipeline: ledger → claim → limiter → MI → ledger, with retries, a fatal stop, a
//! failure-rate breaker, graceful shutdown, and reconciliation of uncertain keys.
//!
//! - [`Runner`] (here) is the handle every part shares: the client, the ledger's writer, the
//!   limiter, the run's settings, how it ends, and each part's own state;
//! - `dispatch`: the claim loop, each key's attempts through the limiter, their outcomes;
//! - `passes`: the pass scheduler: when a run looks its unsure keys up, keeps keys back to
//!   witness lost answers, and probes the list's lag;
//! - `lookup`: one pass over the asset list (`asset_list` walks it), judged by
//!   [`crate::reconcile`], with the candidates' asset details (`details`); `apart` keeps keys of one file name apart while they are sent;
//! - `confirm` and `analysis` follow registered assets and their analyses (`schedule` says
//!   when to look); `listing` feeds a bucket listing in; `preflight` checks the account;
//!   `outbox` batches results for the writer.
//!
//! The runner never decides what an answer means (that is `api::error`) nor how long to wait
//! (`retry`); it moves keys between states and keeps the promise that matters most: a key is
//! `in_flight` on disk before its request leaves, and a key whose outcome is unknown is looked
//! up in MI's asset list before it is sent again.

use anyhow::Result;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::api::{Answer, ApiError, Call, MiClient};
use crate::ledger::facts::{self, Fact};
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Scope};
use crate::limiter::Limiter;
use crate::progress::Stats;
use crate::retry::{Backoff, Finished, with_retries};

mod analysis;
mod apart;
mod asset_list;
mod confirm;
mod details;
mod dispatch;
mod listing;
mod lookup;
mod outbox;
pub mod pace;
mod passes;
mod preflight;
pub mod schedule;

pub use analysis::AnalysisPlan;
pub use details::DETAILS_PER_RUN;
pub use dispatch::Cutoff;
pub use listing::ListSummary;
pub use lookup::DEFAULT_LIST_SETTLE;
pub use pace::{Floors, Pace};
pub use preflight::linked_bucket;

/// Longest nap of a follow-up loop (confirmation, analyses) while nothing is due, so the end
/// of dispatch and new completions are noticed promptly.
const IDLE_NAP: Duration = Duration::from_millis(500);

/// How long a shutdown waits for requests already sent before it gives up on them (they are
/// reconciled next run).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    /// Sending stopped where the user said (`--stop-after`, `--stop-at`, `--max-keys`); what
    /// was sent was finished and confirmed, the rest waits for the next run.
    StoppedOnTime(String),
}

/// What a run does besides sending pending keys.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub allow_other_bucket: bool,
    /// Buckets the run will send from though the ledger may not list them yet (a listing).
    pub buckets: Vec<String>,
    /// Confirm registered assets, for at most this long after the last import.
    pub confirm: Option<Duration>,
    /// Request analysis of keys that complete (and of keys completed before), and follow it.
    pub analyze: Option<AnalysisPlan>,
    /// Where sending stops before the work is done, if the user said.
    pub cutoff: Cutoff,
}

/// Whether a source is still adding keys while dispatch runs (a bucket listing). Dispatch
/// waits for more instead of ending when it finds nothing pending.
#[derive(Debug, Default)]
pub struct Feed {
    open: std::sync::atomic::AtomicBool,
    arrived: tokio::sync::Notify,
    /// The source knows it brings keys to send (before the first of them is in).
    brings_keys: std::sync::atomic::AtomicBool,
    /// Dispatch has counted the pending keys it starts with: a source counts what it adds
    /// after that, and only that, into the progress's total.
    counted: std::sync::atomic::AtomicBool,
}

impl Feed {
    /// The source will bring keys to send, though none may be in the ledger yet.
    pub fn brings_keys(&self) {
        self.brings_keys.store(true, Relaxed);
    }

    /// Whether dispatch has counted its pending keys (read inside a ledger transaction, it
    /// says whether that count came before the transaction).
    pub fn counted(&self) -> bool {
        self.counted.load(std::sync::atomic::Ordering::SeqCst)
    }

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

    /// Closes the feed when dropped: every way out of a source ends dispatch's wait.
    pub fn closer(self: &Arc<Self>) -> FeedCloser {
        FeedCloser(self.clone())
    }
}

/// See [`Feed::closer`].
pub struct FeedCloser(Arc<Feed>);

impl Drop for FeedCloser {
    fn drop(&mut self) {
        self.0.close();
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
    /// This run's row in `runs`: keys it settles carry it, so the exit code is about this run.
    pub run_id: i64,
    pub pace: Pace,
    pub backoff: Backoff,
    /// Cancelled from outside (a signal): finish what is in flight, send nothing new.
    pub shutdown: CancellationToken,
    /// A source still adding keys (a listing), if any.
    pub feed: Arc<Feed>,
    /// The run was asked to analyse (`--analyze`): the keys it sends and completes record
    /// that wish, so a later run analyses them too, and no other completed key.
    pub asks_analysis: bool,
    /// Where sending stops early (`--max-keys`, `--stop-after`, `--stop-at`).
    pub cutoff: Cutoff,
    /// What sending keys keeps between claims and answers.
    dispatch: Arc<dispatch::Dispatch>,
    /// What the passes over the asset list keep between them.
    passes: Arc<passes::Passes>,
    /// What following imports keeps: results to write, what imports take.
    confirming: Arc<confirm::Confirming>,
    /// The same for analyses.
    analysing: Arc<analysis::Analysing>,
    /// Cancelled when dispatch must end for good: a fatal answer, the breaker, a refused
    /// bucket, or shutdown (whose child it is).
    halt: CancellationToken,
    fatal: Arc<Mutex<Option<FatalStop>>>,
}

impl Runner {
    pub fn new(
        client: MiClient,
        writer: LedgerWriter,
        limiter: Arc<Limiter>,
        scope: Scope,
        run_id: i64,
        pace: Pace,
        shutdown: CancellationToken,
    ) -> Self {
        let halt = shutdown.child_token();
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
            run_id,
            pace,
            backoff: Backoff::default(),
            shutdown,
            feed: Arc::new(Feed::default()),
            asks_analysis: false,
            cutoff: Cutoff::default(),
            dispatch: Arc::default(),
            passes: Arc::default(),
            confirming: Arc::default(),
            analysing: Arc::default(),
            halt,
            fatal: Arc::new(Mutex::new(None)),
        }
    }

    /// A fact the ledger learned about this scope's MI project, if any.
    async fn fact(&self, fact: Fact) -> Result<Option<String>> {
        let scope = self.scope.clone();
        self.writer
            .write(move |t| facts::get(t, &scope, fact))
            .await
    }

    /// Keeps the limit MI was seen to keep, for the dry run's estimate of the next: learned
    /// when a wave of 429s fell silent below it, forgotten when a run went faster unrefused.
    async fn remember_limit(&self) -> Result<()> {
        let (Some(rate), requests) = (self.limiter.rate(), self.stats.requests.load(Relaxed))
        else {
            return Ok(());
        };
        let known = self.limiter.known_limit();
        let throttled = self.stats.throttled.load(Relaxed);
        if known.is_none() && (requests < 100 || throttled * 50 > requests) {
            return Ok(());
        }
        let scope = self.scope.clone();
        self.writer
            .write(move |t| match known {
                Some(limit) => facts::set(t, &scope, Fact::RateLimit, &format!("{limit:.1}")),
                None => match facts::get(t, &scope, Fact::RateLimit)?
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    Some(kept) if kept < rate => facts::forget(t, &scope, Fact::RateLimit),
                    _ => Ok(()),
                },
            })
            .await?;
        Ok(())
    }

    /// Sends every pending key of the scope while confirming registered ones, and settles
    /// keys whose outcome is unknown. The account was checked first ([`Runner::preflight`]).
    pub async fn run(&self, options: &RunOptions) -> Result<Ending> {
        let (dispatch_done, confirm_done) = (CancellationToken::new(), CancellationToken::new());
        let importing = async {
            let ending = self.import().await;
            dispatch_done.cancel();
            ending
        };
        let confirming = async {
            let confirmed = match options.confirm {
                Some(patience) => self.confirm(&dispatch_done, patience).await,
                None => {
                    dispatch_done.cancelled().await;
                    Ok(())
                }
            };
            confirm_done.cancel();
            confirmed
        };
        let analysing = async {
            match &options.analyze {
                Some(plan) => {
                    let patience = options.confirm.unwrap_or_default();
                    self.analyze(plan, &confirm_done, patience).await
                }
                None => Ok(()),
            }
        };
        let (ending, confirmed, analysed) = tokio::join!(importing, confirming, analysing);
        self.remember_limit().await?;
        let ending = ending?;
        confirmed?;
        analysed?;
        let early = self.cut_off_why();
        Ok(match (self.ending(), early) {
            (Some(ending), _) => ending,
            (None, Some(why)) if ending == Ending::Finished => Ending::StoppedOnTime(why),
            (None, _) => ending,
        })
    }

    /// Only requests and follows analyses (the `analyze` command), after checking the account.
    pub async fn analyze_only(&self, plan: &AnalysisPlan, patience: Duration) -> Result<Ending> {
        if let Err(ending) = self.preflight().await? {
            return Ok(ending);
        }
        let done = CancellationToken::new();
        done.cancel();
        self.analyze(plan, &done, patience).await?;
        Ok(self.ending().unwrap_or(Ending::Finished))
    }

    /// Only confirms registered assets (the `confirm` command), after checking the account.
    pub async fn confirm_only(&self, patience: Duration) -> Result<Ending> {
        if let Err(ending) = self.preflight().await? {
            return Ok(ending);
        }
        let done = CancellationToken::new();
        done.cancel();
        self.confirm(&done, patience).await?;
        Ok(self.ending().unwrap_or(Ending::Finished))
    }

    /// Preflight, before any other MI call: a wrong key pair, workspace or project stops
    /// here; and only once they are known to exist may a later 404 be read as being about
    /// one asset. The bucket the workspace is linked to, if its details name one.
    pub async fn preflight(&self) -> Result<Result<Option<String>, Ending>> {
        Ok(match self.look_at_account().await {
            Ok(linked) => Ok(linked),
            Err(stop) => {
                self.halt_for(stop.clone());
                Err(Ending::Fatal(stop))
            }
        })
    }

    /// Refuses keys in buckets other than the one the workspace is linked to, unless allowed
    /// (a settings error: nothing is sent).
    pub async fn refuse_other_buckets(
        &self,
        linked: Option<&str>,
        options: &RunOptions,
    ) -> Result<Option<FatalStop>> {
        let Some(linked) = linked else {
            tracing::info!("the workspace's details name no linked bucket; buckets not checked");
            return Ok(None);
        };
        let scope = self.scope.clone();
        let mut buckets = self
            .writer
            .write(move |t| ledger::keys::buckets_to_send(t, &scope))
            .await?;
        buckets.extend(options.buckets.iter().cloned());
        buckets.sort();
        buckets.dedup();
        let refusal = preflight::bucket_refusal(linked, &buckets, options.allow_other_bucket);
        if refusal.is_some() {
            self.halt.cancel();
        }
        Ok(refusal)
    }

    fn ending(&self) -> Option<Ending> {
        if let Some(fatal) = self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(Ending::Fatal(fatal));
        }
        self.shutdown.is_cancelled().then_some(Ending::Interrupted)
    }

    /// Stops dispatch for good: nothing more is sent; the reason becomes the run's ending.
    pub fn halt_for(&self, fatal: FatalStop) {
        let mut slot = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::debug!("stopping: {}", fatal.message);
            *slot = Some(fatal);
        }
        self.halt.cancel();
    }

    /// Makes an idempotent MI call through the limiter, retried as its answers say.
    async fn call_mi<T, F, Fut>(&self, call: Call, send: F) -> Finished<Answer<T>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        with_retries(
            self.pace.max_attempts,
            self.backoff,
            &self.halt,
            |_| async {
                let _slot = self.limiter.admit().await;
                self.stats.requests.fetch_add(1, Relaxed);
                let result = send().await;
                self.note(result.as_ref().err());
                Answer { call, result }
            },
        )
        .await
    }

    /// Every MI answer passes here: a wave of 429s slows the whole run down.
    fn note(&self, error: Option<&ApiError>) {
        let throttled = error.is_some_and(|e| e.status() == Some(429));
        if throttled {
            self.stats.throttled.fetch_add(1, Relaxed);
        }
        if error.is_none_or(|e| e.status().is_some()) {
            self.limiter.answered(throttled);
        }
    }
}

pub fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// How long a follow-up loop sleeps: until its soonest due look (Unix ms), at most
/// [`IDLE_NAP`], and never past its deadline. A soonest look already due is one the loop
/// could not take (out, gathered for a pass, or answered and not written yet): it frees up
/// as its task ends or the outbox flushes, so the loop sleeps a flush rather than poll the
/// ledger every millisecond meanwhile.
fn nap(soonest: Option<i64>, deadline: Option<tokio::time::Instant>) -> Duration {
    let now = crate::clock::now_ms();
    let until_due = match soonest {
        Some(at) if at <= now => outbox::FLUSH_EVERY,
        Some(at) => Duration::from_millis((at - now) as u64),
        None => Duration::MAX,
    };
    let nap = until_due.min(IDLE_NAP);
    match deadline {
        Some(d) => nap.min(d.saturating_duration_since(tokio::time::Instant::now())),
        None => nap,
    }
}
