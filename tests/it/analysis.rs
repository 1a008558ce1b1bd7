//! Register, then index: every completed asset is sent for MI's analysis exactly once, under
//! lost answers and kill -9, with its status and index ID in the report.

use crate::common::*;
use mi_import::api::analysis::AnalysisRequest;
use mi_import::emulator::EmulatorConfig;
use mi_import::exit::Exit;
use mi_import::runner::AnalysisPlan;
use std::time::Duration;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn plan() -> AnalysisPlan {
    AnalysisPlan {
        request: AnalysisRequest {
            person_count: 0,
            scene_range: None,
            scene_seconds: None,
            language: None,
            audio_effects: false,
            tag_ids: Vec::new(),
        },
        pick: mi_import::ledger::analyses::Pick {
            again_failed: false,
            asked_only: true,
        },
    }
}

/// Each asset the emulator accepted an analysis for, and how many times.
fn accepted_once(emu: &mi_import::emulator::Emulator) -> usize {
    let accepted = emu.analyses_accepted();
    let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "analysed more than once: {twice:?}");
    accepted.len()
}

/// (key, analysis status, index ID, analysis message) of every row.
type AnalysisRow = (String, Option<String>, Option<String>, Option<String>);

fn analysis_columns(ws: &Workspace) -> Vec<AnalysisRow> {
    let ledger = ws.ledger();
    let mut stmt = ledger
        .conn()
        .prepare(
            "SELECT k.key, a.status, a.index_id, a.message FROM keys k
             LEFT JOIN analyses a ON a.key_id = k.id AND a.asset_id = k.asset_id ORDER BY k.id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn each_completed_asset_is_analysed_once_despite_lost_answers() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        drop_before: 0.08,
        drop_after: 0.12,
        analysis_polls: 1,
        seed: 17,
        ..healthy()
    });
    let mut keys = keys(60, "index");
    keys.push("index/unanalyzable-take.mp4".into());
    keys.push("index/corrupt-take.mp4".into());
    let manifest = ws.manifest("m.csv", &keys);
    let mut job = job(&ws, &emu, manifest.clone());
    job.options.confirm = Some(Duration::from_secs(60));
    job.options.analyze = Some(plan());
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Trouble, "{}", result.summary);
    assert_eq!(result.analyses_failed, 1, "{}", result.summary);
    assert!(emu.counters().dropped_after > 5, "{:?}", emu.counters());
    // Every completed asset (all but the corrupt one) analysed, each exactly once.
    assert_eq!(accepted_once(&emu), 61);
    for (key, status, index, message) in analysis_columns(&ws) {
        match key.as_str() {
            "index/corrupt-take.mp4" => {
                assert_eq!(status, None, "an import_failed key is never analysed")
            }
            "index/unanalyzable-take.mp4" => {
                assert_eq!(status.as_deref(), Some("ANALYZE_FAIL"));
                assert!(message.is_some(), "the reason is kept");
            }
            _ => {
                assert_eq!(status.as_deref(), Some("ANALYZE_COMPLETED"), "{key}");
                assert!(index.is_some(), "{key} has its index ID");
            }
        }
    }

    // A re-run sends nothing at all.
    let before = emu.counters();
    let mut job = job_again(&ws, &emu, manifest);
    job.options.analyze = Some(plan());
    let again = import(job).await;
    assert_eq!(again.exit, Exit::Success, "{}", again.summary);
    let after = emu.counters();
    assert_eq!(after.register_calls, before.register_calls);
    assert_eq!(after.analysis_calls, before.analysis_calls);
}

/// docs/service.md, "Analysis": MI's reference spells the reason `analyzeStatusMessage` and the request's answer
/// `id`; its examples spell them `analysisStatusMessage` and `indexId`. Under the examples'
/// reading each analysis is recorded just the same.
#[tokio::test(start_paused = true)]
async fn the_index_answers_are_read_in_the_examples_spelling_too() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        analysis_polls: 1,
        analysis_example_spelling: true,
        ..healthy()
    });
    let mut keys = keys(10, "spelt");
    keys.push("spelt/unanalyzable-take.mp4".into());
    let mut job = job(&ws, &emu, ws.manifest("m.csv", &keys));
    job.options.confirm = Some(Duration::from_secs(60));
    job.options.analyze = Some(plan());
    let result = import(job).await;
    assert_eq!(result.analyses_failed, 1, "{}", result.summary);
    assert_eq!(accepted_once(&emu), 11);
    for (key, status, index, message) in analysis_columns(&ws) {
        if key.contains("unanalyzable") {
            assert_eq!(status.as_deref(), Some("ANALYZE_FAIL"));
            assert_eq!(message.as_deref(), Some("no scene could be analysed"));
        } else {
            assert_eq!(status.as_deref(), Some("ANALYZE_COMPLETED"), "{key}");
            assert!(index.is_some(), "{key} has its index ID");
        }
    }
}

