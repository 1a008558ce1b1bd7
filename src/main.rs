//! Parse the command line, set up logging and signals, run one command, map its result to an
//! exit code. Errors are printed once, here, with their causes.

use anyhow::Result;
use clap::Parser;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use mi_import::app::{self, ImportJob, Manifest};
use mi_import::cli::{Cli, Command, Global, LimitArgs, LogFormat, MiArgs, RunArgs};
use mi_import::config::{Credentials, Limits, Target};
use mi_import::emulator::Emulator;
use mi_import::exit::{self, Exit, input};
use mi_import::progress::{self, Display};
use mi_import::runner::{Cutoff, RunOptions};
use mi_import::source::bucket::{self, BucketSpec, S3Place};
use mi_import::source::filter::Filters;

fn main() {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            progress::error(&format!("cannot start the async runtime: {e}"), None);
            std::process::exit(Exit::Trouble.code());
        }
    };
    let exit = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        watch_signals(shutdown.clone());
        match execute(cli, shutdown).await {
            Ok(exit) => exit,
            // A closed pipe (`report | head`) is the reader saying it has enough.
            Err(error) if exit::is_broken_pipe(&error) => Exit::Success,
            Err(error) => {
                let exit = exit::for_error(&error);
                let text = format!("{error:#}");
                let (mut message, mut hint) = match text.split_once("\nhint: ") {
                    Some((m, h)) => (m.to_owned(), Some(h.to_owned())),
                    None => (text, None),
                };
                if exit == Exit::LedgerWrite {
                    message = format!("cannot write the ledger (disk full?): {message}");
                    hint.get_or_insert_with(|| exit::LEDGER_WRITE_HINT.to_owned());
                }
                progress::error(&message, hint.as_deref());
                exit
            }
        }
    });
    // Requests abandoned after the shutdown grace must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(exit.code());
}

fn init_logging(cli: &Cli) {
    let default = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn,mi_import=info",
        (false, 1) => "info,mi_import=debug",
        _ => "debug,mi_import=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match cli.global.log_format {
        LogFormat::Json => {
            progress::set_json(true);
            builder.json().with_ansi(false).init()
        }
        // Text from outside (keys, MI's words) reaches a log line escaped: no line break,
        // carriage return, escape sequence or bidi override of its own.
        LogFormat::Text => builder
            .without_time()
            .fmt_fields(tracing_subscriber::fmt::format::debug_fn(
                |writer, field, value| {
                    let text = format!("{value:?}");
                    let text = mi_import::escape::shown(&text);
                    if field.name() == "message" {
                        write!(writer, "{text}")
                    } else {
                        write!(writer, " {}={text}", field.name())
                    }
                },
            ))
            .init(),
    }
}

/// The first SIGINT/SIGTERM asks for a calm stop; a second one ends the process at once.
fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot watch for signals; Ctrl-C will stop at once");
        return;
    };
    tokio::spawn(async move {
        loop {
            let which = tokio::select! {
                _ = int.recv() => 1,
                _ = term.recv() => 2,
            };
            if exit::note_signal(which == 2) {
                progress::note(
                    "stopping now; keys that were being sent will be checked by the next run",
                );
                std::process::exit(if which == 1 { 130 } else { 143 });
            }
            progress::hide_bar();
            progress::note(
                "stopping: finishing requests in flight (press Ctrl-C again to quit at once)",
            );
            shutdown.cancel();
        }
    });
}

