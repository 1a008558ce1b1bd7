//! The record of one run, for programs: what `status --json` shows of the last run, what the
//! JSON log's `summary` event carries, what the ledger's `runs` table keeps. Data all the
//! way down: nested objects, numbers, the ending as `{kind, message, hint}`; never JSON in
//! strings, never debug text. (The README lists the fields.)

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use crate::exit::Exit;
use crate::ledger::State;
use crate::progress::Stats;
use crate::runner::{Ending, plural};

/// Failures named one by one in the record and the summary; the rest are counted.
pub const FAILURES_NAMED: usize = 100;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunRecord {
    pub exit_code: i32,
    pub ending: EndingRecord,
    pub this_run: ThisRun,
    /// Keys this run left failed, import_failed or uncertain (the first [`FAILURES_NAMED`]).
    pub failures: Vec<Failure>,
    pub failures_total: u64,
    /// Every key of the project, per state.
    pub ledger: BTreeMap<String, u64>,
    /// The limiter's rate when the run ended (requests/s), `None` without a limit.
    pub rate_at_end: Option<f64>,
    /// Manifest rows left out as malformed (`--skip-bad-rows`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_rows: Option<BadRowsRecord>,
}

/// Malformed manifest rows: the first ones in words, and how many.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BadRowsRecord {
    pub named: Vec<String>,
    pub count: u64,
}

/// How a run ended: `finished`, `fatal` (a fatal answer or the breaker), `refused` (the
/// settings), `interrupted` (a signal), `stopped_on_time` (`--stop-after`, `--stop-at`,
/// `--max-keys`), with the reason and its hint where there is one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndingRecord {
    pub kind: &'static str,
    pub message: Option<String>,
    pub hint: Option<String>,
}

impl EndingRecord {
    pub fn of(ending: &Ending) -> Self {
        let (kind, stop) = match ending {
            Ending::Finished => ("finished", None),
            Ending::Fatal(stop) => ("fatal", Some(stop)),
            Ending::Refused(stop) => ("refused", Some(stop)),
            Ending::Interrupted => ("interrupted", None),
            Ending::StoppedOnTime(why) => {
                return Self {
                    kind: "stopped_on_time",
                    message: Some(why.clone()),
                    hint: None,
                };
            }
        };
        Self {
            kind,
            message: stop.map(|s| s.message.clone()),
            hint: stop.and_then(|s| s.hint.clone()),
        }
    }
}

/// What this run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ThisRun {
    pub registered: u64,
    pub failed: u64,
    pub uncertain: u64,
    /// Keys first seen in this run and never to be sent (ineligible, or cannot be taken).
    pub skipped: u64,
    pub confirmed: u64,
    pub import_failed: u64,
    pub analyses_requested: u64,
    pub analysed: u64,
    pub analyses_failed: u64,
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub elapsed_seconds: f64,
}

impl ThisRun {
    pub fn of(stats: &Stats, this_run: &[(State, u64)], skipped: u64, elapsed: f64) -> Self {
        let left = |s: State| crate::ledger::keys::count_in(this_run, s);
        Self {
            registered: stats.registered.load(Relaxed) + stats.reconciled.load(Relaxed),
            failed: left(State::Failed),
            uncertain: left(State::Uncertain),
            skipped,
            confirmed: stats.completed.load(Relaxed),
            import_failed: left(State::ImportFailed),
            analyses_requested: stats.analyses_requested.load(Relaxed),
            analysed: stats.analyses_completed.load(Relaxed),
            analyses_failed: stats.analyses_failed.load(Relaxed),
            requests: stats.requests.load(Relaxed),
            retries: stats.retries.load(Relaxed),
            throttled: stats.throttled.load(Relaxed),
            elapsed_seconds: (elapsed * 10.0).round() / 10.0,
        }
    }
}

/// One key this run left in trouble.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub bucket: String,
    pub key: String,
    pub state: String,
    pub message: Option<String>,
}

impl RunRecord {
    /// Why the run exits as it does, in a few words.
    fn why(&self) -> String {
        match (Exit::from_code(self.exit_code), &self.ending.message) {
            (_, Some(message)) if self.ending.kind != "finished" => message.clone(),
            (Some(Exit::Success), _) => "every key this run touched ended well".into(),
            (Some(Exit::Trouble), _) => format!(
                "{} this run touched {} in trouble",
                super::summary::count(self.failures_total, "key", "keys"),
                plural(self.failures_total, "is", "are")
            ),
            (Some(Exit::Interrupted | Exit::Terminated), _) => "stopped by a signal".into(),
            _ => self.ending.kind.into(),
        }
    }

    /// The summary in one line, for `-q`: the exit code and why, the counts, the failures.
    pub fn one_line(&self) -> String {
        let r = &self.this_run;
        let mut line = format!(
            "mi-import: exit {} ({}): {} registered, {} failed, {} import_failed, {} uncertain, {} skipped, {} confirmed",
            self.exit_code,
            self.why(),
            r.registered,
            r.failed,
            r.import_failed,
            r.uncertain,
            r.skipped,
            r.confirmed
        );
        if r.analyses_requested + r.analyses_failed > 0 {
            line.push_str(&format!(
                ", {} analysed, {} analyses failed",
                r.analysed, r.analyses_failed
            ));
        }
        line.push_str(&format!(
            "; {} requests, {} throttled, {}s",
            r.requests, r.throttled, r.elapsed_seconds
        ));
        if !self.failures.is_empty() {
            let named: Vec<String> = self
                .failures
                .iter()
                .take(10)
                .map(|f| format!("{} ({})", crate::escape::shown(&f.key), f.state))
                .collect();
            line.push_str(&format!("; in trouble: {}", named.join(", ")));
            let more = self.failures_total.saturating_sub(named.len() as u64);
            if more > 0 {
                line.push_str(&format!(" and {more} more"));
            }
        }
        line
    }
}
