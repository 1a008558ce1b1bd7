//! Exit codes: the contract with cron and scripts (docs/design.md, "Exit codes"; README).

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every key ended registered, completed or skipped.
    Success,
    /// The run finished; some keys are failed, import_failed or uncertain (or an unexpected
    /// error stopped it; an unwritable ledger is [`Exit::LedgerWrite`]).
    Trouble,
    /// Usage, configuration or input error: nothing was sent.
    Usage,
    /// A fatal API answer (credentials, permission, workspace, project) or the failure-rate
    /// breaker stopped the run; untouched keys stay pending.
    Fatal,
    /// Another run holds this ledger.
    Locked,
    /// The ledger could not be written (disk full, I/O error): the run stopped at once, and
    /// nothing it recorded was lost.
    LedgerWrite,
    /// SIGINT: requests in flight were finished and recorded.
    Interrupted,
    /// SIGTERM: likewise.
    Terminated,
}

impl Exit {
    /// The exit a code stands for.
    pub fn from_code(code: i32) -> Option<Exit> {
        [
            Exit::Success,
            Exit::Trouble,
            Exit::Usage,
            Exit::Fatal,
            Exit::Locked,
            Exit::LedgerWrite,
            Exit::Interrupted,
            Exit::Terminated,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }

    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Trouble => 1,
            Exit::Usage => 2,
            Exit::Fatal => 3,
            Exit::Locked => 4,
            Exit::LedgerWrite => 5,
            Exit::Interrupted => 130,
            Exit::Terminated => 143,
        }
    }
}

/// Which signal asked the process to stop: 0 none, 1 SIGINT, 2 SIGTERM.
static SIGNAL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Notes that SIGINT (`terminate` false) or SIGTERM asked the process to stop; whether one
/// had already.
pub fn note_signal(terminate: bool) -> bool {
    SIGNAL.swap(
        if terminate { 2 } else { 1 },
        std::sync::atomic::Ordering::SeqCst,
    ) != 0
}

/// The exit for a command a signal stopped: 130 for SIGINT, 143 for SIGTERM.
pub fn interrupted() -> Exit {
    if SIGNAL.load(std::sync::atomic::Ordering::SeqCst) == 2 {
        Exit::Terminated
    } else {
        Exit::Interrupted
    }
}

/// An error in what the user gave (flags, settings, input files): exit 2, nothing sent.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InputError(#[from] pub anyhow::Error);

/// Wraps an error as an input error.
pub fn input(error: impl Into<anyhow::Error>) -> anyhow::Error {
    InputError(error.into()).into()
}

/// A fatal answer from MI (credentials, permission, workspace, project) outside a run: exit 3.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FatalError(#[from] pub anyhow::Error);

/// Wraps an error as a fatal answer.
pub fn fatal(error: impl Into<anyhow::Error>) -> anyhow::Error {
    FatalError(error.into()).into()
}

/// Another process holds the ledger: exit 4. The lock says who in its message; this module
/// needs only to know that it was held.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LockedError(#[from] pub anyhow::Error);

/// Wraps an error as "the ledger is held by another run".
pub fn locked(error: impl Into<anyhow::Error>) -> anyhow::Error {
    LockedError(error.into()).into()
}

/// The exit code for an error that ended the program.
pub fn for_error(error: &anyhow::Error) -> Exit {
    let chain = || error.chain();
    if chain().any(|e| e.is::<InputError>()) {
        Exit::Usage
    } else if chain().any(|e| e.is::<FatalError>()) {
        Exit::Fatal
    } else if chain().any(|e| e.is::<LockedError>()) {
        Exit::Locked
    } else if chain().any(is_write_failure) {
        Exit::LedgerWrite
    } else {
        Exit::Trouble
    }
}

/// SQLite could not write: the disk (or the file system's quota) is full, or the write
/// failed outright.
fn is_write_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    use rusqlite::ErrorCode::{DiskFull, SystemIoFailure};
    matches!(
        e.downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code),
        Some(DiskFull | SystemIoFailure)
    )
}

/// The hint for an error that stopped writing the ledger.
pub const LEDGER_WRITE_HINT: &str = "free space where the ledger lives (or fix the disk), then run the same command again: \
     nothing recorded was lost, and keys that were being sent are checked in MI before any is sent again";

/// A write to a closed pipe (`mi-import report | head -1`): the reader has what it wanted.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<csv::Error>().is_some_and(|c| {
                matches!(c.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        let all = [
            (Exit::Success, 0),
            (Exit::Trouble, 1),
            (Exit::Usage, 2),
            (Exit::Fatal, 3),
            (Exit::Locked, 4),
            (Exit::LedgerWrite, 5),
            (Exit::Interrupted, 130),
            (Exit::Terminated, 143),
        ];
        for (exit, code) in all {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }

    #[test]
    fn errors_map_to_codes() {
        assert_eq!(for_error(&input(anyhow::anyhow!("bad flag"))), Exit::Usage);
        let held = locked(anyhow::anyhow!("held by pid 1"));
        assert_eq!(for_error(&held.context("run")), Exit::Locked);
        assert_eq!(
            for_error(&anyhow::anyhow!("no reason known")),
            Exit::Trouble
        );
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let wrapped = anyhow::Error::new(full).context("ledger");
        assert_eq!(for_error(&wrapped), Exit::LedgerWrite);
        let nested = input(anyhow::anyhow!("bad").context("while reading"));
        assert_eq!(for_error(&nested.context("outer")), Exit::Usage);
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&pipe.context("writing the report")));
    }
}
