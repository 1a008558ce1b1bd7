//! Reconciliation: one pass over the project's asset list serves every key whose outcome is
//! unknown. The pass gathers what the rule in [`crate::reconcile`] needs: the listed assets
//! that bear the keys' names, the ledger's own assets as witnesses (how MI names, times and
//! numbers assets, and whether the list is current), and which candidates the ledger already
//! owns. The verdicts are written in one transaction; a kill during the pass loses nothing
//! (the keys stay uncertain and the next run passes again).

use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::asset_list::{Flow, WalkError, Walked};
use super::{FatalStop, Runner, plural};
use crate::api::{ApiError, Call};
use crate::ledger::facts::{self, Fact};
use crate::ledger::{observed, unsure};
use crate::reconcile::{
    self, Detail, Evidence, Listed, Naming, Observation, Observed, Pass, UnsureKey, Verdict,
    Witness,
};
use crate::retry::Disposition;

/// How long MI's asset list may take to show a new asset, unless `--list-settle` says
/// otherwise: a key missing from the list proves nothing until this long after its outcome
/// became unknown. A search index typically shows a new entry within seconds; a minute is a
/// wide margin, and costs only a wait at the end of a run that lost answers.
pub const DEFAULT_LIST_SETTLE: Duration = Duration::from_secs(60);
/// Witnesses are taken from this long before the earliest unsure key's send on.
const WITNESS_LOOKBACK: Duration = Duration::from_secs(600);
/// Most witnesses held for one pass (their keys are in memory).
const MAX_WITNESSES: usize = 100_000;
/// Witnesses answered within this long before the list is supposed to be current are checked
/// for being listed: one missing means the list lags more than the settle window.
const FRESHNESS_WINDOW: Duration = Duration::from_secs(600);
/// Missing witnesses looked up one by one (a deleted asset is no sign of lag); more missing
/// than this and the list is taken as not current.
const MAX_PROBES: usize = 20;
/// The settle window is the learned lag times this, plus [`LAG_SLACK`]: a lag measured on a
/// few witnesses may be a little short of the next one's.
const LAG_MARGIN: f64 = 1.5;
const LAG_SLACK: Duration = Duration::from_secs(1);

/// What is known of each ambiguous key's candidates, as JSON for the report: the asset, the
/// name MI lists, its size and creation time if the list carries them, when this ledger
/// first saw it, and why the key could not be given it.
fn evidence_of(
    verdicts: &[reconcile::Explained],
    named: &[Listed],
    observed: &Observed,
    details: &HashMap<i64, Detail>,
) -> HashMap<i64, String> {
    let by_id: HashMap<i64, &Listed> = named.iter().map(|a| (a.asset_id, a)).collect();
    verdicts
        .iter()
        .filter(|(_, v, _)| matches!(v, Verdict::Ambiguous(_)))
        .map(|(key, _, reasons)| {
            let candidates: Vec<serde_json::Value> = reasons
                .iter()
                .map(|(asset, why)| {
                    let listed = by_id.get(asset);
                    serde_json::json!({
                        "asset_id": asset,
                        "name": listed.map(|a| a.file_name.clone()),
                        "size": listed.and_then(|a| a.size),
                        "created": listed.and_then(|a| a.created).map(crate::clock::ms_text),
                        "first_seen": observed.first_seen.get(asset).copied().map(crate::clock::ms_text),
                        "key": details.get(asset).and_then(|d| d.key.clone()),
                        "why": why.as_str(),
                    })
                })
                .collect();
            (*key, serde_json::Value::Array(candidates).to_string())
        })
        .collect()
}

/// What one pass decided.
#[derive(Debug, Clone, Copy)]
pub(super) struct PassResult {
    pub settled: unsure::Settled,
    /// The list was known current for every key looked up: absence was proven where names
    /// were absent, and a later pass could prove no more.
    pub proven: bool,
}

