//! Statements for confirmation: which registered assets are due for an import-status check,
//! and what a check found.
//!
//! A check is claimed like a send: its row's `next_check_at` moves a lease ahead, so no
//! second check of the same asset starts while one is out, and a killed process only delays
//! the next look by the lease.

use rusqlite::{Connection, params};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{NOW, Scope, State};

/// How long a claimed check owns its row before another may take it.
const CHECK_LEASE: Duration = Duration::from_secs(60);

/// A registered asset whose import-status is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCheck {
    pub id: i64,
    pub key: String,
    pub asset_id: i64,
    pub checks: u32,
}

/// What one import-status check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub id: i64,
    /// `Completed` or `ImportFailed` when final; `None` leaves the key `registered`.
    pub state: Option<State>,
    pub upload_status: Option<String>,
    pub upload_result: Option<String>,
    /// When to look again, if not final.
    pub next_check_at: Option<i64>,
}

/// Milliseconds since the Unix epoch, the unit of `next_check_at`.
pub fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    epoch_ms(SystemTime::now())
}

/// Takes up to `limit` registered assets due by now, soonest first.
pub fn claim_due(
    conn: &Connection,
    scope: &Scope,
    limit: usize,
) -> rusqlite::Result<Vec<DueCheck>> {
    let now = now_ms();
    let mut stmt = conn.prepare_cached(
        "UPDATE keys SET next_check_at = ?4
         WHERE id IN (SELECT id FROM keys
                      WHERE workspace = ?1 AND project = ?2 AND state = 'registered'
                        AND next_check_at <= ?3
                      ORDER BY next_check_at, id LIMIT ?5)
         RETURNING id, key, asset_id, checks",
    )?;
    let lease_end = now + CHECK_LEASE.as_millis() as i64;
    let rows = stmt.query_map(
        params![scope.workspace, scope.project, now, lease_end, limit as i64],
        |r| {
            Ok(DueCheck {
                id: r.get(0)?,
                key: r.get(1)?,
                asset_id: r.get(2)?,
                checks: r.get(3)?,
            })
        },
    )?;
    rows.collect()
}

/// Writes what checks found. Only rows still `registered` change.
pub fn record_checks(conn: &Connection, results: &[CheckResult]) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE keys SET state = COALESCE(?2, state), upload_status = COALESCE(?3, upload_status),
             upload_result = COALESCE(?4, upload_result), next_check_at = ?5,
             checks = checks + 1, updated_at = {NOW}
         WHERE id = ?1 AND state = 'registered'"
    ))?;
    let mut changed = 0;
    for r in results {
        changed += stmt.execute(params![
            r.id,
            r.state.map(State::as_str),
            r.upload_status,
            r.upload_result,
            r.next_check_at
        ])?;
    }
    Ok(changed)
}

/// Registered assets of the scope still waiting for a final status, and when the soonest is
/// due (Unix ms).
/// The count reads the whole index range, so call it for display, not in a loop.
pub fn awaiting(conn: &Connection, scope: &Scope) -> rusqlite::Result<(u64, Option<i64>)> {
    let count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM keys WHERE workspace = ?1 AND project = ?2 AND state = 'registered'",
        params![scope.workspace, scope.project],
        |r| r.get(0),
    )?;
    Ok((count as u64, soonest_due(conn, scope)?))
}

/// When the soonest registered asset is due (Unix ms); `None` when none waits. One index seek.
pub fn soonest_due(conn: &Connection, scope: &Scope) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT MIN(next_check_at) FROM keys
         WHERE workspace = ?1 AND project = ?2 AND state = 'registered'",
        params![scope.workspace, scope.project],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, NewKey, Outcome, claim, insert_keys, record};

    fn registered_ledger(n: usize) -> (Ledger, Scope) {
        let l = Ledger::open_in_memory().unwrap();
        let scope = Scope {
            workspace: "w".into(),
            project: "p".into(),
        };
        let keys: Vec<NewKey> = (0..n)
            .map(|i| NewKey::new("b", format!("k{i}.mp4")))
            .collect();
        insert_keys(l.conn(), &scope, &keys).unwrap();
        let outcomes: Vec<Outcome> = claim(l.conn(), &scope, n)
            .unwrap()
            .iter()
            .map(|c| Outcome {
                id: c.id,
                state: Some(State::Registered),
                attempts: 1,
                asset_id: Some(c.id + 1000),
                ..Default::default()
            })
            .collect();
        record(l.conn(), &outcomes).unwrap();
        // Make them due now.
        l.conn()
            .execute("UPDATE keys SET next_check_at = 0", [])
            .unwrap();
        (l, scope)
    }

    #[test]
    fn a_claimed_check_is_not_handed_out_twice() {
        let (l, scope) = registered_ledger(3);
        assert_eq!(claim_due(l.conn(), &scope, 2).unwrap().len(), 2);
        assert_eq!(claim_due(l.conn(), &scope, 10).unwrap().len(), 1);
        assert!(claim_due(l.conn(), &scope, 10).unwrap().is_empty());
        assert_eq!(awaiting(l.conn(), &scope).unwrap().0, 3);
    }

    #[test]
    fn final_status_settles_and_in_progress_waits() {
        let (l, scope) = registered_ledger(2);
        let due = claim_due(l.conn(), &scope, 10).unwrap();
        let later = now_ms() + 5_000;
        let results = [
            CheckResult {
                id: due[0].id,
                state: Some(State::ImportFailed),
                upload_status: Some("INVALID_METADATA".into()),
                upload_result: Some("unsupported resolution".into()),
                next_check_at: None,
            },
            CheckResult {
                id: due[1].id,
                state: None,
                upload_status: Some("IN_PROGRESS".into()),
                upload_result: None,
                next_check_at: Some(later),
            },
        ];
        assert_eq!(record_checks(l.conn(), &results).unwrap(), 2);
        let (waiting, soonest) = awaiting(l.conn(), &scope).unwrap();
        assert_eq!((waiting, soonest), (1, Some(later)));
        let (state, status, checks): (String, String, u32) = l
            .conn()
            .query_row(
                "SELECT state, upload_status, checks FROM keys WHERE id = ?1",
                [due[0].id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (state.as_str(), status.as_str(), checks),
            ("import_failed", "INVALID_METADATA", 1)
        );
        assert!(
            claim_due(l.conn(), &scope, 10).unwrap().is_empty(),
            "the waiting one is not due yet"
        );
    }
}