fn job_again(
    ws: &Workspace,
    emu: &mi_import::emulator::Emulator,
    manifest: std::path::PathBuf,
) -> mi_import::app::ImportJob {
    let mut job = job(ws, emu, manifest);
    job.options.confirm = Some(Duration::from_secs(30));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_request_and_answer_each_asset_is_analysed_once() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        latency: (Duration::from_millis(150), Duration::from_millis(250)),
        analysis_polls: 1,
        ..healthy()
    })
    .await;
    let keys = keys(40, "killed");
    let manifest = ws.manifest("m.csv", &keys);
    let run = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .args(&["--analyze", "--analysis-person-count", "0"])
        .confirming("60s")
        .set("--concurrency", "8");
    for round in 1..=2 {
        let mut child = run.spawn_quiet();
        let target = 6 * round;
        while emu.counters().analysis_calls < target {
            assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Requests are out: the emulator answers each 150-250 ms later.
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(accepted_once(&emu), 40, "every asset analysed, none twice");
    assert!(
        analysis_columns(&ws)
            .iter()
            .all(
                |(_, status, index, _)| status.as_deref() == Some("ANALYZE_COMPLETED")
                    && index.is_some()
            )
    );
    assert_registered_once(&ws, &emu, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analyze_command_backfills_completed_keys_and_requests_failures_again_on_request() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        analysis_polls: 1,
        ..healthy()
    })
    .await;
    let mut keys = keys(20, "backfill");
    keys.push("backfill/unanalyzable.mp4".into());
    let manifest = ws.manifest("m.csv", &keys);
    let out = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .without_switch("--no-confirm")
        .output()
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        emu.counters().analysis_calls,
        0,
        "nothing without --analyze"
    );

    let analyze = || {
        Bin::against(&ws, &emu, "analyze").args(&["--rate", "0", "--analysis-person-count", "2"])
    };
    let dry = analyze().args(&["--dry-run"]).output().await;
    assert!(
        text(&dry.stdout).contains("would request analysis of 21 completed keys"),
        "{}",
        text(&dry.stdout)
    );
    let out = analyze().output().await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "one analysis failed: {}",
        text(&out.stderr)
    );
    assert_eq!(accepted_once(&emu), 21);
    let calls = emu.counters().analysis_calls;
    let out = analyze().output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        emu.counters().analysis_calls,
        calls,
        "nothing requested twice"
    );

    let out = analyze().args(&["--reanalyze-failed"]).output().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        emu.counters().analysis_calls,
        calls + 1,
        "only the failed one, again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_settings_are_checked_before_anything_is_sent() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(3, "settings"));
    for (extra, said) in [
        (vec!["--analyze"], "--analysis-person-count is required"),
        (
            vec!["--analyze", "--analysis-person-count", "11"],
            "0 to 10",
        ),
        (vec!["--analysis-person-count", "1"], "without --analyze"),
        (
            vec![
                "--analyze",
                "--analysis-person-count",
                "1",
                "--min-scene-duration",
                "3",
            ],
            "go together",
        ),
    ] {
        let out = Bin::run(&ws, &emu)
            .manifest(&manifest)
            .args(&extra)
            .output()
            .await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(said), "{said}: {stderr}");
        assert!(stderr.contains("hint:"), "{stderr}");
    }
    assert_eq!(emu.counters().requests, 0);
}

/// Analyses that take a time (6 s here), not a number of looks: the first is followed on
/// growing gaps, and what it took places the others' looks, as imports are placed.
#[tokio::test(start_paused = true)]
async fn analyses_are_looked_at_when_likely_done() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        analysis_time: Some(Duration::from_secs(6)),
        ..healthy()
    });
    let keys = keys(80, "timed");
    let mut job = job(&ws, &emu, ws.manifest("m.csv", &keys));
    job.limits.rate = Some(40.0);
    job.options.confirm = Some(Duration::from_secs(60));
    job.options.analyze = Some(plan());
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    assert_eq!(accepted_once(&emu), keys.len());
    let c = emu.counters();
    assert!(
        c.analysis_status_calls as f64 <= keys.len() as f64 * 1.2,
        "{} index-status checks for {} analyses",
        c.analysis_status_calls,
        keys.len()
    );
    let ledger = ws.ledger();
    let kept: String = ledger
        .conn()
        .query_row(
            "SELECT value FROM facts WHERE name = 'analysis_times'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let bins: std::collections::HashMap<String, (i64, Option<i64>)> =
        serde_json::from_str(&kept).unwrap();
    assert!(
        bins.values()
            .any(|(lo, hi)| *lo < 6_000 && hi.is_some_and(|hi| (6_000..9_000).contains(&hi))),
        "what an analysis takes is kept for the next run: {kept}"
    );
    eprintln!(
        "{} index-status checks, kept {kept}",
        c.analysis_status_calls
    );
}
