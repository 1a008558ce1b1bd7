//! What went wrong with one MI call, and what that means for the key and the run.
//!
//! MI answers errors in two shapes: its own `{code, message}` and the API Gateway's
//! `{error: {errorCode, message, details}}` (errorCode a string or a number). Both are parsed
//! here; the HTTP status decides first, the code refines the message. The table in
//! [`ApiError::disposition_for`] is the single place that decides retry versus stop.

use serde_json::Value;
use std::fmt;
use std::time::Duration;

use crate::retry::{Disposition, Retryable};

/// Which call the error came from: the register call is not idempotent, the others are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Register,
    /// Requesting an asset's analysis: billed, and not idempotent either.
    Analyze,
    AnalysisStatus,
    ImportStatus,
    ListAssets,
    /// One asset's details: a 404 means that asset is gone.
    Asset,
    /// The workspace or the project: a 404 means the settings are wrong.
    Lookup,
}

impl Call {
    fn is_idempotent(self) -> bool {
        !matches!(self, Call::Register | Call::Analyze)
    }
}

/// One failed MI call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No connection was made: the request never left.
    #[error("cannot connect to {endpoint}: {}", crate::escape::shown(message))]
    Connect { endpoint: String, message: String },
    /// The request may have been sent, but no complete answer came back.
    #[error("no answer from MI ({})", crate::escape::shown(message))]
    NoAnswer { message: String, timed_out: bool },
    /// MI (or its gateway) answered with an error status.
    #[error("{}", http_summary(*status, code.as_deref(), message))]
    Http {
        status: u16,
        code: Option<String>,
        message: String,
        trace_id: Option<String>,
        retry_after: Option<Duration>,
        /// The API Gateway's envelope (`{"error": …}`), not MI's own: the request may not
        /// have reached MI at all (a route the gateway does not know answers 404 this way).
        gateway: bool,
    },
    /// A redirect: MI's client follows none (a signed request goes only to the endpoint), so
    /// where the request ended up, and whether it did anything, is unknown.
    #[error("MI answered HTTP {status}, a redirect to {}; redirects are not followed", crate::escape::shown(location.as_deref().unwrap_or("nowhere named")))]
    Redirect {
        status: u16,
        location: Option<String>,
        trace_id: Option<String>,
    },
    /// A success status with a body we could not read.
    #[error(
        "unreadable answer from MI (HTTP {status}): {}",
        crate::escape::shown(message)
    )]
    BadBody {
        status: u16,
        message: String,
        trace_id: Option<String>,
    },
}

/// MI's words, escaped: what the service (or whatever answers in its place) says may hold
/// anything. The ledger keeps them exact ([`ApiError::detail`]).
fn http_summary(status: u16, code: Option<&str>, message: &str) -> String {
    let code = code
        .map(|c| format!(" code {}", crate::escape::shown(c)))
        .unwrap_or_default();
    format!(
        "MI answered HTTP {status}{code}: {}",
        crate::escape::shown(message)
    )
}

impl ApiError {
    /// Builds the error for a non-success answer from its status, headers and body.
    pub fn from_answer(
        status: u16,
        body: &[u8],
        trace_id: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let (code, message, gateway) = parse_error_body(body);
        let message = message.unwrap_or_else(|| default_message(status).to_owned());
        ApiError::Http {
            status,
            code,
            message,
            trace_id,
            retry_after,
            gateway,
        }
    }

