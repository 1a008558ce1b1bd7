//! The ledger's integrity along every path through the code: one run per ledger however its
//! path is written, gateway errors after creation, 404s that are not about an asset, results
//! applied only to the asset they checked, every asset a key ever had, skipped keys judged
//! again, a ledger that cannot be written, and one project however its ID is written.

use crate::common::s3::{S3_ACCESS, S3_SECRET, S3Server};
use crate::common::*;
use mi_import::app::ImportJob;
use mi_import::config::Credentials;
use mi_import::emulator::EmulatorConfig;
use mi_import::exit::Exit;
use mi_import::ledger::{OnChanged, State};
use mi_import::source::bucket::BucketSpec;
use std::os::unix::process::CommandExt;
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn bucket_job(ws: &Workspace, emu: &mi_import::emulator::Emulator, s3: &S3Server) -> ImportJob {
    let listing = BucketSpec {
        endpoint: s3.endpoint(),
        region: "kr-standard".into(),
        bucket: BUCKET.into(),
        prefix: String::new(),
        credentials: Credentials::new(S3_ACCESS.into(), S3_SECRET.into()),
    };
    ImportJob {
        listing: Some(listing),
        ..base_job(ws, emu)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_reached_through_a_symlink_is_still_held_by_its_run() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    std::fs::create_dir(ws.path("real")).unwrap();
    let real = ws.path("real/mi.db");
    let link = ws.path("link.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let keys = keys(120, "linked");
    let manifest = ws.manifest("m.csv", &keys);
    let run_on = |db: &std::path::Path, rate: &str| {
        Bin::run(&ws, &emu)
            .manifest(&manifest)
            .set("--db", db.to_str().unwrap())
            .set("--rate", rate)
    };
    let mut first = run_on(&link, "40").start();
    first
        .until("a second run was started", || emu.assets().len() >= 10)
        .await;
    let second = run_on(&real, "0").output().await;
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("in use by another mi-import"), "{stderr}");
    let first = first.finish().await;
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(emu.duplicates(), vec![]);
    assert_eq!(emu.assets().len(), keys.len());
}

#[tokio::test(start_paused = true)]
async fn a_503_after_the_asset_was_made_is_never_sent_blindly_again() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        fail_after_create: 0.1,
        seed: 13,
        ..healthy()
    });
    let keys = keys(400, "gateway");
    let result = import(job(&ws, &emu, ws.manifest("m.csv", &keys))).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    let c = emu.counters();
    assert!(c.failed_after_create > 20, "{c:?}");
    assert_registered_once(&ws, &emu, &keys);
    assert_eq!(c.register_calls, 400, "no key was sent a second time");
}

