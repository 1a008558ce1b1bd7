//! Statements for analysis (`--analyze`): which completed keys are to be analysed, the
//! journal of each request (a row is `REQUESTING` on disk before the request leaves), and
//! what MI's index status says afterwards.
//!
//! The request is billed and MI lets an asset be analysed again, so it is treated like
//! registration: never sent twice blindly. A lost answer leaves the row `UNSURE` until the
//! index status settles it (anything but `BEFORE_ANALYZE` means it was accepted).

use const_format::formatcp;
use rusqlite::{Connection, params};
use std::collections::BTreeMap;
use std::time::Duration;

use super::Scope;
use super::state::sql::*;
use crate::clock::now_ms;

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

/// Which completed keys a command sends for analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Again for keys whose analysis failed, was cancelled or was refused.
    pub again_failed: bool,
    /// Only keys a run with `--analyze` sent or completed (`run --analyze`); all completed
    /// keys otherwise (`mi-import analyze`).
    pub asked_only: bool,
}

/// The condition, on a completed key `k`, that its current asset is to be analysed: no
/// analysis of that asset yet (or a failed one, when asked again), and the key asked for it
/// if only those are picked. Parameters: ?2 again_failed, ?3 the failed statuses (JSON),
/// ?4 asked_only.
const TO_ANALYZE: &str = formatcp!(
    "k.state = {COMPLETED} AND k.asset_id IS NOT NULL AND (NOT ?4 OR k.analyze = 1)
    AND NOT EXISTS (SELECT 1 FROM analyses a WHERE a.key_id = k.id AND a.asset_id = k.asset_id
                    AND NOT (?2 AND a.status IN (SELECT value FROM json_each(?3))))"
);

/// Journals up to `limit` completed keys of the scope (after row `after`) as `REQUESTING`:
/// each key's current asset once, or again if its analysis failed and `again_failed`. A
/// request made again keeps what MI said of the one before.
pub fn claim_for_analysis(
    conn: &Connection,
    scope: &Scope,
    after: i64,
    limit: usize,
    pick: Pick,
    run: i64,
) -> rusqlite::Result<Vec<ToAnalyze>> {
    let failed = serde_json::to_string(&FAILED_STATUSES).unwrap_or_default();
    let mut select = conn.prepare_cached(formatcp!(
        "SELECT k.id, k.key, k.asset_id FROM keys k INDEXED BY keys_by_state
         WHERE k.scope = ?1 AND {TO_ANALYZE} AND k.id > ?5
         ORDER BY k.id LIMIT ?6"
    ))?;
    let picked: Vec<ToAnalyze> = select
        .query_map(
            params![
                scope.id,
                pick.again_failed,
                failed,
                pick.asked_only,
                after,
                limit as i64
            ],
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
        "INSERT INTO analyses (key_id, asset_id, status, sent_at, run, updated_at)
         VALUES (?1, ?2, 'REQUESTING', ?3, ?4, ?3)
         ON CONFLICT (key_id, asset_id) DO UPDATE SET
             previous_status = status, previous_index = index_id, status = 'REQUESTING',
             index_id = NULL, message = NULL, http_status = NULL, unsure_at = NULL,
             next_check_at = NULL, checks = 0, sent_at = ?3, run = ?4, updated_at = ?3",
    )?;
    let now = now_ms();
    for one in &picked {
        journal.execute(params![one.key_id, one.asset_id, now, run])?;
    }
    Ok(picked)
}

/// Records that a run asked to analyse sent these keys: once completed, a later run with
/// `--analyze` analyses them too.
pub fn note_asked(conn: &Connection, keys: impl Iterator<Item = i64>) -> rusqlite::Result<()> {
    let mut mark = conn.prepare_cached("UPDATE keys SET analyze = 1 WHERE id = ?1")?;
    for id in keys {
        mark.execute(params![id])?;
    }
    Ok(())
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
    // A request that never left: a first one leaves no trace, one made again leaves what MI
    // said of the one before.
    let mut forget = conn.prepare_cached(
        "DELETE FROM analyses
         WHERE key_id = ?1 AND asset_id = ?2 AND status = 'REQUESTING' AND previous_status IS NULL",
    )?;
    let mut restore = conn.prepare_cached(
        "UPDATE analyses SET status = previous_status, index_id = previous_index,
             previous_status = NULL, previous_index = NULL, updated_at = ?3
         WHERE key_id = ?1 AND asset_id = ?2 AND status = 'REQUESTING'",
    )?;
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
                changed += forget.execute(params![one.key_id, one.asset_id])?;
                changed += restore.execute(params![one.key_id, one.asset_id, now])?;
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
    /// When the request was sent, the object's size, and when it was last looked at (if it
    /// was): what the model of analysis times plans and learns from.
    pub sent_at: Option<i64>,
    pub size: Option<u64>,
    pub last_look: Option<i64>,
    /// For a request made again: what MI said of the one before (status, index ID).
    pub previous: Option<(String, Option<String>)>,
}

