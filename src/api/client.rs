//! The MI calls mi-import makes, each signed afresh, each answer parsed into a type or an
//! [`ApiError`].
//!
//! The client does no retrying and no rate limiting (the runner owns both); it only turns one
//! request into one answer. Every attempt gets a new timestamp and signature.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, SystemTime};

use super::error::ApiError;
use super::signer::{self, HEADER_ACCESS_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::config::{Credentials, Target};

/// The header MI's gateway uses to identify a request; support asks for it.
pub const HEADER_TRACE_ID: &str = "x-ncp-trace-id";
/// Largest page of the asset list MI serves.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The most of one answer's body that is read. MI's largest answer is an asset-list page of
/// 1,000 entries, a few hundred kilobytes; 16 MiB is far above any real answer and keeps a
/// broken proxy's endless body from taking the machine's memory (`--concurrency` answers at
/// once at most).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;
/// Idle connections kept per host: the runner's concurrency never needs more.
const POOL_IDLE_PER_HOST: usize = 256;

/// Path segments keep only unreserved characters; everything else is escaped, so what we
/// sign is exactly what goes on the wire.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The body of the register call.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportRequest {
    pub key: String,
    #[serde(rename = "bucketName")]
    pub bucket_name: String,
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub asset_id: i64,
    pub trace_id: Option<String>,
}

/// One asset's import status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportStatus {
    pub upload_status: String,
    pub upload_result: Option<String>,
}

/// One asset's analysis, as MI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisStatus {
    pub status: String,
    pub index_id: Option<String>,
    pub message: Option<String>,
}

/// An ID MI may send as a number or as text.
fn id_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One asset as the project's asset list shows it: its ID and name, and what the entry may
/// also carry (not every reading of the list does: docs/service.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSummary {
    pub asset_id: i64,
    pub file_name: String,
    /// `metaData.size`, bytes.
    pub size: Option<u64>,
    /// `createdTime`, written by MI without a zone, read as if UTC (ms).
    pub created: Option<i64>,
    /// `uploadStatus`, if the entry carries the import's status.
    pub upload_status: Option<String>,
}

impl AssetSummary {
    fn from_entry(entry: &Value) -> Option<Self> {
        let text = |p: &str| entry.pointer(p).and_then(Value::as_str);
        Some(Self {
            asset_id: asset_id_of(entry.get("assetId"))?,
            file_name: text("/fileName").unwrap_or_default().to_owned(),
            size: entry
                .pointer("/metaData/size")
                .and_then(as_i64)
                .and_then(|s| u64::try_from(s).ok()),
            created: text("/createdTime")
                .or_else(|| text("/createdDate"))
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .map(crate::clock::epoch_ms),
            upload_status: text("/uploadStatus").map(str::to_owned),
        })
    }
}

/// One asset's details, as far as they tell what it was made from: NCP documents `result.key`
/// as "the full file name uploaded to Object Storage", beside `result.fileName`; whether the
/// service fills it is unsure (docs/service.md), so each is `None` where the answer lacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetDetails {
    pub file_name: Option<String>,
    /// `result.key`: the object key the asset was made from.
    pub key: Option<String>,
    /// `result.bucketName`, where the details name the bucket.
    pub bucket: Option<String>,
}

impl AssetDetails {
    fn from_result(result: &Value) -> Self {
        let text = |name: &str| {
            result
                .get(name)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        Self {
            file_name: text("fileName"),
            key: text("key"),
            bucket: text("bucketName"),
        }
    }
}

/// One page of the project's asset list, with the totals it claims (documented as always
/// there, but a client must not rely on them: docs/service.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPage {
    pub assets: Vec<AssetSummary>,
    pub total_count: Option<u64>,
    pub total_pages: Option<u32>,
    pub page_no: Option<u32>,
}

/// How a signed request reaches MI.
#[derive(Clone)]
enum Transport {
    Network(reqwest::Client),
    /// An MI served in this process (tests on paused time): the client's timeout is applied
    /// here, as reqwest applies it on the network.
    Local(super::local::Local, Duration),
}

/// An answer's body, still to be read (up to [`MAX_ANSWER_BYTES`]).
enum Unread {
    Network(reqwest::Response),
    Local(axum::body::Body),
}

