//! Statements for the record of runs (for `status`, the lock's message, a killed run's
//! heartbeat) and of manifests already read (so a re-run reads only what was appended).

use rusqlite::{Connection, OptionalExtension, params};
use std::time::Duration;

use super::Scope;
use crate::clock::now_ms;

/// SQLite's own clock as text, for the runs table that people read.
const NOW_TEXT: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// Starts a row in `runs`; returns its id. `timeout` is the run's request timeout: a request
/// it sent is given up no later than that after its last heartbeat; `heartbeat` its floor: no
/// request of it leaves longer than that after a commit.
pub fn start_run(
    conn: &Connection,
    command: &str,
    scope: Option<&Scope>,
    timeout: Duration,
    heartbeat: Duration,
) -> rusqlite::Result<i64> {
    conn.execute(
        &format!(
            "INSERT INTO runs (command, workspace, project, pid, host, started_at, alive_at, timeout_ms,
                               heartbeat_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, {NOW_TEXT}, ?6, ?7, ?8)"
        ),
        params![
            command,
            scope.map(|s| &s.workspace),
            scope.map(|s| &s.project),
            std::process::id(),
            crate::lock::host_name(),
            now_ms(),
            timeout.as_millis() as i64,
            heartbeat.as_millis() as i64
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Notes that `run` is alive and committing as of `at` (the writer does this with every
/// commit).
pub fn heartbeat(conn: &Connection, run: i64, at: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE runs SET alive_at = ?2 WHERE id = ?1")?
        .execute(params![run, at])?;
    Ok(())
}

/// Closes a run's row with its exit code and a JSON summary.
pub fn finish_run(
    conn: &Connection,
    run_id: i64,
    exit_code: i32,
    summary: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE runs SET finished_at = {NOW_TEXT}, exit_code = ?2, summary = ?3 WHERE id = ?1"
        ),
        params![run_id, exit_code, summary],
    )?;
    Ok(())
}

/// The most recent run, if any: (command, started, finished, exit code, summary).
pub type RunRow = (String, String, Option<String>, Option<i32>, Option<String>);

pub fn last_run(conn: &Connection) -> rusqlite::Result<Option<RunRow>> {
    conn.query_row(
        "SELECT command, started_at, finished_at, exit_code, summary FROM runs ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .optional()
}

/// The latest `run` command's number, if any.
pub fn last_run_id(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT id FROM runs WHERE command = 'run' ORDER BY id DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Whether the ledger records run `id`.
pub fn run_exists(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    conn.query_row("SELECT COUNT(*) FROM runs WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n > 0)
}

/// A run's JSON summary, if it finished, and when it started (as `runs` keeps it).
pub fn summary_of(conn: &Connection, id: i64) -> rusqlite::Result<(Option<String>, String)> {
    conn.query_row(
        "SELECT summary, started_at FROM runs WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// How much of a manifest was read into a scope before: its leading `bytes` (ending at a
/// record's end), their SHA-256, the lines they held and the data rows among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRead {
    pub bytes: u64,
    pub hash: String,
    pub lines: u64,
    pub rows: u64,
    pub read_at: i64,
    /// The digests of its chunks of rows ([`crate::source::chunks`]).
    pub chunks: Vec<u8>,
}

/// What is remembered of the manifest at `path` read with `settings` into `scope`.
pub fn manifest_read(
    conn: &Connection,
    scope: &Scope,
    path: &str,
    settings: &str,
) -> rusqlite::Result<Option<ManifestRead>> {
    conn.query_row(
        "SELECT bytes, hash, lines, rows, read_at, chunks FROM manifests
         WHERE scope = ?1 AND path = ?2 AND settings = ?3",
        params![scope.id, path, settings],
        |r| {
            Ok(ManifestRead {
                bytes: r.get::<_, i64>(0)? as u64,
                hash: r.get(1)?,
                lines: r.get::<_, i64>(2)? as u64,
                rows: r.get::<_, i64>(3)? as u64,
                read_at: r.get(4)?,
                chunks: r.get(5)?,
            })
        },
    )
    .optional()
}

/// Remembers how far the manifest at `path` was read.
pub fn remember_manifest(
    conn: &Connection,
    scope: &Scope,
    path: &str,
    settings: &str,
    read: &ManifestRead,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO manifests
           (scope, path, settings, bytes, hash, lines, rows, read_at, chunks)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            scope.id,
            path,
            settings,
            read.bytes as i64,
            read.hash,
            read.lines as i64,
            read.rows as i64,
            read.read_at,
            read.chunks
        ],
    )?;
    Ok(())
}