async fn execute(cli: Cli, shutdown: CancellationToken) -> Result<Exit> {
    let Cli { global, command } = cli;
    let quiet = global.quiet;
    let credentials = || Credentials::discover(global.profile.as_deref()).map_err(input);
    match command {
        Command::Run(args) => {
            let dry_run = args.dry_run;
            let job = import_job(*args, &global)?;
            if dry_run {
                say(&app::dry_run(&job, shutdown).await?);
                return Ok(Exit::Success);
            }
            let result = app::import(job, shutdown).await?;
            finish(result, quiet)
        }
        Command::Confirm(args) => {
            let display = Display::choose(quiet, args.limits.progress_interval);
            let (target, limits) = settings(
                args.mi,
                EndpointFrom::TheLedger(&args.ledger.db),
                &args.limits,
                &global,
            )?;
            let job = ImportJob {
                display,
                list_settle: args.limits.list_settle,
                floors: app::floors()?,
                ..ImportJob::new(args.ledger.db, target, credentials()?, limits)
            };
            let result = app::confirm(job, args.patience, shutdown).await?;
            finish(result, quiet)
        }
        Command::Analyze(args) => {
            let display = Display::choose(quiet, args.limits.progress_interval);
            let (target, limits) = settings(
                args.mi,
                EndpointFrom::TheLedger(&args.ledger.db),
                &args.limits,
                &global,
            )?;
            let plan = app::analysis_plan(&args.analysis, true)?.expect("required");
            let job = ImportJob {
                display,
                list_settle: args.limits.list_settle,
                floors: app::floors()?,
                ..ImportJob::new(args.ledger.db, target, credentials()?, limits)
            };
            if args.dry_run {
                say(&app::analyze_dry_run(&job, &plan)?);
                return Ok(Exit::Success);
            }
            let result = app::analyze(job, plan, args.patience, shutdown).await?;
            finish(result, quiet)
        }
        Command::Resolve(args) => {
            say(&app::resolve(&args.ledger.db, &args, &global, shutdown).await?);
            Ok(Exit::Success)
        }
        Command::Demo(args) => {
            let display = Display::choose(quiet, mi_import::progress::DEFAULT_PLAIN_INTERVAL);
            let result =
                mi_import::demo::run(args.rate, &args.db, args.analyze, display, shutdown).await?;
            finish(result, quiet)
        }
        Command::Status(args) => {
            let text = app::status(&args.ledger.db, args.json)?;
            if args.json {
                print!("{text}");
            } else {
                say(&text);
            }
            Ok(Exit::Success)
        }
        Command::Report(args) => {
            let rows = app::report(&args.ledger.db, &args)?;
            if let Some(path) = &args.output {
                tracing::info!("{rows} rows written to {}", path.display());
            }
            Ok(Exit::Success)
        }
        Command::Backup(args) => {
            app::backup(&args.ledger.db, &args.file)?;
            Ok(Exit::Success)
        }
        Command::Forget(args) => {
            say(&app::forget(
                &args.ledger.db,
                args.endpoint.as_deref(),
                &args.workspace,
                &args.project,
                args.yes,
            )?);
            Ok(Exit::Success)
        }
        Command::Emulator(args) => serve_emulator(args, &global, shutdown).await,
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "mi-import",
                &mut std::io::stdout(),
            );
            Ok(Exit::Success)
        }
        Command::Check(args) => {
            let args = *args;
            let (target, limits) =
                settings(args.mi, EndpointFrom::GivenOrDefault, &args.limits, &global)?;
            let credentials = credentials()?;
            let endpoint =
                bucket::endpoint_for(&args.s3_region, args.s3_endpoint).map_err(input)?;
            mi_import::config::check_transport(
                &endpoint,
                "--s3-endpoint",
                global.allow_insecure_http,
            )
            .map_err(input)?;
            let from = match (&global.profile, std::env::var("NCLOUD_ACCESS_KEY")) {
                (Some(p), _) => format!("~/.ncloud/configure [{p}]"),
                (None, Ok(_)) => "NCLOUD_ACCESS_KEY".into(),
                (None, Err(_)) => "~/.ncloud/configure".into(),
            };
            let job = app::CheckJob {
                db: args.ledger.db,
                s3: S3Place {
                    endpoint,
                    region: args.s3_region,
                    credentials: bucket::s3_credentials(&credentials),
                },
                target,
                credentials,
                limits,
                credentials_from: from,
                bucket: args.bucket,
                prefix: args.prefix,
            };
            let checked = app::check(job).await?;
            say(&checked.text);
            Ok(if checked.ready {
                Exit::Success
            } else {
                Exit::Fatal
            })
        }
    }
}

/// Text for the operator on stdout (the dry run, `status`, `resolve`, `forget`): on a
/// terminal, anything from outside in it is escaped.
fn say(text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        print!("{}", mi_import::escape::lines(text));
    } else {
        print!("{text}");
    }
}

fn finish(result: app::ImportResult, quiet: bool) -> Result<Exit> {
    let exit = match result.exit {
        Exit::Interrupted => exit::interrupted(),
        other => other,
    };
    if let mi_import::runner::Ending::Fatal(stop) | mi_import::runner::Ending::Refused(stop) =
        &result.ending
    {
        progress::error(&stop.message, stop.hint.as_deref());
    }
    let mut record = result.record;
    record.exit_code = exit.code();
    // Whatever -q says, the run's summary is logged: the reason for its exit code with it.
    let text = if quiet {
        format!("{}\n", record.one_line())
    } else {
        format!("{}{}", result.summary, result.next_steps)
    };
    progress::summary(&text, &serde_json::to_value(&record)?, quiet);
    Ok(exit)
}

/// Where a command finds its MI endpoint: as given or MI's default, or (a command on what the
/// ledger holds) where the ledger holds the project.
enum EndpointFrom<'a> {
    GivenOrDefault,
    TheLedger(&'a std::path::Path),
}

