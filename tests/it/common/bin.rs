//! The one command builder for the real binary: every test's argument list is made here,
//! from the parts a test varies (a subcommand, a source, flags set, added or left out), and
//! run with the same environment (credentials, the tests' floors, nothing inherited).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{ACCESS, BUCKET, SECRET, Workspace};
use mi_import::emulator::Emulator;

/// The floors the binary's tests run at (`MI_IMPORT_FLOORS`, docs/design.md, "Floors"):
/// every wait the protocol builds in, lowered so that a kill and a resume, or a first look,
/// cost a fraction of a second rather than seconds. [`Bin::shipped_floors`] keeps a test at
/// the real values.
pub const TEST_FLOORS: &str = "heartbeat=1s,late-slack=200ms,first-look=500ms,defer=2s,gather=1s";

/// What a test's `run` sets unless it says otherwise: no confirmation, a short settle window
/// (the emulator's list is current at once unless a test gives it a lag), no rate limit.
pub const RUN_DEFAULTS: &[&str] = &["--no-confirm", "--list-settle", "2s", "--rate", "0"];

/// One invocation of `mi-import`.
#[derive(Debug, Clone)]
pub struct Bin {
    args: Vec<String>,
    secret: String,
    cwd: PathBuf,
    /// Environment beyond the fixed one (`None`: removed).
    env: Vec<(String, Option<String>)>,
}

impl Bin {
    /// `mi-import ARGS` in `ws`'s folder.
    pub fn new(ws: &Workspace, args: &[&str]) -> Self {
        Self::in_dir(ws.dir.path(), args)
    }