/// `confirm` on `ws`'s ledger against `emu`'s endpoint.
fn confirm(ws: &Workspace, emu: &mi_import::emulator::Emulator) -> Bin {
    Bin::against(ws, emu, "confirm").args(&["--rate", "0", "--patience", "5s"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_against_a_service_without_the_workspace_stops_and_marks_nothing() {
    let ws = Workspace::new();
    let registered_there = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(60, "elsewhere"));
    let out = Bin::run(&ws, &registered_there)
        .manifest(&manifest)
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(ws.count(State::Registered), 60);

    // The same ledger pointed at another endpoint: it holds nothing of the project there, and
    // says where it does, before any request.
    let other = emulator(EmulatorConfig {
        workspace: "someone-else".into(),
        ..healthy()
    })
    .await;
    let confirm_there = confirm(&ws, &other);
    let out = confirm_there.output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("only at {}", registered_there.endpoint())),
        "{stderr}"
    );
    assert_eq!(other.counters().requests, 0);

    // The service at the ledger's endpoint no longer has the workspace (here: the ledger's
    // endpoint is that service's).
    ws.ledger()
        .conn()
        .execute("UPDATE scopes SET endpoint = ?1", [other.endpoint()])
        .unwrap();
    let out = confirm_there.output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("workspace `demo-workspace`"), "{stderr}");
    assert_eq!(ws.count(State::Registered), 60, "no key made final");
    assert_eq!(other.counters().status_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_deleted_in_mi_is_reported_gone_while_the_rest_complete() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(10, "gone"));
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let victim = ws.rows()[3].clone();
    assert!(emu.delete_asset(victim.2.unwrap()));
    let out = confirm(&ws, &emu).output().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(ws.count(State::Completed), 9);
    let result: String = ws
        .ledger()
        .conn()
        .query_row(
            "SELECT upload_result FROM keys WHERE key = ?1 AND state = 5",
            [&victim.0],
            |r| r.get(0),
        )
        .unwrap();
    assert!(result.contains("no asset"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_status_of_a_keys_old_asset_does_not_settle_its_new_one() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        import_time: Duration::from_secs(3),
        status_latency: Duration::from_millis(1500),
        ..healthy()
    })
    .await;
    let s3 = S3Server::start_with_delay(BUCKET, Duration::from_millis(300)).await;
    let key = "race/clip.mp4";
    s3.put(BUCKET, key, 100);
    assert_eq!(import(bucket_job(&ws, &emu, &s3)).await.exit, Exit::Success);
    let old = ws.rows()[0].2.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await; // the old asset's import completes

    s3.put(BUCKET, key, 200);
    let mut job = bucket_job(&ws, &emu, &s3);
    job.on_changed = OnChanged::Reimport;
    // Long enough for the old check to answer, short of the new asset's first check.
    job.options.confirm = Some(Duration::from_millis(2500));
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    let (state, asset, upload): (State, i64, Option<String>) = ws
        .ledger()
        .conn()
        .query_row(
            "SELECT state, asset_id, upload_status FROM keys WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_ne!(asset, old, "registered again");
    assert!(
        emu.counters().status_calls >= 1,
        "the old asset's check was out"
    );
    assert_eq!(
        (state, upload.as_deref()),
        (State::Registered, None),
        "the new asset is still importing; the old one's COMPLETED is not its"
    );
}

