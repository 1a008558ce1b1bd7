//! End-to-end imports against the emulator over loopback HTTP.

use crate::common::*;
use mi_import::emulator::{CallKind, EmulatorConfig, FileNameMode};
use mi_import::exit::Exit;
use mi_import::ledger::State;
use mi_import::runner::Ending;
use mi_import::source::manifest::ManifestFormat;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(start_paused = true)]
async fn odd_keys_are_registered_exactly_once_in_their_bucket() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-manifests/odd-keys.csv");
    let mut job = job(&ws, &emu, manifest);
    job.default_bucket = Some(BUCKET.into());
    job.options.allow_other_bucket = true;
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Success);

    let odd = [
        "broadcast/2024/05/17/interviews/김민지 인터뷰 (최종).mp4",
        "broadcast/2024/05/17/interviews/Café «Seoul» — director's cut.mov",
        "stills/2024-05-17/promo/100% fresh + new.png",
        "stills/2024-05-17/promo/#1 hit?.jpg",
        "broadcast/2024/06/01/weather/storm, \"Typhoon\" special.mp4",
        "broadcast/2024/06/01/weather/  leading spaces.mp4",
        "broadcast/2024/06/02/日本語/ニュース.webm",
        "stills/2024-06-02/emoji/🎬 clapper.heic",
        "broadcast/2024/06/03/UPPER/CASE.MP4",
    ];
    let odd: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    assert_registered_once(&ws, &emu, &odd);
    // The row that names its own bucket keeps it.
    assert_eq!(emu.registrations("other-bucket", "clips/plain.mp4"), 1);
    assert_eq!(emu.registrations(BUCKET, "clips/plain.mp4"), 0);
}

#[tokio::test(start_paused = true)]
async fn s3_batch_manifest_keys_are_url_decoded() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let manifest =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-manifests/s3-batch.csv");
    let mut job = job(&ws, &emu, manifest);
    job.manifest_format = ManifestFormat::S3Batch;
    assert_eq!(import(job).await.exit, Exit::Success);
    assert_eq!(
        emu.registrations(BUCKET, "stills/2024-05-17/promo/100% fresh + new.png"),
        1
    );
    assert_eq!(
        emu.registrations(
            BUCKET,
            "broadcast/2024/06/01/weather/storm, \"Typhoon\" special.mp4"
        ),
        1
    );
    assert_eq!(emu.assets().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn throttled_and_unavailable_answers_are_retried_to_success() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        rate_429: 0.25,
        rate_503: 0.15,
        seed: 7,
        ..healthy()
    });
    let keys = keys(300, "retry");
    let mut job = job(&ws, &emu, ws.manifest("m.csv", &keys));
    job.limits.max_attempts = 12;
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Success);
    assert_registered_once(&ws, &emu, &keys);
    let c = emu.counters();
    assert!(c.throttled > 0 && c.unavailable > 0, "{c:?}");
    assert_eq!(
        result.requests, c.requests,
        "every call counted on both sides"
    );
    // Every attempt, refused or not, is counted on its row.
    let attempts: u64 = ws.rows().iter().map(|r| r.3 as u64).sum();
    let register_attempts = emu
        .request_log()
        .iter()
        .filter(|(_, k)| *k == CallKind::Register)
        .count();
    assert_eq!(attempts, register_attempts as u64);
}

#[tokio::test(start_paused = true)]
async fn permanent_refusal_fails_the_key_after_one_attempt() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        reject_containing: Some("refuse-me".into()),
        ..healthy()
    });
    let mut keys = keys(20, "ok");
    keys.push("bad/refuse-me.mp4".into());
    let result = import(job(&ws, &emu, ws.manifest("m.csv", &keys))).await;
    assert_eq!(result.exit, Exit::Trouble, "a failed key makes exit code 1");
    let ledger = ws.ledger();
    let (state, attempts, status, code): (State, u32, u16, String) = ledger
        .conn()
        .query_row(
            "SELECT state, attempts, http_status, error_code FROM keys WHERE key = 'bad/refuse-me.mp4'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (state, attempts, status, code.as_str()),
        (State::Failed, 1, 400, "10001")
    );
    assert_eq!(
        emu.counters().register_calls,
        21,
        "the refused key was sent once"
    );
    assert_eq!(ws.count(State::Registered), 20);
}

