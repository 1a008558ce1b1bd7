//! Confirmation: polling import-status of registered assets until MI says they are final.
//!
//! Registration is asynchronous: an asset ID means MI accepted the request, not that it could
//! read the file. Each asset is looked at through the same limiter as the imports (MI's rate
//! is the scarce resource), when it is likely done by what this project's imports of its size
//! have taken ([`super::schedule`]), until `COMPLETED` (→ `completed`) or `FAILED`,
//! `FILE_NOT_EXIST`, `INVALID_METADATA` (→ `import_failed`, with MI's reason kept). What was
//! learned is kept in the ledger for the next run.

use anyhow::Result;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::asset_list::Flow;
use super::schedule::{self, FirstLook, WorkTimes};
use super::{FatalStop, Runner, outbox};
use crate::api::{ApiError, Call};
use crate::ledger::State;
use crate::ledger::facts::{self, Fact};
use crate::ledger::import_status::{self, CheckResult, DueCheck};
use crate::retry::Disposition;

/// How often the count of assets still waiting (for progress) is refreshed: it reads the
/// whole index range, unlike the loop's own queries.
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// A pass over the whole asset list is worth it only if it settles at least this many assets
/// per page it reads.
const LIST_KEYS_PER_PAGE: u64 = 4;
/// Due looks are gathered for the run's gather floor (`runner::pace::LIST_GATHER`) before a
/// pass over the list, so one pass serves many, or until this many are gathered (in memory). A pass then looks for every look due by
/// then, however many: the ledger holds them, not memory.
const LIST_GATHER_MAX: usize = 5_000;
/// Looks too few for a pass are made one by one after waiting this long.
const LIST_GATHER_LONGEST: Duration = Duration::from_secs(30);

/// Whether confirmation pages the asset list, and how long the list is.
#[derive(Debug, Clone, Copy, Default)]
struct ListMode {
    carries_status: bool,
    pages: u64,
}
/// A look due this close to its planned moment is made now.
pub(super) const NOT_YET_SLACK_MS: i64 = 250;

/// What following imports keeps for the whole run.
#[derive(Default)]
pub(super) struct Confirming {
    /// Results of import-status looks, written a moment later in batches.
    checks: outbox::Outbox<CheckResult>,
    /// What this project's imports have taken, to look at each when it is likely done.
    import_times: Mutex<WorkTimes>,
}

/// The rows whose checks are out now.
fn busy_ids(out: &[(tokio::task::Id, i64)]) -> Vec<i64> {
    out.iter().map(|(_, id)| *id).collect()
}

/// The gap after the `checks`-th check found the import still in progress: from the first
/// look's floor, doubling, up to the longest gap ([`schedule::MAX_GAP`]).
pub fn next_gap(checks: u32, first_look: Duration) -> Duration {
    first_look
        .saturating_mul(1u32.checked_shl(checks.min(16)).unwrap_or(u32::MAX))
        .min(schedule::MAX_GAP)
}

/// What an upload status means for the key: `Some(final state)` or `None` (still going).
pub fn state_for(upload_status: &str) -> Option<State> {
    match upload_status {
        "COMPLETED" => Some(State::Completed),
        "FAILED" | "FILE_NOT_EXIST" | "INVALID_METADATA" => Some(State::ImportFailed),
        _ => None,
    }
}

impl Runner {
    /// Checks registered assets until none is left; once `dispatch_done` fires, for at most
    /// `patience` more. What is still in progress then stays `registered` for `confirm`.
    pub async fn confirm(
        &self,
        dispatch_done: &CancellationToken,
        patience: Duration,
    ) -> Result<()> {
        self.load_model().await?;
        let (run, asks) = (self.run_id, self.asks_analysis);
        let checked = self
            .confirming
            .checks
            .flushing_during(
                &self.writer,
                move |t, results| import_status::record_checks(t, results, run, asks),
                self.check_registered(dispatch_done, patience),
            )
            .await;
        self.save_model().await?;
        checked
    }

    /// The import times earlier runs learned for this project.
    async fn load_model(&self) -> Result<()> {
        self.load_times(Fact::ImportTimes, &self.confirming.import_times, None)
            .await
    }

    async fn save_model(&self) -> Result<()> {
        self.save_times(Fact::ImportTimes, &self.confirming.import_times)
            .await
    }

