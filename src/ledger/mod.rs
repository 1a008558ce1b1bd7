//! The ledger: one SQLite row per (workspace, project, bucket, key), the truth about every key.
//!
//! This module owns the schema (applied from `migrations/` at open, tracked by
//! `PRAGMA user_version`, append-only), the state vocabulary, and every statement that reads
//! or changes a row. It does no networking. During a run a single writer thread owns the
//! connection (see [`writer`]); `status` and `report` read it directly.
//!
//! # Durability
//!
//! - WAL mode, so readers (`status`, `report`) never block the writer.
//! - `synchronous = FULL`: every commit is fsynced before it returns. The pre-send journal
//!   (a key is `in_flight` on disk before its request leaves) must survive a power loss, not
//!   only a process kill, or a resend after reboot could register a key twice. The writer
//!   groups many keys into one transaction, so fsyncs stay at tens per second.
//! - A process kill (SIGKILL, OOM) loses nothing committed; rows left `in_flight` become
//!   `uncertain` at the next open and are reconciled with MI before they are sent again.
//! - The file is created readable by its owner only: it names every key of the user's bucket.

pub mod checks;
pub mod listings;
pub mod writer;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The schema, in order. Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_keys_and_runs.sql"),
    include_str!("../../migrations/0002_confirmation.sql"),
    include_str!("../../migrations/0003_listings.sql"),
    include_str!("../../migrations/0004_manifests.sql"),
    include_str!("../../migrations/0005_due_checks.sql"),
];

/// The first import-status check of a new asset waits this long: MI needs a moment.
pub const FIRST_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// SQLite's own clock, in UTC with milliseconds, so every time in the ledger reads the same.
pub const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ','now')";

/// The ledger's vocabulary (DESIGN.md, "Key states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Pending,
    InFlight,
    Uncertain,
    Registered,
    Completed,
    ImportFailed,
    Failed,
    Skipped,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Pending,
        State::InFlight,
        State::Uncertain,
        State::Registered,
        State::Completed,
        State::ImportFailed,
        State::Failed,
        State::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::InFlight => "in_flight",
            State::Uncertain => "uncertain",
            State::Registered => "registered",
            State::Completed => "completed",
            State::ImportFailed => "import_failed",
            State::Failed => "failed",
            State::Skipped => "skipped",
        }
    }

    /// A run with keys in this state exits 1 rather than 0.
    pub fn is_trouble(self) -> bool {
        matches!(self, State::Failed | State::ImportFailed | State::Uncertain)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = State::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state `{s}` (one of: {})", names.join(", "))
            })
    }
}

/// The project a set of rows belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub workspace: String,
    pub project: String,
}

/// A key as a source found it, with eligibility's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub bucket: String,
    pub key: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Why it will never be sent, if eligibility refused it.
    pub skip_reason: Option<String>,
}

impl NewKey {
    /// A key about which nothing else is known yet (no size, ETag or verdict).
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
            size: None,
            etag: None,
            last_modified: None,
            skip_reason: None,
        }
    }
}

/// A key taken for sending: durably `in_flight` by the time the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub bucket: String,
    pub key: String,
}

/// What became of a claimed key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub id: i64,
    pub state: Option<State>,
    pub attempts: u32,
    pub asset_id: Option<i64>,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub trace_id: Option<String>,
}

/// Counts of one ingest pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    pub new: u64,
    pub new_skipped: u64,
    pub known: u64,
}

impl Ingested {
    /// Keys the ledger did not know before, eligible or not.
    pub fn added(&self) -> u64 {
        self.new + self.new_skipped
    }

    /// Every row offered, known ones and repeats included.
    pub fn rows(&self) -> u64 {
        self.added() + self.known
    }
}

impl std::ops::AddAssign for Ingested {
    fn add_assign(&mut self, other: Self) {
        self.new += other.new;
        self.new_skipped += other.new_skipped;
        self.known += other.known;
    }
}

