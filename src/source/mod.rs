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

/// Why a key cannot be taken as it is: it holds a NUL, which one tool cuts the key at and
/// another passes on, so the key MI is asked for would not be the object's. Every other
/// character Object Storage allows is taken exactly (a TAB, a line break, any control
/// character): exact in the ledger, the request and JSON Lines, escaped wherever shown (the
/// terminal, the text log, CSV cells; `crate::escape`). Keys are taken exactly or refused,
/// never bent.
pub fn key_problem(key: &str) -> Option<String> {
    key.contains('\0')
        .then(|| "the key holds a NUL character, which no tool passes on alike".to_owned())
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
