//! Confirmation: polling import-status of registered assets until MI says they are final.
//!
//! Registration is asynchronous: an asset ID means MI accepted the request, not that it could
//! read the file. Each asset is checked first [`FIRST_CHECK`](crate::ledger::FIRST_CHECK)
//! after registration, then at growing gaps, through the same limiter as the imports, until
//! `COMPLETED` (→ `completed`) or `FAILED`, `FILE_NOT_EXIST`, `INVALID_METADATA`
//! (→ `import_failed`, with MI's reason kept).

use anyhow::Result;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{FatalStop, Runner};
use crate::api::{ApiError, Call};
use crate::ledger::checks::{self, CheckResult, DueCheck};
use crate::ledger::{self, FIRST_CHECK, State};
use crate::retry::Disposition;

/// The longest gap between two checks of one asset: long videos take a while, and a poll a
/// few minutes late costs nothing.
pub const MAX_CHECK_GAP: Duration = Duration::from_secs(300);
/// How often the count of assets still waiting (for progress) is refreshed: it reads the
/// whole index range, unlike the loop's own queries.
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// Longest nap while nothing is due, so the end of dispatch is noticed promptly.
const IDLE_NAP: Duration = Duration::from_millis(500);

/// The rows whose checks are out now.
fn busy_ids(out: &[(tokio::task::Id, i64)]) -> Vec<i64> {
    out.iter().map(|(_, id)| *id).collect()
}

/// The gap after the `checks`-th check found the import still in progress.
pub fn next_gap(checks: u32) -> Duration {
    FIRST_CHECK
        .saturating_mul(1u32.checked_shl(checks.min(16)).unwrap_or(u32::MAX))
        .min(MAX_CHECK_GAP)
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
        let run = self.run_id;
        self.checks
            .flushing_during(
                &self.writer,
                move |t, results| checks::record_checks(t, results, run),
                self.check_registered(dispatch_done, patience),
            )
            .await
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
        while !self.stop.is_cancelled() {
            if deadline.is_none() && dispatch_done.is_cancelled() {
                deadline = Some(Instant::now() + patience);
            }
            while let Some(done) = tasks.try_join_next_with_id() {
                let (id, result) = done.map_err(|e| anyhow::anyhow!(e))?;
                out.retain(|(task, _)| *task != id);
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
                // Checks out, and checks answered but not written yet.
                let mut busy = busy_ids(&out);
                busy.extend(self.checks.pending(|r| r.id));
                let scope = self.scope.clone();
                self.writer
                    .write(move |t| checks::claim_due(t, &scope, free, &busy))
                    .await?
            } else {
                Vec::new()
            };
            if !due.is_empty() {
                for check in due {
                    let (runner, id) = (self.clone(), check.id);
                    let handle = tasks.spawn(async move { runner.check_one(check).await });
                    out.push((handle.id(), id));
                }
                continue;
            }
            let scope = self.scope.clone();
            let soonest = self
                .writer
                .write(move |t| checks::soonest_due(t, &scope))
                .await?;
            if counted.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                let scope = self.scope.clone();
                let (waiting, _) = self
                    .writer
                    .write(move |t| checks::awaiting(t, &scope))
                    .await?;
                self.stats.set_awaiting(waiting);
                counted = Some(Instant::now());
            }
            if dispatch_done.is_cancelled() && tasks.is_empty() && soonest.is_none() {
                break;
            }
            let until_due = soonest
                .map(|at| (at - ledger::now_ms()).max(1) as u64)
                .unwrap_or(u64::MAX);
            let mut nap = Duration::from_millis(until_due).min(IDLE_NAP);
            if let Some(d) = deadline {
                nap = nap.min(d.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = self.stop.cancelled() => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, result) = done.map_err(|e| anyhow::anyhow!(e))?;
                    out.retain(|(task, _)| *task != id);
                    result?;
                }
            }
        }
        self.drain(tasks).await
    }

    async fn check_one(&self, due: DueCheck) -> Result<()> {
        let finished = self
            .call_mi(Call::ImportStatus, || async {
                self.stats.polls.fetch_add(1, Relaxed);
                self.client.import_status(due.asset_id).await
            })
            .await;
        let later = ledger::now_ms() + next_gap(due.checks).as_millis() as i64;
        let mut result = CheckResult {
            id: due.id,
            asset_id: due.asset_id,
            state: None,
            upload_status: None,
            upload_result: None,
            next_check_at: Some(later),
        };
        match finished.last.result {
            Ok(status) => {
                result.state = state_for(&status.upload_status);
                if result.state.is_none() && status.upload_status != "IN_PROGRESS" {
                    tracing::warn!(
                        "asset {} ({}): unknown upload status {}; will check again",
                        due.asset_id,
                        due.key,
                        status.upload_status
                    );
                }
                result.upload_status = Some(status.upload_status);
                result.upload_result = status.upload_result;
            }
            Err(error) => match error.disposition_for(Call::ImportStatus) {
                Disposition::Fatal => self.stop_for(FatalStop {
                    message: format!("{error} (while checking the import of {})", due.key),
                    hint: error.hint().map(str::to_owned),
                }),
                Disposition::Permanent if error.status() == Some(404) => {
                    if !self.asset_is_gone(&error, &due).await {
                        return Ok(());
                    }
                    result.state = Some(State::ImportFailed);
                    result.upload_result = Some(format!(
                        "MI has no asset {} any more (deleted?): {}",
                        due.asset_id,
                        error.detail()
                    ));
                }
                Disposition::Permanent => {
                    result.state = Some(State::ImportFailed);
                    result.upload_result = Some(format!("import-status: {}", error.detail()));
                }
                _ => tracing::debug!("asset {}: {error}; will check again", due.asset_id),
            },
        }
        match result.state {
            Some(State::Completed) => self.stats.completed.fetch_add(1, Relaxed),
            Some(_) => self.stats.import_failed.fetch_add(1, Relaxed),
            None => 0,
        };
        if result.state.is_some() {
            result.next_check_at = None;
        }
        self.checks.push(result);
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
                self.stop_for(FatalStop {
                    message: format!(
                        "{error} (checking asset {} of {}), {why}",
                        due.asset_id, due.key
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
        let gaps: Vec<u64> = (0..9).map(|c| next_gap(c).as_secs()).collect();
        assert_eq!(gaps, vec![3, 6, 12, 24, 48, 96, 192, 300, 300]);
        assert_eq!(next_gap(1000), MAX_CHECK_GAP);
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
