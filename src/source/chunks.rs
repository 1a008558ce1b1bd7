//! A manifest's rows cut into chunks by their content, so that a changed file costs its
//! changes.
//!
//! Rows are grouped into runs that end after a row whose key hashes to a chosen pattern (one
//! row in [`AVERAGE_ROWS`] on average, and at most [`MAX_ROWS`] rows a chunk): an edit, an
//! insertion or a deletion changes the chunk it falls in, and the cuts resume where they
//! were after it. Each chunk is known by the SHA-256 of its rows as parsed (bucket, key,
//! size), not of its bytes, so line endings or quoting do not matter.
//!
//! A read that reached the end of the file leaves the digests of its chunks in the ledger.
//! The next read of the same path with the same settings goes through the file in full, but
//! hands on only the rows of chunks it has not seen: every row of a seen chunk went into the
//! ledger (as a key, or left out by the same filters), and keys leave the ledger only with
//! the record itself (`forget`), so nothing is lost by not offering them again.

use sha2::{Digest, Sha256};
use std::collections::HashSet;

use super::manifest::ManifestRow;

/// One row in this many ends a chunk, on average.
const AVERAGE_ROWS: u64 = 1024;
/// No chunk holds more rows than this, whatever the keys: memory stays bounded.
const MAX_ROWS: usize = 8192;
/// Bytes of a chunk's digest kept: 128 bits.
pub const DIGEST_BYTES: usize = 16;

type Digest16 = [u8; DIGEST_BYTES];

/// Rows cut into chunks as they are read.
pub struct Chunker {
    known: HashSet<Digest16>,
    /// Digests of this read's chunks, in order, then those of the earlier read it continues.
    seen: Vec<u8>,
    rows: Vec<ManifestRow>,
    hasher: Sha256,
}

/// A chunk's rows, and whether an earlier read already saw them all.
pub struct Chunk {
    pub rows: Vec<ManifestRow>,
    pub known: bool,
}

impl Chunker {
    /// `earlier`: the digests an earlier read of this path and settings left (concatenated).
    pub fn new(earlier: &[u8]) -> Self {
        Self {
            known: earlier
                .chunks_exact(DIGEST_BYTES)
                .map(|d| d.try_into().expect("exact chunks"))
                .collect(),
            seen: Vec::new(),
            rows: Vec::new(),
            hasher: Sha256::new(),
        }
    }

    /// Takes the next row; returns the chunk it ended, if it ended one.
    pub fn push(&mut self, row: ManifestRow) -> Option<Chunk> {
        let ends = cuts_after(&row.key) || self.rows.len() + 1 >= MAX_ROWS;
        feed(&mut self.hasher, &row);
        self.rows.push(row);
        ends.then(|| self.cut())
    }

    /// The rows taken since the last cut, as a chunk of their own (the file's end).
    pub fn finish(&mut self) -> Option<Chunk> {
        (!self.rows.is_empty()).then(|| self.cut())
    }

    /// The rows taken since the last cut, unjudged: a read that stops early (a bad row) must
    /// still offer them, and leaves no record.
    pub fn take_rest(&mut self) -> Vec<ManifestRow> {
        self.hasher = Sha256::new();
        std::mem::take(&mut self.rows)
    }

    /// The digests to remember once the read reached the end: this read's chunks, and with
    /// `also` those of the earlier read whose tail this one read (the unchanged leading bytes
    /// hold the earlier chunks).
    pub fn digests(&self, also: Option<&[u8]>) -> Vec<u8> {
        let mut all = self.seen.clone();
        if let Some(also) = also {
            let mine: HashSet<&[u8]> = self.seen.chunks_exact(DIGEST_BYTES).collect();
            for d in also.chunks_exact(DIGEST_BYTES) {
                if !mine.contains(d) {
                    all.extend_from_slice(d);
                }
            }
        }
        all
    }

    fn cut(&mut self) -> Chunk {
        let digest = std::mem::take(&mut self.hasher).finalize();
        let digest: Digest16 = digest[..DIGEST_BYTES].try_into().expect("16 of 32 bytes");
        self.seen.extend_from_slice(&digest);
        Chunk {
            rows: std::mem::take(&mut self.rows),
            known: self.known.contains(&digest),
        }
    }
}

/// Whether a chunk ends after the row with this key: FNV-1a of the key, one in
/// [`AVERAGE_ROWS`].
fn cuts_after(key: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 32).is_multiple_of(AVERAGE_ROWS)
}

