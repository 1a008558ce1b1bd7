//! A real S3-compatible server on loopback (s3s-fs over a temp dir), made to behave like NCP
//! Object Storage: ListObjectsV2 is refused, and ListObjects with `encoding-type=url` returns
//! URL-encoded keys (s3s itself echoes the parameter without encoding) and, as S3 does
//! without a delimiter, no `NextMarker`.

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const S3_ACCESS: &str = "s3-access";
pub const S3_SECRET: &str = "s3-secret-31f7";

/// What S3 leaves unescaped in URL-encoded listings; a space becomes `+`.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/')
    .remove(b' ');

pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    /// Listing pages asked for.
    pub list_calls: Arc<AtomicU64>,
    /// Of those, the ones that started a listing from the beginning (no marker).
    pub list_starts: Arc<AtomicU64>,
    /// Every page asked for, as (prefix, marker).
    pub pages: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// The most listing requests that were out at once.
    pub most_at_once: Arc<AtomicU64>,
    pub v2_refused: Arc<AtomicU64>,
    _dir: Option<tempfile::TempDir>,
}

impl S3Server {
    pub async fn start(bucket: &str) -> Self {
        Self::start_with_delay(bucket, std::time::Duration::ZERO).await
    }

    /// Each request waits `delay` before it is answered.
    pub async fn start_with_delay(bucket: &str, delay: std::time::Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut server = Self::serve(root, bucket, "127.0.0.1:0".parse().unwrap(), delay).await;
        server._dir = Some(dir);
        server
    }

    /// Serves the buckets under `root` (one folder per bucket) on `listen`.
    pub async fn serve(
        root: PathBuf,
        bucket: &str,
        listen: SocketAddr,
        delay: std::time::Duration,
    ) -> Self {
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let fs = NcpLike(s3s_fs::FileSystem::new(&root).unwrap());
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_ACCESS, S3_SECRET));
        let s3 = builder.build();
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Counters::default();
        let (list_calls, list_starts, pages, most_at_once, v2_refused) = (
            counters.list_calls.clone(),
            counters.list_starts.clone(),
            counters.pages.clone(),
            counters.most_at_once.clone(),
            counters.v2_refused.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s3, counters) = (s3.clone(), counters.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| ncp_like(s3.clone(), counters.clone(), delay, req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            root,
            list_calls,
            list_starts,
            pages,
            most_at_once,
            v2_refused,
            _dir: None,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes an object of `size` bytes (sparse, so large sizes cost nothing).
    pub fn put(&self, bucket: &str, key: &str, size: u64) {
        let path = self.root.join(bucket).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(size).unwrap();
    }

    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(Path::new(key))
    }
}

#[derive(Clone, Default)]
struct Counters {
    list_calls: Arc<AtomicU64>,
    list_starts: Arc<AtomicU64>,
    pages: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    at_once: Arc<AtomicU64>,
    most_at_once: Arc<AtomicU64>,
    v2_refused: Arc<AtomicU64>,
}

async fn ncp_like(
    s3: s3s::service::S3Service,
    counters: Counters,
    delay: std::time::Duration,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<s3s::Body>, s3s::HttpError> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let is_get = req.method() == hyper::Method::GET;
    if is_get && query.contains("list-type=2") {
        counters.v2_refused.fetch_add(1, Ordering::Relaxed);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code><Message>ListObjectsV2 is not supported</Message></Error>";
        return Ok(hyper::Response::builder()
            .status(501)
            .body(s3s::Body::from(body.to_owned()))
            .unwrap());
    }
    let listing =
        is_get && !req.uri().path().trim_matches('/').contains('/') && !query.contains("location");
    if listing {
        counters.list_calls.fetch_add(1, Ordering::Relaxed);
        let param = |name: &str| -> String {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name))
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .unwrap_or_default()
        };
        counters
            .pages
            .lock()
            .unwrap()
            .push((param("prefix="), param("marker=")));
        let from_start = !query
            .split('&')
            .any(|pair| pair.starts_with("marker=") && pair.len() > "marker=".len());
        if from_start {
            counters.list_starts.fetch_add(1, Ordering::Relaxed);
        }
        let now = counters.at_once.fetch_add(1, Ordering::SeqCst) + 1;
        counters.most_at_once.fetch_max(now, Ordering::SeqCst);
    }
    tokio::time::sleep(delay).await;
    let response = hyper::service::Service::call(&s3, req).await;
    if listing {
        counters.at_once.fetch_sub(1, Ordering::SeqCst);
    }
    let response = response?;
    if !(listing && query.contains("encoding-type=url") && response.status().is_success()) {
        return Ok(response);
    }
    let (mut parts, mut body) = response.into_parts();
    let bytes = body.store_all_limited(64 << 20).await.unwrap();
    let xml = String::from_utf8(bytes.to_vec()).unwrap();
    let xml = strip_element(&xml, "NextMarker");
    let xml = encode_elements(&xml, "Key");
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Ok(hyper::Response::from_parts(parts, s3s::Body::from(xml)))
}

fn strip_element(xml: &str, name: &str) -> String {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    match (xml.find(&open), xml.find(&close)) {
        (Some(a), Some(b)) => format!("{}{}", &xml[..a], &xml[b + close.len()..]),
        _ => xml.to_owned(),
    }
}

fn encode_elements(xml: &str, name: &str) -> String {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(a) = rest.find(&open) {
        let start = a + open.len();
        let Some(len) = rest[start..].find(&close) else {
            break;
        };
        out.push_str(&rest[..start]);
        let raw = unescape_xml(&rest[start..start + len]);
        out.push_str(
            &utf8_percent_encode(&raw, KEY_ESCAPE)
                .to_string()
                .replace(' ', "+"),
        );
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

fn unescape_xml(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// s3s-fs, answering listings as S3 does where s3s-fs differs: an empty `delimiter=` (which
/// rclone sends for a recursive listing) means no delimiter, not a delimiter of "".
/// ListObjectsV2 is refused, as NCP does (also at the HTTP layer, above).
struct NcpLike(s3s_fs::FileSystem);

#[async_trait::async_trait]
impl s3s::S3 for NcpLike {
    async fn list_objects(
        &self,
        mut req: s3s::S3Request<s3s::dto::ListObjectsInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsOutput>> {
        if req.input.delimiter.as_deref() == Some("") {
            req.input.delimiter = None;
        }
        self.0.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        _req: s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::ListObjectsV2Output>> {
        Err(s3s::s3_error!(
            NotImplemented,
            "ListObjectsV2 is not supported"
        ))
    }

    async fn head_bucket(
        &self,
        req: s3s::S3Request<s3s::dto::HeadBucketInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadBucketOutput>> {
        self.0.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: s3s::S3Request<s3s::dto::HeadObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::HeadObjectOutput>> {
        self.0.head_object(req).await
    }
}
