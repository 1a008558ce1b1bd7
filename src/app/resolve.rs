//! `resolve`: settling uncertain keys by hand, one (`--key`), from a file (`--from`), or every
//! key with a sole candidate (`--sole-candidates`).
//!
//! The rule is the same for each key: it may be given an asset only where the evidence
//! offers one, that is one of its candidates, or an asset MI shows in the project (one look-up
//! each, through a rate limiter) under a name the key can have; never an asset another key
//! of the scope has or had. It may be declared not registered (the next run sends it). A key
//! settled by hand can be settled again while it is not confirmed. Every row is checked
//! before anything changes, and then all are applied in one transaction, or none.

use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use tokio_util::sync::CancellationToken;

use crate::api::{Answer, ApiError, AssetDetails, Call, MiClient};
use crate::cli::{Global, ResolveArgs};
use crate::config::{Credentials, Target};
use crate::escape::shown;
use crate::exit::input;
use crate::ledger::unsure::{self, Decision, Settleable};
use crate::ledger::{self, Ledger, Scope};
use crate::limiter::Limiter;
use crate::reconcile::{self, Naming};
use crate::retry::{Backoff, with_retries};

/// Bad rows named one by one before the rest are only counted.
const ROWS_NAMED: usize = 100;
/// Attempts per look-up: a few throttles or gateway errors are worth riding out.
const LOOKUP_ATTEMPTS: u32 = 6;

/// One key the user wants settled, and where it was asked for.
#[derive(Debug, Clone)]
struct Wish {
    bucket: Option<String>,
    key: String,
    /// How `key` was written.
    form: Form,
    decision: Decision,
    /// The line of `--from` it came from.
    line: Option<u64>,
}

/// How a wish's key was written: a key copied from the report may carry its shown form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// From the ledger itself (`--sole-candidates`).
    Exact,
    /// `--key`: as it is, or as a terminal shows it (escaped).
    Shown,
    /// A cell of `--from`: as it is, or as the report's CSV writes it (the spreadsheet guard).
    Csv,
}

impl Wish {
    fn place(&self) -> String {
        // A key given as a terminal shows it is named as given, where that is safe to show.
        let given = crate::escape::lines(&self.key);
        let key = if self.form == Form::Shown && given == self.key && !self.key.contains('\n') {
            given
        } else {
            shown(&self.key)
        };
        match self.line {
            Some(line) => format!("line {line}: `{key}`"),
            None => format!("`{key}`"),
        }
    }
}

/// A wish whose key was found and may be settled, waiting for its evidence to be checked.
struct Checked {
    wish: Wish,
    bucket: String,
    row: Settleable,
}

