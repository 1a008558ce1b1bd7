//! The `scopes` and `buckets` tables: which (endpoint, workspace, project) a row belongs to,
//! and the numbers bucket names are stored under; and forgetting a scope whole.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::fmt;

use crate::clock::now_ms;

/// The project a set of rows belongs to: an (endpoint, workspace, project) triple and its
/// number in the ledger. The endpoint is part of the name because nothing says MI's asset IDs
/// are unique across projects or endpoints: what one scope owns rules nothing out in another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub id: i64,
    /// MI's endpoint; empty for a scope recorded before endpoints were kept, until a run
    /// adopts it.
    pub endpoint: String,
    pub workspace: String,
    pub project: String,
}

impl Scope {
    /// The scope of (endpoint, workspace, project), created if the ledger has none yet. A
    /// scope recorded before endpoints were kept is adopted by the first endpoint that uses it.
    pub fn open(
        conn: &Connection,
        endpoint: &str,
        workspace: &str,
        project: &str,
    ) -> rusqlite::Result<Scope> {
        if let Some(scope) = Self::find(conn, endpoint, workspace, project)? {
            return Ok(scope);
        }
        let adopted = conn.execute(
            "UPDATE scopes SET endpoint = ?1 WHERE endpoint IS NULL AND workspace = ?2 AND project = ?3",
            params![endpoint, workspace, project],
        )?;
        if adopted == 0 {
            conn.execute(
                "INSERT INTO scopes (endpoint, workspace, project) VALUES (?1, ?2, ?3)",
                params![endpoint, workspace, project],
            )?;
        }
        Ok(Self::find(conn, endpoint, workspace, project)?.expect("just written"))
    }

    /// The scope of (endpoint, workspace, project), if the ledger has one.
    pub fn find(
        conn: &Connection,
        endpoint: &str,
        workspace: &str,
        project: &str,
    ) -> rusqlite::Result<Option<Scope>> {
        conn.query_row(
            "SELECT id FROM scopes WHERE endpoint = ?1 AND workspace = ?2 AND project = ?3",
            params![endpoint, workspace, project],
            |r| r.get(0),
        )
        .optional()
        .map(|id| {
            id.map(|id| Scope {
                id,
                endpoint: endpoint.to_owned(),
                workspace: workspace.to_owned(),
                project: project.to_owned(),
            })
        })
    }

    /// The scopes of (workspace, project), whatever their endpoint: what a command that names
    /// only those (`resolve`, `forget`) may mean.
    pub fn named(
        conn: &Connection,
        workspace: &str,
        project: &str,
    ) -> rusqlite::Result<Vec<Scope>> {
        Ok(Self::all(conn)?
            .into_iter()
            .filter(|s| s.workspace == workspace && s.project == project)
            .collect())
    }

    /// Every scope the ledger holds, in the order they were first used.
    pub fn all(conn: &Connection) -> rusqlite::Result<Vec<Scope>> {
        let mut stmt = conn.prepare(
            "SELECT id, COALESCE(endpoint, ''), workspace, project FROM scopes ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Scope {
                id: r.get(0)?,
                endpoint: r.get(1)?,
                workspace: r.get(2)?,
                project: r.get(3)?,
            })
        })?;
        rows.collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workspace {}, project {}", self.workspace, self.project)?;
        if !self.endpoint.is_empty() && self.endpoint != crate::config::DEFAULT_ENDPOINT {
            write!(f, " at {}", self.endpoint)?;
        }
        Ok(())
    }
}

/// The number of bucket `name`, created if new.
pub fn bucket_id(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    let mut find = conn.prepare_cached("SELECT id FROM buckets WHERE name = ?1")?;
    if let Some(id) = find.query_row([name], |r| r.get(0)).optional()? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO buckets (name) VALUES (?1)")?
        .execute([name])?;
    Ok(conn.last_insert_rowid())
}

/// Every bucket's name by its number (a handful of rows).
pub fn bucket_names(conn: &Connection) -> rusqlite::Result<HashMap<i64, String>> {
    let mut stmt = conn.prepare_cached("SELECT id, name FROM buckets")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Bucket numbers for names, created as needed, asked once per name.
#[derive(Default)]
pub(crate) struct BucketIds(HashMap<String, i64>);

impl BucketIds {
    pub fn get(&mut self, conn: &Connection, name: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.0.get(name) {
            return Ok(*id);
        }
        let id = bucket_id(conn, name)?;
        self.0.insert(name.to_owned(), id);
        Ok(id)
    }
}

/// Removes a scope that holds nothing (no key, listing or manifest): what a refused run
/// created for a mistyped workspace or project.
pub fn forget_scope_if_empty(conn: &Connection, scope: &Scope) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM scopes WHERE id = ?1
           AND NOT EXISTS (SELECT 1 FROM keys WHERE scope = ?1)
           AND NOT EXISTS (SELECT 1 FROM listings WHERE scope = ?1)
           AND NOT EXISTS (SELECT 1 FROM manifests WHERE scope = ?1)",
        params![scope.id],
    )?;
    Ok(())
}

/// Removes every row of a scope from the ledger, on purpose (`mi-import forget`); the
/// removal is recorded in `events`. Returns how many keys it held.
pub fn forget_scope(conn: &Connection, scope: &Scope) -> rusqlite::Result<u64> {
    for table in ["asset_history", "analyses"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE key_id IN (SELECT id FROM keys WHERE scope = ?1)"),
            params![scope.id],
        )?;
    }
    let keys = conn.execute("DELETE FROM keys WHERE scope = ?1", params![scope.id])?;
    conn.execute(
        "DELETE FROM listing_parts WHERE listing IN (SELECT id FROM listings WHERE scope = ?1)",
        params![scope.id],
    )?;
    for table in [
        "listings",
        "manifests",
        "facts",
        "asset_details",
        "list_passes",
        "seen_assets",
    ] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE scope = ?1"),
            params![scope.id],
        )?;
    }
    conn.execute("DELETE FROM scopes WHERE id = ?1", params![scope.id])?;
    conn.execute(
        "INSERT INTO events (at, scope, action, detail) VALUES (?1, NULL, 'forget', ?2)",
        params![
            now_ms(),
            serde_json::json!({"endpoint": scope.endpoint, "workspace": scope.workspace, "project": scope.project, "keys": keys})
                .to_string()
        ],
    )?;
    Ok(keys as u64)
}
