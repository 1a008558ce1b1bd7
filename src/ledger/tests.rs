use super::keys::*;
use super::scopes::*;
use super::*;
use crate::clock::{ms_text, now_ms};
use crate::ledger::unsure::{Decision, Refused, apply_verdicts, decide, owned_among};
use crate::reconcile::Verdict;
use std::time::Duration;

fn scope(l: &Ledger) -> Scope {
    Scope::open(l.conn(), "http://mi.test", "ws", "1").unwrap()
}

fn key(k: &str) -> NewKey {
    NewKey::new("b", k)
}

fn sized(k: &str, size: u64, skip: Option<&str>) -> NewKey {
    NewKey {
        size: Some(size),
        skip_reason: skip.map(Into::into),
        ..key(k)
    }
}

fn state_of(l: &Ledger, k: &str) -> State {
    l.conn()
        .query_row("SELECT state FROM keys WHERE key = ?1", [k], |r| r.get(0))
        .unwrap()
}

/// A ledger holding `n` keys (`k0.mp4`, …) that MI registered, each with an asset ID of its
/// own, for the tests of what comes after registration.
pub(super) fn registered_ledger(n: usize) -> (Ledger, Scope) {
    let l = Ledger::open_in_memory().unwrap();
    let scope = Scope::open(l.conn(), "http://mi.test", "w", "p").unwrap();
    let keys: Vec<NewKey> = (0..n).map(|i| key(&format!("k{i}.mp4"))).collect();
    insert_keys(l.conn(), &scope, &keys, OnChanged::Report).unwrap();
    let outcomes: Vec<Outcome> = claim(l.conn(), &scope, n, 1, now_ms())
        .unwrap()
        .iter()
        .map(|c| Outcome {
            id: c.id,
            state: Some(State::Registered),
            attempts: 1,
            asset_id: Some(c.id + 1000),
            ..Default::default()
        })
        .collect();
    record(l.conn(), &outcomes, 1, crate::runner::pace::FIRST_LOOK).unwrap();
    (l, scope)
}

fn insert(l: &Ledger, s: &Scope, keys: &[NewKey]) -> Ingested {
    insert_keys(l.conn(), s, keys, OnChanged::Report).unwrap()
}

/// Claims and registers every pending key, each asset numbered 1000 + its row id.
fn register_all(l: &Ledger, s: &Scope) -> Vec<Claimed> {
    let claimed = claim(l.conn(), s, 1000, 1, now_ms()).unwrap();
    let outcomes: Vec<Outcome> = claimed
        .iter()
        .map(|c| Outcome {
            id: c.id,
            state: Some(State::Registered),
            attempts: 1,
            asset_id: Some(1000 + c.id),
            trace_id: Some("t-ok".into()),
            ..Default::default()
        })
        .collect();
    record(l.conn(), &outcomes, 1, crate::runner::pace::FIRST_LOOK).unwrap();
    claimed
}

#[test]
fn migrating_twice_is_harmless_and_sets_user_version() {
    let mut l = Ledger::open_in_memory().unwrap();
    migrate(l.conn_mut()).unwrap();
    let v: usize = l
        .conn()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, open::schema_version());
}

