//! Analysis (`--analyze`, `mi-import analyze`): each completed asset is sent for analysis
//! once, and its index status followed until final, through the same limiter as everything
//! else.
//!
//! The request is billed and MI lets an asset be analysed again, so it is journaled before it
//! leaves ([`crate::ledger::analyses`]); a lost answer is settled with the index status, never
//! by sending again on a guess: `BEFORE_ANALYZE` (looked at a settle window later) means it
//! was not accepted, anything else that it was; a 409 means one is already waiting or running.

use anyhow::Result;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::confirm::next_gap;
use super::schedule::{FirstLook, WorkTimes};
use super::{FatalStop, Runner, outbox};
use crate::api::analysis::AnalysisRequest;
use crate::api::{AnalysisStatus, ApiError, Call};
use crate::ledger::analyses::{self, AnalysisCheck, DueAnalysis, Requested, ToAnalyze, UNSURE};
use crate::ledger::facts::Fact;
use crate::retry::{Disposition, Retryable, with_retries};

/// The first analysis of a size is looked at again each time this share of its age has
/// passed: analyses take minutes, and every other look of its size is placed by what it
/// found.
const ANALYSIS_PROBE_SHARE: f64 = 0.08;

/// What a command asks MI's analysis for, and of which keys.
#[derive(Debug, Clone)]
pub struct AnalysisPlan {
    pub request: AnalysisRequest,
    pub pick: analyses::Pick,
}

/// One try at requesting one analysis.
enum Try {
    NotSent,
    Answered(Result<Option<String>, ApiError>),
}

impl Retryable for Try {
    fn disposition(&self) -> Disposition {
        match self {
            Try::NotSent => Disposition::Abandoned,
            Try::Answered(Ok(_)) => Disposition::Success,
            Try::Answered(Err(e)) if e.status() == Some(409) => Disposition::Success,
            Try::Answered(Err(e)) => e.disposition_for(Call::Analyze),
        }
    }
}

/// What one look at an analysis's status means for its row (pure).
///
/// A lost answer (`UNSURE`) is settled by what MI shows: `BEFORE_ANALYZE` means the request
/// was not accepted (it goes out again), a waiting or running analysis that it was. A request
/// made again (`--reanalyze-failed`) whose answer was lost may meet MI still showing the
/// earlier analysis's end: only a new index ID proves that end is the new request's; without
/// one nothing is sent again (it may have been accepted and billed), and the earlier word
/// stands, with a note, for the user to ask again.
/// An analysis still waiting or running is looked at again `gap` later.
pub fn after_look(
    due: &DueAnalysis,
    seen: &AnalysisStatus,
    now: i64,
    gap: Duration,
) -> AnalysisCheck {
    let mut check = AnalysisCheck {
        key_id: due.key_id,
        asset_id: due.asset_id,
        status: Some(seen.status.clone()),
        index_id: seen.index_id.clone(),
        message: seen.message.clone(),
        next_check_at: Some(now + gap.as_millis() as i64),
        looked: true,
    };
    let ended = matches!(
        seen.status.as_str(),
        "ANALYZE_COMPLETED" | "ANALYZE_FAIL" | "ANALYZE_CANCEL"
    );
    match seen.status.as_str() {
        // Not accepted: a request whose answer was lost goes out again; one MI did accept
        // but does not show yet is looked at again later.
        "BEFORE_ANALYZE" if due.status == UNSURE => check.status = None,
        "BEFORE_ANALYZE" => check.status = Some(due.status.clone()),
        _ if ended && due.status == UNSURE => {
            check.next_check_at = None;
            if let Some((before, index)) = &due.previous
                && *before == seen.status
                && (seen.index_id.is_none() || seen.index_id == *index)
            {
                check.message = Some(format!(
                    "the answer to the request made again was lost, and MI still shows the earlier {before}: \
                     it was probably not accepted; nothing was sent again (run with --reanalyze-failed to ask again)"
                ));
            }
        }
        _ if ended => check.next_check_at = None,
        _ => {}
    }
    check
}

