//! Statements for keys whose outcome is unknown: what reconciliation reads (the keys, the
//! ledger's own assets as witnesses, what it learned before), what it decides, and what the
//! user settles by hand with `resolve`.

use const_format::formatcp;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;

use super::state::sql::*;
use super::{Scope, State};
use crate::clock::{ms_text, now_ms};
use crate::reconcile::{UnsureKey, Verdict, Witness};

/// An uncertain key, and the candidates an earlier pass found for it (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncertain {
    pub key: UnsureKey,
    pub candidates: Option<Vec<i64>>,
    /// The run that made it uncertain or last changed its candidates.
    pub run: Option<i64>,
}

/// Every uncertain key of the scope.
pub fn uncertain_keys(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<Uncertain>> {
    let mut stmt = conn.prepare_cached(formatcp!(
        "SELECT keys.id, buckets.name, keys.key, keys.size, keys.sent_at, keys.unsure_at,
                keys.candidates, keys.updated_at, keys.run
         FROM keys JOIN buckets ON buckets.id = keys.bucket
         WHERE keys.scope = ?1 AND keys.state = {UNCERTAIN} ORDER BY keys.id"
    ))?;
    let rows = stmt.query_map(params![scope.id], |r| {
        let updated: i64 = r.get(7)?;
        let unsure_at: Option<i64> = r.get(5)?;
        Ok(Uncertain {
            key: UnsureKey {
                id: r.get(0)?,
                bucket: r.get(1)?,
                key: r.get(2)?,
                size: r.get::<_, Option<i64>>(3)?.map(|s| s as u64),
                // A row from before send windows were kept: the widest window there is.
                sent_at: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                unsure_at: unsure_at.unwrap_or(updated),
            },
            candidates: r
                .get::<_, Option<String>>(6)?
                .map(|text| parse_candidates(&text)),
            run: r.get(8)?,
        })
    })?;
    rows.collect()
}

fn parse_candidates(text: &str) -> Vec<i64> {
    text.split(' ').filter_map(|id| id.parse().ok()).collect()
}

/// Of `ids`, those some key of the scope has or had as its asset. Only the scope's own keys
/// count: another project (or endpoint) may number its assets alike.
pub fn owned_among(
    conn: &Connection,
    scope: &Scope,
    ids: &[i64],
) -> rusqlite::Result<HashSet<i64>> {
    let wanted: HashSet<i64> = ids.iter().copied().collect();
    let mut owned = HashSet::new();
    if wanted.is_empty() {
        return Ok(owned);
    }
    // One pass over the scope's rows: asset IDs are not indexed (they are looked up only
    // here).
    for sql in [
        "SELECT asset_id FROM keys WHERE scope = ?1 AND asset_id IS NOT NULL",
        "SELECT h.asset_id FROM asset_history h JOIN keys k ON k.id = h.key_id WHERE k.scope = ?1",
    ] {
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params![scope.id])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            if wanted.contains(&id) {
                owned.insert(id);
            }
        }
    }
    Ok(owned)
}

