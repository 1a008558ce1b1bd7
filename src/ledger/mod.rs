//! The ledger: one SQLite row per (endpoint, workspace, project, bucket, key), the truth about
//! every key.
//!
//! This module owns the schema (applied from `migrations/` at open, tracked by
//! `PRAGMA user_version`, append-only; see [`open`]), the state vocabulary ([`state`]), and
//! every SQL statement of the program: each table's in its own file ([`keys`], [`scopes`],
//! [`runs`], [`listings`], [`import_status`], [`analyses`], [`observed`], [`facts`]...). It does no
//! networking. During a run a single writer owns the connection (see [`writer`]); `status`
//! and `report` read it directly.
//!
//! Rows are compact: the (workspace, project) pair and the bucket are small integers
//! ([`Scope`], `buckets`), states are small integers ([`State::code`]), times are Unix
//! milliseconds. Every statement takes the time as an argument or reads [`now_ms`].
//!
//! # Durability
//!
//! - WAL mode, so readers (`status`, `report`) never block the writer.
//! - `synchronous = FULL`: every commit is fsynced before it returns. The pre-send journal
//!   (a key is `in_flight` on disk before its request leaves) must survive a power loss, not
//!   only a process kill, or a resend after reboot could register a key twice. The writer
//!   groups many keys into one transaction, so fsyncs stay at tens per second.
//! - A process kill (SIGKILL, OOM) loses nothing committed; rows left `in_flight` become
//!   `uncertain` when the next `run` of their project starts, and are reconciled with MI
//!   before they are sent again.
//! - The file is created readable by its owner only: it names every key of the user's bucket.

pub mod analyses;
pub mod details;
pub mod facts;
pub mod import_status;
pub mod keys;
pub mod listings;
pub mod observed;
pub mod open;
pub mod runs;
pub mod scopes;
pub mod state;
pub mod unsure;
pub mod writer;

pub use keys::{Claimed, Ingested, NewKey, OnChanged, Outcome};
pub use open::{Ledger, migrate};
pub use runs::{finish_run, last_run, start_run};
pub use scopes::Scope;
pub use state::State;

#[cfg(test)]
mod tests;
