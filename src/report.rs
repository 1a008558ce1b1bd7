//! Reading the ledger for people and scripts: `status` (counts per state for each
//! (workspace, project) the ledger holds, the last run) and `report` (one row per key, CSV or
//! JSON Lines). Data goes to stdout or a file; nothing here changes the ledger.

use anyhow::{Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use std::io::Write;

use crate::clock::ms_text;
pub use crate::ledger::keys::CandidateCounts;
use crate::ledger::keys::KeyRecord;
use crate::ledger::{self, Scope, State};

/// How a report is written: CSV for people and spreadsheets, JSON Lines for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Csv,
    Jsonl,
}

/// Report columns, in order; the first four are the contract (docs/design.md, README).
pub const COLUMNS: &[&str] = &[
    "bucket",
    "key",
    "state",
    "asset_id",
    "candidates",
    "evidence",
    "upload_status",
    "upload_result",
    "analysis_status",
    "index_id",
    "analysis_message",
    "attempts",
    "http_status",
    "error_code",
    "message",
    "trace_id",
    "size",
    "changed_at",
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
    /// For an uncertain key: MI assets that may be its own, space-separated.
    pub candidates: Option<String>,
    /// What is known of each candidate: in CSV one compact cell, in JSON Lines a list of
    /// `{asset_id, name, size, created, first_seen, why}`.
    pub evidence: Option<EvidenceCell>,
    pub upload_status: Option<String>,
    pub upload_result: Option<String>,
    pub analysis_status: Option<String>,
    pub index_id: Option<String>,
    pub analysis_message: Option<String>,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub trace_id: Option<String>,
    pub size: Option<i64>,
    pub changed_at: Option<String>,
    pub first_seen_at: String,
    pub updated_at: String,
    pub registered_at: Option<String>,
    pub workspace: String,
    pub project: String,
}

/// A candidate's evidence, as a report carries it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum EvidenceCell {
    Objects(serde_json::Value),
    Text(String),
}

