//! Shared set-up for the integration tests: a temp dir, a manifest, a started emulator on
//! loopback, and helpers to run an import in-process; the real binary is run with [`Bin`].
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use mi_import::app::{self, ImportJob, ImportResult, Manifest};
use mi_import::config::{Credentials, Limits, Target};
use mi_import::emulator::{Emulator, EmulatorConfig};
use mi_import::ledger::{Ledger, State};

pub mod bin;
pub mod hostile_s3;
pub mod s3;

pub use bin::{Bin, Running};

pub const ACCESS: &str = "test-access-key";
pub const SECRET: &str = "test-secret-9f1c2e";
pub const BUCKET: &str = "media-archive";
/// The settle window the tests give MI's asset list: the emulator shows a new asset at once
/// unless a test gives it a lag, so a short window proves absence as surely as a long one.
pub const LIST_SETTLE: Duration = Duration::from_secs(2);

pub fn credentials() -> Credentials {
    Credentials::new(ACCESS.into(), SECRET.into())
}

/// A temp dir holding the ledger and manifests of one test.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a header-form manifest of `keys` in [`BUCKET`].
    pub fn manifest(&self, name: &str, keys: &[String]) -> PathBuf {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["bucket", "key"]).unwrap();
        for k in keys {
            w.write_record([BUCKET, k.as_str()]).unwrap();
        }
        let path = self.path(name);
        std::fs::write(&path, w.into_inner().unwrap()).unwrap();
        path
    }

    pub fn ledger(&self) -> Ledger {
        Ledger::open(&self.db()).unwrap()
    }

    /// (key, state, asset_id, attempts) of every row.
    pub fn rows(&self) -> Vec<(String, String, Option<i64>, u32)> {
        let ledger = self.ledger();
        let mut stmt = ledger
            .conn()
            .prepare("SELECT key, state, asset_id, attempts FROM keys ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, State>(1)?.as_str().to_owned(),
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    pub fn count(&self, state: State) -> usize {
        self.rows().iter().filter(|r| r.1 == state.as_str()).count()
    }
}

pub fn keys(n: usize, prefix: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}/clip-{i:05}.mp4"))
        .collect()
}

pub async fn emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("emulator starts")
}

/// The emulator served in this process, reached without a socket: for a test on paused time
/// (`#[tokio::test(start_paused = true)]`), where its latencies, import times and lags and the
/// run's own waits cost no real time. A job made for it with [`job`] or [`base_job`] talks to it.
pub fn local(config: EmulatorConfig) -> Emulator {
    Emulator::local(config)
}

pub fn healthy() -> EmulatorConfig {
    EmulatorConfig::new(credentials())
}

/// A job against `emulator` with no source yet and no rate limit unless set.
pub fn base_job(ws: &Workspace, emulator: &Emulator) -> ImportJob {
    let target = Target::new(
        &emulator.endpoint(),
        Some("demo-workspace".into()),
        Some("1001".into()),
    )
    .unwrap();
    // The shipped request timeout: a loopback server is slow only on a busy machine, and a
    // test that counts requests must not see one retried for that.
    let limits = Limits::new(0.0, 16, 6, Duration::from_secs(30)).unwrap();
    ImportJob {
        list_settle: LIST_SETTLE,
        local_mi: emulator.local_mi(),
        ..ImportJob::new(ws.db(), target, credentials(), limits)
    }
}

/// An import of `manifest` against `emulator`, with no rate limit unless set.
pub fn job(ws: &Workspace, emulator: &Emulator, manifest: PathBuf) -> ImportJob {
    ImportJob {
        manifest: Manifest::File(manifest),
        ..base_job(ws, emulator)
    }
}

pub async fn import(job: ImportJob) -> ImportResult {
    app::import(job, CancellationToken::new())
        .await
        .expect("import runs")
}

/// Asserts the emulator registered each key exactly once, and the ledger agrees.
pub fn assert_registered_once(ws: &Workspace, emulator: &Emulator, keys: &[String]) {
    assert_eq!(emulator.duplicates(), vec![], "keys registered twice");
    for k in keys {
        assert_eq!(emulator.registrations(BUCKET, k), 1, "{k}");
    }
    let assets: std::collections::HashMap<i64, String> = emulator
        .assets()
        .into_iter()
        .map(|a| (a.asset_id, a.key))
        .collect();
    for (key, state, asset_id, _) in ws.rows() {
        if keys.contains(&key) {
            assert_eq!(state, "registered", "{key}");
            let asset_id = asset_id.unwrap_or_else(|| panic!("{key} has no asset id"));
            assert_eq!(
                assets.get(&asset_id),
                Some(&key),
                "asset {asset_id} belongs to {key}"
            );
        }
    }
}
