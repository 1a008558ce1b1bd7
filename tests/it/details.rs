//! What MI's asset list cannot tell apart, its asset details can: under the hardest reading of
//! the list (assets named by file name only, no sizes, no creation times, IDs in no order),
//! keys whose file names are shared by four folders lose their answers, and each reading of
//! the details (naming the object key, as NCP documents, or not) keeps every key registered
//! once; where details name the key, none is left for a person.

use crate::common::*;
use mi_import::emulator::{Emulator, EmulatorConfig, FileNameMode};
use mi_import::exit::Exit;
use mi_import::ledger::State;
use std::time::Duration;

/// 600 keys: 150 file names, each in four folders (`news/2024/00F/take-0TT.mp4`).
fn shared_by_four() -> Vec<String> {
    (1..=150)
        .flat_map(|take| (1..=4).map(move |f| format!("news/2024/{f:03}/take-{take:03}.mp4")))
        .collect()
}

/// The hardest reading of the list, 10 % of the answers lost after MI made the asset.
fn hardest(details_key: bool, seed: u64) -> EmulatorConfig {
    EmulatorConfig {
        file_name: FileNameMode::LastSegment,
        list_created_time: false,
        list_size: false,
        random_ids: true,
        drop_after: 0.1,
        latency: (Duration::from_millis(2), Duration::from_millis(20)),
        details_key,
        seed,
        ..healthy()
    }
}

/// Each key with an asset has its own; none is registered twice.
fn assert_each_asset_its_keys(ws: &Workspace, emu: &Emulator) {
    assert_eq!(emu.duplicates(), vec![], "registered twice");
    let assets: std::collections::HashMap<i64, String> = emu
        .assets()
        .into_iter()
        .map(|a| (a.asset_id, a.key))
        .collect();
    for (key, _, asset_id, _) in ws.rows() {
        if let Some(asset) = asset_id {
            assert_eq!(
                assets.get(&asset),
                Some(&key),
                "asset {asset} given to {key}"
            );
        }
    }
}

/// One import of the 600 keys, on paused time, run again until it settles (at most four
/// runs): what was left uncertain, and the asset-detail requests per lost answer.
async fn settle_the_hardest(details_key: bool) -> (usize, f64) {
    let ws = Workspace::new();
    let emu = local(hardest(details_key, 29));
    let keys = shared_by_four();
    let manifest = ws.manifest("m.csv", &keys);
    for _ in 0..4 {
        let mut run = job(&ws, &emu, manifest.clone());
        run.limits.rate = Some(60.0);
        run.limits.concurrency = 6;
        if import(run).await.exit == Exit::Success {
            break;
        }
    }
    assert_each_asset_its_keys(&ws, &emu);
    let c = emu.counters();
    assert!(c.dropped_after >= 30, "{c:?}");
    let uncertain = ws.count(State::Uncertain);
    assert_eq!(
        uncertain + ws.count(State::Registered),
        keys.len(),
        "every key registered or left uncertain"
    );
    (uncertain, c.asset_calls as f64 / c.dropped_after as f64)
}

#[tokio::test(start_paused = true)]
async fn where_details_name_the_key_no_sharer_is_left_for_a_person() {
    let (uncertain, per_lost) = settle_the_hardest(true).await;
    assert_eq!(uncertain, 0);
    assert!(
        per_lost <= 4.0,
        "{per_lost:.2} asset-detail requests per lost answer"
    );
}

#[tokio::test(start_paused = true)]
async fn where_details_name_no_key_nothing_is_taken_on_a_guess() {
    let (uncertain, per_lost) = settle_the_hardest(false).await;
    eprintln!("{uncertain} left uncertain; {per_lost:.2} asset-detail requests per lost answer");
    // Without the key in the details, the one request is the look that learns so.
    assert!(per_lost < 1.0, "{per_lost:.2}");
}

