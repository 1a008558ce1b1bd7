//! NCP API Gateway signature v2: the headers every MI request carries.
//!
//! Pure: given the method, the request target exactly as it goes on the wire, a timestamp and
//! the key pair, it returns the header values. It knows nothing of HTTP clients, so the client
//! and the emulator share it, and the published test vectors pin it down.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Credentials;

pub const HEADER_TIMESTAMP: &str = "x-ncp-apigw-timestamp";
pub const HEADER_ACCESS_KEY: &str = "x-ncp-iam-access-key";
pub const HEADER_SIGNATURE: &str = "x-ncp-apigw-signature-v2";

/// The three header values of one signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub timestamp: String,
    pub access_key: String,
    pub signature: String,
}

/// Milliseconds since the Unix epoch, as the gateway wants it.
pub fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Signs `method target` at `timestamp_ms`. `target` is the path plus `?query` when there is
/// one, byte for byte as sent.
pub fn sign(
    method: &str,
    target: &str,
    timestamp_ms: u128,
    credentials: &Credentials,
) -> Signature {
    let timestamp = timestamp_ms.to_string();
    let signature = signature_v2(
        method,
        target,
        &timestamp,
        credentials.access_key(),
        credentials.secret_key().as_bytes(),
    );
    Signature {
        timestamp,
        access_key: credentials.access_key().to_owned(),
        signature,
    }
}

/// The base64 HMAC-SHA256 of the gateway's string to sign.
pub fn signature_v2(
    method: &str,
    target: &str,
    timestamp: &str,
    access_key: &str,
    secret: &[u8],
) -> String {
    let string_to_sign = format!("{method} {target}\n{timestamp}\n{access_key}");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a signature in constant time (the emulator's side of the handshake).
pub fn verify_v2(
    method: &str,
    target: &str,
    timestamp: &str,
    access_key: &str,
    secret: &[u8],
    claimed: &str,
) -> bool {
    let string_to_sign = format!("{method} {target}\n{timestamp}\n{access_key}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    match base64::engine::general_purpose::STANDARD.decode(claimed) {
        Ok(bytes) => mac.verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published by NAVER in ncp-iam-authenticator, pkg/token/token_test.go.
    const TS: &str = "1668407407855";

    #[test]
    fn matches_published_vector_without_query() {
        let sig = signature_v2("GET", "/cluster/kubeconfig", TS, "access", b"secret");
        assert_eq!(sig, "LTJli9+OKT2KvUXxiKslMfu5FIOmDN83avehOvgUFp0=");
    }

    #[test]
    fn matches_published_vector_with_query() {
        let target = "/iam/krs-v1/user?clusterUuid=D11328F1-ECA9-4F1B-BA22-921F61D9C5FF";
        let sig = signature_v2("GET", target, TS, "access", b"secret");
        assert_eq!(sig, "emeahfW4CmzsxIQ5ip0cd9yqERXJ+ZJsRfQpGNmKdXk=");
    }

    #[test]
    fn sign_uses_the_given_timestamp_and_key() {
        let creds = Credentials::new("access".into(), "secret".into());
        let sig = sign("GET", "/cluster/kubeconfig", 1_668_407_407_855, &creds);
        assert_eq!(sig.timestamp, TS);
        assert_eq!(sig.access_key, "access");
        assert_eq!(
            sig.signature,
            "LTJli9+OKT2KvUXxiKslMfu5FIOmDN83avehOvgUFp0="
        );
    }

    #[test]
    fn verify_accepts_own_signature_and_rejects_changes() {
        let good = signature_v2("POST", "/a?b=c", TS, "access", b"secret");
        assert!(verify_v2("POST", "/a?b=c", TS, "access", b"secret", &good));
        assert!(!verify_v2("POST", "/a?b=d", TS, "access", b"secret", &good));
        assert!(!verify_v2("POST", "/a?b=c", TS, "access", b"wrong", &good));
        assert!(!verify_v2("GET", "/a?b=c", TS, "access", b"secret", &good));
        assert!(!verify_v2(
            "POST",
            "/a?b=c",
            TS,
            "access",
            b"secret",
            "not base64!"
        ));
    }
}
