//! Statements for analysis (`--analyze`): which completed keys are to be analysed, the
//! journal of each request (a row is `REQUESTING` on disk before the request leaves), and
//! what MI's index status says afterwards.
//!
//! The request is billed and MI lets an asset be analysed again, so it is treated like
//! registration: never sent twice blindly. A lost answer leaves the row `UNSURE` until the
//! index status settles it (anything but `BEFORE_ANALYZE` means it was accepted).

use rusqlite::{Connection, params};
use std::collections::BTreeMap;
use std::time::Duration;

use super::{Scope, now_ms};

/// Our words in `analyses.status`, besides MI's own.
pub const REQUESTING: &str = "REQUESTING";
pub const UNSURE: &str = "UNSURE";
pub const REQUEST_FAILED: &str = "REQUEST_FAILED";
/// MI's words for an analysis that ended without an index.
pub const FAILED_STATUSES: [&str; 3] = ["ANALYZE_FAIL", "ANALYZE_CANCEL", REQUEST_FAILED];

/// A completed key whose asset is about to be sent for analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToAnalyze {
    pub key_id: i64,
    pub key: String,
    pub asset_id: i64,
}

/// Journals up to `limit` completed keys of the scope (after row `after`) as `REQUESTING`:
/// each key's asset once, or again if its analysis failed and `again_failed`.
pub fn claim_for_analysis(
    conn: &Connection,
    scope: &Scope,
    after: i64,
    limit: usize,
    again_failed: bool,
    run: i64,
) -> rusqlite::Result<Vec<ToAnalyze>> {
    let failed = serde_json::to_string(&FAILED_STATUSES).unwrap_or_default();
    let mut pick = conn.prepare_cached(
        "SELECT k.id, k.key, k.asset_id FROM keys k INDEXED BY keys_by_state
         WHERE k.scope = ?1 AND k.state = 4 AND k.id > ?2 AND k.asset_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM analyses a WHERE a.key_id = k.id
                           AND NOT (?3 AND a.status IN (SELECT value FROM json_each(?4))))
         ORDER BY k.id LIMIT ?5",
    )?;
    let picked: Vec<ToAnalyze> = pick
        .query_map(
            params![scope.id, after, again_failed, failed, limit as i64],
            |r| {
                Ok(ToAnalyze {
                    key_id: r.get(0)?,
                    key: r.get(1)?,
                    asset_id: r.get(2)?,
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut journal = conn.prepare_cached(
        "INSERT OR REPLACE INTO analyses (key_id, asset_id, status, sent_at, run, updated_at)
         VALUES (?1, ?2, 'REQUESTING', ?3, ?4, ?3)",
    )?;
    let now = now_ms();
    for one in &picked {
        journal.execute(params![one.key_id, one.asset_id, now, run])?;
    }
    Ok(picked)
}

/// What became of one analysis request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// MI accepted it (its index ID, if the answer named one).
    Accepted(Option<String>),
    /// MI said one is already waiting or running (409): accepted all the same.
    AlreadyRunning,
    /// The answer was lost: MI may have accepted it.
    Unsure(String),
    /// MI refused it (a 4xx): sending it again would not help.
    Refused {
        status: Option<u16>,
        message: String,
    },
    /// It never left (the run stopped, or MI kept throttling): a later run asks again.
    NotSent,
}

/// An analysis row as a request's outcome leaves it.
struct Row<'a> {
    status: &'a str,
    index: Option<&'a str>,
    message: Option<&'a str>,
    http: Option<u16>,
    unsure: Option<i64>,
    next: Option<i64>,
}

impl<'a> Row<'a> {
    fn status(status: &'a str) -> Self {
        Self {
            status,
            index: None,
            message: None,
            http: None,
            unsure: None,
            next: None,
        }
    }
}

/// Writes what became of requests, as settled by `run`. Only journaled rows change.
pub fn record_requests(
    conn: &Connection,
    results: &[(ToAnalyze, Requested, u32)],
    first_check: Duration,
    settle: Duration,
    run: i64,
) -> rusqlite::Result<usize> {
    let now = now_ms();
    let mut update = conn.prepare_cached(
        "UPDATE analyses SET status = ?3, index_id = COALESCE(?4, index_id), message = ?5,
             http_status = ?6, unsure_at = ?7, next_check_at = ?8, attempts = attempts + ?9,
             run = ?10, updated_at = ?11
         WHERE key_id = ?1 AND asset_id = ?2 AND status = 'REQUESTING'",
    )?;
    let mut forget =
        conn.prepare_cached("DELETE FROM analyses WHERE key_id = ?1 AND status = 'REQUESTING'")?;
    let (soon, later) = (
        now + first_check.as_millis() as i64,
        now + settle.as_millis() as i64,
    );
    let mut changed = 0;
    for (one, requested, attempts) in results {
        let row = match requested {
            Requested::Accepted(index) => Row {
                index: index.as_deref(),
                next: Some(soon),
                ..Row::status("WAIT_ANALYZE")
            },
            Requested::AlreadyRunning => Row {
                message: Some(
                    "MI answered 409: an analysis of this asset was already waiting or running",
                ),
                http: Some(409),
                next: Some(soon),
                ..Row::status("WAIT_ANALYZE")
            },
            Requested::Unsure(why) => Row {
                message: Some(why),
                unsure: Some(now),
                next: Some(later),
                ..Row::status(UNSURE)
            },
            Requested::Refused { status, message } => Row {
                message: Some(message),
                http: *status,
                ..Row::status(REQUEST_FAILED)
            },
            Requested::NotSent => {
                changed += forget.execute(params![one.key_id])?;
                continue;
            }
        };
        changed += update.execute(params![
            one.key_id,
            one.asset_id,
            row.status,
            row.index,
            row.message,
            row.http,
            row.unsure,
            row.next,
            attempts,
            run,
            now
        ])?;
    }
    Ok(changed)
}

/// Requests a dead run journaled and never answered: their answers are lost.
pub fn mark_requesting_unsure(
    conn: &Connection,
    scope: &Scope,
    settle: Duration,
) -> rusqlite::Result<usize> {
    let now = now_ms();
    conn.execute(
        "UPDATE analyses SET status = 'UNSURE', unsure_at = ?2, next_check_at = ?3, updated_at = ?2,
             message = 'a run stopped while this analysis was being requested'
         WHERE status = 'REQUESTING' AND key_id IN (SELECT id FROM keys WHERE scope = ?1)",
        params![scope.id, now, now + settle.as_millis() as i64],
    )
}

/// An analysis whose status is due for a look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAnalysis {
    pub key_id: i64,
    pub key: String,
    pub asset_id: i64,
    /// What the ledger holds now: `UNSURE`, or MI's last word.
    pub status: String,
    pub checks: u32,
}

