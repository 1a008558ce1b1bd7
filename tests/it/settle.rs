//! No hand work per key: under the hardest reading of MI's asset list (names only their last
//! segment, no times, no sizes, IDs in no order) what the ledger saw of the list settles lost
//! answers, a console upload of the same name made before the run is never taken, and what
//! stays uncertain is shown with its evidence and settled in bulk.

use crate::common::*;
use mi_import::emulator::{Emulator, EmulatorConfig, FileNameMode};
use mi_import::exit::Exit;
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn hardest(config: EmulatorConfig) -> EmulatorConfig {
    EmulatorConfig {
        file_name: FileNameMode::LastSegment,
        list_created_time: false,
        list_size: false,
        random_ids: true,
        ..config
    }
}

/// Keys whose file names are unique in the project.
fn unique_keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("day{:02}/take-{i:04}.mp4", i % 7))
        .collect()
}

fn report(ws: &Workspace) -> Vec<Value> {
    let out = Bin::on_ledger(ws, "report")
        .args(&["--format", "jsonl"])
        .output_now();
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn own_assets(emu: &Emulator) -> std::collections::HashMap<String, i64> {
    emu.assets()
        .into_iter()
        .filter(|a| a.registered)
        .map(|a| (a.key, a.asset_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hardest_reading_with_unique_names_leaves_almost_nothing_uncertain() {
    let ws = Workspace::new();
    let emu = emulator(hardest(EmulatorConfig {
        drop_after: 0.1,
        fail_after_create: 0.05,
        seed: 12,
        ..healthy()
    }))
    .await;
    let keys = unique_keys(200);
    let out = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys))
        .set("--rate", "100")
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(emu.duplicates(), vec![], "registered twice\n{stderr}");
    let c = emu.counters();
    let lost = c.dropped_after + c.failed_after_create;
    assert!(lost >= 15, "{c:?}");
    let own = own_assets(&emu);
    let rows = report(&ws);
    let uncertain = rows.iter().filter(|r| r["state"] == "uncertain").count();
    eprintln!("{uncertain} uncertain of {lost} lost answers");
    assert!(
        uncertain * 100 <= lost as usize,
        "{uncertain} uncertain of {lost} lost\n{stderr}"
    );
    for r in rows.iter().filter(|r| r["state"] == "registered") {
        let key = r["key"].as_str().unwrap();
        assert_eq!(r["asset_id"], own[key], "{key} was given another asset");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_upload_of_the_same_name_made_before_the_run_is_never_taken() {
    let ws = Workspace::new();
    let key = "day01/take-0001.mp4".to_string();
    let emu = emulator(hardest(EmulatorConfig {
        preload: vec![(BUCKET.into(), key.clone())],
        lose_containing: Some("take-0001".into()),
        ..healthy()
    }))
    .await;
    let foreign: Vec<i64> = emu
        .assets()
        .iter()
        .filter(|a| !a.registered)
        .map(|a| a.asset_id)
        .collect();
    let mut keys = unique_keys(20);
    keys.retain(|k| k != &key);
    keys.push(key.clone());
    let out = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys))
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(emu.registrations(BUCKET, &key), 1, "{stderr}");
    let rows = report(&ws);
    let row = rows.iter().find(|r| r["key"] == key.as_str()).unwrap();
    assert_ne!(
        row["asset_id"], foreign[0],
        "the console upload was taken: {row}"
    );
    assert_eq!(row["asset_id"], own_assets(&emu)[&key], "{row}\n{stderr}");
}

/// Two folders' files of one name, both answers lost, nothing to tell them apart: each key
/// uncertain with both assets as candidates. And one key with a sole candidate.
async fn ambiguous_pair() -> (Workspace, Emulator, Vec<String>) {
    let ws = Workspace::new();
    let emu = emulator(hardest(EmulatorConfig {
        lose_containing: Some("twin".into()),
        ..healthy()
    }))
    .await;
    let keys: Vec<String> = ["a/twin.mp4", "b/twin.mp4", "c/alone.mp4"]
        .map(String::from)
        .to_vec();
    let out = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys[..2]))
        .output()
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // A third key left uncertain with its one candidate, as a key lost before any baseline.
    let alone = emu.add_foreign_asset(BUCKET, "c/alone.mp4");
    {
        let ledger = ws.ledger();
        let scope = mi_import::ledger::Scope::open(
            ledger.conn(),
            &emu.endpoint(),
            "demo-workspace",
            "1001",
        )
        .unwrap();
        mi_import::ledger::keys::insert_keys(
            ledger.conn(),
            &scope,
            &[mi_import::ledger::NewKey::new(BUCKET, "c/alone.mp4")],
            mi_import::ledger::OnChanged::Report,
        )
        .unwrap();
        ledger
            .conn()
            .execute(
                "UPDATE keys SET state = 2, sent_at = 1, unsure_at = 2, candidates = ?1 WHERE key = 'c/alone.mp4'",
                [alone.to_string()],
            )
            .unwrap();
    }
    (ws, emu, keys)
}

