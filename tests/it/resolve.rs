//! `resolve` settles the key the operator names and no other: a key copied from the report
//! (escaped on a terminal, guarded against formulas in CSV) reads back to the one key it
//! stands for, a text that could stand for two keys is refused, and an asset MI's list showed
//! before the key's request left is never given to it.

use crate::common::*;
use mi_import::emulator::{Emulator, EmulatorConfig, FileNameMode};
use mi_import::ledger::{Scope, State, observed};

fn said(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn asset_of(emu: &Emulator, key: &str) -> i64 {
    emu.assets()
        .into_iter()
        .find(|a| a.key == key)
        .unwrap_or_else(|| panic!("no asset for {key:?}"))
        .asset_id
}

/// Registers `keys` once each against `emu`, then marks every one uncertain as a lost answer
/// would, each with `candidates(key)`.
async fn uncertain_keys(
    ws: &Workspace,
    emu: &Emulator,
    keys: &[String],
    candidates: impl Fn(&str) -> Vec<i64>,
) {
    let out = Bin::run(ws, emu)
        .manifest(&ws.manifest("m.csv", keys))
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let ledger = ws.ledger();
    for key in keys {
        let list: Vec<String> = candidates(key).iter().map(i64::to_string).collect();
        ledger
            .conn()
            .execute(
                "UPDATE keys SET state = ?1, asset_id = NULL, sent_at = 1, unsure_at = 2,
                 candidates = ?2 WHERE key = ?3",
                rusqlite::params![State::Uncertain.code(), list.join(" "), key],
            )
            .unwrap();
    }
}

/// A CSV of `bucket,key,asset_id` rows, each key written as given.
fn settlement(ws: &Workspace, name: &str, rows: &[(&str, String)]) -> std::path::PathBuf {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["bucket", "key", "asset_id"]).unwrap();
    for (key, asset) in rows {
        w.write_record([BUCKET, key, asset]).unwrap();
    }
    let path = ws.path(name);
    std::fs::write(&path, w.into_inner().unwrap()).unwrap();
    path
}

/// The key cells of the report's CSV, as written to a file.
async fn report_cells(ws: &Workspace) -> Vec<String> {
    let path = ws.path("report.csv");
    let out = Bin::on_ledger(ws, "report")
        .args(&["--state", "uncertain", "--output", path.to_str().unwrap()])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let at = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "key")
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap().get(at).unwrap().to_owned())
        .collect()
}