/// What following analyses keeps for the whole run.
#[derive(Default)]
pub(super) struct Analysing {
    /// Results of analysis-status looks, written a moment later in batches.
    looks: outbox::Outbox<AnalysisCheck>,
    /// What this project's analyses took, as imports' times are kept.
    times: Mutex<WorkTimes>,
}

impl Runner {
    /// Requests analysis of completed keys and follows what was requested, until `upstream`
    /// (confirmation) is done and nothing is left, or `patience` after it.
    pub async fn analyze(
        &self,
        plan: &AnalysisPlan,
        upstream: &CancellationToken,
        patience: Duration,
    ) -> Result<()> {
        let (scope, settle) = (self.scope.clone(), self.pace.list_settle);
        let left = self
            .writer
            .write(move |t| analyses::mark_requesting_unsure(t, &scope, settle))
            .await?;
        if left > 0 {
            tracing::warn!(
                "{left} analysis requests were being sent when a run stopped; their status is checked before any is sent again"
            );
        }
        self.load_times(
            Fact::AnalysisTimes,
            &self.analysing.times,
            Some(ANALYSIS_PROBE_SHARE),
        )
        .await?;
        let run = self.run_id;
        let followed = self
            .analysing
            .looks
            .flushing_during(
                &self.writer,
                move |t, checks| analyses::record_analysis_checks(t, checks, run),
                self.follow_analyses(plan, upstream, patience),
            )
            .await;
        self.save_times(Fact::AnalysisTimes, &self.analysing.times)
            .await?;
        followed
    }

    /// Whether to look at `due` now; if not, the check that puts its first look where this
    /// project's analyses of its size are likely done (as imports are placed).
    fn analysis_not_yet(&self, due: &DueAnalysis) -> Option<AnalysisCheck> {
        if due.checks > 0 || due.status == UNSURE {
            return None;
        }
        let sent = due.sent_at?;
        let now = crate::clock::now_ms();
        let mut model = self
            .analysing
            .times
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !model.watched(sent) {
            return None;
        }
        let at = match model.first_look(due.key_id, due.size) {
            FirstLook::After(after) => sent + after.as_millis() as i64,
            FirstLook::Wait => now + self.pace.floors.defer.as_millis() as i64,
        };
        (at > now + super::confirm::NOT_YET_SLACK_MS).then(|| AnalysisCheck {
            key_id: due.key_id,
            asset_id: due.asset_id,
            status: Some(due.status.clone()),
            index_id: None,
            message: None,
            next_check_at: Some(at),
            looked: false,
        })
    }

    /// When to look again at an analysis seen `status` now, teaching the model what it took.
    /// A request whose answer was lost, or one sent before this model watched, is looked at
    /// on the growing gaps and teaches nothing.
    fn analysis_gap(&self, due: &DueAnalysis, status: &str, now: i64) -> Duration {
        let mut model = self
            .analysing
            .times
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(sent) = due
            .sent_at
            .filter(|sent| model.watched(*sent) && due.status != UNSURE)
        else {
            return next_gap(due.checks, self.pace.floors.first_look);
        };
        let (age, before) = (now - sent, due.last_look.map(|at| at - sent));
        match status {
            "ANALYZE_COMPLETED" => {
                model.looked(due.key_id, due.size, age, before, true);
                Duration::ZERO
            }
            "ANALYZE_FAIL" | "ANALYZE_CANCEL" => {
                model.failed(due.key_id, due.size);
                Duration::ZERO
            }
            "WAIT_ANALYZE" | "ANALYZING" => model.looked(due.key_id, due.size, age, before, false),
            _ => next_gap(due.checks, self.pace.floors.first_look),
        }
    }

