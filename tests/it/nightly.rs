//! A nightly job that needs no attention: exit codes about each night, resuming without a
//! source, ledger problems as configuration errors, a consistent backup during a run,
//! `--patience` that bounds the command, a closed pipe, and JSON-only stderr.

use crate::common::s3::S3Server;
use crate::common::*;
use mi_import::emulator::EmulatorConfig;
use mi_import::ledger::State;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_code_is_about_each_night_not_what_earlier_nights_left() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let mut keys = keys(8, "night");
    keys.push("night/corrupt-take.mp4".into());
    let night = |keys: &[String]| {
        Bin::run(&ws, &emu)
            .manifest(&ws.manifest("m.csv", keys))
            .confirming("20s")
    };

    let first = night(&keys).output().await;
    let first_code = first.status.code();
    assert_eq!(ws.count(State::ImportFailed), 1, "{}", text(&first.stderr));

    let second = night(&keys).output().await;
    let stderr = text(&second.stderr);
    assert!(
        stderr.contains(
            "left by earlier runs (not this run's doing, so not in its exit code): 1 import_failed"
        ),
        "{stderr}"
    );
    keys.push("night/new-arrival.mp4".into());
    let third = night(&keys).output().await;
    let codes = [first_code, second.status.code(), third.status.code()];
    assert_eq!(
        codes,
        [Some(1), Some(0), Some(0)],
        "{}",
        text(&third.stderr)
    );
    assert_eq!(emu.registrations(BUCKET, "night/new-arrival.mp4"), 1);

    // The file was fixed: asked for, the key is registered again (and here fails again).
    let retried = night(&keys).args(&["--retry-import-failed"]).output().await;
    assert_eq!(retried.status.code(), Some(1), "{}", text(&retried.stderr));
    assert_eq!(emu.registrations(BUCKET, "night/corrupt-take.mp4"), 2);
    assert_eq!(
        emu.duplicates().len(),
        1,
        "only the key sent again on request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ctrl_c_a_run_with_no_source_resumes_the_rest() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        latency: (Duration::from_millis(10), Duration::from_millis(30)),
        ..healthy()
    })
    .await;
    let keys = keys(300, "resume");
    let manifest = ws.manifest("m.csv", &keys);
    let mut child = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .set("--rate", "80")
        .start();
    child
        .until("it was interrupted", || emu.assets().len() >= 60)
        .await;
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.finish().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    std::fs::remove_file(&manifest).unwrap();

    // Named at an endpoint where the ledger holds nothing of the project, the resume is
    // refused with where it does hold it, rather than finding an empty ledger there.
    let resume = Bin::run(&ws, &emu);
    let elsewhere = resume.clone().set("--endpoint", "http://127.0.0.1:9");
    let out = elsewhere.output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "only at {}, not at http://127.0.0.1:9",
            emu.endpoint()
        )),
        "{stderr}"
    );

    // Only the project, as the hint says: the ledger knows the rest, the emulator's endpoint
    // too (MI's default is not reachable from here).
    let out = resume.without("--endpoint").output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "MI endpoint {}, where the ledger holds",
            emu.endpoint()
        )),
        "{stderr}"
    );
    assert_registered_once(&ws, &emu, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listing_is_continued_by_a_run_that_names_no_bucket() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start_with_delay(BUCKET, Duration::from_millis(200)).await;
    let all = keys(4000, "bucket");
    for k in &all {
        s3.put(BUCKET, k, 100);
    }
    let listing = Bin::run(&ws, &emu).listing(&s3).s3_credentials();
    let mut child = listing.spawn_quiet();
    while emu.assets().len() < 100 {
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // No --bucket: the unfinished listing of the ledger goes on (Object Storage's endpoint
    // and credentials still come from the settings).
    let resume = Bin::run(&ws, &emu)
        .set("--s3-endpoint", &s3.endpoint())
        .s3_credentials();
    let status = resume.output().await.status;
    assert_eq!(status.code(), Some(0));
    assert_registered_once(&ws, &emu, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_problems_are_configuration_errors_naming_the_path() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(3, "cfg"));
    std::fs::write(ws.path("notes.txt"), "not a database ".repeat(200)).unwrap();
    rusqlite::Connection::open(ws.path("photos.db"))
        .unwrap()
        .execute_batch("CREATE TABLE photos (id INTEGER)")
        .unwrap();
    let cases = [
        (ws.path("no/such/folder/l.db"), "does not exist"),
        (ws.dir.path().to_path_buf(), "is a folder"),
        (ws.path("notes.txt"), "not an mi-import ledger"),
        (ws.path("photos.db"), "another program"),
    ];
    for (db, said) in cases {
        let out = Bin::run(&ws, &emu)
            .manifest(&manifest)
            .set("--db", db.to_str().unwrap())
            .output()
            .await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(said), "{said}: {stderr}");
        assert!(
            stderr.contains(&db.display().to_string()) || said == "another program",
            "{stderr}"
        );
        assert!(stderr.contains("hint:"), "{stderr}");
        assert_eq!(stderr.matches("error:").count(), 1, "said once: {stderr}");
    }
    assert_eq!(emu.counters().requests, 0, "nothing sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_a_run_is_consistent_and_the_ledger_file_alone_is_complete_after() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let keys = keys(400, "backup");
    let manifest = ws.manifest("m.csv", &keys);
    let mut child = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .set("--rate", "100")
        .start();
    child
        .until("the backup was taken", || emu.assets().len() >= 100)
        .await;
    let copy = ws.path("copy.db");
    let out = Bin::on_ledger(&ws, "backup")
        .args(&[copy.to_str().unwrap()])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let backup = rusqlite::Connection::open(&copy).unwrap();
    let ok: String = backup
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let rows: i64 = backup
        .query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 400, "every key, as of the moment of the copy");
    let status = child.finish().await;
    assert_eq!(status.status.code(), Some(0));

    // After the run, the file alone holds everything: copy only it and read it.
    let wal = ws.path("ledger.db-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "the write-ahead log was folded in"
    );
    let moved = ws.path("moved.db");
    std::fs::copy(ws.db(), &moved).unwrap();
    let registered: i64 = rusqlite::Connection::open(&moved)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM keys WHERE state = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(registered, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_returns_after_about_its_patience() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        import_time: Duration::from_secs(600),
        ..healthy()
    })
    .await;
    let manifest = ws.manifest("m.csv", &keys(200, "patient"));
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Due at once, as a later night finds them.
    ws.ledger()
        .conn()
        .execute("UPDATE keys SET next_check_at = 0", [])
        .unwrap();
    let confirm = Bin::against(&ws, &emu, "confirm").args(&["--rate", "10", "--patience", "3s"]);
    let started = Instant::now();
    let out = confirm.output().await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A bound that is the behaviour itself: --patience bounds the command. 200 checks at 10/s
    // would take 20 s; patience ends it after about 3 (3.2 s here), and 12 s (four times
    // the patience) leaves room for a loaded machine while still failing a command that runs
    // its checks to the end. The checks made say the same without a clock: fewer than 150.
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert!(emu.counters().status_calls < 150);
    assert_eq!(
        ws.count(State::Registered),
        200,
        "all still waiting for confirm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_a_report_quietly() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(3000, "pipe"));
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0));
    let mut child = Bin::on_ledger(&ws, "report")
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap(); // `| head -1`: one line read, then the pipe is closed
    assert!(first.starts_with("bucket,key,state"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stderr), "", "quietly");
}

