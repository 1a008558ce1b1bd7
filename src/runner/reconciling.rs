//! Reconciliation: one pass over the project's asset list settles every key whose outcome
//! is unknown, before any of them is sent again. The matching rule itself is pure and lives
//! in [`crate::reconcile`].

use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;

use super::{FatalStop, LIST_PAGE, Runner};
use crate::api::Call;
use crate::ledger;
use crate::reconcile;
use crate::retry::Disposition;

impl Runner {
    /// Looks up every uncertain key in one pass over the project's asset list.
    pub(super) async fn reconcile(&self) -> Result<()> {
        let scope = self.scope.clone();
        let unsure = self
            .writer
            .write(move |t| ledger::uncertain_keys(t, &scope))
            .await?;
        if unsure.is_empty() {
            return Ok(());
        }
        tracing::info!(
            "checking MI's asset list for {} keys with an unknown outcome",
            unsure.len()
        );
        let Some(listing) = self.list_names(reconcile::wanted_names(&unsure)).await else {
            return Ok(());
        };
        let scope = self.scope.clone();
        let known: HashSet<i64> = self
            .writer
            .write(move |t| ledger::known_asset_ids(t, &scope))
            .await?
            .into_iter()
            .collect();
        let verdict = reconcile::match_assets(&unsure, &listing, &known);
        tracing::info!(
            "{} found registered, {} not registered (will be sent)",
            verdict.found.len(),
            verdict.not_found.len()
        );
        self.stats
            .reconciled
            .fetch_add(verdict.found.len() as u64, Relaxed);
        self.stats
            .queued
            .fetch_add(verdict.not_found.len() as u64, Relaxed);
        self.writer
            .write(move |t| ledger::resolve_uncertain(t, &verdict.found, &verdict.not_found))
            .await?;
        Ok(())
    }

    /// Pages the whole asset list, keeping only the names asked for. `None` if the listing
    /// could not be completed (the keys then stay uncertain).
    async fn list_names(&self, wanted: HashSet<String>) -> Option<HashMap<String, Vec<i64>>> {
        let mut names: HashMap<String, Vec<i64>> = HashMap::new();
        let mut page = 1;
        loop {
            let finished = self
                .call_mi(Call::ListAssets, || {
                    self.client.list_assets(page, LIST_PAGE)
                })
                .await;
            let listed = match finished.last.result {
                Ok(listed) => listed,
                Err(error) => {
                    if error.disposition_for(Call::ListAssets) == Disposition::Fatal {
                        self.stop_for(FatalStop {
                            message: format!("{error} (while listing the project's assets)"),
                            hint: error.hint().map(str::to_owned),
                        });
                    } else if !finished.interrupted {
                        tracing::error!(
                            "cannot list the project's assets: {error}; uncertain keys stay uncertain"
                        );
                    }
                    return None;
                }
            };
            for asset in listed.assets {
                if wanted.contains(&asset.file_name) {
                    names
                        .entry(asset.file_name)
                        .or_default()
                        .push(asset.asset_id);
                }
            }
            if page >= listed.total_pages {
                return Some(names);
            }
            page += 1;
        }
    }
}
