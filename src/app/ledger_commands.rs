//! Commands that read or change the ledger without calling MI: `status`, `report`,
//! `backup` and `forget` (a scope removed on purpose). Those that change it take the
//! ledger's lock, like a run. (`resolve`, which may ask MI, is in [`super::resolve`].)

use anyhow::{Context, Result};
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
    let counts = ledger::keys::counts(ledger.conn(), Some(&scope))?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if !yes {
        return Ok(format!(
            "{scope}: {total} keys would be removed from {} (MI's assets stay as they are)\nrun again with --yes to remove them\n",
            db.display()
        ));
    }
    let tx = ledger.conn().unchecked_transaction()?;
    let removed = ledger::scopes::forget_scope(&tx, &scope)?;
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
    let (workspace, project, mut found) = scopes_named(conn, workspace, project)?;
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
        _ => Err(several_endpoints(db, &found)),
    }
}

/// The scopes of workspace and project as a command names them: blanks trimmed, a numeric
/// project without leading zeros, as a run records them.
fn scopes_named(
    conn: &rusqlite::Connection,
    workspace: &str,
    project: &str,
) -> Result<(String, String, Vec<Scope>)> {
    let (workspace, project) = (workspace.trim(), crate::config::project_id(project));
    let found = Scope::named(conn, workspace, &project)?;
    Ok((workspace.to_owned(), project, found))
}

/// The endpoints a project is held at, as a command lacking `--endpoint` is told them.
fn several_endpoints(db: &Path, found: &[Scope]) -> anyhow::Error {
    input(anyhow::anyhow!(
        "the ledger {} holds workspace `{}`, project `{}` at {} endpoints ({})\nhint: pass --endpoint to say which",
        db.display(),
        found[0].workspace,
        found[0].project,
        found.len(),
        endpoints_of(found)
    ))
}

