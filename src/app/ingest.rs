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
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

use super::{ImportJob, Manifest};
use crate::exit::input;
use crate::ledger::runs::ManifestRead;
use crate::ledger::writer::LedgerWriter;
use crate::ledger::{self, Ingested, NewKey, Scope};
use crate::source::chunks::{Chunk, Chunker};
use crate::source::filter::Filters;
use crate::source::judged;
use crate::source::lines::WholeLines;
use crate::source::manifest::{ManifestError, ManifestReader};
use crate::source::tally::{self, Tally, Tallying};

/// Rows per ledger transaction while reading a manifest: large enough that a million-row
/// manifest needs a few hundred commits, small enough to keep memory flat.
const INGEST_BATCH: usize = 5_000;
/// Bad rows named one by one in the error (or the summary); the rest are counted.
pub(crate) const BAD_ROWS_NAMED: usize = 100;

/// The command was asked to stop (SIGINT/SIGTERM) while the manifest was opened or read:
/// what was recorded stands, nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("stopped while reading the manifest; nothing was sent")]
pub(crate) struct Stopped;

type Input = Box<dyn Read + Send>;
pub(crate) type Reader = ManifestReader<Tallying<Input>>;

pub(crate) trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A manifest opened for reading, from its start or from where an earlier read ended.
pub(crate) struct Opened {
    reader: Reader,
    tally: Arc<Mutex<Tally>>,
    /// The earlier read this one continues, if the leading bytes were unchanged.
    pub continues: Option<ManifestRead>,
    /// An earlier read of this path is remembered: most rows are likely known already.
    pub read_before: bool,
    chunker: Chunker,
    /// A file that can be read again: what was read is remembered (a pipe's is not: the next
    /// run reads it whole).
    pub rereadable: bool,
    /// An unterminated last line was left for the next run (the file grew as it was read).
    held_back: Arc<AtomicBool>,
}

/// Where a manifest's bytes come from, once opened.
pub(crate) enum Source {
    /// A regular file (or the demo's text): checked now, read once the ledger is open, from
    /// its start or on from where an earlier read ended.
    Seekable {
        input: Box<dyn ReadSeek>,
        /// The file itself, to see whether it grows while it is read.
        file: Option<std::fs::File>,
    },
    /// A pipe, FIFO, process substitution or device: it can be read only once, so it is
    /// opened and its header read here, and the rows read later go on from there.
    Stream(Box<Opened>),
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

fn cannot_open(path: &std::path::Path, e: std::io::Error) -> anyhow::Error {
    input(anyhow::Error::new(e).context(format!(
        "cannot open the manifest {}\nhint: check the path given to --manifest",
        path.display()
    )))
}

/// Opens the manifest and checks its header, before anything else. A pipe or FIFO is opened
/// (which waits for its writer) and its header read on a thread of its own, so a signal
/// ends the wait: [`Stopped`].
pub(crate) async fn prepare(job: &ImportJob, shutdown: &CancellationToken) -> Result<Source> {
    let path = match &job.manifest {
        Manifest::File(path) => path.clone(),
        Manifest::Builtin { text, .. } => {
            let source = Source::Seekable {
                input: Box::new(std::io::Cursor::new(text.as_bytes())),
                file: None,
            };
            return read_header(job, source);
        }
        Manifest::None => anyhow::bail!("no manifest to read"),
    };
    let regular = std::fs::metadata(&path)
        .map_err(|e| cannot_open(&path, e))?
        .is_file();
    if regular {
        let file = std::fs::File::open(&path).map_err(|e| cannot_open(&path, e))?;
        let watched = file.try_clone().ok();
        let source = Source::Seekable {
            input: Box::new(file),
            file: watched,
        };
        return read_header(job, source);
    }
    let job = job.clone();
    let opening = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| cannot_open(&path, e))?;
        let opened = start(&job, Box::new(file) as Input, None, None, 0)?;
        Ok::<_, anyhow::Error>(Source::Stream(Box::new(opened)))
    });
    tokio::select! {
        opened = opening => opened?,
        _ = shutdown.cancelled() => Err(Stopped.into()),
    }
}