/// An object changed twice (each version registered), then killed while its third version's
/// request is out. Its earlier assets are never taken for the current registration: with
/// evidence (creation times, ordered IDs) the current asset is found; without any, the key
/// stays uncertain with only the current asset as a candidate.
async fn changed_twice_and_killed_mid_request(evidence: bool) {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        answer_delay: Duration::from_millis(800),
        list_created_time: evidence,
        random_ids: !evidence,
        ..healthy()
    })
    .await;
    let s3 = S3Server::start(BUCKET).await;
    let key = "versions/clip.mp4";
    // The key's neighbours: assets the ledger knows, witnesses of how MI numbers and
    // times assets.
    let neighbours = keys(12, "versions/other");
    for k in &neighbours {
        s3.put(BUCKET, k, 50);
    }
    let listing = Bin::run(&ws, &emu)
        .listing(&s3)
        .s3_credentials()
        .set("--on-changed", "reimport");
    for size in [100, 200] {
        s3.put(BUCKET, key, size);
        let out = listing.output().await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    assert_eq!(emu.registrations(BUCKET, key), 2);

    // The third version: killed while its request is out.
    s3.put(BUCKET, key, 300);
    let before = emu.counters().register_calls;
    let mut child = listing.spawn_quiet();
    while emu.counters().register_calls == before {
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // MI has made the asset; its answer is on the way.
    child.kill().unwrap();
    child.wait().unwrap();
    let out = listing.output().await;
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        text(&out.stderr)
    );

    let mut versions: Vec<(tokio::time::Instant, i64)> = emu
        .assets()
        .iter()
        .filter(|a| a.key == key)
        .map(|a| (a.created, a.asset_id))
        .collect();
    versions.sort();
    assert_eq!(versions.len(), 3, "one asset per version, none twice");
    let current = versions[2].1;
    let (state, asset, candidates): (State, Option<i64>, Option<String>) = ws
        .ledger()
        .conn()
        .query_row(
            "SELECT state, asset_id, candidates FROM keys WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    if evidence {
        assert_eq!(
            (state, asset),
            (State::Registered, Some(current)),
            "the current version's asset"
        );
    } else {
        assert_eq!(state, State::Uncertain);
        assert_eq!(
            candidates,
            Some(current.to_string()),
            "an earlier version's asset is never a candidate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changed_twice_and_killed_mid_request_registers_its_current_version() {
    changed_twice_and_killed_mid_request(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_evidence_an_objects_earlier_assets_are_never_its_candidates() {
    changed_twice_and_killed_mid_request(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filled_placeholder_is_imported() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    s3.put(BUCKET, "uploads/placeholder.mp4", 0);
    s3.put(BUCKET, "uploads/poster.jpg", 20_000_000);
    assert_eq!(import(bucket_job(&ws, &emu, &s3)).await.exit, Exit::Success);
    assert_eq!(ws.count(State::Skipped), 2);
    s3.put(BUCKET, "uploads/placeholder.mp4", 5_000);
    s3.put(BUCKET, "uploads/poster.jpg", 900_000);
    let result = import(bucket_job(&ws, &emu, &s3)).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    assert_eq!(ws.count(State::Skipped), 0);
    for key in ["uploads/placeholder.mp4", "uploads/poster.jpg"] {
        assert_eq!(emu.registrations(BUCKET, key), 1, "{key}");
    }
}

/// The binary, unable to write more than `bytes` into any file: its ledger fills up.
fn with_file_limit(mut cmd: std::process::Command, bytes: u64) -> std::process::Command {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_whose_page_cannot_be_written_ends_the_run() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    let all = keys(6000, "full");
    for k in &all {
        s3.put(BUCKET, k, 100);
    }
    let listing = Bin::run(&ws, &emu).listing(&s3).s3_credentials();
    let out = finishes(with_file_limit(listing.command(), 700_000)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("hint: free space"), "{stderr}");
    // The next run (the disk freed) is not locked out, and loses nothing.
    let out = listing.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_registered_once(&ws, &emu, &all);
}

/// Runs `cmd` to its end, failing the test if it takes longer than a minute (a hang). Its
/// stderr is read while it runs: a run that says more than a pipe holds would otherwise
/// block on it, and be taken for a hang.
///
/// The minute is a bound that is the behaviour itself (these runs end rather than hang): each
/// run here takes a few seconds (the two tests' four runs about 8 s together), so a minute is
/// over ten times that, room for a loaded machine, and still ends a hung run.
async fn finishes(cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut run = Running::start(cmd);
        let started = std::time::Instant::now();
        while run.try_wait().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                run.kill();
                panic!("the run hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        run.wait()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_page_the_ledger_refuses_ends_the_run_instead_of_hanging() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    let all = keys(2500, "refused");
    for k in &all {
        s3.put(BUCKET, k, 100);
    }
    // Every page's position is refused by the ledger; everything else is written.
    let ledger = ws.ledger();
    ledger
        .conn()
        .execute_batch(
            "CREATE TRIGGER refuse_pages BEFORE UPDATE ON listing_parts
             BEGIN SELECT RAISE(ABORT, 'injected: the page cannot be written'); END;",
        )
        .unwrap();
    let listing = Bin::run(&ws, &emu).listing(&s3).s3_credentials();
    let out = finishes(listing.command()).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the page cannot be written"), "{stderr}");
    assert_eq!(emu.counters().register_calls, 0);

    ledger
        .conn()
        .execute_batch("DROP TRIGGER refuse_pages")
        .unwrap();
    let out = finishes(listing.command()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_registered_once(&ws, &emu, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filling_mid_run_stops_it_and_the_resume_registers_each_key_once() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        latency: (Duration::from_millis(1), Duration::from_millis(5)),
        ..healthy()
    })
    .await;
    let keys = keys(3000, "disk");
    let manifest = ws.manifest("m.csv", &keys);
    // Room for the ledger and the manifest's rows, not for every outcome.
    let first = with_file_limit(Bin::run(&ws, &emu).manifest(&manifest).command(), 900_000)
        .output()
        .unwrap();
    let stderr = text(&first.stderr);
    assert_eq!(first.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("ledger"), "{stderr}");
    assert!(stderr.contains("hint: free space"), "{stderr}");
    let sent = emu.counters().register_calls;
    assert!(sent > 0 && sent < 3000, "{sent}");

    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_registered_once(&ws, &emu, &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_id_with_leading_zeros_is_the_same_project() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(5, "zeros"));
    let out = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .set("--project", "01001")
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(emu.counters().register_calls, 5);
    let scopes = mi_import::ledger::Scope::all(ws.ledger().conn()).unwrap();
    assert_eq!(scopes.len(), 1, "{scopes:?}");
}
