//! The command line, as clap types only. `config.rs` turns these into validated settings.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config;
use crate::emulator::FileNameMode;
use crate::ledger::State;
use crate::source::manifest::ManifestFormat;

#[derive(Debug, Parser)]
#[command(
    name = "mi-import",
    version,
    about = "Register media already in NCP Object Storage as NCP Media Intelligence assets, in bulk, exactly once"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The ledger (SQLite) that records every key's outcome
    #[arg(long, global = true, env = "MI_IMPORT_DB", default_value = config::DEFAULT_DB)]
    pub db: PathBuf,
    /// More log detail (-v, -vv); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors; no progress
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import keys from a manifest or a bucket listing; resumes by itself
    Run(RunArgs),
    /// Poll import-status of registered keys until final
    Confirm(ConfirmArgs),
    /// Counts of keys per state, and the last run
    Status(StatusArgs),
    /// One row per key, as CSV or JSON Lines, on stdout or to a file
    Report(ReportArgs),
    /// The sample manifest against the built-in emulator, no set-up needed
    Demo(DemoArgs),
    /// Serve the built-in MI emulator
    Emulator(EmulatorArgs),
}

#[derive(Debug, Args)]
pub struct MiArgs {
    /// MI's API endpoint
    #[arg(long, env = "MI_ENDPOINT", default_value = config::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The MI workspace name
    #[arg(long, env = "MI_WORKSPACE")]
    pub workspace: Option<String>,
    /// The MI project ID
    #[arg(long = "project", env = "MI_PROJECT_ID")]
    pub project: Option<String>,
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Request starts per second across all MI calls (0: no limit)
    #[arg(long, env = "MI_RATE", default_value_t = config::DEFAULT_RATE)]
    pub rate: u32,
    /// Requests in flight at once
    #[arg(long, env = "MI_CONCURRENCY", default_value_t = config::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Attempts per request before giving up on it
    #[arg(long, default_value_t = config::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Time limit for one request, e.g. 30s
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Time between plain progress lines when stderr is not a terminal
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub progress_interval: Duration,
}

/// How long confirmation goes on after the last import, by default.
const DEFAULT_PATIENCE: &str = "10m";

#[derive(Debug, Args)]
pub struct ConfirmArgs {
    #[command(flatten)]
    pub mi: MiArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Stop confirming after this long; what is still in progress stays registered
    #[arg(long, value_parser = humantime::parse_duration, default_value = DEFAULT_PATIENCE)]
    pub patience: Duration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub mi: MiArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// CSV manifest of keys to import
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The manifest's layout
    #[arg(long, value_enum, default_value_t = ManifestFormat::Csv)]
    pub manifest_format: ManifestFormat,
    /// Bucket to list (without --manifest), or for manifest rows that name none
    #[arg(long)]
    pub bucket: Option<String>,
    /// Only keys under this prefix, when listing the bucket
    #[arg(
        long,
        default_value = "",
        requires = "bucket",
        conflicts_with = "manifest"
    )]
    pub prefix: String,
    /// Object Storage endpoint (default: the region's)
    #[arg(long, env = "MI_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Object Storage region: kr-standard, us-standard, sg-standard, jp-standard, de-standard
    #[arg(long, env = "MI_S3_REGION", default_value = crate::source::bucket::DEFAULT_REGION)]
    pub s3_region: String,
    /// Only keys matching this glob (repeatable; `*` stays within a folder, `**` crosses)
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave out keys matching this glob (repeatable)
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Leave out objects smaller than this (e.g. 100KB)
    #[arg(long, value_parser = crate::source::filter::parse_size)]
    pub min_size: Option<u64>,
    /// Leave out objects larger than this (e.g. 2GB)
    #[arg(long, value_parser = crate::source::filter::parse_size)]
    pub max_size: Option<u64>,
    /// Only objects modified after this time (2024-05-01 or 2024-05-01T12:00:00Z)
    #[arg(long, value_parser = crate::source::filter::parse_time)]
    pub modified_after: Option<std::time::SystemTime>,
    /// Only objects modified before this time
    #[arg(long, value_parser = crate::source::filter::parse_time)]
    pub modified_before: Option<std::time::SystemTime>,
    /// Leave objects modified within this long for the next run (still being uploaded), e.g. 15m
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_age: Option<Duration>,
    /// What to do with a registered object whose ETag or size changed
    #[arg(long, value_enum, default_value_t = crate::ledger::listings::OnChanged::Report)]
    pub on_changed: crate::ledger::listings::OnChanged,
    /// Send keys marked failed again
    #[arg(long)]
    pub retry_failed: bool,
    /// Read the manifest and the ledger, send nothing, and say what would happen
    #[arg(long)]
    pub dry_run: bool,
    /// Do not poll import-status after registering (use `confirm` later)
    #[arg(long)]
    pub no_confirm: bool,
    /// How long to keep confirming after the last import
    #[arg(long, value_parser = humantime::parse_duration, default_value = DEFAULT_PATIENCE)]
    pub patience: Duration,
    /// Send keys in buckets other than the one linked to the workspace
    #[arg(long)]
    pub allow_other_bucket: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
    pub format: ReportFormat,
    /// Only keys in this state
    #[arg(long)]
    pub state: Option<State>,
    /// Write here instead of stdout
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Request starts per second (slow enough to watch)
    #[arg(long, default_value_t = 25)]
    pub rate: u32,
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to serve on
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "demo-workspace")]
    pub workspace: String,
    #[arg(long, default_value = "1001")]
    pub project: String,
    /// The bucket linked to the workspace
    #[arg(long, default_value = "media-archive")]
    pub bucket: String,
    /// Added latency per request, e.g. 20ms
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Share of requests answered 429
    #[arg(long, default_value_t = 0.0)]
    pub rate_429: f64,
    /// Share of requests answered 503
    #[arg(long, default_value_t = 0.0)]
    pub rate_503: f64,
    /// Share of register calls whose connection drops before the asset is created
    #[arg(long, default_value_t = 0.0)]
    pub drop_before: f64,
    /// Share of register calls whose connection drops after the asset is created
    #[arg(long, default_value_t = 0.0)]
    pub drop_after: f64,
    /// Requests per second before the gateway answers 429
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// How long imports stay IN_PROGRESS
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub settle: Duration,
    /// What the asset list's fileName holds
    #[arg(long, value_enum, default_value_t = FileNameMode::FullKey)]
    pub file_name: FileNameMode,
    /// Seed for the fault dice
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}
