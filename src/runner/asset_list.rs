//! Walking MI's asset list: page by page by number, to the end the entries themselves show,
//! never further than the list can be, with what it takes to tell whether the list held still
//! while it was read.
//!
//! The list is paged by number, not by cursor, and its order is not documented (docs/service.md, "The asset list"):
//! an asset deleted or added while it is read shifts every later entry by one, so one entry
//! slides onto a page already read (missed) or onto the next (read twice), while `totalCount`
//! stays the same. A walk therefore only *describes* what it read; whether that proves
//! anything is for the caller to decide, by [`Walked::agrees_with`] another walk.
//!
//! A walk ends at an empty page, or at a page shorter than the longest served (the last), or
//! where the totals say the list ends; it does not trust `totalPage` alone (an answer may
//! leave it out). It stops as an error when the list does not end: a page that repeats the
//! one before (the server ignores `pageNum`), or more pages than the totals (or
//! [`MAX_WALK_PAGES`]) allow.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use super::{LIST_PAGE, Runner};
use crate::api::{ApiError, AssetSummary, Call};

/// Most pages one walk reads: 100 million assets at MI's largest page, far beyond any
/// project, so only a list that never ends reaches it.
const MAX_WALK_PAGES: u32 = 100_000;

/// One page as a walk's visitor sees it.
pub(super) struct Page<'a> {
    pub number: u32,
    /// The page count the answer claims, if it claims one.
    pub claimed_pages: Option<u32>,
    pub assets: &'a [AssetSummary],
}

/// Whether a visitor wants more pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    More,
    Enough,
}

/// A visitor's verdict on a page, to be awaited.
pub(super) type PageVerdict<'env> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Flow> + Send + 'env>>;

/// What one walk read.
#[derive(Debug, Clone, Default)]
pub(super) struct Walked {
    pub pages: u32,
    /// Every asset ID read, in the order read (one read twice appears twice).
    pub ids: Vec<i64>,
    /// A digest of each page's IDs in order, to compare with another walk.
    digests: Vec<u64>,
    /// The walk reached the end of the list and the list looked whole: every page carried
    /// the same `totalCount` and `totalPage` and its own number, as many entries were read as
    /// `totalCount` says, in as many pages as `totalPage` says, and no ID twice.
    pub whole: bool,
}

impl Walked {
    /// Whether two walks read the same list: both whole, and every page the same entries in
    /// the same order. An asset deleted or added between (or during) them changes a page,
    /// so two walks that agree read a list that held still from the first's start to the
    /// second's end: nothing slid between two pages, and what neither shows was absent.
    pub fn agrees_with(&self, other: &Walked) -> bool {
        self.whole && other.whole && self.digests == other.digests
    }
}

/// Why a walk ended early.
#[derive(Debug)]
pub(super) enum WalkError {
    /// MI's answer, after the retries it was worth; `interrupted` if the run is stopping.
    Api { error: ApiError, interrupted: bool },
    /// The list does not end: it repeats a page, or goes on past what it can hold.
    Endless { page: u32, why: &'static str },
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Api { error, .. } => write!(f, "{error}"),
            WalkError::Endless { page, why } => {
                write!(f, "MI's asset list does not end: page {page} {why}")
            }
        }
    }
}

fn digest(assets: &[AssetSummary]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for asset in assets {
        asset.asset_id.hash(&mut hasher);
    }
    hasher.finish()
}

