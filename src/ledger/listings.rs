//! Statements for bucket listings: where a listing stands, and objects found by it (which,
//! unlike manifest rows, carry ETag and size, so a changed object can be noticed).

use rusqlite::{Connection, OptionalExtension, params};

use super::{Ingested, NOW, NewKey, Scope, insert_keys};

/// A listing to continue or start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingState {
    pub id: i64,
    /// Continue after this key; `None` to start at the beginning.
    pub marker: Option<String>,
    /// The listing already reached the end: only dispatch is left.
    pub listed: bool,
}

/// What to do with an object that changed since it was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnChanged {
    /// Note it in the ledger and the report; leave the asset as it is.
    Report,
    /// Register it again (a new asset; the old one stays in MI).
    Reimport,
}

/// The open listing of (bucket, prefix) left by a run that did not finish, or a new one.
pub fn open_listing(
    conn: &Connection,
    scope: &Scope,
    bucket: &str,
    prefix: &str,
) -> rusqlite::Result<ListingState> {
    let open = conn
        .query_row(
            "SELECT id, marker, listed_at IS NOT NULL FROM listings
             WHERE workspace = ?1 AND project = ?2 AND bucket = ?3 AND prefix = ?4 AND closed_at IS NULL
             ORDER BY id DESC LIMIT 1",
            params![scope.workspace, scope.project, bucket, prefix],
            |r| Ok(ListingState { id: r.get(0)?, marker: r.get(1)?, listed: r.get(2)? }),
        )
        .optional()?;
    if let Some(open) = open {
        return Ok(open);
    }
    let id = new_listing(conn, scope, bucket, prefix)?;
    Ok(ListingState {
        id,
        marker: None,
        listed: false,
    })
}

/// Starts a listing from the beginning; returns its id.
pub fn new_listing(
    conn: &Connection,
    scope: &Scope,
    bucket: &str,
    prefix: &str,
) -> rusqlite::Result<i64> {
    conn.execute(
        &format!(
            "INSERT INTO listings (workspace, project, bucket, prefix, started_at)
             VALUES (?1, ?2, ?3, ?4, {NOW})"
        ),
        params![scope.workspace, scope.project, bucket, prefix],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Records one page: its keys, and the listing's new position, in the caller's transaction.
/// Returns the ingest counts and how many known objects were found changed.
pub fn record_page(
    conn: &Connection,
    scope: &Scope,
    listing: i64,
    keys: &[NewKey],
    seen: u64,
    next_marker: Option<&str>,
    on_changed: OnChanged,
) -> rusqlite::Result<(Ingested, u64)> {
    let counts = insert_keys(conn, scope, keys)?;
    let mut changed = 0;
    if counts.known > 0 {
        changed = mark_changed(conn, scope, keys, on_changed)?;
    }
    conn.execute(
        &format!(
            "UPDATE listings SET marker = COALESCE(?2, marker), pages = pages + 1, objects = objects + ?3,
                 listed_at = CASE WHEN ?2 IS NULL THEN {NOW} ELSE NULL END
             WHERE id = ?1"
        ),
        params![listing, next_marker, seen as i64],
    )?;
    Ok((counts, changed))
}

/// Known, registered objects whose ETag or size differ from what was recorded.
fn mark_changed(
    conn: &Connection,
    scope: &Scope,
    keys: &[NewKey],
    on_changed: OnChanged,
) -> rusqlite::Result<u64> {
    let reimport = on_changed == OnChanged::Reimport;
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE keys SET changed_at = {NOW}, updated_at = {NOW},
             message = CASE WHEN ?7 THEN 'object changed since registration; registered again'
                            ELSE 'object changed since registration (ETag or size); left as it is' END,
             previous_asset_id = CASE WHEN ?7 THEN asset_id ELSE previous_asset_id END,
             asset_id = CASE WHEN ?7 THEN NULL ELSE asset_id END,
             state = CASE WHEN ?7 THEN 'pending' ELSE state END,
             upload_status = CASE WHEN ?7 THEN NULL ELSE upload_status END,
             upload_result = CASE WHEN ?7 THEN NULL ELSE upload_result END,
             etag = ?5, size = ?6
         WHERE workspace = ?1 AND project = ?2 AND bucket = ?3 AND key = ?4
           AND state IN ('registered', 'completed', 'import_failed')
           AND ((etag IS NOT NULL AND ?5 IS NOT NULL AND etag <> ?5)
                OR (size IS NOT NULL AND ?6 IS NOT NULL AND size <> ?6))"
    ))?;
    let mut changed = 0;
    for k in keys.iter().filter(|k| k.skip_reason.is_none()) {
        let size = k.size.map(|s| s as i64);
        changed += stmt.execute(params![
            scope.workspace,
            scope.project,
            k.bucket,
            k.key,
            k.etag,
            size,
            reimport
        ])? as u64;
    }
    Ok(changed)
}

