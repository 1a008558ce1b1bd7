//! The CSV manifest source: a stream of (bucket, key, size?) rows, one at a time, with the line
//! each came from.
//!
//! Two forms: a header form (`key` required; `bucket` or `bucketName` optional when a default
//! bucket is given; `size` optional) and the headerless `bucket,key` form of S3 Batch
//! Operations, whose keys are URL-encoded. UTF-8 with or without a BOM, LF or CRLF. Keys are
//! kept byte-exact: no trimming, no normalising.

use percent_encoding::percent_decode_str;
use std::io::{BufRead, BufReader, Read};

/// Which layout the manifest has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ManifestFormat {
    /// A header line naming the columns: `key`, optionally `bucket`/`bucketName`, `size`.
    Csv,
    /// No header; `bucket,key[,version]` with URL-encoded keys, as S3 Batch Operations writes.
    S3Batch,
    /// No header; one key per line, as it is (what `rclone lsf` or `aws s3 ls` scripts
    /// write); the bucket comes from `--bucket`.
    Keys,
}

/// One usable row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub line: u64,
    pub bucket: String,
    pub key: String,
    pub size: Option<u64>,
}

/// What is wrong with the manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}")]
    Header(String),
    #[error("line {line}: {message}")]
    Row { line: u64, message: String },
    /// The file itself could not be read on (a line longer than any row, an I/O error): the
    /// rows after it are not known.
    #[error("{0}")]
    Read(String),
}

/// The headerless S3 Batch Operations form: `bucket,key[,version]`.
const BATCH_COLUMNS: Columns = Columns {
    width: None,
    key: 1,
    bucket: Some(0),
    size: None,
};

#[derive(Debug, Clone, Copy)]
struct Columns {
    /// Fields every row must have (the header's count); `None` for the headerless form.
    width: Option<usize>,
    key: usize,
    bucket: Option<usize>,
    size: Option<usize>,
}

/// Gives every blank line a space, so the CSV parser counts it: it skips empty lines without
/// counting them, which would put every later row's line number off by one. For the quoted
/// forms it also notes each line where text follows a closing quote (`"a"b`, `"a"  `): the
/// CSV parser glues such text onto the field, which would bend the key.
pub struct BlankLines<R> {
    inner: R,
    after_newline: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
    at: usize,
    quotes: Option<QuoteScan>,
}

/// Where a CSV field's quoting is broken, read as the bytes pass.
#[derive(Debug, Default)]
struct QuoteScan {
    state: Quoting,
    /// The line being read, from 1.
    line: u64,
    /// Lines where text follows a closing quote, not yet asked for.
    broken: std::collections::BTreeSet<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    #[default]
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: the field's end, or the first of `""`.
    QuoteInQuoted,
    /// A CR after a closing quote: a line's end only if LF follows.
    CrAfterQuote,
}

impl QuoteScan {
    fn new() -> Self {
        Self {
            line: 1,
            ..Self::default()
        }
    }

    fn byte(&mut self, b: u8) {
        use Quoting::*;
        self.state = match (self.state, b) {
            (_, b'\n') if self.state != Quoted => {
                self.line += 1;
                FieldStart
            }
            (Quoted, b'\n') => {
                self.line += 1;
                Quoted
            }
            (FieldStart, b'"') => Quoted,
            (FieldStart | Unquoted, b',') => FieldStart,
            (FieldStart | Unquoted, _) => Unquoted,
            (Quoted, b'"') => QuoteInQuoted,
            (Quoted, _) => Quoted,
            (QuoteInQuoted, b'"') => Quoted,
            (QuoteInQuoted, b',') => FieldStart,
            (QuoteInQuoted, b'\r') => CrAfterQuote,
            (QuoteInQuoted | CrAfterQuote, _) => {
                self.broken.insert(self.line);
                Unquoted
            }
        };
    }
}

impl<R: Read> BlankLines<R> {
    fn new(inner: R, format: ManifestFormat) -> Self {
        Self {
            inner,
            after_newline: true,
            buf: vec![0; 64 * 1024],
            out: Vec::with_capacity(64 * 1024 + 1024),
            at: 0,
            quotes: (format != ManifestFormat::Keys).then(QuoteScan::new),
        }
    }

