//! Statements for bucket listings: where a listing stands, part by part, and the objects it
//! found (which, unlike manifest rows, carry ETag and size, so a changed object is noticed).
//!
//! A listing of (bucket, prefix) is made of parts. A part lists one prefix after its saved
//! marker: with a delimiter, its subfolders become parts of their own (so parts can be listed
//! side by side); `flat`, everything below it in one sequence. Each page is committed with its
//! part's new marker, so a killed run resumes every part where it stood.
//!
//! The listing fits the bucket's shape: it descends by folders only while too few parts are
//! open to keep the lister busy; once a page's subfolders bring the open parts to the
//! listing's `spread` (one per concurrent request), they are listed flat. A date tree of
//! thousands of small folders so costs one request per day, not one per folder, and a
//! hundred wide folders are listed side by side.

use rusqlite::{Connection, OptionalExtension, params};

use super::keys::insert_keys;
use super::scopes::bucket_id;
use super::{Ingested, NewKey, OnChanged, Scope};
use crate::clock::now_ms;

/// A listing to continue or start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingState {
    pub id: i64,
    /// Every part reached its end: only dispatch is left.
    pub listed: bool,
    /// Pages committed so far (by this run and the runs it resumes).
    pub pages: u64,
}

/// One part of a listing still to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub id: i64,
    pub prefix: String,
    pub flat: bool,
    /// Continue after this key; `None` to start at the beginning of the prefix.
    pub marker: Option<String>,
}

/// What one listed page adds to the ledger.
#[derive(Debug, Clone, Copy)]
pub struct PageRecord<'a> {
    pub listing: i64,
    pub part: i64,
    pub keys: &'a [NewKey],
    /// Objects on the page, before filters.
    pub seen: u64,
    /// Where the part goes on; `None` when it reached its end.
    pub next_marker: Option<&'a str>,
    /// Subfolders the page named, each a part to list.
    pub subfolders: &'a [String],
    /// Open parts enough to keep the lister busy: subfolders that reach it are listed flat.
    pub spread: usize,
}

/// How many open parts keep `concurrency` listing requests busy: one each. Descending
/// further only trades one request per part for one per folder: a month of small daily
/// folders is cheaper listed flat (a page per 1,000 keys) than folder by folder.
pub fn spread_for(concurrency: usize) -> usize {
    concurrency.max(1)
}

/// The open listing of (bucket, prefix) left unfinished by a run that died, or a new one
/// whose one part lists the whole prefix (`flat`, for one request at a time, or by folders). A listing that reached its
/// end in a run that then died is closed here: what it found is in the ledger, and objects
/// uploaded since are found only by listing again.
pub fn open_listing(
    conn: &Connection,
    scope: &Scope,
    bucket: &str,
    prefix: &str,
    flat: bool,
) -> rusqlite::Result<ListingState> {
    let bucket = bucket_id(conn, bucket)?;
    let open = conn
        .query_row(
            "SELECT id, listed_at IS NOT NULL, pages FROM listings
             WHERE scope = ?1 AND bucket = ?2 AND prefix = ?3 AND closed_at IS NULL
             ORDER BY id DESC LIMIT 1",
            params![scope.id, bucket, prefix],
            |r| {
                Ok(ListingState {
                    id: r.get(0)?,
                    listed: r.get(1)?,
                    pages: r.get::<_, i64>(2)? as u64,
                })
            },
        )
        .optional()?;
    match open {
        Some(open) if open.listed => close_listing(conn, open.id)?,
        Some(open) => return Ok(open),
        None => {}
    }
    conn.execute(
        "INSERT INTO listings (scope, bucket, prefix, started_at) VALUES (?1, ?2, ?3, ?4)",
        params![scope.id, bucket, prefix, now_ms()],
    )?;
    let id = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO listing_parts (listing, prefix, flat) VALUES (?1, ?2, ?3)",
        params![id, prefix, flat],
    )?;
    Ok(ListingState {
        id,
        listed: false,
        pages: 0,
    })
}