#[test]
fn refuses_a_ledger_from_a_newer_version() {
    let mut l = Ledger::open_in_memory().unwrap();
    l.conn().pragma_update(None, "user_version", 99).unwrap();
    let err = migrate(l.conn_mut()).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// A ledger written by the previous schema (version 5) keeps every key, state, asset, time
/// and open listing through the rebuild.
#[test]
fn a_version_5_ledger_is_carried_over_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for sql in [
            include_str!("../../migrations/0001_keys_and_runs.sql"),
            include_str!("../../migrations/0002_confirmation.sql"),
            include_str!("../../migrations/0003_listings.sql"),
            include_str!("../../migrations/0004_manifests.sql"),
            include_str!("../../migrations/0005_due_checks.sql"),
        ] {
            tx.execute_batch(sql).unwrap();
        }
        tx.execute_batch(
            "INSERT INTO keys (workspace, project, bucket, key, state, asset_id, first_seen_at, updated_at, registered_at, next_check_at, previous_asset_id, changed_at)
             VALUES ('ws', '1', 'b', 'a.mp4', 'registered', 77, '2026-01-02T03:04:05.678Z', '2026-01-02T03:04:06.000Z', '2026-01-02T03:04:06.000Z', 123, 66, '2026-01-02T03:00:00.000Z');
             INSERT INTO keys (workspace, project, bucket, key, state, first_seen_at, updated_at)
             VALUES ('ws', '1', 'b', 'b.mp4', 'in_flight', '2026-01-02T03:04:05.678Z', '2026-01-02T03:04:07.000Z');
             INSERT INTO keys (workspace, project, bucket, key, state, message, first_seen_at, updated_at)
             VALUES ('ws', '2', 'c', 'dir/', 'skipped', 'folder marker', '2026-01-02T03:04:05.678Z', '2026-01-02T03:04:05.678Z');
             INSERT INTO listings (workspace, project, bucket, prefix, marker, pages, objects, started_at)
             VALUES ('ws', '1', 'b', 'pre/', 'pre/x.mp4', 3, 2500, '2026-01-02T03:00:00.000Z');
             PRAGMA user_version = 5;",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let l = Ledger::open(&path).unwrap();
    // A scope from before endpoints were kept is adopted by the first that uses it.
    let s = Scope::open(l.conn(), "http://mi.test", "ws", "1").unwrap();
    assert_eq!(
        Scope::named(l.conn(), "ws", "1").unwrap(),
        std::slice::from_ref(&s)
    );
    assert_eq!(
        count_in(&counts(l.conn(), Some(&s)).unwrap(), State::Registered),
        1
    );
    let (asset, first_seen, next): (i64, i64, i64) = l
        .conn()
        .query_row(
            "SELECT asset_id, first_seen_at, next_check_at FROM keys WHERE key = 'a.mp4'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((asset, next), (77, 123));
    assert_eq!(ms_text(first_seen), "2026-01-02T03:04:05.678Z");
    assert_eq!(state_of(&l, "b.mp4"), State::InFlight);
    assert_eq!(
        owned_among(l.conn(), &s, &[66, 77, 5]).unwrap().len(),
        2,
        "the old asset too"
    );
    let other = Scope::open(l.conn(), "http://mi.test", "ws", "2").unwrap();
    assert_eq!(
        skip_reasons(l.conn(), &other).unwrap(),
        [("folder marker".to_string(), 1)]
    );
    let listing = listings::open_listing(l.conn(), &s, "b", "pre/", false).unwrap();
    assert_eq!(listing.pages, 3);
    let parts = listings::parts_to_list(l.conn(), listing.id, &[], 10).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (parts[0].flat, parts[0].marker.as_deref()),
        (true, Some("pre/x.mp4")),
        "an old listing goes on flat from its marker"
    );
}

#[test]
fn duplicate_keys_are_recorded_once_and_another_project_is_another_row() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    let got = insert(&l, &s, &[key("a"), key("b"), key("a")]);
    assert_eq!((got.new, got.new_skipped, got.known), (2, 0, 1));
    assert_eq!(insert(&l, &s, &[key("a")]).known, 1);
    let other = Scope::open(l.conn(), "http://mi.test", "ws", "2").unwrap();
    assert_eq!(insert(&l, &other, &[key("a")]).new, 1);
}