    /// The first line of `from..=to` where text follows a closing quote; lines before
    /// `from` are forgotten (their rows were read).
    fn quote_broken(&mut self, from: u64, to: u64) -> Option<u64> {
        let scan = self.quotes.as_mut()?;
        scan.broken = scan.broken.split_off(&from);
        scan.broken.range(from..=to).next().copied()
    }
}

impl<R: Read> Read for BlankLines<R> {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.out.len() {
            let n = self.inner.read(&mut self.buf)?;
            self.out.clear();
            self.at = 0;
            for &b in &self.buf[..n] {
                if b == b'\n' && self.after_newline {
                    self.out.push(b' ');
                }
                self.after_newline = b == b'\n';
                self.out.push(b);
            }
            if let Some(scan) = &mut self.quotes {
                for &b in &self.out {
                    scan.byte(b);
                }
            }
        }
        let n = into.len().min(self.out.len() - self.at);
        into[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Streams rows out of a manifest without holding it in memory.
pub struct ManifestReader<R: Read> {
    csv: csv::Reader<BufReader<BlankLines<R>>>,
    columns: Columns,
    format: ManifestFormat,
    default_bucket: Option<String>,
    record: csv::ByteRecord,
    /// Lines of the file before this reader's input (when continuing an earlier read).
    lines_before: u64,
    /// The input could not be read on: nothing more comes.
    broken: bool,
}

fn csv_reader<R: Read>(input: R, format: ManifestFormat, has_headers: bool) -> csv::Reader<R> {
    // `\n` ends a record; a `\r` before it is dropped in `field`. (The csv crate's own CRLF
    // handling reports every row one line early.)
    let mut builder = csv::ReaderBuilder::new();
    builder
        .terminator(csv::Terminator::Any(b'\n'))
        .has_headers(has_headers)
        .flexible(true);
    if format == ManifestFormat::Keys {
        // A whole line is one key: commas and quotes are part of it.
        builder.delimiter(b'\0').quoting(false);
    }
    builder.from_reader(input)
}

/// One key per line, no header.
const KEY_COLUMNS: Columns = Columns {
    width: None,
    key: 0,
    bucket: None,
    size: None,
};

impl<R: Read> ManifestReader<R> {
    /// Reads the header (for the CSV form) and checks that every row can name its bucket.
    pub fn new(
        input: R,
        format: ManifestFormat,
        default_bucket: Option<String>,
    ) -> Result<Self, ManifestError> {
        let mut input = BufReader::with_capacity(256 * 1024, BlankLines::new(input, format));
        skip_bom(&mut input).map_err(|e| {
            ManifestError::Header(format!(
                "cannot read: {e}\nhint: --manifest takes a file of rows (a pipe or a process substitution will do), not a folder"
            ))
        })?;
        let mut csv = csv_reader(input, format, format == ManifestFormat::Csv);
        let columns = match format {
            ManifestFormat::S3Batch => BATCH_COLUMNS,
            ManifestFormat::Keys => keys_columns(default_bucket.is_some())?,
            ManifestFormat::Csv => header_columns(&mut csv, default_bucket.is_some())?,
        };
        Ok(Self {
            csv,
            columns,
            format,
            default_bucket,
            record: csv::ByteRecord::new(),
            lines_before: 0,
            broken: false,
        })
    }

    /// Reads on from the middle of a manifest: `input` starts at a line's end, after
    /// `lines_before` lines, the first of which (the header, for the CSV form) is `first_line`.
    pub fn continuing(
        input: R,
        format: ManifestFormat,
        default_bucket: Option<String>,
        first_line: &[u8],
        lines_before: u64,
    ) -> Result<Self, ManifestError> {
        let columns = match format {
            ManifestFormat::S3Batch => BATCH_COLUMNS,
            ManifestFormat::Keys => keys_columns(default_bucket.is_some())?,
            ManifestFormat::Csv => {
                let header = first_line
                    .strip_prefix(b"\xEF\xBB\xBF")
                    .unwrap_or(first_line);
                header_columns(
                    &mut csv_reader(header, format, true),
                    default_bucket.is_some(),
                )?
            }
        };
        Ok(Self {
            csv: csv_reader(
                BufReader::with_capacity(256 * 1024, BlankLines::new(input, format)),
                format,
                false,
            ),
            columns,
            format,
            default_bucket,
            record: csv::ByteRecord::new(),
            lines_before,
            broken: false,
        })
    }

    fn row(&self, line: u64) -> Result<ManifestRow, ManifestError> {
        let bad = |message: String| ManifestError::Row { line, message };
        let last = self.record.len().saturating_sub(1);
        let field = |i: usize| -> Result<&str, ManifestError> {
            let mut bytes = self.record.get(i).unwrap_or_default();
            if i == last {
                bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            }
            std::str::from_utf8(bytes).map_err(|_| {
                bad(match self.format {
                    ManifestFormat::Keys => "the key is not valid UTF-8 (Object Storage's keys are; save the file as UTF-8)".to_owned(),
                    _ => format!(
                        "column {} is not valid UTF-8 (Object Storage's keys are; save the file as UTF-8)",
                        i + 1
                    ),
                })
            })
        };
        if let Some(width) = self.columns.width
            && self.record.len() != width
        {
            return Err(bad(format!(
                "{} fields where the header has {width}\nhint: quote keys that contain commas",
                self.record.len()
            )));
        }
        if self.format == ManifestFormat::S3Batch && self.record.len() < 2 {
            return Err(bad("expected `bucket,key` (S3 Batch Operations form)\nhint: for a CSV with a header line, use --manifest-format csv".into()));
        }
        if self.format == ManifestFormat::Keys && self.record.len() > 1 {
            return Err(bad("the line holds a NUL character, which no key may hold\nhint: keys are taken exactly; fix the line or remove it".into()));
        }
        let raw_key = field(self.columns.key)?;
        let key = match self.format {
            ManifestFormat::Csv | ManifestFormat::Keys => raw_key.to_owned(),
            ManifestFormat::S3Batch => decode_batch_key(raw_key).map_err(|m| bad(m.into()))?,
        };
        if key.is_empty() {
            return Err(bad(
                "the key is empty\nhint: remove the row or fill in its key".into(),
            ));
        }
        // A key may hold a line break, written in quotes. One that runs on to the end of the
        // file, or past the longest key Object Storage holds, is a quote never closed: the
        // rows after it would be taken for the key.
        if self.format != ManifestFormat::Keys
            && key.contains(['\n', '\r'])
            && (key.ends_with(['\n', '\r']) || key.len() > super::eligibility::MAX_KEY_BYTES)
        {
            return Err(bad("the key runs on past a line break to the end of the file (or past 1,024 bytes): a quote that is never closed\nhint: close the quote; a key that holds a line break is written in quotes, with the break inside".into()));
        }
        if let Some(problem) = super::key_problem(&key) {
            return Err(bad(format!(
                "{problem}\nhint: keys are taken exactly, never bent; fix the key or remove the row"
            )));
        }
        let bucket =
            match self.columns.bucket.map(field).transpose()?.map(str::trim) {
                Some(b) if !b.is_empty() => b.to_owned(),
                _ => match &self.default_bucket {
                    Some(b) => b.clone(),
                    None => return Err(bad(
                        "no bucket for this row\nhint: fill in the bucket column, or pass --bucket"
                            .into(),
                    )),
                },
            };
        check_bucket_name(&bucket).map_err(&bad)?;
        let size = match self.columns.size.map(field).transpose()?.map(str::trim) {
            Some(s) if !s.is_empty() => Some(s.parse::<u64>().map_err(|_| {
                bad(format!(
                    "size `{}` is not a whole number of bytes",
                    crate::escape::shown(s)
                ))
            })?),
            _ => None,
        };
        Ok(ManifestRow {
            line,
            bucket,
            key,
            size,
        })
    }
}

impl<R: Read> Iterator for ManifestReader<R> {
    type Item = Result<ManifestRow, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.broken {
            return None;
        }
        match self.csv.read_byte_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) if self.record.len() == 1 && self.record[0].trim_ascii().is_empty() => {
                self.next()
            }
            Ok(true) => {
                let line = self.record.position().map(|p| p.line()).unwrap_or(0);
                let breaks = self
                    .record
                    .as_slice()
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count();
                let last = line + breaks as u64;
                if let Some(at) = self.csv.get_mut().get_mut().quote_broken(line, last) {
                    return Some(Err(ManifestError::Row {
                        line: at + self.lines_before,
                        message: "text after a closing quote (`\"a\"b` or `\"a\" `), which would be glued onto the field\nhint: put the whole field inside the quotes, and write a quote within it as `\"\"`".into(),
                    }));
                }
                Some(self.row(line + self.lines_before))
            }
            Err(e) if e.is_io_error() => {
                self.broken = true;
                let why = match e.into_kind() {
                    csv::ErrorKind::Io(io) => io.to_string(),
                    other => format!("{other:?}"),
                };
                Some(Err(ManifestError::Read(why)))
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0) + self.lines_before;
                Some(Err(ManifestError::Row {
                    line,
                    message: e.to_string(),
                }))
            }
        }
    }
}