#[tokio::test(start_paused = true)]
async fn ineligible_keys_are_skipped_with_a_reason_and_never_sent() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let keys: Vec<String> = ["a.mp4", "folder/", "b.avi", "c.jpeg", "d.PNG"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let result = import(job(&ws, &emu, ws.manifest("m.csv", &keys))).await;
    assert_eq!(result.exit, Exit::Success, "skipped keys are not trouble");
    assert_eq!(emu.counters().register_calls, 2);
    assert_eq!(ws.count(State::Skipped), 3);
    let reason: String = ws
        .ledger()
        .conn()
        .query_row("SELECT message FROM keys WHERE key = 'b.avi'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(reason.contains(".avi"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn second_run_on_the_same_ledger_sends_nothing_new() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let keys = keys(50, "again");
    let manifest = ws.manifest("m.csv", &keys);
    assert_eq!(
        import(job(&ws, &emu, manifest.clone())).await.exit,
        Exit::Success
    );
    let calls = emu.counters().requests;
    let second = import(job(&ws, &emu, manifest)).await;
    assert_eq!(second.exit, Exit::Success);
    assert_eq!(second.requests, 2, "only the account's two look-ups");
    assert_eq!(emu.counters().requests, calls + 2);
    assert_eq!(
        second.ingested,
        Default::default(),
        "an unchanged manifest is not read again"
    );
    assert_registered_once(&ws, &emu, &keys);
}

#[tokio::test(start_paused = true)]
async fn interrupted_run_resumes_without_sending_any_key_twice() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        latency: (Duration::from_millis(5), Duration::from_millis(20)),
        ..healthy()
    });
    let keys = keys(400, "resume");
    let manifest = ws.manifest("m.csv", &keys);

    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    let watched = emu.clone();
    tokio::spawn(async move {
        while watched.assets().len() < 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        trigger.cancel();
    });
    let mut first = job(&ws, &emu, manifest.clone());
    first.limits.rate = Some(200.0);
    let stopped = mi_import::app::import(first, shutdown).await.unwrap();
    assert_eq!(stopped.ending, Ending::Interrupted);
    assert_eq!(stopped.exit, Exit::Interrupted);
    let registered = ws.count(State::Registered);
    assert!((100..400).contains(&registered), "{registered}");
    assert_eq!(
        ws.count(State::InFlight),
        0,
        "in-flight requests were finished and recorded"
    );
    assert_eq!(ws.count(State::Pending) + registered, 400);
    assert_eq!(
        emu.assets().len(),
        registered,
        "every answered request is recorded"
    );

    let resumed = import(job(&ws, &emu, manifest)).await;
    assert_eq!(resumed.exit, Exit::Success);
    assert_eq!(
        emu.counters().register_calls as usize,
        400,
        "the resumed run sent only the rest"
    );
    assert_registered_once(&ws, &emu, &keys);
}

#[tokio::test(start_paused = true)]
async fn lost_answers_are_reconciled_not_resent() {
    for mode in [FileNameMode::FullKey, FileNameMode::LastSegment] {
        let ws = Workspace::new();
        let config = EmulatorConfig {
            drop_after: 0.08,
            drop_before: 0.04,
            file_name: mode,
            seed: 3,
            ..healthy()
        };
        let emu = local(config);
        let keys = keys(300, "lost");
        let result = import(job(&ws, &emu, ws.manifest("m.csv", &keys))).await;
        assert_eq!(result.exit, Exit::Success, "{mode:?}");
        let c = emu.counters();
        assert!(c.dropped_after > 0 && c.dropped_before > 0, "{c:?}");
        assert!(c.list_calls > 0, "reconciliation listed the assets");
        assert_registered_once(&ws, &emu, &keys);
    }
}

#[tokio::test(start_paused = true)]
async fn keys_left_in_flight_by_a_dead_run_are_checked_before_sending() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let keys = keys(10, "dead");
    let manifest = ws.manifest("m.csv", &keys);
    // A run that died: all ten claimed (in_flight), and MI got the first four.
    {
        let ledger = ws.ledger();
        let scope = mi_import::ledger::Scope::open(
            ledger.conn(),
            &emu.endpoint(),
            "demo-workspace",
            "1001",
        )
        .unwrap();
        let rows: Vec<_> = keys
            .iter()
            .map(|k| mi_import::source::judged(BUCKET.into(), k.clone(), None))
            .collect();
        mi_import::ledger::keys::insert_keys(
            ledger.conn(),
            &scope,
            &rows,
            mi_import::ledger::OnChanged::Report,
        )
        .unwrap();
        assert_eq!(
            mi_import::ledger::keys::claim(
                ledger.conn(),
                &scope,
                10,
                1,
                mi_import::clock::now_ms()
            )
            .unwrap()
            .len(),
            10
        );
    }
    let client = mi_import::api::MiClient::local(
        emu.local_mi().unwrap(),
        job(&ws, &emu, manifest.clone()).target,
        credentials(),
        Duration::from_secs(5),
    )
    .unwrap();
    for k in &keys[..4] {
        client.register(BUCKET, k).await.unwrap();
    }
    let result = import(job(&ws, &emu, manifest)).await;
    assert_eq!(result.exit, Exit::Success);
    assert_eq!(
        emu.counters().register_calls,
        10,
        "four by the dead run, six by this one"
    );
    assert_registered_once(&ws, &emu, &keys);
}

