//! The emulator's HTTP surface: MI's paths and envelopes, behind the gateway's checks.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::Hangup;
use super::state::{AssetRecord, CallKind, Fault, Shared, busiest_second};
use crate::api::client::HEADER_TRACE_ID;
use crate::api::signer::{self, HEADER_ACCESS_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// The gateway refuses timestamps further than this from its clock.
const SIGNATURE_WINDOW: Duration = Duration::from_secs(5 * 60);

type Shared_ = Arc<Shared>;

pub(super) fn router(shared: Shared_) -> Router {
    let project = "/api/v1/workspaces/{ws}/projects/{pid}";
    Router::new()
        .route("/api/v1/workspaces/{ws}", get(workspace))
        .route("/api/v1/workspaces/{ws}/projects", get(projects))
        .route(project, get(project_details))
        .route(&format!("{project}/assets"), get(list_assets))
        .route(
            &format!("{project}/assets/import/object-storage"),
            post(register),
        )
        .route(
            &format!("{project}/assets/{{asset_id}}/import-status"),
            get(import_status),
        )
        .route(
            &format!("{project}/assets/{{asset_id}}"),
            get(asset_details),
        )
        .route(
            &format!("{project}/assets/{{asset_id}}/index"),
            post(analyze),
        )
        .route(
            &format!("{project}/assets/{{asset_id}}/index/status"),
            get(analysis_status),
        )
        .layer(middleware::from_fn_with_state(shared.clone(), gateway))
        // Unsigned, outside the gateway: for benchmarks and people, not part of MI.
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/assets", get(all_assets))
        .with_state(shared)
}

fn gateway_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"errorCode": code, "message": message}});
    (status, [(HEADER_TRACE_ID, trace_id())], Json(body)).into_response()
}

fn mi_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(HEADER_TRACE_ID, trace_id())],
        Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

fn success(result: Value) -> Response {
    let body = json!({"code": "0", "message": "success", "result": result});
    (StatusCode::OK, [(HEADER_TRACE_ID, trace_id())], Json(body)).into_response()
}

fn trace_id() -> String {
    format!("emu-{:016x}", rand::random::<u64>())
}

/// What the API Gateway does before MI sees a request: signature, rate limit, faults, latency.
async fn gateway(State(shared): State<Shared_>, request: Request, next: Next) -> Response {
    shared.count(|c| c.requests += 1);
    if let Err(why) = check_signature(&shared, request.method(), request.uri(), request.headers()) {
        shared.count(|c| c.unauthorized += 1);
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "200",
            &format!("Authentication Failed: {why}"),
        );
    }
    if shared
        .config
        .refuse_after
        .is_some_and(|n| shared.counters().register_calls >= n)
    {
        shared.count(|c| c.unauthorized += 1);
        return gateway_error(
            StatusCode::UNAUTHORIZED,
            "200",
            "Authentication Failed: the key pair was revoked",
        );
    }
    let kind = CallKind::of(request.method().as_str(), request.uri().path());
    shared.log(kind);
    if let Some(redirect) = shared.redirect_for(kind) {
        shared.count(|c| c.redirected += 1);
        let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
        return (
            status,
            [
                (axum::http::header::LOCATION, redirect.location),
                (HEADER_TRACE_ID.parse().expect("a header name"), trace_id()),
            ],
        )
            .into_response();
    }
    let fault = shared.admit();
    tokio::time::sleep(shared.latency()).await;
    match fault {
        Fault::Throttle => gateway_error(StatusCode::TOO_MANY_REQUESTS, "420", "Rate limited"),
        Fault::Unavailable => {
            gateway_error(StatusCode::SERVICE_UNAVAILABLE, "500", "Endpoint Error")
        }
        Fault::None => next.run(request).await,
    }
}

fn check_signature(
    shared: &Shared,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(access), Some(signature)) = (
        header(HEADER_TIMESTAMP),
        header(HEADER_ACCESS_KEY),
        header(HEADER_SIGNATURE),
    ) else {
        return Err("missing signature headers");
    };
    let ts_ms: u128 = ts.parse().map_err(|_| "timestamp is not a number")?;
    let now = signer::now_millis();
    if now.abs_diff(ts_ms) > SIGNATURE_WINDOW.as_millis() {
        return Err("timestamp outside the 5-minute window");
    }
    let creds = &shared.config.credentials;
    if access != creds.access_key() {
        return Err("unknown access key");
    }
    let target = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    if !signer::verify_v2(
        method.as_str(),
        target,
        ts,
        access,
        creds.secret_key().as_bytes(),
        signature,
    ) {
        return Err("signature mismatch");
    }
    Ok(())
}