/// A seekable manifest's header, read (a bad one is an input error) and rewound.
fn read_header(job: &ImportJob, source: Source) -> Result<Source> {
    let Source::Seekable { mut input, file } = source else {
        return Ok(source);
    };
    let name = job.manifest.name();
    ManifestReader::new(
        WholeLines::new(&mut input, None, 0),
        job.manifest_format,
        job.default_bucket.clone(),
    )
    .map_err(|e| input_error(&name, e))?;
    input
        .seek(SeekFrom::Start(0))
        .with_context(|| format!("reading {name}"))?;
    Ok(Source::Seekable { input, file })
}

fn input_error(name: &str, e: ManifestError) -> anyhow::Error {
    input(anyhow::anyhow!("{name}: {e}"))
}

/// A whole file looked over before any of its rows is recorded: the buckets its rows name.
/// With it, sending can begin while the rows are being recorded, and still nothing is sent
/// from a file with a malformed row, nor to a bucket the account check would refuse.
#[derive(Debug, Clone, Default)]
pub(crate) struct LookedOver {
    /// Every bucket a key to send names (its row passes the filters, its key is eligible).
    pub buckets: BTreeSet<String>,
    /// Such rows (some may be in the ledger already).
    pub rows: u64,
}

/// Reads the manifest through once more, recording nothing: what it holds, or `None` if any
/// row is malformed (and `--skip-bad-rows` is not given) or the file cannot be read through,
/// so that it is read the careful way (every row recorded before anything is sent, every
/// bad row named). Only a regular file or a built-in can be read twice.
pub(crate) async fn look_over(
    job: &ImportJob,
    shutdown: &CancellationToken,
) -> Result<Option<LookedOver>> {
    let input: Input = match &job.manifest {
        Manifest::File(path) => {
            Box::new(std::fs::File::open(path).map_err(|e| cannot_open(path, e))?)
        }
        Manifest::Builtin { text, .. } => Box::new(std::io::Cursor::new(text.as_bytes())),
        Manifest::None => return Ok(None),
    };
    let (format, bucket, filters) = (
        job.manifest_format,
        job.default_bucket.clone(),
        job.filters.clone(),
    );
    let skip = job.skip_bad_rows;
    let stop = shutdown.clone();
    let looking = tokio::task::spawn_blocking(move || {
        let Ok(reader) = ManifestReader::new(WholeLines::new(input, None, 0), format, bucket)
        else {
            return None;
        };
        let now = crate::clock::now();
        let mut seen = LookedOver::default();
        for (n, row) in reader.enumerate() {
            if n % 65_536 == 0 && stop.is_cancelled() {
                return None;
            }
            match row {
                Ok(row) => {
                    // Only keys that would be sent name a bucket to check.
                    if filters.verdict(&row.key, row.size, None, now).is_none()
                        && crate::source::eligibility::refusal(&row.key, row.size).is_none()
                    {
                        seen.rows += 1;
                        seen.buckets.insert(row.bucket);
                    }
                }
                Err(ManifestError::Read(_)) => return None,
                Err(_) if !skip => return None,
                Err(_) => {}
            }
        }
        Some(seen)
    });
    tokio::select! {
        seen = looking => Ok(seen?),
        _ = shutdown.cancelled() => Err(Stopped.into()),
    }
}

/// A reader over `input` (whole lines, tallied), starting after `lines_before` lines whose
/// first was `first_line`, or at the start with a header to read.
fn start(
    job: &ImportJob,
    input: Input,
    file: Option<std::fs::File>,
    continued: Option<(Tally, &[u8])>,
    lines_before: u64,
) -> Result<Opened> {
    let name = job.manifest.name();
    let rereadable = file.is_some() || matches!(job.manifest, Manifest::Builtin { .. });
    let lines = WholeLines::new(input, file, lines_before);
    let held_back = lines.held_back.clone();
    let (reader, tally) = match continued {
        Some((tally, first_line)) => {
            let (rest, tally) = Tallying::new(Box::new(lines) as Input, tally);
            let reader = ManifestReader::continuing(
                rest,
                job.manifest_format,
                job.default_bucket.clone(),
                first_line,
                lines_before,
            )
            .map_err(|e| input_error(&name, e))?;
            (reader, tally)
        }
        None => {
            let (whole, tally) = Tallying::new(Box::new(lines) as Input, Tally::default());
            let reader =
                ManifestReader::new(whole, job.manifest_format, job.default_bucket.clone())
                    .map_err(|e| input_error(&name, e))?;
            (reader, tally)
        }
    };
    Ok(Opened {
        reader,
        tally,
        continues: None,
        read_before: false,
        chunker: Chunker::new(&[]),
        rereadable,
        held_back,
    })
}

