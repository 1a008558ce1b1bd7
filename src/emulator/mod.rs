//! The MI emulator: the same paths, envelopes and signature check as Media Intelligence, with
//! knobs for latency, faults and a server-side rate limit. `demo` and the tests run it
//! in-process; `mi-import emulator --listen ADDR` serves it for manual use and benchmarks.
//!
//! It counts registrations per (bucket, key) and analyses per asset, so a test can prove that
//! nothing was registered or analysed twice. It is a stand-in, not a model of MI's internals:
//! where MI's behaviour is unknown (the unsure points of docs/service.md) the knobs play each reading:
//! what the asset list's `fileName` holds, how late it shows a new asset, whether its entries
//! carry a creation time, a size or the upload status, whether asset IDs grow in order, and
//! assets already in the project before a run. Its credentials are the client's own
//! (`NCLOUD_ACCESS_KEY`/`NCLOUD_SECRET_KEY`, or `~/.ncloud/configure`); `/_emulator/stats`
//! (unsigned) shows what it saw.

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
pub use state::{AssetRecord, CallKind, Counters, Tally, busiest_second, final_status};

/// What the asset list's `fileName` holds (docs/service.md marks this unsure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileNameMode {
    /// The full object key.
    FullKey,
    /// The key's last path segment.
    LastSegment,
}

/// A redirect the emulator answers instead of doing the work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectFault {
    pub status: u16,
    pub location: String,
    /// Share of calls redirected, in percent.
    pub percent: u32,
    pub register_only: bool,
}