/// The answer to send when the path names another workspace or project.
/// MI's answer for an asset it does not have.
fn no_asset(asset_id: i64) -> Response {
    mi_error(
        StatusCode::NOT_FOUND,
        "40403",
        &format!("asset {asset_id} not found"),
    )
}

fn wrong_scope(shared: &Shared, ws: &str, pid: Option<&str>) -> Option<Response> {
    if ws != shared.config.workspace {
        let message = format!("workspace {ws} not found");
        return Some(mi_error(StatusCode::NOT_FOUND, "40401", &message));
    }
    match pid {
        Some(pid) if pid != shared.config.project => {
            let message = format!("project {pid} not found");
            Some(mi_error(StatusCode::NOT_FOUND, "40402", &message))
        }
        _ => None,
    }
}

async fn workspace(State(shared): State<Shared_>, Path(ws): Path<String>) -> Response {
    if let Some(r) = wrong_scope(&shared, &ws, None) {
        return r;
    }
    success(json!({"workspaceName": ws, "bucketName": shared.config.bucket}))
}

async fn projects(State(shared): State<Shared_>, Path(ws): Path<String>) -> Response {
    if let Some(r) = wrong_scope(&shared, &ws, None) {
        return r;
    }
    success(json!({"content": [{"projectId": shared.config.project, "projectName": "emulated"}]}))
}

async fn project_details(
    State(shared): State<Shared_>,
    Path((ws, pid)): Path<(String, String)>,
) -> Response {
    if let Some(r) = wrong_scope(&shared, &ws, Some(&pid)) {
        return r;
    }
    success(json!({"projectId": pid, "projectName": "emulated"}))
}

#[derive(Deserialize)]
struct ImportBody {
    key: Option<String>,
    #[serde(rename = "bucketName")]
    bucket_name: Option<String>,
}

async fn register(
    State(shared): State<Shared_>,
    Extension(hangup): Extension<Hangup>,
    Path((ws, pid)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    shared.count(|c| c.register_calls += 1);
    if let Some(r) = wrong_scope(&shared, &ws, Some(&pid)) {
        return r;
    }
    let Ok(ImportBody {
        key: Some(key),
        bucket_name: Some(bucket),
    }) = serde_json::from_slice(&body)
    else {
        return mi_error(
            StatusCode::BAD_REQUEST,
            "10001",
            "invalid request: key and bucketName are required",
        );
    };
    if key.is_empty() {
        return mi_error(StatusCode::BAD_REQUEST, "10014", "no file selected");
    }
    if key.ends_with('/') {
        return mi_error(StatusCode::BAD_REQUEST, "10016", "a folder was selected");
    }
    if shared
        .config
        .reject_containing
        .as_deref()
        .is_some_and(|r| key.contains(r))
    {
        let message = shared
            .config
            .reject_message
            .as_deref()
            .unwrap_or("invalid request");
        let status =
            StatusCode::from_u16(shared.config.reject_status).unwrap_or(StatusCode::BAD_REQUEST);
        if shared.config.reject_in_generic_envelope {
            let body = json!({"responseError": {"returnCode": "10001", "returnMessage": message}});
            return (status, [(HEADER_TRACE_ID, trace_id())], Json(body)).into_response();
        }
        return mi_error(status, "10001", message);
    }
    let mut faults = shared.register_faults();
    let mut made_after = Duration::ZERO;
    match shared.throttle_then_lose(&key) {
        Err(after) => {
            shared.count(|c| c.throttled += 1);
            let mut answer = gateway_error(StatusCode::TOO_MANY_REQUESTS, "420", "Rate limited");
            answer.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                after.as_secs().to_string().parse().expect("a number"),
            );
            return answer;
        }
        Ok(Some(delay)) => {
            made_after = delay;
            faults.drop_after = true;
        }
        Ok(None) => {}
    }
    if shared
        .config
        .lose_containing
        .as_deref()
        .is_some_and(|text| key.contains(text))
    {
        faults.drop_after = true;
    }
    if faults.drop_before || shared.drop_first_before(&key) {
        shared.count(|c| c.dropped_before += 1);
        hangup.now().await;
    }
    // MI goes on with a request whose client has gone: the asset is made even if this
    // handler is dropped meanwhile.
    let asset_id = if made_after.is_zero() {
        shared.create(&bucket, &key)
    } else {
        let (maker, bucket, key) = (shared.clone(), bucket.clone(), key.clone());
        let made = tokio::spawn(async move {
            tokio::time::sleep(made_after).await;
            maker.create(&bucket, &key)
        });
        match made.await {
            Ok(id) => id,
            Err(_) => return mi_error(StatusCode::INTERNAL_SERVER_ERROR, "900", "unexpected"),
        }
    };
    tokio::time::sleep(shared.config.answer_delay).await;
    if faults.drop_after {
        shared.count(|c| c.dropped_after += 1);
        hangup.now().await;
    }
    if faults.fail_after_create {
        // The gateway gave up on MI's answer; the asset exists all the same.
        shared.count(|c| c.failed_after_create += 1);
        return gateway_error(StatusCode::SERVICE_UNAVAILABLE, "500", "Endpoint Error");
    }
    if shared.config.endless_register {
        return endless_answer();
    }
    let answered = match &shared.config.answer_asset_id {
        Some((text, odd)) if key.contains(text.as_str()) => odd.clone(),
        _ => json!(asset_id),
    };
    success(json!({
        "assetId": answered,
        "createUserName": "emulator",
        "createdTime": "2025-04-23T16:49:23.885456721",
        "updateUserName": "emulator",
        "updatedTime": "2025-04-23T16:49:23.885456721",
    }))
}