/// Opens the manifest for its rows; where `earlier` describes a read whose leading bytes are
/// unchanged, positioned right after them. A stream goes on from its header.
pub(crate) fn open(
    job: &ImportJob,
    earlier: Option<ManifestRead>,
    source: Source,
) -> Result<Opened> {
    let (mut file, watched) = match source {
        Source::Stream(opened) => return Ok(*opened),
        Source::Seekable { input, file } => (input, file),
    };
    let name = job.manifest.name();
    let chunker = Chunker::new(earlier.as_ref().map_or(&[][..], |e| &e.chunks));
    let read_before = earlier.is_some();
    if let Some(earlier) = earlier {
        let prefix = tally::hash_prefix(&mut file, earlier.bytes)
            .with_context(|| format!("reading {name}"))?;
        if let Some((hasher, first_line)) = prefix {
            let hash = format!("{:x}", sha2::Digest::finalize(hasher.clone()));
            if hash == earlier.hash {
                let tally = Tally::after(hasher, earlier.bytes, earlier.lines);
                let mut opened = start(
                    job,
                    Box::new(file),
                    watched,
                    Some((tally, &first_line)),
                    earlier.lines,
                )?;
                opened.continues = Some(earlier);
                opened.chunker = chunker;
                opened.read_before = true;
                return Ok(opened);
            }
        }
        file.seek(SeekFrom::Start(0))
            .with_context(|| format!("reading {name}"))?;
    }
    let mut opened = start(job, Box::new(file), watched, None, 0)?;
    opened.chunker = chunker;
    opened.read_before = read_before;
    Ok(opened)
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
            read_at: crate::clock::now_ms(),
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
    /// Malformed rows met on the way (the reading goes on past them).
    pub bad_rows: Vec<ManifestError>,
    /// The file could not be read on (a line longer than any row, an I/O error).
    pub broken: Option<ManifestError>,
    /// Nothing is left to read after this batch.
    pub last: bool,
}

impl Opened {
    pub fn next_batch(&mut self, filters: &Filters, now: SystemTime) -> Batch {
        let mut batch = Batch {
            keys: Vec::with_capacity(INGEST_BATCH),
            known_rows: 0,
            bad_rows: Vec::new(),
            broken: None,
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
                Err(e @ ManifestError::Read(_)) => {
                    // The rows before it are recorded, whatever their chunk.
                    let rows = self.chunker.take_rest();
                    offer(&mut batch, Chunk { rows, known: false });
                    batch.broken = Some(e);
                    batch.last = true;
                    return batch;
                }
                Err(e) => batch.bad_rows.push(e),
            }
        }
        if let Some(chunk) = self.chunker.finish() {
            offer(&mut batch, chunk);
        }
        batch.last = true;
        batch
    }

    /// An unterminated last line was left for the next run.
    pub fn held_back(&self) -> bool {
        self.held_back.load(Ordering::SeqCst)
    }
}

/// The malformed rows of a manifest: the first [`BAD_ROWS_NAMED`] in words, and how many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BadRows {
    pub named: Vec<String>,
    pub count: u64,
    /// The first row's hint, if it had one (said once, where one row is bad).
    pub first_hint: Option<String>,
}

impl BadRows {
    pub fn add(&mut self, e: &ManifestError) {
        self.count += 1;
        if self.named.len() < BAD_ROWS_NAMED {
            // One line each: the hint, if any, is said once for all.
            let text = e.to_string();
            let mut parts = text.splitn(2, "\nhint: ");
            self.named.push(parts.next().unwrap_or(&text).to_owned());
            if self.count == 1 {
                self.first_hint = parts.next().map(str::to_owned);
            }
        }
    }

