//! Commands that read or change the ledger without calling MI: `status`, `report`,
//! `backup`, `forget` (a scope removed on purpose) and `resolve` (an uncertain key settled by
//! hand). Those that change it take the ledger's lock, like a run.

use anyhow::{Context, Result};
use rusqlite::params;
use std::path::Path;

use crate::cli::{ReportArgs, ResolveArgs};
use crate::exit::input;
use crate::ledger::unsure::{self, Decision};
use crate::ledger::{self, Ledger, Scope};

/// `status`: counts per state for each scope, and the last run.
pub fn status(db: &Path, as_json: bool) -> Result<String> {
    let ledger = Ledger::open_existing(db)?;
    let view = crate::report::status_view(ledger.conn())?;
    Ok(if as_json {
        serde_json::to_string_pretty(&view)? + "\n"
    } else {
        crate::report::render_status(&view)
    })
}

/// `report`: one row per key to stdout or a file.
pub fn report(db: &Path, args: &ReportArgs) -> Result<u64> {
    let ledger = Ledger::open_existing(db)?;
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))
                .map_err(input)?;
            crate::report::write_report(ledger.conn(), args.format, &args.state, file)
        }
        None => crate::report::write_report(
            ledger.conn(),
            args.format,
            &args.state,
            std::io::stdout().lock(),
        ),
    }
}

/// `backup FILE`: a consistent copy of the ledger, also while a run writes to it.
pub fn backup(db: &Path, to: &Path) -> Result<()> {
    let ledger = Ledger::open_existing(db)?;
    ledger.backup_to(to)?;
    tracing::info!("{} copied to {}", db.display(), to.display());
    Ok(())
}

/// `forget`: removes every key of one (workspace, project) from the ledger. Without `yes`,
/// only says what it would remove.
pub fn forget(db: &Path, workspace: &str, project: &str, yes: bool) -> Result<String> {
    let _lock = crate::lock::acquire(db, "forget")?;
    let ledger = Ledger::open_existing(db)?;
    let Some(scope) = Scope::find(
        ledger.conn(),
        workspace,
        &crate::config::project_id(project),
    )?
    else {
        return Err(input(anyhow::anyhow!(
            "the ledger {} holds nothing for workspace `{workspace}`, project `{project}`\nhint: `mi-import status` lists the workspaces and projects it holds",
            db.display()
        )));
    };
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

/// `resolve`: gives an uncertain key an asset, or declares it not registered so the next run
/// sends it. Every decision is recorded with its time in the ledger's `events`.
pub fn resolve(db: &Path, args: &ResolveArgs) -> Result<String> {
    let _lock = crate::lock::acquire(db, "resolve")?;
    let ledger = Ledger::open_existing(db)?;
    let conn = ledger.conn();
    let project = crate::config::project_id(&args.project);
    let scope = Scope::find(conn, &args.workspace, &project)?.ok_or_else(|| {
        input(anyhow::anyhow!(
            "the ledger holds nothing for workspace `{}`, project `{project}`\nhint: `mi-import status` lists what it holds",
            args.workspace
        ))
    })?;
    let bucket = match &args.bucket {
        Some(b) => b.clone(),
        None => only_bucket_of(conn, &scope, &args.key)?,
    };
    let decision = match (args.asset_id, args.not_registered) {
        (Some(asset), false) => Decision::Asset(asset),
        (None, true) => Decision::NotRegistered,
        _ => {
            return Err(input(anyhow::anyhow!(
                "say what MI holds for the key\nhint: --asset-id ID (its asset), or --not-registered (MI has none; the next run sends it)"
            )));
        }
    };
    let said = match &decision {
        Decision::Asset(a) => format!("registered as asset {a}"),
        Decision::NotRegistered => "not registered: the next run sends it".into(),
    };
    let tx = conn.unchecked_transaction()?;
    let run = ledger::start_run(&tx, "resolve", Some(&scope), std::time::Duration::ZERO)?;
    let decided = unsure::decide(&tx, &scope, &bucket, &args.key, &decision, run)?;
    let id = decided.map_err(|refused| {
        input(anyhow::anyhow!(
            "{refused}\nhint: `mi-import report --state uncertain` lists the keys waiting for this, with their candidate assets"
        ))
    })?;
    ledger::finish_run(&tx, run, 0, &serde_json::json!({"key_id": id}).to_string())?;
    if args.dry_run {
        tx.rollback()?;
        return Ok(format!(
            "dry run: `{}` in `{bucket}` would be {said}; nothing was changed\n",
            args.key
        ));
    }
    tx.commit()?;
    Ok(format!("`{}` in `{bucket}` is now {said}\n", args.key))
}

/// The one bucket of the scope holding `key`, or an input error asking for `--bucket`.
fn only_bucket_of(conn: &rusqlite::Connection, scope: &Scope, key: &str) -> Result<String> {
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
            "the ledger has no key `{key}` for {scope}\nhint: copy the key from `mi-import report --state uncertain`"
        ))),
        _ => Err(input(anyhow::anyhow!(
            "`{key}` is in {} buckets ({})\nhint: pass --bucket",
            buckets.len(),
            buckets.join(", ")
        ))),
    }
}
