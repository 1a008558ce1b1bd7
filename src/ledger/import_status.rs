//! Statements for confirmation: which registered assets are due for an import-status check,
//! and what a check found.
//!
//! Checks out at the moment are excluded by the caller (one process per ledger): nothing is
//! written until a check answers, so a killed process leaves its checks due, for the next run
//! to make at once.

use const_format::formatcp;
use rusqlite::{Connection, params};

use super::state::sql::*;
use super::{Scope, State};
use crate::clock::now_ms;

/// A registered asset whose import-status is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCheck {
    pub id: i64,
    pub key: String,
    pub asset_id: i64,
    pub checks: u32,
    pub size: Option<u64>,
    pub registered_at: i64,
    /// When it was last looked at (the row's last change), if it was.
    pub last_look: Option<i64>,
}

/// What one import-status check found, about one asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub id: i64,
    /// A request was made (false: only the time of the next look changes).
    pub looked: bool,
    /// The asset checked: the result is applied only while the key still has this asset.
    pub asset_id: i64,
    /// `Completed` or `ImportFailed` when final; `None` leaves the key `registered`.
    pub state: Option<State>,
    pub upload_status: Option<String>,
    pub upload_result: Option<String>,
    /// When to look again, if not final.
    pub next_check_at: Option<i64>,
}