fn state_and_asset(ws: &Workspace, key: &str) -> (String, Option<i64>) {
    let row = ws.rows().into_iter().find(|r| r.0 == key).unwrap();
    (row.1, row.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_copied_from_the_report_settles_that_key_and_no_other() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        file_name: FileNameMode::LastSegment,
        ..healthy()
    })
    .await;
    let plus = "+a/clip.mp4";
    let quoted = "'+a/clip.mp4";
    let esc = "e\u{1b}/clip.mp4";
    let backslash = "e\\x1b/clip.mp4";
    let solo = "-solo/take.mp4";
    let keys: Vec<String> = [plus, quoted, esc, backslash, solo]
        .map(String::from)
        .to_vec();
    let emu_ref = &emu;
    uncertain_keys(&ws, &emu, &keys, |key| {
        if key == solo {
            vec![asset_of(emu_ref, solo)]
        } else {
            [plus, quoted, esc, backslash]
                .iter()
                .map(|k| asset_of(emu_ref, k))
                .collect()
        }
    })
    .await;

    // The report's CSV guards every cell a spreadsheet would run, and a cell that begins
    // with `'`, so each guard reads back to one key.
    let cells = report_cells(&ws).await;
    for cell in ["'+a/clip.mp4", "''+a/clip.mp4", "'-solo/take.mp4"] {
        assert!(cells.iter().any(|c| c == cell), "{cell} in {cells:?}");
    }

    let from = |file: std::path::PathBuf| {
        Bin::against(&ws, &emu, "resolve").args(&["--from", file.to_str().unwrap()])
    };
    // A guarded cell, copied from the report, settles its key.
    let file = settlement(
        &ws,
        "solo.csv",
        &[("'-solo/take.mp4", asset_of(&emu, solo).to_string())],
    );
    let out = from(file).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(
        state_and_asset(&ws, solo),
        ("registered".into(), Some(asset_of(&emu, solo)))
    );
    // The key that begins with `'` is written `''+a/clip.mp4`, and settles that key only.
    let file = settlement(
        &ws,
        "quoted.csv",
        &[("''+a/clip.mp4", asset_of(&emu, quoted).to_string())],
    );
    let out = from(file).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(
        state_and_asset(&ws, quoted),
        ("registered".into(), Some(asset_of(&emu, quoted)))
    );
    assert_eq!(state_and_asset(&ws, plus), ("uncertain".into(), None));
    // `'+a/clip.mp4` is how the report writes `+a/clip.mp4`, and how a spreadsheet may save
    // `'+a/clip.mp4` back: both keys are in the ledger, so it is refused, not guessed.
    let file = settlement(
        &ws,
        "plus.csv",
        &[("'+a/clip.mp4", "not-registered".into())],
    );
    let out = from(file).output().await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("could be the key"), "{}", said(&out));
    assert_eq!(state_and_asset(&ws, plus), ("uncertain".into(), None));
    assert_eq!(
        state_and_asset(&ws, quoted),
        ("registered".into(), Some(asset_of(&emu, quoted))),
        "nothing changed"
    );
    // --key takes the key exactly where no escape is in it.
    let key = |text: &str, asset: i64| {
        Bin::against(&ws, &emu, "resolve").args(&["--key", text, "--asset-id", &asset.to_string()])
    };
    let out = key(plus, asset_of(&emu, plus)).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(
        state_and_asset(&ws, plus),
        ("registered".into(), Some(asset_of(&emu, plus)))
    );

    // `e\x1b/clip.mp4` is the literal key, and how a terminal shows the key with an ESC:
    // refused. The literal key is shown `e\\x1b/clip.mp4`, which names it alone.
    let out = key("e\\x1b/clip.mp4", asset_of(&emu, esc)).output().await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("could be the key"), "{}", said(&out));
    assert_eq!(state_and_asset(&ws, esc), ("uncertain".into(), None));
    assert_eq!(state_and_asset(&ws, backslash), ("uncertain".into(), None));
    let out = key("e\\\\x1b/clip.mp4", asset_of(&emu, backslash))
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(
        state_and_asset(&ws, backslash),
        ("registered".into(), Some(asset_of(&emu, backslash)))
    );
    assert_eq!(state_and_asset(&ws, esc), ("uncertain".into(), None));
    // The key with the ESC, exactly, from a file.
    let file = settlement(&ws, "esc.csv", &[(esc, asset_of(&emu, esc).to_string())]);
    let out = from(file).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    // Every key holds its own asset, none was sent again.
    for k in &keys {
        assert_eq!(
            state_and_asset(&ws, k),
            ("registered".into(), Some(asset_of(&emu, k))),
            "{k:?}"
        );
    }
    assert_eq!(emu.duplicates(), vec![]);
    assert_eq!(emu.counters().register_calls, keys.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_refuses_an_asset_the_list_showed_before_the_key_was_sent() {
    let ws = Workspace::new();
    // A console upload of the same file name elsewhere; details that name no object key.
    let foreign_key = "elsewhere/take.mp4";
    let emu = emulator(EmulatorConfig {
        file_name: FileNameMode::LastSegment,
        details_key: false,
        preload: vec![(BUCKET.into(), foreign_key.into())],
        ..healthy()
    })
    .await;
    let key = "mine/take.mp4";
    let foreign = asset_of(&emu, foreign_key);
    uncertain_keys(&ws, &emu, &[key.into()], |_| vec![]).await;
    // A pass over the list showed the console upload, and ended before the key's request
    // left.
    let ledger = ws.ledger();
    let (endpoint, workspace, project): (String, String, String) = ledger
        .conn()
        .query_row("SELECT endpoint, workspace, project FROM scopes", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let scope = Scope::open(ledger.conn(), &endpoint, &workspace, &project).unwrap();
    observed::record_pass(ledger.conn(), &scope, 1_000, 2_000, Some(1_000), &[foreign]).unwrap();
    ledger
        .conn()
        .execute("UPDATE keys SET sent_at = 3000, unsure_at = 4000", [])
        .unwrap();
    drop(ledger);

    let out = Bin::against(&ws, &emu, "resolve")
        .args(&["--key", key, "--asset-id", &foreign.to_string()])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("showed asset {foreign} by")),
        "{}",
        said(&out)
    );
    assert_eq!(state_and_asset(&ws, key), ("uncertain".into(), None));
    // Its own asset, shown by no pass before the send, is taken.
    let mine = asset_of(&emu, key);
    let out = Bin::against(&ws, &emu, "resolve")
        .args(&["--key", key, "--asset-id", &mine.to_string()])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert_eq!(state_and_asset(&ws, key), ("registered".into(), Some(mine)));
}

/// Declaring a key with candidates not registered is the operator's word, and the command
/// says what it risks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_registered_over_candidates_says_what_it_risks() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let key = "news/one.mp4";
    let emu_ref = &emu;
    uncertain_keys(&ws, &emu, &[key.into()], |k| vec![asset_of(emu_ref, k)]).await;
    let out = Bin::against(&ws, &emu, "resolve")
        .args(&["--key", key, "--not-registered", "--dry-run"])
        .output()
        .await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), said(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("would be registered twice"),
        "the risk is said: {text}"
    );
    assert!(text.contains(&asset_of(&emu, key).to_string()), "{text}");
    assert_eq!(state_and_asset(&ws, key), ("uncertain".into(), None));
}