/// An open ledger file.
pub struct Ledger {
    conn: Connection,
}

impl Ledger {
    /// Opens (creating, owner-only) and migrates the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        create_private(path)?;
        let conn = Connection::open(path)
            .with_context(|| format!("opening the ledger {}", path.display()))?;
        Self::setup(conn).with_context(|| format!("preparing the ledger {}", path.display()))
    }

    /// An in-memory ledger, for unit tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        enter_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self { conn })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the ledger {}", path.display()))?;
    Ok(())
}

#[cfg(not(unix))]
fn create_private(_path: &Path) -> Result<()> {
    Ok(())
}

/// How long a connection waits for another process's lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Switches the file to WAL. SQLite does not call the busy handler for this switch, so two
/// processes opening a fresh ledger at once (a run and a `status`, or two overlapping cron
/// runs before the lock file is taken) would see "database is locked"; wait here instead.
fn enter_wal(conn: &Connection) -> Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

/// Applies the migrations the file lacks, all in one exclusive transaction.
/// A ledger already current is only read, so `status` beside a running job writes nothing.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current == MIGRATIONS.len() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "the ledger's schema version {version} is newer than this mi-import knows ({})\n\
             hint: use a newer mi-import with this ledger",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

// ---- statements: each takes a connection or transaction, so the writer and tests share them

/// Records keys a source found; keys already known are left as they are.
pub fn insert_keys(
    conn: &Connection,
    scope: &Scope,
    keys: &[NewKey],
) -> rusqlite::Result<Ingested> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO keys (workspace, project, bucket, key, state, size, etag, last_modified,
                           message, first_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, {NOW}, {NOW})
         ON CONFLICT (workspace, project, bucket, key) DO NOTHING"
    ))?;
    let mut counts = Ingested::default();
    for k in keys {
        let state = if k.skip_reason.is_some() {
            State::Skipped
        } else {
            State::Pending
        };
        let size = k.size.map(|s| s as i64);
        let added = stmt.execute(params![
            scope.workspace,
            scope.project,
            k.bucket,
            k.key,
            state.as_str(),
            size,
            k.etag,
            k.last_modified,
            k.skip_reason
        ])?;
        match (added, state) {
            (0, _) => counts.known += 1,
            (_, State::Skipped) => counts.new_skipped += 1,
            _ => counts.new += 1,
        }
    }
    Ok(counts)
}

/// Takes up to `limit` pending keys, oldest first, and marks them `in_flight`.
pub fn claim(conn: &Connection, scope: &Scope, limit: usize) -> rusqlite::Result<Vec<Claimed>> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE keys SET state = 'in_flight', updated_at = {NOW}
         WHERE id IN (SELECT id FROM keys
                      WHERE workspace = ?1 AND project = ?2 AND state = 'pending'
                      ORDER BY id LIMIT ?3)
         RETURNING id, bucket, key"
    ))?;
    let rows = stmt.query_map(params![scope.workspace, scope.project, limit as i64], |r| {
        Ok(Claimed {
            id: r.get(0)?,
            bucket: r.get(1)?,
            key: r.get(2)?,
        })
    })?;
    let mut claimed: Vec<Claimed> = rows.collect::<rusqlite::Result<_>>()?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Writes what became of claimed keys. Only `in_flight` rows change, so a late answer can never
/// overwrite a row something else already settled. Returns how many rows changed.
pub fn record(conn: &Connection, outcomes: &[Outcome]) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE keys SET state = ?2, attempts = attempts + ?3,
             asset_id = COALESCE(?4, asset_id), http_status = ?5, error_code = ?6,
             message = ?7, trace_id = COALESCE(?8, trace_id), updated_at = {NOW},
             registered_at = CASE WHEN ?2 = 'registered' THEN {NOW} ELSE registered_at END,
             next_check_at = CASE WHEN ?2 = 'registered' THEN ?9 ELSE next_check_at END
         WHERE id = ?1 AND state = 'in_flight'"
    ))?;
    let first_check = checks::now_ms() + FIRST_CHECK.as_millis() as i64;
    let mut changed = 0;
    for o in outcomes {
        let state = o.state.unwrap_or(State::Pending);
        changed += stmt.execute(params![
            o.id,
            state.as_str(),
            o.attempts,
            o.asset_id,
            o.http_status,
            o.error_code,
            o.message,
            o.trace_id,
            first_check
        ])?;
    }
    Ok(changed)
}