#[tokio::test(start_paused = true)]
async fn unknown_project_stops_the_run_before_anything_is_recorded() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let keys = keys(30, "nowhere");
    let mut job = job(&ws, &emu, ws.manifest("m.csv", &keys));
    job.target.project = "9999".into();
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Fatal);
    let Ending::Fatal(stop) = &result.ending else {
        panic!("{:?}", result.ending)
    };
    assert!(stop.message.contains("404"), "{}", stop.message);
    assert!(
        stop.hint.as_deref().unwrap_or("").contains("--project"),
        "{stop:?}"
    );
    assert!(ws.rows().is_empty(), "a typo leaves no rows behind");
    let scopes = mi_import::ledger::Scope::all(ws.ledger().conn()).unwrap();
    assert!(scopes.is_empty(), "nor a scope: {scopes:?}");
    assert_eq!(emu.counters().register_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn credentials_revoked_mid_run_stop_it_with_untouched_keys_pending() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        refuse_after: Some(12),
        ..healthy()
    });
    let keys = keys(60, "revoked");
    let mut job = job(&ws, &emu, ws.manifest("m.csv", &keys));
    job.limits.concurrency = 2;
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Fatal);
    let Ending::Fatal(stop) = &result.ending else {
        panic!("{:?}", result.ending)
    };
    assert!(stop.message.contains("401"), "{}", stop.message);
    assert_eq!(
        ws.count(State::Failed),
        0,
        "no key is failed for a fatal answer"
    );
    // Requests already out when the twelfth went through may have passed too.
    let registered = ws.count(State::Registered);
    assert!((12..=13).contains(&registered), "{registered}");
    assert_eq!(ws.count(State::Pending), 60 - registered);
    assert!(
        emu.counters().unauthorized <= 2,
        "no more than the requests already in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_stops_a_run_where_most_keys_fail() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        reject_containing: Some("clip".into()),
        ..healthy()
    });
    let keys = keys(400, "doomed");
    let mut job = job(&ws, &emu, ws.manifest("m.csv", &keys));
    job.limits.concurrency = 4;
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Fatal);
    let failed = ws.count(State::Failed);
    assert!(
        (100..120).contains(&failed),
        "stopped soon after 100 finished keys, not at {failed}"
    );
    assert_eq!(failed + ws.count(State::Pending), 400);
}

#[tokio::test(start_paused = true)]
async fn a_changed_manifest_or_other_settings_are_read_again() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let mut keys = keys(20, "grow");
    let manifest = ws.manifest("m.csv", &keys);
    assert_eq!(
        import(job(&ws, &emu, manifest.clone())).await.ingested.new,
        20
    );

    keys.push("grow/late-addition.mp4".into());
    ws.manifest("m.csv", &keys);
    let grown = import(job(&ws, &emu, manifest.clone())).await;
    assert_eq!(
        (grown.ingested.new, grown.ingested.known),
        (1, 0),
        "only the appended row is read"
    );
    assert_eq!(emu.registrations(BUCKET, "grow/late-addition.mp4"), 1);

    let mut filtered = job(&ws, &emu, manifest);
    filtered.filters = mi_import::source::filter::Filters::default()
        .with_globs(&["**/late-*".into()], &[])
        .unwrap();
    let again = import(filtered).await;
    assert_eq!(
        again.ingested.known, 1,
        "other filters mean another reading"
    );
    assert_eq!(emu.counters().register_calls, 21);
}

/// An edited manifest is read in full, but only the chunks of rows that changed are offered
/// to the ledger again: the edited and inserted rows are sent, nothing else, nothing twice.
#[tokio::test(start_paused = true)]
async fn an_edited_manifest_sends_exactly_its_new_rows() {
    let ws = Workspace::new();
    let emu = local(healthy());
    let mut keys = keys(12_000, "edit");
    let manifest = ws.manifest("m.csv", &keys);
    let mut first = job(&ws, &emu, manifest.clone());
    first.limits.concurrency = 32;
    assert_eq!(import(first).await.ingested.new, 12_000);

    keys[6_000] = "edit/renamed-in-place.mp4".into();
    keys.insert(2_000, "edit/inserted.mp4".into());
    keys.remove(9_000);
    ws.manifest("m.csv", &keys);
    let edited = import(job(&ws, &emu, manifest)).await;
    assert_eq!(edited.exit, Exit::Success);
    assert_eq!(
        (edited.ingested.new, edited.ingested.known),
        (2, 11_998),
        "every row accounted for, two of them new"
    );
    for key in ["edit/renamed-in-place.mp4", "edit/inserted.mp4"] {
        assert_eq!(emu.registrations(BUCKET, key), 1, "{key}");
    }
    assert_eq!(emu.counters().register_calls, 12_002);
    assert_eq!(ws.count(State::Registered), 12_002);
}