/// Every line a job writes on stderr with `--log-format json` is one JSON object, and the
/// last one carries the counts and the exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_logs_every_stderr_line_is_json() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        rate_429: 0.05,
        reject_containing: Some("bad".into()),
        seed: 5,
        ..healthy()
    })
    .await;
    let mut keys = keys(50, "json");
    keys.push("json/bad.mp4".into());
    let manifest = ws.manifest("m.csv", &keys);
    let run = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .args(&["--log-format", "json"])
        .args(&["--progress-interval", "10ms"]);
    let cases = [
        (run.clone(), 1),
        (run.clone().set("--workspace", "nope"), 3),
        (run.clone().set("--manifest", "missing.csv"), 2),
    ];
    for (run, code) in cases {
        let out = run.output().await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        let events: Vec<serde_json::Value> = stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert!(!events.is_empty());
        if code == 2 {
            let last = &events[events.len() - 1]["fields"];
            assert_eq!(last["event"], "error");
            assert!(last["hint"].is_string(), "{last}");
            continue;
        }
        let summary = events
            .iter()
            .find(|e| e["fields"]["event"] == "summary")
            .unwrap_or_else(|| panic!("no summary event: {stderr}"));
        // Data all the way down: the record is an object, not JSON in a string.
        let record = &summary["fields"]["summary"];
        assert!(record.is_object(), "{summary}");
        assert_eq!(record["exit_code"], code);
        if code == 1 {
            assert_eq!(record["this_run"]["failed"], 1);
            assert!(
                events.iter().any(|e| e["fields"]["event"] == "progress"),
                "progress lines are events too"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_is_removed_from_the_ledger_only_on_purpose() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(4, "forget"));
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0));
    let forget = |yes: bool| {
        let forget = Bin::on_ledger(&ws, "forget").args(&[
            "--workspace",
            "demo-workspace",
            "--project",
            "1001",
        ]);
        match yes {
            true => forget.args(&["--yes"]).output_now(),
            false => forget.output_now(),
        }
    };
    let asked = forget(false);
    assert!(
        text(&asked.stdout).contains("4 keys would be removed"),
        "{}",
        text(&asked.stdout)
    );
    assert_eq!(ws.rows().len(), 4);
    let done = forget(true);
    assert_eq!(done.status.code(), Some(0));
    assert!(ws.rows().is_empty());
    let again = forget(true);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
}
