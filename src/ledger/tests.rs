use super::*;

fn scope() -> Scope {
    Scope {
        workspace: "ws".into(),
        project: "1".into(),
    }
}

fn key(k: &str) -> NewKey {
    NewKey::new("b", k)
}

fn state_of(l: &Ledger, k: &str) -> String {
    l.conn()
        .query_row("SELECT state FROM keys WHERE key = ?1", [k], |r| r.get(0))
        .unwrap()
}

#[test]
fn migrating_twice_is_harmless_and_sets_user_version() {
    let mut l = Ledger::open_in_memory().unwrap();
    migrate(l.conn_mut()).unwrap();
    let v: usize = l
        .conn()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, MIGRATIONS.len());
}

#[test]
fn refuses_a_ledger_from_a_newer_version() {
    let mut l = Ledger::open_in_memory().unwrap();
    l.conn().pragma_update(None, "user_version", 99).unwrap();
    let err = migrate(l.conn_mut()).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn duplicate_keys_are_recorded_once() {
    let l = Ledger::open_in_memory().unwrap();
    let got = insert_keys(l.conn(), &scope(), &[key("a"), key("b"), key("a")]).unwrap();
    assert_eq!(
        got,
        Ingested {
            new: 2,
            new_skipped: 0,
            known: 1
        }
    );
    let again = insert_keys(l.conn(), &scope(), &[key("a")]).unwrap();
    assert_eq!(again.known, 1);
}

#[test]
fn same_key_in_another_project_is_another_row() {
    let l = Ledger::open_in_memory().unwrap();
    let other = Scope {
        workspace: "ws".into(),
        project: "2".into(),
    };
    insert_keys(l.conn(), &scope(), &[key("a")]).unwrap();
    let got = insert_keys(l.conn(), &other, &[key("a")]).unwrap();
    assert_eq!(got.new, 1);
}

#[test]
fn claim_marks_in_flight_in_order_and_never_twice() {
    let l = Ledger::open_in_memory().unwrap();
    insert_keys(l.conn(), &scope(), &[key("a"), key("b"), key("c")]).unwrap();
    let first = claim(l.conn(), &scope(), 2).unwrap();
    assert_eq!(
        first.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(state_of(&l, "a"), "in_flight");
    let second = claim(l.conn(), &scope(), 10).unwrap();
    assert_eq!(second.len(), 1);
    assert!(claim(l.conn(), &scope(), 10).unwrap().is_empty());
}

#[test]
fn record_changes_only_in_flight_rows() {
    let l = Ledger::open_in_memory().unwrap();
    insert_keys(l.conn(), &scope(), &[key("a"), key("b")]).unwrap();
    let c = claim(l.conn(), &scope(), 1).unwrap();
    let done = Outcome {
        id: c[0].id,
        state: Some(State::Registered),
        attempts: 2,
        asset_id: Some(77),
        ..Default::default()
    };
    assert_eq!(record(l.conn(), std::slice::from_ref(&done)).unwrap(), 1);
    // A second answer for the same row (or one for a row never claimed) changes nothing.
    assert_eq!(record(l.conn(), &[done]).unwrap(), 0);
    let (state, asset, attempts): (String, i64, u32) = l
        .conn()
        .query_row(
            "SELECT state, asset_id, attempts FROM keys WHERE key='a'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), asset, attempts), ("registered", 77, 2));
    assert_eq!(state_of(&l, "b"), "pending");
}

#[test]
fn in_flight_rows_become_uncertain_and_resolve_either_way() {
    let l = Ledger::open_in_memory().unwrap();
    insert_keys(l.conn(), &scope(), &[key("a"), key("b")]).unwrap();
    claim(l.conn(), &scope(), 2).unwrap();
    assert_eq!(mark_in_flight_uncertain(l.conn(), &scope()).unwrap(), 2);
    let unsure = uncertain_keys(l.conn(), &scope()).unwrap();
    resolve_uncertain(l.conn(), &[(unsure[0].id, 5)], &[unsure[1].id]).unwrap();
    assert_eq!(state_of(&l, "a"), "registered");
    assert_eq!(state_of(&l, "b"), "pending");
    assert_eq!(known_asset_ids(l.conn(), &scope()).unwrap(), vec![5]);
}

#[test]
fn skipped_keys_keep_their_reason_and_count_per_state() {
    let l = Ledger::open_in_memory().unwrap();
    let mut folder = key("dir/");
    folder.skip_reason = Some("folder marker".into());
    let got = insert_keys(l.conn(), &scope(), &[folder, key("x.mp4")]).unwrap();
    assert_eq!((got.new, got.new_skipped), (1, 1));
    let counts = counts(l.conn(), Some(&scope())).unwrap();
    let get = |s: State| counts.iter().find(|(st, _)| *st == s).unwrap().1;
    assert_eq!(
        (get(State::Skipped), get(State::Pending), get(State::Failed)),
        (1, 1, 0)
    );
}

#[test]
fn state_names_round_trip() {
    for s in State::ALL {
        assert_eq!(s.as_str().parse::<State>().unwrap(), s);
    }
    assert!("done".parse::<State>().unwrap_err().contains("one of"));
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
