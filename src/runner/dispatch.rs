//! Dispatch: claims pending keys only as places to send them free up (durably `in_flight`
//! before any request leaves), sends each through the limiter with retries, and records each
//! outcome. A fatal answer or the breaker halts it; the user's [`Cutoff`] ends it early; keys
//! claimed but not sent go back to `pending`.

use anyhow::Result;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{FatalStop, Runner, SHUTDOWN_GRACE, apart, outbox, plural};
use crate::api::{ApiError, Call, Registered};
use crate::ledger::{self, Claimed, Outcome, State};
use crate::retry::{Disposition, Finished, Retryable, with_retries};

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

/// The breaker looks only after this many finished keys.
const BREAKER_MIN_FINISHED: u64 = 100;

/// What sending keys keeps between claims and answers, for the whole run.
#[derive(Default)]
pub(super) struct Dispatch {
    /// Results of sent keys, written a moment later in batches.
    outcomes: outbox::Outbox<Outcome>,
    /// Keys claimed so far in this run (for `--max-keys`).
    claimed: AtomicU64,
    /// Why sending was cut off where the user said, once it was.
    cut_off_why: Mutex<Option<String>>,
    /// Keys that may share a listed name, kept apart while they are sent.
    pub(super) apart: Arc<apart::Apart>,
    /// An answer was lost (in this run, or a run before left keys unknown): the last
    /// [`KEEP_BACK`] pending keys are kept back to witness the lost ones.
    pub(super) keep_back: AtomicBool,
    /// When the latest key that MI's own answer registered in this run was claimed (its
    /// `sent_at`): the list is proven current only up to a witness sent after a lost answer.
    pub(super) witnessed: AtomicI64,
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
            Some(at) if crate::clock::now() >= at => Some(format!(
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
    /// Whether sending stopped where the user said.
    /// Why sending was cut off where the user said, if it was.
    pub(super) fn cut_off_why(&self) -> Option<String> {
        self.dispatch
            .cut_off_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn is_cut_off(&self) -> bool {
        self.dispatch
            .cut_off_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Stops sending if `--max-keys` or the stop time has come: whether it has.
    fn cut_off_if_due(&self) -> bool {
        let why = self.cutoff.reached(self.dispatch.claimed.load(Relaxed));
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
        *self
            .dispatch
            .cut_off_why
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(why);
        true
    }

    /// Whether any key of the scope is pending.
    pub(super) async fn any_pending(&self) -> Result<bool> {
        let scope = self.scope.clone();
        let n = self
            .writer
            .write(move |t| ledger::keys::pending_upto(t, &scope, 1))
            .await?;
        Ok(n > 0)
    }

    /// Sends the keys kept back, all at once, if any: the run is about to end without
    /// another pass that they could witness for.
    pub(super) async fn release_kept(&self) -> Result<bool> {
        if !self.dispatch.keep_back.swap(false, Relaxed) || !self.any_pending().await? {
            return Ok(false);
        }
        self.dispatch(Sending::All).await?;
        Ok(true)
    }

    pub(super) async fn dispatch(&self, sending: Sending) -> Result<()> {
        let (run, apart) = (self.run_id, self.dispatch.apart.clone());
        let first_look = self.pace.floors.first_look;
        self.dispatch
            .outcomes
            .flushing_during(
                &self.writer,
                move |t, outcomes| {
                    let changed = ledger::keys::record(t, outcomes, run, first_look)?;
                    // A name is free once the ledger holds its key's outcome: a kill before
                    // that leaves the key unknown, as if still in flight.
                    apart.written(outcomes, crate::clock::now_ms());
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
                    .map(|max| max.saturating_sub(self.dispatch.claimed.load(Relaxed)) as usize),
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
                .and_then(|at| at.duration_since(crate::clock::now()).ok());
            tokio::select! {
                biased;
                _ = self.halt.cancelled() => break,
                Some(claimed) = claims.join_next(), if !claims.is_empty() => {
                    let (claimed, passed_over, permits, ended) = claimed??;
                    asking -= permits.num_permits();
                    self.dispatch.claimed.fetch_add(claimed.len() as u64, Relaxed);
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
                    let apart = self.dispatch.apart.clone();
                    let ended = !self.feed.is_open();
                    // Once the source has ended, the last keys wait to witness lost answers.
                    let keep = match sending {
                        Sending::All if ended && self.dispatch.keep_back.load(Relaxed) => KEEP_BACK,
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
                                let now = crate::clock::now_ms();
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
            self.dispatch
                .claimed
                .fetch_add(claimed.len() as u64, Relaxed);
            send_each(&this, &mut tasks, claimed, permits);
        }
        self.drain(tasks).await
    }

    /// Waits for the keys still being sent; on shutdown, only for a while.
    pub(super) async fn drain(&self, mut tasks: JoinSet<Result<()>>) -> Result<()> {
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
                    let beat = self.writer.beat_within(self.pace.floors.heartbeat).await;
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
                self.dispatch.witnessed.fetch_max(key.sent_at, Relaxed);
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
        self.dispatch.outcomes.push(outcome);
        Ok(())
    }

    fn count(&self, outcome: &Outcome) {
        if outcome.state == Some(State::Uncertain) {
            self.passes.baseline_wanted.store(true, Relaxed);
            self.dispatch.keep_back.store(true, Relaxed);
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
pub(super) enum Sending {
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