#[test]
fn claim_marks_in_flight_in_order_from_its_moment_and_never_twice() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b"), key("c")]);
    let first = claim(l.conn(), &s, 2, 7, 5_000).unwrap();
    assert_eq!(
        first.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(first[0].bucket, "b");
    assert_eq!(state_of(&l, "a"), State::InFlight);
    let sent: i64 = l
        .conn()
        .query_row("SELECT sent_at FROM keys WHERE key = 'a'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sent, 5_000);
    assert_eq!(claim(l.conn(), &s, 10, 7, 6_000).unwrap().len(), 1);
    assert!(claim(l.conn(), &s, 10, 7, 7_000).unwrap().is_empty());
}

#[test]
fn record_changes_only_in_flight_rows_and_keeps_trace_ids_of_failures() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b"), key("c")]);
    let c = claim(l.conn(), &s, 2, 1, now_ms()).unwrap();
    let done = Outcome {
        id: c[0].id,
        state: Some(State::Registered),
        attempts: 2,
        asset_id: Some(77),
        trace_id: Some("t-1".into()),
        ..Default::default()
    };
    let refused = Outcome {
        id: c[1].id,
        state: Some(State::Failed),
        attempts: 1,
        http_status: Some(400),
        trace_id: Some("t-2".into()),
        ..Default::default()
    };
    assert_eq!(
        record(
            l.conn(),
            &[done.clone(), refused],
            3,
            crate::runner::pace::FIRST_LOOK
        )
        .unwrap(),
        2
    );
    // A second answer for the same row (or one for a row never claimed) changes nothing.
    assert_eq!(
        record(l.conn(), &[done], 3, crate::runner::pace::FIRST_LOOK).unwrap(),
        0
    );
    let row = |k: &str| -> (State, Option<i64>, u32, Option<String>, Option<i64>) {
        l.conn()
            .query_row(
                "SELECT state, asset_id, attempts, trace_id, run FROM keys WHERE key = ?1",
                [k],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap()
    };
    assert_eq!(row("a"), (State::Registered, Some(77), 2, None, Some(3)));
    assert_eq!(
        row("b"),
        (State::Failed, None, 1, Some("t-2".into()), Some(3))
    );
    assert_eq!(state_of(&l, "c"), State::Pending);
    assert_eq!(
        trouble_of_run(l.conn(), &s, 3).unwrap(),
        [(State::Failed, 1)],
        "the run's own failures decide its exit code"
    );
    assert!(trouble_of_run(l.conn(), &s, 4).unwrap().is_empty());
}

#[test]
fn a_dead_runs_keys_become_uncertain_from_its_heartbeat_plus_its_timeout() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b")]);
    let dead = start_run(
        l.conn(),
        "run",
        Some(&s),
        Duration::from_secs(30),
        crate::runner::pace::HEARTBEAT,
    )
    .unwrap();
    l.conn()
        .execute("UPDATE runs SET alive_at = 10000 WHERE id = ?1", [dead])
        .unwrap();
    claim(l.conn(), &s, 2, dead, 9_000).unwrap();
    assert_eq!(
        mark_in_flight_uncertain(
            l.conn(),
            &s,
            dead + 1,
            900_000,
            crate::runner::pace::LATE_SLACK
        )
        .unwrap(),
        2
    );
    let (state, unsure): (State, i64) = l
        .conn()
        .query_row(
            "SELECT state, unsure_at FROM keys WHERE key = 'a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state, unsure), (State::Uncertain, 10_000 + 5_000 + 30_000));
}

/// The moment a dead run's keys became unknown follows the heartbeat floor the run itself
/// recorded, lowered or not; a run recorded before runs kept theirs kept 5 s.
#[test]
fn a_dead_runs_unknown_moment_follows_the_heartbeat_it_kept() {
    for (kept, expected) in [(Some(200), 200), (None, 5_000)] {
        let l = Ledger::open_in_memory().unwrap();
        let s = scope(&l);
        insert(&l, &s, &[key("a")]);
        let heartbeat = Duration::from_millis(kept.unwrap_or(5_000));
        let dead = start_run(
            l.conn(),
            "run",
            Some(&s),
            Duration::from_secs(30),
            heartbeat,
        )
        .unwrap();
        l.conn()
            .execute(
                "UPDATE runs SET alive_at = 10000, heartbeat_ms = ?2 WHERE id = ?1",
                rusqlite::params![dead, kept],
            )
            .unwrap();
        claim(l.conn(), &s, 1, dead, 9_000).unwrap();
        mark_in_flight_uncertain(l.conn(), &s, dead + 1, 900_000, Duration::ZERO).unwrap();
        let unsure: i64 = l
            .conn()
            .query_row("SELECT unsure_at FROM keys WHERE key = 'a'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            unsure,
            10_000 + expected + 30_000,
            "heartbeat kept: {kept:?}"
        );
    }
}

#[test]
fn verdicts_settle_uncertain_keys_each_its_way() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b"), key("c"), key("d")]);
    let ids: Vec<i64> = claim(l.conn(), &s, 4, 1, now_ms())
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    mark_in_flight_uncertain(l.conn(), &s, 2, now_ms(), crate::runner::pace::LATE_SLACK).unwrap();
    let verdicts = [
        (ids[0], Verdict::Registered(5)),
        (ids[1], Verdict::NotRegistered),
        (ids[2], Verdict::Ambiguous(vec![8, 9])),
        (ids[3], Verdict::Wait),
    ];
    let settled = apply_verdicts(l.conn(), &verdicts, &Default::default(), now_ms(), 2).unwrap();
    assert_eq!(
        (
            settled.registered,
            settled.resend,
            settled.ambiguous,
            settled.waiting
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(state_of(&l, "a"), State::Registered);
    assert_eq!(state_of(&l, "b"), State::Pending);
    let unsure = unsure::uncertain_keys(l.conn(), &s).unwrap();
    assert_eq!(unsure.len(), 2);
    assert_eq!(unsure[0].candidates, Some(vec![8, 9]));
    assert_eq!(unsure[1].candidates, None);
    assert_eq!(owned_among(l.conn(), &s, &[5, 8]).unwrap(), [5].into());
}

#[test]
fn resolve_gives_an_asset_or_sends_again_and_refuses_what_it_must() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b"), key("taken")]);
    let claimed = register_all(&l, &s);
    let taken_asset = 1000 + claimed[2].id;
    l.conn()
        .execute(
            "UPDATE keys SET state = 2, asset_id = NULL WHERE key IN ('a', 'b')",
            [],
        )
        .unwrap();
    assert_eq!(
        decide(
            l.conn(),
            &s,
            "b",
            "a",
            &Decision::Asset(taken_asset),
            9,
            Duration::from_secs(3)
        )
        .unwrap(),
        Err(Refused::Owned {
            asset: taken_asset,
            owner: "taken".into()
        })
    );
    assert!(
        decide(
            l.conn(),
            &s,
            "b",
            "a",
            &Decision::Asset(55),
            9,
            Duration::from_secs(3)
        )
        .unwrap()
        .is_ok()
    );
    assert_eq!(state_of(&l, "a"), State::Registered);
    assert!(
        decide(
            l.conn(),
            &s,
            "b",
            "b",
            &Decision::NotRegistered,
            9,
            Duration::from_secs(3)
        )
        .unwrap()
        .is_ok()
    );
    assert_eq!(state_of(&l, "b"), State::Pending);
    assert!(
        matches!(
            decide(
                l.conn(),
                &s,
                "b",
                "taken",
                &Decision::NotRegistered,
                9,
                Duration::from_secs(3)
            )
            .unwrap(),
            Err(Refused::NotUncertain { .. })
        ),
        "a key MI's own answer registered is not settled by hand"
    );
    // Settled by hand and not confirmed yet: the choice can be corrected by hand.
    assert!(
        decide(
            l.conn(),
            &s,
            "b",
            "a",
            &Decision::Asset(56),
            9,
            Duration::from_secs(3)
        )
        .unwrap()
        .is_ok()
    );
    l.conn()
        .execute("UPDATE keys SET state = 4 WHERE key = 'a'", [])
        .unwrap();
    assert!(matches!(
        decide(
            l.conn(),
            &s,
            "b",
            "a",
            &Decision::NotRegistered,
            9,
            Duration::from_secs(3)
        )
        .unwrap(),
        Err(Refused::NotUncertain { .. })
    ));
    assert!(matches!(
        decide(
            l.conn(),
            &s,
            "b",
            "nope",
            &Decision::NotRegistered,
            9,
            Duration::from_secs(3)
        )
        .unwrap(),
        Err(Refused::NoSuchKey { .. })
    ));
    let events: i64 = l
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM events WHERE action = 'resolve'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(events, 3, "each decision is recorded");
}

#[test]
fn a_skipped_key_is_judged_again_when_its_object_changes() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[sized("empty.mp4", 0, Some("0 bytes"))]);
    // Seen again unchanged: still skipped.
    insert(&l, &s, &[sized("empty.mp4", 0, Some("0 bytes"))]);
    assert_eq!(state_of(&l, "empty.mp4"), State::Skipped);
    // Filled with the real file: eligible, so it is queued.
    let got = insert(&l, &s, &[sized("empty.mp4", 5_000, None)]);
    assert_eq!((got.changed, got.requeued), (1, 1));
    assert_eq!(state_of(&l, "empty.mp4"), State::Pending);
    // Replaced by one still too large: skipped with the new reason.
    insert(&l, &s, &[sized("big.jpg", 20_000_000, Some("too large"))]);
    insert(
        &l,
        &s,
        &[sized("big.jpg", 30_000_000, Some("still too large"))],
    );
    let message: String = l
        .conn()
        .query_row("SELECT message FROM keys WHERE key = 'big.jpg'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(message, "still too large");
}

