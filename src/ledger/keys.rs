//! The `keys` table: one row per (scope, bucket, key), and every statement that reads or
//! changes one: what a source found, the claim before a send, the outcome after it, the
//! recovery of a dead run's keys, and the counts `status` and the summary show.

use const_format::formatcp;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::time::Duration;

use super::scopes::{BucketIds, bucket_names};
use super::state::sql::*;
use super::{Scope, State};
use crate::clock::now_ms;

/// A key as a source found it, with eligibility's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub bucket: String,
    pub key: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    /// Last modified, Unix ms.
    pub modified: Option<i64>,
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
            modified: None,
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
    /// When it was claimed: the `sent_at` its row now holds (no request left before).
    pub sent_at: i64,
}

/// What became of a claimed key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub id: i64,
    /// `None` puts the key back to `pending` (never sent, or to be retried by the next run).
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
    /// Known keys whose object changed (size or ETag) since the ledger last saw it.
    pub changed: u64,
    /// Of those, keys queued to be sent (again): a skipped key now eligible, an import that
    /// failed, or any registered one with `--on-changed reimport`.
    pub requeued: u64,
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
        self.changed += other.changed;
        self.requeued += other.requeued;
    }
}

/// What to do with an object that changed since it was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnChanged {
    /// Note it in the ledger and the report; leave the asset as it is.
    Report,
    /// Register it again (a new asset; the old one stays in MI).
    Reimport,
}

// ---- statements: each takes a connection or transaction, so the writer and tests share them

/// Records keys a source found. Keys already known stay as they are, unless their object
/// changed (see [`note_change`]).
pub fn insert_keys(
    conn: &Connection,
    scope: &Scope,
    keys: &[NewKey],
    on_changed: OnChanged,
) -> rusqlite::Result<Ingested> {
    insert_keys_after(conn, scope, keys, on_changed, i64::MAX)
}

/// [`insert_keys`] for a source whose own rows are those above row `rows_before`: a key
/// among them seen again is a duplicate row of the source, not a change of its object, and
/// never queues a key that was sent to be sent again.
pub fn insert_keys_after(
    conn: &Connection,
    scope: &Scope,
    keys: &[NewKey],
    on_changed: OnChanged,
    rows_before: i64,
) -> rusqlite::Result<Ingested> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO keys (scope, bucket, key, state, size, etag, modified, message,
                           first_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
         ON CONFLICT (scope, bucket, key) DO NOTHING",
    )?;
    let now = now_ms();
    let mut buckets = BucketIds::default();
    let mut counts = Ingested::default();
    for k in keys {
        let state = if k.skip_reason.is_some() {
            State::Skipped
        } else {
            State::Pending
        };
        let bucket = buckets.get(conn, &k.bucket)?;
        let added = insert.execute(params![
            scope.id,
            bucket,
            k.key,
            state.code(),
            k.size.map(|s| s as i64),
            k.etag,
            k.modified,
            k.skip_reason,
            now
        ])?;
        match (added, state) {
            (0, _) => {
                counts.known += 1;
                if k.size.is_some() || k.etag.is_some() {
                    match note_change(conn, scope, bucket, k, on_changed, now, rows_before)? {
                        Change::None => {}
                        Change::Noted => counts.changed += 1,
                        Change::Requeued => {
                            counts.changed += 1;
                            counts.requeued += 1;
                        }
                    }
                }
            }
            (_, State::Skipped) => counts.new_skipped += 1,
            _ => counts.new += 1,
        }
    }
    Ok(counts)
}

/// What a known key's object having changed did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Noted,
    Requeued,
}

