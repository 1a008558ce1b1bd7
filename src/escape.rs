//! Text from outside, made safe to show: object keys come from whoever uploaded them, and
//! messages from MI and Object Storage (or whatever answers in their place).
//!
//! A terminal obeys what it is sent: an escape sequence retitles or clears it, a carriage
//! return or line break forges a line, a bidi override reverses what follows. Every text path
//! (logs, errors, progress, summaries, the dry run, `status`, `report` on a terminal) shows
//! such characters escaped, visibly, as `git` quotes paths: `\n`, `\r`, `\t`, `\x1b`,
//! `\u{202e}`, and a backslash as `\\`, so that what is shown names one text only
//! ([`unshown`] reads it back). Data written to a file or a pipe (`report`, JSON Lines)
//! stays exact; a spreadsheet gets its own care ([`csv_cell`], read back by [`csv_uncell`]).

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

/// `text` as it may be shown in one line: unchanged if it holds nothing unsafe and no
/// backslash, otherwise with every unsafe character (line breaks included) and every
/// backslash escaped. Two texts are never shown alike: a key `e\x1b` (a backslash, then
/// `x1b`) is shown `e\\x1b`, the key with an ESC `e\x1b`.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) || c == '\\') {
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

/// The text [`shown`] shows as `seen`, if `seen` is a form it writes and holds an escape
/// (what a user copies from a terminal back to the text it stands for); `None` otherwise.
pub fn unshown(seen: &str) -> Option<String> {
    if !seen.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(seen.len());
    let mut chars = seen.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '\\' => out.push('\\'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    // Only what `shown` itself writes: one spelling for each text.
    (shown(&out) == seen).then_some(out)
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
/// a leading `'` (OWASP's advice for CSV injection). A cell that begins with `'` gets one
/// too, so that the guard is read back exactly ([`csv_uncell`]): `+a` is written `'+a`, and
/// `'+a` is written `''+a`. The JSON Lines report keeps the text exact for programs.
pub fn csv_cell(text: &str) -> Cow<'_, str> {
    if guarded(text) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

fn guarded(text: &str) -> bool {
    matches!(
        text.chars().next(),
        Some('=' | '+' | '-' | '@' | '\t' | '\r' | '\'')
    )
}

/// The text [`csv_cell`] wrote as `cell`: its guard taken off.
pub fn csv_uncell(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if guarded(rest) => rest,
        _ => cell,
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
        // A backslash is always doubled, so a key with one is not shown as another's escape.
        assert_eq!(shown("dir\\name.mp4"), "dir\\\\name.mp4");
        assert_eq!(shown("e\\x1b/clip.mp4"), "e\\\\x1b/clip.mp4");
        assert_eq!(shown("e\u{1b}/clip.mp4"), "e\\x1b/clip.mp4");
        assert_eq!(shown("a\\x1b\u{1b}"), "a\\\\x1b\\x1b");
    }

    #[test]
    fn what_is_shown_reads_back_to_the_one_text_it_shows() {
        for text in [
            "e\u{1b}/clip.mp4",
            "e\\x1b/clip.mp4",
            "dir\\name.mp4",
            "tab\there\r\n.mp4",
            "evil\u{202e}4pm\u{85}.exe",
            "a\\\\b\u{7f}",
        ] {
            assert_eq!(unshown(&shown(text)).as_deref(), Some(text), "{text:?}");
        }
        // Not a form `shown` writes: no escape, an unknown one, or a second spelling.
        assert_eq!(unshown("plain.mp4"), None);
        assert_eq!(unshown("dir\\q.mp4"), None);
        // A key typed as it is may read as another's shown form: `resolve` asks for both.
        assert_eq!(unshown("dir\\name.mp4").as_deref(), Some("dir\name.mp4"));
        assert_eq!(unshown("a\\x41"), None, "`A` is never escaped");
        assert_eq!(unshown("a\\u{1b}"), None, "ESC is written \\x1b");
        assert_eq!(unshown("cut\\"), None);
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

    #[test]
    fn the_spreadsheet_guard_reads_back_exactly() {
        for text in [
            "+a.mp4", "'+a.mp4", "''+a.mp4", "'a.mp4", "'", "a'.mp4", "=x", "\tx", "",
        ] {
            assert_eq!(csv_uncell(&csv_cell(text)), text, "{text:?}");
        }
        assert_eq!(csv_cell("'+a.mp4"), "''+a.mp4");
        assert_ne!(csv_cell("+a.mp4"), csv_cell("'+a.mp4"));
    }
}