/// Assets of the scope the ledger knows from MI's own answers, registered at `since` or
/// later, newest first, at most `limit`: they show how MI names, times and numbers assets,
/// and whether its list is current.
pub fn witnesses(
    conn: &Connection,
    scope: &Scope,
    since: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Witness>> {
    let mut stmt = conn.prepare_cached(
        formatcp!("SELECT asset_id, key, sent_at, registered_at FROM keys
         WHERE scope = ?1 AND state IN ({REGISTERED}, {COMPLETED}, {IMPORT_FAILED}) AND asset_id IS NOT NULL AND found_by IS NULL
           AND sent_at IS NOT NULL AND registered_at >= ?2
         UNION ALL
         SELECT h.asset_id, k.key, h.sent_at, h.registered_at
         FROM asset_history h JOIN keys k ON k.id = h.key_id
         WHERE k.scope = ?1 AND h.sent_at IS NOT NULL AND h.registered_at >= ?2
         ORDER BY 4 DESC LIMIT ?3"),
    )?;
    let rows = stmt.query_map(params![scope.id, since, limit as i64], |r| {
        Ok(Witness {
            asset_id: r.get(0)?,
            key: r.get(1)?,
            sent_at: r.get(2)?,
            answered_at: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Keys whose outcome became unknown after `since` (ms), with that moment.
pub fn unsure_since(
    conn: &Connection,
    scope: &Scope,
    since: i64,
) -> rusqlite::Result<Vec<(String, i64)>> {
    conn.prepare_cached(
        "SELECT key, unsure_at FROM keys INDEXED BY keys_by_state
         WHERE scope = ?1 AND state = ?2 AND unsure_at > ?3",
    )?
    .query_map(params![scope.id, State::Uncertain as i64, since], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?
    .collect()
}

/// What applying one pass's verdicts did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    pub registered: u64,
    pub resend: u64,
    pub ambiguous: u64,
    pub waiting: u64,
}

/// Applies a pass's verdicts, as settled by `run`. Only rows still uncertain change. A key
/// found registered is due for confirmation at once; one proven absent goes back to pending;
/// an ambiguous one keeps its candidates.
pub fn apply_verdicts(
    conn: &Connection,
    verdicts: &[(i64, Verdict)],
    evidence: &std::collections::HashMap<i64, String>,
    checked_at: i64,
    run: i64,
) -> rusqlite::Result<Settled> {
    let now = now_ms();
    let mut found = conn.prepare_cached(
        formatcp!("UPDATE keys SET state = {REGISTERED}, asset_id = ?2, found_by = 'list', registered_at = ?3,
             next_check_at = 0, candidates = NULL, updated_at = ?3, run = ?4,
             message = 'its answer was lost; found in the project''s asset list'
         WHERE id = ?1 AND state = {UNCERTAIN}"),
    )?;
    let mut absent = conn.prepare_cached(formatcp!(
        "UPDATE keys SET state = {PENDING}, candidates = NULL, unsure_at = NULL, updated_at = ?2,
             message = ?3
         WHERE id = ?1 AND state = {UNCERTAIN}"
    ))?;
    let mut unsure = conn.prepare_cached(formatcp!(
        "UPDATE keys SET candidates = ?2, message = ?3, evidence = ?5,
             run = CASE WHEN candidates IS ?2 THEN run ELSE ?4 END
         WHERE id = ?1 AND state = {UNCERTAIN}"
    ))?;
    let mut settled = Settled::default();
    for (id, verdict) in verdicts {
        match verdict {
            Verdict::Registered(asset) => {
                settled.registered += found.execute(params![id, asset, now, run])? as u64;
            }
            Verdict::NotRegistered => {
                let message = format!(
                    "not in the project's asset list as of {}; sent again",
                    ms_text(checked_at)
                );
                settled.resend += absent.execute(params![id, now, message])? as u64;
            }
            Verdict::Wait => {
                settled.waiting += unsure.execute(params![
                    id,
                    None::<String>,
                    "outcome unknown; waiting until MI's asset list is known to be current",
                    run,
                    None::<String>
                ])? as u64;
            }
            Verdict::Ambiguous(candidates) => {
                let text = candidates
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                let message = format!(
                    "outcome unknown: MI lists {} asset{} that may be this key's ({text}); settle it with `mi-import resolve`",
                    candidates.len(),
                    if candidates.len() == 1 { "" } else { "s" }
                );
                settled.ambiguous +=
                    unsure.execute(params![id, text, message, run, evidence.get(id)])? as u64;
            }
        }
    }
    Ok(settled)
}

/// What the user decided about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// MI's asset `0` is this key's.
    Asset(i64),
    /// MI has no asset for this key: the next run sends it.
    NotRegistered,
}

/// Why a decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "the ledger has no key `{}` in bucket `{}` for this project",
        crate::escape::shown(key),
        crate::escape::shown(bucket)
    )]
    NoSuchKey { bucket: String, key: String },
    #[error(
        "`{}` is {state}: only uncertain keys, and keys settled by hand and not yet confirmed, are settled by hand",
        crate::escape::shown(key)
    )]
    NotUncertain { key: String, state: State },
    #[error(
        "asset {asset} already belongs to `{}` in this ledger",
        crate::escape::shown(owner)
    )]
    Owned { asset: i64, owner: String },
}

/// A key `resolve` may settle: its row, state, candidates and current asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settleable {
    pub id: i64,
    pub state: State,
    pub candidates: Vec<i64>,
    /// The asset given by hand before, for a key settled by hand and not yet confirmed.
    pub asset_id: Option<i64>,
    /// When its last request left (`None`: never sent).
    pub sent_at: Option<i64>,
}

