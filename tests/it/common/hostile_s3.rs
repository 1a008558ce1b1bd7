//! A scripted Object Storage on loopback that answers listings the way broken servers and
//! proxies do: a marker that never advances, a marker ignored, a page cut off mid-XML, keys
//! that do not decode. It also answers requests sent to it as a proxy (absolute-form
//! targets), and counts them. Signatures are not checked.

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How the server answers ListObjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Two pages of good keys, as a healthy server would.
    Healthy,
    /// Every page is truncated and names the same NextMarker.
    SameMarker,
    /// Every page is truncated, names no NextMarker and ignores the marker asked for.
    IgnoresMarker,
    /// The first answer breaks off mid-XML; the next ones are whole.
    CutOffOnce,
    /// One page holding good keys, one that does not decode and one with a control
    /// character.
    Undecodable,
}

pub struct HostileS3 {
    pub addr: SocketAddr,
    /// Listing requests answered.
    pub lists: Arc<AtomicU64>,
    /// Requests that came as to a proxy (an absolute URI in the request line).
    pub proxied: Arc<AtomicU64>,
}

impl HostileS3 {
    pub async fn start(script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (lists, proxied) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (l, p) = (lists.clone(), proxied.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (l, p) = (l.clone(), p.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (l, p) = (l.clone(), p.clone());
                            async move {
                                if request.uri().scheme().is_some() {
                                    p.fetch_add(1, Ordering::SeqCst);
                                }
                                let body = answer(script, &request, &l);
                                Ok::<_, std::convert::Infallible>(body)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            lists,
            proxied,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn xml(truncated: bool, next: Option<&str>, keys: &[&str]) -> String {
    let mut text = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>media-archive</Name><Prefix></Prefix><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType>"#,
    );
    text.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
    if let Some(next) = next {
        text.push_str(&format!("<NextMarker>{next}</NextMarker>"));
    }
    for key in keys {
        text.push_str(&format!(
            "<Contents><Key>{key}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>\"e-{key}\"</ETag><Size>1000</Size><StorageClass>STANDARD</StorageClass></Contents>"
        ));
    }
    text.push_str("</ListBucketResult>");
    text
}

fn answer(
    script: Script,
    request: &hyper::Request<hyper::body::Incoming>,
    lists: &AtomicU64,
) -> hyper::Response<String> {
    if request.method() == hyper::Method::HEAD {
        return hyper::Response::new(String::new());
    }
    let query = request.uri().query().unwrap_or("");
    let marker = query
        .split('&')
        .find_map(|p| p.strip_prefix("marker="))
        .unwrap_or("");
    let n = lists.fetch_add(1, Ordering::SeqCst);
    let body = match script {
        Script::Healthy if marker.is_empty() => xml(true, None, &["a/one.mp4", "a/two.mp4"]),
        Script::Healthy => xml(false, None, &["b/three.mp4"]),
        Script::SameMarker => xml(true, Some("a/one.mp4"), &["a/one.mp4"]),
        Script::IgnoresMarker => xml(true, None, &["a/one.mp4", "a/two.mp4"]),
        Script::CutOffOnce if n == 0 => {
            xml(false, None, &["a/one.mp4", "a/two.mp4"])[..330].to_owned()
        }
        Script::CutOffOnce => xml(false, None, &["a/one.mp4", "a/two.mp4"]),
        Script::Undecodable => xml(
            false,
            None,
            &[
                "good/one.mp4",
                "bad/%FF%FE.mp4",
                "good/bell%07.mp4",
                "good/tab%09here.mp4",
                "bad/nul%00.mp4",
                "good/two.mp4",
            ],
        ),
    };
    let mut response = hyper::Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    response
}