/// What one pass over the list collected.
struct Collected {
    /// Assets bearing a wanted name.
    named: Vec<Listed>,
    /// Witnesses found in the list, by asset ID.
    witnesses: HashMap<i64, Listed>,
    /// When the page that showed each witness arrived (Unix ms), by asset ID.
    seen_at: HashMap<i64, i64>,
    /// The walk itself: whether it was whole, and what to compare another walk with.
    walked: Walked,
}
impl Runner {
    /// Looks up every uncertain key in one pass over the project's asset list. `None` when
    /// there was nothing to look up, or the list could not be read (the keys stay uncertain).
    pub(super) async fn look_up_unsure(&self) -> Result<Option<PassResult>> {
        let scope = self.scope.clone();
        let unsure = self
            .writer
            .write(move |t| unsure::uncertain_keys(t, &scope))
            .await?;
        if unsure.is_empty() {
            return Ok(None);
        }
        let keys: Vec<UnsureKey> = unsure.into_iter().map(|u| u.key).collect();
        let earliest = keys.iter().map(|k| k.sent_at).min().unwrap_or(0);
        let since = earliest - WITNESS_LOOKBACK.as_millis() as i64;
        let scope = self.scope.clone();
        let (witnesses, stored) = self
            .writer
            .write(move |t| {
                Ok((
                    unsure::witnesses(t, &scope, since, MAX_WITNESSES)?,
                    facts::get(t, &scope, Fact::ListNaming)?,
                ))
            })
            .await?;
        tracing::info!(
            "checking MI's asset list for {} {} with an unknown outcome",
            keys.len(),
            plural(keys.len() as u64, "key", "keys")
        );
        let started = crate::clock::now_ms();
        let wanted = reconcile::wanted_names(&keys);
        let witness_ids: HashSet<i64> = witnesses.iter().map(|w| w.asset_id).collect();
        let Some(collected) = self.collect(&wanted, &witness_ids).await else {
            return Ok(None);
        };
        let evidence = self
            .learn(
                &witnesses,
                &collected,
                stored.as_deref().and_then(Naming::parse),
            )
            .await?;
        // Judged by the lag learned before this pass: a lag is trusted only once a later pass
        // has seen it hold, never by the reading that taught it.
        let mut fresh_as_of = self.current_as_of(&witnesses, &collected, started).await;
        self.learn_lag(&witnesses, &collected, started).await?;
        let observed = self
            .observe(
                started,
                fresh_as_of,
                &collected.walked.ids,
                &collected.named,
            )
            .await?;
        let ids: Vec<i64> = collected.named.iter().map(|a| a.asset_id).collect();
        let scope = self.scope.clone();
        let owned = self
            .writer
            .write(move |t| unsure::owned_among(t, &scope, &ids))
            .await?;
        let judge = |fresh_as_of, details: &HashMap<i64, Detail>| {
            reconcile::judge_explained(
                &keys,
                &Pass {
                    listed: &collected.named,
                    observed: &observed,
                    owned: &owned,
                    evidence: &evidence,
                    witnesses: &witnesses,
                    fresh_as_of,
                    started,
                    details,
                },
            )
        };
        // What the list leaves ambiguous, the candidates' details may tell apart.
        let first = judge(fresh_as_of, &HashMap::new());
        let details = self.details_for(&first, &witnesses).await?;
        let mut verdicts = if details.is_empty() {
            first
        } else {
            judge(fresh_as_of, &details)
        };
        // Absence needs a list that held still: this walk must agree with the one before it
        // (kept from the last pass, or read again now).
        let absent = verdicts
            .iter()
            .any(|(_, v, _)| matches!(v, Verdict::NotRegistered));
        let mut latest = collected.walked.clone();
        if absent {
            let before = self
                .passes
                .last_walk
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let mut steady = before.is_some_and(|b| b.agrees_with(&collected.walked));
            if !steady && let Some(again) = self.collect(&wanted, &witness_ids).await {
                steady = collected.walked.agrees_with(&again.walked);
                latest = again.walked;
            }
            if !steady {
                tracing::info!(
                    "MI's asset list changed while it was read (assets deleted or added between its pages); keys missing from it are not sent again until two readings agree"
                );
                fresh_as_of = None;
                verdicts = judge(None, &details);
            }
        }
        latest.ids = Vec::new();
        *self
            .passes
            .last_walk
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(latest);
        let explained = evidence_of(&verdicts, &collected.named, &observed, &details);
        let verdicts: Vec<(i64, Verdict)> = verdicts.into_iter().map(|(k, v, _)| (k, v)).collect();
        let run = self.run_id;
        let settled = self
            .writer
            .write(move |t| unsure::apply_verdicts(t, &verdicts, &explained, started, run))
            .await?;
        self.stats.found_registered(settled.registered);
        self.stats.requeue(settled.resend);
        tracing::info!(
            "asset list ({} {}): {} found registered, {} not registered (sent again), {} still unknown{}",
            collected.walked.pages,
            plural(collected.walked.pages as u64, "page", "pages"),
            settled.registered,
            settled.resend,
            settled.waiting + settled.ambiguous,
            if settled.ambiguous > 0 {
                format!(
                    " ({} with candidate assets: see `mi-import report --state uncertain`, settle with `mi-import resolve`)",
                    settled.ambiguous
                )
            } else {
                String::new()
            }
        );
        Ok(Some(PassResult {
            settled,
            proven: fresh_as_of.is_some_and(|t| keys.iter().all(|k| t > k.unsure_at)),
        }))
    }

