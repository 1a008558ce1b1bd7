//! One run per ledger: an exclusive lock on `<ledger>.lock`, held for the life of the process.
//!
//! The lock file sits beside the ledger's real path (symlinks and `..` resolved), so every
//! name for one ledger takes the same lock. The kernel's advisory lock (`flock`) is released
//! when its holder dies, however it dies, so a lock left by a killed run never blocks the next
//! one. The file's text names the holder (pid, host, start time) for the message a second
//! run prints. The file goes when its command ends (a killed run's stays, harmless); a lock
//! is held only on the file the path names at that moment, so one removed meanwhile is never
//! taken for it. Nothing is created beside a file that is not a ledger.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Proof that this process holds the ledger. Dropping it releases the lock and removes the
/// lock file.
#[derive(Debug)]
pub struct LedgerLock {
    file: File,
    pub path: PathBuf,
}

impl Drop for LedgerLock {
    fn drop(&mut self) {
        // Removed while still held, so a newcomer either meets the held file or makes a new
        // one; never one being given up.
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the ledger {ledger} is in use by another mi-import ({holder})\nhint: wait for it to finish (or stop it); a run on another --db would not know what this ledger has sent"
    )]
    Held { ledger: String, holder: String },
    #[error("cannot lock the ledger through {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The lock file beside a ledger.
pub fn lock_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the ledger's lock at once, or says who holds it. A path that cannot hold a ledger
/// (a missing folder) is an input error naming it.
pub fn acquire(ledger: &Path, command: &str) -> anyhow::Result<LedgerLock> {
    let real = crate::ledger::open::real_path(ledger)?;
    crate::ledger::open::recognise(&real)?;
    // The file found may be one its last holder is removing: then try the new one.
    for _ in 0..8 {
        let lock = acquire_real(ledger, &real, command).map_err(|e| match e {
            held @ LockError::Held { .. } => crate::exit::locked(held),
            other => anyhow::Error::from(other),
        })?;
        if same_file(&lock.file, &lock.path) {
            return Ok(lock);
        }
        drop(lock);
    }
    anyhow::bail!(
        "cannot lock the ledger {}: its lock file keeps changing",
        ledger.display()
    )
}

fn acquire_real(ledger: &Path, real: &Path, command: &str) -> Result<LedgerLock, LockError> {
    let path = lock_path(real);
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                ledger: ledger.display().to_string(),
                holder: if holder.is_empty() {
                    "holder unknown".into()
                } else {
                    holder.into()
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let text = format!(
        "{command}: pid {} on {} since {started}\n",
        std::process::id(),
        host_name()
    );
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(LedgerLock { file, path })
}

/// This machine's name, for the lock's message and the runs table.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_of_one_ledger_takes_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let db = dir.path().join("real/mi.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let held = acquire(&link, "run").unwrap();
        let err = acquire(&db, "run").unwrap_err();
        assert_eq!(
            crate::exit::for_error(&err),
            crate::exit::Exit::Locked,
            "{err:#}"
        );
        let dotted = dir.path().join("real/../real/./mi.db");
        assert!(acquire(&dotted, "run").is_err());
        drop(held);
        assert!(acquire(&dotted, "run").is_ok());
    }

    #[test]
    fn second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let first = acquire(&db, "run").unwrap();
        let err = acquire(&db, "confirm").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("run:"), "{text}");
        drop(first);
        assert!(acquire(&db, "confirm").is_ok());
    }
}