/// On the real binary, under each reading of the details: the 600 keys, killed three times
/// while sending, then run again until settled. Where details name the key nothing is left
/// uncertain; where they do not, what is left has candidates, each an asset of a key of its
/// file name; no key is registered twice either way.
async fn killed_and_settled_on_the_binary(details_key: bool, seed: u64) -> usize {
    use rand::{Rng, SeedableRng};
    let ws = Workspace::new();
    let emu = emulator(hardest(details_key, seed)).await;
    let keys = shared_by_four();
    let run = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys))
        .set("--rate", "120")
        .set("--concurrency", "6")
        .set("--list-settle", "1500ms");
    let mut dice = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..3 {
        let before = emu.counters().register_calls;
        let mut child = run.spawn_quiet();
        while emu.counters().register_calls == before {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the run ended before it sent anything: {status}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(dice.random_range(100..1200))).await;
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    for _ in 0..3 {
        let out = run.output().await;
        match out.status.code() {
            Some(0) => break,
            Some(1) => continue,
            other => panic!("{other:?}\n{}", String::from_utf8_lossy(&out.stderr)),
        }
    }
    assert_each_asset_its_keys(&ws, &emu);
    let assets: std::collections::HashMap<i64, String> = emu
        .assets()
        .into_iter()
        .map(|a| (a.asset_id, a.key))
        .collect();
    let report = Bin::on_ledger(&ws, "report")
        .args(&["--format", "jsonl", "--state", "uncertain"])
        .output()
        .await;
    let uncertain: Vec<serde_json::Value> = String::from_utf8_lossy(&report.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for row in &uncertain {
        let key = row["key"].as_str().unwrap();
        let candidates = row["candidates"].as_str().unwrap_or_default();
        assert!(
            !candidates.is_empty(),
            "an uncertain key shows its candidates: {row}"
        );
        for id in candidates.split(' ') {
            let of = &assets[&id.parse::<i64>().unwrap()];
            assert_eq!(of.rsplit('/').next(), key.rsplit('/').next(), "{row}");
        }
    }
    let c = emu.counters();
    eprintln!(
        "details name the key: {details_key}; {} uncertain of {}; {} answers lost; {} asset-detail requests",
        uncertain.len(),
        keys.len(),
        c.dropped_after,
        c.asset_calls
    );
    uncertain.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_under_details_that_name_the_key_leave_nothing_uncertain() {
    assert_eq!(killed_and_settled_on_the_binary(true, 31).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_under_details_without_the_key_register_nothing_twice() {
    killed_and_settled_on_the_binary(false, 31).await;
}

/// `mi-import` with its stdout on a terminal (a pseudo-terminal this test reads): what a
/// person at the terminal sees.
fn on_a_terminal(bin: &Bin) -> String {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let (mut leader, mut follower) = (0, 0);
    // SAFETY: openpty writes the two descriptors it opens into the two integers it is given.
    let opened = unsafe {
        libc::openpty(
            &mut leader,
            &mut follower,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty");
    // SAFETY: each descriptor was just opened and is owned by one File from here on.
    let (mut leader, follower) = unsafe {
        (
            std::fs::File::from_raw_fd(leader),
            std::fs::File::from_raw_fd(follower),
        )
    };
    let mut child = bin.command().stdout(follower).spawn().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut seen = Vec::new();
    // The terminal ends with EIO once the child has closed its side and all is read.
    let mut buf = [0u8; 4096];
    while let Ok(n) = leader.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A key holding a TAB, or a line break in quotes, from a manifest, and a TAB from a
/// listing: each registered once as it is, exact in JSON Lines, escaped on a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_a_tab_or_a_line_break_are_registered_once_as_they_are() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let from_file = [
        "2024/01/tab\there.jpg".to_string(),
        "2024/01/two\nlines.mp4".into(),
    ];
    let out = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &from_file))
        .output()
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s3 = crate::common::s3::S3Server::start(BUCKET).await;
    s3.put(BUCKET, "listed/tab\there.mp4", 1000);
    let out = Bin::run(&ws, &emu)
        .listing(&s3)
        .set("--prefix", "listed/")
        .env("AWS_ACCESS_KEY_ID", crate::common::s3::S3_ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", crate::common::s3::S3_SECRET)
        .output()
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all = from_file.to_vec();
    all.push("listed/tab\there.mp4".into());
    assert_registered_once(&ws, &emu, &all);
    // JSON Lines (data) carry each key exactly.
    let jsonl = Bin::on_ledger(&ws, "report")
        .args(&["--format", "jsonl"])
        .output()
        .await;
    let keys: Vec<String> = String::from_utf8_lossy(&jsonl.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for key in &all {
        assert!(keys.contains(key), "{key:?} exact in JSON Lines: {keys:?}");
    }
    // On a terminal, escaped: no raw TAB or line break of a key reaches it.
    let shown = on_a_terminal(&Bin::on_ledger(&ws, "report").args(&["--format", "csv"]));
    for escaped in [
        "2024/01/tab\\there.jpg",
        "2024/01/two\\nlines.mp4",
        "listed/tab\\there.mp4",
    ] {
        assert!(
            shown.contains(escaped),
            "{escaped} on the terminal: {shown}"
        );
    }
    assert!(
        !shown.contains('\t'),
        "a raw TAB reached the terminal: {shown:?}"
    );
}

/// `check` says which reading of the asset details the account plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_whether_asset_details_name_the_key() {
    for (details_key, said) in [
        (true, "name the object key an asset was made from"),
        (false, "name no object key"),
    ] {
        let ws = Workspace::new();
        let emu = emulator(EmulatorConfig {
            preload: vec![(BUCKET.into(), "day01/cam/take-001.mp4".into())],
            details_key,
            ..healthy()
        })
        .await;
        let out = Bin::against(&ws, &emu, "check").output().await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("asset details") && text.contains(said),
            "{text}"
        );
    }
}

/// `resolve` reads the details of the asset it is given: one made from another object is
/// refused, a candidate or not; one whose details name the key is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_refuses_an_asset_whose_details_name_another_object() {
    let ws = Workspace::new();
    // A console upload of the same file name elsewhere.
    let emu = emulator(EmulatorConfig {
        file_name: FileNameMode::LastSegment,
        preload: vec![(BUCKET.into(), "elsewhere/take.mp4".into())],
        ..healthy()
    })
    .await;
    let key = "mine/take.mp4";
    let out = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &[key.into()]))
        .output()
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let asset_of = |k: &str| {
        emu.assets()
            .into_iter()
            .find(|a| a.key == k)
            .unwrap()
            .asset_id
    };
    let (mine, foreign) = (asset_of(key), asset_of("elsewhere/take.mp4"));
    // The key's answer as if lost, both assets of its file name its candidates.
    ws.ledger()
        .conn()
        .execute(
            "UPDATE keys SET state = 2, asset_id = NULL, sent_at = 1, unsure_at = 2, candidates = ?1",
            [format!("{mine} {foreign}")],
        )
        .unwrap();
    let resolve = |asset: i64| {
        Bin::against(&ws, &emu, "resolve").args(&["--key", key, "--asset-id", &asset.to_string()])
    };
    let out = resolve(foreign).output().await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!(
            "asset {foreign} was made from `elsewhere/take.mp4`"
        )),
        "{said}"
    );
    assert_eq!(ws.count(State::Uncertain), 1, "nothing changed");
    let out = resolve(mine).output().await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = ws.rows();
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("registered", Some(mine)));
}

/// A refusal in NCP's generic envelope keeps its code and message in the report.
#[tokio::test(start_paused = true)]
async fn a_refusal_in_the_generic_envelope_is_reported_with_its_code_and_message() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        reject_containing: Some("refused".into()),
        reject_message: Some("Object Storage bucket not found".into()),
        reject_in_generic_envelope: true,
        ..healthy()
    });
    let keys = ["a/refused.mp4".to_string(), "a/fine.mp4".into()];
    let result = import(job(&ws, &emu, ws.manifest("m.csv", &keys))).await;
    assert_eq!(result.exit, Exit::Trouble, "{}", result.summary);
    let ledger = ws.ledger();
    let (code, message): (Option<String>, Option<String>) = ledger
        .conn()
        .query_row(
            "SELECT error_code, message FROM keys WHERE key = 'a/refused.mp4'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(code.as_deref(), Some("10001"));
    assert!(
        message.is_some_and(|m| m.contains("Object Storage bucket not found")),
        "the message of the envelope is kept"
    );
}