/// What of a row decides its key in the ledger, each field framed by its length.
fn feed(hasher: &mut Sha256, row: &ManifestRow) {
    for field in [row.bucket.as_bytes(), row.key.as_bytes()] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    match row.size {
        Some(size) => {
            hasher.update([1]);
            hasher.update(size.to_le_bytes());
        }
        None => hasher.update([0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(keys: impl IntoIterator<Item = String>) -> Vec<ManifestRow> {
        keys.into_iter()
            .enumerate()
            .map(|(i, key)| ManifestRow {
                line: i as u64 + 2,
                bucket: "media".into(),
                key,
                size: None,
            })
            .collect()
    }

    /// Cuts a whole file; returns each chunk's (rows, known) and the digests.
    fn cut(earlier: &[u8], rows: Vec<ManifestRow>) -> (Vec<(Vec<String>, bool)>, Vec<u8>) {
        let mut chunker = Chunker::new(earlier);
        let mut out = Vec::new();
        let mut take = |c: Chunk| out.push((c.rows.into_iter().map(|r| r.key).collect(), c.known));
        for row in rows {
            if let Some(c) = chunker.push(row) {
                take(c);
            }
        }
        if let Some(c) = chunker.finish() {
            take(c);
        }
        let digests = chunker.digests(None);
        (out, digests)
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("a/{i:07}.mp4")).collect()
    }

    #[test]
    fn an_edit_costs_the_chunk_it_falls_in_and_no_other() {
        let original = keys(50_000);
        let (first, digests) = cut(&[], rows(original.clone()));
        assert!(first.len() > 20, "{} chunks", first.len());
        assert!(first.iter().all(|(_, known)| !known));

        let mut edited = original.clone();
        edited[25_000] = "a/edited.mp4".into();
        edited.insert(10_000, "a/inserted.mp4".into());
        edited.remove(40_000);
        let (second, _) = cut(&digests, rows(edited.clone()));
        let offered: Vec<&String> = second
            .iter()
            .filter(|(_, known)| !known)
            .flat_map(|(rows, _)| rows)
            .collect();
        for changed in ["a/edited.mp4", "a/inserted.mp4"] {
            assert!(offered.iter().any(|k| *k == changed), "{changed} offered");
        }
        assert!(
            offered.len() < 6 * MAX_ROWS && offered.len() < edited.len() / 4,
            "three edits offered {} of {} rows again",
            offered.len(),
            edited.len()
        );
        // Every row is in some chunk, in order: none is dropped by the cutting.
        let all: Vec<String> = second.into_iter().flat_map(|(rows, _)| rows).collect();
        assert_eq!(all, edited);
    }

    #[test]
    fn the_same_rows_are_all_known_and_other_sizes_are_not() {
        let (_, digests) = cut(&[], rows(keys(10_000)));
        let (again, _) = cut(&digests, rows(keys(10_000)));
        assert!(again.iter().all(|(_, known)| *known));

        let mut sized = rows(keys(10_000));
        sized[5].size = Some(7);
        let (resized, _) = cut(&digests, sized);
        assert_eq!(resized.iter().filter(|(_, known)| !known).count(), 1);
    }

    #[test]
    fn keys_that_never_cut_still_make_bounded_chunks() {
        let never: Vec<String> = keys(100_000)
            .into_iter()
            .filter(|k| !cuts_after(k))
            .take(3 * MAX_ROWS + 5)
            .collect();
        assert_eq!(never.len(), 3 * MAX_ROWS + 5);
        let (chunks, digests) = cut(&[], rows(never));
        let sizes: Vec<usize> = chunks.iter().map(|(rows, _)| rows.len()).collect();
        assert_eq!(sizes, [MAX_ROWS, MAX_ROWS, MAX_ROWS, 5]);
        assert_eq!(digests.len(), chunks.len() * DIGEST_BYTES);
    }

    #[test]
    fn a_continued_read_remembers_the_earlier_chunks_too() {
        let mut chunker = Chunker::new(&[]);
        for row in rows(keys(3)) {
            chunker.push(row);
        }
        assert!(chunker.finish().is_some());
        let earlier = [7u8; DIGEST_BYTES];
        let all = chunker.digests(Some(&earlier));
        assert_eq!(all.len() % DIGEST_BYTES, 0);
        assert!(all.chunks_exact(DIGEST_BYTES).any(|d| d == earlier));
        // Remembered once, however often it is offered.
        let twice = chunker.digests(Some(&all));
        assert_eq!(twice.len(), all.len());
    }
}