/// Up to `limit` parts of `listing` still to list, oldest first, other than those in `busy`.
pub fn parts_to_list(
    conn: &Connection,
    listing: i64,
    busy: &[i64],
    limit: usize,
) -> rusqlite::Result<Vec<Part>> {
    let busy = serde_json::to_string(busy).unwrap_or_else(|_| "[]".into());
    let mut stmt = conn.prepare_cached(
        "SELECT id, prefix, flat, marker FROM listing_parts
         WHERE listing = ?1 AND done = 0 AND id NOT IN (SELECT value FROM json_each(?2))
         ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![listing, busy, limit as i64], |r| {
        Ok(Part {
            id: r.get(0)?,
            prefix: r.get(1)?,
            flat: r.get(2)?,
            marker: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Records one page in the caller's transaction: its keys, its subfolders as new parts, and
/// its part's new position. Returns the ingest counts, and whether the whole listing is done.
pub fn record_page(
    conn: &Connection,
    scope: &Scope,
    page: &PageRecord<'_>,
    on_changed: OnChanged,
) -> rusqlite::Result<(Ingested, bool)> {
    let counts = insert_keys(conn, scope, page.keys, on_changed)?;
    if !page.subfolders.is_empty() {
        let open: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM listing_parts WHERE listing = ?1 AND done = 0")?
            .query_row(params![page.listing], |r| r.get(0))?;
        // The part of this page is among the open ones; it may be ending.
        let flat = (open.max(1) - 1) as usize + page.subfolders.len() >= page.spread;
        let mut add = conn.prepare_cached(
            "INSERT INTO listing_parts (listing, prefix, flat) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?;
        for folder in page.subfolders {
            add.execute(params![page.listing, folder, flat])?;
        }
    }
    conn.prepare_cached(
        "UPDATE listing_parts SET marker = COALESCE(?2, marker), done = ?2 IS NULL WHERE id = ?1",
    )?
    .execute(params![page.part, page.next_marker])?;
    let open_parts: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM listing_parts WHERE listing = ?1 AND done = 0")?
        .query_row(params![page.listing], |r| r.get(0))?;
    conn.prepare_cached(
        "UPDATE listings SET pages = pages + 1, objects = objects + ?2,
             listed_at = CASE WHEN ?3 = 0 THEN ?4 ELSE NULL END
         WHERE id = ?1",
    )?
    .execute(params![
        page.listing,
        page.seen as i64,
        open_parts,
        now_ms()
    ])?;
    Ok((counts, open_parts == 0))
}

/// The run that owned the listing finished: the next run lists from the start.
pub fn close_listing(conn: &Connection, listing: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE listings SET closed_at = ?2 WHERE id = ?1",
        params![listing, now_ms()],
    )?;
    Ok(())
}

/// Listings of `scope` a run left unfinished (not at their end), as (bucket, prefix): a run
/// with no source continues them.
pub fn unfinished(conn: &Connection, scope: &Scope) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT buckets.name, listings.prefix FROM listings
         JOIN buckets ON buckets.id = listings.bucket
         WHERE listings.scope = ?1 AND listings.closed_at IS NULL AND listings.listed_at IS NULL
         ORDER BY listings.id",
    )?;
    let rows = stmt.query_map(params![scope.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::keys::{claim, record};
    use crate::ledger::{Ledger, Outcome, State};

    fn object(key: &str, etag: &str, size: u64) -> NewKey {
        NewKey {
            size: Some(size),
            etag: Some(etag.into()),
            ..NewKey::new("b", key)
        }
    }

    fn page<'a>(
        listing: i64,
        part: i64,
        keys: &'a [NewKey],
        next: Option<&'a str>,
        subfolders: &'a [String],
    ) -> PageRecord<'a> {
        PageRecord {
            listing,
            part,
            keys,
            seen: keys.len() as u64,
            next_marker: next,
            subfolders,
            spread: usize::MAX,
        }
    }

    #[test]
    fn folders_are_descended_until_enough_parts_are_open_then_listed_flat() {
        let l = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(l.conn(), "http://mi.test", "w", "p").unwrap();
        let listing = open_listing(l.conn(), &scope, "b", "", false).unwrap().id;
        let root = parts_to_list(l.conn(), listing, &[], 10).unwrap();
        // A date tree: one year, then twelve months, then thirty days each.
        let year = vec!["2024/".to_string()];
        let spread = 8;
        let flat_of = |parts: &[Part], prefix: &str| {
            parts.iter().find(|p| p.prefix == prefix).map(|p| p.flat)
        };
        record_page(
            l.conn(),
            &scope,
            &PageRecord {
                spread,
                ..page(listing, root[0].id, &[], None, &year)
            },
            OnChanged::Report,
        )
        .unwrap();
        let open = parts_to_list(l.conn(), listing, &[], 100).unwrap();
        assert_eq!(
            flat_of(&open, "2024/"),
            Some(false),
            "one part open: descend"
        );
        let months: Vec<String> = (1..=12).map(|m| format!("2024/{m:02}/")).collect();
        record_page(
            l.conn(),
            &scope,
            &PageRecord {
                spread,
                ..page(listing, open[0].id, &[], None, &months)
            },
            OnChanged::Report,
        )
        .unwrap();
        let open = parts_to_list(l.conn(), listing, &[], 100).unwrap();
        assert_eq!(open.len(), 12);
        assert!(
            open.iter().all(|p| p.flat),
            "twelve open parts keep eight requests busy: flat"
        );
        // Fewer than the spread: still by folders.
        let few = open_listing(l.conn(), &scope, "b", "few/", false)
            .unwrap()
            .id;
        let root = parts_to_list(l.conn(), few, &[], 10).unwrap();
        let three: Vec<String> = (1..=3).map(|i| format!("few/{i}/")).collect();
        record_page(
            l.conn(),
            &scope,
            &PageRecord {
                spread,
                ..page(few, root[0].id, &[], None, &three)
            },
            OnChanged::Report,
        )
        .unwrap();
        let open = parts_to_list(l.conn(), few, &[], 100).unwrap();
        assert!(open.iter().all(|p| !p.flat), "{open:?}");
    }

    #[test]
    fn an_unfinished_listing_resumes_part_by_part_and_a_closed_one_starts_over() {
        let l = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(l.conn(), "http://mi.test", "w", "p").unwrap();
        let first = open_listing(l.conn(), &scope, "b", "pre/", false).unwrap();
        let root = parts_to_list(l.conn(), first.id, &[], 10).unwrap();
        assert_eq!(root.len(), 1);
        assert_eq!(
            (root[0].prefix.as_str(), root[0].marker.as_deref()),
            ("pre/", None)
        );
        let folders = vec!["pre/a/".to_string(), "pre/b/".to_string()];
        let keys = [object("pre/x.mp4", "e1", 5)];
        let (_, done) = record_page(
            l.conn(),
            &scope,
            &page(first.id, root[0].id, &keys, Some("pre/x.mp4"), &folders),
            OnChanged::Report,
        )
        .unwrap();
        assert!(!done);

        let resumed = open_listing(l.conn(), &scope, "b", "pre/", false).unwrap();
        assert_eq!(
            (resumed.id, resumed.listed, resumed.pages),
            (first.id, false, 1)
        );
        let parts = parts_to_list(l.conn(), first.id, &[], 10).unwrap();
        let shown: Vec<_> = parts
            .iter()
            .map(|p| (p.prefix.as_str(), p.marker.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("pre/", Some("pre/x.mp4")),
                ("pre/a/", None),
                ("pre/b/", None)
            ]
        );
        assert_eq!(
            parts_to_list(l.conn(), first.id, &[parts[0].id], 1).unwrap()[0].prefix,
            "pre/a/"
        );
        for part in &parts {
            record_page(
                l.conn(),
                &scope,
                &page(first.id, part.id, &[], None, &[]),
                OnChanged::Report,
            )
            .unwrap();
        }
        // Listed to its end by a run that then died: nothing to continue; naming the bucket
        // again lists it anew (objects uploaded since are found only so).
        assert!(
            unfinished(l.conn(), &scope).unwrap().is_empty(),
            "a listing at its end is nothing to continue"
        );
        let fresh = open_listing(l.conn(), &scope, "b", "pre/", false).unwrap();
        assert_ne!(fresh.id, first.id);
        assert!(!fresh.listed);
        assert_eq!(unfinished(l.conn(), &scope).unwrap().len(), 1);
        close_listing(l.conn(), fresh.id).unwrap();
        let again = open_listing(l.conn(), &scope, "b", "pre/", false).unwrap();
        assert_ne!(again.id, fresh.id);
    }

    #[test]
    fn changed_objects_are_noted_or_queued_again() {
        for (mode, state) in [
            (OnChanged::Report, State::Registered),
            (OnChanged::Reimport, State::Pending),
        ] {
            let l = Ledger::open_in_memory().unwrap();
            let scope = Scope::open(l.conn(), "http://mi.test", "w", "p").unwrap();
            let listing = open_listing(l.conn(), &scope, "b", "", true).unwrap().id;
            let part = parts_to_list(l.conn(), listing, &[], 1).unwrap()[0].id;
            let keys = [object("a.mp4", "e1", 5), object("b.mp4", "e1", 5)];
            record_page(
                l.conn(),
                &scope,
                &page(listing, part, &keys, Some("b.mp4"), &[]),
                mode,
            )
            .unwrap();
            let claimed = claim(l.conn(), &scope, 10, 1, now_ms()).unwrap();
            let outcomes: Vec<Outcome> = claimed
                .iter()
                .map(|c| Outcome {
                    id: c.id,
                    state: Some(State::Registered),
                    asset_id: Some(c.id + 10),
                    ..Default::default()
                })
                .collect();
            record(l.conn(), &outcomes, 1, crate::runner::pace::FIRST_LOOK).unwrap();
            let keys = [object("a.mp4", "e2", 5), object("b.mp4", "e1", 5)];
            let (counts, _) = record_page(
                l.conn(),
                &scope,
                &page(listing, part, &keys, None, &[]),
                mode,
            )
            .unwrap();
            assert_eq!((counts.known, counts.changed), (2, 1), "{mode:?}");
            let (st, asset): (State, Option<i64>) = l
                .conn()
                .query_row(
                    "SELECT state, asset_id FROM keys WHERE key = 'a.mp4'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(st, state, "{mode:?}");
            if mode == OnChanged::Reimport {
                assert_eq!(asset, None);
                let kept: i64 = l
                    .conn()
                    .query_row("SELECT asset_id FROM asset_history", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(kept, claimed[0].id + 10, "the old asset is remembered");
            }
        }
    }
}
