//! Text from outside, made safe to show: object keys come from whoever uploaded them, and
//! messages from MI and Object Storage (or whatever answers in their place).
//!
//! A terminal obeys what it is sent: an escape sequence retitles or clears it, a carriage
//! return or line break forges a line, a bidi override reverses what follows. Every text path
//! (logs, errors, progress, summaries, the dry run, `status`, `report` on a terminal) shows
//! such characters escaped, visibly, as `git` quotes paths: `\n`, `\r`, `\t`, `\x1b`,
//! `\u{202e}`, and a backslash as `\\` in text that needed escaping. Data written to a file
//! or a pipe (`report`, JSON Lines) stays exact; a spreadsheet gets its own care
//! ([`csv_cell`]).

use std::borrow::Cow;

/// Characters that must not reach a terminal as they are: C0 controls, DEL, C1 controls,
/// and the bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), with the
/// marks U+200E, U+200F and U+061C.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// `text` as it may be shown in one line: unchanged if it holds nothing unsafe, otherwise
/// with every unsafe character (line breaks included) and every backslash escaped.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) || c == '\\' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Text of several lines, ours, with outside text inside: line breaks stay, every other
/// unsafe character is escaped. (Outside text should already be [`shown`]; this is the last
/// guard before a terminal.)
pub fn lines(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) && c != '\n') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) && c != '\n' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A CSV cell a spreadsheet will not run: one that begins with `=`, `+`, `-`, `@`, a tab or
/// a carriage return is read as a formula by Excel, LibreOffice and Google Sheets, so it gets
/// a leading `'` (OWASP's advice for CSV injection). The JSON Lines report keeps the text
/// exact for programs.
pub fn csv_cell(text: &str) -> Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{text}")),
        _ => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_shown_escaped() {
        assert_eq!(shown("plain/key €.mp4"), "plain/key €.mp4");
        assert_eq!(
            shown("a\u{1b}]0;owned\u{7}\u{1b}[2J.mp4"),
            "a\\x1b]0;owned\\x07\\x1b[2J.mp4"
        );
        assert_eq!(shown("x\r\nerror: forged"), "x\\r\\nerror: forged");
        assert_eq!(shown("evil\u{202e}4pm.exe"), "evil\\u{202e}4pm.exe");
        assert_eq!(shown("nul\0c1\u{85}del\u{7f}"), "nul\\x00c1\\u{85}del\\x7f");
        // A backslash is doubled only where it could be taken for an escape.
        assert_eq!(shown("dir\\name.mp4"), "dir\\name.mp4");
        assert_eq!(shown("a\\x1b\u{1b}"), "a\\\\x1b\\x1b");
    }

    #[test]
    fn our_own_line_breaks_stay_and_the_rest_is_escaped() {
        assert_eq!(lines("one\ntwo\n"), "one\ntwo\n");
        assert_eq!(lines("one\u{1b}[2J\rtwo\n"), "one\\x1b[2J\\rtwo\n");
    }

    #[test]
    fn spreadsheet_formulas_are_neutralised() {
        for formula in [
            "=HYPERLINK(\"http://x\")",
            "+cmd|' /C calc'!A0",
            "-2+3",
            "@SUM(1+1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(csv_cell(formula), format!("'{formula}"));
        }
        assert_eq!(csv_cell("news/a.mp4"), "news/a.mp4");
        assert_eq!(csv_cell(""), "");
    }
}
