//! The words a run ends with: what this run did, where the ledger stands, what to do next.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use crate::ledger::listings::OnChanged;
use crate::ledger::{self, State};
use crate::progress::Stats;
use crate::runner::ListSummary;

pub(crate) fn describe_listing(listed: &ListSummary, on_changed: OnChanged) -> String {
    let mut text = format!(
        "listing: {} objects in {} pages, {} new to the ledger",
        listed.objects, listed.pages, listed.new
    );
    if listed.left_out > 0 {
        text.push_str(&format!(", {} left out by the filters", listed.left_out));
    }
    if listed.settling > 0 {
        text.push_str(&format!(
            ", {} too recent (--min-age; the next run looks again)",
            listed.settling
        ));
    }
    if !listed.complete {
        text.push_str("; not finished: the next run resumes it");
    }
    text.push('\n');
    if listed.changed > 0 {
        text.push_str(&match on_changed {
            OnChanged::Report => format!(
                "{} registered objects changed since (ETag or size); left alone, see the report's changed_at, or pass --on-changed reimport\n",
                listed.changed
            ),
            OnChanged::Reimport => format!("{} changed objects were registered again\n", listed.changed),
        });
    }
    text
}

pub(crate) fn summarize(
    counts: &[(State, u64)],
    stats: &Stats,
    elapsed: std::time::Duration,
    db: &Path,
) -> String {
    let get = |s: State| ledger::count_in(counts, s);
    let reconciled = stats.reconciled.load(Relaxed);
    let mut text = format!(
        "this run: {} registered, {} failed in {:.1}s; {} requests, {} retries, {} throttled\n",
        stats.registered.load(Relaxed) + reconciled,
        stats.failed.load(Relaxed),
        elapsed.as_secs_f64(),
        stats.requests.load(Relaxed),
        stats.retries.load(Relaxed),
        stats.throttled.load(Relaxed),
    );
    let polls = stats.polls.load(Relaxed);
    if polls > 0 {
        text.push_str(&format!(
            "confirmation: {} completed, {} import_failed, {} still in progress ({polls} import-status checks)\n",
            stats.completed.load(Relaxed),
            stats.import_failed.load(Relaxed),
            get(State::Registered),
        ));
    }
    if reconciled > 0 {
        text.push_str(&format!(
            "{reconciled} keys whose answer was lost were found registered in MI's asset list, not sent again\n"
        ));
    }
    let states: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let states = if states.is_empty() {
        "empty".to_owned()
    } else {
        states.join(", ")
    };
    text.push_str(&format!("ledger {}: {states}\n", db.display()));
    text
}

/// What the operator can do next, given where the ledger stands.
pub(crate) fn next_steps(counts: &[(State, u64)], stats: &Stats) -> String {
    let get = |s: State| ledger::count_in(counts, s);
    let polls = stats.polls.load(Relaxed);
    let mut text = String::new();
    if get(State::ImportFailed) > 0 {
        text.push_str(
            "MI could not import some files: `mi-import report --state import_failed` shows why\n",
        );
    }
    if get(State::Registered) > 0 && polls > 0 {
        text.push_str("`mi-import confirm` checks the keys still in progress later\n");
    }
    if get(State::Failed) > 0 {
        text.push_str("see `mi-import report --state failed`; run again with --retry-failed to send failed keys again\n");
    }
    if get(State::Uncertain) > 0 {
        text.push_str("uncertain keys could not be checked against MI; the next run checks them before sending\n");
    }
    if get(State::Pending) > 0 {
        text.push_str("pending keys will be sent by the next run of the same command\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn advice_follows_the_states_left_and_stays_out_of_the_summary() {
        let stats = Stats::default();
        stats.polls.store(3, Relaxed);
        let counts = [
            (State::Pending, 5),
            (State::Uncertain, 1),
            (State::Registered, 2),
            (State::Completed, 7),
        ];
        let summary = summarize(&counts, &stats, Duration::from_secs(1), Path::new("l.db"));
        assert!(
            summary.contains("ledger l.db: 5 pending, 1 uncertain, 2 registered, 7 completed"),
            "{summary}"
        );
        assert!(!summary.contains("next run"), "{summary}");

        let advice = next_steps(&counts, &stats);
        for expected in [
            "`mi-import confirm`",
            "the next run checks them",
            "pending keys will be sent",
        ] {
            assert!(advice.contains(expected), "{expected}: {advice}");
        }
        assert!(!advice.contains("--retry-failed"), "{advice}");
        assert_eq!(next_steps(&[(State::Completed, 7)], &stats), "");
    }
}