/// Rows a dead run left `in_flight`: their requests may have reached MI.
pub fn mark_in_flight_uncertain(conn: &Connection, scope: &Scope) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE keys SET state = 'uncertain', updated_at = {NOW},
                 message = 'a run stopped while this key was being sent'
             WHERE workspace = ?1 AND project = ?2 AND state = 'in_flight'"
        ),
        params![scope.workspace, scope.project],
    )
}

/// Sends `failed` keys again on this run (`--retry-failed`).
pub fn requeue_failed(conn: &Connection, scope: &Scope) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE keys SET state = 'pending', updated_at = {NOW}
             WHERE workspace = ?1 AND project = ?2 AND state = 'failed'"
        ),
        params![scope.workspace, scope.project],
    )
}

/// Why keys were skipped, with how many, most common first.
pub fn skip_reasons(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(message, 'no reason recorded'), COUNT(*) FROM keys
         WHERE workspace = ?1 AND project = ?2 AND state = 'skipped'
         GROUP BY 1 ORDER BY 2 DESC, 1",
    )?;
    let rows = stmt.query_map(params![scope.workspace, scope.project], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// The buckets of keys about to be sent (pending or uncertain), for preflight.
pub fn buckets_to_send(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        // One index seek per distinct bucket, then a probe of the state index for each: a
        // plain DISTINCT reads every row of the project.
        "WITH RECURSIVE b(bucket) AS (
             SELECT MIN(bucket) FROM keys WHERE workspace = ?1 AND project = ?2
             UNION ALL
             SELECT (SELECT MIN(bucket) FROM keys
                     WHERE workspace = ?1 AND project = ?2 AND bucket > b.bucket)
             FROM b WHERE b.bucket IS NOT NULL)
         SELECT bucket FROM b
         WHERE bucket IS NOT NULL AND EXISTS (
             SELECT 1 FROM keys INDEXED BY keys_by_state
             WHERE workspace = ?1 AND project = ?2 AND state IN ('pending', 'uncertain')
               AND keys.bucket = b.bucket)",
    )?;
    let rows = stmt.query_map(params![scope.workspace, scope.project], |r| r.get(0))?;
    rows.collect()
}

