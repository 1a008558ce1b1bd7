//! `mi-import demo`: the sample manifest against the built-in emulator, with no credentials
//! and no set-up. The emulator is started in-process with a little latency and a few faults,
//! so the demo shows retries and throttling as a real run would.

use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::app::{self, ImportJob, ImportResult, Manifest};
use crate::config::{Credentials, Limits, Target};
use crate::emulator::{Emulator, EmulatorConfig};
use crate::progress::Display;

/// The demo's ledger, in the working directory; each demo starts it afresh, since each demo's
/// emulator starts empty.
pub const DEMO_DB: &str = "mi-import-demo.db";
const DEMO_MANIFEST: &str = include_str!("../sample-manifests/demo.csv");

/// The emulator as the demo runs it: some latency, a few throttles, errors and lost answers.
pub fn emulator_config(credentials: Credentials) -> EmulatorConfig {
    EmulatorConfig {
        latency: (Duration::from_millis(20), Duration::from_millis(120)),
        rate_429: 0.01,
        rate_503: 0.01,
        drop_after: 0.01,
        import_time: Duration::from_secs(2),
        seed: rand::random(),
        ..EmulatorConfig::new(credentials)
    }
}

/// MI's list in the demo's emulator shows a new asset at once; a short settle window keeps
/// the demo's lost answers from making it wait a minute.
const DEMO_LIST_SETTLE: Duration = Duration::from_secs(3);

pub async fn run(
    rate: f64,
    db: &Path,
    analyze: bool,
    display: Display,
    shutdown: CancellationToken,
) -> Result<ImportResult> {
    let credentials = Credentials::new(
        format!("demo-{:08x}", rand::random::<u32>()),
        format!("{:032x}", rand::random::<u128>()),
    );
    let config = emulator_config(credentials.clone());
    let emulator =
        Emulator::start(config.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let shown = db.display().to_string();
    let db = db.to_path_buf();
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    crate::progress::note(&format!(
        "demo: MI emulator on {} (workspace {}, project {}); importing sample-manifests/demo.csv at {rate} requests/s\n",
        emulator.endpoint(),
        config.workspace,
        config.project
    ));
    let target = Target::new(
        &emulator.endpoint(),
        Some(config.workspace.clone()),
        Some(config.project.clone()),
    )?;
    let limits = Limits::new(
        rate,
        8,
        crate::config::DEFAULT_MAX_ATTEMPTS,
        Duration::from_secs(5),
    )?;
    let mut job = ImportJob {
        manifest: Manifest::Builtin {
            name: "sample-manifests/demo.csv",
            text: DEMO_MANIFEST,
        },
        display,
        list_settle: DEMO_LIST_SETTLE,
        ..ImportJob::new(db.clone(), target, credentials, limits)
    };
    job.options.confirm = Some(Duration::from_secs(60));
    if analyze {
        job.options.analyze = Some(crate::runner::AnalysisPlan {
            request: crate::api::analysis::AnalysisRequest {
                person_count: 0,
                scene_range: None,
                scene_seconds: None,
                language: None,
                audio_effects: false,
                tag_ids: Vec::new(),
            },
            pick: crate::ledger::analyses::Pick {
                again_failed: false,
                asked_only: true,
            },
        });
    }
    let result = app::import(job, shutdown).await;
    let tally = emulator.tally();
    emulator.stop();
    let mut result = result?;
    result.summary.push_str(&format!(
        "the emulator saw {} registrations for {} distinct keys ({} registered twice)\n",
        tally.registrations, tally.keys, tally.keys_twice,
    ));
    if analyze {
        result.summary.push_str(&format!(
            "and accepted {} analysis requests for {} assets ({} analysed twice)\n",
            tally.analyses, tally.analysed, tally.analysed_twice,
        ));
    }
    // The emulator is gone with this process, and the next demo starts afresh: a real run's
    // advice (run again, confirm later) would mislead here.
    result.next_steps = format!(
        "try: mi-import status --db {shown}   |   mi-import report --db {shown} --state skipped\n"
    );
    Ok(result)
}
