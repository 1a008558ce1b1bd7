//! The real binary: exit codes, messages, signals, and that no secret ever shows.

use crate::common::*;
use mi_import::emulator::EmulatorConfig;
use mi_import::ledger::State;
use std::io::Read;
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file in the test's folder (ledger, WAL, lock, reports) as lossy text.
fn all_files(ws: &Workspace) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(ws.dir.path()).unwrap() {
        let mut bytes = Vec::new();
        std::fs::File::open(entry.unwrap().path())
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        all.push_str(&text(&bytes));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_exits_3_recording_nothing_and_no_secret_shown() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(25, "auth"));
    let wrong = "wrong-secret-7d3a";
    let out = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .secret(wrong)
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(stderr.contains("hint: check NCLOUD_ACCESS_KEY"), "{stderr}");
    assert_eq!(
        stderr.matches("HTTP 401").count(),
        1,
        "the error is said once: {stderr}"
    );
    assert!(
        stderr.contains("ledger.db: not kept (this run recorded nothing)"),
        "the summary does not call a ledger that was never made empty: {stderr}"
    );
    assert!(
        ws.rows().is_empty(),
        "the account is checked before the manifest is read: nothing recorded"
    );
    assert_eq!(
        emu.counters().register_calls,
        0,
        "the gateway refused every request"
    );

    let report = Bin::on_ledger(&ws, "report")
        .args(&["--output", "r.csv"])
        .secret(wrong)
        .output()
        .await;
    assert_eq!(report.status.code(), Some(0));
    for place in [stderr, text(&out.stdout), all_files(&ws)] {
        assert!(!place.contains(wrong), "the secret leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_error_names_the_line_sends_nothing_and_keeps_earlier_rows() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.path("broken.csv");
    std::fs::write(&manifest, "bucket,key\nmedia-archive,a.mp4\nmedia-archive,b.mp4\nmedia-archive,\"c.mp4\nmedia-archive,d.mp4\n").unwrap();
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("broken.csv: line 4:"), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    let c = emu.counters();
    assert_eq!(
        (c.requests, c.register_calls),
        (2, 0),
        "only the account's two look-ups"
    );
    assert_eq!(
        ws.count(State::Pending),
        2,
        "rows before the bad line stay recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_column_is_an_input_error() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.path("nokey.csv");
    std::fs::write(&manifest, "bucket,name\nmedia-archive,a.mp4\n").unwrap();
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no `key` column (found: bucket, name)"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_a_held_ledger_exits_4_naming_the_holder() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(3, "lock"));
    let held = mi_import::lock::acquire(&ws.db(), "run").unwrap();
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
    assert_eq!(emu.counters().requests, 0);
    drop(held);
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Starts the binary, signals it once 50 keys are registered, and checks the exit code and
/// that the next run completes with no key registered twice.
async fn signal_mid_run(signal: i32, expected_exit: i32) {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        latency: (Duration::from_millis(20), Duration::from_millis(40)),
        ..healthy()
    })
    .await;
    let keys = keys(300, "signal");
    let manifest = ws.manifest("m.csv", &keys);
    let mut child = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .set("--rate", "100")
        .command()
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while emu.assets().len() < 50 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before the signal: {status}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(expected_exit),
        "{}",
        text(&status.stderr)
    );
    assert_eq!(ws.count(State::InFlight), 0);
    let registered = ws.count(State::Registered);
    assert_eq!(
        emu.assets().len(),
        registered,
        "every request sent was recorded"
    );
    assert!(registered < 300);

    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_registered_once(&ws, &emu, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_finishes_in_flight_requests_and_exits_130() {
    signal_mid_run(libc::SIGINT, 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_143() {
    signal_mid_run(libc::SIGTERM, 143).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_report_read_the_ledger() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        reject_containing: Some("bad".into()),
        ..healthy()
    })
    .await;
    let mut k = keys(4, "rep");
    k.push("x/bad.mp4".into());
    k.push("x/notes.txt".into());
    let manifest = ws.manifest("m.csv", &k);
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    let status = Bin::on_ledger(&ws, "status")
        .args(&["--json"])
        .output()
        .await;
    let view: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(view["total"], 6);
    assert_eq!(view["states"]["registered"], 4);
    assert_eq!(view["states"]["failed"], 1);
    assert_eq!(view["states"]["skipped"], 1);
    assert_eq!(view["last_run"]["exit_code"], 1);

    let report = Bin::on_ledger(&ws, "report")
        .set("--state", "failed")
        .output()
        .await;
    let csv = text(&report.stdout);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("bucket,key,state,asset_id,candidates,evidence,upload_status,upload_result,analysis_status,index_id,analysis_message,attempts,http_status,error_code,message,trace_id"));
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("media-archive,x/bad.mp4,failed,,,,,,,,,1,400,10001,invalid request,emu-"),
        "{row}"
    );
    assert_eq!(lines.next(), None);
}

#[test]
fn status_without_a_ledger_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Bin::in_dir(dir.path(), &["status"]).output_now();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no ledger at mi-import.db") && stderr.contains("hint:"),
        "{stderr}"
    );
}