fn resolve(ws: &Workspace, emu: &Emulator, extra: &[&str]) -> (Option<i32>, String) {
    let out = Bin::against(ws, emu, "resolve").args(extra).output_now();
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncertain_keys_show_their_evidence_and_are_settled_in_bulk() {
    let (ws, emu, keys) = ambiguous_pair().await;
    let own = own_assets(&emu);
    // The evidence, parsed from JSON Lines.
    let rows = report(&ws);
    let twin = rows.iter().find(|r| r["key"] == "a/twin.mp4").unwrap();
    let evidence = twin["evidence"]
        .as_array()
        .unwrap_or_else(|| panic!("{twin}"));
    assert_eq!(evidence.len(), 2, "{twin}");
    for candidate in evidence {
        assert_eq!(candidate["name"], "twin.mp4", "{candidate}");
        assert!(candidate["asset_id"].is_i64());
        assert!(candidate["first_seen"].is_string(), "{candidate}");
        assert!(
            candidate["why"]
                .as_str()
                .unwrap()
                .contains("another uncertain key"),
            "{candidate}"
        );
    }
    let status = Bin::on_ledger(&ws, "status").output().await;
    assert!(
        text(&status.stdout)
            .contains("uncertain keys: 1 with one candidate, 2 with several, 0 with none"),
        "{}",
        text(&status.stdout)
    );

    // A file with one wrong row changes nothing.
    let file = ws.path("settle.csv");
    std::fs::write(
        &file,
        format!(
            "key,asset_id\n{},{}\n{},{}\n",
            keys[0], own[&keys[0]], keys[1], own[&keys[0]]
        ),
    )
    .unwrap();
    let (code, said) = resolve(&ws, &emu, &["--from", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("line 3") && said.contains("too"), "{said}");
    assert_eq!(
        report(&ws)
            .iter()
            .filter(|r| r["state"] == "uncertain")
            .count(),
        3,
        "nothing changed"
    );
    // The report's own CSV, its asset_id column filled in: applied, all of it.
    let csv = Bin::on_ledger(&ws, "report")
        .set("--state", "uncertain")
        .output()
        .await;
    let mut reader = csv::Reader::from_reader(&csv.stdout[..]);
    let headers = reader.headers().unwrap().clone();
    let mut writer = csv::Writer::from_path(&file).unwrap();
    writer.write_record(&headers).unwrap();
    let at = headers.iter().position(|h| h == "asset_id").unwrap();
    let key_at = headers.iter().position(|h| h == "key").unwrap();
    for record in reader.records() {
        let record = record.unwrap();
        let key = record.get(key_at).unwrap().to_owned();
        let mut cells: Vec<String> = record.iter().map(String::from).collect();
        cells[at] = match own.get(&key) {
            Some(id) => id.to_string(),
            None => String::new(),
        };
        writer.write_record(&cells).unwrap();
    }
    writer.flush().unwrap();
    let (code, said) = resolve(&ws, &emu, &["--from", file.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("2 keys would be settled"), "{said}");
    let (code, said) = resolve(&ws, &emu, &["--from", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
    let rows = report(&ws);
    for key in &keys[..2] {
        let row = rows.iter().find(|r| r["key"] == key.as_str()).unwrap();
        assert_eq!(row["asset_id"], own[key], "{row}");
    }

    // The sole candidate, on the user's word: shown first, then given.
    let (code, said) = resolve(&ws, &emu, &["--sole-candidates", "--dry-run"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("`c/alone.mp4` in `media-archive` would be registered as asset"),
        "{said}"
    );
    let (code, said) = resolve(&ws, &emu, &["--sole-candidates"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(report(&ws).iter().all(|r| r["state"] != "uncertain"));
    assert_eq!(emu.duplicates(), vec![]);
}

/// The lag the ledger learned for the list, in ms.
fn learned_lag(ws: &Workspace) -> Option<i64> {
    ws.ledger()
        .conn()
        .query_row(
            "SELECT value FROM facts WHERE name = 'list_lag_ms'",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .and_then(|v| v.parse().ok())
}

fn assert_each_key_has_its_own_asset(ws: &Workspace, emu: &Emulator, keys: &[String], said: &str) {
    assert_eq!(emu.duplicates(), vec![], "registered twice\n{said}");
    let own = own_assets(emu);
    let rows = report(ws);
    for key in keys {
        assert_eq!(emu.registrations(BUCKET, key), 1, "{key}\n{said}");
        let row = rows.iter().find(|r| r["key"] == key.as_str()).unwrap();
        assert_eq!(row["asset_id"], own[key], "{row}\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_are_settled_by_the_lag_the_list_shows_never_below_it() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        rate_503: 0.1,
        drop_before: 0.05,
        drop_after: 0.05,
        list_lag: std::time::Duration::from_millis(1500),
        seed: 5,
        ..healthy()
    })
    .await;
    let keys = crate::common::keys(120, "lag");
    let out = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys))
        .set("--list-settle", "30s")
        .set("--rate", "100")
        .output()
        .await;
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    let c = emu.counters();
    assert!(
        c.dropped_before + c.dropped_after + c.unavailable >= 10,
        "{c:?}"
    );
    assert_each_key_has_its_own_asset(&ws, &emu, &keys, &said);
    let lag = learned_lag(&ws).expect("a lag learned from the ledger's own assets");
    assert!(
        (1500..30_000).contains(&lag),
        "learned {lag} ms for a list 1.5 s late\n{said}"
    );
    assert!(said.contains("a lost answer is looked up"), "{said}");
}

/// On paused time: the three runs wait out a 30 s `--list-settle` between them.
#[tokio::test(start_paused = true)]
async fn a_list_that_grew_slower_since_its_lag_was_learned_sends_nothing_twice() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        drop_after: 0.15,
        drop_before: 0.1,
        lose_containing: Some("lonely".into()),
        seed: 8,
        ..healthy()
    });
    let run = |name: &str, keys: &[String]| {
        let mut job = job(&ws, &emu, ws.manifest(name, keys));
        job.list_settle = std::time::Duration::from_secs(30);
        job.limits.rate = Some(100.0);
        import(job)
    };
    let first = crate::common::keys(60, "quick");
    let out = run("a.csv", &first).await;
    assert_eq!(out.exit, Exit::Success, "{}", out.summary);
    let quick = learned_lag(&ws).expect("learned");
    assert!(quick < 3000, "{quick} ms\n{}", out.summary);
    // The index slows down: new assets now show 4 s late, whatever the ledger learned. A
    // run of one key whose answer is lost has no asset of its own to show that: the list
    // showing the earlier run's assets proves nothing about this key's.
    emu.set_list_lag(std::time::Duration::from_secs(4));
    let lonely = vec!["lonely/take.mp4".to_string()];
    let out = run("b.csv", &lonely).await;
    assert_eq!(out.exit, Exit::Success, "{}", out.summary);
    assert_each_key_has_its_own_asset(&ws, &emu, &lonely, &out.summary);
    // A run with assets of its own learns the new lag.
    let second = crate::common::keys(60, "slow");
    let out = run("c.csv", &second).await;
    assert_eq!(out.exit, Exit::Success, "{}", out.summary);
    assert_each_key_has_its_own_asset(&ws, &emu, &second, &out.summary);
    let slow = learned_lag(&ws).unwrap_or(i64::MAX);
    assert!(
        slow >= 4000,
        "learned {slow} ms for a list 4 s late\n{}",
        out.summary
    );
}

/// One run of `keys` against an emulator that drops the first call of each key containing
/// `lost-` before making its asset, with the list `lag` behind: the emulator, the exit code
/// and what the run said.
async fn run_losing_first_calls(
    ws: &Workspace,
    keys: &[String],
    lag: std::time::Duration,
    flags: &[(&str, &str)],
) -> (Emulator, Option<i32>, String) {
    let emu = emulator(EmulatorConfig {
        lose_first_before_containing: Some("lost-".into()),
        list_lag: lag,
        ..healthy()
    })
    .await;
    let run = flags.iter().fold(
        Bin::run(ws, &emu).manifest(&ws.manifest("m.csv", keys)),
        |run, (flag, value)| run.set(flag, value),
    );
    let out = run.output().await;
    (emu, out.status.code(), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_lost_among_the_last_requests_is_witnessed_by_a_key_kept_back() {
    let ws = Workspace::new();
    // The first key's first call and one among the last are dropped before MI makes an
    // asset: only the list, current past each loss, can prove them absent. The ceiling is
    // out of reach, so each must be proven by an own asset sent after it; sent as fast as
    // MI answers, every other key of the tail is claimed before the late one's answer.
    let mut keys = crate::common::keys(60, "run");
    keys[0] = "run/lost-first.mp4".into();
    keys[50] = "run/lost-late.mp4".into();
    let lag = std::time::Duration::from_millis(500);
    let limits = [("--list-settle", "1h"), ("--stop-after", "1m")];
    let (emu, code, said) = run_losing_first_calls(&ws, &keys, lag, &limits).await;
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(emu.counters().dropped_before, 2, "{said}");
    assert_each_key_has_its_own_asset(&ws, &emu, &keys, &said);
    // Each lost key was sent again, so its absence was proven: by a key sent after it.
    for lost in ["run/lost-first.mp4", "run/lost-late.mp4"] {
        let attempts: i64 = ws
            .ledger()
            .conn()
            .query_row("SELECT attempts FROM keys WHERE key = ?1", [lost], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(attempts >= 2, "{lost}: {attempts}\n{said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_nothing_can_witness_waits_for_the_ceiling_without_paging_meanwhile() {
    let ws = Workspace::new();
    // The last key's first call is dropped before MI makes an asset; nothing is sent after it.
    let mut keys = crate::common::keys(10, "end");
    keys[9] = "end/lost-last.mp4".into();
    let flags = [("--list-settle", "20s"), ("--concurrency", "1")];
    let (emu, code, said) = run_losing_first_calls(&ws, &keys, Default::default(), &flags).await;
    // One run settles it, by `--list-settle`: it is not left uncertain for want of passes.
    assert_eq!(code, Some(0), "{said}");
    assert_each_key_has_its_own_asset(&ws, &emu, &keys, &said);
    // A pass to learn the lag, one a settle window after the loss (which could find its
    // asset), then none until `--list-settle` is up: the one that proves it absent, read twice.
    let pages = emu.counters().list_calls;
    assert!(pages <= 6, "{pages} list pages\n{said}");
}
