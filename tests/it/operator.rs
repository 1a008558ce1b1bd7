//! The operator's nightly, on the real binary: what `-q` still logs, JSON that is data all
//! the way down, a throttled dry run, a listing after a kill, trial and time-boxed runs, a
//! rate by time of day, glob files, profiles, the report of one run, and `check`.

use crate::common::*;
use mi_import::emulator::{EmulatorConfig, FileNameMode};
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn run(bin: Bin) -> (Option<i32>, String, String) {
    let out = bin.output().await;
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn failing_keys(n: usize) -> Vec<String> {
    let mut keys = keys(n, "night");
    keys.push("night/broken-take.mp4".into());
    keys.push("night/missing-take.mp4".into());
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_runs_still_log_their_summary_and_the_reason_for_exit_1() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &failing_keys(5));
    let quiet = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .without_switch("--no-confirm")
        .args(&["-q"]);
    let (code, _, stderr) = run(quiet).await;
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line with -q: {stderr}");
    assert!(
        lines[0].starts_with("mi-import: exit 1 (2 keys this run touched are in trouble)"),
        "{stderr}"
    );
    assert!(
        lines[0].contains("night/broken-take.mp4 (import_failed)"),
        "{stderr}"
    );

    // JSON: one summary event, whatever -q says, its record an object.
    let ws = Workspace::new();
    let manifest = ws.manifest("m.csv", &failing_keys(5));
    let quiet_json = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .without_switch("--no-confirm")
        .args(&["-q", "--log-format", "json"]);
    let (code, _, stderr) = run(quiet_json).await;
    assert_eq!(code, Some(1), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = events
        .iter()
        .find(|e| e["fields"]["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary event: {stderr}"));
    let record = &summary["fields"]["summary"];
    assert_eq!(record["exit_code"], 1);
    assert_eq!(record["ending"]["kind"], "finished");
    assert_eq!(record["this_run"]["import_failed"], 2);
    assert_eq!(record["this_run"]["registered"], 7);
    assert_eq!(record["this_run"]["confirmed"], 5);
    assert!(record["this_run"]["requests"].as_u64().unwrap() >= 14);
    assert!(record["this_run"]["elapsed_seconds"].is_number());
    let failures = record["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2);
    assert!(
        failures
            .iter()
            .all(|f| f["state"] == "import_failed" && f["key"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_is_data_all_the_way_down() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(3, "ok"));
    let confirmed = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .without_switch("--no-confirm");
    let (code, _, stderr) = run(confirmed).await;
    assert_eq!(code, Some(0), "{stderr}");
    let status = Bin::on_ledger(&ws, "status").args(&["--json"]);
    let out = status.output().await;
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &view["last_run"]["summary"];
    assert_eq!(
        last["ending"],
        serde_json::json!({"kind": "finished", "message": null, "hint": null})
    );
    assert_eq!(last["this_run"]["registered"], 3, "{last}");
    assert_eq!(last["this_run"]["confirmed"], 3, "{last}");
    assert_eq!(last["ledger"]["completed"], 3);
    assert!(last["failures"].as_array().unwrap().is_empty());

    // A fatal stop: its ending names the reason and the hint.
    let revoked = emulator(EmulatorConfig {
        refuse_after: Some(0),
        ..healthy()
    })
    .await;
    let manifest = ws.manifest("m2.csv", &keys(4, "revoked"));
    let (code, _, _) = run(Bin::run(&ws, &revoked).manifest(&manifest)).await;
    assert_eq!(code, Some(3));
    let out = status.output().await;
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ending = &view["last_run"]["summary"]["ending"];
    assert_eq!(ending["kind"], "fatal", "{ending}");
    assert!(
        ending["message"].as_str().unwrap().contains("401"),
        "{ending}"
    );
    assert!(
        ending["hint"]
            .as_str()
            .unwrap()
            .contains("NCLOUD_ACCESS_KEY"),
        "{ending}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_rides_out_a_throttled_preflight() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        rate_429: 0.5,
        seed: 9,
        ..healthy()
    })
    .await;
    let manifest = ws.manifest("m.csv", &keys(3, "dry"));
    for _ in 0..4 {
        let dry = Bin::run(&ws, &emu).manifest(&manifest).args(&["--dry-run"]);
        let (code, stdout, stderr) = run(dry).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("the account answers"), "{stdout}");
    }
    assert!(emu.counters().throttled > 0, "{:?}", emu.counters());
    assert!(!ws.db().exists(), "a dry run creates no ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_naming_its_bucket_lists_it_again_after_a_kill() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = s3::S3Server::start(BUCKET).await;
    for i in 0..12 {
        s3.put(BUCKET, &format!("first/clip-{i:02}.mp4"), 1000);
    }
    let listing = Bin::run(&ws, &emu).listing(&s3).s3_credentials();
    // Slow enough that the listing is done long before the sending: killed in between.
    let mut child = listing.clone().set("--rate", "2").spawn_quiet();
    while emu.counters().register_calls < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for i in 0..3 {
        s3.put(BUCKET, &format!("later/clip-{i:02}.mp4"), 1000);
    }
    let out = listing.output().await;
    let (code, stderr) = (out.status.code(), text(&out.stderr));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("listing: 15 objects"),
        "listed again: {stderr}"
    );
    let mut all: Vec<String> = (0..12).map(|i| format!("first/clip-{i:02}.mp4")).collect();
    all.extend((0..3).map(|i| format!("later/clip-{i:02}.mp4")));
    assert_registered_once(&ws, &emu, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_keys_sends_a_trial_and_leaves_the_rest_pending() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(10, "trial"));
    let trial = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .set("--max-keys", "4");
    let (code, _, stderr) = run(trial).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(emu.counters().register_calls, 4, "{stderr}");
    assert_eq!(ws.count(mi_import::ledger::State::Pending), 6);
    assert!(
        stderr.contains("sent the 4 keys --max-keys allows"),
        "{stderr}"
    );
    // The next run sends the rest.
    let (code, _, stderr) = run(Bin::run(&ws, &emu).manifest(&manifest)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_registered_once(&ws, &emu, &keys(10, "trial"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_after_ends_the_sending_on_time_and_confirms_what_was_sent() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(30, "window"));
    let window = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .without_switch("--no-confirm")
        .set("--rate", "4")
        .set("--stop-after", "3");
    let (code, _, stderr) = run(window).await;
    assert_eq!(code, Some(0), "{stderr}");
    // On time, by what was sent rather than by the clock: the 30 keys take 7.5 s to send at
    // --rate 4, so at most 20 sent means the sending stopped well before the end, and it says
    // it stopped on time (below). A busy machine only sends fewer.
    let sent = emu.counters().register_calls;
    assert!((3..=20).contains(&sent), "sent {sent}\n{stderr}");
    assert_eq!(
        ws.count(mi_import::ledger::State::Completed) as u64,
        sent,
        "{stderr}"
    );
    assert_eq!(
        ws.count(mi_import::ledger::State::Pending) as u64,
        30 - sent
    );
    assert!(stderr.contains("stopped on time"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_by_time_of_day_is_followed() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(12, "schedule"));
    // The same step all day in UTC: 3 requests a second; then a schedule that is off.
    let scheduled = Bin::run(&ws, &emu).manifest(&manifest);
    let out = scheduled
        .clone()
        .set("--rate", "00:00,3 12:00,3")
        .env("TZ", "UTC")
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let times: Vec<tokio::time::Instant> = emu.request_log().into_iter().map(|(t, _)| t).collect();
    // Starts a third of a second apart take (n - 1) / 3 s; what the emulator sees are arrivals,
    // which a stall on a busy machine can bunch by a few milliseconds, so that four of them
    // fall just inside one second. The exact bound on starts is proven on a paused clock in
    // the limiter's own tests; here the whole run's span shows the schedule's rate was used.
    let span = times[times.len() - 1].duration_since(times[0]);
    let least = Duration::from_secs_f64((times.len() - 1) as f64 / 3.0 - 0.2);
    assert!(
        span >= least,
        "{} requests in {span:?}: faster than 3 a second",
        times.len()
    );
    let busiest = mi_import::emulator::busiest_second(&times);
    assert!(busiest <= 4, "{busiest} requests in one second");
    let out = scheduled
        .clone()
        .set("--rate", "08:00,off 20:00,off")
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = scheduled.set("--rate", "20:00,5 08:00,1").output().await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("must grow"),
        "{}",
        text(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globs_may_come_from_files() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let mut keys = keys(4, "keep");
    keys.extend(crate::common::keys(3, "drop"));
    keys.push("keep/raw/take.mp4".into());
    let manifest = ws.manifest("m.csv", &keys);
    std::fs::write(ws.path("in.txt"), "# what we import\nkeep/**\n\n").unwrap();
    std::fs::write(ws.path("out.txt"), "keep/raw/*  \n").unwrap();
    let globbed = Bin::run(&ws, &emu).manifest(&manifest).args(&[
        "--include-from",
        "in.txt",
        "--exclude-from",
        "out.txt",
    ]);
    let (code, _, stderr) = run(globbed).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_registered_once(&ws, &emu, &crate::common::keys(4, "keep"));
    assert_eq!(emu.counters().register_calls, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_of_the_configure_file_is_used_when_named() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    std::fs::create_dir_all(ws.path(".ncloud")).unwrap();
    let file = ws.path(".ncloud/configure");
    std::fs::write(
        &file,
        format!("[DEFAULT]\nncloud_access_key_id = wrong\nncloud_secret_access_key = wrong\n\n[media]\nncloud_access_key_id = {ACCESS}\nncloud_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let manifest = ws.manifest("m.csv", &keys(2, "profile"));
    let keyless = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .env_removed("NCLOUD_ACCESS_KEY")
        .env_removed("NCLOUD_SECRET_KEY");
    let from_file = |extra: &[&str], env: Option<&str>| {
        let mut bin = keyless.clone().args(extra);
        if let Some(profile) = env {
            bin = bin.env("NCLOUD_PROFILE", profile);
        }
        let out = bin.output_now();
        (out.status.code(), text(&out.stderr))
    };
    let (code, stderr) = from_file(&[], None);
    assert_eq!(
        code,
        Some(3),
        "the first profile's keys are refused: {stderr}"
    );
    let (code, stderr) = from_file(&["--profile", "media"], None);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = from_file(&[], Some("media"));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = from_file(&["--profile", "nope"], None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no profile [nope]"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_one_run_holds_the_keys_it_touched() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.path("m.csv");
    let mut rows = String::from("bucket,key,size\n");
    for k in keys(3, "monday") {
        rows.push_str(&format!("{BUCKET},{k},100\n"));
    }
    std::fs::write(&manifest, &rows).unwrap();
    let (code, _, _) = run(Bin::run(&ws, &emu).manifest(&manifest)).await;
    assert_eq!(code, Some(0));
    for k in keys(2, "tuesday") {
        rows.push_str(&format!("{BUCKET},{k},200\n"));
    }
    rows.push_str(&format!("{BUCKET},tuesday/odd.mp4,zzz\n"));
    std::fs::write(&manifest, &rows).unwrap();
    let skipping = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .args(&["--skip-bad-rows"]);
    let (code, _, stderr) = run(skipping).await;
    assert_eq!(code, Some(0), "{stderr}");
    let out = Bin::on_ledger(&ws, "report")
        .args(&["--run", "last", "--format", "jsonl"])
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let touched: Vec<&str> = rows
        .iter()
        .filter(|r| r["state"] != "malformed")
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        touched,
        ["tuesday/clip-00000.mp4", "tuesday/clip-00001.mp4"],
        "{rows:?}"
    );
    let malformed: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["state"] == "malformed").collect();
    assert_eq!(malformed.len(), 1, "{rows:?}");
    assert!(
        malformed[0]["message"]
            .as_str()
            .unwrap()
            .contains("size `zzz`")
    );
}

/// `check` against the emulator, its stdout and exit code.
async fn check_with(config: EmulatorConfig, preload: usize) -> (Option<i32>, String) {
    let ws = Workspace::new();
    let preload = (0..preload)
        .map(|i| {
            (
                BUCKET.to_string(),
                format!("day{:02}/cam/take-{i:03}.mp4", i % 3),
            )
        })
        .collect();
    let emu = emulator(EmulatorConfig { preload, ..config }).await;
    let s3 = s3::S3Server::start(BUCKET).await;
    s3.put(BUCKET, "day01/cam/take-001.mp4", 1000);
    s3.put(BUCKET, "day01/cam/notes.txt", 10);
    let out = Bin::against(&ws, &emu, "check")
        .set("--s3-endpoint", &s3.endpoint())
        .set("--rate", "0")
        .s3_credentials()
        .output()
        .await;
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_what_each_reading_of_the_asset_list_shows() {
    let (code, said) = check_with(healthy(), 5).await;
    assert_eq!(code, Some(0), "{said}");
    for line in [
        "ok       clock",
        "linked to bucket `media-archive`",
        "5 assets in 1 page",
        "by their full key",
        "sizes 0/5, creation times 5/5, import status 0/5",
        "come ascending",
        "holds 2 objects, 1 of them media MI takes",
        "a run would start",
    ] {
        assert!(said.contains(line), "{line}: {said}");
    }
    let (_, said) = check_with(
        EmulatorConfig {
            file_name: FileNameMode::LastSegment,
            list_created_time: false,
            list_upload_status: true,
            random_ids: true,
            ..healthy()
        },
        6,
    )
    .await;
    for line in ["file name only", "creation times 0/6, import status 6/6"] {
        assert!(said.contains(line), "{line}: {said}");
    }
    let (_, said) = check_with(
        EmulatorConfig {
            list_without_total_page: true,
            list_newest_first: true,
            ..healthy()
        },
        4,
    )
    .await;
    for line in ["no totalPage", "descending"] {
        assert!(said.contains(line), "{line}: {said}");
    }
    let (code, said) = check_with(
        EmulatorConfig {
            workspace: "elsewhere".into(),
            ..healthy()
        },
        0,
    )
    .await;
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("PROBLEM  workspace") && said.contains("hint:"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_things_of_the_command_line() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(1, "small"));
    let base = Bin::run(&ws, &emu).manifest(&manifest);
    let (code, _, stderr) = run(base.clone().set("--rate", "-1")).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("is no rate"), "{stderr}");
    let (code, _, stderr) = run(base.clone().set("--concurrency", "1000000")).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("more than this tool takes"), "{stderr}");
    let (code, _, stderr) = run(base.set("--timeout", "30")).await;
    assert_eq!(code, Some(0), "a bare number is seconds: {stderr}");
    let out = Bin::against(&ws, &emu, "analyze").output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("--analysis-person-count is required:")
            && !stderr.contains("with --analyze"),
        "{stderr}"
    );
    let out = Bin::new(&ws, &["completions", "bash"]).output().await;
    assert!(
        text(&out.stdout).contains("mi-import"),
        "a completion script"
    );
}