#[test]
fn a_changed_object_whose_import_failed_is_sent_again_and_its_asset_remembered() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(
        &l,
        &s,
        &[sized("a.mp4", 10, None), sized("b.mp4", 10, None)],
    );
    let claimed = register_all(&l, &s);
    l.conn()
        .execute("UPDATE keys SET state = 5 WHERE key = 'a.mp4'", [])
        .unwrap();
    let got = insert(
        &l,
        &s,
        &[sized("a.mp4", 11, None), sized("b.mp4", 12, None)],
    );
    assert_eq!((got.changed, got.requeued), (2, 1));
    assert_eq!(state_of(&l, "a.mp4"), State::Pending);
    assert_eq!(
        state_of(&l, "b.mp4"),
        State::Registered,
        "noted, left alone"
    );
    let history: i64 = l
        .conn()
        .query_row("SELECT asset_id FROM asset_history", [], |r| r.get(0))
        .unwrap();
    assert_eq!(history, 1000 + claimed[0].id);
}

#[test]
fn requeue_sends_failed_or_import_failed_keys_again() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b")]);
    register_all(&l, &s);
    l.conn()
        .execute("UPDATE keys SET state = 5 WHERE key = 'a'", [])
        .unwrap();
    assert_eq!(requeue(l.conn(), &s, State::ImportFailed).unwrap(), 1);
    assert_eq!(state_of(&l, "a"), State::Pending);
    assert_eq!(owned_among(l.conn(), &s, &[1001]).unwrap().len(), 1);
}

