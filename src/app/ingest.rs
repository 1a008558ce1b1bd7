//! Reading a manifest into the ledger, and only as much of it as is new.
//!
//! A manifest read in full is remembered by path and settings: how many leading bytes were
//! read (up to the last line end), their SHA-256, and the lines they held. The next read of
//! the same path hashes that many leading bytes again; if they are unchanged, only what
//! follows them is read (a nightly export that grows by appending costs its new rows, not
//! the whole file). Anything else is a changed file, read in full; its rows are cut into
//! chunks by content ([`crate::source::chunks`]) and only the chunks the last read did not
//! hold are offered to the ledger, so an edit costs its chunk, not a million look-ups. The
//! hash is taken of the bytes as they are read, so the record describes exactly what went
//! into the ledger.

use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{ImportJob, Manifest};
use crate::exit::input;
use crate::ledger::runs::ManifestRead;
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Ingested, NewKey, Scope};
use crate::source::chunks::{Chunk, Chunker};
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
    reader: Reader,
    tally: Arc<Mutex<Tally>>,
    /// The earlier read this one continues, if the leading bytes were unchanged.
    pub continues: Option<ManifestRead>,
    chunker: Chunker,
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
    let chunker = Chunker::new(earlier.as_ref().map_or(&[][..], |e| &e.chunks));
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
                    chunker,
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
        chunker,
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
            chunks: self
                .chunker
                .digests(self.continues.as_ref().map(|c| &c.chunks[..])),
        }
    }
}

/// The next rows of a manifest for the ledger.
pub(crate) struct Batch {
    /// At least [`INGEST_BATCH`] rows that pass the filters, judged (fewer at the end).
    pub keys: Vec<NewKey>,
    /// Rows passed over: their chunk was read before, and every row of it is in the ledger.
    pub known_rows: u64,
    /// The malformed row that ended the batch early.
    pub bad_row: Option<ManifestError>,
    /// Nothing is left to read after this batch.
    pub last: bool,
}

impl Opened {
    pub fn next_batch(&mut self, filters: &Filters, now: SystemTime) -> Batch {
        let mut batch = Batch {
            keys: Vec::with_capacity(INGEST_BATCH),
            known_rows: 0,
            bad_row: None,
            last: false,
        };
        let offer = |batch: &mut Batch, chunk: Chunk| {
            if chunk.known {
                batch.known_rows += chunk.rows.len() as u64;
                return;
            }
            for row in chunk.rows {
                if filters.verdict(&row.key, row.size, None, now).is_none() {
                    batch.keys.push(judged(row.bucket, row.key, row.size));
                }
            }
        };
        for row in self.reader.by_ref() {
            match row {
                Ok(row) => {
                    if let Some(chunk) = self.chunker.push(row) {
                        offer(&mut batch, chunk);
                        if batch.keys.len() >= INGEST_BATCH {
                            return batch;
                        }
                    }
                }
                Err(e) => {
                    // The rows before a bad one are recorded, whatever their chunk.
                    let rows = self.chunker.take_rest();
                    offer(&mut batch, Chunk { rows, known: false });
                    batch.bad_row = Some(e);
                    batch.last = true;
                    return batch;
                }
            }
        }
        if let Some(chunk) = self.chunker.finish() {
            offer(&mut batch, chunk);
        }
        batch.last = true;
        batch
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
                known_rows,
                bad_row,
                last,
            } = opened.next_batch(&filters, SystemTime::now());
            total.known += known_rows;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, Limits, Target};
    use crate::ledger::{Ledger, State};
    use sha2::Digest;

    fn job(path: &std::path::Path) -> ImportJob {
        let target = Target::new("http://127.0.0.1:1", Some("w".into()), Some("1".into())).unwrap();
        let limits = Limits::new(0.0, 1, 1, std::time::Duration::from_secs(1)).unwrap();
        ImportJob {
            manifest: Manifest::File(path.to_path_buf()),
            ..ImportJob::new(
                path.with_extension("db"),
                target,
                Credentials::new("a".into(), "s".into()),
                limits,
            )
        }
    }

    /// The record of a read describes the bytes that were read, even if the file is replaced
    /// while it is being read: the replacement is read in full next time.
    #[tokio::test]
    async fn the_record_is_of_the_bytes_read_even_if_the_file_is_replaced_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        let first = "bucket,key\nmedia,a.mp4\nmedia,b.mp4\n";
        std::fs::write(&path, first).unwrap();
        let job = job(&path);
        let opened = open(&job, None).unwrap();
        // Atomically replaced between the open and the read.
        let next = dir.path().join("next.csv");
        std::fs::write(&next, "bucket,key\nmedia,a.mp4\nmedia,c.mp4\nmedia,d.mp4\n").unwrap();
        std::fs::rename(&next, &path).unwrap();

        let ledger = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(ledger.conn(), "http://mi.test", "w", "1").unwrap();
        let (writer, _thread) = LedgerWriter::spawn(ledger, None);
        let (counts, read) = ingest(opened, &job, &writer, &scope).await.unwrap();
        assert_eq!(counts.new, 2);
        assert_eq!(read.hash, format!("{:x}", sha2::Sha256::digest(first)));
        assert_eq!((read.bytes, read.lines), (first.len() as u64, 3));

        // The next read sees other leading bytes: the whole new file is read.
        let reopened = open(&job, Some(read)).unwrap();
        assert!(reopened.continues.is_none());
        let (counts, _) = ingest(reopened, &job, &writer, &scope).await.unwrap();
        assert_eq!((counts.new, counts.known), (2, 1));
        let s = scope.clone();
        let n = writer
            .write(move |t| crate::ledger::counts(t, Some(&s)))
            .await
            .unwrap();
        assert_eq!(crate::ledger::count_in(&n, State::Pending), 4);
    }

    #[tokio::test]
    async fn an_appended_file_is_read_from_where_the_last_read_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(&path, "bucket,key\nmedia,a.mp4\n").unwrap();
        let job = job(&path);
        let ledger = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(ledger.conn(), "http://mi.test", "w", "1").unwrap();
        let (writer, _thread) = LedgerWriter::spawn(ledger, None);
        let (_, read) = ingest(open(&job, None).unwrap(), &job, &writer, &scope)
            .await
            .unwrap();
        std::fs::write(&path, "bucket,key\nmedia,a.mp4\nmedia,b.mp4\nmedia,\n").unwrap();
        let opened = open(&job, Some(read)).unwrap();
        assert!(opened.continues.is_some());
        let err = ingest(opened, &job, &writer, &scope).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("line 4:"),
            "a bad appended row names its line in the whole file: {err:#}"
        );
    }
}
