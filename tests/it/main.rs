//! The integration tests, in one binary (as ripgrep and uv keep theirs): the graph is linked
//! once, and `tests/it/common` (the emulator, the S3-compatible servers, the binary's command
//! builder) is compiled once. Each module is one concern; each test talks to real servers on
//! loopback (the MI emulator, s3s) or to the emulator served in this process on paused time.

mod common;

mod analysis;
mod bucket;
mod budget;
mod cli;
mod details;
mod edges;
mod faults;
mod hostile;
mod import;
mod integrity;
mod layering;
mod nightly;
mod operate;
mod operator;
mod readings;
mod resolve;
mod settle;