/// The keys whose registration is unknown, for reconciliation.
pub fn uncertain_keys(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<Claimed>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, bucket, key FROM keys
         WHERE workspace = ?1 AND project = ?2 AND state = 'uncertain' ORDER BY id",
    )?;
    let rows = stmt.query_map(params![scope.workspace, scope.project], |r| {
        Ok(Claimed {
            id: r.get(0)?,
            bucket: r.get(1)?,
            key: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Asset IDs the ledger already holds for this project (reconciliation must not give an asset
/// that belongs to one key to another).
pub fn known_asset_ids(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT asset_id FROM keys
         WHERE workspace = ?1 AND project = ?2 AND asset_id IS NOT NULL
         UNION ALL
         SELECT previous_asset_id FROM keys
         WHERE workspace = ?1 AND project = ?2 AND previous_asset_id IS NOT NULL",
    )?;
    let rows = stmt.query_map(params![scope.workspace, scope.project], |r| r.get(0))?;
    rows.collect()
}

/// Settles uncertain keys: a found asset makes the key `registered`; the rest go back to
/// `pending`, since MI has no asset for them.
pub fn resolve_uncertain(
    conn: &Connection,
    found: &[(i64, i64)],
    not_found: &[i64],
) -> rusqlite::Result<()> {
    let mut matched = conn.prepare_cached(&format!(
        "UPDATE keys SET state = 'registered', asset_id = ?2, registered_at = {NOW},
             updated_at = {NOW}, message = 'found in the project''s asset list', next_check_at = 0
         WHERE id = ?1 AND state = 'uncertain'"
    ))?;
    for (id, asset_id) in found {
        matched.execute(params![id, asset_id])?;
    }
    let mut unmatched = conn.prepare_cached(&format!(
        "UPDATE keys SET state = 'pending', updated_at = {NOW},
             message = 'not in the project''s asset list; will be sent again'
         WHERE id = ?1 AND state = 'uncertain'"
    ))?;
    for id in not_found {
        unmatched.execute(params![id])?;
    }
    Ok(())
}

/// How many keys of `scope` are in each state (every state listed, zeros included).
pub fn counts(conn: &Connection, scope: Option<&Scope>) -> rusqlite::Result<Vec<(State, u64)>> {
    // Two statements, so the scoped one can seek the state index instead of scanning it.
    let found: Vec<(String, i64)> = match scope {
        Some(s) => conn
            .prepare_cached("SELECT state, COUNT(*) FROM keys WHERE workspace = ?1 AND project = ?2 GROUP BY state")?
            .query_map(params![s.workspace, s.project], state_count)?
            .collect::<rusqlite::Result<_>>()?,
        None => conn
            .prepare_cached("SELECT state, COUNT(*) FROM keys GROUP BY state")?
            .query_map([], state_count)?
            .collect::<rusqlite::Result<_>>()?,
    };
    let found: std::collections::HashMap<State, u64> = found
        .into_iter()
        .filter_map(|(state, n)| state.parse::<State>().ok().map(|st| (st, n as u64)))
        .collect();
    Ok(State::ALL
        .iter()
        .map(|s| (*s, found.get(s).copied().unwrap_or(0)))
        .collect())
}

/// The count for `state` in what [`counts`] returned.
pub fn count_in(counts: &[(State, u64)], state: State) -> u64 {
    counts
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, n)| *n)
        .unwrap_or(0)
}

fn state_count(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64)> {
    Ok((r.get(0)?, r.get(1)?))
}

/// When a manifest with this fingerprint was read in full into `scope`, and its row count.
pub fn manifest_read(
    conn: &Connection,
    scope: &Scope,
    fingerprint: &str,
) -> rusqlite::Result<Option<(String, u64)>> {
    conn.query_row(
        "SELECT read_at, rows FROM manifests WHERE workspace = ?1 AND project = ?2 AND fingerprint = ?3",
        params![scope.workspace, scope.project, fingerprint],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
    )
    .optional()
}

/// Notes that a manifest was read in full into `scope`.
pub fn remember_manifest(
    conn: &Connection,
    scope: &Scope,
    fingerprint: &str,
    rows: u64,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO manifests (workspace, project, fingerprint, rows, read_at)
             VALUES (?1, ?2, ?3, ?4, {NOW})"
        ),
        params![scope.workspace, scope.project, fingerprint, rows as i64],
    )?;
    Ok(())
}

/// Starts a row in `runs`; returns its id.
pub fn start_run(conn: &Connection, command: &str, scope: Option<&Scope>) -> rusqlite::Result<i64> {
    conn.execute(
        &format!(
            "INSERT INTO runs (command, workspace, project, pid, host, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, {NOW})"
        ),
        params![
            command,
            scope.map(|s| &s.workspace),
            scope.map(|s| &s.project),
            std::process::id(),
            crate::lock::host_name()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Closes a run's row with its exit code and a JSON summary.
pub fn finish_run(
    conn: &Connection,
    run_id: i64,
    exit_code: i32,
    summary: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!("UPDATE runs SET finished_at = {NOW}, exit_code = ?2, summary = ?3 WHERE id = ?1"),
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

#[cfg(test)]
mod tests;
