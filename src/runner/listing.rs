//! Listing a bucket into the ledger while dispatch runs. A listing is made of parts (see
//! [`crate::ledger::listings`]); up to `--list-concurrency` parts are listed side by side, a
//! page at a time. Each page is judged (the user's filters, then MI's rules) and committed
//! with its part's new position and its subfolders (new parts) in one transaction, so a
//! killed run resumes every part from its last committed page and no key is lost.

use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;
use tokio::task::JoinSet;

use super::{FatalStop, Runner};
use crate::ledger::listings::{self, ListingState, PageRecord, Part};
use crate::ledger::{NewKey, OnChanged};
use crate::source::bucket::{ListError, Lister, Object, Page};
use crate::source::eligibility;
use crate::source::filter::{Filters, Left};

/// What a listing pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListSummary {
    pub pages: u64,
    pub objects: u64,
    pub new: u64,
    pub changed: u64,
    /// Of the changed, those queued to be sent (again).
    pub requeued: u64,
    pub left_out: u64,
    pub settling: u64,
    /// The listing reached the end.
    pub complete: bool,
    /// Pages an earlier run listed before it stopped, which this one continued from (0: a
    /// new listing).
    pub resumed_from: u64,
}

impl ListSummary {
    /// Judges one page's objects into ledger rows, counting those the filters leave out.
    pub fn judge_page(
        &mut self,
        bucket: &str,
        objects: Vec<Object>,
        filters: &Filters,
    ) -> Vec<NewKey> {
        let now = crate::clock::now();
        let mut rows = Vec::with_capacity(objects.len());
        for object in objects {
            match judge(bucket, object, filters, now) {
                Ok(row) => rows.push(row),
                Err(Left::Settling) => self.settling += 1,
                Err(_) => self.left_out += 1,
            }
        }
        rows
    }

    /// Counts a committed page.
    pub fn add_page(&mut self, seen: u64, counts: &crate::ledger::Ingested) {
        self.pages += 1;
        self.objects += seen;
        self.new += counts.added();
        self.changed += counts.changed;
        self.requeued += counts.requeued;
    }
}

impl std::ops::Add for ListSummary {
    type Output = ListSummary;
    fn add(self, other: ListSummary) -> ListSummary {
        ListSummary {
            pages: self.pages + other.pages,
            objects: self.objects + other.objects,
            new: self.new + other.new,
            changed: self.changed + other.changed,
            requeued: self.requeued + other.requeued,
            left_out: self.left_out + other.left_out,
            settling: self.settling + other.settling,
            complete: self.complete && other.complete,
            resumed_from: self.resumed_from + other.resumed_from,
        }
    }
}

/// Turns one listed object into a ledger row, or `Err` with the filter that left it out.
pub fn judge(
    bucket: &str,
    object: Object,
    filters: &Filters,
    now: SystemTime,
) -> Result<NewKey, Left> {
    if let Some(left) = filters.verdict(&object.key, Some(object.size), object.last_modified, now) {
        return Err(left);
    }
    let skip_reason = object
        .problem
        .or_else(|| eligibility::refusal(&object.key, Some(object.size)));
    Ok(NewKey {
        bucket: bucket.to_owned(),
        key: object.key,
        size: Some(object.size),
        etag: object.etag,
        modified: object.last_modified.map(crate::clock::epoch_ms),
        skip_reason,
    })
}

/// One page of one part, as a listing task brings it back.
type Fetched = (Part, Result<Page, ListError>, bool);

