//! Where keys come from, and which of them may be sent.
//!
//! A source yields rows one at a time; [`eligibility`] decides before anything is sent; the
//! result enters the ledger as a [`NewKey`](crate::ledger::NewKey). Only the CSV manifest
//! exists so far.

pub mod bucket;
pub mod eligibility;
pub mod filter;
pub mod manifest;

use crate::ledger::NewKey;

/// A found key with eligibility's verdict attached.
pub fn judged(bucket: String, key: String, size: Option<u64>) -> NewKey {
    let skip_reason = eligibility::refusal(&key, size);
    NewKey {
        bucket,
        key,
        size,
        etag: None,
        last_modified: None,
        skip_reason,
    }
}