    /// `mi-import ARGS` in `dir`.
    pub fn in_dir(dir: &Path, args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            secret: SECRET.into(),
            cwd: dir.to_path_buf(),
            env: vec![("MI_IMPORT_FLOORS".into(), Some(TEST_FLOORS.into()))],
        }
    }

    /// `mi-import SUBCOMMAND --db LEDGER`: a command on `ws`'s ledger (`status`, `report`, …).
    pub fn on_ledger(ws: &Workspace, subcommand: &str) -> Self {
        let db = ws.db();
        Self::new(ws, &[subcommand, "--db", db.to_str().unwrap()])
    }

    /// `mi-import SUBCOMMAND --db LEDGER --endpoint EMU --workspace … --project …`: a command
    /// on `ws`'s ledger against `emu`'s project (`confirm`, `analyze`, `resolve`, `check`).
    pub fn against(ws: &Workspace, emu: &Emulator, subcommand: &str) -> Self {
        let endpoint = emu.endpoint();
        Self::on_ledger(ws, subcommand).args(&[
            "--endpoint",
            &endpoint,
            "--workspace",
            "demo-workspace",
            "--project",
            "1001",
        ])
    }

    /// `mi-import run` on `ws`'s ledger against `emu`, with no source yet (the ledger's own
    /// keys) and the tests' usual settings: `--no-confirm --list-settle 2s --rate 0`.
    pub fn run(ws: &Workspace, emu: &Emulator) -> Self {
        Self::against(ws, emu, "run").args(RUN_DEFAULTS)
    }

    /// … reading `manifest`.
    pub fn manifest(self, manifest: &Path) -> Self {
        self.set("--manifest", manifest.to_str().unwrap())
    }

    /// … listing the test S3 server's bucket.
    pub fn listing(self, s3: &super::s3::S3Server) -> Self {
        let endpoint = s3.endpoint();
        self.set("--bucket", BUCKET).set("--s3-endpoint", &endpoint)
    }

    /// … with the test S3 server's credentials in the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`): for a run that lists a bucket, or `check`.
    pub fn s3_credentials(self) -> Self {
        self.env("AWS_ACCESS_KEY_ID", super::s3::S3_ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", super::s3::S3_SECRET)
    }

    /// … confirming what it registers for at most `patience` (`--patience`).
    pub fn confirming(self, patience: &str) -> Self {
        self.without_switch("--no-confirm")
            .set("--patience", patience)
    }

    /// `flag` set to `value`: in its place if it is there, added if not.
    pub fn set(mut self, flag: &str, value: &str) -> Self {
        match self.args.iter().position(|a| a == flag) {
            Some(at) if at + 1 < self.args.len() => self.args[at + 1] = value.into(),
            _ => self.args.extend([flag.into(), value.into()]),
        }
        self
    }

    /// More arguments, at the end.
    pub fn args(mut self, more: &[&str]) -> Self {
        self.args.extend(more.iter().map(|a| a.to_string()));
        self
    }

    /// `flag` and its value left out.
    pub fn without(mut self, flag: &str) -> Self {
        if let Some(at) = self.args.iter().position(|a| a == flag) {
            let end = (at + 2).min(self.args.len());
            self.args.drain(at..end);
        }
        self
    }

    /// A flag that takes no value left out.
    pub fn without_switch(mut self, flag: &str) -> Self {
        self.args.retain(|a| a != flag);
        self
    }

    /// The secret key the environment gives (a wrong one, say).
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = secret.into();
        self
    }

    /// `name` set in the binary's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), Some(value.into())));
        self
    }

    /// `name` left out of the binary's environment.
    pub fn env_removed(mut self, name: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), None));
        self
    }

    /// At the floors a user's run keeps: for the tests that prove each floor at its value.
    pub fn shipped_floors(self) -> Self {
        self.env_removed("MI_IMPORT_FLOORS")
    }

    /// Run in `dir` instead.
    pub fn in_folder(mut self, dir: &Path) -> Self {
        self.cwd = dir.to_path_buf();
        self
    }

    /// The argument list as it stands.
    pub fn arg_list(&self) -> &[String] {
        &self.args
    }

    /// The process to start: the real binary (or the build `MI_IMPORT_CLIENT` names, to show
    /// a test fails on an earlier one), with credentials from the environment, `HOME` the
    /// test's folder, and nothing else inherited that could change its behaviour.
    pub fn command(&self) -> Command {
        let program = std::env::var_os("MI_IMPORT_CLIENT")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_mi-import").into());
        let mut cmd = Command::new(program);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.cwd)
            .env("NCLOUD_ACCESS_KEY", ACCESS)
            .env("NCLOUD_SECRET_KEY", &self.secret);
        for (name, value) in &self.env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        cmd
    }

    /// Runs it to the end, off the runtime's threads.
    pub async fn output(&self) -> Output {
        let mut cmd = self.command();
        tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
            .await
            .unwrap()
    }

    /// Runs it to the end on this thread (outside a runtime).
    pub fn output_now(&self) -> Output {
        self.command().output().expect("the binary runs")
    }

    /// Starts it, its stderr thrown away (a run to kill).
    pub fn spawn_quiet(&self) -> Child {
        self.command()
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts")
    }

    /// Starts it in the background, its stderr read as it is written (see [`Running`]).
    pub fn start(&self) -> Running {
        Running::start(self.command())
    }
}

/// A run in the background whose stderr is read while it runs, so that a run saying more
/// than a pipe holds never blocks on it; and whose early end fails the test with its exit
/// status and what it said, rather than leaving a test waiting for something that will not
/// come.
pub struct Running {
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Running {
    /// Starts `cmd` (made by [`Bin::command`], changed as a test needs), its stderr piped
    /// and read on a thread of its own.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut said = Vec::new();
            let _ = pipe.read_to_end(&mut said);
            said
        });
        Self {
            child,
            stderr: Some(stderr),
        }
    }

    /// Its process ID (to signal it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Fails the test if it has ended, with its exit status and stderr: `what` is what it
    /// was still to do.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.try_wait() {
            let said = self.stderr();
            panic!("the run ended ({status}) before {what}:\n{said}");
        }
    }

    /// Waits until `done` holds, failing the test if the run ends first (see
    /// [`Running::assert_running`]).
    pub async fn until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        while !done() {
            self.assert_running(what);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for its end on this thread: its exit status and stderr (its stdout is not read
    /// here).
    pub fn wait(mut self) -> Output {
        let status = self.child.wait().unwrap();
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        Output {
            status,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// … off the runtime's threads.
    pub async fn finish(self) -> Output {
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .unwrap()
    }

    /// What it wrote on stderr, once it has ended.
    fn stderr(&mut self) -> String {
        let said = self
            .stderr
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        String::from_utf8_lossy(&said).into_owned()
    }
}