#[test]
fn ownership_is_per_scope_and_the_endpoint_names_the_scope() {
    let l = Ledger::open_in_memory().unwrap();
    let a = scope(&l);
    let b = Scope::open(l.conn(), "http://other.test", "ws", "1").unwrap();
    assert_ne!(
        a.id, b.id,
        "the same project at another endpoint is another scope"
    );
    insert(&l, &a, &[key("x")]);
    insert(&l, &b, &[key("y")]);
    register_all(&l, &a);
    let owned_in_a: Vec<i64> = owned_among(l.conn(), &a, &[1000, 1001, 1002, 1003])
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(owned_in_a.len(), 1);
    assert!(
        owned_among(l.conn(), &b, &owned_in_a).unwrap().is_empty(),
        "what project A owns rules nothing out in B"
    );
}

#[test]
fn key_rows_are_never_numbered_again_and_forget_takes_their_analyses() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b")]);
    register_all(&l, &s);
    l.conn().execute("UPDATE keys SET state = 4", []).unwrap();
    let analysed = analyses::claim_for_analysis(
        l.conn(),
        &s,
        0,
        10,
        analyses::Pick {
            again_failed: false,
            asked_only: false,
        },
        1,
    )
    .unwrap();
    assert_eq!(analysed.len(), 2);
    let highest: i64 = l
        .conn()
        .query_row("SELECT MAX(id) FROM keys", [], |r| r.get(0))
        .unwrap();
    forget_scope(l.conn(), &s).unwrap();
    let left: i64 = l
        .conn()
        .query_row("SELECT COUNT(*) FROM analyses", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "forget removes the scope's analyses");
    let s = scope(&l);
    insert(&l, &s, &[key("c")]);
    let id: i64 = l
        .conn()
        .query_row("SELECT id FROM keys WHERE key = 'c'", [], |r| r.get(0))
        .unwrap();
    assert!(id > highest, "row {id} reuses a number up to {highest}");
}