    async fn follow_analyses(
        &self,
        plan: &AnalysisPlan,
        upstream: &CancellationToken,
        patience: Duration,
    ) -> Result<()> {
        let body = plan.request.body();
        let slots = self.limiter.concurrency();
        let mut requests: JoinSet<Result<()>> = JoinSet::new();
        let mut looks: JoinSet<Result<i64>> = JoinSet::new();
        let mut leased: Vec<(tokio::task::Id, i64)> = Vec::new();
        let mut deadline: Option<Instant> = None;
        // Where the scan for completed keys stands (`None`: it reached the end), and how many
        // completions confirmation had reported when it did.
        let mut scan: Option<i64> = Some(0);
        let mut completed_at_end = 0;
        while !self.halt.is_cancelled() {
            if deadline.is_none() && upstream.is_cancelled() {
                deadline = Some(Instant::now() + patience);
                // Confirmation has written all it found: one last scan sees every completion.
                scan = Some(0);
            }
            while let Some(done) = requests.try_join_next() {
                done??;
            }
            while let Some(done) = looks.try_join_next_with_id() {
                let (id, result) = done.map_err(|e| anyhow::anyhow!(e))?;
                leased.retain(|(task, _)| *task != id);
                result?;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let free = slots.saturating_sub(requests.len() + looks.len());
            // Keys complete in any order: scan from the start again once confirmation has
            // completed keys the last scan cannot have seen, or a lost request proved not
            // accepted (its key is to be requested again).
            let completed =
                self.stats.completed.load(Relaxed) + self.stats.analyses_to_resend.load(Relaxed);
            if scan.is_none() && completed != completed_at_end {
                scan = Some(0);
            }
            let fresh = match scan {
                Some(after) if free > 0 => {
                    let (scope, pick, run) = (self.scope.clone(), plan.pick, self.run_id);
                    let claimed = self
                        .writer
                        .write(move |t| {
                            analyses::claim_for_analysis(t, &scope, after, free, pick, run)
                        })
                        .await?;
                    scan = claimed.last().map(|last| last.key_id);
                    if claimed.len() < free {
                        (scan, completed_at_end) = (None, completed);
                    }
                    claimed
                }
                _ => Vec::new(),
            };
            let free = free - fresh.len();
            let due = if free > 0 {
                let scope = self.scope.clone();
                let mut busy: Vec<i64> = leased.iter().map(|(_, id)| *id).collect();
                busy.extend(self.analysing.looks.pending(|c| c.key_id));
                self.writer
                    .write(move |t| analyses::claim_due_analyses(t, &scope, free, &busy))
                    .await?
            } else {
                Vec::new()
            };
            if !fresh.is_empty() || !due.is_empty() {
                for one in fresh {
                    let (runner, body) = (self.clone(), body.clone());
                    requests.spawn(async move { runner.request_one(one, &body).await });
                }
                for look in due {
                    // Not likely done yet: put the look off, at no cost.
                    if let Some(later) = self.analysis_not_yet(&look) {
                        self.analysing.looks.push(later);
                        continue;
                    }
                    let (runner, key_id) = (self.clone(), look.key_id);
                    let handle =
                        looks.spawn(async move { runner.look_once(look).await.map(|()| key_id) });
                    leased.push((handle.id(), key_id));
                }
                continue;
            }
            let scope = self.scope.clone();
            let soonest = self
                .writer
                .write(move |t| analyses::soonest_analysis_due(t, &scope))
                .await?;
            let idle = requests.is_empty() && looks.is_empty();
            if upstream.is_cancelled() && idle && soonest.is_none() && scan.is_none() {
                let now_completed = self.stats.completed.load(Relaxed)
                    + self.stats.analyses_to_resend.load(Relaxed);
                if now_completed == completed_at_end {
                    return Ok(());
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(super::nap(soonest, deadline)) => {}
                _ = self.halt.cancelled() => {}
            }
        }
        // Patience is over (or the run is stopping): looks not answered yet are given up
        // (they stay due); requests already out are waited for, since their answers must be
        // journaled.
        looks.abort_all();
        self.drain(requests).await
    }

    /// Sends one analysis request (journaled already) and journals what came of it.
    async fn request_one(&self, one: ToAnalyze, body: &serde_json::Value) -> Result<()> {
        let finished = with_retries(
            self.pace.max_attempts,
            self.backoff,
            &self.halt,
            |_| async {
                let _slot = tokio::select! {
                    slot = self.limiter.admit() => slot,
                    _ = self.halt.cancelled() => return Try::NotSent,
                };
                if self.halt.is_cancelled() {
                    return Try::NotSent;
                }
                self.stats.requests.fetch_add(1, Relaxed);
                let answer = self.client.request_analysis(one.asset_id, body).await;
                self.note(answer.as_ref().err());
                Try::Answered(answer)
            },
        )
        .await;
        let sent = match finished.last {
            Try::NotSent => finished.attempts - 1,
            Try::Answered(_) => finished.attempts,
        };
        let requested = match finished.last {
            Try::NotSent => Requested::NotSent,
            Try::Answered(Ok(index)) => Requested::Accepted(index),
            Try::Answered(Err(e)) if e.status() == Some(409) => Requested::AlreadyRunning,
            Try::Answered(Err(e)) => match e.disposition_for(Call::Analyze) {
                Disposition::Uncertain => Requested::Unsure(e.detail()),
                Disposition::Permanent => Requested::Refused {
                    status: e.status(),
                    message: e.detail(),
                },
                Disposition::Fatal => {
                    self.halt_for(FatalStop {
                        message: format!(
                            "{e} (while requesting the analysis of {})",
                            crate::escape::shown(&one.key)
                        ),
                        hint: e.hint().map(str::to_owned),
                    });
                    Requested::NotSent
                }
                // Throttled to the end, or never connected: it never reached MI.
                _ => Requested::NotSent,
            },
        };
        match &requested {
            Requested::Accepted(_) | Requested::AlreadyRunning => {
                self.stats.analyses_requested.fetch_add(1, Relaxed)
            }
            Requested::Refused { .. } => self.stats.analyses_failed.fetch_add(1, Relaxed),
            _ => 0,
        };
        let (run, settle) = (self.run_id, self.pace.list_settle);
        let first_look = self.pace.floors.first_look;
        self.writer
            .write(move |t| {
                analyses::record_requests(t, &[(one, requested, sent)], first_look, settle, run)
            })
            .await?;
        Ok(())
    }

    /// Looks at one analysis's status.
    async fn look_once(&self, due: DueAnalysis) -> Result<()> {
        let finished = self
            .call_mi(Call::AnalysisStatus, || {
                self.client.analysis_status(due.asset_id)
            })
            .await;
        self.stats.analysis_looks.fetch_add(1, Relaxed);
        let check = match finished.last.result {
            Ok(seen) => {
                let now = crate::clock::now_ms();
                after_look(&due, &seen, now, self.analysis_gap(&due, &seen.status, now))
            }
            Err(error) => {
                if error.disposition_for(Call::AnalysisStatus) == Disposition::Fatal {
                    self.halt_for(FatalStop {
                        message: format!(
                            "{error} (while checking the analysis of {})",
                            crate::escape::shown(&due.key)
                        ),
                        hint: error.hint().map(str::to_owned),
                    });
                }
                tracing::debug!(
                    "analysis of asset {}: {error}; will look again",
                    due.asset_id
                );
                AnalysisCheck {
                    key_id: due.key_id,
                    asset_id: due.asset_id,
                    status: Some(due.status.clone()),
                    index_id: None,
                    message: None,
                    next_check_at: Some(
                        crate::clock::now_ms()
                            + next_gap(due.checks, self.pace.floors.first_look).as_millis() as i64,
                    ),
                    looked: true,
                }
            }
        };
        if check.status.is_none() {
            // Written at once, so the scan that follows finds the key to request again.
            let run = self.run_id;
            self.writer
                .write(move |t| analyses::record_analysis_checks(t, &[check], run))
                .await?;
            self.stats.analyses_to_resend.fetch_add(1, Relaxed);
            return Ok(());
        }
        match check.status.as_deref() {
            Some("ANALYZE_COMPLETED") => self.stats.analyses_completed.fetch_add(1, Relaxed),
            Some("ANALYZE_FAIL" | "ANALYZE_CANCEL") => {
                self.stats.analyses_failed.fetch_add(1, Relaxed)
            }
            _ if due.status == UNSURE && check.status.as_deref() != Some(UNSURE) => {
                // Accepted after all: it is followed now.
                self.stats.analyses_requested.fetch_add(1, Relaxed)
            }
            _ => 0,
        };
        self.analysing.looks.push(check);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_secs(7);

    fn due(status: &str) -> DueAnalysis {
        DueAnalysis {
            key_id: 1,
            key: "k.mp4".into(),
            asset_id: 5,
            status: status.into(),
            checks: 0,
            previous: None,
            sent_at: Some(0),
            size: None,
            last_look: None,
        }
    }

    fn seen(status: &str) -> AnalysisStatus {
        AnalysisStatus {
            status: status.into(),
            index_id: Some("77".into()),
            message: None,
        }
    }

    #[test]
    fn a_lost_request_is_sent_again_only_if_mi_never_accepted_it() {
        let check = after_look(&due(UNSURE), &seen("BEFORE_ANALYZE"), 0, GAP);
        assert_eq!(check.status, None, "not accepted: asked again");
        let check = after_look(&due(UNSURE), &seen("WAIT_ANALYZE"), 0, GAP);
        assert_eq!(check.status.as_deref(), Some("WAIT_ANALYZE"));
        assert!(check.next_check_at.is_some());
        // Accepted earlier, not shown yet: never asked again.
        let check = after_look(&due("WAIT_ANALYZE"), &seen("BEFORE_ANALYZE"), 0, GAP);
        assert_eq!(check.status.as_deref(), Some("WAIT_ANALYZE"));
    }

    #[test]
    fn a_lost_answer_to_a_request_made_again_is_not_read_from_the_earlier_end() {
        let again = DueAnalysis {
            previous: Some(("ANALYZE_FAIL".into(), Some("77".into()))),
            ..due(UNSURE)
        };
        let old = after_look(&again, &seen("ANALYZE_FAIL"), 0, GAP);
        assert_eq!(
            old.status.as_deref(),
            Some("ANALYZE_FAIL"),
            "never sent again"
        );
        assert_eq!(old.next_check_at, None);
        assert!(old.message.unwrap().contains("probably not accepted"));
        let new_index = AnalysisStatus {
            index_id: Some("78".into()),
            ..seen("ANALYZE_FAIL")
        };
        let new = after_look(&again, &new_index, 0, GAP);
        assert_eq!(new.status.as_deref(), Some("ANALYZE_FAIL"));
        assert_eq!(
            new.message, None,
            "a new index ID is the new request's own end"
        );
        let running = after_look(&again, &seen("ANALYZING"), 0, GAP);
        assert_eq!(running.status.as_deref(), Some("ANALYZING"));
        assert!(running.next_check_at.is_some());
    }

    #[test]
    fn final_statuses_end_the_looks_and_keep_the_index() {
        for word in ["ANALYZE_COMPLETED", "ANALYZE_FAIL", "ANALYZE_CANCEL"] {
            let check = after_look(&due("ANALYZING"), &seen(word), 0, GAP);
            assert_eq!(check.status.as_deref(), Some(word));
            assert_eq!(check.next_check_at, None);
            assert_eq!(check.index_id.as_deref(), Some("77"));
        }
        let going = after_look(&due("WAIT_ANALYZE"), &seen("ANALYZING"), 1_000, GAP);
        assert_eq!(
            going.next_check_at,
            Some(1_000 + GAP.as_millis() as i64),
            "looked at again when the model says"
        );
    }
}