fn endpoints_of(found: &[Scope]) -> String {
    found
        .iter()
        .map(|s| s.endpoint.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Schema 7 on keeps each project's endpoint (migrations/0007).
const ENDPOINTS_KEPT: usize = 7;

/// The endpoint for a command that works on what the ledger holds (a run with no source,
/// `confirm`, `analyze`). Not given: the one endpoint the ledger holds workspace and project
/// at, so that a resume needs only the project; MI's default where the ledger holds the
/// project nowhere, or is not there yet; an input error naming the endpoints where it holds the
/// project at several, as `forget` and `resolve` ask. Given (`given` already validated) where
/// the ledger holds the project only elsewhere: an input error, as the command would have
/// nothing to work on there.
pub fn ledger_endpoint(
    db: &Path,
    given: Option<&str>,
    workspace: &str,
    project: &str,
) -> Result<String> {
    let default = crate::config::DEFAULT_ENDPOINT;
    let fallback = given.unwrap_or(default).to_owned();
    // Looked at as it is: the command brings an older ledger up to date under its lock.
    let Some(conn) = ledger::open::look_at(db, ENDPOINTS_KEPT)? else {
        return Ok(fallback);
    };
    let (workspace, project, found) = scopes_named(&conn, workspace, project)?;
    if found.is_empty() {
        return Ok(fallback);
    }
    let Some(given) = given else {
        let [held] = found.as_slice() else {
            return Err(several_endpoints(db, &found));
        };
        // A scope kept before endpoints were is adopted by the first endpoint that uses it.
        if held.endpoint.is_empty() || held.endpoint == default {
            return Ok(default.to_owned());
        }
        tracing::info!(
            "MI endpoint {}, where the ledger holds workspace `{workspace}`, project `{project}` (pass --endpoint for another)",
            held.endpoint
        );
        return Ok(held.endpoint.clone());
    };
    let named = crate::config::endpoint_name(given);
    if found
        .iter()
        .any(|s| s.endpoint == named || s.endpoint.is_empty())
    {
        return Ok(given.to_owned());
    }
    let instead = match found.as_slice() {
        [one] => format!(
            "leave --endpoint and MI_ENDPOINT out (or pass {})",
            one.endpoint
        ),
        _ => "pass one of them as --endpoint".to_owned(),
    };
    Err(input(anyhow::anyhow!(
        "the ledger {} holds workspace `{workspace}`, project `{project}` only at {}, not at {named}: there is nothing of it to work on there\nhint: {instead}; `mi-import run` with --manifest or --bucket sends new keys to {named}",
        db.display(),
        endpoints_of(&found),
    )))
}

/// The one bucket of the scope holding `key`, or an input error asking for `--bucket`.
pub(super) fn only_bucket_of(
    conn: &rusqlite::Connection,
    scope: &Scope,
    key: &str,
) -> Result<String> {
    let buckets = ledger::keys::buckets_holding(conn, scope, key)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_ENDPOINT;

    /// A ledger file holding workspace `ws`, project `7` at each of `endpoints`.
    fn ledger_at(endpoints: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let ledger = Ledger::open(&db).unwrap();
        for endpoint in endpoints {
            Scope::open(ledger.conn(), endpoint, "ws", "7").unwrap();
        }
        Scope::open(ledger.conn(), "http://elsewhere", "other-ws", "7").unwrap();
        (dir, db)
    }

    #[test]
    fn a_command_on_the_ledger_goes_where_the_ledger_holds_the_project() {
        let (_dir, db) = ledger_at(&["http://127.0.0.1:9000"]);
        // Named as a run names them: blanks around, leading zeros.
        assert_eq!(
            ledger_endpoint(&db, None, " ws ", "007").unwrap(),
            "http://127.0.0.1:9000"
        );
        // Nothing for the project, or no ledger yet: MI's default.
        assert_eq!(
            ledger_endpoint(&db, None, "ws", "8").unwrap(),
            DEFAULT_ENDPOINT
        );
        let none = db.with_file_name("none.db");
        assert_eq!(
            ledger_endpoint(&none, None, "ws", "7").unwrap(),
            DEFAULT_ENDPOINT
        );
        assert!(!none.exists(), "looking created no ledger");
    }

    #[test]
    fn an_endpoint_given_where_the_ledger_holds_the_project_only_elsewhere_is_refused() {
        let (_dir, db) = ledger_at(&["http://127.0.0.1:9000"]);
        assert_eq!(
            ledger_endpoint(&db, Some("http://127.0.0.1:9000/"), "ws", "7").unwrap(),
            "http://127.0.0.1:9000/"
        );
        let err = ledger_endpoint(&db, Some(DEFAULT_ENDPOINT), "ws", "7").unwrap_err();
        let said = format!("{err:#}");
        assert!(
            said.contains("only at http://127.0.0.1:9000, not at https://mi.apigw.ntruss.com"),
            "{said}"
        );
        assert!(
            said.contains(
                "hint: leave --endpoint and MI_ENDPOINT out (or pass http://127.0.0.1:9000)"
            ),
            "{said}"
        );
        assert_eq!(crate::exit::for_error(&err), crate::exit::Exit::Usage);
        // A project the ledger does not hold yet goes where it is told.
        assert_eq!(
            ledger_endpoint(&db, Some(DEFAULT_ENDPOINT), "ws", "8").unwrap(),
            DEFAULT_ENDPOINT
        );
    }

    #[test]
    fn several_endpoints_are_a_question_as_for_forget() {
        for endpoints in [
            ["http://127.0.0.1:9000", "http://127.0.0.1:9001"],
            ["http://127.0.0.1:9000", DEFAULT_ENDPOINT],
        ] {
            let (_dir, db) = ledger_at(&endpoints);
            let err = ledger_endpoint(&db, None, "ws", "7").unwrap_err();
            let said = format!("{err:#}");
            for part in [
                endpoints[0],
                endpoints[1],
                "hint: pass --endpoint to say which",
            ] {
                assert!(said.contains(part), "{part}: {said}");
            }
            assert_eq!(crate::exit::for_error(&err), crate::exit::Exit::Usage);
            let forget = named_scope(Ledger::open(&db).unwrap().conn(), &db, None, "ws", "7");
            assert_eq!(format!("{:#}", forget.unwrap_err()), said);
        }
    }

    #[test]
    fn a_ledger_of_an_older_schema_that_keeps_endpoints_is_read_as_it_is() {
        let (_dir, db) = ledger_at(&["http://127.0.0.1:9000"]);
        Ledger::open(&db)
            .unwrap()
            .conn()
            .pragma_update(None, "user_version", ENDPOINTS_KEPT)
            .unwrap();
        assert_eq!(
            ledger_endpoint(&db, None, "ws", "7").unwrap(),
            "http://127.0.0.1:9000"
        );
        let version: usize = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, ENDPOINTS_KEPT, "left for the command to migrate");
    }
}
