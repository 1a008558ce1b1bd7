//! The `asset_details` table: what MI's asset details said an asset was made from (its object
//! key and bucket, where they say it), kept so that each asset is asked once per scope.

use rusqlite::{Connection, params};
use std::collections::HashMap;

use super::Scope;
use crate::clock::now_ms;
use crate::reconcile::Detail;

/// What the ledger knows of `ids`' details, for those it knows.
pub fn known(
    conn: &Connection,
    scope: &Scope,
    ids: &[i64],
) -> rusqlite::Result<HashMap<i64, Detail>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, bucket FROM asset_details WHERE scope = ?1 AND asset_id = ?2",
    )?;
    let mut found = HashMap::new();
    for id in ids {
        let mut rows = stmt.query(params![scope.id, id])?;
        if let Some(row) = rows.next()? {
            found.insert(
                *id,
                Detail {
                    key: row.get(0)?,
                    bucket: row.get(1)?,
                },
            );
        }
    }
    Ok(found)
}

/// Keeps what asset `id`'s details said.
pub fn keep(conn: &Connection, scope: &Scope, id: i64, detail: &Detail) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO asset_details (scope, asset_id, key, bucket, at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (scope, asset_id) DO UPDATE SET key = excluded.key, bucket = excluded.bucket,
             at = excluded.at",
    )?
    .execute(params![scope.id, id, detail.key, detail.bucket, now_ms()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_kept_per_scope_and_read_back_for_the_ids_asked() {
        let ledger = crate::ledger::Ledger::open_in_memory().unwrap();
        let conn = ledger.conn();
        let a = Scope::open(conn, "http://mi.test", "w", "1").unwrap();
        let b = Scope::open(conn, "http://mi.test", "w", "2").unwrap();
        let detail = Detail {
            key: Some("day01/cam1/take\tone.mp4".into()),
            bucket: Some("media".into()),
        };
        keep(conn, &a, 7, &detail).unwrap();
        keep(
            conn,
            &a,
            8,
            &Detail {
                key: None,
                bucket: None,
            },
        )
        .unwrap();
        let got = known(conn, &a, &[7, 8, 9]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[&7], detail, "exact, a TAB included");
        assert_eq!(got[&8].key, None);
        assert!(known(conn, &b, &[7]).unwrap().is_empty(), "another scope's");
    }
}
