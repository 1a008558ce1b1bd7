//! Exit codes: the contract with cron and scripts (DESIGN.md, README).

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every key ended registered, completed or skipped.
    Success,
    /// The run finished; some keys are failed, import_failed or uncertain (or an unexpected
    /// error, such as an unwritable ledger, stopped it).
    Trouble,
    /// Usage, configuration or input error: nothing was sent.
    Usage,
    /// A fatal API answer (credentials, permission, workspace, project) or the failure-rate
    /// breaker stopped the run; untouched keys stay pending.
    Fatal,
    /// Another run holds this ledger.
    Locked,
    /// SIGINT: requests in flight were finished and recorded.
    Interrupted,
    /// SIGTERM: likewise.
    Terminated,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Trouble => 1,
            Exit::Usage => 2,
            Exit::Fatal => 3,
            Exit::Locked => 4,
            Exit::Interrupted => 130,
            Exit::Terminated => 143,
        }
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

/// The exit code for an error that ended the program.
pub fn for_error(error: &anyhow::Error) -> Exit {
    if error.downcast_ref::<InputError>().is_some() {
        Exit::Usage
    } else if matches!(
        error.downcast_ref::<crate::lock::LockError>(),
        Some(crate::lock::LockError::Held { .. })
    ) {
        Exit::Locked
    } else {
        Exit::Trouble
    }
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
        let held = crate::lock::LockError::Held {
            ledger: "l".into(),
            holder: "h".into(),
        };
        assert_eq!(for_error(&anyhow::Error::from(held)), Exit::Locked);
        assert_eq!(for_error(&anyhow::anyhow!("disk full")), Exit::Trouble);
    }
}
