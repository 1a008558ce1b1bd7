//! mi-import registers media already in NCP Object Storage as NCP Media Intelligence assets,
//! in bulk, exactly once.
//!
//! The flow of one key, and the module that owns each step:
//!
//! 1. [`source`] yields keys: a CSV manifest row by row ([`source::manifest`]), or a bucket
//!    prefix page by page with ListObjects v1 ([`source::bucket`]). The user's
//!    [`source::filter`]s and MI's rules ([`source::eligibility`]) decide before anything is
//!    sent.
//! 2. [`ledger`] records every key in SQLite, one row per (endpoint, workspace, project,
//!    bucket, key); it is the truth about what was sent and what came back. One writer
//!    ([`ledger::writer`]) group-commits; a listing's position is committed with its page.
//! 3. [`runner`] checks the account first (preflight), claims pending keys only as places
//!    to send them free up (durably `in_flight` before any request leaves; keys of one file
//!    name kept apart where MI may list assets by file name, `runner/apart.rs`), passes each
//!    through the [`limiter`] (rate and concurrency, shared by every MI call; it tells a
//!    gateway's random 429s from a limit, [`limiter::aimd`]), calls MI through [`api`],
//!    retries by [`retry`]'s rules, and records the outcome.
//! 4. Keys whose outcome is unknown are looked up in MI's asset list, once it can show them
//!    (the list's lag is learned from the ledger's own assets), and sent again only on proof
//!    of absence, given an asset only on evidence ([`reconcile`], the pure rule).
//! 5. Registered assets are confirmed by import-status, or by pages of the list where it
//!    carries the status (one pass for any backlog), each looked at when it is likely done
//!    ([`runner::schedule`]); with `--analyze`, completed assets are sent for analysis once,
//!    journaled like registrations, and followed by the same kind of model.
//! 6. [`report`] reads the ledger for `status` and `report`; [`progress`] shows a run live.
//!
//! Around them: [`cli`] (clap types), [`config`] (validated settings, credentials),
//! [`app`] (the commands wired together), [`exit`] (exit codes), [`lock`] (one run per
//! ledger), [`escape`] (outside text made safe for terminals and spreadsheets), [`emulator`]
//! (MI on loopback for the demo and the tests), [`demo`].
//!
//! One way down: `main.rs`, [`cli`] and [`app`] know the command line; [`app`] turns it
//! into the parts' own types ([`config::Limits`], [`api::analysis::AnalysisRequest`],
//! [`emulator::EmulatorConfig`], [`report::ReportFormat`]), and nothing below names
//! [`cli`]. [`exit`] names no other module. No module reaches itself through others
//! (`tests/it/layering.rs` reads the source and checks both, and that SQL is only the
//! ledger's).

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod emulator;
pub mod escape;
pub mod exit;
pub mod ledger;
pub mod limiter;
pub mod lock;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod retry;
pub mod runner;
pub mod source;