/// The key `key` of `bucket`, if `resolve` may settle it: uncertain, or given its asset by
/// hand and not confirmed yet (so an earlier choice can be corrected).
pub fn settleable(
    conn: &Connection,
    scope: &Scope,
    bucket: &str,
    key: &str,
) -> rusqlite::Result<Result<Settleable, Refused>> {
    type Row = (
        i64,
        State,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    );
    let found: Option<Row> = conn
        .query_row(
            "SELECT k.id, k.state, k.candidates, k.asset_id, k.found_by, k.sent_at
             FROM keys k JOIN buckets b ON b.id = k.bucket
             WHERE k.scope = ?1 AND b.name = ?2 AND k.key = ?3",
            params![scope.id, bucket, key],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, state, candidates, asset_id, found_by, sent_at)) = found else {
        return Ok(Err(Refused::NoSuchKey {
            bucket: bucket.into(),
            key: key.into(),
        }));
    };
    let by_hand = state == State::Registered && found_by.as_deref() == Some("user");
    if state != State::Uncertain && !by_hand {
        return Ok(Err(Refused::NotUncertain {
            key: key.into(),
            state,
        }));
    }
    Ok(Ok(Settleable {
        id,
        state,
        candidates: candidates.map(|c| parse_candidates(&c)).unwrap_or_default(),
        asset_id: by_hand.then_some(asset_id).flatten(),
        sent_at,
    }))
}

/// The key of the scope that has or had `asset`, other than `except`, if any.
pub fn owner_of(
    conn: &Connection,
    scope: &Scope,
    asset: i64,
    except: i64,
) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT key FROM keys WHERE scope = ?2 AND asset_id = ?1 AND id != ?3
         UNION ALL
         SELECT keys.key FROM asset_history JOIN keys ON keys.id = asset_history.key_id
         WHERE keys.scope = ?2 AND asset_history.asset_id = ?1
         LIMIT 1",
        params![asset, scope.id, except],
        |r| r.get(0),
    )
    .optional()
}

/// Applies a user's decision about a key `resolve` may settle, and records it in `events`
/// (with the earlier choice, if the key was settled by hand before). Returns the key's row
/// id. The evidence behind the decision is checked by the caller; this checks the state and
/// that no other key of the scope owns the asset. A key given an asset is first looked at
/// `first_look` later.
pub fn decide(
    conn: &Connection,
    scope: &Scope,
    bucket: &str,
    key: &str,
    decision: &Decision,
    run: i64,
    first_look: std::time::Duration,
) -> rusqlite::Result<Result<i64, Refused>> {
    let settleable = match settleable(conn, scope, bucket, key)? {
        Ok(s) => s,
        Err(refused) => return Ok(Err(refused)),
    };
    let id = settleable.id;
    let now = now_ms();
    if let Decision::Asset(asset) = decision {
        if let Some(owner) = owner_of(conn, scope, *asset, id)? {
            return Ok(Err(Refused::Owned {
                asset: *asset,
                owner,
            }));
        }
        conn.execute(
            formatcp!("UPDATE keys SET state = {REGISTERED}, asset_id = ?2, found_by = 'user', registered_at = ?3,
                 next_check_at = ?4, updated_at = ?3, run = ?5,
                 message = 'asset given by hand with `mi-import resolve`'
             WHERE id = ?1"),
            params![id, asset, now, now + first_look.as_millis() as i64, run],
        )?;
    } else {
        conn.execute(
            formatcp!("UPDATE keys SET state = {PENDING}, candidates = NULL, unsure_at = NULL, asset_id = NULL,
                 found_by = NULL, next_check_at = NULL, updated_at = ?2, run = ?3,
                 message = 'declared not registered with `mi-import resolve`; sent by the next run'
             WHERE id = ?1"),
            params![id, now, run],
        )?;
    }
    let detail = serde_json::json!({
        "bucket": bucket,
        "key": key,
        "decision": match decision {
            Decision::Asset(a) => format!("asset {a}"),
            Decision::NotRegistered => "not registered".into(),
        },
        "was": match (settleable.state, settleable.asset_id) {
            (State::Registered, Some(a)) => format!("given asset {a} by hand"),
            _ => "uncertain".into(),
        },
        "candidates": settleable.candidates,
    })
    .to_string();
    conn.execute(
        "INSERT INTO events (at, scope, key_id, action, detail) VALUES (?1, ?2, ?3, 'resolve', ?4)",
        params![now, scope.id, id, detail],
    )?;
    Ok(Ok(id))
}