/// Keys containing `containing` are throttled once (429 with `retry_after`); their next
/// register call makes the asset `made_after` it arrives, and its answer is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottledKey {
    pub containing: String,
    pub retry_after: Duration,
    pub made_after: Duration,
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
    /// Register calls answered 503 (the gateway's "Endpoint Error") after the asset was made.
    pub fail_after_create: f64,
    /// Register and analysis calls whose connection is dropped before the work is done.
    pub drop_before: f64,
    /// Register and analysis calls whose connection is dropped after the work is done.
    pub drop_after: f64,
    /// Requests per second answered before the gateway says 429; `None` for no limit.
    pub rate_limit: Option<u32>,
    /// How long an import stays `IN_PROGRESS`.
    pub import_time: Duration,
    /// And how much longer per GB of the object (its size from `sizes`).
    pub import_time_per_gb: Duration,
    /// Keys containing this text are refused with HTTP 400 (a permanent error).
    pub reject_containing: Option<String>,
    /// The message of that refusal (MI's words may hold anything), and its status.
    pub reject_message: Option<String>,
    pub reject_status: u16,
    /// Register calls make the asset, then answer 200 with a body that never ends.
    pub endless_register: bool,
    pub file_name: FileNameMode,
    /// How long after its creation an asset appears in the asset list.
    pub list_lag: Duration,
    /// Whether list entries carry `createdTime` (MI's clock, Korea time, no zone).
    pub list_created_time: bool,
    /// Whether list entries carry `metaData.size`.
    pub list_size: bool,
    /// Whether list entries carry `uploadStatus`.
    pub list_upload_status: bool,
    /// New assets get random IDs instead of growing ones.
    pub random_ids: bool,
    /// The asset list serves the newest assets first instead of in ID order (its order is not
    /// documented).
    pub list_newest_first: bool,
    /// The asset list's answers leave out `totalPage` (documented as always there).
    pub list_without_total_page: bool,
    /// For this many walks over the asset list, an older asset is deleted and a new one added
    /// (as someone in the console would) right after the walk's first page is served: the
    /// total holds, and every later entry slides one place.
    pub list_churn: u32,
    /// The list's `fileName` is stored normalised: Unicode NFC, without a leading `/`.
    pub normalize_names: bool,
    /// An asset's details carry `key` (the object key it was made from) and `bucketName`, as
    /// NCP documents; without, they carry only what its list entry does (the other reading).
    pub details_key: bool,
    /// Refusals of `reject_containing` keys come in NCP's generic envelope,
    /// `{responseError: {returnCode, returnMessage}}`, instead of MI's `{code, message}`.
    pub reject_in_generic_envelope: bool,
    /// Answers this share of calls (of the register call only, if `register_only`) with a
    /// redirect instead of doing anything.
    pub redirect: Option<RedirectFault>,
    /// A key that waits in a backoff, then leaves, and whose answer is lost.
    pub throttle_then_lose: Option<ThrottledKey>,
    /// For keys containing the text, the register call's answer carries this as `assetId`
    /// (the asset is made all the same), as a broken gateway or a changed API might: `0`,
    /// `-5`, `"12345"`.
    pub answer_asset_id: Option<(String, serde_json::Value)>,
    /// Register calls for keys containing this text lose their answer after the asset is made.
    pub lose_containing: Option<String>,
    /// The first register call for each key containing this text is dropped before the asset
    /// is made (the key's later calls go through).
    pub lose_first_before_containing: Option<String>,
    /// Objects' sizes by (bucket, key).
    pub sizes: std::collections::HashMap<(String, String), u64>,
    /// Assets in the project before anything is registered (console uploads, another ledger).
    pub preload: Vec<(String, String)>,
    /// Looks at an analysis before it reaches its final status (unless `analysis_time`).
    pub analysis_polls: u32,
    /// How long an analysis takes, from its acceptance (instead of `analysis_polls`)...
    pub analysis_time: Option<Duration>,
    /// ...plus this per GB of the asset's size.
    pub analysis_time_per_gb: Duration,
    /// The index calls answer as MI's examples spell them (`indexId` for a request's answer,
    /// `analysisStatusMessage` for a failure's reason), not as its reference does (`id`,
    /// `analyzeStatusMessage`).
    pub analysis_example_spelling: bool,
    /// After this many registrations the key pair is refused (401), as if revoked mid-run.
    pub refuse_after: Option<u64>,
    /// Added to the latency of import-status answers only.
    pub status_latency: Duration,
    /// How long a registration's answer takes after the asset was made (the asset exists
    /// even if the client gives up meanwhile).
    pub answer_delay: Duration,
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
            fail_after_create: 0.0,
            drop_before: 0.0,
            drop_after: 0.0,
            rate_limit: None,
            import_time: Duration::ZERO,
            import_time_per_gb: Duration::ZERO,
            reject_containing: None,
            reject_message: None,
            reject_status: 400,
            endless_register: false,
            file_name: FileNameMode::FullKey,
            list_lag: Duration::ZERO,
            list_created_time: true,
            list_size: true,
            list_upload_status: false,
            random_ids: false,
            list_newest_first: false,
            list_without_total_page: false,
            list_churn: 0,
            normalize_names: false,
            details_key: true,
            reject_in_generic_envelope: false,
            redirect: None,
            answer_asset_id: None,
            throttle_then_lose: None,
            lose_containing: None,
            lose_first_before_containing: None,
            sizes: Default::default(),
            preload: Vec::new(),
            analysis_polls: 2,
            analysis_time: None,
            analysis_time_per_gb: Duration::ZERO,
            analysis_example_spelling: false,
            refuse_after: None,
            status_latency: Duration::ZERO,
            answer_delay: Duration::ZERO,
            seed: 1,
        }
    }
}

/// Objects' sizes from a CSV file of `bucket,key,size` rows (no header), for `--sizes`.
pub fn read_sizes(
    path: &std::path::Path,
) -> Result<std::collections::HashMap<(String, String), u64>> {
    Ok(read_pairs(path, true)?
        .into_iter()
        .map(|(b, k, size)| ((b, k), size.unwrap_or(0)))
        .collect())
}

/// Assets present before a run, from a CSV file of `bucket,key` rows (no header), for
/// `--preload`.
pub fn read_preload(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    Ok(read_pairs(path, false)?
        .into_iter()
        .map(|(b, k, _)| (b, k))
        .collect())
}

/// Reads `bucket,key[,size]` rows (no header) from a CSV file.
fn read_pairs(path: &std::path::Path, sized: bool) -> Result<Vec<(String, String, Option<u64>)>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: line {}", path.display(), line + 1))?;
        let field = |i: usize| record.get(i).unwrap_or("").to_owned();
        let size = match (sized, record.get(2)) {
            (true, Some(s)) => Some(s.trim().parse().with_context(|| {
                format!(
                    "{}: line {}: size `{s}` is not a number",
                    path.display(),
                    line + 1
                )
            })?),
            _ => None,
        };
        rows.push((field(0), field(1), size));
    }
    Ok(rows)
}