    /// The error for a manifest with bad rows, ending with what to do (`then`).
    pub fn error(&self, name: &str, then: &str) -> anyhow::Error {
        let text = match (self.count, &self.first_hint) {
            (1, Some(hint)) => format!("{name}: {}\nhint: {hint}; {then}", self.named[0]),
            (1, None) => format!("{name}: {}\nhint: {then}", self.named[0]),
            _ => format!(
                "{name}: {} malformed:\n{}hint: {then}",
                crate::app::summary::count(self.count, "row is", "rows are"),
                self.listed("  ")
            ),
        };
        input(anyhow::anyhow!(text))
    }

    /// The rows in words, one a line, then how many more.
    pub fn listed(&self, indent: &str) -> String {
        let mut text: String = self
            .named
            .iter()
            .map(|row| format!("{indent}{row}\n"))
            .collect();
        let more = self.count - self.named.len() as u64;
        if more > 0 {
            text.push_str(&format!("{indent}and {more} more\n"));
        }
        text
    }
}

/// What a manifest read brought.
pub(crate) struct Read_ {
    pub counts: Ingested,
    pub record: ManifestRead,
    pub bad_rows: BadRows,
    pub rereadable: bool,
    pub held_back: bool,
}

/// Sending that goes on while a manifest looked over beforehand ([`look_over`]) is recorded.
pub(crate) struct Feeding {
    /// The buckets the account check passed: a row of another one means the file changed
    /// since it was looked over, and stops the read before that row is recorded.
    pub buckets: BTreeSet<String>,
    /// Dispatch, told of each batch of rows once it is committed.
    pub feed: Arc<crate::runner::Feed>,
    /// Called with what each batch added that dispatch had not counted already.
    pub added: Box<dyn Fn(&Ingested) + Send>,
    /// The highest key row before this command: the rows above it are this read's, and a
    /// key among them seen again is a duplicate row, never sent again for it (it may have
    /// been registered since its first row).
    pub rows_before: i64,
}