/// Up to `limit` analyses of the scope due for a status look, other than those in `busy`
/// (looks out at the moment; nothing is leased on disk, so a killed run's looks are due at
/// once for the next).
pub fn claim_due_analyses(
    conn: &Connection,
    scope: &Scope,
    limit: usize,
    busy: &[i64],
) -> rusqlite::Result<Vec<DueAnalysis>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.key_id, a.asset_id, a.status, a.checks, k.key
         FROM analyses a JOIN keys k ON k.id = a.key_id
         WHERE a.next_check_at IS NOT NULL AND a.next_check_at <= ?2 AND k.scope = ?1
           AND a.key_id NOT IN (SELECT value FROM json_each(?3))
         ORDER BY a.next_check_at LIMIT ?4",
    )?;
    let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".into());
    let rows = stmt.query_map(params![scope.id, now_ms(), busy, limit as i64], |r| {
        Ok(DueAnalysis {
            key_id: r.get(0)?,
            asset_id: r.get(1)?,
            status: r.get(2)?,
            checks: r.get(3)?,
            key: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// What one status look decided for a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisCheck {
    pub key_id: i64,
    pub asset_id: i64,
    /// The row's new status; `None` removes the row (an unsure request proven not accepted:
    /// the key is to be requested again).
    pub status: Option<String>,
    pub index_id: Option<String>,
    pub message: Option<String>,
    /// When to look again; `None` when final.
    pub next_check_at: Option<i64>,
}

/// Writes what status looks found, as settled by `run`; only rows still about the same asset
/// change.
pub fn record_analysis_checks(
    conn: &Connection,
    checks: &[AnalysisCheck],
    run: i64,
) -> rusqlite::Result<usize> {
    let now = now_ms();
    let mut update = conn.prepare_cached(
        "UPDATE analyses SET status = ?3, index_id = COALESCE(?4, index_id),
             message = COALESCE(?5, message), next_check_at = ?6, checks = checks + 1,
             updated_at = ?7, run = CASE WHEN status = ?3 THEN run ELSE ?8 END
         WHERE key_id = ?1 AND asset_id = ?2",
    )?;
    let mut forget =
        conn.prepare_cached("DELETE FROM analyses WHERE key_id = ?1 AND asset_id = ?2")?;
    let mut changed = 0;
    for c in checks {
        changed += match &c.status {
            Some(status) => update.execute(params![
                c.key_id,
                c.asset_id,
                status,
                c.index_id,
                c.message,
                c.next_check_at,
                now,
                run
            ])?,
            None => forget.execute(params![c.key_id, c.asset_id])?,
        };
    }
    Ok(changed)
}

/// When the soonest analysis of the scope is due for a look (Unix ms), if any is open.
pub fn soonest_analysis_due(conn: &Connection, scope: &Scope) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT MIN(a.next_check_at) FROM analyses a JOIN keys k ON k.id = a.key_id
         WHERE a.next_check_at IS NOT NULL AND k.scope = ?1",
    )?
    .query_row(params![scope.id], |r| r.get(0))
}

/// Analyses of the scope per status.
pub fn analysis_counts(
    conn: &Connection,
    scope: Option<&Scope>,
) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.status, COUNT(*) FROM analyses a JOIN keys k ON k.id = a.key_id
         WHERE ?1 IS NULL OR k.scope = ?1 GROUP BY a.status",
    )?;
    let rows = stmt.query_map(params![scope.map(|s| s.id)], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// Analyses `run` saw fail (or refused): they make the run exit 1.
pub fn failed_in_run(conn: &Connection, scope: &Scope, run: i64) -> rusqlite::Result<u64> {
    let failed = serde_json::to_string(&FAILED_STATUSES).unwrap_or_default();
    conn.prepare_cached(
        "SELECT COUNT(*) FROM analyses a JOIN keys k ON k.id = a.key_id
         WHERE k.scope = ?1 AND a.run = ?2 AND a.status IN (SELECT value FROM json_each(?3))",
    )?
    .query_row(params![scope.id, run, failed], |r| {
        r.get::<_, i64>(0).map(|n| n as u64)
    })
}

/// Completed keys of the scope a run with `--analyze` would send for analysis now.
pub fn count_to_analyze(
    conn: &Connection,
    scope: &Scope,
    again_failed: bool,
) -> rusqlite::Result<u64> {
    let failed = serde_json::to_string(&FAILED_STATUSES).unwrap_or_default();
    conn.prepare_cached(
        "SELECT COUNT(*) FROM keys k INDEXED BY keys_by_state
         WHERE k.scope = ?1 AND k.state = 4 AND k.asset_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM analyses a WHERE a.key_id = k.id
                           AND NOT (?2 AND a.status IN (SELECT value FROM json_each(?3))))",
    )?
    .query_row(params![scope.id, again_failed, failed], |r| {
        r.get::<_, i64>(0).map(|n| n as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    fn completed(n: usize) -> (Ledger, Scope) {
        let (l, scope) = crate::ledger::tests::registered_ledger(n);
        l.conn().execute("UPDATE keys SET state = 4", []).unwrap();
        (l, scope)
    }

    #[test]
    fn each_completed_key_is_journaled_once_and_failures_again_only_on_request() {
        let (l, scope) = completed(3);
        let first = claim_for_analysis(l.conn(), &scope, 0, 10, false, 7).unwrap();
        assert_eq!(first.len(), 3);
        assert!(
            claim_for_analysis(l.conn(), &scope, 0, 10, false, 7)
                .unwrap()
                .is_empty()
        );
        let results = vec![
            (first[0].clone(), Requested::Accepted(Some("9".into())), 1),
            (
                first[1].clone(),
                Requested::Refused {
                    status: Some(400),
                    message: "bad".into(),
                },
                1,
            ),
            (first[2].clone(), Requested::NotSent, 0),
        ];
        let n = record_requests(l.conn(), &results, Duration::ZERO, Duration::ZERO, 7).unwrap();
        assert_eq!(n, 3);
        assert_eq!(failed_in_run(l.conn(), &scope, 7).unwrap(), 1);
        // The one never sent is claimable again; the refused one only when asked.
        let again = claim_for_analysis(l.conn(), &scope, 0, 10, false, 8).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].key_id, first[2].key_id);
        let retried = claim_for_analysis(l.conn(), &scope, 0, 10, true, 8).unwrap();
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].key_id, first[1].key_id);
        assert_eq!(count_to_analyze(l.conn(), &scope, false).unwrap(), 0);
    }

    #[test]
    fn status_looks_are_due_and_applied_to_their_asset_only() {
        let (l, scope) = completed(2);
        let claimed = claim_for_analysis(l.conn(), &scope, 0, 10, false, 1).unwrap();
        let results: Vec<_> = claimed
            .iter()
            .map(|c| (c.clone(), Requested::Unsure("lost".into()), 1))
            .collect();
        record_requests(l.conn(), &results, Duration::ZERO, Duration::ZERO, 1).unwrap();
        let due = claim_due_analyses(l.conn(), &scope, 10, &[]).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].status, UNSURE);
        let busy = [due[0].key_id, due[1].key_id];
        assert!(
            claim_due_analyses(l.conn(), &scope, 10, &busy)
                .unwrap()
                .is_empty()
        );
        let checks = [
            AnalysisCheck {
                key_id: due[0].key_id,
                asset_id: due[0].asset_id,
                status: None,
                index_id: None,
                message: None,
                next_check_at: None,
            },
            AnalysisCheck {
                key_id: due[1].key_id,
                asset_id: 99_999,
                status: Some("ANALYZE_COMPLETED".into()),
                index_id: Some("5".into()),
                message: None,
                next_check_at: None,
            },
        ];
        assert_eq!(record_analysis_checks(l.conn(), &checks, 1).unwrap(), 1);
        let counts = analysis_counts(l.conn(), Some(&scope)).unwrap();
        assert_eq!(
            counts.get(UNSURE),
            Some(&1),
            "the other asset's answer changed nothing"
        );
        assert_eq!(count_to_analyze(l.conn(), &scope, false).unwrap(), 1);
    }
}
