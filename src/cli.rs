//! The command line, as clap types only. `config.rs` turns these into validated settings.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config;
use crate::emulator::FileNameMode;
use crate::ledger::{OnChanged, State};
use crate::report::ReportFormat;
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
    /// More log detail (-v, -vv); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors; no progress
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log format on stderr: with json, every line on stderr is one JSON object
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The profile of ~/.ncloud/configure to take the key pair from (also NCLOUD_PROFILE)
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Let --endpoint or --s3-endpoint be plain http to another machine (signed requests in
    /// the clear)
    #[arg(long, global = true)]
    pub allow_insecure_http: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import keys from a manifest or a bucket listing; with neither, resume what the ledger holds
    Run(Box<RunArgs>),
    /// Poll import-status of registered keys until final
    Confirm(ConfirmArgs),
    /// Request MI's analysis (the index) of completed keys once each, and follow it
    Analyze(AnalyzeCommandArgs),
    /// Settle an uncertain key by hand: give it its asset, or declare it not registered
    Resolve(ResolveArgs),
    /// Counts of keys per state for each workspace and project, and the last run
    Status(StatusArgs),
    /// One row per key, as CSV or JSON Lines, on stdout or to a file
    Report(ReportArgs),
    /// Write a consistent copy of the ledger (also while a run is going)
    Backup(BackupArgs),
    /// Remove one workspace's project from the ledger (MI's assets are not touched)
    Forget(ForgetArgs),
    /// The sample manifest against the built-in emulator, no set-up needed
    Demo(DemoArgs),
    /// Serve the built-in MI emulator
    Emulator(EmulatorArgs),
    /// Look at an account before a first run, changing nothing: credentials, clock,
    /// workspace, project, what MI's asset list shows, the bucket
    Check(Box<CheckArgs>),
    /// Print a shell's completion script: `mi-import completions bash > /etc/bash_completion.d/mi-import`
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[command(flatten)]
    pub mi: MiArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// The bucket to look at (default: the one linked to the workspace)
    #[arg(long)]
    pub bucket: Option<String>,
    /// Only keys under this prefix
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Object Storage endpoint (default: the region's)
    #[arg(long, env = "MI_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Object Storage region
    #[arg(long, env = "MI_S3_REGION", default_value = crate::source::bucket::DEFAULT_REGION)]
    pub s3_region: String,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// The ledger (SQLite) that records every key's outcome
    #[arg(long, env = "MI_IMPORT_DB", default_value = config::DEFAULT_DB)]
    pub db: PathBuf,
}

#[derive(Debug, Args)]
pub struct MiArgs {
    /// MI's API endpoint [default: where the ledger holds the project, for `confirm`,
    /// `analyze` and a run with no source; else https://mi.apigw.ntruss.com]
    #[arg(long, env = "MI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The MI workspace name
    #[arg(long, env = "MI_WORKSPACE")]
    pub workspace: Option<String>,
    /// The MI project ID
    #[arg(long = "project", env = "MI_PROJECT_ID")]
    pub project: Option<String>,
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Request starts per second across all MI calls (0: no limit; 0.5: one every 2 s), or a
    /// schedule by local time of day: "08:00,5 20:00,20 23:30,off"
    #[arg(long, env = "MI_RATE", default_value = config::DEFAULT_RATE, allow_hyphen_values = true, value_parser = config::parse_rate)]
    pub rate: config::RateSetting,
    /// Requests in flight at once
    #[arg(long, env = "MI_CONCURRENCY", default_value_t = config::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Attempts per request before giving up on it
    #[arg(long, default_value_t = config::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Time limit for one request, e.g. 30s
    #[arg(long, value_parser = config::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Time between plain progress lines when stderr is not a terminal
    #[arg(long, value_parser = config::parse_duration, default_value = "10s")]
    pub progress_interval: Duration,
    /// How long MI's asset list may take to show a new asset: a key whose answer was lost is
    /// sent again only if it is still missing this long after
    #[arg(long, value_parser = config::parse_duration, default_value = "60s")]
    pub list_settle: Duration,
}

/// How long confirmation goes on after the last import, by default.
const DEFAULT_PATIENCE: &str = "10m";

#[derive(Debug, Args)]
pub struct ConfirmArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[command(flatten)]
    pub mi: MiArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Stop confirming after this long; what is still in progress stays registered
    #[arg(long, value_parser = config::parse_duration, default_value = DEFAULT_PATIENCE)]
    pub patience: Duration,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
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
    /// Listing requests to Object Storage at once (folders are listed side by side)
    #[arg(long, default_value_t = crate::source::bucket::DEFAULT_LIST_CONCURRENCY)]
    pub list_concurrency: usize,
    /// Only keys matching this glob (repeatable; `*` stays within a folder, `**` crosses)
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave out keys matching this glob (repeatable)
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Only keys matching a glob of this file (one a line; `#` starts a comment)
    #[arg(long, value_name = "FILE")]
    pub include_from: Option<PathBuf>,
    /// Leave out keys matching a glob of this file (one a line; `#` starts a comment)
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Option<PathBuf>,
    /// Send at most this many keys this run (a trial); the rest stay pending
    #[arg(long, value_name = "N")]
    pub max_keys: Option<u64>,
    /// Stop sending after this long (e.g. 6h); what is in flight finishes, the rest waits
    #[arg(long, value_parser = config::parse_duration, value_name = "DURATION")]
    pub stop_after: Option<Duration>,
    /// Stop sending at this local time of day (HH:MM, the next one to come)
    #[arg(long, value_name = "HH:MM")]
    pub stop_at: Option<String>,
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
    #[arg(long, value_parser = config::parse_duration)]
    pub min_age: Option<Duration>,
    /// What to do with a registered object whose ETag or size changed
    #[arg(long, value_enum, default_value_t = OnChanged::Report)]
    pub on_changed: OnChanged,
    /// Send keys marked failed again
    #[arg(long)]
    pub retry_failed: bool,
    /// Register keys marked import_failed again (their files were fixed)
    #[arg(long)]
    pub retry_import_failed: bool,
    /// Import a manifest's good rows though some are malformed (they are listed); without
    /// it, a malformed row stops the run before anything is sent
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Read the source and the ledger, ask MI nothing but the account, send nothing, and say
    /// what would happen
    #[arg(long)]
    pub dry_run: bool,
    /// Do not poll import-status after registering (use `confirm` later)
    #[arg(long)]
    pub no_confirm: bool,
    /// How long to keep confirming after the last import
    #[arg(long, value_parser = config::parse_duration, default_value = DEFAULT_PATIENCE)]
    pub patience: Duration,
    /// Send keys in buckets other than the one linked to the workspace
    #[arg(long)]
    pub allow_other_bucket: bool,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
}