/// The run that owned the listing finished: the next run lists from the start.
pub fn close_listing(conn: &Connection, listing: i64) -> rusqlite::Result<()> {
    conn.execute(
        &format!("UPDATE listings SET closed_at = {NOW} WHERE id = ?1"),
        params![listing],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, Outcome, State, claim, record};

    fn scope() -> Scope {
        Scope {
            workspace: "w".into(),
            project: "p".into(),
        }
    }

    fn object(key: &str, etag: &str, size: u64) -> NewKey {
        NewKey {
            bucket: "b".into(),
            key: key.into(),
            size: Some(size),
            etag: Some(etag.into()),
            last_modified: None,
            skip_reason: None,
        }
    }

    #[test]
    fn an_unfinished_listing_resumes_and_a_closed_one_starts_over() {
        let l = Ledger::open_in_memory().unwrap();
        let first = open_listing(l.conn(), &scope(), "b", "pre/").unwrap();
        assert_eq!(first.marker, None);
        record_page(
            l.conn(),
            &scope(),
            first.id,
            &[object("pre/a.mp4", "e1", 5)],
            1,
            Some("pre/a.mp4"),
            OnChanged::Report,
        )
        .unwrap();
        let resumed = open_listing(l.conn(), &scope(), "b", "pre/").unwrap();
        assert_eq!(
            (resumed.id, resumed.marker.as_deref(), resumed.listed),
            (first.id, Some("pre/a.mp4"), false)
        );
        record_page(
            l.conn(),
            &scope(),
            first.id,
            &[],
            0,
            None,
            OnChanged::Report,
        )
        .unwrap();
        assert!(
            open_listing(l.conn(), &scope(), "b", "pre/")
                .unwrap()
                .listed
        );
        close_listing(l.conn(), first.id).unwrap();
        let fresh = open_listing(l.conn(), &scope(), "b", "pre/").unwrap();
        assert_ne!(fresh.id, first.id);
        assert_eq!(fresh.marker, None);
    }

    #[test]
    fn changed_objects_are_noted_or_queued_again() {
        for (mode, state) in [
            (OnChanged::Report, "registered"),
            (OnChanged::Reimport, "pending"),
        ] {
            let l = Ledger::open_in_memory().unwrap();
            let listing = open_listing(l.conn(), &scope(), "b", "").unwrap().id;
            record_page(
                l.conn(),
                &scope(),
                listing,
                &[object("a.mp4", "e1", 5), object("b.mp4", "e1", 5)],
                2,
                None,
                mode,
            )
            .unwrap();
            let claimed = claim(l.conn(), &scope(), 10).unwrap();
            let outcomes: Vec<Outcome> = claimed
                .iter()
                .map(|c| Outcome {
                    id: c.id,
                    state: Some(State::Registered),
                    asset_id: Some(c.id + 10),
                    ..Default::default()
                })
                .collect();
            record(l.conn(), &outcomes).unwrap();
            let page = [object("a.mp4", "e2", 5), object("b.mp4", "e1", 5)];
            let (counts, changed) =
                record_page(l.conn(), &scope(), listing, &page, 2, None, mode).unwrap();
            assert_eq!((counts.known, changed), (2, 1), "{mode:?}");
            let (st, asset, previous): (String, Option<i64>, Option<i64>) = l
                .conn()
                .query_row(
                    "SELECT state, asset_id, previous_asset_id FROM keys WHERE key = 'a.mp4'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            assert_eq!(st, state, "{mode:?}");
            if mode == OnChanged::Reimport {
                assert_eq!((asset, previous), (None, Some(claimed[0].id + 10)));
            }
        }
    }
}