/// Up to `limit` registered assets due by now, soonest first, other than those in `busy`
/// (checks out at the moment).
pub fn claim_due(
    conn: &Connection,
    scope: &Scope,
    limit: usize,
    busy: &[i64],
) -> rusqlite::Result<Vec<DueCheck>> {
    pass_table(conn)?;
    let mut stmt = conn.prepare_cached(formatcp!(
        "SELECT id, key, asset_id, checks, size, COALESCE(registered_at, updated_at),
                CASE WHEN checks > 0 THEN updated_at END
         FROM keys
         WHERE scope = ?1 AND state = {REGISTERED} AND next_check_at <= ?2
           AND id NOT IN (SELECT value FROM json_each(?3))
           AND id NOT IN (SELECT id FROM temp.list_pass)
         ORDER BY next_check_at LIMIT ?4"
    ))?;
    let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".into());
    let rows = stmt.query_map(params![scope.id, now_ms(), busy, limit as i64], |r| {
        Ok(DueCheck {
            id: r.get(0)?,
            key: r.get(1)?,
            asset_id: r.get(2)?,
            checks: r.get(3)?,
            size: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
            registered_at: r.get(5)?,
            last_look: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// Writes what checks found, as settled by `run`. Only rows still `registered` with the
/// asset that was checked change: an answer about a key's old asset (one given up when the
/// object changed) says nothing about its new one. A run asked to analyse (`asks_analysis`)
/// records that wish with each key it sees completed.
pub fn record_checks(
    conn: &Connection,
    results: &[CheckResult],
    run: i64,
    asks_analysis: bool,
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(formatcp!(
        "UPDATE keys SET state = COALESCE(?3, state), upload_status = COALESCE(?4, upload_status),
             upload_result = COALESCE(?5, upload_result), next_check_at = ?6,
             checks = checks + ?9, updated_at = CASE WHEN ?9 THEN ?7 ELSE updated_at END,
             run = CASE WHEN ?3 IS NULL THEN run ELSE ?8 END,
             analyze = CASE WHEN ?10 AND ?3 = {COMPLETED} THEN 1 ELSE analyze END
         WHERE id = ?1 AND asset_id = ?2 AND state = {REGISTERED}"
    ))?;
    let now = now_ms();
    let mut changed = 0;
    for r in results {
        changed += stmt.execute(params![
            r.id,
            r.asset_id,
            r.state.map(State::code),
            r.upload_status,
            r.upload_result,
            r.next_check_at,
            now,
            run,
            r.looked,
            asks_analysis
        ])?;
    }
    Ok(changed)
}

/// Makes every registered asset not looked at yet due now, to be planned again.
pub fn replan_unlooked(conn: &Connection, scope: &Scope) -> rusqlite::Result<usize> {
    conn.prepare_cached(formatcp!(
        "UPDATE keys SET next_check_at = 0 WHERE scope = ?1 AND state = {REGISTERED} AND checks = 0"
    ))?
    .execute(params![scope.id])
}

/// Registered assets of the scope still waiting for a final status, and when the soonest is
/// due (Unix ms).
/// The count reads the whole index range, so call it for display, not in a loop.
pub fn awaiting(conn: &Connection, scope: &Scope) -> rusqlite::Result<(u64, Option<i64>)> {
    let count: i64 = conn.query_row(
        formatcp!("SELECT COUNT(*) FROM keys WHERE scope = ?1 AND state = {REGISTERED}"),
        params![scope.id],
        |r| r.get(0),
    )?;
    Ok((count as u64, soonest_due(conn, scope)?))
}

/// When the soonest registered asset is due (Unix ms); `None` when none waits. One index seek.
pub fn soonest_due(conn: &Connection, scope: &Scope) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        formatcp!("SELECT MIN(next_check_at) FROM keys WHERE scope = ?1 AND state = {REGISTERED}"),
        params![scope.id],
        |r| r.get(0),
    )
}

/// The rows a pass over the asset list is looking for, by asset ID, in the connection's own
/// temporary store: never in the ledger's file, and gone with the process. Rows in it are not
/// claimed for a look of their own while the pass runs.
fn pass_table(conn: &Connection) -> rusqlite::Result<()> {
    // Cached: every claim makes sure of it, and a statement parsed once costs nothing then.
    conn.prepare_cached(
        "CREATE TEMP TABLE IF NOT EXISTS list_pass (
             id INTEGER PRIMARY KEY, asset_id INTEGER NOT NULL UNIQUE, seen INTEGER NOT NULL DEFAULT 0)",
    )?
    .execute([])?;
    Ok(())
}

/// Begins a pass over the asset list: every registered asset of the scope due by now (other
/// than those in `busy`) is looked for in it, however many. Returns how many.
pub fn begin_list_pass(conn: &Connection, scope: &Scope, busy: &[i64]) -> rusqlite::Result<u64> {
    pass_table(conn)?;
    conn.execute("DELETE FROM temp.list_pass", [])?;
    let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".into());
    let n = conn
        .prepare_cached(
            formatcp!("INSERT OR IGNORE INTO temp.list_pass (id, asset_id)
             SELECT id, asset_id FROM keys
             WHERE scope = ?1 AND state = {REGISTERED} AND next_check_at <= ?2 AND asset_id IS NOT NULL
               AND id NOT IN (SELECT value FROM json_each(?3))"),
        )?
        .execute(params![scope.id, now_ms(), busy])?;
    Ok(n as u64)
}

fn due_rows(
    conn: &Connection,
    filter: &str,
    param: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Vec<DueCheck>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT k.id, k.key, k.asset_id, k.checks, k.size, COALESCE(k.registered_at, k.updated_at),
                CASE WHEN k.checks > 0 THEN k.updated_at END
         FROM temp.list_pass p JOIN keys k ON k.id = p.id
         WHERE p.seen = 0 AND k.state = {REGISTERED} AND k.asset_id = p.asset_id AND {filter}"
    ))?;
    let rows = stmt.query_map([param], |r| {
        Ok(DueCheck {
            id: r.get(0)?,
            key: r.get(1)?,
            asset_id: r.get(2)?,
            checks: r.get(3)?,
            size: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
            registered_at: r.get(5)?,
            last_look: r.get(6)?,
        })
    })?;
    let rows: Vec<DueCheck> = rows.collect::<rusqlite::Result<_>>()?;
    let mut seen = conn.prepare_cached("UPDATE temp.list_pass SET seen = 1 WHERE id = ?1")?;
    for row in &rows {
        seen.execute([row.id])?;
    }
    Ok(rows)
}

/// The pass's rows whose assets are among `asset_ids` (a page of the list), marked seen.
pub fn seen_in_pass(conn: &Connection, asset_ids: &[i64]) -> rusqlite::Result<Vec<DueCheck>> {
    let ids = serde_json::to_string(asset_ids).unwrap_or_else(|_| "[]".into());
    due_rows(
        conn,
        "p.asset_id IN (SELECT value FROM json_each(?1))",
        &ids,
    )
}

/// Up to `limit` of the pass's rows not seen yet, marked seen: what the list did not show.
pub fn unseen_in_pass(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<DueCheck>> {
    due_rows(conn, "1 LIMIT ?1", &(limit as i64))
}

/// Ends the pass: its rows may be claimed again (once their results are written).
pub fn end_list_pass(conn: &Connection) -> rusqlite::Result<()> {
    pass_table(conn)?;
    conn.execute("DELETE FROM temp.list_pass", [])?;
    Ok(())
}

/// Import-status checks the scope's settled keys (completed or import_failed) took, and how
/// many keys that is.
pub fn checks_of_settled(conn: &Connection, scope: &Scope) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(
        formatcp!(
            "SELECT COALESCE(SUM(checks), 0), COUNT(*) FROM keys
             WHERE scope = ?1 AND state IN ({COMPLETED}, {IMPORT_FAILED})"
        ),
        [scope.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    fn registered_ledger(n: usize) -> (Ledger, Scope) {
        let (l, scope) = crate::ledger::tests::registered_ledger(n);
        // Make them due now.
        l.conn()
            .execute("UPDATE keys SET next_check_at = 0", [])
            .unwrap();
        (l, scope)
    }

    #[test]
    fn checks_out_are_not_handed_out_again() {
        let (l, scope) = registered_ledger(3);
        let first = claim_due(l.conn(), &scope, 2, &[]).unwrap();
        assert_eq!(first.len(), 2);
        let busy: Vec<i64> = first.iter().map(|d| d.id).collect();
        assert_eq!(claim_due(l.conn(), &scope, 10, &busy).unwrap().len(), 1);
        assert_eq!(
            claim_due(l.conn(), &scope, 10, &[]).unwrap().len(),
            3,
            "nothing is leased on disk: a killed run's checks are due at once"
        );
        assert_eq!(awaiting(l.conn(), &scope).unwrap().0, 3);
    }

    #[test]
    fn final_status_settles_and_in_progress_waits() {
        let (l, scope) = registered_ledger(2);
        let due = claim_due(l.conn(), &scope, 10, &[]).unwrap();
        let later = now_ms() + 5_000;
        let results = [
            CheckResult {
                id: due[0].id,
                looked: true,
                asset_id: due[0].asset_id,
                state: Some(State::ImportFailed),
                upload_status: Some("INVALID_METADATA".into()),
                upload_result: Some("unsupported resolution".into()),
                next_check_at: None,
            },
            CheckResult {
                id: due[1].id,
                looked: true,
                asset_id: due[1].asset_id,
                state: None,
                upload_status: Some("IN_PROGRESS".into()),
                upload_result: None,
                next_check_at: Some(later),
            },
        ];
        assert_eq!(record_checks(l.conn(), &results, 1, false).unwrap(), 2);
        let (waiting, soonest) = awaiting(l.conn(), &scope).unwrap();
        assert_eq!((waiting, soonest), (1, Some(later)));
        let (state, status, checks): (State, String, u32) = l
            .conn()
            .query_row(
                "SELECT state, upload_status, checks FROM keys WHERE id = ?1",
                [due[0].id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (state, status.as_str(), checks),
            (State::ImportFailed, "INVALID_METADATA", 1)
        );
        assert!(
            claim_due(l.conn(), &scope, 10, &[]).unwrap().is_empty(),
            "the waiting one is not due yet"
        );
    }

    #[test]
    fn a_result_about_an_asset_the_key_no_longer_has_changes_nothing() {
        let (l, scope) = registered_ledger(1);
        let due = claim_due(l.conn(), &scope, 1, &[]).unwrap();
        // The object changed and the key was registered again with a new asset.
        l.conn()
            .execute("UPDATE keys SET asset_id = 9999", [])
            .unwrap();
        let stale = CheckResult {
            id: due[0].id,
            looked: true,
            asset_id: due[0].asset_id,
            state: Some(State::Completed),
            upload_status: Some("COMPLETED".into()),
            upload_result: None,
            next_check_at: None,
        };
        assert_eq!(record_checks(l.conn(), &[stale], 1, false).unwrap(), 0);
        let state: State = l
            .conn()
            .query_row("SELECT state FROM keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(state, State::Registered);
    }
}