fn keys_columns(has_default_bucket: bool) -> Result<Columns, ManifestError> {
    if has_default_bucket {
        Ok(KEY_COLUMNS)
    } else {
        Err(ManifestError::Header(
            "a list of keys names no bucket\nhint: pass --bucket NAME with --manifest-format keys"
                .into(),
        ))
    }
}

fn skip_bom<R: Read>(input: &mut BufReader<R>) -> std::io::Result<()> {
    if input.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        input.consume(3);
    }
    Ok(())
}

fn header_columns<R: Read>(
    csv: &mut csv::Reader<R>,
    has_default_bucket: bool,
) -> Result<Columns, ManifestError> {
    let headers = csv
        .byte_headers()
        .map_err(|e| ManifestError::Header(format!("cannot read the header line: {e}")))?
        .clone();
    let names: Vec<String> = headers
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_ascii_lowercase())
        .collect();
    if names.iter().all(|n| n.is_empty()) && headers.len() <= 1 {
        return Err(ManifestError::Header(
            "the file is empty: no header line and no rows\nhint: a manifest begins with a header naming a `key` column (and `bucket`, or pass --bucket)".into(),
        ));
    }
    let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
    let Some(key) = find(&["key"]) else {
        let hint = if names.len() == 2 && !names.iter().any(|n| n == "bucket") {
            "hint: for a headerless `bucket,key` file, use --manifest-format s3-batch"
        } else if names.len() == 1 {
            "hint: for a plain list of keys, one per line, use --manifest-format keys --bucket NAME"
        } else {
            "hint: add a header line with a `key` column (and `bucket`, or pass --bucket)"
        };
        return Err(ManifestError::Header(format!(
            "line 1: no `key` column (found: {})\n{hint}",
            crate::escape::shown(&names.join(", "))
        )));
    };
    let bucket = find(&["bucket", "bucketname"]);
    if bucket.is_none() && !has_default_bucket {
        return Err(ManifestError::Header(
            "line 1: no `bucket` column and no --bucket\nhint: pass --bucket NAME for a manifest of keys in one bucket".into(),
        ));
    }
    Ok(Columns {
        width: Some(names.len()),
        key,
        bucket,
        size: find(&["size"]),
    })
}

