//! The MI emulator: the same paths, envelopes and signature check as Media Intelligence, with
//! knobs for latency, faults and a server-side rate limit. `demo` and the tests run it
//! in-process; `mi-import emulator --listen ADDR` serves it for manual use and benchmarks.
//!
//! It counts registrations per (bucket, key), so a test can prove that nothing was registered
//! twice. It is a stand-in, not a model of MI's internals: where MI's behaviour is unknown
//! (the error for an unknown workspace, what `fileName` holds) it picks one reading and the
//! knobs allow the other.

mod routes;
mod state;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Credentials;
pub use state::{AssetRecord, CallKind, Counters, busiest_second};

/// What the asset list's `fileName` holds (NCP-API.md marks this unsure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileNameMode {
    /// The full object key.
    FullKey,
    /// The key's last path segment.
    LastSegment,
}

/// How the emulator behaves. Rates are probabilities per request, from 0.0 to 1.0.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub credentials: Credentials,
    pub workspace: String,
    pub project: String,
    /// The bucket linked to the workspace.
    pub bucket: String,
    /// Added before each answer, drawn uniformly from this range.
    pub latency: (Duration, Duration),
    pub rate_429: f64,
    pub rate_503: f64,
    /// Register calls whose connection is dropped before the asset is created.
    pub drop_before: f64,
    /// Register calls whose connection is dropped after the asset is created.
    pub drop_after: f64,
    /// Requests per second answered before the gateway says 429; `None` for no limit.
    pub rate_limit: Option<u32>,
    /// How long an import stays `IN_PROGRESS`.
    pub settle: Duration,
    /// Keys containing this text are refused with HTTP 400 (a permanent error).
    pub reject_containing: Option<String>,
    pub file_name: FileNameMode,
    pub seed: u64,
}

impl EmulatorConfig {
    /// A healthy emulator: no latency, no faults, imports settle at once.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            workspace: "demo-workspace".into(),
            project: "1001".into(),
            bucket: "media-archive".into(),
            latency: (Duration::ZERO, Duration::ZERO),
            rate_429: 0.0,
            rate_503: 0.0,
            drop_before: 0.0,
            drop_after: 0.0,
            rate_limit: None,
            settle: Duration::ZERO,
            reject_containing: None,
            file_name: FileNameMode::FullKey,
            seed: 1,
        }
    }
}

/// A running emulator. Dropping it does not stop it; call [`Emulator::stop`].
#[derive(Clone)]
pub struct Emulator {
    pub addr: SocketAddr,
    shared: Arc<state::Shared>,
    stop: CancellationToken,
}

impl Emulator {
    /// Serves on `listen` (port 0 picks a free port) until stopped.
    pub async fn start(config: EmulatorConfig, listen: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the emulator to {listen}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(state::Shared::new(config));
        let stop = CancellationToken::new();
        let router = routes::router(shared.clone());
        tokio::spawn(accept_loop(listener, router, stop.clone()));
        Ok(Self { addr, shared, stop })
    }

    /// The base URL to give the client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// How many times (bucket, key) was registered.
    pub fn registrations(&self, bucket: &str, key: &str) -> u32 {
        self.shared.registrations(bucket, key)
    }

    /// Every (bucket, key) registered more than once, with its count.
    pub fn duplicates(&self) -> Vec<(String, String, u32)> {
        self.shared.duplicates()
    }

    pub fn assets(&self) -> Vec<AssetRecord> {
        self.shared.assets()
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// When each signed request arrived, and which call it was.
    pub fn request_log(&self) -> Vec<(tokio::time::Instant, CallKind)> {
        self.shared.request_log()
    }
}

/// Lets a handler close its own connection without answering, as a dropped link would.
#[derive(Clone, Default)]
pub(crate) struct Hangup(Arc<Notify>);

impl Hangup {
    pub(crate) async fn now(&self) -> ! {
        self.0.notify_one();
        std::future::pending().await
    }
}

async fn accept_loop(listener: TcpListener, router: axum::Router, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("emulator: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, stop) = (router.clone(), stop.clone());
        tokio::spawn(async move {
            let hangup = Hangup::default();
            let handler_hangup = hangup.clone();
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(handler_hangup.clone());
                    let mut router = router.clone();
                    tower::Service::call(&mut router, request)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection future closes the socket, mid-request if need be.
            tokio::select! {
                _ = connection => {}
                _ = hangup.0.notified() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}