/// A signed-request client for one MI project.
#[derive(Clone)]
pub struct MiClient {
    transport: Transport,
    credentials: Credentials,
    target: Target,
    base: Url,
    /// `/api/v1/workspaces/{ws}/projects/{pid}`, escaped once.
    project: String,
    /// The register call's URL, parsed once: it is the same for every key.
    register_url: Url,
}

impl MiClient {
    pub fn new(
        target: Target,
        credentials: Credentials,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // The OS's trust store (and SSL_CERT_FILE / SSL_CERT_DIR), as the Object Storage
            // client trusts: a company proxy's CA is there. The bundled Mozilla roots only
            // where the OS has none. Proxies come from HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and
            // NO_PROXY.
            .tls_built_in_native_certs(true)
            .tls_built_in_webpki_certs(os_has_no_roots())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .tcp_nodelay(true)
            // A signed request goes to --endpoint and nowhere else: a redirect is an answer
            // to classify, never one to follow (docs/design.md, "Retries and stops").
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mi-import/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Self::over(Transport::Network(http), target, credentials)
    }

    /// A client of an MI served in this process, as [`MiClient::new`]'s is of one on the
    /// network; `target`'s endpoint only names it.
    pub fn local(
        mi: super::local::Local,
        target: Target,
        credentials: Credentials,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::over(Transport::Local(mi, timeout), target, credentials)
    }