impl Runner {
    /// Reads the project's asset list from page 1 to its end (or until `visit` has enough),
    /// each page through the limiter and retried as its answer says.
    pub(super) async fn walk_assets(
        &self,
        mut visit: impl FnMut(Page<'_>) -> Flow,
    ) -> Result<Walked, WalkError> {
        self.walk_assets_then(|page| {
            let flow = visit(page);
            Box::pin(std::future::ready(flow))
        })
        .await
    }

    /// [`Runner::walk_assets`] with a visitor whose verdict on a page needs awaiting (a look
    /// in the ledger): it reads what it needs of the page at once and answers later.
    pub(super) async fn walk_assets_then<'env>(
        &self,
        mut visit: impl FnMut(Page<'_>) -> PageVerdict<'env>,
    ) -> Result<Walked, WalkError> {
        let mut walked = Walked {
            whole: true,
            ..Walked::default()
        };
        let mut totals: Option<(Option<u64>, Option<u32>)> = None;
        let mut longest = 0;
        // Pages that held entries: an empty page after a full last one is no page of the list.
        let mut filled = 0u32;
        let mut previous: Option<Vec<i64>> = None;
        let mut page = 1;
        loop {
            let finished = self
                .call_mi(Call::ListAssets, || {
                    self.client.list_assets(page, LIST_PAGE)
                })
                .await;
            let listed = finished.last.result.map_err(|error| WalkError::Api {
                error,
                interrupted: finished.interrupted,
            })?;
            let ids: Vec<i64> = listed.assets.iter().map(|a| a.asset_id).collect();
            if !ids.is_empty() && previous.as_ref() == Some(&ids) {
                return Err(WalkError::Endless {
                    page,
                    why: "repeats the page before it (pageNum is not followed)",
                });
            }
            let these = (listed.total_count, listed.total_pages);
            if these.0.is_none() || these.1.is_none() || *totals.get_or_insert(these) != these {
                walked.whole = false;
            }
            if listed.page_no.is_some_and(|n| n != page) {
                walked.whole = false;
            }
            walked.pages = page;
            walked.digests.push(digest(&listed.assets));
            walked.ids.extend(&ids);
            let flow = visit(Page {
                number: page,
                claimed_pages: listed.total_pages,
                assets: &listed.assets,
            })
            .await;
            let served = listed.assets.len();
            longest = longest.max(served);
            if served > 0 {
                filled += 1;
            }
            let (count, claimed) = these;
            let at_claimed_end = matches!((count, claimed),
                (Some(c), Some(p)) if page >= p && walked.ids.len() as u64 >= c);
            if served == 0 || served < longest || at_claimed_end {
                break;
            }
            if flow == Flow::Enough {
                walked.whole = false;
                return Ok(walked);
            }
            // No list has more pages than its entries fill (two spare for a list that grew).
            let most = count
                .map(|c| c.div_ceil(longest as u64).saturating_add(2))
                .unwrap_or(u64::MAX)
                .min(u64::from(MAX_WALK_PAGES));
            if u64::from(page) >= most {
                return Err(WalkError::Endless {
                    page,
                    why: "goes on past every asset the list claims to hold",
                });
            }
            previous = Some(ids);
            page += 1;
        }
        // Whole only if the entries add up to what every page claimed, none twice.
        let read = walked.ids.len();
        if let Some((Some(count), Some(claimed))) = totals
            && (count != read as u64 || (count > 0 && filled != claimed))
        {
            walked.whole = false;
        }
        let mut distinct = walked.ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != read {
            walked.whole = false;
        }
        Ok(walked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(pages: &[&[i64]], whole: bool) -> Walked {
        Walked {
            pages: pages.len() as u32,
            ids: pages.iter().flat_map(|p| p.iter().copied()).collect(),
            digests: pages
                .iter()
                .map(|p| {
                    let assets: Vec<AssetSummary> = p
                        .iter()
                        .map(|id| AssetSummary {
                            asset_id: *id,
                            file_name: String::new(),
                            size: None,
                            created: None,
                            upload_status: None,
                        })
                        .collect();
                    digest(&assets)
                })
                .collect(),
            whole,
        }
    }

    #[test]
    fn two_walks_agree_only_page_for_page_and_only_when_whole() {
        let before = walked(&[&[1, 2, 3], &[4]], true);
        assert!(before.agrees_with(&walked(&[&[1, 2, 3], &[4]], true)));
        // One deleted on page 1 and one added: the total holds, an entry slid a page back.
        let slid = walked(&[&[1, 3, 4], &[5]], true);
        assert!(!before.agrees_with(&slid));
        assert!(!before.agrees_with(&walked(&[&[1, 2, 3], &[4]], false)));
        assert!(!walked(&[&[1, 2], &[3, 4]], true).agrees_with(&walked(&[&[1, 2, 3], &[4]], true)));
    }
}
