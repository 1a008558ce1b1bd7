//! A reader that hashes exactly the bytes it hands on, up to the last complete line, and
//! counts those lines: what a manifest read leaves behind, so the next read can tell whether
//! the file only grew (its leading bytes unchanged) and start where this one ended.
//!
//! Hashing what is read, rather than reading the file a second time to hash it, means the
//! record describes the very bytes that went into the ledger, even if the file is replaced
//! while it is read.

use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// Where a read stands: every byte up to the end of the last complete line is hashed.
#[derive(Clone, Default)]
pub struct Tally {
    hasher: Sha256,
    /// Bytes hashed: the read ends at a line's end here.
    pub bytes: u64,
    /// Lines among them.
    pub lines: u64,
    /// Bytes read after the last line end, not hashed yet.
    pending: Vec<u8>,
}

impl Tally {
    /// A tally that has already taken `prefix` (a remembered read being continued). `prefix`
    /// must end at a line's end.
    pub fn after(prefix_hasher: Sha256, bytes: u64, lines: u64) -> Self {
        Self {
            hasher: prefix_hasher,
            bytes,
            lines,
            pending: Vec::new(),
        }
    }

    fn take(&mut self, data: &[u8]) {
        match data.iter().rposition(|b| *b == b'\n') {
            Some(end) => {
                let (complete, rest) = data.split_at(end + 1);
                self.hasher.update(&self.pending);
                self.hasher.update(complete);
                self.bytes += (self.pending.len() + complete.len()) as u64;
                self.lines += complete.iter().filter(|b| **b == b'\n').count() as u64;
                self.pending.clear();
                self.pending.extend_from_slice(rest);
            }
            None => self.pending.extend_from_slice(data),
        }
    }

    /// The SHA-256 of the hashed bytes, as hex.
    pub fn hash(&self) -> String {
        format!("{:x}", self.hasher.clone().finalize())
    }
}

/// Hashes every byte a reader hands on into a shared [`Tally`].
pub struct Tallying<R> {
    inner: R,
    tally: Arc<Mutex<Tally>>,
}

impl<R: Read> Tallying<R> {
    pub fn new(inner: R, tally: Tally) -> (Self, Arc<Mutex<Tally>>) {
        let tally = Arc::new(Mutex::new(tally));
        (
            Self {
                inner,
                tally: tally.clone(),
            },
            tally,
        )
    }
}

impl<R: Read> Read for Tallying<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&buf[..n]);
        Ok(n)
    }
}

/// Reads the first `bytes` of `input` into a hasher, keeping the first line (the header).
/// Returns the hasher and the first line, or `None` if the input is shorter.
pub fn hash_prefix(input: &mut impl Read, bytes: u64) -> io::Result<Option<(Sha256, Vec<u8>)>> {
    let mut hasher = Sha256::new();
    let mut first_line = Vec::new();
    let mut have_line = false;
    let mut left = bytes;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = input.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(None);
        }
        let chunk = &buf[..n];
        if !have_line {
            match chunk.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    first_line.extend_from_slice(&chunk[..=end]);
                    have_line = true;
                }
                None => first_line.extend_from_slice(chunk),
            }
        }
        hasher.update(chunk);
        left -= n as u64;
    }
    Ok(Some((hasher, first_line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &[u8]) -> Tally {
        let (mut reader, tally) = Tallying::new(text, Tally::default());
        let mut sink = Vec::new();
        // Small reads, so lines straddle them.
        let mut buf = [0u8; 3];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.extend_from_slice(&buf[..n]);
        }
        tally.lock().unwrap().clone()
    }

    #[test]
    fn hashes_up_to_the_last_line_end_and_counts_lines() {
        let t = read_all(b"key\na.mp4\nb.mp4\nunfinished");
        assert_eq!((t.bytes, t.lines), (16, 3));
        assert_eq!(
            t.hash(),
            format!("{:x}", Sha256::digest(b"key\na.mp4\nb.mp4\n"))
        );
    }

    #[test]
    fn a_continued_tally_equals_one_read_of_the_whole() {
        let whole = b"key\na.mp4\nb.mp4\nc.mp4\n";
        let (mut prefix_reader, split) = (&whole[..], 10u64);
        let (hasher, header) = hash_prefix(&mut prefix_reader, split).unwrap().unwrap();
        assert_eq!(header, b"key\n");
        let (mut rest, tally) = Tallying::new(prefix_reader, Tally::after(hasher, split, 2));
        std::io::copy(&mut rest, &mut std::io::sink()).unwrap();
        let continued = tally.lock().unwrap().clone();
        let once = read_all(whole);
        assert_eq!((continued.bytes, continued.lines), (once.bytes, once.lines));
        assert_eq!(continued.hash(), once.hash());
        assert!(hash_prefix(&mut &b"short"[..], 10).unwrap().is_none());
    }
}