    fn over(
        transport: Transport,
        target: Target,
        credentials: Credentials,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(&target.endpoint)
            .map_err(|e| anyhow::anyhow!("endpoint `{}` is not a URL: {e}", target.endpoint))?;
        let project = format!(
            "/api/v1/workspaces/{}/projects/{}",
            utf8_percent_encode(&target.workspace, SEGMENT),
            utf8_percent_encode(&target.project, SEGMENT)
        );
        let mut register_url = base.clone();
        register_url.set_path(&format!("{project}/assets/import/object-storage"));
        Ok(Self {
            transport,
            credentials,
            target,
            base,
            project,
            register_url,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    fn project_path(&self) -> &str {
        &self.project
    }

    /// `POST …/assets/import/object-storage`: registers one key. Not idempotent.
    pub async fn register(&self, bucket: &str, key: &str) -> Result<Registered, ApiError> {
        let body = ImportRequest {
            key: key.to_owned(),
            bucket_name: bucket.to_owned(),
        };
        let (value, trace_id) = self
            .send(Method::POST, self.register_url.clone(), Some(&body))
            .await?;
        let asset_id =
            asset_id_of(value.pointer("/result/assetId")).ok_or_else(|| ApiError::BadBody {
                status: 200,
                message: format!(
                    "result.assetId is {}, not a positive integer",
                    shown(value.pointer("/result/assetId"))
                ),
                trace_id: trace_id.clone(),
            })?;
        Ok(Registered { asset_id, trace_id })
    }

    /// `GET …/assets/{id}/import-status`.
    pub async fn import_status(&self, asset_id: i64) -> Result<ImportStatus, ApiError> {
        let path = format!("{}/assets/{asset_id}/import-status", self.project_path());
        let (value, trace_id) = self.call::<()>(Method::GET, &path, None, None).await?;
        let text = |p: &str| value.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let upload_status = text("/result/uploadStatus").ok_or_else(|| ApiError::BadBody {
            status: 200,
            message: "no result.uploadStatus in the answer".into(),
            trace_id,
        })?;
        Ok(ImportStatus {
            upload_status,
            upload_result: text("/result/uploadResult"),
        })
    }

    /// `GET …/assets?pageNum=N&pageSize=S`, N from 1.
    pub async fn list_assets(&self, page_num: u32, page_size: u32) -> Result<AssetPage, ApiError> {
        let path = format!("{}/assets", self.project_path());
        let query = format!(
            "pageNum={page_num}&pageSize={}",
            page_size.min(MAX_PAGE_SIZE)
        );
        let (value, trace_id) = self
            .call::<()>(Method::GET, &path, Some(&query), None)
            .await?;
        let result = value.get("result").cloned().unwrap_or(Value::Null);
        let entries = match result.get("content") {
            Some(Value::Array(entries)) => entries.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => {
                return Err(ApiError::BadBody {
                    status: 200,
                    message: "asset list: result.content is not a list".into(),
                    trace_id,
                });
            }
        };
        let assets = entries
            .iter()
            .map(|e| {
                AssetSummary::from_entry(e).ok_or_else(|| ApiError::BadBody {
                    status: 200,
                    message: format!(
                        "asset list: an entry's assetId is {}, not a positive integer",
                        shown(e.get("assetId"))
                    ),
                    trace_id: trace_id.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let number = |name: &str| {
            result
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        Ok(AssetPage {
            assets,
            total_count: result.get("totalCount").and_then(Value::as_u64),
            total_pages: number("totalPage"),
            page_no: number("pageNo"),
        })
    }

    /// `POST …/assets/{id}/index`: requests the asset's analysis. Not idempotent (billed); the
    /// index ID if the answer names one.
    pub async fn request_analysis(
        &self,
        asset_id: i64,
        body: &Value,
    ) -> Result<Option<String>, ApiError> {
        let path = format!("{}/assets/{asset_id}/index", self.project_path());
        let (value, _) = self.call(Method::POST, &path, None, Some(body)).await?;
        Ok(id_text(
            value
                .pointer("/result/id")
                .or_else(|| value.pointer("/result/indexId")),
        ))
    }

    /// `GET …/assets/{id}/index/status`.
    pub async fn analysis_status(&self, asset_id: i64) -> Result<AnalysisStatus, ApiError> {
        let path = format!("{}/assets/{asset_id}/index/status", self.project_path());
        let (value, trace_id) = self.call::<()>(Method::GET, &path, None, None).await?;
        let text = |p: &str| value.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let status = text("/result/status").ok_or_else(|| ApiError::BadBody {
            status: 200,
            message: "no result.status in the answer".into(),
            trace_id,
        })?;
        Ok(AnalysisStatus {
            status,
            index_id: id_text(value.pointer("/result/indexId")),
            // The reference names it one way and its examples the other.
            message: text("/result/analyzeStatusMessage")
                .or_else(|| text("/result/analysisStatusMessage")),
        })
    }

    /// `GET …/assets/{id}`: one asset's details (their schema is not documented; that the
    /// asset exists is what matters).
    pub async fn asset(&self, asset_id: i64) -> Result<Value, ApiError> {
        let path = format!("{}/assets/{asset_id}", self.project_path());
        Ok(self.call::<()>(Method::GET, &path, None, None).await?.0)
    }

    /// `GET …/assets/{id}`, read for what the asset was made from.
    pub async fn asset_details(&self, asset_id: i64) -> Result<AssetDetails, ApiError> {
        let value = self.asset(asset_id).await?;
        Ok(AssetDetails::from_result(
            value.get("result").unwrap_or(&Value::Null),
        ))
    }

    /// `GET /api/v1/workspaces/{ws}`: the workspace's details (its linked `bucketName`).
    pub async fn workspace(&self) -> Result<Value, ApiError> {
        let path = format!(
            "/api/v1/workspaces/{}",
            utf8_percent_encode(&self.target.workspace, SEGMENT)
        );
        Ok(self.call::<()>(Method::GET, &path, None, None).await?.0)
    }

    /// `GET …/projects/{pid}`: that the project exists.
    pub async fn project(&self) -> Result<Value, ApiError> {
        Ok(self
            .call::<()>(Method::GET, self.project_path(), None, None)
            .await?
            .0)
    }

    /// Signs and sends one request; a 2xx answer's JSON body, or the error.
    async fn call<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        body: Option<&B>,
    ) -> Result<(Value, Option<String>), ApiError> {
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(query);
        self.send(method, url, body).await
    }

    /// Signs and sends one request to `url`; a 2xx answer's JSON body, or the error.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<(Value, Option<String>), ApiError> {
        self.exchange(method, url, body)
            .await
            .map(|(value, trace_id, _)| (value, trace_id))
    }

    /// `GET /api/v1/workspaces/{ws}`, with the time the gateway's `Date` header says it
    /// answered (to tell the machine's clock from the gateway's: it refuses signatures more
    /// than five minutes off).
    pub async fn workspace_dated(&self) -> Result<(Value, Option<SystemTime>), ApiError> {
        let mut url = self.base.clone();
        url.set_path(&format!(
            "/api/v1/workspaces/{}",
            utf8_percent_encode(&self.target.workspace, SEGMENT)
        ));
        self.exchange::<()>(Method::GET, url, None)
            .await
            .map(|(value, _, date)| (value, date))
    }

    async fn exchange<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<(Value, Option<String>, Option<SystemTime>), ApiError> {
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let signed = signer::sign(
            method.as_str(),
            &target,
            signer::now_millis(),
            &self.credentials,
        );
        let (status, headers, unread) = self.send_signed(method, url, &signed, body).await?;
        let trace_id = header_text(&headers, HEADER_TRACE_ID);
        let retry_after = retry_after(&headers);
        let date =
            header_text(&headers, reqwest::header::DATE.as_str()).and_then(|d| httpdate_parse(&d));
        if (300..400).contains(&status) {
            return Err(ApiError::Redirect {
                status,
                location: header_text(&headers, reqwest::header::LOCATION.as_str()),
                trace_id,
            });
        }
        let bytes = self.body(status, unread, trace_id.as_deref()).await?;
        if !(200..300).contains(&status) {
            return Err(ApiError::from_answer(status, &bytes, trace_id, retry_after));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadBody {
            status,
            message: e.to_string(),
            trace_id: trace_id.clone(),
        })?;
        match value.get("code").and_then(|c| {
            c.as_str()
                .map(str::to_owned)
                .or_else(|| c.as_i64().map(|n| n.to_string()))
        }) {
            Some(code) if code != "0" => Err(ApiError::Http {
                status,
                message: value
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_owned(),
                code: Some(code),
                trace_id,
                retry_after: None,
                gateway: false,
            }),
            _ => Ok((value, trace_id, date)),
        }
    }

    /// Sends one signed request: the answer's status and headers, its body unread.
    async fn send_signed<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        signed: &signer::Signature,
        body: Option<&B>,
    ) -> Result<(u16, HeaderMap, Unread), ApiError> {
        match &self.transport {
            Transport::Network(http) => {
                let mut request = http
                    .request(method, url)
                    .header(CONTENT_TYPE, "application/json")
                    .header(HEADER_TIMESTAMP, &signed.timestamp)
                    .header(HEADER_ACCESS_KEY, &signed.access_key)
                    .header(HEADER_SIGNATURE, &signed.signature);
                if let Some(body) = body {
                    request = request.json(body);
                }
                let response = request.send().await.map_err(|e| self.transport_error(e))?;
                let (status, headers) = (response.status().as_u16(), response.headers().clone());
                Ok((status, headers, Unread::Network(response)))
            }
            Transport::Local(mi, timeout) => {
                let target = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_owned(),
                };
                let bytes = match body {
                    Some(body) => serde_json::to_vec(body).map_err(|e| ApiError::NoAnswer {
                        message: format!("the request could not be written: {e}"),
                        timed_out: false,
                    })?,
                    None => Vec::new(),
                };
                let request = axum::http::Request::builder()
                    .method(method)
                    .uri(target)
                    .header(CONTENT_TYPE, "application/json")
                    .header(HEADER_TIMESTAMP, &signed.timestamp)
                    .header(HEADER_ACCESS_KEY, &signed.access_key)
                    .header(HEADER_SIGNATURE, &signed.signature)
                    .body(axum::body::Body::from(bytes))
                    .map_err(|e| ApiError::NoAnswer {
                        message: format!("the request could not be written: {e}"),
                        timed_out: false,
                    })?;
                match tokio::time::timeout(*timeout, mi.0.serve(request)).await {
                    Ok(Some(response)) => {
                        let (parts, body) = response.into_parts();
                        Ok((parts.status.as_u16(), parts.headers, Unread::Local(body)))
                    }
                    Ok(None) => Err(ApiError::NoAnswer {
                        message: "connection closed before message completed".into(),
                        timed_out: false,
                    }),
                    Err(_) => Err(ApiError::NoAnswer {
                        message: "operation timed out".into(),
                        timed_out: true,
                    }),
                }
            }
        }
    }

    /// An answer's body, read up to [`MAX_ANSWER_BYTES`]: past it the answer is taken as
    /// unreadable (an unknown outcome for the register call, retried for the others).
    async fn body(
        &self,
        status: u16,
        unread: Unread,
        trace_id: Option<&str>,
    ) -> Result<Vec<u8>, ApiError> {
        let too_long = || ApiError::BadBody {
            status,
            message: format!(
                "the answer is longer than {} MiB, far more than any answer of MI; it was not read further",
                MAX_ANSWER_BYTES >> 20
            ),
            trace_id: trace_id.map(str::to_owned),
        };
        match unread {
            Unread::Network(mut response) => {
                let mut body = Vec::new();
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| self.transport_error(e))?
                {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        return Err(too_long());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            }
            Unread::Local(body) => axum::body::to_bytes(body, MAX_ANSWER_BYTES)
                .await
                .map(|bytes| bytes.to_vec())
                .map_err(|_| too_long()),
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> ApiError {
        let message = error_chain(&error);
        if error.is_connect() {
            ApiError::Connect {
                endpoint: self.target.endpoint.clone(),
                message,
            }
        } else {
            ApiError::NoAnswer {
                timed_out: error.is_timeout(),
                message,
            }
        }
    }
}

/// Whether the OS's trust store (or SSL_CERT_FILE / SSL_CERT_DIR) holds no certificate at
/// all, so the bundled roots are the only ones to trust.
fn os_has_no_roots() -> bool {
    rustls_native_certs::load_native_certs().certs.is_empty()
}

/// An HTTP `Date` header (`Tue, 01 Dec 2026 21:36:54 GMT`).
fn httpdate_parse(text: &str) -> Option<SystemTime> {
    // humantime reads RFC 3339; the IMF-fixdate form is turned into it.
    let mut parts = text.split_whitespace().skip(1);
    let (day, month, year, time) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)?
        + 1;
    humantime::parse_rfc3339(&format!("{year}-{month:02}-{day:0>2}T{time}Z")).ok()
}

fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// An asset ID as MI documents it: a JSON number, a positive integer. Anything else (`0`,
/// `-5`, the text `"12345"`, a fraction) cannot be one.
fn asset_id_of(value: Option<&Value>) -> Option<i64> {
    value.and_then(Value::as_i64).filter(|id| *id > 0)
}

/// A JSON value for a message, cut short.
fn shown(value: Option<&Value>) -> String {
    match value {
        None => "missing".into(),
        Some(v) => v.to_string().chars().take(40).collect(),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `Retry-After` in seconds (the HTTP-date form is not expected from MI and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_text(headers, RETRY_AFTER.as_str())?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// reqwest's error with its causes, which name the real reason (refused, reset, timed out).
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_body_keeps_keys_byte_exact() {
        let key = "2024/05/Café «final» 100%+#?,\"quoted\" 日本.mp4";
        let body = ImportRequest {
            key: key.into(),
            bucket_name: "media".into(),
        };
        let json = serde_json::to_string(&body).unwrap();
        let back: ImportRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key, key);
        assert!(json.contains("\"bucketName\":\"media\""));
    }

    #[test]
    fn an_asset_id_is_a_positive_json_integer() {
        use serde_json::json;
        assert_eq!(asset_id_of(Some(&json!(12345))), Some(12345));
        for bad in [json!(0), json!(-5), json!("12345"), json!(1.5), json!(null)] {
            assert_eq!(asset_id_of(Some(&bad)), None, "{bad}");
        }
        assert_eq!(asset_id_of(None), None);
    }

    #[test]
    fn the_date_header_is_read() {
        let at = httpdate_parse("Tue, 01 Dec 2026 21:36:54 GMT").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(at).to_string(),
            "2026-12-01T21:36:54Z"
        );
        assert_eq!(httpdate_parse("nonsense"), None);
    }

    #[test]
    fn path_segments_are_escaped_before_signing() {
        let client = MiClient::new(
            Target::new(
                "http://127.0.0.1:1",
                Some("my ws/1".into()),
                Some("42".into()),
            )
            .unwrap(),
            Credentials::new("a".into(), "s".into()),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            client.project_path(),
            "/api/v1/workspaces/my%20ws%2F1/projects/42"
        );
    }
}
