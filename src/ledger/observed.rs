//! What the ledger saw of MI's asset list, and when. Every pass over the list is recorded
//! (when it began and ended, how current it was), and every asset ID it showed joins the
//! scope's set of seen assets with the first pass that showed it. An asset a pass showed
//! before a key's request left cannot be that key's registration: this is evidence that
//! holds whatever the list carries (no times, no ordered IDs, names shared by many keys).
//!
//! The set is one blob per scope: the sorted IDs as varint deltas, each followed by its
//! first pass's number as a varint. A million IDs cost a few megabytes, and a pass's record
//! (its row and the merged set) is written in the pass's own transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::Scope;

/// One pass over the list, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPass {
    pub id: i64,
    pub started_at: i64,
    pub ended_at: i64,
    /// Everything made before this moment was in the list it read (`None`: not known).
    pub current_as_of: Option<i64>,
}

/// Every asset ID a scope's passes showed, with the first pass that showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Sorted, distinct.
    ids: Vec<i64>,
    /// `first[i]` is the pass that first showed `ids[i]`.
    first: Vec<i64>,
}

impl Seen {
    /// The pass that first showed `asset`, if any did.
    pub fn first_pass(&self, asset: i64) -> Option<i64> {
        self.ids.binary_search(&asset).ok().map(|i| self.first[i])
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds the IDs `pass` showed; those seen before keep their first pass.
    pub fn merge(&mut self, shown: &[i64], pass: i64) {
        let mut new: Vec<i64> = shown
            .iter()
            .copied()
            .filter(|id| self.ids.binary_search(id).is_err())
            .collect();
        if new.is_empty() {
            return;
        }
        new.sort_unstable();
        new.dedup();
        let (mut ids, mut first) = (
            Vec::with_capacity(self.ids.len() + new.len()),
            Vec::with_capacity(self.ids.len() + new.len()),
        );
        let (mut a, mut b) = (0, 0);
        while a < self.ids.len() || b < new.len() {
            if b == new.len() || (a < self.ids.len() && self.ids[a] < new[b]) {
                ids.push(self.ids[a]);
                first.push(self.first[a]);
                a += 1;
            } else {
                ids.push(new[b]);
                first.push(pass);
                b += 1;
            }
        }
        (self.ids, self.first) = (ids, first);
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ids.len() * 5);
        let mut last = 0i64;
        for (id, pass) in self.ids.iter().zip(&self.first) {
            push_varint(&mut out, (id - last) as u64);
            push_varint(&mut out, *pass as u64);
            last = *id;
        }
        out
    }

    fn decode(data: &[u8]) -> Self {
        let mut seen = Seen::default();
        let (mut at, mut last) = (0, 0i64);
        while at < data.len() {
            let (Some(delta), Some(pass)) =
                (read_varint(data, &mut at), read_varint(data, &mut at))
            else {
                break;
            };
            last += delta as i64;
            seen.ids.push(last);
            seen.first.push(pass as i64);
        }
        seen
    }
}

fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let byte = *data.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// The scope's set of seen assets.
pub fn seen(conn: &Connection, scope: &Scope) -> rusqlite::Result<Seen> {
    let data: Option<Vec<u8>> = conn
        .prepare_cached("SELECT data FROM seen_assets WHERE scope = ?1")?
        .query_row(params![scope.id], |r| r.get(0))
        .optional()?;
    Ok(data.map(|d| Seen::decode(&d)).unwrap_or_default())
}

/// Records a pass and the IDs it showed, in the caller's transaction; returns the pass.
pub fn record_pass(
    conn: &Connection,
    scope: &Scope,
    started_at: i64,
    ended_at: i64,
    current_as_of: Option<i64>,
    shown: &[i64],
) -> rusqlite::Result<ListPass> {
    conn.prepare_cached(
        "INSERT INTO list_passes (scope, started_at, ended_at, current_as_of, assets)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        scope.id,
        started_at,
        ended_at,
        current_as_of,
        shown.len() as i64
    ])?;
    let id = conn.last_insert_rowid();
    let mut set = seen(conn, scope)?;
    set.merge(shown, id);
    conn.prepare_cached(
        "INSERT INTO seen_assets (scope, data) VALUES (?1, ?2)
         ON CONFLICT (scope) DO UPDATE SET data = excluded.data",
    )?
    .execute(params![scope.id, set.encode()])?;
    Ok(ListPass {
        id,
        started_at,
        ended_at,
        current_as_of,
    })
}

/// When the first pass that showed `asset` ended, if one did.
pub fn first_shown_at(
    conn: &Connection,
    scope: &Scope,
    asset: i64,
) -> rusqlite::Result<Option<i64>> {
    let Some(pass) = seen(conn, scope)?.first_pass(asset) else {
        return Ok(None);
    };
    conn.prepare_cached("SELECT ended_at FROM list_passes WHERE id = ?1")?
        .query_row(params![pass], |r| r.get(0))
        .optional()
}

/// Every recorded pass of the scope, oldest first.
pub fn passes(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<ListPass>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, started_at, ended_at, current_as_of FROM list_passes
         WHERE scope = ?1 ORDER BY ended_at",
    )?;
    let rows = stmt.query_map(params![scope.id], |r| {
        Ok(ListPass {
            id: r.get(0)?,
            started_at: r.get(1)?,
            ended_at: r.get(2)?,
            current_as_of: r.get(3)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    #[test]
    fn the_first_pass_to_show_an_asset_stays_its_first() {
        let mut seen = Seen::default();
        seen.merge(&[30, 10, 20, 10], 1);
        seen.merge(&[20, 40, 5], 2);
        assert_eq!(seen.first_pass(10), Some(1));
        assert_eq!(seen.first_pass(20), Some(1));
        assert_eq!(seen.first_pass(40), Some(2));
        assert_eq!(seen.first_pass(5), Some(2));
        assert_eq!(seen.first_pass(6), None);
        assert_eq!(Seen::decode(&seen.encode()), seen);
    }

    #[test]
    fn a_million_seen_ids_take_a_few_megabytes() {
        let mut seen = Seen::default();
        let ids: Vec<i64> = (0..1_000_000).map(|i| 100_000 + i * 3).collect();
        seen.merge(&ids, 123_456);
        let bytes = seen.encode().len();
        assert!(bytes < 6_000_000, "{bytes} bytes");
        assert_eq!(
            Seen::decode(&seen.encode()).first_pass(100_003),
            Some(123_456)
        );
    }

    #[test]
    fn a_pass_is_recorded_with_what_it_showed() {
        let l = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(l.conn(), "http://mi.test", "w", "1").unwrap();
        let first = record_pass(l.conn(), &scope, 10, 20, Some(5), &[7, 8]).unwrap();
        let second = record_pass(l.conn(), &scope, 30, 40, None, &[8, 9]).unwrap();
        let seen = seen(l.conn(), &scope).unwrap();
        assert_eq!(seen.first_pass(7), Some(first.id));
        assert_eq!(seen.first_pass(9), Some(second.id));
        assert_eq!(passes(l.conn(), &scope).unwrap(), [first, second]);
    }
}
