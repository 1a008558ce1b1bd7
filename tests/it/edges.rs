//! Exactly-once at the edges, each on the real binary against the emulator: a project that
//! changes while its list is paged, answers that leave out a field, one ledger for two
//! projects whose asset IDs are alike, analysis after a re-import or a `forget`, a run with
//! `--analyze` after a backfill without it, `resolve` with an asset outside the evidence,
//! redirects, asset IDs that cannot be ones.

use crate::common::*;
use mi_import::emulator::{Emulator, EmulatorConfig, RedirectFault};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary, returning (exit code, stderr).
async fn run(bin: Bin) -> (Option<i32>, String) {
    let out = bin.output().await;
    (out.status.code(), text(&out.stderr))
}

fn report(ws: &Workspace) -> Vec<Value> {
    let out = Bin::on_ledger(ws, "report")
        .args(&["--format", "jsonl"])
        .output_now();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn row<'a>(rows: &'a [Value], key: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row for {key}: {rows:?}"))
}

/// The emulator's asset for `key` (its only one).
fn asset_of(emu: &Emulator, key: &str) -> i64 {
    let mine: Vec<i64> = emu
        .assets()
        .into_iter()
        .filter(|a| a.key == key && a.registered)
        .map(|a| a.asset_id)
        .collect();
    assert_eq!(mine.len(), 1, "{key}: {mine:?}");
    mine[0]
}

fn foreign(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (BUCKET.to_string(), format!("console/foreign-{i:04}.mp4")))
        .collect()
}