fn settings(
    mi: MiArgs,
    endpoint_from: EndpointFrom,
    limits: &LimitArgs,
    global: &Global,
) -> Result<(Target, Limits)> {
    let given = mi.endpoint.as_deref();
    let endpoint = given.unwrap_or(mi_import::config::DEFAULT_ENDPOINT);
    mi_import::config::check_transport(endpoint, "--endpoint", global.allow_insecure_http)
        .map_err(input)?;
    let mut target = Target::new(endpoint, mi.workspace, mi.project).map_err(input)?;
    if let EndpointFrom::TheLedger(db) = endpoint_from {
        let held = app::ledger_endpoint(db, given, &target.workspace, &target.project)?;
        if held != endpoint {
            mi_import::config::check_transport(
                &held,
                "the ledger's endpoint",
                global.allow_insecure_http,
            )
            .map_err(input)?;
            target =
                Target::new(&held, Some(target.workspace), Some(target.project)).map_err(input)?;
        }
    }
    let limits = Limits::with_setting(
        limits.rate.clone(),
        limits.concurrency,
        limits.max_attempts,
        limits.timeout,
    )
    .map_err(input)?;
    Ok((target, limits))
}

fn import_job(args: RunArgs, global: &Global) -> Result<ImportJob> {
    let display = Display::choose(global.quiet, args.limits.progress_interval);
    let analyze = app::analysis_plan(&args.analysis, false)?;
    // With no source, the run works on what the ledger holds, where it holds it.
    let endpoint_from = match (&args.manifest, &args.bucket) {
        (None, None) => EndpointFrom::TheLedger(&args.ledger.db),
        _ => EndpointFrom::GivenOrDefault,
    };
    let (target, limits) = settings(args.mi, endpoint_from, &args.limits, global)?;
    let credentials = Credentials::discover(global.profile.as_deref()).map_err(input)?;
    let endpoint = bucket::endpoint_for(&args.s3_region, args.s3_endpoint).map_err(input)?;
    mi_import::config::check_transport(&endpoint, "--s3-endpoint", global.allow_insecure_http)
        .map_err(input)?;
    let s3 = S3Place {
        endpoint,
        region: args.s3_region,
        credentials: bucket::s3_credentials(&credentials),
    };
    let (manifest, listing) = match (args.manifest, &args.bucket) {
        (Some(path), _) => (Manifest::File(path), None),
        (None, Some(bucket)) => (
            Manifest::None,
            Some(s3.spec(bucket.clone(), args.prefix.clone())),
        ),
        // No source: resume what the ledger holds for this workspace and project.
        (None, None) => (Manifest::None, None::<BucketSpec>),
    };
    let mut include = args.include.clone();
    let mut exclude = args.exclude.clone();
    if let Some(path) = &args.include_from {
        include.extend(mi_import::config::globs_from(path).map_err(input)?);
    }
    if let Some(path) = &args.exclude_from {
        exclude.extend(mi_import::config::globs_from(path).map_err(input)?);
    }
    let mut filters = Filters::default()
        .with_globs(&include, &exclude)
        .map_err(input)?;
    filters.min_size = args.min_size;
    filters.max_size = args.max_size;
    filters.modified_after = args.modified_after;
    filters.modified_before = args.modified_before;
    filters.min_age = args.min_age;
    if args.list_concurrency == 0 {
        return Err(input(anyhow::anyhow!(
            "--list-concurrency must be at least 1"
        )));
    }
    Ok(ImportJob {
        db: args.ledger.db,
        target,
        credentials,
        limits,
        manifest,
        manifest_format: args.manifest_format,
        default_bucket: if listing.is_some() { None } else { args.bucket },
        listing,
        s3: Some(s3),
        filters,
        on_changed: args.on_changed,
        retry_failed: args.retry_failed,
        retry_import_failed: args.retry_import_failed,
        skip_bad_rows: args.skip_bad_rows,
        list_settle: args.limits.list_settle,
        floors: app::floors()?,
        local_mi: None,
        list_concurrency: args.list_concurrency,
        options: RunOptions {
            cutoff: Cutoff {
                max_keys: args.max_keys,
                at: match (&args.stop_at, args.stop_after) {
                    (Some(at), _) => Some(mi_import::config::next_time_of_day(at).map_err(input)?),
                    (None, Some(after)) => Some(mi_import::clock::now() + after),
                    (None, None) => None,
                },
            },
            allow_other_bucket: args.allow_other_bucket,
            buckets: Vec::new(),
            confirm: (!args.no_confirm).then_some(args.patience),
            analyze,
        },
        display,
    })
}

async fn serve_emulator(
    args: mi_import::cli::EmulatorArgs,
    global: &Global,
    shutdown: CancellationToken,
) -> Result<Exit> {
    let credentials = Credentials::discover(global.profile.as_deref())
        .map_err(|e| input(e.context("the emulator accepts the same key pair as the client")))?;
    let config = app::emulator_config(&args, credentials).map_err(input)?;
    let emulator = Emulator::start(config.clone(), args.listen)
        .await
        .map_err(input)?;
    eprintln!(
        "MI emulator on {} (workspace {}, project {}, bucket {}); statistics at {}/_emulator/stats; Ctrl-C stops it",
        emulator.endpoint(),
        config.workspace,
        config.project,
        config.bucket,
        emulator.endpoint()
    );
    let emulator = Arc::new(emulator);
    shutdown.cancelled().await;
    eprintln!("{}", emulator.describe());
    emulator.stop();
    Ok(Exit::Success)
}
