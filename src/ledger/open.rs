//! Opening a ledger file: where it may live, creating it owner-only, WAL, the schema's
//! migrations, and the errors a user can fix (a missing folder, a folder, a file that is not a
//! ledger, a place that cannot be written), each naming the path with a hint.

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, ErrorCode};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exit::input;

/// The schema, in order. Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_keys_and_runs.sql"),
    include_str!("../../migrations/0002_confirmation.sql"),
    include_str!("../../migrations/0003_listings.sql"),
    include_str!("../../migrations/0004_manifests.sql"),
    include_str!("../../migrations/0005_due_checks.sql"),
    include_str!("../../migrations/0006_compact_ledger.sql"),
    include_str!("../../migrations/0007_scopes_and_assets.sql"),
];

/// How long a connection waits for another process's lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open ledger file.
pub struct Ledger {
    conn: Connection,
}

impl Ledger {
    /// Opens (creating, owner-only) and migrates the ledger at `path`. A path that cannot hold
    /// a ledger is an input error (exit 2) naming the path, with a hint.
    pub fn open(path: &Path) -> Result<Self> {
        check_place(path).map_err(input)?;
        create_private(path).map_err(input)?;
        let conn = Connection::open(path)
            .map_err(|e| explain(e, path))
            .map_err(input)?;
        Self::setup(conn).map_err(|e| match e.downcast::<rusqlite::Error>() {
            Ok(sqlite) => input(explain(sqlite, path)),
            Err(other) => other.context(format!("preparing the ledger {}", path.display())),
        })
    }

    /// Opens a ledger that must already exist (`status`, `report`, `confirm`).
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(input(anyhow::anyhow!(
                "no ledger at {}\nhint: run `mi-import run` first, or pass --db with the ledger's path",
                path.display()
            )));
        }
        Self::open(path)
    }

    /// An in-memory ledger, for unit tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        refuse_foreign_database(&conn)?;
        enter_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self { conn })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Folds the write-ahead log into the file, so the file alone is the whole ledger (to
    /// copy or move it). Called when a command that wrote is done.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .context("folding the ledger's write-ahead log into the file")
    }

    /// Writes a consistent copy of the ledger to `to`, also while a run writes to it: one
    /// read transaction copies every page (SQLite's online backup, in one step).
    pub fn backup_to(&self, to: &Path) -> Result<()> {
        if to.exists() {
            return Err(input(anyhow::anyhow!(
                "{} already exists\nhint: name a new file; a backup never overwrites",
                to.display()
            )));
        }
        let mut copy = Connection::open(to)
            .map_err(|e| explain(e, to))
            .map_err(input)?;
        {
            let backup = rusqlite::backup::Backup::new(&self.conn, &mut copy)?;
            backup
                .step(-1)
                .with_context(|| format!("copying the ledger to {}", to.display()))?;
        }
        copy.pragma_update(None, "journal_mode", "DELETE")?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}

/// The ledger's path with symlinks and `..` resolved, so every way of naming one file
/// takes the same lock. The file itself need not exist yet.
pub fn real_path(path: &Path) -> Result<PathBuf> {
    check_place(path).map_err(input)?;
    if path.exists() {
        return Ok(std::fs::canonicalize(path)?);
    }
    // A dangling symlink: lock where it points.
    if let Ok(target) = std::fs::read_link(path) {
        let target = match path.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
        return real_path(&target);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| input(anyhow::anyhow!("--db {} names no file", path.display())))?;
    Ok(std::fs::canonicalize(parent)?.join(name))
}

/// Refuses places that cannot hold a ledger before anything is created there.
fn check_place(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "the ledger path {} is a folder\nhint: pass --db with a file name, e.g. --db {}",
            path.display(),
            path.join("mi-import.db").display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    if !parent.is_dir() {
        bail!(
            "cannot create the ledger {}: the folder {} does not exist\nhint: create the folder first, or pass --db with a path in an existing folder",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// SQLite's complaint about `path`, in words with a hint.
fn explain(error: rusqlite::Error, path: &Path) -> anyhow::Error {
    let code = error.sqlite_error_code();
    let p = path.display();
    let text = match code {
        Some(ErrorCode::NotADatabase) => format!(
            "{p} is not an mi-import ledger (not a SQLite database)\nhint: pass --db with the ledger's path; a new ledger is created where no file exists"
        ),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => format!(
            "cannot write the ledger {p}: {error}\nhint: check the permissions of the file and its folder (the ledger, its -wal and -shm files need write access)"
        ),
        _ => return anyhow::Error::new(error).context(format!("opening the ledger {p}")),
    };
    anyhow::anyhow!(text)
}

#[cfg(unix)]
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create the ledger {}\nhint: check that the folder is writable",
                path.display()
            )
        })?;
    Ok(())
}

#[cfg(not(unix))]
fn create_private(_path: &Path) -> Result<()> {
    Ok(())
}

/// A SQLite file some other program made: its tables are not ours to add to.
fn refuse_foreign_database(conn: &Connection) -> Result<()> {
    // One statement, one snapshot: another process may be creating this very ledger.
    let (version, tables): (i64, i64) = conn.query_row(
        "SELECT (SELECT user_version FROM pragma_user_version),
                (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if version == 0 && tables > 0 {
        return Err(input(anyhow::anyhow!(
            "the file is a SQLite database of another program, not an mi-import ledger\nhint: pass --db with the ledger's path, or a new file name"
        )));
    }
    Ok(())
}

/// Switches the file to WAL. SQLite does not call the busy handler for this switch, so two
/// processes opening a fresh ledger at once (a run and a `status`, or two overlapping cron
/// runs before the lock file is taken) would see "database is locked"; wait here instead.
fn enter_wal(conn: &Connection) -> Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

/// Applies the migrations the file lacks, all in one exclusive transaction.
/// A ledger already current is only read, so `status` beside a running job writes nothing.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current == MIGRATIONS.len() {
        return Ok(());
    }
    // Rebuilding tables needs the old ones dropped while rows still point at them.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "the ledger's schema version {version} is newer than this mi-import knows ({})\n\
             hint: use a newer mi-import with this ledger",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// How many migrations this build knows (the schema version it writes).
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}
