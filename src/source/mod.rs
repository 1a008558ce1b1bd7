//! Where keys come from, and which of them may be sent.
//!
//! A source yields rows one at a time: a CSV manifest ([`manifest`]) or a bucket listing
//! ([`bucket`]). The user's [`filter`]s and MI's rules ([`eligibility`]) decide before anything
//! is sent; the result enters the ledger as a [`NewKey`](crate::ledger::NewKey).

pub mod bucket;
pub mod chunks;
pub mod eligibility;
pub mod filter;
pub mod manifest;
pub mod tally;

use crate::ledger::NewKey;

/// A found key with eligibility's verdict attached.
pub fn judged(bucket: String, key: String, size: Option<u64>) -> NewKey {
    let skip_reason = eligibility::refusal(&key, size);
    NewKey {
        size,
        skip_reason,
        ..NewKey::new(bucket, key)
    }
}