/// What MI's analysis is asked for (`run --analyze`, `analyze`).
#[derive(Debug, Clone, Args)]
pub struct AnalysisArgs {
    /// Request MI's analysis of each key that completes (needs --analysis-person-count)
    #[arg(long)]
    pub analyze: bool,
    /// People to detect per asset, 0-10 (0 skips person analysis and is faster)
    #[arg(long)]
    pub analysis_person_count: Option<u8>,
    /// Scene length: extra-short, short, medium (MI's default) or long (video only)
    #[arg(long, value_enum)]
    pub scene_range: Option<crate::api::analysis::SceneRange>,
    /// Spoken language: enko (MI's default), en, ko, ja, zh-cn, zh-tw
    #[arg(long, value_enum)]
    pub source_language: Option<crate::api::analysis::SourceLanguage>,
    /// Detect audio effects (video only)
    #[arg(long)]
    pub detect_audio_effects: bool,
    /// A person tag to look for (repeatable, at most 30)
    #[arg(long = "tag-id")]
    pub tag_ids: Vec<i64>,
    /// Shortest scene in seconds (with --max-scene-duration, instead of --scene-range)
    #[arg(long)]
    pub min_scene_duration: Option<u32>,
    /// Longest scene in seconds (with --min-scene-duration)
    #[arg(long)]
    pub max_scene_duration: Option<u32>,
    /// Request analysis again for keys whose analysis failed or was cancelled
    #[arg(long)]
    pub reanalyze_failed: bool,
}

#[derive(Debug, Args)]
pub struct AnalyzeCommandArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[command(flatten)]
    pub mi: MiArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    /// Stop following analyses after this long; what is still running is followed later
    #[arg(long, value_parser = config::parse_duration, default_value = DEFAULT_PATIENCE)]
    pub patience: Duration,
    /// Count what would be sent for analysis, send nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["key", "from", "sole_candidates"])))]