    /// Seeds `model` with the times earlier runs kept under `fact`, watching from now.
    pub(super) async fn load_times(
        &self,
        fact: Fact,
        model: &std::sync::Mutex<WorkTimes>,
        probe_share: Option<f64>,
    ) -> Result<()> {
        // Taken before anything is awaited: every key this run registers is after it.
        let since = crate::clock::now_ms();
        let stored = self.fact(fact).await?;
        let bins = stored
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let mut fresh = WorkTimes::with_bins(bins, since, self.pace.floors.first_look);
        if let Some(share) = probe_share {
            fresh = fresh.with_probe_share(share);
        }
        *model.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Keeps what `model` learned under `fact`, for the next run.
    pub(super) async fn save_times(
        &self,
        fact: Fact,
        model: &std::sync::Mutex<WorkTimes>,
    ) -> Result<()> {
        let bins = model.lock().unwrap_or_else(|p| p.into_inner()).bins();
        if bins.is_empty() {
            return Ok(());
        }
        let (scope, text) = (self.scope.clone(), serde_json::to_string(&bins)?);
        self.writer
            .write(move |t| facts::set(t, &scope, fact, &text))
            .await
    }

    /// Whether to look at `due` now; if not, the result that puts its next look later.
    fn not_yet(&self, due: &DueCheck) -> Option<CheckResult> {
        if due.checks > 0 {
            return None;
        }
        let now = crate::clock::now_ms();
        let mut model = self
            .confirming
            .import_times
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !model.watched(due.registered_at) {
            // Registered before this run looked (an earlier run's, or settled by `resolve`):
            // overdue, whatever imports take.
            return None;
        }
        let at = match model.first_look(due.id, due.size) {
            FirstLook::After(after) => due.registered_at + after.as_millis() as i64,
            FirstLook::Wait => now + self.pace.floors.defer.as_millis() as i64,
        };
        (at > now + NOT_YET_SLACK_MS).then_some(CheckResult {
            id: due.id,
            looked: false,
            asset_id: due.asset_id,
            state: None,
            upload_status: None,
            upload_result: None,
            next_check_at: Some(at),
        })
    }

    async fn check_registered(
        &self,
        dispatch_done: &CancellationToken,
        patience: Duration,
    ) -> Result<()> {
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let mut out: Vec<(tokio::task::Id, i64)> = Vec::new();
        let mut counted: Option<Instant> = None;
        let mut deadline: Option<Instant> = None;
        let slots = self.limiter.concurrency();
        // Where the asset list carries each import's status: looks gathered for one pass.
        let mut listing: Option<ListMode> = None;
        let mut gathered: Vec<DueCheck> = Vec::new();
        let mut gathered_since = Instant::now();
        // The task of the pass over the list under way, if one is: one at a time.
        let mut passing: Option<tokio::task::Id> = None;
        while !self.halt.is_cancelled() {
            if deadline.is_none() && dispatch_done.is_cancelled() {
                deadline = Some(Instant::now() + patience);
            }
            while let Some(done) = tasks.try_join_next_with_id() {
                let (id, result) = done.map_err(|e| anyhow::anyhow!(e))?;
                out.retain(|(task, _)| *task != id);
                passing = passing.filter(|p| *p != id);
                result?;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // Patience is over: checks not answered yet are given up; nothing was written
                // for them, so the next `confirm` makes them at once.
                tasks.abort_all();
                return Ok(());
            }
            let free = slots.saturating_sub(tasks.len());
            let due = if free > 0 {
                // Checks out, gathered for a pass, and answered but not written yet.
                let mut busy = busy_ids(&out);
                busy.extend(gathered.iter().map(|d| d.id));
                busy.extend(self.confirming.checks.pending(|r| r.id));
                let scope = self.scope.clone();
                let want = if listing.is_some_and(|l| l.carries_status) {
                    LIST_GATHER_MAX
                } else {
                    free
                };
                self.writer
                    .write(move |t| import_status::claim_due(t, &scope, want, &busy))
                    .await?
            } else {
                Vec::new()
            };
            let mut spawned = false;
            for check in due {
                // Not likely done yet: put the look off, at no cost.
                if let Some(later) = self.not_yet(&check) {
                    self.confirming.checks.push(later);
                    continue;
                }
                if listing.is_none() {
                    listing = Some(self.list_mode().await?);
                }
                // A probe (an import of a size not seen done yet) is looked at on its own: its
                // timing teaches the model.
                // An overdue asset (registered before this run looked) is no probe either.
                let known = {
                    let model = self
                        .confirming
                        .import_times
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    model.knows(check.size) || !model.watched(check.registered_at)
                };
                if known && listing.is_some_and(|l| l.carries_status) {
                    if gathered.is_empty() {
                        gathered_since = Instant::now();
                    }
                    gathered.push(check);
                    continue;
                }
                let (runner, id) = (self.clone(), check.id);
                let handle = tasks.spawn(async move { runner.check_one(check).await });
                out.push((handle.id(), id));
                spawned = true;
            }
            if let Some(mode) = listing
                && !gathered.is_empty()
            {
                let worth = gathered.len() as u64 >= LIST_KEYS_PER_PAGE * mode.pages;
                let waited = gathered_since.elapsed();
                if worth
                    && passing.is_none()
                    && (waited >= self.pace.floors.list_gather || gathered.len() >= LIST_GATHER_MAX)
                {
                    // The pass takes every look due now from the ledger, the gathered ones
                    // among them; those out or answered but not written yet stay out of it.
                    // Begun here, before the loop claims again, so no row is claimed twice.
                    gathered.clear();
                    let mut busy = busy_ids(&out);
                    busy.extend(self.confirming.checks.pending(|r| r.id));
                    let scope = self.scope.clone();
                    let left = self
                        .writer
                        .write(move |t| import_status::begin_list_pass(t, &scope, &busy))
                        .await?;
                    let runner = self.clone();
                    let handle = tasks.spawn(async move { runner.check_by_list(left).await });
                    passing = Some(handle.id());
                    spawned = true;
                } else if !worth && waited >= LIST_GATHER_LONGEST {
                    // Too few for a pass over the whole list: one look each.
                    for check in std::mem::take(&mut gathered) {
                        let (runner, id) = (self.clone(), check.id);
                        let handle = tasks.spawn(async move { runner.check_one(check).await });
                        out.push((handle.id(), id));
                    }
                    spawned = true;
                }
            }
            if spawned {
                continue;
            }
            let scope = self.scope.clone();
            let soonest = self
                .writer
                .write(move |t| import_status::soonest_due(t, &scope))
                .await?;
            if counted.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                self.count_awaiting().await?;
                counted = Some(Instant::now());
            }
            let nothing_left = tasks.is_empty() && soonest.is_none();
            if dispatch_done.is_cancelled() && nothing_left && gathered.is_empty() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(super::nap(soonest, deadline)) => {}
                _ = self.halt.cancelled() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, result) = done.map_err(|e| anyhow::anyhow!(e))?;
                    out.retain(|(task, _)| *task != id);
                    passing = passing.filter(|p| *p != id);
                    result?;
                }
            }
        }
        self.drain(tasks).await?;
        // Between counts the figure is moved on by events, which can count a key on both sides
        // of a count; once confirmation is over, progress shows the ledger's own figure.
        self.count_awaiting().await
    }

    /// Counts the registered assets still waiting for a final status, for progress.
    async fn count_awaiting(&self) -> Result<()> {
        let scope = self.scope.clone();
        let (waiting, _) = self
            .writer
            .write(move |t| import_status::awaiting(t, &scope))
            .await?;
        self.stats.set_awaiting(waiting);
        Ok(())
    }

    /// Whether the asset list's entries carry each import's status (learned from one entry
    /// of the list the first time, kept as a fact), and how many pages it has.
    async fn list_mode(&self) -> Result<ListMode> {
        let known = self.fact(Fact::ListUploadStatus).await?;
        if known.as_deref() == Some("no") {
            return Ok(ListMode::default());
        }
        let finished = self
            .call_mi(Call::ListAssets, || self.client.list_assets(1, 1))
            .await;
        let Ok(first) = finished.last.result else {
            return Ok(ListMode::default());
        };
        let carries_status = match first.assets.first() {
            Some(entry) => entry.upload_status.is_some(),
            None => return Ok(ListMode::default()),
        };
        if known.is_none() {
            let (scope, value) = (
                self.scope.clone(),
                if carries_status { "yes" } else { "no" },
            );
            self.writer
                .write(move |t| facts::set(t, &scope, Fact::ListUploadStatus, value))
                .await?;
            if carries_status {
                tracing::info!(
                    "MI's asset list carries each import's status: registered assets are confirmed by paging it"
                );
            }
        }
        Ok(ListMode {
            carries_status,
            pages: first
                .total_count
                .unwrap_or(0)
                .div_ceil(u64::from(crate::api::client::MAX_PAGE_SIZE))
                .max(1),
        })
    }

    /// Confirms, in one pass over the asset list (whose entries carry the status), the `left`
    /// registered assets the pass was begun with ([`import_status::begin_list_pass`]): each page's
    /// entries are looked up by asset ID among them in the ledger, so a backlog of any size
    /// costs one pass.
    async fn check_by_list(&self, left: u64) -> Result<()> {
        if left == 0 {
            self.writer
                .write(|t| import_status::end_list_pass(t))
                .await?;
            return Ok(());
        }
        let left = AtomicU64::new(left);
        let learned = std::sync::atomic::AtomicBool::new(false);
        let failure = Mutex::new(None);
        let walked = self
            .walk_assets_then(|page| {
                self.stats.list_checks.fetch_add(1, Relaxed);
                let shown: HashMap<i64, String> = page
                    .assets
                    .iter()
                    .filter_map(|e| e.upload_status.clone().map(|s| (e.asset_id, s)))
                    .collect();
                let (left, learned, failure) = (&left, &learned, &failure);
                Box::pin(async move {
                    if !shown.is_empty() {
                        let ids: Vec<i64> = shown.keys().copied().collect();
                        let found = self
                            .writer
                            .write(move |t| import_status::seen_in_pass(t, &ids))
                            .await;
                        match found {
                            Ok(found) => {
                                let now = crate::clock::now_ms();
                                left.fetch_sub(found.len() as u64, Relaxed);
                                for due in found {
                                    let status = shown[&due.asset_id].clone();
                                    let state = state_for(&status);
                                    if self.push_result(&due, now, state, Some(status), None) {
                                        learned.store(true, Relaxed);
                                    }
                                }
                            }
                            Err(e) => {
                                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                return Flow::Enough;
                            }
                        }
                    }
                    if left.load(Relaxed) == 0 {
                        Flow::Enough
                    } else {
                        Flow::More
                    }
                })
            })
            .await;
        if let Err(error) = walked {
            tracing::debug!("confirming by the asset list: {error}");
        }
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        self.replan_if(learned.into_inner()).await?;
        // Not (yet) in the list: looked at again later, as if in progress.
        loop {
            let rest = self
                .writer
                .write(|t| import_status::unseen_in_pass(t, 1_000))
                .await?;
            if rest.is_empty() {
                break;
            }
            let now = crate::clock::now_ms();
            for due in rest {
                self.push_result(&due, now, None, None, None);
            }
        }
        self.writer
            .write(|t| import_status::end_list_pass(t))
            .await?;
        Ok(())
    }

    /// Counts and writes (soon) what a look found, and teaches the model. Whether the model
    /// has just learned its first import of this size.
    fn push_result(
        &self,
        due: &DueCheck,
        now: i64,
        state: Option<State>,
        upload_status: Option<String>,
        upload_result: Option<String>,
    ) -> bool {
        let (next, learned) = {
            let mut model = self
                .confirming
                .import_times
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let knew = model.knows(due.size);
            let next = if state == Some(State::ImportFailed) {
                model.failed(due.id, due.size);
                None
            } else if !model.watched(due.registered_at) {
                // A late look by no choice of the model: it teaches nothing, and an asset still
                // in progress is looked at again as a probe would be.
                let age = now - due.registered_at;
                state
                    .is_none()
                    .then(|| now + model.probe_gap(age).as_millis() as i64)
            } else {
                let gap = model.looked(
                    due.id,
                    due.size,
                    now - due.registered_at,
                    due.last_look.map(|at| at - due.registered_at),
                    state.is_some(),
                );
                state.is_none().then(|| now + gap.as_millis() as i64)
            };
            (next, !knew && model.knows(due.size))
        };
        match state {
            Some(State::Completed) => self.stats.completed.fetch_add(1, Relaxed),
            Some(_) => self.stats.import_failed.fetch_add(1, Relaxed),
            None => 0,
        };
        self.confirming.checks.push(CheckResult {
            id: due.id,
            looked: true,
            asset_id: due.asset_id,
            state,
            upload_status,
            upload_result,
            next_check_at: next,
        });
        learned
    }

    async fn check_one(&self, due: DueCheck) -> Result<()> {
        let finished = self
            .call_mi(Call::ImportStatus, || async {
                self.stats.polls.fetch_add(1, Relaxed);
                self.client.import_status(due.asset_id).await
            })
            .await;
        let now = crate::clock::now_ms();
        let error = match finished.last.result {
            Ok(status) => {
                let state = state_for(&status.upload_status);
                if state.is_none() && status.upload_status != "IN_PROGRESS" {
                    tracing::warn!(
                        "asset {} ({}): unknown upload status {}; will check again",
                        due.asset_id,
                        due.key,
                        status.upload_status
                    );
                }
                let learned = self.push_result(
                    &due,
                    now,
                    state,
                    Some(status.upload_status),
                    status.upload_result,
                );
                return self.replan_if(learned).await;
            }
            Err(error) => error,
        };
        let why = match error.disposition_for(Call::ImportStatus) {
            Disposition::Fatal => {
                self.halt_for(FatalStop {
                    message: format!(
                        "{error} (while checking the import of {})",
                        crate::escape::shown(&due.key)
                    ),
                    hint: error.hint().map(str::to_owned),
                });
                return Ok(());
            }
            Disposition::Permanent if error.status() == Some(404) => {
                if !self.asset_is_gone(&error, &due).await {
                    return Ok(());
                }
                format!(
                    "MI has no asset {} any more (deleted?): {}",
                    due.asset_id,
                    error.detail()
                )
            }
            Disposition::Permanent => format!("import-status: {}", error.detail()),
            _ => {
                // No answer worth learning from: look again a little later.
                tracing::debug!("asset {}: {error}; will check again", due.asset_id);
                self.confirming.checks.push(CheckResult {
                    id: due.id,
                    looked: true,
                    asset_id: due.asset_id,
                    state: None,
                    upload_status: None,
                    upload_result: None,
                    next_check_at: Some(
                        now + next_gap(due.checks, self.pace.floors.first_look).as_millis() as i64,
                    ),
                });
                return Ok(());
            }
        };
        self.push_result(&due, now, Some(State::ImportFailed), None, Some(why));
        Ok(())
    }

    /// The first import of a size seen done: the keys that waited for it are planned again.
    /// Results not written yet go first (a key put off a moment ago must not stay put off).
    async fn replan_if(&self, learned: bool) -> Result<()> {
        if learned {
            let (scope, run, pending) = (
                self.scope.clone(),
                self.run_id,
                self.confirming.checks.take(),
            );
            let asks = self.asks_analysis;
            self.writer
                .write(move |t| {
                    import_status::record_checks(t, &pending, run, asks)?;
                    import_status::replan_unlooked(t, &scope)
                })
                .await?;
        }
        Ok(())
    }

    /// Whether a 404 about one asset means that asset is gone: only if it is MI's own answer
    /// and the project still answers. Otherwise the run stops (exit 3) and marks nothing.
    async fn asset_is_gone(&self, error: &ApiError, due: &DueCheck) -> bool {
        let project = if error.from_gateway() {
            None
        } else {
            Some(
                self.call_mi(Call::Lookup, || self.client.project())
                    .await
                    .last
                    .result,
            )
        };
        match project {
            Some(Ok(_)) => true,
            Some(Err(e)) if e.disposition_for(Call::Lookup) != Disposition::Fatal => {
                // The project could not be read just now: look at this asset again later.
                tracing::debug!(
                    "asset {}: 404, and the project did not answer: {e}",
                    due.asset_id
                );
                false
            }
            other => {
                let why = match other {
                    Some(Err(e)) => format!("and the project no longer answers: {e}"),
                    _ => "in the API Gateway's words, not MI's: the path itself is unknown".into(),
                };
                self.halt_for(FatalStop {
                    message: format!(
                        "{error} (checking asset {} of {}), {why}",
                        due.asset_id,
                        crate::escape::shown(&due.key)
                    ),
                    hint: Some("check --endpoint, --workspace and --project".into()),
                });
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_grow_from_the_first_check_to_the_cap() {
        let first = crate::runner::pace::FIRST_LOOK;
        let gaps: Vec<u64> = (0..9).map(|c| next_gap(c, first).as_secs()).collect();
        assert_eq!(gaps, vec![3, 6, 12, 24, 48, 96, 192, 300, 300]);
        assert_eq!(next_gap(1000, first), schedule::MAX_GAP);
        let lowered: Vec<u128> = (0..3)
            .map(|c| next_gap(c, Duration::from_millis(100)).as_millis())
            .collect();
        assert_eq!(lowered, vec![100, 200, 400]);
    }

    #[test]
    fn every_documented_status_maps_to_a_state() {
        assert_eq!(state_for("COMPLETED"), Some(State::Completed));
        for failed in ["FAILED", "FILE_NOT_EXIST", "INVALID_METADATA"] {
            assert_eq!(state_for(failed), Some(State::ImportFailed));
        }
        assert_eq!(state_for("IN_PROGRESS"), None);
        assert_eq!(state_for("SOMETHING_NEW"), None);
    }
}