impl Runner {
    /// Lists from where `state` stands to the end, up to `concurrency` parts at a time,
    /// feeding dispatch page by page. A listing that fails for good stops the run.
    pub async fn list_bucket(
        &self,
        lister: &Arc<Lister>,
        bucket: &str,
        state: ListingState,
        filters: &Filters,
        on_changed: OnChanged,
        concurrency: usize,
    ) -> Result<ListSummary> {
        let mut summary = ListSummary {
            resumed_from: state.pages,
            ..Default::default()
        };
        if state.pages > 0 {
            tracing::info!(
                "continuing the listing of `{bucket}` that a stopped run left ({} pages were listed before)",
                state.pages
            );
        }
        self.stats.listing.store(true, Relaxed);
        let mut tasks: JoinSet<Fetched> = JoinSet::new();
        let mut busy: Vec<i64> = Vec::new();
        loop {
            // Stopped where the user said: the listing resumes from here next run.
            let going = !self.halt.is_cancelled() && !self.is_cut_off();
            if going && tasks.len() < concurrency.max(1) {
                let (id, want, taken) = (state.id, concurrency.max(1) - tasks.len(), busy.clone());
                let parts = self
                    .writer
                    .write(move |t| listings::parts_to_list(t, id, &taken, want))
                    .await?;
                for part in parts {
                    busy.push(part.id);
                    let (runner, lister) = (self.clone(), lister.clone());
                    tasks.spawn(async move { runner.fetch_page(&lister, part).await });
                }
            }
            let Some(done) = tasks.join_next().await else {
                summary.complete = going;
                break;
            };
            let (part, page, interrupted) = done?;
            busy.retain(|id| *id != part.id);
            let page = match page {
                Ok(page) => page,
                Err(_) if interrupted => continue,
                Err(error) => {
                    self.halt_for(FatalStop {
                        message: error.to_string(),
                        hint: Some(error.hint().into()),
                    });
                    continue;
                }
            };
            self.record_page(
                &mut summary,
                bucket,
                state.id,
                part,
                page,
                filters,
                on_changed,
                concurrency,
            )
            .await?;
        }
        self.stats.listing.store(false, Relaxed);
        Ok(summary)
    }

    /// One page of a part, retried as its answers say.
    async fn fetch_page(&self, lister: &Lister, part: Part) -> Fetched {
        let (page, interrupted) = lister
            .page_retried(
                &part.prefix,
                part.marker.as_deref(),
                part.flat,
                self.pace.max_attempts,
                self.backoff,
                &self.halt,
            )
            .await;
        (part, page, interrupted)
    }

    /// Judges a page and commits it with its part's new position; dispatch hears of it.
    #[allow(clippy::too_many_arguments)]
    async fn record_page(
        &self,
        summary: &mut ListSummary,
        bucket: &str,
        listing: i64,
        part: Part,
        page: Page,
        filters: &Filters,
        on_changed: OnChanged,
        concurrency: usize,
    ) -> Result<()> {
        let seen = page.objects.len() as u64;
        let rows = summary.judge_page(bucket, page.objects, filters);
        let (scope, next, subfolders) = (self.scope.clone(), page.next_marker, page.subfolders);
        let spread = listings::spread_for(concurrency);
        let (counts, _) = self
            .writer
            .write(move |t| {
                let record = PageRecord {
                    listing,
                    part: part.id,
                    keys: &rows,
                    seen,
                    next_marker: next.as_deref(),
                    subfolders: &subfolders,
                    spread,
                };
                listings::record_page(t, &scope, &record, on_changed)
            })
            .await?;
        summary.add_page(seen, &counts);
        self.stats.discovered.fetch_add(seen, Relaxed);
        self.stats
            .queued
            .fetch_add(counts.new + counts.requeued, Relaxed);
        self.feed.arrived();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn judging_applies_filters_then_mi_rules() {
        let now = SystemTime::now();
        let mut filters = Filters::default();
        filters.min_age = Some(Duration::from_secs(600));
        let object = |key: &str, size: u64, age: u64| Object {
            key: key.into(),
            size,
            etag: Some("e".into()),
            last_modified: Some(now - Duration::from_secs(age)),
            problem: None,
        };
        let ok = judge("b", object("a.mp4", 10, 3600), &filters, now).unwrap();
        assert_eq!(
            (ok.skip_reason, ok.etag.as_deref(), ok.size),
            (None, Some("e"), Some(10))
        );
        let big = judge("b", object("a.png", 20_000_000, 3600), &filters, now).unwrap();
        assert!(big.skip_reason.unwrap().contains("too large"));
        let empty = judge("b", object("a.mp4", 0, 3600), &filters, now).unwrap();
        assert!(empty.skip_reason.unwrap().contains("0 bytes"));
        assert_eq!(
            judge("b", object("a.mp4", 10, 5), &filters, now).unwrap_err(),
            Left::Settling
        );
    }
}
