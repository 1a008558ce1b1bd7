//! Commands that read or change the ledger without calling MI: `status`, `report`,
//! `backup` and `forget` (a scope removed on purpose). Those that change it take the
//! ledger's lock, like a run. (`resolve`, which may ask MI, is in [`super::resolve`].)

use anyhow::{Context, Result};
use rusqlite::params;
use std::path::Path;

use crate::cli::ReportArgs;
use crate::exit::input;
use crate::ledger::{self, Ledger, Scope};

/// `status`: counts per state for each scope, and the last run.
pub fn status(db: &Path, as_json: bool) -> Result<String> {
    let ledger = Ledger::open_read_only(db)?;
    let view = crate::report::status_view(ledger.conn())?;
    Ok(if as_json {
        serde_json::to_string_pretty(&view)? + "\n"
    } else {
        crate::report::render_status(&view)
    })
}

/// `report`: one row per key to stdout or a file.
pub fn report(db: &Path, args: &ReportArgs) -> Result<u64> {
    let ledger = Ledger::open_read_only(db)?;
    let selection = crate::report::Selection {
        states: args.state.clone(),
        run: match &args.run {
            Some(run) => Some(crate::report::run_named(ledger.conn(), run)?),
            None => None,
        },
    };
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))
                .map_err(input)?;
            crate::report::write_report(
                ledger.conn(),
                args.format,
                &selection,
                crate::report::Audience::Data,
                file,
            )
        }
        None => {
            use std::io::IsTerminal;
            let audience = if std::io::stdout().is_terminal() {
                crate::report::Audience::Terminal
            } else {
                crate::report::Audience::Data
            };
            crate::report::write_report(
                ledger.conn(),
                args.format,
                &selection,
                audience,
                std::io::stdout().lock(),
            )
        }
    }
}

/// `backup FILE`: a consistent copy of the ledger, also while a run writes to it.
pub fn backup(db: &Path, to: &Path) -> Result<()> {
    let ledger = Ledger::open_read_only(db)?;
    ledger.backup_to(to)?;
    tracing::info!("{} copied to {}", db.display(), to.display());
    Ok(())
}

/// `forget`: removes every key of one (workspace, project) from the ledger. Without `yes`,
/// only says what it would remove.
pub fn forget(
    db: &Path,
    endpoint: Option<&str>,
    workspace: &str,
    project: &str,
    yes: bool,
) -> Result<String> {
    let _lock = crate::lock::acquire(db, "forget")?;
    let ledger = Ledger::open_existing(db)?;
    let scope = named_scope(ledger.conn(), db, endpoint, workspace, project)?;
    let counts = ledger::counts(ledger.conn(), Some(&scope))?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if !yes {
        return Ok(format!(
            "{scope}: {total} keys would be removed from {} (MI's assets stay as they are)\nrun again with --yes to remove them\n",
            db.display()
        ));
    }
    let tx = ledger.conn().unchecked_transaction()?;
    let removed = ledger::forget_scope(&tx, &scope)?;
    tx.commit()?;
    ledger.checkpoint()?;
    Ok(format!(
        "{scope}: {removed} keys removed from {} (MI's assets stay as they are)\n",
        db.display()
    ))
}

/// The scope a command names by workspace and project (and endpoint, needed only when the
/// ledger holds that project at several), or an input error saying what the ledger holds.
pub(super) fn named_scope(
    conn: &rusqlite::Connection,
    db: &Path,
    endpoint: Option<&str>,
    workspace: &str,
    project: &str,
) -> Result<Scope> {
    let project = crate::config::project_id(project);
    let mut found = Scope::named(conn, workspace, &project)?;
    if let Some(endpoint) = endpoint {
        let endpoint = crate::config::endpoint_name(endpoint);
        found.retain(|s| s.endpoint == endpoint || s.endpoint.is_empty());
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(input(anyhow::anyhow!(
            "the ledger {} holds nothing for workspace `{workspace}`, project `{project}`{}\nhint: `mi-import status` lists the workspaces and projects it holds",
            db.display(),
            endpoint.map(|e| format!(" at {e}")).unwrap_or_default()
        ))),
        _ => Err(input(anyhow::anyhow!(
            "the ledger {} holds workspace `{workspace}`, project `{project}` at {} endpoints ({})\nhint: pass --endpoint to say which",
            db.display(),
            found.len(),
            found
                .iter()
                .map(|s| s.endpoint.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The one bucket of the scope holding `key`, or an input error asking for `--bucket`.
pub(super) fn only_bucket_of(
    conn: &rusqlite::Connection,
    scope: &Scope,
    key: &str,
) -> Result<String> {
    let mut stmt = conn.prepare(
        "SELECT buckets.name FROM keys JOIN buckets ON buckets.id = keys.bucket
         WHERE keys.scope = ?1 AND keys.key = ?2",
    )?;
    let buckets: Vec<String> = stmt
        .query_map(params![scope.id, key], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    match buckets.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(input(anyhow::anyhow!(
            "the ledger has no key `{}` for {scope}\nhint: copy the key from `mi-import report --state uncertain`",
            crate::escape::shown(key)
        ))),
        _ => Err(input(anyhow::anyhow!(
            "`{}` is in {} buckets ({})\nhint: pass --bucket",
            crate::escape::shown(key),
            buckets.len(),
            buckets.join(", ")
        ))),
    }
}
