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
    include_str!("../../migrations/0008_observations.sql"),
    include_str!("../../migrations/0009_heartbeat_floor.sql"),
    include_str!("../../migrations/0010_asset_details.sql"),
];

/// How long a connection waits for another process's lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The page cache of each connection, in KiB.
const CACHE_KIB: i64 = 8192;
/// Pages the write-ahead log grows to before a commit folds it into the file (32 MiB at
/// SQLite's 4 KiB pages; its default is 1,000 pages).
const CHECKPOINT_PAGES: i64 = 8192;
/// SQLite's `application_id` of an mi-import ledger ("MIMP"): set when a ledger is made (or
/// first migrated), checked before anything is written to a file, so a foreign database
/// given as `--db` is left exactly as it was.
pub const APPLICATION_ID: i32 = 0x4d49_4d50;

/// What a ledger path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No file, or an empty one: a ledger may be made there.
    Nothing,
    /// An mi-import ledger of this schema version.
    Ledger { version: usize },
}

/// Looks at the file at `path` without changing it (a read-only connection, nothing
/// written): nothing there, an mi-import ledger, or an input error (exit 2) for a file of
/// another program or of a newer mi-import.
pub fn recognise(path: &Path) -> Result<Found> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => {
            return Err(input(
                anyhow::Error::new(e).context(format!("cannot read {}", path.display())),
            ));
        }
        Ok(m) if m.is_dir() => {
            return Err(input(anyhow::anyhow!(
                "the ledger path {} is a folder\nhint: pass --db with a file name, e.g. --db {}",
                path.display(),
                path.join("mi-import.db").display()
            )));
        }
        Ok(m) if m.len() == 0 => return Ok(Found::Nothing),
        Ok(_) => {}
    }
    let foreign = || {
        input(anyhow::anyhow!(
            "{} is not an mi-import ledger (a file of another program); it was left as it is\nhint: pass --db with the ledger's path, or a new file name",
            path.display()
        ))
    };
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|_| foreign())?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let read = conn.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id),
                (SELECT user_version FROM pragma_user_version),
                (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'),
                (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'keys')",
        [],
        |r| {
            Ok((
                r.get::<_, i32>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        },
    );
    let (id, version, tables, keys) = match read {
        Ok(found) => found,
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => return Err(foreign()),
        Err(e) => return Err(explain(e, path)),
    };
    let version = version.max(0) as usize;
    let ours = id == APPLICATION_ID || (id == 0 && version > 0 && keys == 1);
    if !ours {
        return if id == 0 && version == 0 && tables == 0 {
            Ok(Found::Nothing)
        } else {
            Err(foreign())
        };
    }
    if version > MIGRATIONS.len() {
        return Err(input(anyhow::anyhow!(
            "the ledger {} has schema version {version}, newer than this mi-import knows (version {})\nhint: use the newer mi-import that wrote it",
            path.display(),
            MIGRATIONS.len()
        )));
    }
    Ok(Found::Ledger { version })
}

/// An open ledger file.
pub struct Ledger {
    conn: Connection,
}

/// A read-only connection to the ledger at `path` as it is, not brought up to date, if it is
/// a ledger of schema `since` or later; `None` if there is none there yet, or an older one.
/// For a look before the command takes the ledger's lock (and migrates it).
pub fn look_at(path: &Path, since: usize) -> Result<Option<Connection>> {
    match recognise(path)? {
        Found::Ledger { version } if version >= since => read_only(path).map(Some),
        _ => Ok(None),
    }
}

/// A read-only connection to the ledger file at `path`, waiting out a writer's lock.
fn read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| explain(e, path))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

impl Ledger {
    /// Opens (creating, owner-only) and migrates the ledger at `path`. A path that cannot hold
    /// a ledger is an input error (exit 2) naming the path, with a hint.
    pub fn open(path: &Path) -> Result<Self> {
        check_place(path).map_err(input)?;
        recognise(path)?;
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

    /// Opens an existing ledger to read it only (`status`, `report`, `backup`): nothing is
    /// written, no lock taken, and a read-only file will do. A ledger of an older schema is
    /// opened as [`Ledger::open_existing`] opens it, to be brought up to date first.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        match recognise(path)? {
            Found::Nothing => Err(input(anyhow::anyhow!(
                "no ledger at {}\nhint: run `mi-import run` first, or pass --db with the ledger's path",
                path.display()
            ))),
            Found::Ledger { version } if version < MIGRATIONS.len() => Self::open_existing(path),
            Found::Ledger { .. } => Ok(Self {
                conn: read_only(path)?,
            }),
        }
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
        // 8 MiB of page cache (SQLite's default is 2 MiB): a manifest in no key order adds
        // its rows all over the key index, and with the default cache most of those pages
        // were read back from the OS at every batch (a million rows: 5.5 to 7 s of system
        // time, 2 to 3 with this). A negative size is SQLite's way of saying KiB, not pages.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        // The same pages change in commit after commit (the key index's insertion points,
        // the newest rows), and each checkpoint copies every page changed since the last one
        // into the file, so folding less often copies them fewer times. Reading a million-row
        // manifest spread over 365 folders wrote 1.7 GB in 8.7 to 10.4 s, now 1.1 GB in 7.2
        // to 7.5 s. A command that wrote folds what is left when it is done (`checkpoint`).
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
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

/// A SQLite file some other program made: its tables are not ours to add to. (Files are
/// recognised before they are opened for writing, [`recognise`]; this also guards a file
/// that became one meanwhile.)
fn refuse_foreign_database(conn: &Connection) -> Result<()> {
    // One statement, one snapshot: another process may be creating this very ledger.
    let (id, version, tables, keys): (i32, i64, i64, i64) = conn.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id),
                (SELECT user_version FROM pragma_user_version),
                (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'),
                (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'keys')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let ours = id == APPLICATION_ID || (id == 0 && (tables == 0 || (version > 0 && keys == 1)));
    if !ours {
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
        return Err(input(anyhow::anyhow!(
            "the ledger's schema version {version} is newer than this mi-import knows (version {})\nhint: use the newer mi-import that wrote it",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)
            .with_context(|| format!("applying migration {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// How many migrations this build knows (the schema version it writes).
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}
