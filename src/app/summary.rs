//! The words a run ends with: what this run did, where the ledger stands, what to do next.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use crate::ledger::{self, OnChanged, State};
use crate::progress::Stats;
use crate::runner::{Ending, ListSummary, plural};

/// `n` and its noun, singular or plural.
pub(crate) fn count(n: u64, one: &'static str, many: &'static str) -> String {
    format!("{n} {}", plural(n, one, many))
}

pub(crate) fn describe_listing(listed: &ListSummary, on_changed: OnChanged) -> String {
    let how = match listed.resumed_from {
        0 => String::new(),
        before => format!(
            " (continued where a stopped run left it, after {})",
            count(before, "page", "pages")
        ),
    };
    let mut text = format!(
        "listing{how}: {} in {}, {} new to the ledger",
        count(listed.objects, "object", "objects"),
        count(listed.pages, "page", "pages"),
        listed.new
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
    let noted = listed.changed - listed.requeued;
    if listed.requeued > 0 {
        text.push_str(&format!(
            "{} changed since the ledger last saw {} (ETag or size) and will be sent (again)\n",
            count(listed.requeued, "object", "objects"),
            plural(listed.requeued, "it", "them")
        ));
    }
    if noted > 0 {
        text.push_str(&match on_changed {
            OnChanged::Report => format!(
                "{} changed since registration (ETag or size); left alone, see the report's changed_at, or pass --on-changed reimport\n",
                count(noted, "registered object", "registered objects")
            ),
            OnChanged::Reimport => format!("{noted} changed objects were noted\n"),
        });
    }
    text
}

pub(crate) fn summarize(
    counts: &[(State, u64)],
    this_run: &[(State, u64)],
    stats: &Stats,
    elapsed: std::time::Duration,
    db: &Path,
) -> String {
    let get = |s: State| ledger::keys::count_in(counts, s);
    let reconciled = stats.reconciled.load(Relaxed);
    let found = stats.found_in_list.load(Relaxed);
    // Keys this run left uncertain make its exit code 1: the first line says so.
    let unsure = ledger::keys::count_in(this_run, State::Uncertain);
    let unsure = if unsure > 0 {
        format!(", {unsure} uncertain")
    } else {
        String::new()
    };
    let mut text = format!(
        "this run: {} registered, {} failed{unsure} in {:.1}s; {}, {}, {} throttled\n",
        stats.registered.load(Relaxed) + reconciled,
        stats.failed.load(Relaxed),
        elapsed.as_secs_f64(),
        count(stats.requests.load(Relaxed), "request", "requests"),
        count(stats.retries.load(Relaxed), "retry", "retries"),
        stats.throttled.load(Relaxed),
    );
    let polls = stats.polls.load(Relaxed);
    let pages = stats.list_checks.load(Relaxed);
    if polls + pages > 0 {
        let mut how = count(polls, "import-status check", "import-status checks");
        if pages > 0 {
            how.push_str(&format!(
                ", {}",
                count(pages, "asset-list page", "asset-list pages")
            ));
        }
        text.push_str(&format!(
            "confirmation: {} completed, {} import_failed, {} still in progress ({how})\n",
            stats.completed.load(Relaxed),
            stats.import_failed.load(Relaxed),
            get(State::Registered),
        ));
    }
    let requested = stats.analyses_requested.load(Relaxed);
    let looks = stats.analysis_looks.load(Relaxed);
    if requested > 0 || looks > 0 {
        text.push_str(&format!(
            "analysis: {} requested, {} completed, {} failed ({})\n",
            requested,
            stats.analyses_completed.load(Relaxed),
            stats.analyses_failed.load(Relaxed),
            count(looks, "index-status check", "index-status checks"),
        ));
    }
    if found > 0 {
        text.push_str(&format!(
            "{} whose answer was lost {} found registered in MI's asset list, not sent again\n",
            count(found, "key", "keys"),
            plural(found, "was", "were")
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
    let earlier: Vec<(State, u64)> = [State::Failed, State::ImportFailed, State::Uncertain]
        .iter()
        .filter_map(|s| {
            let left = get(*s).saturating_sub(ledger::keys::count_in(this_run, *s));
            (left > 0).then_some((*s, left))
        })
        .collect();
    if !earlier.is_empty() {
        let said: Vec<String> = earlier.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let states: Vec<&str> = earlier.iter().map(|(s, _)| s.as_str()).collect();
        text.push_str(&format!(
            "left by earlier runs (not this run's doing, so not in its exit code): {}; `mi-import report --state {}` lists them\n",
            said.join(", "),
            states.join(",")
        ));
    }
    text
}

/// What the operator can do next, given how the run ended and where the ledger stands.
/// A refused run removed the ledger it had just made: the summary says so rather than
/// naming a file that is no longer there "empty".
pub(crate) fn ledger_not_kept(summary: &mut String, db: &Path) {
    let empty = format!("ledger {}: empty\n", db.display());
    let gone = format!(
        "ledger {}: not kept (this run recorded nothing)\n",
        db.display()
    );
    *summary = summary.replace(&empty, &gone);
}

pub(crate) fn next_steps(counts: &[(State, u64)], ending: &Ending, stats: &Stats) -> String {
    let get = |s: State| ledger::keys::count_in(counts, s);
    let polls = stats.polls.load(Relaxed) + stats.list_checks.load(Relaxed);
    let mut text = String::new();
    if get(State::ImportFailed) > 0 {
        text.push_str(
            "MI could not import some files: `mi-import report --state import_failed` shows why; once a file is fixed, \
             a changed object is registered again by itself, or run with --retry-import-failed\n",
        );
    }
    if get(State::Registered) > 0 && polls > 0 {
        text.push_str("`mi-import confirm` checks the keys still in progress later\n");
    }
    if stats.analyses_failed.load(Relaxed) > 0 {
        text.push_str(
            "some analyses failed: `mi-import report --format jsonl` shows analysis_status and analysis_message; `mi-import analyze --reanalyze-failed` requests them again\n",
        );
    }
    if get(State::Failed) > 0 {
        text.push_str("see `mi-import report --state failed`; run again with --retry-failed to send failed keys again\n");
    }
    if get(State::Uncertain) > 0 {
        text.push_str(
            "uncertain keys are never sent again without proof that MI has no asset for them: \
             the next run looks again for those without candidate assets; those with candidates wait for \
             `mi-import resolve` (`mi-import report --state uncertain` lists them with their candidates)\n",
        );
    }
    if get(State::Pending) > 0 {
        text.push_str(match ending {
            Ending::Fatal(_) | Ending::Refused(_) => {
                "fix what the error above names, then run the same command again: the pending keys are sent then\n"
            }
            Ending::Interrupted => {
                "run the same command again to resume (or `mi-import run` with only --workspace and --project, and --db, --s3-endpoint or --s3-region if they were given: the ledger remembers the rest)\n"
            }
            Ending::Finished => "pending keys will be sent by the next run\n",
            Ending::StoppedOnTime(_) => {
                "the run stopped sending where it was told to; the next run sends the pending keys\n"
            }
        });
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// The summary of a one-second run on ledger `l.db`.
    fn summary_of(counts: &[(State, u64)], this_run: &[(State, u64)], stats: &Stats) -> String {
        summarize(
            counts,
            this_run,
            stats,
            Duration::from_secs(1),
            Path::new("l.db"),
        )
    }

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
        let summary = summary_of(&counts, &[], &stats);
        assert!(
            summary.contains("ledger l.db: 5 pending, 1 uncertain, 2 registered, 7 completed"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "left by earlier runs (not this run's doing, so not in its exit code): 1 uncertain"
            ),
            "{summary}"
        );
        assert!(!summary.contains("next run"), "{summary}");

        let advice = next_steps(&counts, &Ending::Finished, &stats);
        for expected in [
            "`mi-import confirm`",
            "`mi-import resolve`",
            "pending keys will be sent",
        ] {
            assert!(advice.contains(expected), "{expected}: {advice}");
        }
        assert!(!advice.contains("--retry-failed"), "{advice}");
        assert_eq!(
            next_steps(&[(State::Completed, 7)], &Ending::Finished, &stats),
            ""
        );
    }

    #[test]
    fn keys_this_run_left_uncertain_are_on_its_first_line() {
        let stats = Stats::default();
        stats.registered.store(16, Relaxed);
        let counts = [(State::Uncertain, 5), (State::Registered, 16)];
        let this_run = [(State::Uncertain, 4)];
        let summary = summary_of(&counts, &this_run, &stats);
        assert!(
            summary.starts_with("this run: 16 registered, 0 failed, 4 uncertain in 1.0s"),
            "{summary}"
        );
        let quiet = summary_of(&counts, &[], &stats);
        assert!(
            quiet.starts_with("this run: 16 registered, 0 failed in 1.0s"),
            "{quiet}"
        );
    }

    #[test]
    fn after_a_fatal_stop_the_advice_is_to_fix_the_cause_first() {
        let stats = Stats::default();
        let stop = crate::runner::FatalStop {
            message: "401".into(),
            hint: None,
        };
        let advice = next_steps(&[(State::Pending, 3)], &Ending::Fatal(stop), &stats);
        assert!(
            advice.starts_with("fix what the error above names"),
            "{advice}"
        );
    }

    #[test]
    fn counts_are_said_in_words_that_agree() {
        assert_eq!(count(1, "key", "keys"), "1 key");
        assert_eq!(count(2, "retry", "retries"), "2 retries");
        let stats = Stats::default();
        stats.requests.store(1, Relaxed);
        stats.retries.store(1, Relaxed);
        let summary = summary_of(&[], &[], &stats);
        assert!(summary.contains("1 request, 1 retry"), "{summary}");
    }
}
