//! Reading a manifest into the ledger, and only as much of it as is new.
//!
//! A manifest read in full is remembered by path and settings: how many leading bytes were
//! read (up to the last line end), their SHA-256, and the lines they held. The next read of
//! the same path hashes that many leading bytes again; if they are unchanged, only what
//! follows them is read (a nightly export that grows by appending costs its new rows, not
//! the whole file). Anything else is a changed file, read in full (known keys are skipped by
//! the ledger). The hash is taken of the bytes as they are read, so the record describes
//! exactly what went into the ledger.

use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{ImportJob, Manifest};
use crate::exit::input;
use crate::ledger::runs::ManifestRead;
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Ingested, NewKey, Scope};
use crate::source::filter::Filters;
use crate::source::judged;
use crate::source::manifest::{ManifestError, ManifestReader};
use crate::source::tally::{self, Tally, Tallying};

/// Rows per ledger transaction while reading a manifest: large enough that a million-row
/// manifest needs a few hundred commits, small enough to keep memory flat.
const INGEST_BATCH: usize = 5_000;

type Input = Box<dyn Read + Send>;
pub(crate) type Reader = ManifestReader<Tallying<Input>>;

trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A manifest opened for reading, from its start or from where an earlier read ended.
pub(crate) struct Opened {
    pub reader: Reader,
    tally: Arc<Mutex<Tally>>,
    /// The earlier read this one continues, if the leading bytes were unchanged.
    pub continues: Option<ManifestRead>,
}

/// The settings that shape a manifest's rows: the same bytes read with other settings are
/// another reading.
pub(crate) fn settings(job: &ImportJob) -> String {
    format!(
        "mi-import {}|{:?}|{:?}|{}",
        env!("CARGO_PKG_VERSION"),
        job.manifest_format,
        job.default_bucket,
        job.filters.fingerprint()
    )
}

/// The manifest's identity in the ledger: its full path (or a built-in's name).
pub(crate) fn path_key(manifest: &Manifest) -> Option<String> {
    match manifest {
        Manifest::None => None,
        Manifest::File(path) => Some(
            std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string(),
        ),
        Manifest::Builtin { name, .. } => Some(format!("builtin:{name}")),
    }
}

fn open_input(manifest: &Manifest) -> Result<Box<dyn ReadSeek>> {
    Ok(match manifest {
        Manifest::File(path) => Box::new(
            std::fs::File::open(path)
                .with_context(|| {
                    format!(
                        "cannot open the manifest {}\nhint: check the path given to --manifest",
                        path.display()
                    )
                })
                .map_err(input)?,
        ),
        Manifest::Builtin { text, .. } => Box::new(std::io::Cursor::new(text.as_bytes())),
        Manifest::None => Box::new(std::io::Cursor::new(&b""[..])),
    })
}

/// Checks that the manifest can be opened and has a usable header, before anything else.
pub(crate) fn check(job: &ImportJob) -> Result<()> {
    open(job, None).map(drop)
}

/// Opens the manifest; where `earlier` describes a read whose leading bytes are unchanged,
/// positioned right after them.
pub(crate) fn open(job: &ImportJob, earlier: Option<ManifestRead>) -> Result<Opened> {
    let name = job.manifest.name();
    let mut file = open_input(&job.manifest)?;
    let bad = |e: ManifestError| input(anyhow::anyhow!("{name}: {e}"));
    if let Some(earlier) = earlier {
        let prefix = tally::hash_prefix(&mut file, earlier.bytes)
            .with_context(|| format!("reading {name}"))?;
        if let Some((hasher, first_line)) = prefix {
            let hash = format!("{:x}", sha2::Digest::finalize(hasher.clone()));
            if hash == earlier.hash {
                let (rest, tally) = Tallying::new(
                    Box::new(file) as Input,
                    Tally::after(hasher, earlier.bytes, earlier.lines),
                );
                let reader = ManifestReader::continuing(
                    rest,
                    job.manifest_format,
                    job.default_bucket.clone(),
                    &first_line,
                    earlier.lines,
                )
                .map_err(bad)?;
                return Ok(Opened {
                    reader,
                    tally,
                    continues: Some(earlier),
                });
            }
        }
        file.seek(SeekFrom::Start(0))
            .with_context(|| format!("reading {name}"))?;
    }
    let (whole, tally) = Tallying::new(Box::new(file) as Input, Tally::default());
    let reader =
        ManifestReader::new(whole, job.manifest_format, job.default_bucket.clone()).map_err(bad)?;
    Ok(Opened {
        reader,
        tally,
        continues: None,
    })
}

impl Opened {
    /// What to remember of this read once it reached the end: `rows` data rows in total.
    pub fn record(&self, rows_read: u64) -> ManifestRead {
        let tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        ManifestRead {
            bytes: tally.bytes,
            hash: tally.hash(),
            lines: tally.lines,
            rows: self.continues.as_ref().map_or(0, |c| c.rows) + rows_read,
            read_at: ledger::now_ms(),
        }
    }
}

/// The next rows of a manifest for the ledger.
pub(crate) struct Batch {
    /// Up to [`INGEST_BATCH`] rows that pass the filters, judged.
    pub keys: Vec<NewKey>,
    /// The malformed row that ended the batch early.
    pub bad_row: Option<ManifestError>,
    /// Nothing is left to read after this batch.
    pub last: bool,
}

pub(crate) fn next_batch(reader: &mut Reader, filters: &Filters, now: SystemTime) -> Batch {
    let mut keys = Vec::with_capacity(INGEST_BATCH);
    for row in reader.by_ref() {
        match row {
            Ok(row) if filters.verdict(&row.key, row.size, None, now).is_some() => continue,
            Ok(row) => keys.push(judged(row.bucket, row.key, row.size)),
            Err(e) => {
                return Batch {
                    keys,
                    bad_row: Some(e),
                    last: true,
                };
            }
        }
        if keys.len() == INGEST_BATCH {
            return Batch {
                keys,
                bad_row: None,
                last: false,
            };
        }
    }
    Batch {
        keys,
        bad_row: None,
        last: true,
    }
}

/// Reads the manifest into the ledger before anything is sent, so a bad row stops the run
/// with nothing sent; rows before it stay recorded. Returns the counts and what to remember
/// of the read.
pub(crate) async fn ingest(
    mut opened: Opened,
    job: &ImportJob,
    writer: &LedgerWriter,
    scope: &Scope,
) -> Result<(Ingested, ManifestRead)> {
    let name = job.manifest.name();
    let (filters, on_changed) = (job.filters.clone(), job.on_changed);
    let (writer, scope) = (writer.clone(), scope.clone());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut total = Ingested::default();
        loop {
            let Batch {
                keys,
                bad_row,
                last,
            } = next_batch(&mut opened.reader, &filters, SystemTime::now());
            let s = scope.clone();
            total += handle
                .block_on(writer.write(move |t| ledger::insert_keys(t, &s, &keys, on_changed)))?;
            if let Some(e) = bad_row {
                return Err(input(anyhow::anyhow!(
                    "{name}: {e}\nnothing was sent; the {} rows before it are recorded and will be imported once the file is fixed",
                    total.rows()
                )));
            }
            if last {
                break;
            }
        }
        let record = opened.record(total.rows());
        Ok((total, record))
    })
    .await?
}