/// Up to `limit` analyses of the scope due for a status look, other than those in `busy`
/// (looks out at the moment; nothing is leased on disk, so a killed run's looks are due at
/// once for the next). Only analyses of a key's current asset are followed: one of an asset
/// the key gave up (its object registered again) is history.
pub fn claim_due_analyses(
    conn: &Connection,
    scope: &Scope,
    limit: usize,
    busy: &[i64],
) -> rusqlite::Result<Vec<DueAnalysis>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.key_id, a.asset_id, a.status, a.checks, k.key, a.previous_status,
                a.previous_index, a.sent_at, k.size,
                CASE WHEN a.checks > 0 THEN a.updated_at END
         FROM analyses a JOIN keys k ON k.id = a.key_id AND k.asset_id = a.asset_id
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
            previous: r
                .get::<_, Option<String>>(5)?
                .map(|status| Ok::<_, rusqlite::Error>((status, r.get(6)?)))
                .transpose()?,
            sent_at: r.get(7)?,
            size: r.get::<_, Option<i64>>(8)?.map(|s| s as u64),
            last_look: r.get(9)?,
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
    /// A look was made (false: only the time of the next look changes).
    pub looked: bool,
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
             message = COALESCE(?5, message), next_check_at = ?6, checks = checks + ?9,
             previous_status = CASE WHEN ?6 IS NULL THEN NULL ELSE previous_status END,
             previous_index = CASE WHEN ?6 IS NULL THEN NULL ELSE previous_index END,
             updated_at = CASE WHEN ?9 THEN ?7 ELSE updated_at END,
             run = CASE WHEN status = ?3 THEN run ELSE ?8 END
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
                run,
                c.looked
            ])?,
            None => forget.execute(params![c.key_id, c.asset_id])?,
        };
    }
    Ok(changed)
}

/// When the soonest analysis of the scope is due for a look (Unix ms), if any is open.
pub fn soonest_analysis_due(conn: &Connection, scope: &Scope) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT MIN(a.next_check_at) FROM analyses a
         JOIN keys k ON k.id = a.key_id AND k.asset_id = a.asset_id
         WHERE a.next_check_at IS NOT NULL AND k.scope = ?1",
    )?
    .query_row(params![scope.id], |r| r.get(0))
}

/// Analyses of the scope's keys' current assets, per status.
pub fn analysis_counts(
    conn: &Connection,
    scope: Option<&Scope>,
) -> rusqlite::Result<BTreeMap<String, u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.status, COUNT(*) FROM analyses a
         JOIN keys k ON k.id = a.key_id AND k.asset_id = a.asset_id
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
        "SELECT COUNT(*) FROM analyses a JOIN keys k ON k.id = a.key_id AND k.asset_id = a.asset_id
         WHERE k.scope = ?1 AND a.run = ?2 AND a.status IN (SELECT value FROM json_each(?3))",
    )?
    .query_row(params![scope.id, run, failed], |r| {
        r.get::<_, i64>(0).map(|n| n as u64)
    })
}

/// Completed keys of the scope that `pick` would send for analysis now.
pub fn count_to_analyze(conn: &Connection, scope: &Scope, pick: Pick) -> rusqlite::Result<u64> {
    let failed = serde_json::to_string(&FAILED_STATUSES).unwrap_or_default();
    conn.prepare_cached(formatcp!(
        "SELECT COUNT(*) FROM keys k INDEXED BY keys_by_state WHERE k.scope = ?1 AND {TO_ANALYZE}"
    ))?
    .query_row(
        params![scope.id, pick.again_failed, failed, pick.asked_only],
        |r| r.get::<_, i64>(0).map(|n| n as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    const ALL: Pick = Pick {
        again_failed: false,
        asked_only: false,
    };
    const AGAIN: Pick = Pick {
        again_failed: true,
        asked_only: false,
    };

    fn completed(n: usize) -> (Ledger, Scope) {
        let (l, scope) = crate::ledger::tests::registered_ledger(n);
        l.conn()
            .execute(formatcp!("UPDATE keys SET state = {COMPLETED}"), [])
            .unwrap();
        (l, scope)
    }

    #[test]
    fn each_completed_key_is_journaled_once_and_failures_again_only_on_request() {
        let (l, scope) = completed(3);
        let first = claim_for_analysis(l.conn(), &scope, 0, 10, ALL, 7).unwrap();
        assert_eq!(first.len(), 3);
        assert!(
            claim_for_analysis(l.conn(), &scope, 0, 10, ALL, 7)
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
        let again = claim_for_analysis(l.conn(), &scope, 0, 10, ALL, 8).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].key_id, first[2].key_id);
        let retried = claim_for_analysis(l.conn(), &scope, 0, 10, AGAIN, 8).unwrap();
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].key_id, first[1].key_id);
        assert_eq!(count_to_analyze(l.conn(), &scope, ALL).unwrap(), 0);
    }

    #[test]
    fn status_looks_are_due_and_applied_to_their_asset_only() {
        let (l, scope) = completed(2);
        let claimed = claim_for_analysis(l.conn(), &scope, 0, 10, ALL, 1).unwrap();
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
                looked: true,
            },
            AnalysisCheck {
                key_id: due[1].key_id,
                asset_id: 99_999,
                status: Some("ANALYZE_COMPLETED".into()),
                index_id: Some("5".into()),
                message: None,
                next_check_at: None,
                looked: true,
            },
        ];
        assert_eq!(record_analysis_checks(l.conn(), &checks, 1).unwrap(), 1);
        let counts = analysis_counts(l.conn(), Some(&scope)).unwrap();
        assert_eq!(
            counts.get(UNSURE),
            Some(&1),
            "the other asset's answer changed nothing"
        );
        assert_eq!(count_to_analyze(l.conn(), &scope, ALL).unwrap(), 1);
    }
}
