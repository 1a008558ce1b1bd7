//! The bucket source against a real S3-compatible server on loopback that, like NCP Object
//! Storage, refuses ListObjectsV2.

use crate::common::s3::{S3_ACCESS, S3_SECRET, S3Server};
use crate::common::*;
use mi_import::app::ImportJob;
use mi_import::config::Credentials;
use mi_import::exit::Exit;
use mi_import::ledger::OnChanged;
use mi_import::ledger::State;
use mi_import::source::bucket::BucketSpec;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn bucket_job(
    ws: &Workspace,
    emu: &mi_import::emulator::Emulator,
    s3: &S3Server,
    prefix: &str,
) -> ImportJob {
    let listing = BucketSpec {
        endpoint: s3.endpoint(),
        region: "kr-standard".into(),
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        credentials: Credentials::new(S3_ACCESS.into(), S3_SECRET.into()),
    };
    ImportJob {
        listing: Some(listing),
        ..base_job(ws, emu)
    }
}

const ODD: &[&str] = &[
    "lib/odd/space in name.mp4",
    "lib/odd/plus+sign.mp4",
    "lib/odd/percent%41.mp4",
    "lib/odd/hash#and?query.mp4",
    "lib/odd/comma, \"quoted\".mov",
    "lib/odd/한국어 영상.mkv",
    "lib/odd/emoji 🎬.webm",
    "lib/odd/amp&lt;tag>.png",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_several_pages_with_v1_and_registers_each_eligible_object_once() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    let clips = keys(2400, "lib/clips");
    for k in &clips {
        s3.put(BUCKET, k, 1_000);
    }
    for k in ODD {
        s3.put(BUCKET, k, 2_000);
    }
    let ineligible = [
        ("lib/raw/camera.avi", 5_000),
        ("lib/docs/notes.txt", 10),
        ("lib/big/poster.jpg", 11_000_000),
        ("lib/big/all-day.mp4", 10_000_000_001),
        ("lib/empty/upload.mp4", 0),
    ];
    for (k, size) in ineligible {
        s3.put(BUCKET, k, size);
    }
    s3.put(BUCKET, "elsewhere/not-in-prefix.mp4", 10);

    let result = import(bucket_job(&ws, &emu, &s3, "lib/")).await;
    assert_eq!(result.exit, Exit::Success);
    let listed = result.listed.unwrap();
    // The prefix's own page names its folders; each folder is listed on its own (clips/
    // in three pages): nine pages, each asked for once.
    assert_eq!(
        (listed.objects, listed.pages, listed.complete),
        (2413, 9, true)
    );
    assert_eq!(
        s3.v2_refused.load(Relaxed),
        0,
        "never asked for ListObjectsV2"
    );
    assert_eq!(s3.list_calls.load(Relaxed), 9);

    let mut eligible: Vec<String> = clips.clone();
    eligible.extend(ODD.iter().map(|s| s.to_string()));
    assert_registered_once(&ws, &emu, &eligible);
    assert_eq!(emu.assets().len(), eligible.len());
    assert_eq!(ws.count(State::Skipped), ineligible.len());
    let reason = |key: &str| -> String {
        ws.ledger()
            .conn()
            .query_row("SELECT message FROM keys WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert!(reason("lib/big/poster.jpg").contains("too large"));
    assert!(reason("lib/empty/upload.mp4").contains("0 bytes"));
    assert!(reason("lib/raw/camera.avi").contains(".avi"));
    assert_eq!(emu.registrations(BUCKET, "elsewhere/not-in-prefix.mp4"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_sends_only_new_objects() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    for k in keys(1500, "night") {
        s3.put(BUCKET, &k, 100);
    }
    assert_eq!(
        import(bucket_job(&ws, &emu, &s3, "")).await.exit,
        Exit::Success
    );
    assert_eq!(emu.counters().register_calls, 1500);

    let quiet = import(bucket_job(&ws, &emu, &s3, "")).await;
    assert_eq!(quiet.exit, Exit::Success);
    assert_eq!(
        emu.counters().register_calls,
        1500,
        "nothing new, nothing sent"
    );
    assert_eq!(quiet.listed.unwrap().new, 0);

    let fresh = keys(40, "night/later");
    for k in &fresh {
        s3.put(BUCKET, k, 100);
    }
    let second = import(bucket_job(&ws, &emu, &s3, "")).await;
    assert_eq!(second.exit, Exit::Success);
    assert_eq!(second.listed.unwrap().new, 40);
    assert_eq!(
        emu.counters().register_calls,
        1540,
        "only the new objects were sent"
    );
    assert_registered_once(&ws, &emu, &fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_listing_resumes_from_the_last_committed_page() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start_with_delay(BUCKET, Duration::from_millis(250)).await;
    let all = keys(6000, "big");
    for k in &all {
        s3.put(BUCKET, k, 100);
    }
    let run = Bin::run(&ws, &emu).listing(&s3).s3_credentials();
    let committed_pages = || -> i64 {
        let Ok(ledger) = mi_import::ledger::Ledger::open(&ws.db()) else {
            return 0;
        };
        ledger
            .conn()
            .query_row("SELECT COALESCE(MAX(pages), 0) FROM listings", [], |r| {
                r.get(0)
            })
            .unwrap_or(0)
    };
    let mut child = run.start();
    child
        .until("it could be killed", || committed_pages() >= 2)
        .await;
    child.kill();
    let pages_done = committed_pages();
    assert!((2..6).contains(&pages_done), "{pages_done}");

    let out = run.output().await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both runs together asked for each page once, but for the page being fetched when the
    // first run was killed: the resumed run went on from each part's last committed page.
    // (Counting the resumed run's calls alone would race with a request the killed run had
    // already written to its socket.)
    let pages = s3.pages.lock().unwrap().clone();
    let mut seen = std::collections::HashMap::new();
    for page in &pages {
        *seen.entry(page.clone()).or_insert(0) += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.len() <= 1,
        "{repeated:?} asked for again; {pages_done} pages were committed before the kill"
    );
    assert_eq!(
        s3.list_starts.load(Relaxed),
        2,
        "the bucket's root and its one folder each started once"
    );
    assert_registered_once(&ws, &emu, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_and_a_listing_on_one_ledger_register_a_key_once() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    let all = keys(300, "mixed");
    for k in &all {
        s3.put(BUCKET, k, 100);
    }
    let first_half = all[..150].to_vec();
    assert_eq!(
        import(job(&ws, &emu, ws.manifest("m.csv", &first_half)))
            .await
            .exit,
        Exit::Success
    );
    let listed = import(bucket_job(&ws, &emu, &s3, "")).await;
    assert_eq!(listed.exit, Exit::Success);
    assert_eq!(listed.listed.unwrap().new, 150);
    assert_registered_once(&ws, &emu, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_objects_are_reported_and_on_request_registered_again() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    for k in keys(10, "chg") {
        s3.put(BUCKET, &k, 100);
    }
    assert_eq!(
        import(bucket_job(&ws, &emu, &s3, "")).await.exit,
        Exit::Success
    );
    let changed_key = "chg/clip-00003.mp4";
    s3.put(BUCKET, changed_key, 250);

    let report = import(bucket_job(&ws, &emu, &s3, "")).await;
    assert_eq!(report.listed.unwrap().changed, 1);
    assert!(
        report.summary.contains("--on-changed reimport"),
        "{}",
        report.summary
    );
    assert_eq!(
        emu.registrations(BUCKET, changed_key),
        1,
        "left alone by default"
    );
    let changed_at: Option<i64> = ws
        .ledger()
        .conn()
        .query_row(
            "SELECT changed_at FROM keys WHERE key = ?1",
            [changed_key],
            |r| r.get(0),
        )
        .unwrap();
    assert!(changed_at.is_some());

    s3.put(BUCKET, changed_key, 400);
    let mut job = bucket_job(&ws, &emu, &s3, "");
    job.on_changed = OnChanged::Reimport;
    let again = import(job).await;
    assert_eq!(again.exit, Exit::Success);
    assert_eq!(
        emu.registrations(BUCKET, changed_key),
        2,
        "registered again, as asked"
    );
    assert_eq!(emu.counters().register_calls, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_leave_keys_out_without_recording_them() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    for k in ["a/keep.mp4", "a/tmp/skip.mp4", "b/other.mp4", "a/small.mp4"] {
        s3.put(BUCKET, k, if k.contains("small") { 5 } else { 5_000 });
    }
    let mut job = bucket_job(&ws, &emu, &s3, "");
    job.filters = mi_import::source::filter::Filters::default()
        .with_globs(&["a/**".into()], &["**/tmp/**".into()])
        .unwrap();
    job.filters.min_size = Some(100);
    let result = import(job).await;
    assert_eq!(result.listed.unwrap().left_out, 3);
    let keys: Vec<String> = ws.rows().into_iter().map(|r| r.0).collect();
    assert_eq!(keys, vec!["a/keep.mp4".to_string()]);

    // A settle window leaves just-written objects for the next run.
    let mut job = bucket_job(&ws, &emu, &s3, "");
    job.filters.min_age = Some(Duration::from_secs(3600));
    let result = import(job).await;
    assert_eq!(result.listed.unwrap().settling, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_a_bucket_other_than_the_workspace_one_is_refused_before_any_import() {
    let ws = Workspace::new();
    let emu = emulator(mi_import::emulator::EmulatorConfig {
        bucket: "another-bucket".into(),
        ..healthy()
    })
    .await;
    let s3 = S3Server::start(BUCKET).await;
    s3.put(BUCKET, "x/a.mp4", 100);
    let result = import(bucket_job(&ws, &emu, &s3, "")).await;
    assert_eq!(result.exit, Exit::Usage);
    assert_eq!(emu.counters().register_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_the_bucket_but_sends_and_records_nothing() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start(BUCKET).await;
    for k in keys(1200, "dry") {
        s3.put(BUCKET, &k, 100);
    }
    s3.put(BUCKET, "dry/notes.txt", 100);
    let mut job = bucket_job(&ws, &emu, &s3, "");
    job.limits.rate = Some(10.0);
    let text = mi_import::app::dry_run(&job, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(
        text.contains("listing: 1201 objects in 3 pages, 1201 new"),
        "{text}"
    );
    assert!(text.contains("would send 1200 keys"), "{text}");
    assert!(text.contains("ineligible, never sent: 1"), "{text}");
    assert!(
        text.contains("at --rate 10, assuming MI does not throttle: about 2m"),
        "{text}"
    );
    let c = emu.counters();
    assert_eq!(
        (c.requests, c.register_calls),
        (2, 0),
        "only the two look-ups of the account"
    );
    assert!(ws.rows().is_empty(), "the ledger is unchanged");
}

/// Keys in nested folders, some odd: `area{a}/day{d}/...`.
fn nested(s3: &S3Server, areas: usize, days: usize, per_day: usize) -> Vec<String> {
    let mut all = Vec::new();
    for a in 0..areas {
        for d in 0..days {
            for i in 0..per_day {
                let key = if i % 50 == 7 {
                    format!("area{a:02}/day{d:02}/odd, \"name\" {i}+1 한.mp4")
                } else {
                    format!("area{a:02}/day{d:02}/clip-{i:04}.mp4")
                };
                s3.put(BUCKET, &key, 100);
                all.push(key);
            }
        }
        // A file beside the folders, at every level.
        let top = format!("area{a:02}/index.mp4");
        s3.put(BUCKET, &top, 100);
        all.push(top);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_fans_out_over_folders_and_finds_what_a_sequential_one_finds() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start_with_delay(BUCKET, Duration::from_millis(30)).await;
    let all = nested(&s3, 6, 5, 120);
    let mut job = bucket_job(&ws, &emu, &s3, "");
    job.list_concurrency = 4;
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    let most = s3.most_at_once.load(Relaxed);
    assert!(
        (2..=4).contains(&most),
        "{most} pages at once with --list-concurrency 4"
    );
    let pages = s3.pages.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = pages.iter().collect();
    assert_eq!(distinct.len(), pages.len(), "no page asked for twice");

    // The same bucket listed flat, one page after another, by the lister itself.
    let spec = BucketSpec {
        endpoint: s3.endpoint(),
        region: "kr-standard".into(),
        bucket: BUCKET.into(),
        prefix: String::new(),
        credentials: Credentials::new(S3_ACCESS.into(), S3_SECRET.into()),
    };
    let lister = mi_import::source::bucket::Lister::new(&spec, Duration::from_secs(10));
    let mut flat = std::collections::BTreeSet::new();
    let mut marker: Option<String> = None;
    loop {
        let page = lister.page("", marker.as_deref(), true).await.unwrap();
        flat.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_marker {
            Some(m) => marker = Some(m),
            None => break,
        }
    }
    let ledger: std::collections::BTreeSet<String> = ws.rows().into_iter().map(|r| r.0).collect();
    assert_eq!(ledger, flat);
    assert_eq!(ledger.len(), all.len());
    assert_registered_once(&ws, &emu, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_listing_killed_midway_resumes_each_part_and_lists_each_key_once() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = S3Server::start_with_delay(BUCKET, Duration::from_millis(150)).await;
    // Four areas of 2,400 files: four parts (one per request), listed flat, three pages each.
    let all = nested(&s3, 4, 4, 600);
    let run = Bin::run(&ws, &emu)
        .listing(&s3)
        .s3_credentials()
        .set("--list-concurrency", "4");
    let mut child = run.spawn_quiet();
    while s3.list_calls.load(Relaxed) < 6 {
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = run.output().await.status;
    assert_eq!(status.code(), Some(0));
    let pages = s3.pages.lock().unwrap().clone();
    let mut seen = std::collections::HashMap::new();
    for page in &pages {
        *seen.entry(page.clone()).or_insert(0) += 1;
    }
    let repeated = seen.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= 4,
        "{repeated} pages asked for again: at most those out at the kill"
    );
    assert_registered_once(&ws, &emu, &all);
    assert_eq!(emu.assets().len(), all.len());
}
