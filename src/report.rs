//! Reading the ledger for people and scripts: `status` (counts per state, the last run) and
//! `report` (one row per key, CSV or JSON Lines). Data goes to stdout or a file; nothing here
//! changes the ledger.

use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use std::io::Write;

use crate::cli::ReportFormat;
use crate::ledger::{self, State};

/// Report columns, in order; the first four are the contract (DESIGN.md).
pub const COLUMNS: &[&str] = &[
    "bucket",
    "key",
    "state",
    "asset_id",
    "upload_status",
    "upload_result",
    "attempts",
    "http_status",
    "error_code",
    "message",
    "trace_id",
    "size",
    "first_seen_at",
    "updated_at",
    "registered_at",
    "workspace",
    "project",
];

/// One key, as the report shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReportRow {
    pub bucket: String,
    pub key: String,
    pub state: String,
    pub asset_id: Option<i64>,
    pub upload_status: Option<String>,
    pub upload_result: Option<String>,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub trace_id: Option<String>,
    pub size: Option<i64>,
    pub first_seen_at: String,
    pub updated_at: String,
    pub registered_at: Option<String>,
    pub workspace: String,
    pub project: String,
}

/// Writes every key (or those in `state`) to `out`; returns how many.
pub fn write_report(
    conn: &Connection,
    format: ReportFormat,
    state: Option<State>,
    out: impl Write,
) -> Result<u64> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM keys WHERE (?1 IS NULL OR state = ?1) ORDER BY id",
        COLUMNS.join(", ")
    ))?;
    let rows = stmt.query_map([state.map(State::as_str)], |r| {
        Ok(ReportRow {
            bucket: r.get(0)?,
            key: r.get(1)?,
            state: r.get(2)?,
            asset_id: r.get(3)?,
            upload_status: r.get(4)?,
            upload_result: r.get(5)?,
            attempts: r.get(6)?,
            http_status: r.get(7)?,
            error_code: r.get(8)?,
            message: r.get(9)?,
            trace_id: r.get(10)?,
            size: r.get(11)?,
            first_seen_at: r.get(12)?,
            updated_at: r.get(13)?,
            registered_at: r.get(14)?,
            workspace: r.get(15)?,
            project: r.get(16)?,
        })
    })?;
    let mut written = 0;
    match format {
        ReportFormat::Csv => {
            let mut csv = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            csv.write_record(COLUMNS)?;
            for row in rows {
                csv.serialize(row?)?;
                written += 1;
            }
            csv.flush()?;
        }
        ReportFormat::Jsonl => {
            let mut out = std::io::BufWriter::new(out);
            for row in rows {
                serde_json::to_writer(&mut out, &row?)?;
                out.write_all(b"\n")?;
                written += 1;
            }
            out.flush()?;
        }
    }
    Ok(written)
}

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub total: u64,
    pub states: std::collections::BTreeMap<String, u64>,
    pub awaiting_confirmation: u64,
    pub last_run: Option<LastRun>,
}

#[derive(Debug, Serialize)]
pub struct LastRun {
    pub command: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub summary: Option<serde_json::Value>,
}

pub fn status_view(conn: &Connection) -> Result<StatusView> {
    let counts = ledger::counts(conn, None).context("counting keys")?;
    let total = counts.iter().map(|(_, n)| n).sum();
    let awaiting_confirmation = counts
        .iter()
        .find(|(s, _)| *s == State::Registered)
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let states = counts
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), n))
        .collect();
    let last_run =
        ledger::last_run(conn)?.map(|(command, started_at, finished_at, exit_code, summary)| {
            LastRun {
                command,
                started_at,
                finished_at,
                exit_code,
                summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
            }
        });
    Ok(StatusView {
        total,
        states,
        awaiting_confirmation,
        last_run,
    })
}

/// The human form of `status`.
pub fn render_status(view: &StatusView) -> String {
    let mut text = format!("{} keys\n", view.total);
    for state in State::ALL {
        let n = view.states.get(state.as_str()).copied().unwrap_or(0);
        text.push_str(&format!("  {:<14}{n:>10}\n", state.as_str()));
    }
    match &view.last_run {
        None => text.push_str("no run yet\n"),
        Some(run) => {
            let end = match (&run.finished_at, run.exit_code) {
                (Some(at), Some(code)) => format!("finished {at}, exit code {code}"),
                _ => "did not finish (killed, or still running)".into(),
            };
            text.push_str(&format!(
                "last run: {} started {}, {end}\n",
                run.command, run.started_at
            ));
            let summary = run.summary.as_ref();
            let number = |name: &str| {
                summary
                    .and_then(|s| s.get(name))
                    .and_then(serde_json::Value::as_f64)
            };
            if let (Some(rate), Some(throttled)) = (number("rate_at_end"), number("throttled")) {
                text.push_str(&format!(
                    "  its rate at the end: {rate}/s ({throttled} requests answered 429 on the way)\n"
                ));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, NewKey, Scope, insert_keys};

    fn ledger_with_keys() -> Ledger {
        let l = Ledger::open_in_memory().unwrap();
        let scope = Scope {
            workspace: "ws".into(),
            project: "7".into(),
        };
        let key = |k: &str, skip: Option<&str>| NewKey {
            bucket: "media".into(),
            key: k.into(),
            size: Some(5),
            etag: None,
            last_modified: None,
            skip_reason: skip.map(Into::into),
        };
        insert_keys(
            l.conn(),
            &scope,
            &[key("a,\"b\".mp4", None), key("dir/", Some("folder marker"))],
        )
        .unwrap();
        l
    }

    #[test]
    fn csv_report_has_the_contract_columns_and_quotes_odd_keys() {
        let l = ledger_with_keys();
        let mut out = Vec::new();
        assert_eq!(
            write_report(l.conn(), ReportFormat::Csv, None, &mut out).unwrap(),
            2
        );
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("bucket,key,state,asset_id,upload_status")
        );
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("media,\"a,\"\"b\"\".mp4\",pending,,")
        );
        assert!(
            lines
                .next()
                .unwrap()
                .contains(",skipped,,,,0,,,folder marker,")
        );
    }

    #[test]
    fn jsonl_report_filters_by_state() {
        let l = ledger_with_keys();
        let mut out = Vec::new();
        write_report(
            l.conn(),
            ReportFormat::Jsonl,
            Some(State::Skipped),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let row: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(row["key"], "dir/");
        assert_eq!(row["message"], "folder marker");
        assert_eq!(row["asset_id"], serde_json::Value::Null);
    }

    #[test]
    fn status_counts_every_state() {
        let l = ledger_with_keys();
        let view = status_view(l.conn()).unwrap();
        assert_eq!(view.total, 2);
        assert_eq!(view.states["pending"], 1);
        assert_eq!(view.states["failed"], 0);
        let text = render_status(&view);
        assert!(
            text.contains("skipped") && text.contains("no run yet"),
            "{text}"
        );
    }
}