impl EvidenceCell {
    /// One compact cell: `100123 "take-001.mp4" 1543459617 B, created …, first seen …: why;
    /// 100124 …`.
    fn compact(&self) -> String {
        let EvidenceCell::Objects(serde_json::Value::Array(items)) = self else {
            return match self {
                EvidenceCell::Text(t) => t.clone(),
                EvidenceCell::Objects(v) => v.to_string(),
            };
        };
        items
            .iter()
            .map(|c| {
                let text = |f: &str| c.get(f).and_then(serde_json::Value::as_str);
                let mut cell = format!("{}", c["asset_id"]);
                if let Some(name) = text("name") {
                    cell.push_str(&format!(" \"{name}\""));
                }
                if let Some(size) = c.get("size").and_then(serde_json::Value::as_u64) {
                    cell.push_str(&format!(" {size} B"));
                }
                if let Some(at) = text("created") {
                    cell.push_str(&format!(", created {at}"));
                }
                if let Some(at) = text("first_seen") {
                    cell.push_str(&format!(", first seen {at}"));
                }
                if let Some(why) = text("why") {
                    cell.push_str(&format!(": {why}"));
                }
                cell
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl ReportRow {
    /// The row with `change` applied to each of its texts.
    fn map_text(mut self, change: impl Fn(&str) -> String) -> Self {
        for text in [
            &mut self.bucket,
            &mut self.key,
            &mut self.first_seen_at,
            &mut self.updated_at,
            &mut self.workspace,
            &mut self.project,
        ] {
            *text = change(text);
        }
        for text in [
            &mut self.candidates,
            &mut self.upload_status,
            &mut self.upload_result,
            &mut self.analysis_status,
            &mut self.index_id,
            &mut self.analysis_message,
            &mut self.error_code,
            &mut self.message,
            &mut self.trace_id,
            &mut self.changed_at,
            &mut self.registered_at,
        ]
        .into_iter()
        .flatten()
        {
            *text = change(text);
        }
        if let Some(EvidenceCell::Text(text)) = &mut self.evidence {
            *text = change(text);
        }
        self
    }
}

/// Where a report goes: a file or pipe gets the ledger's text exact (CSV cells that a
/// spreadsheet would run aside); a terminal gets it escaped (`crate::escape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Data,
    Terminal,
}

/// Which keys a report holds: those in `states` (all when empty), and of them only those
/// `run` touched last, if given.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub states: Vec<State>,
    pub run: Option<i64>,
}

/// The run `report --run` names: `last` (the latest `run`) or its number.
pub fn run_named(conn: &Connection, text: &str) -> Result<i64> {
    if text == "last" {
        return ledger::runs::last_run_id(conn)?.ok_or_else(|| {
            crate::exit::input(anyhow::anyhow!(
                "the ledger records no run yet\nhint: `mi-import run` first"
            ))
        });
    }
    let id: i64 = text.parse().map_err(|_| {
        crate::exit::input(anyhow::anyhow!(
            "--run `{}` names no run\nhint: --run last, or a run's number",
            crate::escape::shown(text)
        ))
    })?;
    if !ledger::runs::run_exists(conn, id)? {
        return Err(crate::exit::input(anyhow::anyhow!(
            "the ledger records no run {id}\nhint: --run last, or the number `status --json` shows"
        )));
    }
    Ok(id)
}

/// Writes every selected key to `out`, then (for one run) the manifest rows it found
/// malformed, as rows of state `malformed`; returns how many rows.
pub fn write_report(
    conn: &Connection,
    format: ReportFormat,
    selection: &Selection,
    audience: Audience,
    out: impl Write,
) -> Result<u64> {
    let malformed = match selection.run {
        Some(run) => malformed_rows(conn, run)?,
        None => Vec::new(),
    };
    let time = |v: Option<i64>| v.map(ms_text);
    let report_row = |k: KeyRecord| ReportRow {
        bucket: k.bucket,
        key: k.key,
        state: k.state.as_str().to_owned(),
        asset_id: k.asset_id,
        candidates: k.candidates,
        evidence: k
            .evidence
            .and_then(|e| serde_json::from_str(&e).ok())
            .map(EvidenceCell::Objects),
        upload_status: k.upload_status,
        upload_result: k.upload_result,
        analysis_status: k.analysis_status,
        index_id: k.index_id,
        analysis_message: k.analysis_message,
        attempts: k.attempts,
        http_status: k.http_status,
        error_code: k.error_code,
        message: k.message,
        trace_id: k.trace_id,
        size: k.size,
        changed_at: time(k.changed_at),
        first_seen_at: ms_text(k.first_seen_at),
        updated_at: ms_text(k.updated_at),
        registered_at: time(k.registered_at),
        workspace: k.workspace,
        project: k.project,
    };
    let for_terminal = |row: ReportRow| match audience {
        Audience::Terminal => {
            let mut row = row;
            if let Some(EvidenceCell::Objects(v)) = &row.evidence {
                row.evidence = Some(EvidenceCell::Text(v.to_string()));
            }
            row.map_text(|t| crate::escape::shown(t).into_owned())
        }
        Audience::Data => row,
    };
    let mut written = 0;
    match format {
        ReportFormat::Csv => {
            let mut csv = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            csv.write_record(COLUMNS)?;
            let mut write = |mut row: ReportRow| -> Result<()> {
                row.evidence = row.evidence.map(|e| EvidenceCell::Text(e.compact()));
                let row = for_terminal(row).map_text(|t| crate::escape::csv_cell(t).into_owned());
                csv.serialize(row)?;
                written += 1;
                Ok(())
            };
            ledger::keys::each_reported(conn, &selection.states, selection.run, |k| {
                write(report_row(k))
            })?;
            malformed.into_iter().try_for_each(&mut write)?;
            csv.flush()?;
        }
        ReportFormat::Jsonl => {
            let mut out = std::io::BufWriter::new(out);
            let mut write = |row: ReportRow| -> Result<()> {
                serde_json::to_writer(&mut out, &for_terminal(row))?;
                out.write_all(b"\n")?;
                written += 1;
                Ok(())
            };
            ledger::keys::each_reported(conn, &selection.states, selection.run, |k| {
                write(report_row(k))
            })?;
            malformed.into_iter().try_for_each(&mut write)?;
            out.flush()?;
        }
    }
    Ok(written)
}

/// The manifest rows `run` found malformed (kept in its record), as report rows.
fn malformed_rows(conn: &Connection, run: i64) -> Result<Vec<ReportRow>> {
    let (summary, started) = ledger::runs::summary_of(conn, run)?;
    let record: serde_json::Value = summary
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let named = record
        .pointer("/bad_rows/named")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(named
        .iter()
        .filter_map(serde_json::Value::as_str)
        .map(|line| ReportRow {
            bucket: String::new(),
            key: String::new(),
            state: "malformed".into(),
            asset_id: None,
            candidates: None,
            evidence: None,
            upload_status: None,
            upload_result: None,
            analysis_status: None,
            index_id: None,
            analysis_message: None,
            attempts: 0,
            http_status: None,
            error_code: None,
            message: Some(line.to_owned()),
            trace_id: None,
            size: None,
            changed_at: None,
            first_seen_at: started.clone(),
            updated_at: started.clone(),
            registered_at: None,
            workspace: String::new(),
            project: String::new(),
        })
        .collect())
}

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub total: u64,
    pub states: std::collections::BTreeMap<String, u64>,
    pub awaiting_confirmation: u64,
    /// Uncertain keys MI's list could not settle: they wait for `mi-import resolve`.
    pub awaiting_resolve: u64,
    /// Uncertain keys by how many candidate assets they have.
    pub uncertain_candidates: CandidateCounts,
    /// Each (workspace, project) the ledger holds, with its own counts.
    pub scopes: Vec<ScopeView>,
    /// Analyses per status (MI's words; REQUESTING, UNSURE and REQUEST_FAILED are the
    /// ledger's own).
    pub analyses: std::collections::BTreeMap<String, u64>,
    pub last_run: Option<LastRun>,
}

#[derive(Debug, Serialize)]
pub struct ScopeView {
    pub workspace: String,
    pub project: String,
    pub total: u64,
    pub states: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct LastRun {
    pub command: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub summary: Option<serde_json::Value>,
}

fn state_map(counts: &[(State, u64)]) -> std::collections::BTreeMap<String, u64> {
    counts
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), *n))
        .collect()
}

