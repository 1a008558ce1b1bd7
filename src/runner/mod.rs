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

use crate::api::{Answer, ApiError, Call, MiClient, Registered};
use crate::ledger::facts::{self, Fact};
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Claimed, Outcome, Scope, State};
use crate::limiter::Limiter;
use crate::progress::Stats;
use crate::retry::{Backoff, Disposition, Finished, Retryable, with_retries};

mod analysis;
mod apart;
mod asset_list;
mod confirm;
mod listing;
mod lookup;
mod outbox;
mod preflight;
pub mod schedule;

pub use analysis::AnalysisPlan;
pub use listing::ListSummary;
pub use lookup::DEFAULT_LIST_SETTLE;
pub use preflight::linked_bucket;

/// How soon a claim that passed over keys kept apart from a sharer is asked again, if no
/// answer came first.
const HELD_LOOK_AGAIN: Duration = Duration::from_millis(100);
/// Most keys taken from the ledger per claim: one fsync covers them all.
const MAX_CLAIM: usize = 256;
/// Keys claimed ahead of the requests in flight, at most: they wait for the rate limiter
/// while `in_flight` on disk, so a kill leaves at most `--concurrency` plus this many keys
/// to look up in MI's asset list. Enough that the keys claimed ahead keep every place busy
/// while the next claim is committed: half the places are claimed for at once.
const MAX_CLAIM_AHEAD: usize = 64;
/// Pending keys kept back, once an answer was lost, to be sent after the last lost ones: an
/// unknown outcome is proven absent only by an asset of the ledger's own sent after it (a
/// witness that the list is current past that moment), and a run whose last requests lost
/// their answers would have none, and wait `--list-settle`. One goes whenever the latest lost
/// answer has no own asset sent after it; the rest one by one at the end, each the witness of
/// the one before.
const KEEP_BACK: usize = 16;
/// Claims on their way to the ledger at once, at most.
const CLAIMS_ON_THE_WAY: usize = 4;
/// Longest nap of a follow-up loop (confirmation, analyses) while nothing is due, so the end
/// of dispatch and new completions are noticed promptly.
const IDLE_NAP: Duration = Duration::from_millis(500);
/// How long a shutdown waits for requests already sent before it gives up on them (they are
/// reconciled next run).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Passes over MI's asset list in one run before the keys still unsure are left `uncertain`
/// for the next run: each pass pages the whole project.
const MAX_PASSES: u32 = 10;
/// Of those, passes made to learn how late the list shows a new asset, while nothing tells.
const LAG_PROBES: u32 = 3;
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

/// Where a run stops sending, if before the end of its work: after so many keys
/// (`--max-keys`, a trial), or at a moment (`--stop-after`, `--stop-at`, a cron window). What
/// is in flight then is finished and recorded, what was registered is confirmed within
/// `--patience`, the rest waits for the next run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cutoff {
    pub max_keys: Option<u64>,
    pub at: Option<std::time::SystemTime>,
}

impl Cutoff {
    /// Why sending stops now, having sent `sent` keys; `None` to go on.
    fn reached(&self, sent: u64) -> Option<String> {
        if let Some(max) = self.max_keys
            && sent >= max
        {
            return Some(format!(
                "sent the {} --max-keys allows",
                summary_count(max, "key", "keys")
            ));
        }
        self.time_is_up()
    }

    /// Why sending stops now, the stop time having come; `None` to go on.
    fn time_is_up(&self) -> Option<String> {
        match self.at {
            Some(at) if std::time::SystemTime::now() >= at => Some(format!(
                "stopped on time ({})",
                humantime::format_rfc3339_seconds(at)
            )),
            _ => None,
        }
    }
}