/// S3 Batch manifests URL-encode keys; `+` stands for a space, as in their writers' encoding.
fn decode_batch_key(raw: &str) -> Result<String, &'static str> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| "the decoded key is not valid UTF-8")
}

/// S3's bucket naming rules, which also catch swapped columns early.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if (3..=63).contains(&bucket.len()) && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid bucket name (3-63 lowercase letters, digits, dots, hyphens)\nhint: are the bucket and key columns swapped?",
            crate::escape::shown(bucket)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        text: &str,
        format: ManifestFormat,
        bucket: Option<&str>,
    ) -> Vec<Result<ManifestRow, ManifestError>> {
        ManifestReader::new(text.as_bytes(), format, bucket.map(Into::into))
            .unwrap()
            .collect()
    }

    #[test]
    fn header_form_with_bom_crlf_and_odd_keys() {
        let text = "\u{feff}bucketName,key,size\r\nmedia,\"a, b.mp4\",12\r\n\r\nmedia,100% +#?.mp4,\r\nmedia,\" lead.mp4\",\r\n";
        let rows: Vec<_> = read(text, ManifestFormat::Csv, None)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows[0],
            ManifestRow {
                line: 2,
                bucket: "media".into(),
                key: "a, b.mp4".into(),
                size: Some(12)
            }
        );
        assert_eq!((rows[1].line, rows[1].key.as_str()), (4, "100% +#?.mp4"));
        assert_eq!(rows[1].size, None);
        assert_eq!(rows[2].key, " lead.mp4");
    }

    #[test]
    fn default_bucket_fills_missing_column_and_empty_cells() {
        let rows = read("key\nx.mp4\n", ManifestFormat::Csv, Some("dflt"));
        assert_eq!(rows[0].as_ref().unwrap().bucket, "dflt");
        let rows = read(
            "bucket,key\n,x.mp4\nother,y.mp4\n",
            ManifestFormat::Csv,
            Some("dflt"),
        );
        assert_eq!(rows[0].as_ref().unwrap().bucket, "dflt");
        assert_eq!(rows[1].as_ref().unwrap().bucket, "other");
    }

    #[test]
    fn an_empty_file_is_named_empty() {
        for empty in ["", "\n\n", "\u{feff}"] {
            let err = ManifestReader::new(empty.as_bytes(), ManifestFormat::Csv, None)
                .err()
                .unwrap();
            assert!(err.to_string().contains("the file is empty"), "{err}");
        }
    }

    #[test]
    fn missing_key_column_or_bucket_is_a_header_error() {
        let err = ManifestReader::new(
            "name\nx\n".as_bytes(),
            ManifestFormat::Csv,
            Some("b".into()),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("no `key` column"), "{err}");
        let err = ManifestReader::new("key\nx\n".as_bytes(), ManifestFormat::Csv, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--bucket"), "{err}");
    }

    #[test]
    fn bad_rows_name_their_line() {
        let rows = read(
            "bucket,key\nmedia,a.mp4\nmedia,b.mp4,extra\nMEDIA!,c.mp4\nmedia,\n",
            ManifestFormat::Csv,
            None,
        );
        assert!(rows[0].is_ok());
        let errs: Vec<String> = rows[1..]
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert!(errs[0].starts_with("line 3:"), "{}", errs[0]);
        assert!(
            errs[1].starts_with("line 4:") && errs[1].contains("bucket name"),
            "{}",
            errs[1]
        );
        assert!(
            errs[2].starts_with("line 5:") && errs[2].contains("empty"),
            "{}",
            errs[2]
        );
    }

    #[test]
    fn blank_lines_do_not_shift_the_line_numbers() {
        let rows = read(
            "bucket,key\n\nmedia,a.mp4\n\n\nmedia,\n",
            ManifestFormat::Csv,
            None,
        );
        assert_eq!(rows[0].as_ref().unwrap().line, 3);
        assert!(
            rows[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("line 6:")
        );
    }

    #[test]
    fn unclosed_quote_is_reported_at_its_line() {
        let rows = read(
            "bucket,key\nmedia,a.mp4\nmedia,\"broken.mp4\nmedia,c.mp4\n",
            ManifestFormat::Csv,
            None,
        );
        let err = rows
            .iter()
            .find_map(|r| r.as_ref().err())
            .unwrap()
            .to_string();
        assert!(err.starts_with("line 3:"), "{err}");
    }

    /// Text after a closing quote would be glued onto the field: the row is named, the rows
    /// around it are read as written (quotes doubled, commas and line breaks in quotes, CRLF,
    /// a quote inside an unquoted field).
    #[test]
    fn text_after_a_closing_quote_is_a_bad_row() {
        let text = "bucket,key\r\nmedia,\"a\"\"b.mp4\"x.mp4\r\nmedia,\"two\nlines.mp4\"\r\nmedia,\"ok.mp4\"  \nmedia,\"x,y.mp4\"\r\nmedia,plain\"quote.mp4\n\"media\",\"q\"\"uote.mp4\"\nmedia,\"cr.mp4\"\r,\nmedia,last.mp4";
        let rows = read(text, ManifestFormat::Csv, None);
        let got: Vec<Result<(u64, &str), String>> = rows
            .iter()
            .map(|r| match r {
                Ok(r) => Ok((r.line, r.key.as_str())),
                Err(e) => Err(e.to_string()),
            })
            .collect();
        assert_eq!(got.len(), 8, "{got:?}");
        assert!(
            got[0]
                .as_ref()
                .unwrap_err()
                .starts_with("line 2: text after a closing quote")
        );
        assert_eq!(got[1], Ok((3, "two\nlines.mp4")));
        assert!(
            got[2]
                .as_ref()
                .unwrap_err()
                .starts_with("line 5: text after"),
            "{got:?}"
        );
        assert_eq!(got[3], Ok((6, "x,y.mp4")));
        assert_eq!(got[4], Ok((7, "plain\"quote.mp4")));
        assert_eq!(got[5], Ok((8, "q\"uote.mp4")));
        assert!(
            got[6]
                .as_ref()
                .unwrap_err()
                .starts_with("line 9: text after"),
            "{got:?}"
        );
        assert_eq!(got[7], Ok((10, "last.mp4")));
    }

    /// Every character Object Storage allows is taken exactly (a TAB, a line break in quotes,
    /// any control character); only a NUL is refused, naming its line.
    #[test]
    fn keys_are_taken_exactly_but_a_nul() {
        let text = "bucket,key\nmedia,2024/01/tab\there.jpg\nmedia,\"two\nlines.mp4\"\nmedia,\"cr\rbell\u{7}.mp4\"\nmedia,nul\0x.mp4\nmedia,after.mp4\n";
        let rows = read(text, ManifestFormat::Csv, None);
        let keys: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.as_ref().ok().map(|r| r.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                Some("2024/01/tab\there.jpg"),
                Some("two\nlines.mp4"),
                Some("cr\rbell\u{7}.mp4"),
                None,
                Some("after.mp4")
            ]
        );
        let err = rows[3].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("line 6:") && err.contains("NUL"), "{err}");
        assert_eq!(
            rows[4].as_ref().unwrap().line,
            7,
            "a key's line break is a line"
        );
        // One key a line: a TAB is part of it; one CR before the LF is dropped, a second kept.
        let rows = read(
            "a\tb.mp4\r\nc.mp4\r\r\n",
            ManifestFormat::Keys,
            Some("media"),
        );
        let keys: Vec<&str> = rows
            .iter()
            .map(|r| r.as_ref().unwrap().key.as_str())
            .collect();
        assert_eq!(keys, ["a\tb.mp4", "c.mp4\r"]);
    }

    #[test]
    fn crlf_without_header_keeps_last_column_clean() {
        let rows = read(
            "media,a%20b.mp4\r\nmedia,c.mp4\r\n",
            ManifestFormat::S3Batch,
            None,
        );
        assert_eq!(rows[0].as_ref().unwrap().key, "a b.mp4");
        assert_eq!(rows[1].as_ref().unwrap().line, 2);
    }

    #[test]
    fn continuing_reads_the_tail_with_the_header_and_true_line_numbers() {
        let tail = "media,c.mp4\nmedia,\n";
        let rows: Vec<_> = ManifestReader::continuing(
            tail.as_bytes(),
            ManifestFormat::Csv,
            None,
            b"\xEF\xBB\xBFbucket,key\r\n",
            3,
        )
        .unwrap()
        .collect();
        assert_eq!(rows[0].as_ref().unwrap().line, 4);
        assert_eq!(rows[0].as_ref().unwrap().key, "c.mp4");
        assert!(
            rows[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("line 5:")
        );
    }

    #[test]
    fn a_list_of_keys_takes_each_line_whole() {
        let rows = read(
            "2024/a, \"b\".mp4\r\n\nplain.mp4\n",
            ManifestFormat::Keys,
            Some("media"),
        );
        let keys: Vec<_> = rows
            .iter()
            .map(|r| r.as_ref().unwrap().key.as_str())
            .collect();
        assert_eq!(keys, ["2024/a, \"b\".mp4", "plain.mp4"]);
        assert_eq!(rows[1].as_ref().unwrap().line, 3);
        let err = ManifestReader::new("a.mp4\n".as_bytes(), ManifestFormat::Keys, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--bucket"), "{err}");
    }

    #[test]
    fn s3_batch_form_decodes_keys() {
        let rows = read(
            "media,2024/caf%C3%A9+night%2B1.mp4\nmedia,plain.mp4,version-id\n",
            ManifestFormat::S3Batch,
            None,
        );
        assert_eq!(rows[0].as_ref().unwrap().key, "2024/café night+1.mp4");
        assert_eq!(rows[1].as_ref().unwrap().key, "plain.mp4");
        let rows = read("media\n", ManifestFormat::S3Batch, None);
        assert!(
            rows[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("bucket,key")
        );
    }
}