/// `resolve`: checks every wish, then applies them all (or, with `--dry-run`, says what it
/// would do).
pub async fn resolve(
    db: &Path,
    args: &ResolveArgs,
    global: &Global,
    shutdown: CancellationToken,
) -> Result<String> {
    let _lock = crate::lock::acquire(db, "resolve")?;
    let ledger = Ledger::open_existing(db)?;
    let conn = ledger.conn();
    let scope = super::ledger_commands::named_scope(
        conn,
        db,
        args.endpoint.as_deref(),
        &args.workspace,
        &args.project,
    )?;
    let wishes = wishes(conn, &scope, args)?;
    if wishes.is_empty() {
        return Ok("nothing to settle\n".into());
    }
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for wish in wishes {
        match find(conn, &scope, &wish)? {
            Ok(found) => checked.push(found),
            Err(why) => problems.push(format!("{}: {why}", wish.place())),
        }
    }
    // One asset for one key only, within the file as in the ledger.
    let mut given: HashMap<i64, String> = HashMap::new();
    for c in &checked {
        if let Decision::Asset(asset) = c.wish.decision
            && let Some(other) = given.insert(asset, c.wish.key.clone())
        {
            problems.push(format!(
                "{}: asset {asset} is given to `{}` too",
                c.wish.place(),
                shown(&other)
            ));
        }
    }
    // Every asset given is looked up in MI (one request each, within --rate), but a candidate
    // whose details a pass already read: an asset outside the candidates for its name, any
    // for the object key its details may name.
    let given: Vec<i64> = checked
        .iter()
        .filter_map(|c| match c.wish.decision {
            Decision::Asset(a) => Some(a),
            Decision::NotRegistered => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let stored = ledger::details::known(conn, &scope, &given)?;
    let lookups: Vec<i64> = given
        .iter()
        .copied()
        .filter(|a| !stored.contains_key(a))
        .collect();
    let names = if lookups.is_empty() || !problems.is_empty() {
        HashMap::new()
    } else {
        look_up(&scope, args, global, &lookups, &shutdown).await?
    };
    let naming = ledger::facts::get(conn, &scope, ledger::facts::Fact::ListNaming)?
        .as_deref()
        .and_then(Naming::parse);
    for c in &checked {
        if let Err(why) = evidence(conn, &scope, c, &names, &stored, naming)? {
            problems.push(format!("{}: {why}", c.wish.place()));
        }
    }
    if !problems.is_empty() {
        return Err(input(anyhow::anyhow!(
            "{}\nhint: nothing was changed; `mi-import report --state uncertain` lists each key's candidates, and an asset outside them must be one MI shows under the key's name",
            named_problems(&problems)
        )));
    }
    apply(
        conn,
        &scope,
        &checked,
        args.dry_run,
        super::settings::floors()?,
    )
}

/// The wishes the command line names.
fn wishes(conn: &rusqlite::Connection, scope: &Scope, args: &ResolveArgs) -> Result<Vec<Wish>> {
    if let Some(key) = &args.key {
        let decision = match (args.asset_id, args.not_registered) {
            (Some(asset), false) => Decision::Asset(asset),
            (None, true) => Decision::NotRegistered,
            _ => {
                return Err(input(anyhow::anyhow!(
                    "say what MI holds for the key\nhint: --asset-id ID (its asset), or --not-registered (MI has none; the next run sends it)"
                )));
            }
        };
        return Ok(vec![Wish {
            bucket: args.bucket.clone(),
            key: key.clone(),
            form: Form::Shown,
            decision,
            line: None,
        }]);
    }
    if let Some(path) = &args.from {
        return read_wishes(path);
    }
    // --sole-candidates: every uncertain key with exactly one candidate, on the user's word.
    Ok(unsure::uncertain_keys(conn, scope)?
        .into_iter()
        .filter_map(|u| match u.candidates.as_deref() {
            Some([only]) => Some(Wish {
                bucket: Some(u.key.bucket.clone()),
                key: u.key.key.clone(),
                form: Form::Exact,
                decision: Decision::Asset(*only),
                line: None,
            }),
            _ => None,
        })
        .collect())
}

/// Reads `--from`: a header naming `key` and `asset_id` (and `bucket`, and the report's
/// other columns, which are ignored; rows of the report that are not uncertain or leave
/// `asset_id` empty are skipped), or headerless `key,asset_id` rows.
fn read_wishes(path: &Path) -> Result<Vec<Wish>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(input)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(file);
    let mut wishes = Vec::new();
    let mut problems = Vec::new();
    let mut columns: Option<(usize, usize, Option<usize>, Option<usize>)> = None;
    let mut line = 0u64;
    for record in reader.records() {
        line += 1;
        let record = record
            .with_context(|| format!("{}: line {line}", path.display()))
            .map_err(input)?;
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        if line == 1 {
            let names: Vec<&str> = record
                .iter()
                .map(|f| f.trim_start_matches('\u{feff}'))
                .collect();
            let at = |name: &str| names.iter().position(|n| n.eq_ignore_ascii_case(name));
            if let (Some(key), Some(asset)) = (at("key"), at("asset_id")) {
                columns = Some((key, asset, at("bucket"), at("state")));
                continue;
            }
            columns = Some((0, 1, None, None));
        }
        let Some((key_at, asset_at, bucket_at, state_at)) = columns else {
            continue;
        };
        if state_at.is_some_and(|s| field(s) != "uncertain") || field(asset_at).is_empty() {
            continue;
        }
        let decision = match field(asset_at) {
            "not-registered" => Decision::NotRegistered,
            text => match text.parse::<i64>() {
                Ok(id) if id > 0 => Decision::Asset(id),
                _ => {
                    problems.push(format!(
                        "line {line}: `{text}` is neither an asset ID nor `not-registered`"
                    ));
                    continue;
                }
            },
        };
        if field(key_at).is_empty() {
            problems.push(format!("line {line}: no key"));
            continue;
        }
        wishes.push(Wish {
            bucket: bucket_at
                .map(|b| field(b).to_owned())
                .filter(|b| !b.is_empty()),
            key: record.get(key_at).unwrap_or("").to_owned(),
            form: Form::Csv,
            decision,
            line: Some(line),
        });
    }
    if !problems.is_empty() {
        return Err(input(anyhow::anyhow!(
            "{}: {}\nhint: each row is `key,asset_id` or `key,not-registered`; nothing was changed",
            path.display(),
            named_problems(&problems)
        )));
    }
    Ok(wishes)
}

fn named_problems(problems: &[String]) -> String {
    let mut text = problems
        .iter()
        .take(ROWS_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    if problems.len() > ROWS_NAMED {
        let _ = write!(text, "\n  and {} more", problems.len() - ROWS_NAMED);
    }
    if problems.len() > 1 {
        text.insert_str(
            0,
            &format!("{} rows cannot be applied:\n  ", problems.len()),
        );
    }
    text
}

/// The key a wish names: of the readings its form allows (as written, and as the report
/// writes a key on a terminal or in CSV), the one the ledger holds. Where two readings name
/// two keys of the ledger, none is guessed.
fn named_key(
    conn: &rusqlite::Connection,
    scope: &Scope,
    wish: &Wish,
) -> Result<std::result::Result<String, String>> {
    let written = wish.key.clone();
    let read_back = match wish.form {
        Form::Exact => None,
        Form::Shown => crate::escape::unshown(&written),
        Form::Csv => Some(crate::escape::csv_uncell(&written).to_owned()),
    };
    let Some(read_back) = read_back.filter(|k| *k != written) else {
        return Ok(Ok(written));
    };
    let held = |key: &str| -> Result<bool> {
        let buckets = ledger::keys::buckets_holding(conn, scope, key)?;
        Ok(match &wish.bucket {
            Some(b) => buckets.contains(b),
            None => !buckets.is_empty(),
        })
    };
    Ok(match (held(&read_back)?, held(&written)?) {
        (true, true) => Err(match wish.form {
            Form::Csv => format!(
                "could be the key `{}` itself or `{}`, which the report's CSV writes so; settle that one with --key, which takes a key exactly",
                shown(&written),
                shown(&read_back)
            ),
            _ => format!(
                "could be the key written so (which --key names alone as `{}`) or the key a terminal shows so; give that one exactly (in bash, `$'...'`) or in a CSV file to --from",
                shown(&written)
            ),
        }),
        (false, true) => Ok(written),
        // The read-back form where the ledger holds it, or where neither is held (a CSV
        // cell's guard is the report's own; a shown form is named back in the error).
        (true, false) => Ok(read_back),
        (false, false) if wish.form == Form::Csv => Ok(read_back),
        (false, false) => Ok(written),
    })
}

/// The wish's key in the ledger, if `resolve` may settle it.
fn find(
    conn: &rusqlite::Connection,
    scope: &Scope,
    wish: &Wish,
) -> Result<std::result::Result<Checked, String>> {
    let key = match named_key(conn, scope, wish)? {
        Ok(key) => key,
        Err(why) => return Ok(Err(why)),
    };
    let wish = &Wish {
        key,
        ..wish.clone()
    };
    let bucket = match &wish.bucket {
        Some(b) => b.clone(),
        None => match super::ledger_commands::only_bucket_of(conn, scope, &wish.key) {
            Ok(b) => b,
            Err(e) => return Ok(Err(format!("{e:#}").replace("\nhint: ", "; "))),
        },
    };
    Ok(match unsure::settleable(conn, scope, &bucket, &wish.key)? {
        Ok(row) => Ok(Checked {
            wish: wish.clone(),
            bucket,
            row,
        }),
        Err(refused) => Err(refused.to_string()),
    })
}

/// Whether the evidence offers the asset the wish gives its key: no other key has it, MI's
/// details (asked now, or by a pass before) do not say it was made from another object, and
/// it is one of the key's candidates or, asked now, MI names it as the key may be named.
fn evidence(
    conn: &rusqlite::Connection,
    scope: &Scope,
    c: &Checked,
    looked: &HashMap<i64, AssetDetails>,
    stored: &HashMap<i64, reconcile::Detail>,
    naming: Option<Naming>,
) -> Result<std::result::Result<(), String>> {
    let Decision::Asset(asset) = c.wish.decision else {
        return Ok(Ok(()));
    };
    if let Some(owner) = unsure::owner_of(conn, scope, asset, c.row.id)? {
        return Ok(Err(format!(
            "asset {asset} already belongs to `{}` in this ledger",
            shown(&owner)
        )));
    }
    // An asset MI's list showed before the key's request left was made from something else.
    if let (Some(sent), Some(shown_at)) = (
        c.row.sent_at,
        ledger::observed::first_shown_at(conn, scope, asset)?,
    ) && shown_at < sent
    {
        return Ok(Err(format!(
            "MI's asset list showed asset {asset} by {}, before this key's request left at {}: it was made from another object or upload",
            crate::clock::ms_text(shown_at),
            crate::clock::ms_text(sent)
        )));
    }
    let unsure = reconcile::UnsureKey {
        id: c.row.id,
        bucket: c.bucket.clone(),
        key: c.wish.key.clone(),
        size: None,
        sent_at: 0,
        unsure_at: 0,
    };
    let detail = looked
        .get(&asset)
        .map(|d| reconcile::Detail {
            key: d.key.clone(),
            bucket: d.bucket.clone(),
        })
        .or_else(|| stored.get(&asset).cloned());
    if let Some(detail) = detail.filter(|d| d.names_another(&unsure)) {
        return Ok(Err(format!(
            "MI's details say asset {asset} was made from `{}`{}, not from this key",
            shown(detail.key.as_deref().unwrap_or_default()),
            detail
                .bucket
                .as_deref()
                .map(|b| format!(" in bucket `{}`", shown(b)))
                .unwrap_or_default()
        )));
    }
    if c.row.candidates.contains(&asset) {
        return Ok(Ok(()));
    }
    Ok(match looked.get(&asset) {
        None => Err(format!(
            "MI has no asset {asset} in this project, and it is none of the key's candidates"
        )),
        // Details that name the key say more than a file name can.
        Some(d) if d.key.is_some() => Ok(()),
        Some(AssetDetails {
            file_name: None, ..
        }) => Err(format!(
            "MI's details of asset {asset} name no file, so it cannot be checked against the key; give one of its candidates"
        )),
        Some(AssetDetails {
            file_name: Some(name),
            ..
        }) if reconcile::names_for(&c.wish.key, naming).contains(name) => Ok(()),
        Some(AssetDetails {
            file_name: Some(name),
            ..
        }) => Err(format!(
            "MI names asset {asset} `{}`, a name this key cannot have",
            shown(name)
        )),
    })
}

/// Looks up each asset in MI: what its details say (its file name, and the object key it was
/// made from where they name it); an asset MI does not have is left out.
async fn look_up(
    scope: &Scope,
    args: &ResolveArgs,
    global: &Global,
    assets: &[i64],
    shutdown: &CancellationToken,
) -> Result<HashMap<i64, AssetDetails>> {
    let endpoint = match (&args.endpoint, scope.endpoint.as_str()) {
        (Some(given), _) => given.clone(),
        (None, "") => crate::config::DEFAULT_ENDPOINT.to_owned(),
        (None, recorded) => recorded.to_owned(),
    };
    crate::config::check_transport(&endpoint, "--endpoint", global.allow_insecure_http)
        .map_err(input)?;
    let target = Target::new(
        &endpoint,
        Some(scope.workspace.clone()),
        Some(scope.project.clone()),
    )
    .map_err(input)?;
    let limits =
        crate::config::Limits::with_setting(args.rate.clone(), 1, LOOKUP_ATTEMPTS, args.timeout)
            .map_err(input)?;
    let credentials = Credentials::discover(global.profile.as_deref()).map_err(input)?;
    let client = MiClient::new(target, credentials, limits.timeout)?;
    let limiter = Limiter::with_rate(&limits.setting, 1);
    let mut found = HashMap::new();
    for &asset in assets {
        let finished = with_retries(LOOKUP_ATTEMPTS, Backoff::default(), shutdown, |_| async {
            let _slot = limiter.admit().await;
            Answer {
                call: Call::Asset,
                result: client.asset_details(asset).await,
            }
        })
        .await;
        match finished.last.result {
            Ok(details) => {
                found.insert(asset, details);
            }
            Err(e) if e.status() == Some(404) && !e.from_gateway() => {}
            Err(e) => return Err(lookup_failed(asset, e)),
        }
        if shutdown.is_cancelled() {
            anyhow::bail!("stopped before every asset was looked up; nothing was changed");
        }
    }
    Ok(found)
}

/// MI could not be asked: a fatal answer (exit 3), nothing changed.
fn lookup_failed(asset: i64, error: ApiError) -> anyhow::Error {
    let hint = error
        .hint()
        .unwrap_or("run again later; nothing was changed");
    crate::exit::fatal(anyhow::anyhow!(
        "cannot look up asset {asset} in MI: {error}\nhint: {hint}"
    ))
}

/// Applies every checked wish in one transaction (or none, in a dry run), and says what it
/// did.
fn apply(
    conn: &rusqlite::Connection,
    scope: &Scope,
    checked: &[Checked],
    dry_run: bool,
    floors: crate::runner::Floors,
) -> Result<String> {
    let tx = conn.unchecked_transaction()?;
    let run = ledger::start_run(
        &tx,
        "resolve",
        Some(scope),
        std::time::Duration::ZERO,
        floors.heartbeat,
    )?;
    let mut text = String::new();
    for c in checked {
        let decided = unsure::decide(
            &tx,
            scope,
            &c.bucket,
            &c.wish.key,
            &c.wish.decision,
            run,
            floors.first_look,
        )?;
        decided.map_err(|refused| input(anyhow::anyhow!("{}: {refused}", c.wish.place())))?;
        let said = match c.wish.decision {
            Decision::Asset(a) => format!("registered as asset {a}"),
            Decision::NotRegistered if !c.row.candidates.is_empty() => format!(
                "not registered: the next run sends it (on your word: MI shows {} under its name, {}; were one of them its asset, the key would be registered twice)",
                crate::runner::plural(c.row.candidates.len() as u64, "an asset", "assets"),
                c.row
                    .candidates
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Decision::NotRegistered => "not registered: the next run sends it".into(),
        };
        let _ = writeln!(
            text,
            "`{}` in `{}` {} {said}",
            shown(&c.wish.key),
            shown(&c.bucket),
            if dry_run { "would be" } else { "is now" }
        );
    }
    ledger::finish_run(
        &tx,
        run,
        0,
        &serde_json::json!({"settled": checked.len()}).to_string(),
    )?;
    if dry_run {
        tx.rollback()?;
        text.push_str(&format!(
            "dry run: {} {} would be settled; nothing was changed\n",
            checked.len(),
            crate::runner::plural(checked.len() as u64, "key", "keys")
        ));
    } else {
        tx.commit()?;
        if checked.len() > 1 {
            text.push_str(&format!("{} keys settled\n", checked.len()));
        }
    }
    Ok(text)
}