async fn import_status(
    State(shared): State<Shared_>,
    Path((ws, pid, asset_id)): Path<(String, String, i64)>,
) -> Response {
    shared.count(|c| c.status_calls += 1);
    tokio::time::sleep(shared.config.status_latency).await;
    if let Some(r) = wrong_scope(&shared, &ws, Some(&pid)) {
        return r;
    }
    let Some(asset) = shared.asset(asset_id) else {
        return no_asset(asset_id);
    };
    let (status, result) = shared.upload_status(&asset);
    success(json!({"assetId": asset_id, "uploadStatus": status, "uploadResult": result}))
}

/// MI's clock as its answers show it: Korea time, with no zone.
fn mi_time(at: std::time::SystemTime) -> String {
    let korea = at + Duration::from_secs(9 * 3600);
    let text = humantime::format_rfc3339_nanos(korea).to_string();
    text.trim_end_matches('Z').to_owned()
}

/// One entry of the asset list, carrying what this reading of the list carries.
fn list_entry(shared: &Shared, asset: &AssetRecord, pid: &str) -> Value {
    let mut meta = json!({});
    if shared.config.list_size
        && let Some(size) = asset.size
    {
        meta["size"] = json!(size);
    }
    let mut entry = json!({
        "assetId": asset.asset_id,
        "fileName": shared.file_name(&asset.key),
        "projectId": pid,
        "metaData": meta,
    });
    if shared.config.list_created_time {
        entry["createdTime"] = json!(mi_time(asset.created_wall));
    }
    if shared.config.list_upload_status {
        entry["uploadStatus"] = json!(shared.upload_status(asset).0);
    }
    entry
}

async fn asset_details(
    State(shared): State<Shared_>,
    Path((ws, pid, asset_id)): Path<(String, String, i64)>,
) -> Response {
    shared.count(|c| c.asset_calls += 1);
    if let Some(r) = wrong_scope(&shared, &ws, Some(&pid)) {
        return r;
    }
    match shared.asset(asset_id) {
        Some(asset) => {
            let mut details = list_entry(&shared, &asset, &pid);
            if shared.details_key.load(std::sync::atomic::Ordering::SeqCst) {
                details["key"] = json!(asset.key);
                details["bucketName"] = json!(asset.bucket);
            }
            success(details)
        }
        None => no_asset(asset_id),
    }
}

async fn analyze(
    State(shared): State<Shared_>,
    Extension(hangup): Extension<Hangup>,
    Path((ws, pid, asset_id)): Path<(String, String, i64)>,
    body: axum::body::Bytes,
) -> Response {
    shared.count(|c| c.analysis_calls += 1);
    if let Some(r) = wrong_scope(&shared, &ws, Some(&pid)) {
        return r;
    }
    let Some(asset) = shared.asset(asset_id) else {
        return no_asset(asset_id);
    };
    let persons = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("analysisPersonCount").and_then(Value::as_u64));
    if persons.is_none_or(|n| n > 10) {
        return mi_error(
            StatusCode::BAD_REQUEST,
            "10001",
            "invalid request: analysisPersonCount (0-10) is required",
        );
    }
    if shared.upload_status(&asset).0 != "COMPLETED" {
        return mi_error(
            StatusCode::BAD_REQUEST,
            "10014",
            "the asset's registration is not complete",
        );
    }
    if shared.roll(shared.config.drop_before)
        || shared
            .analysis_drops
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        shared.count(|c| c.dropped_before += 1);
        hangup.now().await;
    }
    let index_id = match shared.start_analysis(asset_id) {
        Ok(id) => id,
        Err(status) => {
            return mi_error(
                StatusCode::CONFLICT,
                "40901",
                &format!("an analysis of asset {asset_id} is already {status}"),
            );
        }
    };
    if shared.roll(shared.config.drop_after) {
        shared.count(|c| c.dropped_after += 1);
        hangup.now().await;
    }
    success(json!({ spelt(&shared, "id", "indexId"): index_id }))
}