/// Reads the manifest into the ledger, to its end, naming every malformed row: any makes it
/// an input error (the other rows are recorded and sent once the file is fixed) unless
/// `--skip-bad-rows`. Without `feeding`, nothing has been sent (nor will be before this
/// ends); with it, keys are being sent as their rows are committed, and a row the look-over
/// did not see (the file changed) stops the run. Stops early on `shutdown` (wherever the read
/// is, a blocked pipe included): [`Stopped`].
pub(crate) async fn ingest(
    mut opened: Opened,
    job: &ImportJob,
    writer: &LedgerWriter,
    scope: &Scope,
    shutdown: &CancellationToken,
    feeding: Option<Feeding>,
) -> Result<Read_> {
    let name = job.manifest.name();
    let (filters, on_changed, skip) = (job.filters.clone(), job.on_changed, job.skip_bad_rows);
    let (writer, scope) = (writer.clone(), scope.clone());
    let handle = tokio::runtime::Handle::current();
    let stop = shutdown.clone();
    let sent = match feeding {
        Some(_) => "the file changed while it was read, and sending stopped",
        None => "nothing was sent",
    };
    let reading = tokio::task::spawn_blocking(move || {
        let mut total = Ingested::default();
        let mut bad = BadRows::default();
        loop {
            if stop.is_cancelled() {
                return Err(Stopped.into());
            }
            let batch = opened.next_batch(&filters, crate::clock::now());
            total.known += batch.known_rows;
            for e in &batch.bad_rows {
                bad.add(e);
            }
            let mut keys = batch.keys;
            // A key of a bucket the look-over did not see: the rows before it are recorded,
            // then the read stops.
            let unchecked = feeding.as_ref().and_then(|feeding| {
                keys.iter()
                    .position(|k| k.skip_reason.is_none() && !feeding.buckets.contains(&k.bucket))
            });
            let unchecked = unchecked.map(|at| keys.split_off(at).swap_remove(0).bucket);
            let (s, feed) = (scope.clone(), feeding.as_ref().map(|f| f.feed.clone()));
            let rows_before = feeding.as_ref().map_or(i64::MAX, |f| f.rows_before);
            let (added, counted) = handle.block_on(writer.write(move |t| {
                // Read in the transaction: whether dispatch's count of its pending keys came
                // before these rows (then they are new to it) or after (it has them).
                let counted = feed.is_some_and(|f| f.counted());
                Ok((
                    ledger::keys::insert_keys_after(t, &s, &keys, on_changed, rows_before)?,
                    counted,
                ))
            }))?;
            if let Some(feeding) = &feeding {
                if counted {
                    (feeding.added)(&added);
                }
                feeding.feed.arrived();
            }
            total += added;
            if let Some(bucket) = unchecked {
                return Err(input(anyhow::anyhow!(
                    "{name}: a row names bucket `{}`, which was not in the file when its buckets were checked: {sent}\nhint: the {} rows before it are recorded; run again to check the file as it is now",
                    crate::escape::shown(&bucket),
                    total.rows()
                )));
            }
            if let Some(e) = batch.broken {
                return Err(input(anyhow::anyhow!(
                    "{name}: {e}\nhint: {sent}; the {} rows before it are recorded and will be imported once the file is fixed",
                    total.rows()
                )));
            }
            if batch.last {
                break;
            }
        }
        if bad.count > 0 && !skip {
            return Err(bad.error(
                &name,
                &format!(
                    "{sent}; fix {} and run again (the other {} {} recorded), or run with --skip-bad-rows to import the rest",
                    crate::runner::plural(bad.count, "it", "them"),
                    crate::app::summary::count(total.rows(), "row", "rows"),
                    crate::runner::plural(total.rows(), "is", "are")
                ),
            ));
        }
        let record = opened.record(total.rows());
        Ok(Read_ {
            counts: total,
            record,
            bad_rows: bad,
            rereadable: opened.rereadable,
            held_back: opened.held_back(),
        })
    });
    tokio::select! {
        read = reading => read?,
        _ = shutdown.cancelled() => Err(Stopped.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, Limits, Target};
    use crate::ledger::{Ledger, State};
    use sha2::Digest;

    fn source(path: &std::path::Path) -> Source {
        let file = std::fs::File::open(path).unwrap();
        Source::Seekable {
            file: Some(file.try_clone().unwrap()),
            input: Box::new(file),
        }
    }

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
        let opened = open(&job, None, source(&path)).unwrap();
        // Atomically replaced between the open and the read.
        let next = dir.path().join("next.csv");
        std::fs::write(&next, "bucket,key\nmedia,a.mp4\nmedia,c.mp4\nmedia,d.mp4\n").unwrap();
        std::fs::rename(&next, &path).unwrap();

        let ledger = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(ledger.conn(), "http://mi.test", "w", "1").unwrap();
        let (writer, _thread) = LedgerWriter::spawn(ledger, None);
        let stop = CancellationToken::new();
        let done = ingest(opened, &job, &writer, &scope, &stop, None)
            .await
            .unwrap();
        let (counts, read) = (done.counts, done.record);
        assert_eq!(counts.new, 2);
        assert_eq!(read.hash, format!("{:x}", sha2::Sha256::digest(first)));
        assert_eq!((read.bytes, read.lines), (first.len() as u64, 3));

        // The next read sees other leading bytes: the whole new file is read.
        let reopened = open(&job, Some(read), source(&path)).unwrap();
        assert!(reopened.continues.is_none());
        let counts = ingest(reopened, &job, &writer, &scope, &stop, None)
            .await
            .unwrap()
            .counts;
        assert_eq!((counts.new, counts.known), (2, 1));
        let s = scope.clone();
        let n = writer
            .write(move |t| crate::ledger::keys::counts(t, Some(&s)))
            .await
            .unwrap();
        assert_eq!(crate::ledger::keys::count_in(&n, State::Pending), 4);
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
        let stop = CancellationToken::new();
        let read = ingest(
            open(&job, None, source(&path)).unwrap(),
            &job,
            &writer,
            &scope,
            &stop,
            None,
        )
        .await
        .unwrap()
        .record;
        std::fs::write(&path, "bucket,key\nmedia,a.mp4\nmedia,b.mp4\nmedia,\n").unwrap();
        let opened = open(&job, Some(read), source(&path)).unwrap();
        assert!(opened.continues.is_some());
        let err = ingest(opened, &job, &writer, &scope, &stop, None)
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("line 4:"),
            "a bad appended row names its line in the whole file: {err:#}"
        );
    }
}