pub fn status_view(conn: &Connection) -> Result<StatusView> {
    let counts = ledger::keys::counts(conn, None).context("counting keys")?;
    let total = counts.iter().map(|(_, n)| n).sum();
    let mut scopes = Vec::new();
    for scope in Scope::all(conn)? {
        let counts = ledger::keys::counts(conn, Some(&scope))?;
        scopes.push(ScopeView {
            total: counts.iter().map(|(_, n)| n).sum(),
            states: state_map(&counts),
            workspace: scope.workspace,
            project: scope.project,
        });
    }
    let uncertain_candidates = ledger::keys::uncertain_by_candidates(conn)?;
    let awaiting_resolve = ledger::keys::awaiting_resolve(conn)?;
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
        analyses: ledger::analyses::analysis_counts(conn, None)?,
        total,
        awaiting_confirmation: ledger::keys::count_in(&counts, State::Registered),
        awaiting_resolve,
        uncertain_candidates,
        states: state_map(&counts),
        scopes,
        last_run,
    })
}

fn render_states(
    text: &mut String,
    states: &std::collections::BTreeMap<String, u64>,
    indent: &str,
) {
    for state in State::ALL {
        let n = states.get(state.as_str()).copied().unwrap_or(0);
        text.push_str(&format!("{indent}{:<14}{n:>10}\n", state.as_str()));
    }
}

