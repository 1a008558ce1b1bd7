//! The `facts` table: what the ledger learned about one scope's MI project, to carry from one
//! run to the next (how its asset list names, orders and lags, how long its imports and
//! analyses take, the rate it was last seen to keep). Each fact is a short text; the module
//! that learns it owns its format.

use rusqlite::{Connection, OptionalExtension, params};

use super::Scope;
use crate::clock::now_ms;

/// The facts the ledger keeps, by the name stored in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// The requests per second MI was last seen to keep as a limit (`runner`).
    RateLimit,
    /// What the asset list's `fileName` holds: a `reconcile::Naming` (`runner::lookup`).
    ListNaming,
    /// What orders the list's assets in time: `times` (entries carry a creation time), `ids`
    /// (IDs grow with creation), or `none` (`runner::lookup`).
    ListOrder,
    /// How long (ms) the list takes to show a new asset (`runner::lookup`).
    ListLagMs,
    /// Whether list entries carry the import's status, `yes` or `no` (`runner::confirm`,
    /// `app::check`).
    ListUploadStatus,
    /// What this project's imports take, by size (`runner::schedule`'s bins).
    ImportTimes,
    /// What its analyses take, likewise.
    AnalysisTimes,
    /// Whether MI's asset details name the object key an asset was made from, `yes` or
    /// `no`, as the ledger's own assets showed (`runner::lookup`).
    DetailsNameKey,
}

impl Fact {
    pub fn name(self) -> &'static str {
        match self {
            Fact::RateLimit => "rate_limit",
            Fact::ListNaming => "list_naming",
            Fact::ListOrder => "list_order",
            Fact::ListLagMs => "list_lag_ms",
            Fact::ListUploadStatus => "list_upload_status",
            Fact::ImportTimes => "import_times",
            Fact::AnalysisTimes => "analysis_times",
            Fact::DetailsNameKey => "details_name_key",
        }
    }
}

/// What the ledger knows of `fact` for the scope's MI project, if anything.
pub fn get(conn: &Connection, scope: &Scope, fact: Fact) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM facts WHERE scope = ?1 AND name = ?2")?
        .query_row(params![scope.id, fact.name()], |r| r.get(0))
        .optional()
}

/// Remembers `fact` about the scope's MI project.
pub fn set(conn: &Connection, scope: &Scope, fact: Fact, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO facts (scope, name, value, at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value, at = excluded.at",
    )?
    .execute(params![scope.id, fact.name(), value, now_ms()])?;
    Ok(())
}

/// Forgets a fact that no longer holds.
pub fn forget(conn: &Connection, scope: &Scope, fact: Fact) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM facts WHERE scope = ?1 AND name = ?2")?
        .execute(params![scope.id, fact.name()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fact_is_kept_per_scope_replaced_and_forgotten() {
        let ledger = crate::ledger::Ledger::open_in_memory().unwrap();
        let conn = ledger.conn();
        let a = Scope::open(conn, "http://mi.test", "w", "1").unwrap();
        let b = Scope::open(conn, "http://mi.test", "w", "2").unwrap();
        set(conn, &a, Fact::ListNaming, "full-key").unwrap();
        set(conn, &a, Fact::ListNaming, "last-segment").unwrap();
        assert_eq!(
            get(conn, &a, Fact::ListNaming).unwrap().as_deref(),
            Some("last-segment")
        );
        assert_eq!(
            get(conn, &b, Fact::ListNaming).unwrap(),
            None,
            "another scope's"
        );
        forget(conn, &a, Fact::ListNaming).unwrap();
        assert_eq!(get(conn, &a, Fact::ListNaming).unwrap(), None);
    }
}