/// A known key seen again with a size or ETag different from what the ledger holds:
/// - `skipped`: judged again (an empty placeholder filled, an oversized file replaced), and
///   queued if now eligible;
/// - `import_failed`: queued to be registered again (the file was fixed);
/// - `registered`/`completed`: noted, or queued again with `--on-changed reimport`.
///
/// An asset given up this way is kept in `asset_history`, so it is never mistaken for the
/// new registration.
pub fn note_change(
    conn: &Connection,
    scope: &Scope,
    bucket: i64,
    seen: &NewKey,
    on_changed: OnChanged,
    now: i64,
    rows_before: i64,
) -> rusqlite::Result<Change> {
    let mut find = conn.prepare_cached(
        "SELECT id, state, size, etag, asset_id FROM keys
         WHERE scope = ?1 AND bucket = ?2 AND key = ?3",
    )?;
    let Some((id, state, size, etag, asset_id)) = find
        .query_row(params![scope.id, bucket, seen.key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, State>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?
    else {
        return Ok(Change::None);
    };
    // A duplicate row of the source that recorded the key, after the key was sent: the
    // first row stands (as it would have, read whole before sending).
    let sent = !matches!(state, State::Pending | State::Skipped);
    if sent && id > rows_before {
        return Ok(Change::None);
    }
    // A key whose request may be out keeps what it was sent with: reconciliation compares
    // the asset MI made with the object as it was then.
    if matches!(state, State::InFlight | State::Uncertain) {
        return Ok(Change::None);
    }
    let new_size = seen.size.map(|s| s as i64);
    let differs = matches!((&etag, &seen.etag), (Some(a), Some(b)) if a != b)
        || matches!((size, new_size), (Some(a), Some(b)) if a != b);
    if !differs {
        return Ok(Change::None);
    }
    let requeue = match state {
        State::Skipped => seen.skip_reason.is_none(),
        State::ImportFailed => seen.skip_reason.is_none(),
        State::Registered | State::Completed => {
            on_changed == OnChanged::Reimport && seen.skip_reason.is_none()
        }
        // Keys not yet settled take the new size and ETag as they are.
        _ => false,
    };
    if requeue && asset_id.is_some() {
        keep_in_history(conn, id, now, "the object changed and was registered again")?;
    }
    let (new_state, message) = match (state, requeue) {
        (State::Skipped, true) => (State::Pending, None),
        (State::Skipped, false) => (State::Skipped, seen.skip_reason.clone()),
        (_, true) => (
            State::Pending,
            Some("object changed since registration; registered again".to_owned()),
        ),
        (State::Registered | State::Completed | State::ImportFailed, false) => (
            state,
            Some("object changed since registration (ETag or size); left as it is".to_owned()),
        ),
        (other, false) => (other, None),
    };
    let settled = matches!(
        state,
        State::Registered | State::Completed | State::ImportFailed
    );
    let noted = settled || state == State::Skipped;
    conn.prepare_cached(
        "UPDATE keys SET size = ?2, etag = COALESCE(?3, etag), modified = COALESCE(?4, modified),
             state = ?5, message = CASE WHEN ?8 THEN ?6 ELSE message END,
             changed_at = CASE WHEN ?9 THEN ?7 ELSE changed_at END, updated_at = ?7,
             asset_id = CASE WHEN ?10 THEN NULL ELSE asset_id END,
             upload_status = CASE WHEN ?10 THEN NULL ELSE upload_status END,
             upload_result = CASE WHEN ?10 THEN NULL ELSE upload_result END,
             next_check_at = CASE WHEN ?10 THEN NULL ELSE next_check_at END,
             checks = CASE WHEN ?10 THEN 0 ELSE checks END,
             attempts = CASE WHEN ?10 THEN 0 ELSE attempts END,
             http_status = CASE WHEN ?10 THEN NULL ELSE http_status END,
             error_code = CASE WHEN ?10 THEN NULL ELSE error_code END
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        new_size.or(size),
        seen.etag,
        seen.modified,
        new_state.code(),
        message,
        now,
        message.is_some() || state == State::Skipped,
        noted,
        requeue
    ])?;
    Ok(if requeue {
        Change::Requeued
    } else if settled {
        Change::Noted
    } else {
        Change::None
    })
}

/// Moves a key's current asset into `asset_history` (with when it was sent and answered, if
/// MI's answer gave it), before the key is registered again.
fn keep_in_history(conn: &Connection, key_id: i64, now: i64, why: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO asset_history (asset_id, key_id, at, why, sent_at, registered_at)
         SELECT asset_id, id, ?2, ?3,
                CASE WHEN found_by IS NULL THEN sent_at END,
                CASE WHEN found_by IS NULL THEN registered_at END
         FROM keys WHERE id = ?1 AND asset_id IS NOT NULL",
    )?
    .execute(params![key_id, now, why])?;
    Ok(())
}