fn summary_count(n: u64, one: &'static str, many: &'static str) -> String {
    format!("{n} {}", plural(n, one, many))
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

/// How a run paces itself, beyond the limiter.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub max_attempts: u32,
    /// How long MI's asset list may take to show a new asset: absence proves nothing sooner
    /// (`--list-settle`).
    pub list_settle: Duration,
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
    /// Results of sent keys, written a moment later in batches.
    outcomes: Arc<outbox::Outbox<Outcome>>,
    checks: Arc<outbox::Outbox<crate::ledger::import_status::CheckResult>>,
    analysis_looks: Arc<outbox::Outbox<crate::ledger::analyses::AnalysisCheck>>,
    /// What this project's imports have taken, to look at each when it is likely done.
    import_times: Arc<Mutex<schedule::WorkTimes>>,
    /// What this project's analyses took, as imports' times are kept.
    analysis_times: Arc<Mutex<schedule::WorkTimes>>,
    /// The last pass's walk over the asset list (its pages' digests), for the next pass to
    /// agree with: absence is proven only from a list that held still between two walks.
    last_walk: Arc<Mutex<Option<asset_list::Walked>>>,
    /// Where sending stops early (`--max-keys`, `--stop-after`, `--stop-at`), and why it did.
    pub cutoff: Cutoff,
    claimed: Arc<std::sync::atomic::AtomicU64>,
    cut_off_why: Arc<Mutex<Option<String>>>,
    /// An answer was lost in this run: a baseline pass over the list is wanted, so that what
    /// is sent after it can be told from what was there before.
    baseline_wanted: Arc<std::sync::atomic::AtomicBool>,
    /// When the last baseline pass began.
    last_baseline: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// Nothing but the ledger's own observations is known to order the list: baselines are
    /// renewed while keys are sent, so every send has one within reach.
    unordered: Arc<std::sync::atomic::AtomicBool>,
    /// How long (ms) the list takes to show this ledger's new assets, learned from them: the
    /// settle window follows it, within `--list-settle`.
    list_lag: Arc<Mutex<Option<i64>>>,
    /// How long (ms) the last pass found the oldest of the ledger's own assets missing.
    last_missing_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Keys that may share a listed name, kept apart while they are sent.
    apart: Arc<apart::Apart>,
    /// An answer was lost (in this run, or a run before left keys unknown): the last
    /// [`KEEP_BACK`] pending keys are kept back to witness the lost ones.
    keep_back: Arc<std::sync::atomic::AtomicBool>,
    /// When the latest key that MI's own answer registered in this run was claimed (its
    /// `sent_at`): the list is proven current only up to a witness sent after a lost answer.
    witnessed: Arc<std::sync::atomic::AtomicI64>,
    /// Cancelled when dispatch must end for good: a fatal answer, the breaker, a refused
    /// bucket, or shutdown (whose child it is).
    halt: CancellationToken,
    fatal: Arc<Mutex<Option<FatalStop>>>,
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
            outcomes: Arc::default(),
            checks: Arc::default(),
            analysis_looks: Arc::default(),
            import_times: Arc::default(),
            analysis_times: Arc::default(),
            last_walk: Arc::default(),
            cutoff: Cutoff::default(),
            claimed: Arc::default(),
            cut_off_why: Arc::default(),
            baseline_wanted: Arc::default(),
            last_baseline: Arc::default(),
            unordered: Arc::default(),
            list_lag: Arc::default(),
            last_missing_ms: Arc::default(),
            apart: Arc::default(),
            keep_back: Arc::default(),
            witnessed: Arc::default(),
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
        let early = self
            .cut_off_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
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

    /// Sends what is pending; then, while keys are unsure, waits until MI's list can prove
    /// their fate, looks them up, and sends again those proven absent.
    async fn import(&self) -> Result<Ending> {
        let (scope, run) = (self.scope.clone(), self.run_id);
        let recovered = self
            .writer
            .write(move |t| {
                ledger::keys::mark_in_flight_uncertain(t, &scope, run, ledger::now_ms())
            })
            .await?;
        if recovered > 0 {
            tracing::warn!(
                "{recovered} {} being sent when a run stopped; checking MI before sending {} again",
                plural(recovered as u64, "key was", "keys were"),
                if recovered == 1 { "it" } else { "them" }
            );
        }
        let (scope, feed) = (self.scope.clone(), self.feed.clone());
        let counts = self
            .writer
            .write(move |t| {
                let counts = ledger::keys::counts(t, Some(&scope));
                feed.counted
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                counts
            })
            .await?;
        let pending = ledger::keys::count_in(&counts, State::Pending);
        self.stats.queued.fetch_add(pending, Relaxed);
        if ledger::keys::count_in(&counts, State::Uncertain) > 0 {
            self.keep_back.store(true, Relaxed);
        }
        self.recall_lag().await?;
        self.recall_naming().await?;
        // Where nothing but the ledger's own observations orders the list's assets, a look at
        // the list before sending lets a lost answer's asset be told from an older one.
        let keys_coming = pending > 0 || self.feed.brings_keys.load(Relaxed);
        if keys_coming && self.list_may_be_unordered().await? {
            self.unordered.store(true, Relaxed);
            self.start_baseline();
            self.baseline().await?;
        }
        let mut passes = 0;
        let mut registered_before_pass = None;
        let mut last_pass = 0;
        // Passes in a row that settled nothing: each waits twice as long as the one before,
        // up to the moment `--list-settle` proves absence by itself.
        let mut idle_passes = 0;
        loop {
            if let Some(ending) = self.ending() {
                return Ok(ending);
            }
            self.dispatch(Sending::All).await?;
            // The list must show this run's own last registrations too before a pass can
            // prove anything: a pass during which assets appear is not steady.
            let sent_until = ledger::now_ms();
            if let Some(ending) = self.ending() {
                return Ok(ending);
            }
            // Stopped where the user said: keys still unsure wait for the next run, which
            // looks them up before anything is sent again.
            if self.is_cut_off() {
                return Ok(Ending::Finished);
            }
            let scope = self.scope.clone();
            let unsure = self
                .writer
                .write(move |t| ledger::unsure::uncertain_keys(t, &scope))
                .await?;
            // Keys without candidates wait for a proof a pass can give. Ambiguous keys are
            // worth one more look once this run has registered keys: new witnesses of how MI
            // names, times and numbers assets (a later send bounds the IDs of assets made
            // before it).
            let waiting: Vec<i64> = unsure
                .iter()
                .filter(|u| u.candidates.is_none())
                .map(|u| u.key.unsure_at)
                .collect();
            let registered = self.stats.registered.load(Relaxed);
            let new_witnesses = registered_before_pass.is_none_or(|before| registered > before);
            let ours_ambiguous = unsure
                .iter()
                .any(|u| u.candidates.is_some() && u.run == Some(self.run_id));
            // A key kept back goes when the latest lost answer has no witness yet (sent now,
            // after every unknown outcome so far), or when nothing waits any more.
            let latest = waiting.iter().max().copied();
            let unwitnessed = latest.is_none_or(|at| at >= self.witnessed.load(Relaxed));
            // A pending key, sent now, would witness it.
            let can_witness = unwitnessed && self.any_pending().await?;
            if self.keep_back.load(Relaxed) && can_witness {
                // A stopped run's unknown moment may be still to come: a key sent before it
                // would witness nothing.
                if let Some(at) = latest
                    && at >= ledger::now_ms()
                {
                    self.wait_until(at + 1, unsure.len()).await;
                    continue;
                }
                self.dispatch(Sending::Witness).await?;
                continue;
            }
            if (waiting.is_empty() && !(ours_ambiguous && new_witnesses)) || passes == MAX_PASSES {
                if self.release_kept().await? {
                    continue;
                }
                return Ok(Ending::Finished);
            }
            let latest = latest.unwrap_or(0);
            // While the list's lag is not known, passes soon after sending teach it from this
            // run's own assets (and find the lost answers whose assets they already show).
            let ready = if passes < LAG_PROBES && !self.lag_learned() && registered > 0 {
                sent_until.max(last_pass) + self.lag_probe_gap(passes).as_millis() as i64
            } else {
                let settle = self.settle_window().as_millis() as i64;
                let ceiling = latest + self.pace.list_settle.as_millis() as i64;
                let backoff = last_pass + settle.saturating_mul(1 << idle_passes.min(16));
                let ready =
                    (latest.max(sent_until).max(last_pass) + settle).max(backoff.min(ceiling));
                // Nothing is left to send after the latest lost answer: once a pass has looked
                // for its asset, only `--list-settle` can prove it absent, and passes before
                // then would page the list for nothing (and use up the run's passes).
                if unwitnessed && !can_witness && last_pass >= latest + settle {
                    ready.max(ceiling)
                } else {
                    ready
                }
            };
            self.wait_until(ready, unsure.len()).await;
            if let Some(ending) = self.ending() {
                return Ok(ending);
            }
            passes += 1;
            registered_before_pass = Some(registered);
            let last_pass_began = ledger::now_ms();
            let Some(pass) = self.look_up_unsure().await? else {
                // The list could not be read: the keys kept back go all the same.
                if self.ending().is_none() && self.release_kept().await? {
                    continue;
                }
                return Ok(self.ending().unwrap_or(Ending::Finished));
            };
            // Nothing to send again (so no new witnesses), and nothing a later pass could
            // prove sooner: done for this run.
            if pass.settled.resend == 0 && (pass.proven || pass.settled.waiting == 0) {
                if self.ending().is_none() && self.release_kept().await? {
                    continue;
                }
                return Ok(self.ending().unwrap_or(Ending::Finished));
            }
            // Idle only if it came a whole settle window after the latest unknown outcome
            // (as learned now): then what it lacked was a witness, not time.
            let late_enough = last_pass_began >= latest + self.settle_window().as_millis() as i64;
            if pass.settled.resend > 0 || pass.settled.registered > 0 {
                idle_passes = 0;
            } else if late_enough {
                idle_passes += 1;
            }
            last_pass = ledger::now_ms();
        }
    }

    /// Whether a baseline pass should start now: an answer was lost in this run (or nothing
    /// else orders the list), and no baseline began within half the reach of one
    /// ([`crate::reconcile::BASELINE_REACH_MS`]).
    fn baseline_due(&self) -> bool {
        if !(self.baseline_wanted.load(Relaxed) || self.unordered.load(Relaxed)) {
            return false;
        }
        let reach = Duration::from_millis(crate::reconcile::BASELINE_REACH_MS as u64 / 2);
        self.last_baseline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= reach)
    }

    fn start_baseline(&self) {
        self.baseline_wanted.store(false, Relaxed);
        *self.last_baseline.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now());
    }

    /// Whether sending stopped where the user said.
    pub(super) fn is_cut_off(&self) -> bool {
        self.cut_off_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Stops sending if `--max-keys` or the stop time has come: whether it has.
    fn cut_off_if_due(&self) -> bool {
        let why = self.cutoff.reached(self.claimed.load(Relaxed));
        self.cut_off(why)
    }

    /// Stops sending if the stop time has come (a key claimed before it, waiting on the
    /// limiter or a backoff, is not sent after it): whether it has.
    fn out_of_time(&self) -> bool {
        match self.cutoff.time_is_up() {
            Some(why) => self.cut_off(Some(why)),
            None => false,
        }
    }

    fn cut_off(&self, why: Option<String>) -> bool {
        if self.is_cut_off() {
            return true;
        }
        let Some(why) = why else {
            return false;
        };
        tracing::info!("{why}: no more keys are sent this run");
        *self.cut_off_why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        true
    }

    /// Sleeps until `at` (Unix ms) unless the run is stopped, saying why.
    async fn wait_until(&self, at: i64, keys: usize) {
        let wait = at - ledger::now_ms();
        if wait <= 0 {
            return;
        }
        let wait = Duration::from_millis(wait as u64);
        tracing::info!(
            "{keys} {} an unknown outcome; waiting {} until MI's asset list can show whether {} registered",
            plural(keys as u64, "key has", "keys have"),
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1))),
            if keys == 1 { "it was" } else { "they were" }
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.halt.cancelled() => {}
        }
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

    // ---- dispatch ---------------------------------------------------------------------------

    /// Whether any key of the scope is pending.
    async fn any_pending(&self) -> Result<bool> {
        let scope = self.scope.clone();
        let n = self
            .writer
            .write(move |t| ledger::keys::pending_upto(t, &scope, 1))
            .await?;
        Ok(n > 0)
    }

    /// Sends the keys kept back, all at once, if any: the run is about to end without
    /// another pass that they could witness for.
    async fn release_kept(&self) -> Result<bool> {
        if !self.keep_back.swap(false, Relaxed) || !self.any_pending().await? {
            return Ok(false);
        }
        self.dispatch(Sending::All).await?;
        Ok(true)
    }

    async fn dispatch(&self, sending: Sending) -> Result<()> {
        let (run, apart) = (self.run_id, self.apart.clone());
        self.outcomes
            .flushing_during(
                &self.writer,
                move |t, outcomes| {
                    let changed = ledger::keys::record(t, outcomes, run)?;
                    // A name is free once the ledger holds its key's outcome: a kill before
                    // that leaves the key unknown, as if still in flight.
                    apart.written(outcomes, ledger::now_ms());
                    Ok(changed)
                },
                self.send_pending_on_a_worker(sending),
            )
            .await
    }

    /// [`Self::send_pending`] as a task of the runtime: it is woken by every key's answer,
    /// and a wake-up from a worker to the thread outside the runtime costs a system call each.
    async fn send_pending_on_a_worker(&self, sending: Sending) -> Result<()> {
        tokio::spawn(Arc::new(self.clone()).send_pending(sending)).await?
    }

    /// Claims keys only as places to send them free up: at most `--concurrency` plus a small
    /// batch are `in_flight` at any moment. A claim is asked once half the places are free,
    /// while the keys claimed ahead keep the sending places busy, and several may be on their
    /// way at once (the writer commits those that meet in one transaction, with the results
    /// waiting there): every commit is an fsync and a run of pages written, and claims of a
    /// few keys each made the ledger, not MI, bound an unlimited run.
    async fn send_pending(self: Arc<Self>, sending: Sending) -> Result<()> {
        let slots = self.limiter.concurrency();
        let capacity = slots + slots.min(MAX_CLAIM_AHEAD);
        let admission = Arc::new(Semaphore::new(capacity));
        let step = (capacity / 2).max(1) as u32;
        // One handle for every key's task, not a copy of the runner each.
        let this = self.clone();
        let mut tasks = JoinSet::new();
        let mut claims: JoinSet<Result<ClaimAnswer>> = JoinSet::new();
        // Keys asked for by the claims on their way (so `--max-keys` is not overshot).
        let mut asking = 0usize;
        // The last claim found nothing pending: wait for the feed before asking again.
        let mut dry = false;
        // ... and it was asked after the source ended: nothing more can come.
        let mut dry_for_good = false;
        // The last claim passed over keys kept apart from a sharer: ask again once a key's
        // answer came or a moment passed, not at once.
        let mut held = false;
        // A witness is one key: claimed, sent, answered.
        let mut budget = (sending == Sending::Witness).then_some(1usize);
        loop {
            if self.halt.is_cancelled() || self.cut_off_if_due() {
                break;
            }
            if budget == Some(0) && claims.is_empty() {
                break;
            }
            if dry && claims.is_empty() && !self.feed.is_open() {
                if dry_for_good {
                    break;
                }
                // The source ended after that claim was asked: its last rows may have come
                // in between, so one more look.
                dry = false;
            }
            let left = [
                self.cutoff
                    .max_keys
                    .map(|max| max.saturating_sub(self.claimed.load(Relaxed)) as usize),
                budget,
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|left| left.saturating_sub(asking));
            let may_ask = !dry && !held && claims.len() < CLAIMS_ON_THE_WAY && left != Some(0);
            let until_stop = self
                .cutoff
                .at
                .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok());
            tokio::select! {
                biased;
                _ = self.halt.cancelled() => break,
                Some(claimed) = claims.join_next(), if !claims.is_empty() => {
                    let (claimed, passed_over, permits, ended) = claimed??;
                    asking -= permits.num_permits();
                    self.claimed.fetch_add(claimed.len() as u64, Relaxed);
                    if let Some(b) = &mut budget {
                        *b = b.saturating_sub(claimed.len());
                    }
                    if passed_over && claimed.len() < permits.num_permits() {
                        // Pending keys wait for a sharer: not dry, nor for good.
                        held = true;
                        dry = false;
                    } else if claimed.len() < permits.num_permits() {
                        dry = true;
                        dry_for_good = ended;
                    } else {
                        // Rows came in after the short one: there may be more.
                        dry = false;
                    }
                    if claimed.is_empty() {
                        continue;
                    }
                    if self.baseline_due() {
                        self.start_baseline();
                        let runner = this.clone();
                        tasks.spawn(async move { runner.baseline().await });
                    }
                    send_each(&this, &mut tasks, claimed, permits);
                }
                p = admission.clone().acquire_many_owned(step), if may_ask => {
                    let mut permits = p.expect("never closed");
                    while permits.num_permits() < MAX_CLAIM {
                        match admission.clone().try_acquire_owned() {
                            Ok(p) => permits.merge(p),
                            Err(_) => break,
                        }
                    }
                    if let Some(left) = left
                        && permits.num_permits() > left
                    {
                        drop(permits.split(permits.num_permits() - left));
                    }
                    asking += permits.num_permits();
                    let want = permits.num_permits();
                    let (writer, scope, run) = (self.writer.clone(), self.scope.clone(), self.run_id);
                    let asks = self.asks_analysis;
                    let apart = self.apart.clone();
                    let ended = !self.feed.is_open();
                    // Once the source has ended, the last keys wait to witness lost answers.
                    let keep = match sending {
                        Sending::All if ended && self.keep_back.load(Relaxed) => KEEP_BACK,
                        _ => 0,
                    };
                    claims.spawn(async move {
                        let (claimed, passed_over) = writer
                            .write(move |t| {
                                let want = match keep {
                                    0 => want,
                                    keep => want.min(
                                        ledger::keys::pending_upto(t, &scope, want + keep)?
                                            .saturating_sub(keep),
                                    ),
                                };
                                if want == 0 {
                                    return Ok((Vec::new(), false));
                                }
                                let now = ledger::now_ms();
                                let (claimed, passed_over) =
                                    apart.claim(t, &scope, want, run, now)?;
                                if asks {
                                    ledger::analyses::note_asked(t, claimed.iter().map(|c| c.id))?;
                                }
                                Ok((claimed, passed_over))
                            })
                            .await?;
                        Ok((claimed, passed_over, permits, ended))
                    });
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    done??;
                    held = false;
                }
                _ = tokio::time::sleep(HELD_LOOK_AGAIN), if held => held = false,
                _ = self.feed.arrived.notified(), if dry => dry = false,
                _ = tokio::time::sleep(until_stop.unwrap_or(Duration::MAX)), if dry && until_stop.is_some() => {}
            }
        }
        // Keys claimed on the way are handed to their tasks, which see the stop and put them
        // back as they were: none is left `in_flight` unsent.
        while let Some(claimed) = claims.join_next().await {
            let (claimed, _, permits, _) = claimed??;
            self.claimed.fetch_add(claimed.len() as u64, Relaxed);
            send_each(&this, &mut tasks, claimed, permits);
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

    async fn import_one(&self, key: Claimed, _place: OwnedSemaphorePermit) -> Result<()> {
        let finished = with_retries(
            self.pace.max_attempts,
            self.backoff,
            &self.halt,
            |attempt| {
                let key = &key;
                async move {
                    let _slot = tokio::select! {
                        slot = self.limiter.admit() => slot,
                        _ = self.halt.cancelled() => return Attempt::NotSent,
                    };
                    // A killed run's unknown moments are dated from its heartbeat: a key that
                    // waited long (limiter, backoff) leaves only once it is recent.
                    let beat = self
                        .writer
                        .beat_within(ledger::keys::HEARTBEAT_MAX_AGE)
                        .await;
                    if self.halt.is_cancelled() || beat.is_err() || self.out_of_time() {
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
            },
        )
        .await;
        let (outcome, fatal) = outcome_of(&key, finished, self.pace.max_attempts);
        match outcome.state {
            Some(State::Registered) => {
                self.witnessed.fetch_max(key.sent_at, Relaxed);
            }
            Some(State::Uncertain) => tracing::debug!(
                "{}/{}: outcome unknown ({})",
                crate::escape::shown(&key.bucket),
                crate::escape::shown(&key.key),
                crate::escape::shown(outcome.message.as_deref().unwrap_or("no answer"))
            ),
            _ => {}
        }
        self.count(&outcome);
        if let Some(error) = fatal {
            self.halt_for(FatalStop {
                message: format!(
                    "{error} (while registering {}/{})",
                    crate::escape::shown(&key.bucket),
                    crate::escape::shown(&key.key)
                ),
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

    fn count(&self, outcome: &Outcome) {
        if outcome.state == Some(State::Uncertain) {
            self.baseline_wanted.store(true, Relaxed);
            self.keep_back.store(true, Relaxed);
        }
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
            self.halt_for(FatalStop {
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

/// What a dispatch sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// Every pending key, but those kept back ([`KEEP_BACK`]) once an answer was lost.
    All,
    /// One key, kept back or not: a witness for the answers lost so far.
    Witness,
}

/// A claim's keys, whether it passed over keys kept apart, its places, and whether the
/// source had ended when it was asked.
type ClaimAnswer = (Vec<Claimed>, bool, OwnedSemaphorePermit, bool);

/// Each claimed key to a task of its own, with one of the claim's places.
fn send_each(
    runner: &Arc<Runner>,
    tasks: &mut JoinSet<Result<()>>,
    claimed: Vec<Claimed>,
    mut places: OwnedSemaphorePermit,
) {
    for key in claimed {
        let place = places.split(1).expect("one place per claimed key");
        let runner = runner.clone();
        tasks.spawn(async move { runner.import_one(key, place).await });
    }
}

pub fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
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
        // The last request may have reached MI: its outcome is unknown, interrupted or not.
        Disposition::Uncertain => Some(State::Uncertain),
        _ if finished.interrupted => None,
        Disposition::Retry { .. } => {
            outcome.message = Some(format!(
                "gave up after {max_attempts} attempts: {}",
                error.detail()
            ));
            Some(State::Failed)
        }
        Disposition::Permanent => Some(State::Failed),
        Disposition::Fatal => return (outcome, Some(error)),
        Disposition::Success | Disposition::Abandoned => None,
    };
    (outcome, None)
}

/// How long a follow-up loop sleeps: until its soonest due look (Unix ms), at most
/// [`IDLE_NAP`], and never past its deadline.
fn nap(soonest: Option<i64>, deadline: Option<tokio::time::Instant>) -> Duration {
    let until_due = soonest
        .map(|at| (at - ledger::now_ms()).max(1) as u64)
        .unwrap_or(u64::MAX);
    let nap = Duration::from_millis(until_due).min(IDLE_NAP);
    match deadline {
        Some(d) => nap.min(d.saturating_duration_since(tokio::time::Instant::now())),
        None => nap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Claimed {
        Claimed {
            id: 9,
            bucket: "b".into(),
            key: "k.mp4".into(),
            sent_at: 0,
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
        let mut f = answered(429, 2);
        f.interrupted = true;
        assert_eq!(outcome_of(&key(), f, 5).0.state, None);
    }

    #[test]
    fn a_gateway_error_on_register_is_an_unknown_outcome_never_a_retry() {
        for status in [408, 500, 502, 503, 504] {
            let (o, fatal) = outcome_of(&key(), answered(status, 1), 5);
            assert_eq!(o.state, Some(State::Uncertain), "HTTP {status}");
            assert!(fatal.is_none());
        }
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