    /// What this error means for its key (and the run), given which call it came from.
    pub fn disposition_for(&self, call: Call) -> Disposition {
        let unknown = if call.is_idempotent() {
            Disposition::Retry { after: None }
        } else {
            Disposition::Uncertain
        };
        match self {
            ApiError::Connect { .. } => Disposition::Retry { after: None },
            ApiError::NoAnswer { .. } | ApiError::BadBody { .. } | ApiError::Redirect { .. } => {
                unknown
            }
            ApiError::Http {
                status,
                retry_after,
                ..
            } => match *status {
                401 | 403 => Disposition::Fatal,
                // An asset's own call: the asset is gone. (Whether the workspace and project
                // still exist is checked before this answer is believed; see `runner::confirm`.)
                404 if matches!(
                    call,
                    Call::ImportStatus | Call::Asset | Call::Analyze | Call::AnalysisStatus
                ) =>
                {
                    Disposition::Permanent
                }
                // The workspace or project in the path does not exist.
                404 => Disposition::Fatal,
                // The gateway's throttle answers before MI sees the request: nothing was made.
                429 => Disposition::Retry {
                    after: *retry_after,
                },
                // 408, 503 and every 5xx may come after MI made the asset (the gateway gave up
                // waiting, or failed on the way back): for the register call that is an unknown
                // outcome, never a blind retry.
                408 | 500..=599 => match unknown {
                    Disposition::Retry { .. } => Disposition::Retry {
                        after: *retry_after,
                    },
                    other => other,
                },
                _ => Disposition::Permanent,
            },
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. }
            | ApiError::BadBody { status, .. }
            | ApiError::Redirect { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Http { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the answer came in the API Gateway's envelope rather than MI's own.
    pub fn from_gateway(&self) -> bool {
        matches!(self, ApiError::Http { gateway: true, .. })
    }

    pub fn trace_id(&self) -> Option<&str> {
        match self {
            ApiError::Http { trace_id, .. }
            | ApiError::BadBody { trace_id, .. }
            | ApiError::Redirect { trace_id, .. } => trace_id.as_deref(),
            _ => None,
        }
    }

    /// The service's own words, without our framing, for the ledger's `message` column.
    pub fn detail(&self) -> String {
        match self {
            ApiError::Http { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// What the user can do about a fatal answer.
    pub fn hint(&self) -> Option<&'static str> {
        match self.status()? {
            401 => Some(
                "check NCLOUD_ACCESS_KEY/NCLOUD_SECRET_KEY (or ~/.ncloud/configure) and that \
                 the machine's clock is right (the gateway allows 5 minutes)",
            ),
            403 => Some("the key pair lacks permission for Media Intelligence in this account"),
            404 => Some("check --workspace and --project (and --endpoint)"),
            429 => {
                Some("MI is throttling these requests (HTTP 429): lower --rate, or try again later")
            }
            _ => None,
        }
    }
}

/// One answer to an MI call, judged as that call: what `retry::with_retries` needs.
pub struct Answer<T> {
    pub call: Call,
    pub result: Result<T, ApiError>,
}

impl<T> Retryable for Answer<T> {
    fn disposition(&self) -> Disposition {
        match &self.result {
            Ok(_) => Disposition::Success,
            Err(e) => e.disposition_for(self.call),
        }
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        401 => "authentication failed",
        403 => "permission denied",
        404 => "not found",
        429 => "too many requests",
        503 => "service unavailable",
        504 => "gateway timeout",
        _ => "error",
    }
}

/// Reads any of the error envelopes NCP's services answer with: MI's `{code, message}`, the
/// API Gateway's `{error: {errorCode, message, details}}`, and the generic
/// `{responseError: {returnCode, returnMessage}}` NCP's specs also show. Returns (code,
/// message), each if present, and whether it was the gateway's envelope.
pub fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>, bool) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(200)
            .collect::<String>();
        return (None, (!text.is_empty()).then_some(text), false);
    };
    let scalar = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(gateway) = value.get("error") {
        let code = scalar(gateway.get("errorCode"));
        let mut message = scalar(gateway.get("message"));
        if let (Some(m), Some(d)) = (&mut message, scalar(gateway.get("details"))) {
            m.push_str(": ");
            m.push_str(&d);
        }
        return (code, message, true);
    }
    if let Some(generic) = value.get("responseError") {
        return (
            scalar(generic.get("returnCode")),
            scalar(generic.get("returnMessage")),
            false,
        );
    }
    (
        scalar(value.get("code")),
        scalar(value.get("message")),
        false,
    )
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Register => "register",
            Call::Analyze => "analyze",
            Call::AnalysisStatus => "analysis-status",
            Call::ImportStatus => "import-status",
            Call::ListAssets => "list-assets",
            Call::Asset => "asset",
            Call::Lookup => "lookup",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> ApiError {
        ApiError::from_answer(status, b"", None, None)
    }

    #[test]
    fn classification_table_for_register() {
        use Disposition::*;
        let table = [
            (400, Permanent),
            (401, Fatal),
            (403, Fatal),
            (404, Fatal),
            (408, Uncertain),
            (413, Permanent),
            (429, Retry { after: None }),
            (500, Uncertain),
            (502, Uncertain),
            (503, Uncertain),
            (504, Uncertain),
        ];
        for (status, want) in table {
            assert_eq!(
                http(status).disposition_for(Call::Register),
                want,
                "HTTP {status}"
            );
        }
    }

    #[test]
    fn idempotent_calls_retry_where_register_is_uncertain() {
        let lost = ApiError::NoAnswer {
            message: "reset".into(),
            timed_out: false,
        };
        assert_eq!(lost.disposition_for(Call::Register), Disposition::Uncertain);
        assert_eq!(
            lost.disposition_for(Call::ListAssets),
            Disposition::Retry { after: None }
        );
        assert_eq!(
            http(504).disposition_for(Call::ImportStatus),
            Disposition::Retry { after: None }
        );
        assert_eq!(
            http(404).disposition_for(Call::ImportStatus),
            Disposition::Permanent
        );
        let refused = ApiError::Connect {
            endpoint: "x".into(),
            message: "refused".into(),
        };
        assert_eq!(
            refused.disposition_for(Call::Register),
            Disposition::Retry { after: None }
        );
    }

    #[test]
    fn retry_after_travels_with_429() {
        let e = ApiError::from_answer(429, b"", None, Some(Duration::from_secs(3)));
        assert_eq!(
            e.disposition_for(Call::Register),
            Disposition::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn parses_mi_envelope() {
        let (code, msg, gateway) =
            parse_error_body(br#"{"code":"10016","message":"folder selected"}"#);
        assert_eq!(
            (code.as_deref(), msg.as_deref(), gateway),
            (Some("10016"), Some("folder selected"), false)
        );
    }

    #[test]
    fn parses_gateway_envelope_with_string_or_number_code() {
        let body = br#"{"error":{"errorCode":"200","message":"Authentication Failed","details":"Invalid authentication information."}}"#;
        let (code, msg, gateway) = parse_error_body(body);
        assert!(gateway);
        assert_eq!(code.as_deref(), Some("200"));
        assert_eq!(
            msg.as_deref(),
            Some("Authentication Failed: Invalid authentication information.")
        );
        let (code, _, _) =
            parse_error_body(br#"{"error":{"errorCode":420,"message":"Rate limited"}}"#);
        assert_eq!(code.as_deref(), Some("420"));
    }

    #[test]
    fn parses_the_generic_response_error_envelope() {
        let body = br#"{"responseError":{"returnCode":"1300","returnMessage":"Object Storage bucket not found"}}"#;
        let (code, msg, gateway) = parse_error_body(body);
        assert_eq!(
            (code.as_deref(), msg.as_deref(), gateway),
            (Some("1300"), Some("Object Storage bucket not found"), false)
        );
        let (code, _, _) = parse_error_body(br#"{"responseError":{"returnCode":900}}"#);
        assert_eq!(code.as_deref(), Some("900"), "a number code too");
        // The code and message reach the error's text; the status still decides.
        let e = ApiError::from_answer(400, body, None, None);
        let text = e.to_string();
        assert!(
            text.contains("1300") && text.contains("bucket not found"),
            "{text}"
        );
        assert_eq!(e.disposition_for(Call::Register), Disposition::Permanent);
    }

    #[test]
    fn non_json_body_becomes_the_message() {
        let (code, msg, _) = parse_error_body(b"<html>Bad Gateway</html>");
        assert_eq!(code, None);
        assert_eq!(msg.as_deref(), Some("<html>Bad Gateway</html>"));
        let e = ApiError::from_answer(503, b"", Some("t-1".into()), None);
        assert_eq!(e.to_string(), "MI answered HTTP 503: service unavailable");
        assert_eq!(e.trace_id(), Some("t-1"));
    }
}