#[test]
fn skipped_keys_keep_their_reason_and_count_per_state() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    let mut folder = key("dir/");
    folder.skip_reason = Some("folder marker".into());
    let got = insert(&l, &s, &[folder, key("x.mp4")]);
    assert_eq!((got.new, got.new_skipped), (1, 1));
    let counts = counts(l.conn(), Some(&s)).unwrap();
    assert_eq!(
        (
            count_in(&counts, State::Skipped),
            count_in(&counts, State::Pending),
            count_in(&counts, State::Failed)
        ),
        (1, 1, 0)
    );
}

#[test]
fn a_scope_is_forgotten_whole_and_an_empty_one_quietly() {
    let l = Ledger::open_in_memory().unwrap();
    let s = scope(&l);
    insert(&l, &s, &[key("a"), key("b")]);
    let typo = Scope::open(l.conn(), "http://mi.test", "wz", "1").unwrap();
    forget_scope_if_empty(l.conn(), &typo).unwrap();
    forget_scope_if_empty(l.conn(), &s).unwrap();
    assert_eq!(Scope::all(l.conn()).unwrap(), std::slice::from_ref(&s));
    assert_eq!(forget_scope(l.conn(), &s).unwrap(), 2);
    assert!(Scope::all(l.conn()).unwrap().is_empty());
    assert_eq!(
        counts(l.conn(), None)
            .unwrap()
            .iter()
            .map(|c| c.1)
            .sum::<u64>(),
        0
    );
}

#[test]
fn places_that_cannot_hold_a_ledger_are_named_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (dir.path().join("nowhere/l.db"), "does not exist"),
        (dir.path().to_path_buf(), "is a folder"),
    ];
    for (path, said) in cases {
        let err = format!("{:#}", Ledger::open(&path).err().unwrap());
        assert!(err.contains(said) && err.contains("hint:"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        "this is not a database, just some text long enough".repeat(100),
    )
    .unwrap();
    let err = format!("{:#}", Ledger::open(&junk).err().unwrap());
    assert!(err.contains("not an mi-import ledger"), "{err}");
    let foreign = dir.path().join("other.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE photos (id INTEGER)")
        .unwrap();
    let err = format!("{:#}", Ledger::open(&foreign).err().unwrap());
    assert!(err.contains("another program"), "{err}");
    for case in [&junk, &foreign] {
        let e = Ledger::open(case).err().unwrap();
        assert_eq!(crate::exit::for_error(&e), crate::exit::Exit::Usage);
    }
}

/// A run and a `status` (or two cron runs) may open a fresh ledger at the same moment;
/// neither may fail with "database is locked".
#[test]
fn processes_opening_a_fresh_ledger_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut errors = Vec::new();
    for i in 0..100 {
        let path = dir.path().join(format!("l{i}.db"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
        let openers: Vec<_> = (0..3)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Ledger::open(&path).map(drop).map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        errors.extend(openers.into_iter().filter_map(|t| t.join().unwrap().err()));
    }
    assert!(
        errors.is_empty(),
        "{} failed opens: {:?}",
        errors.len(),
        errors.first()
    );
}
