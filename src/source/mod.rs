//! Where keys come from, and which of them may be sent.
//!
//! A source yields rows one at a time: a CSV manifest ([`manifest`]) or a bucket listing
//! ([`bucket`]). The user's [`filter`]s and MI's rules ([`eligibility`]) decide before anything
//! is sent; the result enters the ledger as a [`NewKey`](crate::ledger::NewKey).

pub mod bucket;
pub mod chunks;
pub mod eligibility;
pub mod filter;
pub mod lines;
pub mod manifest;
pub mod s3_http;
pub mod tally;

use crate::ledger::NewKey;

/// Why a key cannot be taken as it is: it holds a control character (C0, DEL or C1: a NUL
/// that one tool cuts at and another passes on, a line break that rewrites a log). Keys are
/// taken exactly or refused, never bent.
pub fn key_problem(key: &str) -> Option<String> {
    let bad = key.chars().find(|c| c.is_control())?;
    Some(format!(
        "the key holds the control character U+{:04X}",
        u32::from(bad)
    ))
}

/// A found key with eligibility's verdict attached.
pub fn judged(bucket: String, key: String, size: Option<u64>) -> NewKey {
    let skip_reason = eligibility::refusal(&key, size);
    NewKey {
        size,
        skip_reason,
        ..NewKey::new(bucket, key)
    }
}
