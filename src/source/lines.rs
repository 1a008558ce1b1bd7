//! A manifest read as whole lines: what the CSV parser beneath it is given ends at a line's
//! end, a line longer than any row can be is an error naming it (memory stays flat, even on
//! `/dev/zero`), and an unterminated last line is held back while the file is still growing
//! (an export being written): the next run reads it once it is whole.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The longest line a manifest may have. A row is at most a bucket name (63 bytes), a key
/// (1,024 bytes, three times that URL-encoded, twice with every quote doubled) and a size:
/// well under 8 KiB; 64 KiB is far above any real row.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Hands on whole lines of `inner`; see the module doc.
pub struct WholeLines<R> {
    inner: R,
    /// The file and its length when reading began, to see whether it grew while it was read
    /// (`None` for a pipe: its end is its writer's word).
    file: Option<(File, u64)>,
    /// Bytes read from `inner` so far.
    read: u64,
    /// Lines handed on so far.
    lines: u64,
    /// Bytes of the line still being read, not handed on yet.
    held: Vec<u8>,
    /// Bytes ready to hand on (whole lines).
    ready: Vec<u8>,
    at: usize,
    ended: bool,
    /// Set when an unterminated last line was held back because the file grew.
    pub held_back: Arc<AtomicBool>,
}

impl<R: Read> WholeLines<R> {
    /// `inner` begins after `lines_before` lines of the manifest (a read continued from an
    /// earlier one's end), so line numbers name the file's own lines.
    pub fn new(inner: R, file: Option<File>, lines_before: u64) -> Self {
        let file = file.map(|f| {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            (f, len)
        });
        Self {
            inner,
            file,
            read: 0,
            lines: lines_before,
            held: Vec::new(),
            ready: Vec::new(),
            at: 0,
            ended: false,
            held_back: Arc::default(),
        }
    }

    /// Whether the file's length changed since reading began.
    fn grew(&self) -> bool {
        self.file
            .as_ref()
            .is_some_and(|(f, len)| f.metadata().map_or(true, |m| m.len() != *len))
    }

    fn too_long(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "line {} is longer than {} KiB, more than any row can be (is this a manifest?)",
                self.lines + 1,
                MAX_LINE_BYTES / 1024
            ),
        )
    }

    /// Reads more of `inner` into `ready` (whole lines only) until there is something to hand
    /// on or the input ended.
    fn refill(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        self.ready.clear();
        self.at = 0;
        while self.ready.is_empty() && !self.ended {
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                self.ended = true;
                if !self.held.is_empty() {
                    if self.grew() {
                        // Still being written: the next run reads it whole.
                        self.held_back.store(true, Ordering::SeqCst);
                        self.held.clear();
                    } else {
                        self.ready.append(&mut self.held);
                    }
                }
                break;
            }
            self.read += n as u64;
            let data = &buf[..n];
            match data.iter().rposition(|b| *b == b'\n') {
                Some(end) => {
                    let (whole, rest) = data.split_at(end + 1);
                    // The held part and the first line of `data` form one line.
                    let first_end = whole.iter().position(|b| *b == b'\n').unwrap_or(0);
                    if self.held.len() + first_end > MAX_LINE_BYTES {
                        return Err(self.too_long());
                    }
                    let longest = whole
                        .split(|b| *b == b'\n')
                        .skip(1)
                        .map(<[u8]>::len)
                        .max()
                        .unwrap_or(0);
                    if longest > MAX_LINE_BYTES {
                        self.lines += 1;
                        return Err(self.too_long());
                    }
                    self.ready.append(&mut self.held);
                    self.ready.extend_from_slice(whole);
                    self.lines += whole.iter().filter(|b| **b == b'\n').count() as u64;
                    self.held.extend_from_slice(rest);
                }
                None => self.held.extend_from_slice(data),
            }
            if self.held.len() > MAX_LINE_BYTES {
                return Err(self.too_long());
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for WholeLines<R> {
    fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
        if self.at == self.ready.len() {
            self.refill()?;
        }
        let n = into.len().min(self.ready.len() - self.at);
        into[..n].copy_from_slice(&self.ready[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        WholeLines::new(input, None, 0).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn whole_lines_pass_and_a_pipes_last_line_is_taken() {
        assert_eq!(all(b"a\nb\nc").unwrap(), b"a\nb\nc");
        assert_eq!(all(b"").unwrap(), b"");
    }

    #[test]
    fn a_line_longer_than_any_row_is_an_error_naming_it() {
        let mut text = b"key\nok.mp4\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        let err = all(&text).unwrap_err();
        assert!(err.to_string().starts_with("line 3 is longer"), "{err}");
        // Endless zeros: stops after a line's worth, not at the end of memory.
        let err = all(&vec![0u8; 4 * MAX_LINE_BYTES]).unwrap_err();
        assert!(err.to_string().starts_with("line 1 is longer"), "{err}");
    }

    #[test]
    fn an_unterminated_last_line_waits_while_the_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(&path, "key\na.mp4\nhalf-writ").unwrap();
        let reader = File::open(&path).unwrap();
        let mut lines = WholeLines::new(reader.try_clone().unwrap(), Some(reader), 0);
        // The writer goes on while the file is read, and has not ended the line yet.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"ten")
            .unwrap();
        let mut out = Vec::new();
        lines.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"key\na.mp4\n");
        assert!(lines.held_back.load(Ordering::SeqCst));
        // A file that did not change while it was read keeps its unterminated last line.
        let reader = File::open(&path).unwrap();
        let mut lines = WholeLines::new(reader.try_clone().unwrap(), Some(reader), 0);
        let mut out = Vec::new();
        lines.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"key\na.mp4\nhalf-written");
        assert!(!lines.held_back.load(Ordering::SeqCst));
    }

    use std::io::Write;
}