pub struct ResolveArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// MI's API endpoint (needed only when the ledger holds the project at several)
    #[arg(long, env = "MI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The MI workspace name
    #[arg(long, env = "MI_WORKSPACE")]
    pub workspace: String,
    /// The MI project ID
    #[arg(long = "project", env = "MI_PROJECT_ID")]
    pub project: String,
    /// The key to settle, as the report shows it
    #[arg(long)]
    pub key: Option<String>,
    /// Its bucket (needed only when the key is in several)
    #[arg(long, requires = "key")]
    pub bucket: Option<String>,
    /// The key's asset in MI (one of its candidates, or one MI shows under the key's name)
    #[arg(long, requires = "key", conflicts_with = "not_registered")]
    pub asset_id: Option<i64>,
    /// MI has no asset for the key: the next run sends it
    #[arg(long, requires = "key")]
    pub not_registered: bool,
    /// Settle many keys from a CSV file: rows `key,asset_id` or `key,not-registered` (a
    /// `bucket` column too, if keys are in several), or the report's own CSV with its
    /// asset_id column filled in for uncertain keys
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Give every uncertain key that has exactly one candidate that candidate, on your word
    /// (see the README for what that risks)
    #[arg(long)]
    pub sole_candidates: bool,
    /// Say what would change, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Look-ups in MI per second, for assets outside a key's candidates
    #[arg(long, env = "MI_RATE", default_value = config::DEFAULT_RATE, allow_hyphen_values = true, value_parser = config::parse_rate)]
    pub rate: config::RateSetting,
    /// Time limit for one look-up
    #[arg(long, value_parser = config::parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
    pub format: ReportFormat,
    /// Only keys in these states (repeatable, or comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub state: Vec<State>,
    /// Write here instead of stdout
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Only the keys one run touched: `last`, or a run's number (`status` shows runs)
    #[arg(long, value_name = "last|N")]
    pub run: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Where to write the copy (a new file)
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// MI's API endpoint (needed only when the ledger holds the project at several)
    #[arg(long, env = "MI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The workspace whose project is removed from the ledger
    #[arg(long)]
    pub workspace: String,
    /// The project removed from the ledger
    #[arg(long = "project")]
    pub project: String,
    /// Remove them (without it, only say what would be removed)
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo's ledger, replaced by each demo
    #[arg(long, default_value = crate::demo::DEMO_DB)]
    pub db: PathBuf,
    /// Request starts per second (slow enough to watch)
    #[arg(long, default_value_t = 25.0)]
    pub rate: f64,
    /// Also request each completed asset's analysis, and follow it
    #[arg(long)]
    pub analyze: bool,
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
    #[arg(long, value_parser = config::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Share of requests answered 429
    #[arg(long, default_value_t = 0.0)]
    pub rate_429: f64,
    /// Share of requests answered 503 before they reach MI
    #[arg(long, default_value_t = 0.0)]
    pub rate_503: f64,
    /// Share of register calls answered 503 after the asset was created
    #[arg(long, default_value_t = 0.0)]
    pub fail_after_create: f64,
    /// Share of register and analysis calls whose connection drops before the work is done
    #[arg(long, default_value_t = 0.0)]
    pub drop_before: f64,
    /// Share of register and analysis calls whose connection drops after the work is done
    #[arg(long, default_value_t = 0.0)]
    pub drop_after: f64,
    /// Requests per second before the gateway answers 429
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// How long imports stay IN_PROGRESS
    #[arg(long, alias = "settle", value_parser = config::parse_duration, default_value = "2s")]
    pub import_time: Duration,
    /// Extra import time per GB of the object (from --sizes), e.g. 30s
    #[arg(long, alias = "settle-per-gb", value_parser = config::parse_duration, default_value = "0s")]
    pub import_time_per_gb: Duration,
    /// What the asset list's fileName holds
    #[arg(long, value_enum, default_value_t = FileNameMode::FullKey)]
    pub file_name: FileNameMode,
    /// How long after its creation an asset shows in the asset list
    #[arg(long, value_parser = config::parse_duration, default_value = "0s")]
    pub list_lag: Duration,
    /// Leave createdTime out of the asset list's entries
    #[arg(long)]
    pub list_without_time: bool,
    /// Leave metaData.size out of the asset list's entries
    #[arg(long)]
    pub list_without_size: bool,
    /// Put each asset's uploadStatus in the asset list's entries
    #[arg(long)]
    pub list_upload_status: bool,
    /// Number new assets at random instead of in order
    #[arg(long)]
    pub random_ids: bool,
    /// Serve the asset list newest first instead of in ID order
    #[arg(long)]
    pub list_newest_first: bool,
    /// Leave totalPage out of the asset list's answers
    #[arg(long)]
    pub list_without_total_page: bool,
    /// For this many walks over the asset list, delete an older asset and add one right after
    /// the first page
    #[arg(long, default_value_t = 0)]
    pub list_churn: u32,
    /// Store file names normalised (Unicode NFC, no leading /)
    #[arg(long)]
    pub normalize_names: bool,
    /// Asset details carry no `key` (the object key), only what a list entry does: the
    /// other reading of MI's details
    #[arg(long)]
    pub details_without_key: bool,
    /// CSV `bucket,key,size` of the objects' sizes (for metaData.size and import times)
    #[arg(long)]
    pub sizes: Option<PathBuf>,
    /// CSV `bucket,key` of assets the project holds before anything is registered
    #[arg(long)]
    pub preload: Option<PathBuf>,
    /// Polls of an analysis before it reaches its final status (unless --analysis-time)
    #[arg(long, default_value_t = 2)]
    pub analysis_polls: u32,
    /// How long an analysis takes from its acceptance, e.g. 120s (instead of --analysis-polls)
    #[arg(long, value_parser = config::parse_duration)]
    pub analysis_time: Option<Duration>,
    /// Extra analysis time per GB of the asset (from --sizes), e.g. 30s
    #[arg(long, value_parser = config::parse_duration, default_value = "0s")]
    pub analysis_time_per_gb: Duration,
    /// Spell the index calls' answers as MI's examples do (`indexId`, `analysisStatusMessage`)
    #[arg(long)]
    pub analysis_example_spelling: bool,
    /// Seed for the fault dice
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}
