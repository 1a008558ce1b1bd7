//! The Object Storage client's HTTP layer: TLS with the OS's trust store, the proxy the
//! environment names, and a bound on every answer.
//!
//! - Proxies: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (lower case too), as
//!   MI's client, botocore and rclone honour them.
//! - Trust: the OS's store (and `SSL_CERT_FILE` / `SSL_CERT_DIR`), as MI's client.
//! - Bounds: an answer's body is read up to [`MAX_ANSWER_BYTES`], and a listing page must end
//!   as a listing page does (`</ListBucketResult>`): a body cut off mid-XML is an answer that
//!   broke off (retried), never a short final page.

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents, SharedHttpClient};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::{Connector, tls};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The most of one Object Storage answer that is read. A ListObjects page of 1,000 keys of
/// 1,024 bytes each, URL-encoded, is under 10 MiB; 32 MiB is far above any real page and
/// keeps an endless body from taking the machine's memory (`--list-concurrency` answers at
/// once at most).
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// What a listing page begins with, and how it must end.
const LISTING_OPENS: &[u8] = b"<ListBucketResult";
const LISTING_CLOSES: &[u8] = b"</ListBucketResult>";

/// The HTTP client for Object Storage: rustls (ring) with the OS's roots, the proxy the
/// environment names.
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
        let mut builder = Connector::builder();
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder
            .proxy_config(ProxyConfig::from_env())
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build()
    })
}

/// Puts every answer's body behind [`Bounded`] before the SDK reads it.
#[derive(Debug, Default)]
pub struct BoundedAnswers;

impl Intercept for BoundedAnswers {
    fn name(&self) -> &'static str {
        "BoundedAnswers"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let body = context.response_mut().body_mut();
        let inner = std::mem::replace(body, SdkBody::taken());
        *body = SdkBody::from_body_1_x(Bounded::new(inner, MAX_ANSWER_BYTES));
        Ok(())
    }
}

/// Why a bounded answer was not read to its end.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(
        "the answer is longer than {} MiB, far more than any listing page; it was not read further",
        MAX_ANSWER_BYTES >> 20
    )]
    TooLong,
    #[error("the listing page broke off before its end (no </ListBucketResult>)")]
    CutOff,
    #[error(transparent)]
    Body(aws_smithy_types::body::Error),
}

/// A body read up to `cap` bytes, which checks at its end that a listing page is whole.
pub struct Bounded {
    inner: SdkBody,
    read: usize,
    cap: usize,
    /// The first bytes (to know a listing page) and the last (to know it ended).
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Bounded {
    pub fn new(inner: SdkBody, cap: usize) -> Self {
        Self {
            inner,
            read: 0,
            cap,
            head: Vec::new(),
            tail: Vec::new(),
        }
    }

    fn note(&mut self, data: &[u8]) {
        const KEPT: usize = 256;
        if self.head.len() < KEPT {
            let more = (KEPT - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..more]);
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > KEPT {
            self.tail.drain(..self.tail.len() - KEPT);
        }
    }

    /// At the end: a body that opened as a listing page must close as one.
    fn whole(&self) -> bool {
        let opens = self
            .head
            .windows(LISTING_OPENS.len())
            .any(|w| w == LISTING_OPENS);
        !opens || self.tail.trim_ascii_end().ends_with(LISTING_CLOSES)
    }
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = AnswerError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, AnswerError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) if this.whole() => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(AnswerError::CutOff))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(AnswerError::Body(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len();
                    if this.read > this.cap {
                        return Poll::Ready(Some(Err(AnswerError::TooLong)));
                    }
                    let data = data.clone();
                    this.note(&data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn read(text: &'static str, cap: usize) -> Result<Bytes, AnswerError> {
        Bounded::new(SdkBody::from(text), cap)
            .collect()
            .await
            .map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn a_listing_page_must_end_as_one() {
        let whole = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>\n";
        assert!(read(whole, 1 << 20).await.is_ok());
        let cut = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a.mp4</Key>";
        assert!(matches!(read(cut, 1 << 20).await, Err(AnswerError::CutOff)));
        assert!(
            read("<Error><Code>NoSuchBucket</Code></Error>", 1 << 20)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_answer_past_the_cap_is_not_read_further() {
        assert!(matches!(
            read("<ListBucketResult></ListBucketResult>", 10).await,
            Err(AnswerError::TooLong)
        ));
    }
}