/// A lost answer whose asset lands on page 2 of a project of 1,000 other assets: the run's
/// only key, so no asset of the ledger's own witnesses how the list behaves. It is never
/// sent again; it stays uncertain with its own asset as its candidate (nothing tells it from
/// a console upload of the same name) or is found.
async fn lost_behind_a_full_page(config: EmulatorConfig) {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        preload: foreign(1000),
        lose_containing: Some("lost".into()),
        ..config
    })
    .await;
    let key = "news/lost-take.mp4".to_string();
    let manifest = ws.manifest("m.csv", std::slice::from_ref(&key));
    let (code, stderr) = run(Bin::run(&ws, &emu).manifest(&manifest)).await;
    assert_eq!(
        emu.registrations(BUCKET, &key),
        1,
        "registered twice\n{stderr}"
    );
    let own = asset_of(&emu, &key);
    let rows = report(&ws);
    let r = row(&rows, &key);
    match r["state"].as_str() {
        Some("uncertain") => {
            assert_eq!(code, Some(1), "{stderr}");
            assert_eq!(r["candidates"], own.to_string(), "{r}");
        }
        _ => assert_eq!(r["asset_id"], own, "{r}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_whose_asset_slides_a_page_is_not_sent_again() {
    // Right after the first page of the first walk, an older asset is deleted and one is
    // added: the total holds, and the lost key's asset slides onto the page already read.
    lost_behind_a_full_page(EmulatorConfig {
        list_churn: 1,
        ..healthy()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_without_total_page_is_read_to_its_end() {
    lost_behind_a_full_page(EmulatorConfig {
        list_without_total_page: true,
        ..healthy()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_without_total_page_proves_no_absence() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        list_without_total_page: true,
        drop_before: 1.0,
        ..healthy()
    })
    .await;
    let key = "news/never-made.mp4".to_string();
    let manifest = ws.manifest("m.csv", std::slice::from_ref(&key));
    let (code, stderr) = run(Bin::run(&ws, &emu).manifest(&manifest)).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        emu.counters().register_calls,
        1,
        "a list that leaves out its totals is no proof: never sent again\n{stderr}"
    );
    assert_eq!(row(&report(&ws), &key)["state"], "uncertain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projects_numbering_assets_alike_share_a_ledger_safely() {
    let ws = Workspace::new();
    let a = emulator(healthy()).await;
    let b = emulator(EmulatorConfig {
        project: "1002".into(),
        drop_after: 0.3,
        seed: 5,
        ..healthy()
    })
    .await;
    let keys_a = keys(10, "project-a");
    let manifest_a = ws.manifest("a.csv", &keys_a);
    let (code, stderr) = run(Bin::run(&ws, &a).manifest(&manifest_a)).await;
    assert_eq!(code, Some(0), "{stderr}");
    // Project B numbers its assets from the same first ID as A.
    let keys_b = keys(10, "project-b");
    let manifest_b = ws.manifest("b.csv", &keys_b);
    let (code, stderr) = run(Bin::run(&ws, &b)
        .manifest(&manifest_b)
        .set("--project", "1002"))
    .await;
    assert!(b.counters().dropped_after >= 2, "{:?}", b.counters());
    assert_eq!(b.duplicates(), vec![], "registered twice in B\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    let rows = report(&ws);
    for key in &keys_b {
        assert_eq!(row(&rows, key)["asset_id"], asset_of(&b, key));
    }
}

/// `analyze` on `ws`'s ledger against `emu`.
fn analyze(ws: &Workspace, emu: &Emulator) -> Bin {
    Bin::against(ws, emu, "analyze").args(&[
        "--analysis-person-count",
        "0",
        "--rate",
        "0",
        "--list-settle",
        "2s",
    ])
}

/// `run` with confirmation and analysis of what it completes.
fn analysed_run(ws: &Workspace, emu: &Emulator, manifest: &Path) -> Bin {
    Bin::run(ws, emu)
        .manifest(manifest)
        .args(&["--analyze", "--analysis-person-count", "0"])
        .confirming("30s")
}

fn analysed(emu: &Emulator) -> std::collections::HashMap<i64, u32> {
    let accepted = emu.analyses_accepted();
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "analysed twice: {twice:?}");
    accepted
}

fn sized_manifest(ws: &Workspace, name: &str, rows: &[(&str, u64)]) -> std::path::PathBuf {
    let mut text = String::from("bucket,key,size\n");
    for (key, size) in rows {
        text.push_str(&format!("{BUCKET},{key},{size}\n"));
    }
    let path = ws.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_object_registered_again_is_analysed_again() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        analysis_polls: 1,
        ..healthy()
    })
    .await;
    let first = sized_manifest(&ws, "m.csv", &[("news/a.mp4", 100), ("news/b.mp4", 200)]);
    let (code, stderr) = run(analysed_run(&ws, &emu, &first)).await;
    assert_eq!(code, Some(0), "{stderr}");
    let old = asset_of(&emu, "news/a.mp4");
    let old_index = row(&report(&ws), "news/a.mp4")["index_id"].clone();
    // The object changed (a new size): registered again, a new asset.
    let changed = sized_manifest(&ws, "m.csv", &[("news/a.mp4", 150), ("news/b.mp4", 200)]);
    let args = analysed_run(&ws, &emu, &changed).args(&["--on-changed", "reimport"]);
    let (code, stderr) = run(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let new = emu
        .assets()
        .into_iter()
        .filter(|a| a.key == "news/a.mp4")
        .map(|a| a.asset_id)
        .max()
        .unwrap();
    assert_ne!(new, old);
    let accepted = analysed(&emu);
    assert_eq!(
        accepted.get(&new),
        Some(&1),
        "the new asset is analysed\n{stderr}"
    );
    assert_eq!(accepted.len(), 3, "a, b, and a's new asset: {accepted:?}");
    let rows = report(&ws);
    let a = row(&rows, "news/a.mp4");
    assert_eq!(a["asset_id"], new);
    assert_eq!(a["analysis_status"], "ANALYZE_COMPLETED", "{a}");
    assert_ne!(
        a["index_id"], old_index,
        "the report shows the new asset's index: {a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_added_after_forget_inherit_no_analysis() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        analysis_polls: 1,
        ..healthy()
    })
    .await;
    let old = keys(3, "old");
    let (code, stderr) = run(analysed_run(&ws, &emu, &ws.manifest("old.csv", &old))).await;
    assert_eq!(code, Some(0), "{stderr}");
    let forget = Bin::on_ledger(&ws, "forget")
        .args(&[
            "--workspace",
            "demo-workspace",
            "--project",
            "1001",
            "--yes",
        ])
        .output()
        .await;
    assert_eq!(forget.status.code(), Some(0), "{}", text(&forget.stderr));
    let new = keys(3, "new");
    let (code, stderr) = run(analysed_run(&ws, &emu, &ws.manifest("new.csv", &new))).await;
    assert_eq!(code, Some(0), "{stderr}");
    let accepted = analysed(&emu);
    let rows = report(&ws);
    for key in &new {
        let asset = asset_of(&emu, key);
        assert_eq!(accepted.get(&asset), Some(&1), "{key} analysed\n{stderr}");
        assert_eq!(row(&rows, key)["analysis_status"], "ANALYZE_COMPLETED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_analyze_bills_only_what_it_was_asked_for() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        analysis_polls: 1,
        ..healthy()
    })
    .await;
    // A backfill without --analyze, confirmed.
    let backfill = keys(8, "backfill");
    let manifest = ws.manifest("m.csv", &backfill);
    let plain = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .without_switch("--no-confirm");
    let (code, stderr) = run(plain).await;
    assert_eq!(code, Some(0), "{stderr}");
    // Two new keys, and a run asked to analyse.
    let mut all = backfill.clone();
    all.extend(keys(2, "tonight"));
    let manifest = ws.manifest("m.csv", &all);
    let out = analysed_run(&ws, &emu, &manifest)
        .args(&["--dry-run"])
        .output()
        .await;
    let said = text(&out.stdout);
    assert!(
        said.contains("would request at most 2 analyses, each billed"),
        "{said}"
    );
    assert!(
        said.contains("8 completed keys imported without --analyze"),
        "{said}"
    );
    let (code, stderr) = run(analysed_run(&ws, &emu, &manifest)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(analysed(&emu).len(), 2, "only tonight's keys\n{stderr}");
    assert!(
        stderr.contains("8 completed keys imported without --analyze are not analysed by a run"),
        "{stderr}"
    );
    // `analyze` does the rest, none twice.
    let out = analyze(&ws, &emu).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(analysed(&emu).len(), 10);
}

/// A key left uncertain with two candidates: its own asset and one of the same file name
/// from another folder, whose answer was lost too, that the list cannot tell apart (names
/// without folders, no times, random IDs).
async fn ambiguous_key() -> (Workspace, Emulator, String, Vec<i64>) {
    let ws = Workspace::new();
    let key = "day1/take.mp4".to_string();
    let emu = emulator(EmulatorConfig {
        file_name: mi_import::emulator::FileNameMode::LastSegment,
        list_created_time: false,
        random_ids: true,
        drop_after: 1.0,
        ..healthy()
    })
    .await;
    let manifest = ws.manifest("m.csv", &[key.clone(), "day2/take.mp4".to_string()]);
    let (code, stderr) = run(Bin::run(&ws, &emu).manifest(&manifest)).await;
    assert_eq!(code, Some(1), "{stderr}");
    let rows = report(&ws);
    let candidates: Vec<i64> = row(&rows, &key)["candidates"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|c| c.parse().ok())
        .collect();
    assert_eq!(candidates.len(), 2, "{rows:?}\n{stderr}");
    (ws, emu, key, candidates)
}

fn resolve(ws: &Workspace, emu: &Emulator, key: &str, asset: &str) -> (Option<i32>, String) {
    let out = Bin::against(ws, emu, "resolve")
        .args(&["--key", key, "--asset-id", asset])
        .output_now();
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_takes_only_an_asset_the_evidence_offers() {
    let (ws, emu, key, candidates) = ambiguous_key().await;
    // No such asset in the project.
    let (code, said) = resolve(&ws, &emu, &key, "99999");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("99999"), "{said}");
    // An asset MI has, under another name.
    let other = emu.add_foreign_asset(BUCKET, "elsewhere/other.mp4");
    let (code, said) = resolve(&ws, &emu, &key, &other.to_string());
    assert_eq!(code, Some(2), "{said}");
    assert_eq!(
        row(&report(&ws), &key)["state"],
        "uncertain",
        "nothing changed"
    );
    // Where MI's details name no object key: one of its candidates is taken on the user's
    // word; and while unconfirmed, it may be changed by hand again.
    emu.set_details_key(false);
    let own = asset_of(&emu, &key);
    let theirs = *candidates.iter().find(|c| **c != own).unwrap();
    let (code, said) = resolve(&ws, &emu, &key, &theirs.to_string());
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = resolve(&ws, &emu, &key, &own.to_string());
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(row(&report(&ws), &key)["asset_id"], own);
    // Where they name it: a candidate made from the other key's object is refused, the own
    // one taken, and an asset MI shows under the key's name outside the candidates (here a
    // console upload of the same object) taken too.
    let (ws2, emu2, key2, candidates2) = ambiguous_key().await;
    let own2 = asset_of(&emu2, &key2);
    let theirs2 = *candidates2.iter().find(|c| **c != own2).unwrap();
    let (code, said) = resolve(&ws2, &emu2, &key2, &theirs2.to_string());
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("was made from `day2/take.mp4`"), "{said}");
    let (code, said) = resolve(&ws2, &emu2, &key2, &own2.to_string());
    assert_eq!(code, Some(0), "{said}");
    let found = emu2.add_foreign_asset(BUCKET, &key2);
    let (code, said) = resolve(&ws2, &emu2, &key2, &found.to_string());
    assert_eq!(code, Some(0), "{said}");
}

/// A TCP listener that counts the connections made to it.
fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (format!("http://{addr}/elsewhere"), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_on_the_register_call_is_never_followed_nor_taken_for_a_registration() {
    let (elsewhere, visits) = counting_listener();
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        redirect: Some(RedirectFault {
            status: 302,
            location: elsewhere.clone(),
            percent: 100,
            register_only: true,
        }),
        ..healthy()
    })
    .await;
    let key = "news/redirected.mp4".to_string();
    let manifest = ws.manifest("m.csv", std::slice::from_ref(&key));
    let (code, stderr) = run(Bin::run(&ws, &emu).manifest(&manifest)).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        visits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{stderr}"
    );
    let rows = report(&ws);
    let r = row(&rows, &key);
    assert_ne!(r["state"], "registered", "{r}");
    assert!(r["asset_id"].is_null(), "{r}");
    assert!(r["message"].as_str().unwrap_or("").contains("302"), "{r}");

    // 307s on half the register calls: each key registered once, nothing sent elsewhere.
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        redirect: Some(RedirectFault {
            status: 307,
            location: elsewhere,
            percent: 50,
            register_only: true,
        }),
        seed: 3,
        ..healthy()
    })
    .await;
    let keys = keys(12, "temporary");
    let (code, stderr) = run(Bin::run(&ws, &emu).manifest(&ws.manifest("m.csv", &keys))).await;
    assert!(emu.counters().redirected >= 4, "{:?}", emu.counters());
    assert_eq!(
        visits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_registered_once(&ws, &emu, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_id_that_cannot_be_one_is_an_unknown_outcome() {
    for bad in [
        serde_json::json!(0),
        serde_json::json!(-5),
        serde_json::json!("12345"),
    ] {
        let ws = Workspace::new();
        let emu = emulator(EmulatorConfig {
            answer_asset_id: Some(("odd".into(), bad.clone())),
            ..healthy()
        })
        .await;
        let key = "news/odd-answer.mp4".to_string();
        let mut keys = keys(6, "answered");
        keys.push(key.clone());
        let manifest = ws.manifest("m.csv", &keys);
        let (code, stderr) = run(Bin::run(&ws, &emu).manifest(&manifest)).await;
        assert_eq!(code, Some(0), "{bad}: {stderr}");
        assert_eq!(emu.registrations(BUCKET, &key), 1, "{bad}: {stderr}");
        let rows = report(&ws);
        assert_eq!(
            row(&rows, &key)["asset_id"],
            asset_of(&emu, &key),
            "{bad}: found in the list under its real ID"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_reanalysis_is_not_taken_for_mi_s_word_on_it() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        analysis_polls: 1,
        ..healthy()
    })
    .await;
    let key = "news/unanalyzable-take.mp4".to_string();
    let manifest = ws.manifest("m.csv", std::slice::from_ref(&key));
    let (code, stderr) = run(analysed_run(&ws, &emu, &manifest)).await;
    assert_eq!(code, Some(1), "its analysis failed\n{stderr}");
    assert_eq!(row(&report(&ws), &key)["analysis_status"], "ANALYZE_FAIL");
    let asset = asset_of(&emu, &key);
    // Asked again, the request's connection drops before MI accepts it: MI still shows the
    // earlier failure, which is no word on the new request, and nothing is sent a third time.
    emu.drop_analysis_requests(true);
    let out = analyze(&ws, &emu)
        .args(&["--reanalyze-failed", "--patience", "20s"])
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(emu.analyses_accepted().get(&asset), Some(&1), "{stderr}");
    assert_eq!(
        emu.counters().analysis_calls,
        2,
        "asked once more, not again\n{stderr}"
    );
    let rows = report(&ws);
    let r = row(&rows, &key);
    assert_eq!(r["analysis_status"], "ANALYZE_FAIL", "{r}");
    assert!(
        r["analysis_message"]
            .as_str()
            .unwrap_or("")
            .contains("probably not accepted"),
        "{r}"
    );
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_left_long_after_its_claim_is_looked_for_from_when_it_left() {
    // One key is throttled for 12 s, then leaves; MI makes its asset 1.5 s after it arrives
    // (the others took milliseconds: within the two seconds' slack) and the answer is lost;
    // the run is killed as the request arrives, and run again at once. The list shows new
    // assets 3 s late, within the 4 s settle window.
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        throttle_then_lose: Some(mi_import::emulator::ThrottledKey {
            containing: "waits".into(),
            retry_after: Duration::from_secs(12),
            made_after: Duration::from_millis(1500),
        }),
        list_lag: Duration::from_secs(3),
        ..healthy()
    })
    .await;
    let mut keys = keys(5, "quick");
    keys.push("news/waits-take.mp4".into());
    let manifest = ws.manifest("m.csv", &keys);
    let waits = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .set("--list-settle", "4s");
    let mut child = waits.spawn_quiet();
    while emu.counters().register_calls < 7 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, stderr) = run(waits).await;
    assert_eq!(
        emu.registrations(BUCKET, "news/waits-take.mp4"),
        1,
        "registered twice\n{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_registered_once(&ws, &emu, &keys);
}