    /// What the listed witnesses teach, remembered for the next pass; the naming learned
    /// before stands when this pass shows no witness.
    async fn learn(
        &self,
        witnesses: &[Witness],
        collected: &Collected,
        stored: Option<Naming>,
    ) -> Result<Evidence> {
        let learned = reconcile::learn_naming(witnesses, &collected.witnesses);
        if let Some(naming) = learned
            && learned != stored
        {
            match naming {
                Naming::Other => tracing::warn!(
                    "MI's asset list names assets neither by their full key nor by its last segment; keys whose answer was lost cannot be found by name and stay uncertain"
                ),
                _ => tracing::info!(
                    "MI's asset list names assets by their {} (learned from assets this ledger registered)",
                    match naming {
                        Naming::FullKey => "full object key",
                        _ => "file name (the key's last segment)",
                    }
                ),
            }
            let scope = self.scope.clone();
            self.writer
                .write(move |t| facts::set(t, &scope, Fact::ListNaming, naming.as_str()))
                .await?;
        }
        let evidence = Evidence {
            naming: learned.or(stored),
            clock: reconcile::learn_clock(witnesses, &collected.witnesses),
            ids_ordered: reconcile::learn_id_order(witnesses),
        };
        self.dispatch
            .apart
            .set_ms(reconcile::sharers_apart_ms(evidence.naming, evidence.clock));
        // What orders the list's assets, for a later run to know at once whether it needs a
        // baseline pass before it sends.
        if !collected.witnesses.is_empty() {
            let orders = match (evidence.clock.is_some(), evidence.ids_ordered) {
                (true, _) => "times",
                (false, true) => "ids",
                (false, false) => "none",
            };
            let scope = self.scope.clone();
            self.writer
                .write(move |t| facts::set(t, &scope, Fact::ListOrder, orders))
                .await?;
        }
        Ok(evidence)
    }

    /// As of when the list is known to show everything made before, if the walk was whole.
    /// By the learned lag: as of when the request left of the latest of the ledger's own
    /// assets it shows that was sent a settle window before the pass began, none older missing (a list that
    /// slowed down since shows it only through assets of the ledger's made after; absence
    /// needs such a witness). Otherwise by `--list-settle`: a whole window before the pass,
    /// the ledger's assets from before then all shown.
    async fn current_as_of(
        &self,
        witnesses: &[Witness],
        collected: &Collected,
        started: i64,
    ) -> Option<i64> {
        if !collected.walked.whole {
            return None;
        }
        let ceiling = self.pace.list_settle;
        let by_ceiling = started - ceiling.as_millis() as i64;
        let learned = self.settle_window();
        if learned < ceiling {
            // The list is current as of when the youngest such asset's request left: it was
            // made after that (its answer may have come much later).
            let until = started - learned.as_millis() as i64;
            let youngest = witnesses
                .iter()
                .filter(|w| w.sent_at <= until)
                .filter(|w| collected.witnesses.contains_key(&w.asset_id))
                .map(|w| w.sent_at)
                .max();
            if let Some(at) = youngest
                && at > by_ceiling
                && self
                    .shows_recent(witnesses, collected, started, learned)
                    .await
            {
                return Some(at);
            }
        }
        self.shows_recent(witnesses, collected, started, ceiling)
            .await
            .then_some(by_ceiling)
    }

