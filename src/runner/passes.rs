//! The pass scheduler: a run sends what is pending; then, while keys are unsure, it waits
//! until MI's asset list can prove their fate, passes over it (`lookup`), and sends again
//! those proven absent. Between passes it keeps pending keys back to witness lost answers,
//! probes how late the list shows new assets, and doubles its waits while passes settle
//! nothing, up to `--list-settle`.

use anyhow::Result;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use super::dispatch::Sending;
use super::{Ending, Runner, asset_list, plural};
use crate::ledger::{self, State};

/// Passes over MI's asset list in one run before the keys still unsure are left `uncertain`
/// for the next run: each pass pages the whole project.
const MAX_PASSES: u32 = 10;

/// Of those, passes made to learn how late the list shows a new asset, while nothing tells.
const LAG_PROBES: u32 = 3;

/// What the passes over the asset list keep between them, for the whole run.
#[derive(Debug, Default)]
pub(super) struct Passes {
    /// The last pass's walk over the asset list (its pages' digests), for the next pass to
    /// agree with: absence is proven only from a list that held still between two walks.
    pub(super) last_walk: Mutex<Option<asset_list::Walked>>,
    /// An answer was lost in this run: a baseline pass over the list is wanted, so that what
    /// is sent after it can be told from what was there before.
    pub(super) baseline_wanted: AtomicBool,
    /// When the last baseline pass began.
    last_baseline: Mutex<Option<tokio::time::Instant>>,
    /// Nothing but the ledger's own observations is known to order the list: baselines are
    /// renewed while keys are sent, so every send has one within reach.
    pub(super) unordered: AtomicBool,
    /// How long (ms) the list takes to show this ledger's new assets, learned from them: the
    /// settle window follows it, within `--list-settle`.
    pub(super) list_lag: Mutex<Option<i64>>,
    /// How long (ms) the last pass found the oldest of the ledger's own assets missing.
    pub(super) last_missing_ms: AtomicU64,
    /// Asset details asked of MI in this run (`details::DETAILS_PER_RUN` at most).
    pub(super) details_asked: AtomicU64,
}

impl Runner {
    /// Sends what is pending; then, while keys are unsure, waits until MI's list can prove
    /// their fate, looks them up, and sends again those proven absent.
    pub(super) async fn import(&self) -> Result<Ending> {
        let (scope, run, slack) = (self.scope.clone(), self.run_id, self.pace.floors.late_slack);
        let recovered = self
            .writer
            .write(move |t| {
                let now = crate::clock::now_ms();
                ledger::keys::mark_in_flight_uncertain(t, &scope, run, now, slack)
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
            self.dispatch.keep_back.store(true, Relaxed);
        }
        self.recall_lag().await?;
        self.recall_naming().await?;
        // Where nothing but the ledger's own observations orders the list's assets, a look at
        // the list before sending lets a lost answer's asset be told from an older one.
        let keys_coming = pending > 0 || self.feed.brings_keys.load(Relaxed);
        if keys_coming && self.list_may_be_unordered().await? {
            self.passes.unordered.store(true, Relaxed);
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
            let sent_until = crate::clock::now_ms();
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
            let unwitnessed = latest.is_none_or(|at| at >= self.dispatch.witnessed.load(Relaxed));
            // A pending key, sent now, would witness it.
            let can_witness = unwitnessed && self.any_pending().await?;
            if self.dispatch.keep_back.load(Relaxed) && can_witness {
                // A stopped run's unknown moment may be still to come: a key sent before it
                // would witness nothing.
                if let Some(at) = latest
                    && at >= crate::clock::now_ms()
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
            let last_pass_began = crate::clock::now_ms();
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
            last_pass = crate::clock::now_ms();
        }
    }

    /// Whether a baseline pass should start now: an answer was lost in this run (or nothing
    /// else orders the list), and no baseline began within half the reach of one
    /// ([`crate::reconcile::BASELINE_REACH_MS`]).
    pub(super) fn baseline_due(&self) -> bool {
        if !(self.passes.baseline_wanted.load(Relaxed) || self.passes.unordered.load(Relaxed)) {
            return false;
        }
        let reach = Duration::from_millis(crate::reconcile::BASELINE_REACH_MS as u64 / 2);
        self.passes
            .last_baseline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= reach)
    }

    pub(super) fn start_baseline(&self) {
        self.passes.baseline_wanted.store(false, Relaxed);
        *self
            .passes
            .last_baseline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// Sleeps until `at` (Unix ms) unless the run is stopped, saying why.
    async fn wait_until(&self, at: i64, keys: usize) {
        let wait = at - crate::clock::now_ms();
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
}