/// The human form of `status`.
pub fn render_status(view: &StatusView) -> String {
    let keys = |n: u64| format!("{n} {}", if n == 1 { "key" } else { "keys" });
    let mut text = format!("{}\n", keys(view.total));
    if view.scopes.len() > 1 {
        for scope in &view.scopes {
            text.push_str(&format!(
                "workspace {}, project {}: {}\n",
                scope.workspace,
                scope.project,
                keys(scope.total)
            ));
            render_states(&mut text, &scope.states, "  ");
        }
    } else {
        if let Some(scope) = view.scopes.first() {
            text.push_str(&format!(
                "workspace {}, project {}\n",
                scope.workspace, scope.project
            ));
        }
        render_states(&mut text, &view.states, "  ");
    }
    if !view.analyses.is_empty() {
        let said: Vec<String> = view
            .analyses
            .iter()
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        text.push_str(&format!("analyses: {}\n", said.join(", ")));
    }
    let c = &view.uncertain_candidates;
    if c.one + c.several + c.none > 0 {
        text.push_str(&format!(
            "uncertain keys: {} with one candidate, {} with several, {} with none (the next run looks again for those)\n",
            c.one, c.several, c.none
        ));
    }
    if view.awaiting_resolve > 0 {
        text.push_str(&format!(
            "{} uncertain {} candidate assets MI's list could not tell apart: see `mi-import report --state uncertain` (its evidence column), then `mi-import resolve` (`--from FILE` for many, `--sole-candidates` for those with one)\n",
            view.awaiting_resolve,
            if view.awaiting_resolve == 1 { "key has" } else { "keys have" }
        ));
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
            let number = |at: &str| {
                summary
                    .and_then(|s| s.pointer(at))
                    .and_then(serde_json::Value::as_f64)
            };
            if let (Some(rate), Some(throttled)) =
                (number("/rate_at_end"), number("/this_run/throttled"))
            {
                text.push_str(&format!(
                    "  its rate at the end: {rate}/s ({throttled} {} answered 429 on the way)\n",
                    if throttled == 1.0 {
                        "request"
                    } else {
                        "requests"
                    }
                ));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::keys::insert_keys;
    use crate::ledger::{Ledger, NewKey, OnChanged};

    fn ledger_with_keys() -> Ledger {
        let l = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(l.conn(), "http://mi.test", "ws", "7").unwrap();
        let key = |k: &str, skip: Option<&str>| NewKey {
            size: Some(5),
            skip_reason: skip.map(Into::into),
            ..NewKey::new("media", k)
        };
        insert_keys(
            l.conn(),
            &scope,
            &[key("a,\"b\".mp4", None), key("dir/", Some("folder marker"))],
            OnChanged::Report,
        )
        .unwrap();
        l
    }

    #[test]
    fn csv_report_has_the_contract_columns_and_quotes_odd_keys() {
        let l = ledger_with_keys();
        let mut out = Vec::new();
        assert_eq!(
            write_report(
                l.conn(),
                ReportFormat::Csv,
                &Selection::default(),
                Audience::Data,
                &mut out
            )
            .unwrap(),
            2
        );
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("bucket,key,state,asset_id,candidates,evidence,upload_status")
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
                .contains(",skipped,,,,,,,,,0,,,folder marker,")
        );
    }

    #[test]
    fn jsonl_report_filters_by_states() {
        let l = ledger_with_keys();
        let mut out = Vec::new();
        write_report(
            l.conn(),
            ReportFormat::Jsonl,
            &Selection {
                states: vec![State::Skipped],
                run: None,
            },
            Audience::Data,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let row: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(row["key"], "dir/");
        assert_eq!(row["message"], "folder marker");
        assert_eq!(row["asset_id"], serde_json::Value::Null);
        let mut both = Vec::new();
        let n = write_report(
            l.conn(),
            ReportFormat::Jsonl,
            &Selection {
                states: vec![State::Skipped, State::Pending],
                run: None,
            },
            Audience::Data,
            &mut both,
        )
        .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn status_counts_every_state_of_every_scope() {
        let l = ledger_with_keys();
        let other = Scope::open(l.conn(), "http://mi.test", "ws", "8").unwrap();
        insert_keys(
            l.conn(),
            &other,
            &[NewKey::new("media", "z.mp4")],
            OnChanged::Report,
        )
        .unwrap();
        let view = status_view(l.conn()).unwrap();
        assert_eq!(view.total, 3);
        assert_eq!(view.states["pending"], 2);
        assert_eq!(view.states["failed"], 0);
        assert_eq!(view.scopes.len(), 2);
        let text = render_status(&view);
        assert!(
            text.contains("workspace ws, project 8: 1 key\n") && text.contains("no run yet"),
            "{text}"
        );
    }
}
