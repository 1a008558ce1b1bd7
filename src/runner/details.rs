//! Asset details as evidence: for the keys a pass over the list leaves ambiguous, what each
//! candidate's details say it was made from (`result.key`, `result.bucketName`), read from the
//! ledger where asked before and asked of MI where not, within `--rate` and a budget a run;
//! and whether this project's details name the object key at all, learned once from an asset
//! of the ledger's own. The rule that uses them is [`crate::reconcile`]'s.

use anyhow::Result;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use super::Runner;
use crate::api::Call;
use crate::ledger::details;
use crate::ledger::facts::{self, Fact};
use crate::reconcile::{self, Detail, Verdict, Witness};

/// Asset details asked of MI in one run at most, for candidates the list cannot tell apart
/// (one GET each, within `--rate`; an asset is asked once per ledger). Under the hardest
/// reading a lost answer has a few candidates (the assets of its file name's sharers), so
/// this serves hundreds of lost answers, and bounds what a run spends on them.
pub const DETAILS_PER_RUN: u64 = 2_000;
/// Longest object key a detail is believed to name; a longer one names no key of ours.
const MAX_DETAIL_KEY_BYTES: usize = 4 * crate::source::eligibility::MAX_KEY_BYTES;

impl Runner {
    /// What the details of the candidates of the keys `verdicts` leave ambiguous say they were
    /// made from: read from the ledger where asked before, asked of MI where not (as many at
    /// once as `--concurrency` allows, within `--rate` and [`DETAILS_PER_RUN`]), once the
    /// ledger's own assets showed that details name the object key (empty where they do not:
    /// then nothing changes).
    pub(super) async fn details_for(
        &self,
        verdicts: &[reconcile::Explained],
        witnesses: &[Witness],
    ) -> Result<HashMap<i64, Detail>> {
        let mut wanted: Vec<i64> = verdicts
            .iter()
            .filter_map(|(_, verdict, _)| match verdict {
                Verdict::Ambiguous(candidates) => Some(candidates.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() || !self.details_name_keys(witnesses).await? {
            return Ok(HashMap::new());
        }
        let (scope, ids) = (self.scope.clone(), wanted.clone());
        let mut known = self
            .writer
            .write(move |t| details::known(t, &scope, &ids))
            .await?;
        let mut asking = tokio::task::JoinSet::new();
        let mut fresh = Vec::new();
        for id in wanted.into_iter().filter(|id| !known.contains_key(id)) {
            if !self.take_detail() {
                break;
            }
            if asking.len() >= self.limiter.concurrency() {
                fresh.extend(asking.join_next().await.and_then(Result::ok).flatten());
            }
            let runner = self.clone();
            asking.spawn(async move { runner.detail_of(id).await.map(|d| (id, d)) });
        }
        while let Some(done) = asking.join_next().await {
            fresh.extend(done.ok().flatten());
        }
        if !fresh.is_empty() {
            let (scope, kept) = (self.scope.clone(), fresh.clone());
            self.writer
                .write(move |t| {
                    kept.iter()
                        .try_for_each(|(id, detail)| details::keep(t, &scope, *id, detail))
                })
                .await?;
        }
        known.extend(fresh);
        Ok(known)
    }

    /// One asset's details, bounded: `None` where they could not be read (the asset gone, an
    /// error), which is evidence of nothing.
    async fn detail_of(&self, asset: i64) -> Option<Detail> {
        let finished = self
            .call_mi(Call::Asset, || self.client.asset_details(asset))
            .await;
        match finished.last.result {
            Ok(read) => Some(Detail {
                // A key longer than Object Storage holds names no object of ours.
                key: read.key.map(|k| {
                    if k.len() > MAX_DETAIL_KEY_BYTES {
                        String::new()
                    } else {
                        k
                    }
                }),
                bucket: read.bucket,
            }),
            Err(e) => {
                tracing::debug!("asset {asset}'s details: {e}");
                None
            }
        }
    }

    /// One more asset detail from this run's budget, if any is left.
    fn take_detail(&self) -> bool {
        let asked = self.passes.details_asked.fetch_add(1, Relaxed);
        if asked == DETAILS_PER_RUN {
            tracing::info!(
                "this run asked MI for {DETAILS_PER_RUN} asset details, its most; candidates not asked about wait for the next run"
            );
        }
        asked < DETAILS_PER_RUN
    }

    /// Whether this project's asset details name the object key an asset was made from, as
    /// the ledger's newest own asset shows (learned once, kept as a fact; `false` while
    /// nothing shows it).
    async fn details_name_keys(&self, witnesses: &[Witness]) -> Result<bool> {
        match self.fact(Fact::DetailsNameKey).await?.as_deref() {
            Some("yes") => return Ok(true),
            Some(_) => return Ok(false),
            None => {}
        }
        let Some(newest) = witnesses.iter().max_by_key(|w| w.sent_at) else {
            return Ok(false);
        };
        if !self.take_detail() {
            return Ok(false);
        }
        let Some(detail) = self.detail_of(newest.asset_id).await else {
            return Ok(false);
        };
        let names = match detail.key.as_deref() {
            Some(key) if reconcile::spellings(&newest.key).iter().any(|s| s == key) => true,
            Some(_) => {
                tracing::warn!(
                    "MI's asset details name a key, but not the object's of an asset this ledger registered (asset {}); they are not used to tell assets apart",
                    newest.asset_id
                );
                false
            }
            None => {
                tracing::info!(
                    "MI's asset details do not name the object key; assets of one file name are told apart by the list alone"
                );
                false
            }
        };
        if names {
            tracing::info!(
                "MI's asset details name the object key an asset was made from (learned from asset {}): they tell apart assets of one file name",
                newest.asset_id
            );
        }
        let scope = self.scope.clone();
        let value = if names { "yes" } else { "no" };
        self.writer
            .write(move |t| facts::set(t, &scope, Fact::DetailsNameKey, value))
            .await?;
        Ok(names)
    }
}