/// Takes up to `limit` pending keys, oldest first, and marks them `in_flight` by `run` as of
/// `now` (the start of their send window: no request for them leaves before this).
pub fn claim(
    conn: &Connection,
    scope: &Scope,
    limit: usize,
    run: i64,
    now: i64,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut stmt = conn.prepare_cached(
        formatcp!("UPDATE keys SET state = {IN_FLIGHT}, sent_at = ?3, updated_at = ?3, run = ?4
         WHERE id IN (SELECT id FROM keys WHERE scope = ?1 AND state = {PENDING} ORDER BY id LIMIT ?2)
         RETURNING id, bucket, key"),
    )?;
    let rows = stmt.query_map(params![scope.id, limit as i64, now, run], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let rows: Vec<(i64, i64, String)> = rows.collect::<rusqlite::Result<_>>()?;
    let names = bucket_names(conn)?;
    let mut claimed: Vec<Claimed> = rows
        .into_iter()
        .map(|(id, bucket, key)| Claimed {
            id,
            bucket: names.get(&bucket).cloned().unwrap_or_default(),
            key,
            sent_at: now,
        })
        .collect();
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// How many keys of the scope are pending, counted up to `most` (so it costs no more).
pub fn pending_upto(conn: &Connection, scope: &Scope, most: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached(formatcp!(
        "SELECT count(*) FROM (SELECT 1 FROM keys INDEXED BY keys_by_state
         WHERE scope = ?1 AND state = {PENDING} LIMIT ?2)"
    ))?
    .query_row(params![scope.id, most as i64], |r| r.get::<_, i64>(0))
    .map(|n| n as usize)
}

/// Which pending keys a claim may take now: `take(row, key, false)` says whether a key may
/// go (and if so counts it as going), `take(row, key, true)` counts it as going anyway.
pub trait Admit {
    fn take(&mut self, id: i64, key: &str, anyway: bool) -> bool;
    /// How many names are held back now: the claim looks further for each.
    fn held(&self) -> usize;
}

/// [`claim`], passing over the keys `admit` holds back, within a window of the oldest
/// pending keys (`CLAIM_WINDOW` for each key asked for and each name held). Where that
/// whole window holds fewer keys that may go than `limit`, the pending keys are too alike to
/// keep apart and the claim is filled with held ones, oldest first, as [`claim`] would; a window that reaches the last pending key is not filled (the
/// held keys wait: they go once their hold ends). Returns the keys, in order, and whether
/// any pending key was passed over.
pub fn claim_admitted(
    conn: &Connection,
    scope: &Scope,
    limit: usize,
    run: i64,
    now: i64,
    admit: &mut dyn Admit,
) -> rusqlite::Result<(Vec<Claimed>, bool)> {
    let scan = (limit + admit.held()).saturating_mul(CLAIM_WINDOW).max(1);
    let mut stmt = conn.prepare_cached(formatcp!(
        "SELECT id, key FROM keys INDEXED BY keys_by_state
         WHERE scope = ?1 AND state = {PENDING} ORDER BY id LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![scope.id, scan as i64])?;
    let (mut chosen, mut passed) = (Vec::new(), Vec::new());
    let mut seen = 0;
    // Rows are read only as far as the claim needs them.
    while chosen.len() < limit {
        let Some(row) = rows.next()? else { break };
        seen += 1;
        let (id, key): (i64, String) = (row.get(0)?, row.get(1)?);
        if admit.take(id, &key, false) {
            chosen.push((id, key));
        } else {
            passed.push((id, key));
        }
    }
    drop(rows);
    let held = !passed.is_empty();
    if !held {
        // The oldest pending keys, as a plain claim takes them, in one statement.
        return Ok((claim(conn, scope, chosen.len(), run, now)?, false));
    }
    if chosen.len() < limit && seen == scan {
        for (id, key) in passed.drain(..).take(limit - chosen.len()) {
            admit.take(id, &key, true);
            chosen.push((id, key));
        }
        chosen.sort_unstable_by_key(|(id, _)| *id);
    }
    let mut update = conn.prepare_cached(formatcp!(
        "UPDATE keys SET state = {IN_FLIGHT}, sent_at = ?2, updated_at = ?2, run = ?3
         WHERE id = ?1 AND state = {PENDING} RETURNING bucket"
    ))?;
    let names = bucket_names(conn)?;
    let mut claimed = Vec::with_capacity(chosen.len());
    for (id, key) in chosen {
        let bucket: i64 = update.query_row(params![id, now, run], |r| r.get(0))?;
        claimed.push(Claimed {
            id,
            bucket: names.get(&bucket).cloned().unwrap_or_default(),
            key,
            sent_at: now,
        });
    }
    Ok((claimed, held))
}

/// How many pending keys, per key asked for and per name held back, a claim looks at to find
/// keys that may go.
const CLAIM_WINDOW: usize = 8;

/// Writes what became of claimed keys, as settled by `run`. Only `in_flight` rows change, so
/// a late answer can never overwrite a row something else already settled. A registered key's
/// first import-status look is `first_look` away. Returns how many rows changed.
pub fn record(
    conn: &Connection,
    outcomes: &[Outcome],
    run: i64,
    first_look: Duration,
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(formatcp!(
        "UPDATE keys SET state = ?2, attempts = attempts + ?3,
             asset_id = COALESCE(?4, asset_id), http_status = ?5, error_code = ?6,
             message = ?7, trace_id = ?8, updated_at = ?10,
             registered_at = CASE WHEN ?2 = {REGISTERED} THEN ?10 ELSE registered_at END,
             next_check_at = CASE WHEN ?2 = {REGISTERED} THEN ?9 ELSE next_check_at END,
             unsure_at = CASE WHEN ?2 = {UNCERTAIN} THEN ?10 ELSE NULL END,
             found_by = NULL, candidates = NULL,
             run = CASE WHEN ?2 = {PENDING} THEN run ELSE ?11 END
         WHERE id = ?1 AND state = {IN_FLIGHT}"
    ))?;
    let now = now_ms();
    let first_check = now + first_look.as_millis() as i64;
    let mut changed = 0;
    for o in outcomes {
        let state = o.state.unwrap_or(State::Pending);
        // A success needs no trace id; a failure keeps it for support.
        let trace = (state != State::Registered)
            .then_some(o.trace_id.as_deref())
            .flatten();
        changed += stmt.execute(params![
            o.id,
            state.code(),
            o.attempts,
            o.asset_id,
            o.http_status,
            o.error_code,
            o.message,
            trace,
            first_check,
            now,
            run
        ])?;
    }
    Ok(changed)
}

/// Rows a dead run left `in_flight`: their requests may have reached MI. No request of the
/// dead run left more than its heartbeat floor (recorded with the run) after its last commit
/// (its heartbeat: the runner commits before sending on a staler one), and MI makes an asset
/// about as soon after a request arrives as it answered that run's other requests: the
/// outcome is unknown from the heartbeat plus that floor plus the slowest answer the run got
/// (plus `late_slack`), never later than its request timeout after that. That moment may be
/// still to come when the next run starts at once: MI may be making the asset as it starts.
pub fn mark_in_flight_uncertain(
    conn: &Connection,
    scope: &Scope,
    run: i64,
    now: i64,
    late_slack: Duration,
) -> rusqlite::Result<usize> {
    let dead: Vec<Option<i64>> = conn
        .prepare_cached(
            formatcp!("SELECT DISTINCT run FROM keys INDEXED BY keys_by_state WHERE scope = ?1 AND state = {IN_FLIGHT}"),
        )?
        .query_map(params![scope.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut changed = 0;
    for dead_run in dead {
        let slowest: Option<i64> = conn
            .prepare_cached(
                formatcp!("SELECT MAX(registered_at - sent_at) FROM keys
                 WHERE scope = ?1 AND run IS ?2 AND state IN ({REGISTERED}, {COMPLETED}, {IMPORT_FAILED}) AND found_by IS NULL"),
            )?
            .query_row(params![scope.id, dead_run], |r| r.get(0))?;
        changed += conn
            .prepare_cached(formatcp!(
                "UPDATE keys SET state = {UNCERTAIN}, updated_at = ?3, run = ?4,
                     unsure_at = MAX(COALESCE(sent_at, 0), COALESCE(
                         (SELECT runs.alive_at + COALESCE(runs.heartbeat_ms, ?6)
                                 + MIN(runs.timeout_ms, COALESCE(?5, runs.timeout_ms))
                          FROM runs WHERE runs.id = ?2), ?3)),
                     message = 'a run stopped while this key was being sent'
                 WHERE scope = ?1 AND state = {IN_FLIGHT} AND run IS ?2"
            ))?
            .execute(params![
                scope.id,
                dead_run,
                now,
                run,
                slowest.map(|ms| ms + late_slack.as_millis() as i64),
                HEARTBEAT_BEFORE_IT_WAS_KEPT.as_millis() as i64
            ])?;
    }
    Ok(changed)
}

/// The heartbeat floor of a run recorded before runs kept theirs (schema 8 and older): the
/// one every run kept then.
pub const HEARTBEAT_BEFORE_IT_WAS_KEPT: Duration = Duration::from_secs(5);

/// Sends keys in `state` (`failed`, or `import_failed` once their files are fixed) again on
/// this run. An asset an `import_failed` key had is kept in `asset_history`.
pub fn requeue(conn: &Connection, scope: &Scope, state: State) -> rusqlite::Result<usize> {
    let now = now_ms();
    conn.execute(
        "INSERT OR IGNORE INTO asset_history (asset_id, key_id, at, why, sent_at, registered_at)
         SELECT asset_id, id, ?3, 'sent again on request',
                CASE WHEN found_by IS NULL THEN sent_at END,
                CASE WHEN found_by IS NULL THEN registered_at END
         FROM keys WHERE scope = ?1 AND state = ?2 AND asset_id IS NOT NULL",
        params![scope.id, state.code(), now],
    )?;
    conn.execute(
        formatcp!("UPDATE keys SET state = {PENDING}, updated_at = ?3, asset_id = NULL, upload_status = NULL,
             upload_result = NULL, next_check_at = NULL, checks = 0,
             message = 'sent again on request'
         WHERE scope = ?1 AND state = ?2"),
        params![scope.id, state.code(), now],
    )
}

/// Why keys were skipped, with how many, most common first.
pub fn skip_reasons(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached(formatcp!(
        "SELECT COALESCE(message, 'no reason recorded'), COUNT(*) FROM keys
         WHERE scope = ?1 AND state = {SKIPPED}
         GROUP BY 1 ORDER BY 2 DESC, 1"
    ))?;
    let rows = stmt.query_map(params![scope.id], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// The buckets of keys about to be sent (pending or uncertain), for preflight.
pub fn buckets_to_send(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        // One index seek per distinct bucket, then a probe of the state index for each: a
        // plain DISTINCT reads every row of the project.
        formatcp!(
            "WITH RECURSIVE b(bucket) AS (
             SELECT MIN(bucket) FROM keys WHERE scope = ?1
             UNION ALL
             SELECT (SELECT MIN(bucket) FROM keys WHERE scope = ?1 AND bucket > b.bucket)
             FROM b WHERE b.bucket IS NOT NULL)
         SELECT buckets.name FROM b JOIN buckets ON buckets.id = b.bucket
         WHERE EXISTS (
             SELECT 1 FROM keys INDEXED BY keys_by_state
             WHERE scope = ?1 AND state IN ({PENDING}, {UNCERTAIN}) AND keys.bucket = b.bucket)
         ORDER BY buckets.name"
        ),
    )?;
    let rows = stmt.query_map(params![scope.id], |r| r.get(0))?;
    rows.collect()
}

/// How many keys of `scope` are in each state (every state listed, zeros included); all
/// scopes together with `None`.
pub fn counts(conn: &Connection, scope: Option<&Scope>) -> rusqlite::Result<Vec<(State, u64)>> {
    let found: Vec<(i64, i64)> = match scope {
        Some(s) => conn
            .prepare_cached("SELECT state, COUNT(*) FROM keys WHERE scope = ?1 GROUP BY state")?
            .query_map(params![s.id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?,
        None => conn
            .prepare_cached("SELECT state, COUNT(*) FROM keys GROUP BY state")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?,
    };
    let found: HashMap<State, u64> = found
        .into_iter()
        .filter_map(|(code, n)| State::from_code(code).map(|st| (st, n as u64)))
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

/// Keys `run` left failed, import_failed or uncertain: what makes this run exit 1.
pub fn trouble_of_run(
    conn: &Connection,
    scope: &Scope,
    run: i64,
) -> rusqlite::Result<Vec<(State, u64)>> {
    let mut stmt = conn.prepare_cached(
        formatcp!("SELECT state, COUNT(*) FROM keys INDEXED BY keys_by_state
         WHERE scope = ?1 AND state IN ({UNCERTAIN}, {IMPORT_FAILED}, {FAILED}) AND run = ?2 GROUP BY state"),
    )?;
    let rows = stmt.query_map(params![scope.id, run], |r| {
        Ok((r.get::<_, State>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// A key in trouble: (bucket, key, state, message).
pub type Trouble = (String, String, State, Option<String>);

/// Keys `run` left failed, import_failed or uncertain, the first `limit` of them.
pub fn failures_of_run(
    conn: &Connection,
    scope: &Scope,
    run: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Trouble>> {
    let mut stmt = conn.prepare_cached(
        formatcp!("SELECT b.name, k.key, k.state, k.message FROM keys k INDEXED BY keys_by_state
         JOIN buckets b ON b.id = k.bucket
         WHERE k.scope = ?1 AND k.state IN ({UNCERTAIN}, {IMPORT_FAILED}, {FAILED}) AND k.run = ?2 ORDER BY k.id LIMIT ?3"),
    )?;
    let rows = stmt.query_map(params![scope.id, run, limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    rows.collect()
}

/// Keys of the scope first seen at `since` or later and skipped (never to be sent).
pub fn skipped_since(conn: &Connection, scope: &Scope, since: i64) -> rusqlite::Result<u64> {
    conn.prepare_cached(formatcp!(
        "SELECT COUNT(*) FROM keys INDEXED BY keys_by_state
         WHERE scope = ?1 AND state = {SKIPPED} AND first_seen_at >= ?2"
    ))?
    .query_row(params![scope.id, since], |r| {
        r.get::<_, i64>(0).map(|n| n as u64)
    })
}

/// One key as `report` shows it, straight from its row (times in Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub bucket: String,
    pub key: String,
    pub state: State,
    pub asset_id: Option<i64>,
    pub candidates: Option<String>,
    /// The candidates' evidence, as JSON text.
    pub evidence: Option<String>,
    pub upload_status: Option<String>,
    pub upload_result: Option<String>,
    pub analysis_status: Option<String>,
    pub index_id: Option<String>,
    pub analysis_message: Option<String>,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub trace_id: Option<String>,
    pub size: Option<i64>,
    pub changed_at: Option<i64>,
    pub first_seen_at: i64,
    pub updated_at: i64,
    pub registered_at: Option<i64>,
    pub workspace: String,
    pub project: String,
}

/// Hands every key in `states` (all when empty), and of them only those `run` touched last
/// if given, to `each`, in row order, one at a time (a report of a million keys holds one).
pub fn each_reported<E: From<rusqlite::Error>>(
    conn: &Connection,
    states: &[State],
    run: Option<i64>,
    mut each: impl FnMut(KeyRecord) -> Result<(), E>,
) -> Result<(), E> {
    let codes: Vec<i64> = states.iter().map(|s| s.code()).collect();
    let filter = serde_json::to_string(&codes).unwrap_or_else(|_| "[]".into());
    let mut stmt = conn.prepare(
        "SELECT b.name, k.key, k.state, k.asset_id, k.candidates, k.evidence, k.upload_status,
                k.upload_result, a.status, a.index_id, a.message, k.attempts, k.http_status,
                k.error_code, k.message, k.trace_id, k.size, k.changed_at, k.first_seen_at,
                k.updated_at, k.registered_at, s.workspace, s.project
         FROM keys k
         JOIN buckets b ON b.id = k.bucket
         JOIN scopes s ON s.id = k.scope
         LEFT JOIN analyses a ON a.key_id = k.id AND a.asset_id = k.asset_id
         WHERE (?1 = '[]' OR k.state IN (SELECT value FROM json_each(?1)))
           AND (?2 IS NULL OR k.run = ?2)
         ORDER BY k.id",
    )?;
    let rows = stmt.query_map(params![filter, run], |r| {
        Ok(KeyRecord {
            bucket: r.get(0)?,
            key: r.get(1)?,
            state: r.get(2)?,
            asset_id: r.get(3)?,
            candidates: r.get(4)?,
            evidence: r.get(5)?,
            upload_status: r.get(6)?,
            upload_result: r.get(7)?,
            analysis_status: r.get(8)?,
            index_id: r.get(9)?,
            analysis_message: r.get(10)?,
            attempts: r.get(11)?,
            http_status: r.get(12)?,
            error_code: r.get(13)?,
            message: r.get(14)?,
            trace_id: r.get(15)?,
            size: r.get(16)?,
            changed_at: r.get(17)?,
            first_seen_at: r.get(18)?,
            updated_at: r.get(19)?,
            registered_at: r.get(20)?,
            workspace: r.get(21)?,
            project: r.get(22)?,
        })
    })?;
    for row in rows {
        each(row?)?;
    }
    Ok(())
}

/// Uncertain keys (of every scope) MI's list could not settle: they have candidates and wait
/// for `mi-import resolve`.
pub fn awaiting_resolve(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        formatcp!("SELECT COUNT(*) FROM keys WHERE state = {UNCERTAIN} AND candidates IS NOT NULL"),
        [],
        |r| r.get::<_, i64>(0).map(|n| n as u64),
    )
}

/// Uncertain keys (of every scope) by how many candidate assets they have.
pub fn uncertain_by_candidates(conn: &Connection) -> rusqlite::Result<CandidateCounts> {
    let mut stmt = conn.prepare(formatcp!(
        "SELECT candidates FROM keys WHERE state = {UNCERTAIN}"
    ))?;
    let mut rows = stmt.query([])?;
    let mut counts = CandidateCounts::default();
    while let Some(row) = rows.next()? {
        let candidates: Option<String> = row.get(0)?;
        match candidates.map(|c| c.split(' ').filter(|s| !s.is_empty()).count()) {
            None | Some(0) => counts.none += 1,
            Some(1) => counts.one += 1,
            Some(_) => counts.several += 1,
        }
    }
    Ok(counts)
}

/// Uncertain keys with one candidate (`resolve --sole-candidates` settles them on your word),
/// with several, and with none (the next run looks again).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CandidateCounts {
    pub one: u64,
    pub several: u64,
    pub none: u64,
}

/// The buckets of the scope that hold `key` (one, as a rule).
pub fn buckets_holding(
    conn: &Connection,
    scope: &Scope,
    key: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT buckets.name FROM keys JOIN buckets ON buckets.id = keys.bucket
         WHERE keys.scope = ?1 AND keys.key = ?2",
    )?;
    let rows = stmt.query_map(params![scope.id, key], |r| r.get(0))?;
    rows.collect()
}

/// The number of the last key row written (of any scope; 0 in an empty ledger).
pub fn last_row(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM keys", [], |r| r.get(0))
}

/// Removes the scope's rows written after row `above`: what a command refused before
/// anything was sent had added.
pub fn forget_rows_after(conn: &Connection, scope: &Scope, above: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM keys WHERE scope = ?1 AND id > ?2",
        params![scope.id, above],
    )
}