/// A running emulator. Dropping it does not stop it; call [`Emulator::stop`].
#[derive(Clone)]
pub struct Emulator {
    pub addr: SocketAddr,
    shared: Arc<state::Shared>,
    stop: CancellationToken,
    /// Served in this process without a socket ([`Emulator::local`]).
    local: Option<axum::Router>,
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
        Ok(Self {
            addr,
            shared,
            stop,
            local: None,
        })
    }

    /// An emulator served in this process, reached through [`Emulator::local_mi`] without a
    /// socket (a test on paused time); its endpoint only names it. Its handlers run as a
    /// server's do: on their own, whether the caller waits for them or not.
    pub fn local(config: EmulatorConfig) -> Self {
        let shared = Arc::new(state::Shared::new(config));
        let router = routes::router(shared.clone());
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            shared,
            stop: CancellationToken::new(),
            local: Some(router),
        }
    }

    /// What a client reaches a [`Emulator::local`] emulator through.
    pub fn local_mi(&self) -> Option<crate::api::local::Local> {
        let router = self.local.clone()?;
        Some(crate::api::local::Local(Arc::new(LocalRouter(router))))
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

    /// Adds an asset as a console upload would (not a registration through the API).
    pub fn add_foreign_asset(&self, bucket: &str, key: &str) -> i64 {
        self.shared.add_foreign(bucket, key)
    }

    /// From now on, analysis requests lose their connection before MI accepts them (or no
    /// longer do).
    pub fn drop_analysis_requests(&self, on: bool) {
        self.shared
            .analysis_drops
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, new assets take this long to appear in the list (a search index under
    /// load); those made before keep the lag they had.
    pub fn set_list_lag(&self, lag: Duration) {
        self.shared
            .list_lag_ms
            .store(lag.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, asset details carry the object key (or no longer do).
    pub fn set_details_key(&self, on: bool) {
        self.shared
            .details_key
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Deletes an asset, as the console's delete does.
    pub fn delete_asset(&self, asset_id: i64) -> bool {
        self.shared.delete(asset_id)
    }

    /// Accepted analysis requests per asset.
    pub fn analyses_accepted(&self) -> std::collections::HashMap<i64, u32> {
        self.shared.analyses_accepted()
    }

    /// What the registrations and accepted analyses add up to.
    pub fn tally(&self) -> Tally {
        self.shared.tally()
    }

    /// What it saw, in words, for the operator when it stops.
    pub fn describe(&self) -> String {
        let c = self.counters();
        let t = self.tally();
        format!(
            "the emulator answered {} requests: {} registrations ({} answered 503 after creating, {} dropped before and {} after), \
             {} import-status checks, {} asset-list pages, {} analysis requests; {} throttled, {} answered 503, {} refused for a bad signature\n\
             {} assets registered for {} distinct keys ({} registered more than once); {} assets analysed more than once",
            c.requests,
            c.register_calls,
            c.failed_after_create,
            c.dropped_before,
            c.dropped_after,
            c.status_calls,
            c.list_calls,
            c.analysis_calls,
            c.throttled,
            c.unavailable,
            c.unauthorized,
            t.registrations,
            t.keys,
            t.keys_twice,
            t.analysed_twice
        )
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

/// The emulator's router, served without a socket.
struct LocalRouter(axum::Router);

impl crate::api::local::LocalMi for LocalRouter {
    fn serve(
        &self,
        mut request: axum::http::Request<axum::body::Body>,
    ) -> crate::api::local::LocalAnswer {
        let mut router = self.0.clone();
        let hangup = Hangup::default();
        request.extensions_mut().insert(hangup.clone());
        let handling = tokio::spawn(async move {
            tokio::select! {
                answer = tower::Service::call(&mut router, request) => answer.ok(),
                _ = hangup.0.notified() => None,
            }
        });
        Box::pin(async move { handling.await.ok().flatten() })
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