    /// How long to wait after an unknown outcome before the list can prove it: the learned
    /// lag with a margin, at most `--list-settle`, which serves while nothing is learned.
    pub(super) fn settle_window(&self) -> Duration {
        let ceiling = self.pace.list_settle;
        match *self
            .passes
            .list_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(lag) => ceiling
                .min(Duration::from_millis((lag.max(0) as f64 * LAG_MARGIN) as u64) + LAG_SLACK),
            None => ceiling,
        }
    }

    /// While no lag is learned, when the next pass should look (after the `passes` made):
    /// at once first, then after twice as long as the last pass found the ledger's own
    /// assets missing, from a second on; never later than `--list-settle` would.
    pub(super) fn lag_probe_gap(&self, passes: u32) -> Duration {
        if passes == 0 {
            return Duration::ZERO;
        }
        let missing = Duration::from_millis(self.passes.last_missing_ms.load(Relaxed));
        (missing * 2).max(LAG_SLACK).min(self.pace.list_settle)
    }

    /// Whether a lag of the list is learned for this scope.
    pub(super) fn lag_learned(&self) -> bool {
        self.passes
            .list_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Reads the lag the ledger learned for this scope in earlier runs.
    pub(super) async fn recall_lag(&self) -> Result<()> {
        let kept = self.fact(Fact::ListLagMs).await?;
        *self
            .passes
            .list_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            kept.and_then(|v| v.parse::<i64>().ok()).filter(|l| *l >= 0);
        Ok(())
    }

    /// Reads the naming the ledger learned for this scope, to keep keys that may share a
    /// listed name apart from the first claim (the clock is learned again by each pass).
    pub(super) async fn recall_naming(&self) -> Result<()> {
        let kept = self.fact(Fact::ListNaming).await?;
        let naming = kept.as_deref().and_then(Naming::parse);
        let ms = reconcile::sharers_apart_ms(naming, None);
        self.dispatch.apart.set_ms(ms);
        if ms > 0 {
            // Keys a run before this one left unknown hold their names' others back too.
            let (scope, since) = (self.scope.clone(), crate::clock::now_ms() - ms);
            let recent = self
                .writer
                .write(move |t| unsure::unsure_since(t, &scope, since))
                .await?;
            for (key, unsure_at) in recent {
                self.dispatch.apart.hold(&key, unsure_at);
            }
        }
        Ok(())
    }

    /// What this pass shows of the list's lag, kept for the next pass and the next run.
    async fn learn_lag(
        &self,
        witnesses: &[Witness],
        collected: &Collected,
        started: i64,
    ) -> Result<()> {
        let ceiling = self.pace.list_settle.as_millis() as i64;
        let reading = reconcile::read_lag(witnesses, &collected.seen_at, started, ceiling);
        self.passes
            .last_missing_ms
            .store(reading.missing_at.max(0) as u64, Relaxed);
        let kept = *self
            .passes
            .list_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let next = reconcile::next_lag(kept, reading);
        if next == kept {
            return Ok(());
        }
        *self
            .passes
            .list_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = next;
        let shown = |ms: i64| match ms {
            ..1000 => "a second".to_string(),
            _ => {
                humantime::format_duration(Duration::from_millis(ms as u64 / 100 * 100)).to_string()
            }
        };
        match (kept, next) {
            (None, Some(lag)) => tracing::info!(
                "MI's asset list shows this ledger's new assets within {} (learned from its own assets); a lost answer is looked up {} after it, not --list-settle's {}",
                shown(lag),
                humantime::format_duration(Duration::from_secs(
                    self.settle_window().as_secs().max(1)
                )),
                humantime::format_duration(self.pace.list_settle)
            ),
            (Some(before), Some(lag)) if lag > before => tracing::info!(
                "MI's asset list now takes up to {} to show a new asset (it took up to {})",
                shown(lag),
                shown(before)
            ),
            (Some(_), None) => tracing::info!(
                "MI's asset list takes longer than it did to show new assets; lost answers are looked up --list-settle ({}) after them until it is learned again",
                humantime::format_duration(self.pace.list_settle)
            ),
            _ => tracing::debug!("MI's asset list shows new assets within {next:?} ms"),
        }
        let scope = self.scope.clone();
        self.writer
            .write(move |t| match next {
                Some(lag) => facts::set(t, &scope, Fact::ListLagMs, &lag.to_string()),
                None => facts::forget(t, &scope, Fact::ListLagMs),
            })
            .await?;
        Ok(())
    }

    /// Whether the list shows the assets this ledger registered shortly before the moment it
    /// should be current to (`settle` before `started`): one missing that still exists means
    /// the list lags longer, and absence proves nothing this pass.
    async fn shows_recent(
        &self,
        witnesses: &[Witness],
        collected: &Collected,
        started: i64,
        settle: Duration,
    ) -> bool {
        let until = started - settle.as_millis() as i64;
        let from = until - FRESHNESS_WINDOW.as_millis() as i64;
        let missing: Vec<i64> = witnesses
            .iter()
            .filter(|w| (from..=until).contains(&w.answered_at))
            .filter(|w| !collected.witnesses.contains_key(&w.asset_id))
            .map(|w| w.asset_id)
            .collect();
        if missing.len() > MAX_PROBES {
            tracing::warn!(
                "MI's asset list does not show {} assets registered more than {} before it was read; it may lag more than that, so keys missing from it are not sent again yet",
                missing.len(),
                humantime::format_duration(settle)
            );
            return false;
        }
        for asset in missing {
            let finished = self.call_mi(Call::Asset, || self.client.asset(asset)).await;
            match finished.last.result {
                Err(e) if e.status() == Some(404) => {
                    tracing::debug!("asset {asset} is gone from MI (deleted?)");
                }
                Ok(_) => {
                    tracing::warn!(
                        "MI's asset list does not show asset {asset}, which exists and was registered more than {} before the list was read; it may lag more than that, so keys missing from it are not sent again yet",
                        humantime::format_duration(settle)
                    );
                    return false;
                }
                Err(e) => {
                    tracing::debug!("cannot look up asset {asset}: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Walks the whole asset list, keeping the assets named as wanted and the witnesses.
    /// `None` if the walk could not be completed.
    async fn collect(
        &self,
        wanted: &HashSet<String>,
        witness_ids: &HashSet<i64>,
    ) -> Option<Collected> {
        let mut named = Vec::new();
        let mut witnesses = HashMap::new();
        let mut seen_at = HashMap::new();
        self.stats.asset_pages.store(0, Relaxed);
        let walked = self
            .walk_assets(|page| {
                self.stats.asset_pages_total.store(
                    u64::from(page.claimed_pages.unwrap_or(0).max(page.number)),
                    Relaxed,
                );
                self.stats
                    .asset_pages
                    .store(u64::from(page.number), Relaxed);
                let arrived = crate::clock::now_ms();
                for asset in page.assets {
                    let wanted_name = wanted.contains(&asset.file_name);
                    let witness = witness_ids.contains(&asset.asset_id);
                    if !(wanted_name || witness) {
                        continue;
                    }
                    let entry = Listed {
                        asset_id: asset.asset_id,
                        size: asset.size,
                        created: asset.created,
                        file_name: asset.file_name.clone(),
                    };
                    if witness {
                        witnesses.insert(entry.asset_id, entry.clone());
                        seen_at.insert(entry.asset_id, arrived);
                    }
                    if wanted_name {
                        named.push(entry);
                    }
                }
                Flow::More
            })
            .await;
        self.stats.asset_pages_total.store(0, Relaxed);
        match walked {
            Ok(walked) => Some(Collected {
                named,
                witnesses,
                seen_at,
                walked,
            }),
            Err(WalkError::Api { error, interrupted }) => {
                self.list_failed(&error, interrupted);
                None
            }
            Err(endless) => {
                tracing::error!("{endless}; keys with an unknown outcome stay uncertain");
                None
            }
        }
    }

    /// Records a pass over the list (what it showed, when, how current it was) and reads back
    /// what the ledger saw before: for each listed asset, when the pass that first showed it
    /// ended; and every pass.
    async fn observe(
        &self,
        started: i64,
        current_as_of: Option<i64>,
        shown: &[i64],
        named: &[Listed],
    ) -> Result<Observed> {
        let (scope, shown) = (self.scope.clone(), shown.to_vec());
        let wanted: Vec<i64> = named.iter().map(|a| a.asset_id).collect();
        self.writer
            .write(move |t| {
                observed::record_pass(
                    t,
                    &scope,
                    started,
                    crate::clock::now_ms(),
                    current_as_of,
                    &shown,
                )?;
                let passes = observed::passes(t, &scope)?;
                let seen = observed::seen(t, &scope)?;
                let ended: HashMap<i64, i64> = passes.iter().map(|p| (p.id, p.ended_at)).collect();
                Ok(Observed {
                    first_seen: wanted
                        .iter()
                        .filter_map(|id| Some((*id, *ended.get(&seen.first_pass(*id)?)?)))
                        .collect(),
                    passes: passes
                        .iter()
                        .map(|p| Observation {
                            ended_at: p.ended_at,
                            current_as_of: p.current_as_of,
                        })
                        .collect(),
                })
            })
            .await
    }

    /// A pass over the list for the record only, before keys are sent: what it shows, a key
    /// sent after cannot have made. Taken at a run's start where an earlier run learned that
    /// nothing else orders the list's assets, and at a run's first unknown outcome.
    pub(super) async fn baseline(&self) -> Result<()> {
        let scope = self.scope.clone();
        let since = crate::clock::now_ms() - FRESHNESS_WINDOW.as_millis() as i64 * 2;
        let witnesses = self
            .writer
            .write(move |t| unsure::witnesses(t, &scope, since, MAX_WITNESSES))
            .await?;
        let started = crate::clock::now_ms();
        let witness_ids: HashSet<i64> = witnesses.iter().map(|w| w.asset_id).collect();
        let Some(collected) = self.collect(&HashSet::new(), &witness_ids).await else {
            return Ok(());
        };
        let stored = self.fact(Fact::ListNaming).await?;
        self.learn(
            &witnesses,
            &collected,
            stored.as_deref().and_then(Naming::parse),
        )
        .await?;
        let fresh = self.current_as_of(&witnesses, &collected, started).await;
        self.learn_lag(&witnesses, &collected, started).await?;
        self.observe(started, fresh, &collected.walked.ids, &[])
            .await?;
        tracing::info!(
            "a baseline of MI's asset list: {} assets seen before the keys that follow are sent",
            collected.walked.ids.len()
        );
        Ok(())
    }

    /// Whether nothing but the ledger's own observations is known to order the list's assets
    /// in time: an earlier pass learned so, or none has learned anything yet and the list's
    /// first entry carries no creation time (one request; a baseline of a large project costs
    /// a walk of its list before every run that sends, which times make needless).
    pub(super) async fn list_may_be_unordered(&self) -> Result<bool> {
        let fact = self.fact(Fact::ListOrder).await?;
        match fact.as_deref() {
            Some("none") => Ok(true),
            Some(_) => Ok(false),
            None => {
                let first = self
                    .call_mi(Call::ListAssets, || self.client.list_assets(1, 1))
                    .await;
                Ok(!first
                    .last
                    .result
                    .is_ok_and(|page| page.assets.first().is_some_and(|a| a.created.is_some())))
            }
        }
    }

    fn list_failed(&self, error: &ApiError, interrupted: bool) {
        if error.disposition_for(Call::ListAssets) == Disposition::Fatal {
            self.halt_for(FatalStop {
                message: format!("{error} (while listing the project's assets)"),
                hint: error.hint().map(str::to_owned),
            });
        } else if !interrupted {
            tracing::error!(
                "cannot list the project's assets: {error}; keys with an unknown outcome stay uncertain"
            );
        }
    }
}