/// A 200 whose JSON body never ends, as a broken proxy may send: `{"code":"0","result":
/// {"assetId":1,"pad":"xxxx…`, a megabyte at a time, for ever.
fn endless_answer() -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::new(Endless { started: false }),
    )
        .into_response()
}

struct Endless {
    started: bool,
}

impl http_body::Body for Endless {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let chunk = if std::mem::replace(&mut self.started, true) {
            bytes::Bytes::from(vec![b'x'; 1 << 20])
        } else {
            bytes::Bytes::from_static(br#"{"code":"0","result":{"assetId":1,"pad":""#)
        };
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

/// An index answer's field as MI's reference spells it, or as its examples do where the
/// emulator plays that reading.
fn spelt(shared: &Shared_, reference: &'static str, examples: &'static str) -> &'static str {
    if shared.config.analysis_example_spelling {
        examples
    } else {
        reference
    }
}

async fn analysis_status(
    State(shared): State<Shared_>,
    Path((ws, pid, asset_id)): Path<(String, String, i64)>,
) -> Response {
    shared.count(|c| c.analysis_status_calls += 1);
    if let Some(r) = wrong_scope(&shared, &ws, Some(&pid)) {
        return r;
    }
    let Some(asset) = shared.asset(asset_id) else {
        return no_asset(asset_id);
    };
    match shared.poll_analysis(asset_id, &asset.key) {
        None => success(json!({"status": "BEFORE_ANALYZE"})),
        Some(record) => {
            let message = (record.status == "ANALYZE_FAIL").then_some("no scene could be analysed");
            success(json!({
                "status": record.status,
                "indexId": record.index_id,
                spelt(&shared, "analyzeStatusMessage", "analysisStatusMessage"): message,
            }))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    page_num: Option<u32>,
    page_size: Option<u32>,
}

async fn list_assets(
    State(shared): State<Shared_>,
    Path((ws, pid)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Response {
    shared.count(|c| c.list_calls += 1);
    if let Some(r) = wrong_scope(&shared, &ws, Some(&pid)) {
        return r;
    }
    let page_num = q.page_num.unwrap_or(1).max(1);
    let page_size = q.page_size.unwrap_or(20).clamp(1, 1000);
    let (assets, total) = shared.page(page_num, page_size);
    let content: Vec<Value> = assets
        .iter()
        .map(|asset| list_entry(&shared, asset, &pid))
        .collect();
    let mut result = json!({
        "content": content,
        "totalCount": total,
        "totalPage": total.div_ceil(page_size as usize),
        "pageNo": page_num,
    });
    if shared.config.list_without_total_page {
        result.as_object_mut().map(|r| r.remove("totalPage"));
    }
    success(result)
}

/// Every asset the project holds, as JSON: `{asset_id, bucket, key, registered}` (a
/// benchmark's truth to check a ledger against).
async fn all_assets(State(shared): State<Shared_>) -> Response {
    let assets: Vec<Value> = shared
        .assets()
        .iter()
        .map(|a| {
            json!({"asset_id": a.asset_id, "bucket": a.bucket, "key": a.key, "registered": a.registered})
        })
        .collect();
    Json(Value::Array(assets)).into_response()
}

/// What the emulator has seen, as JSON: counters, assets, duplicates, and the busiest
/// one-second window.
async fn stats(State(shared): State<Shared_>) -> Response {
    let log = shared.request_log();
    let busiest = |kind: Option<CallKind>| {
        let times: Vec<_> = log
            .iter()
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .map(|(t, _)| *t)
            .collect();
        (
            busiest_second(&times),
            times.first().copied(),
            times.last().copied(),
            times.len(),
        )
    };
    let (most_all, ..) = busiest(None);
    let (most_register, first, last, registers) = busiest(Some(CallKind::Register));
    let span = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let c = shared.counters();
    let tally = shared.tally();
    Json(json!({
        "requests": c.requests,
        "register_calls": c.register_calls,
        "status_calls": c.status_calls,
        "list_calls": c.list_calls,
        "asset_calls": c.asset_calls,
        "analysis_calls": c.analysis_calls,
        "analysis_status_calls": c.analysis_status_calls,
        "failed_after_create": c.failed_after_create,
        "dropped_before": c.dropped_before,
        "dropped_after": c.dropped_after,
        "redirected": c.redirected,
        "analyses_twice": tally.analysed_twice,
        "throttled": c.throttled,
        "unavailable": c.unavailable,
        "assets": shared.assets().len(),
        "duplicates": tally.keys_twice,
        "register_arrivals": registers,
        "register_span_secs": span,
        "busiest_second_all": most_all,
        "busiest_second_register": most_register,
    }))
    .into_response()
}
