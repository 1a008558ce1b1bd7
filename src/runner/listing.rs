//! Listing a bucket into the ledger while dispatch runs: each page is judged (the user's
//! filters, then MI's rules) and committed with the listing's new position in one
//! transaction, so a killed run resumes from the last committed page and no key is lost or
//! counted twice.

use anyhow::Result;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use super::{FatalStop, Runner};
use crate::ledger::NewKey;
use crate::ledger::listings::{self, ListingState, OnChanged};
use crate::source::bucket::{Listed, Lister, Object};
use crate::source::eligibility;
use crate::source::filter::{Filters, Left};

/// What a listing pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListSummary {
    pub pages: u64,
    pub objects: u64,
    pub new: u64,
    pub changed: u64,
    pub left_out: u64,
    pub settling: u64,
    /// The listing reached the end (now or in the run this one resumes).
    pub complete: bool,
}

impl ListSummary {
    /// Judges one page's objects into ledger rows, counting those the filters leave out.
    pub fn judge_page(
        &mut self,
        bucket: &str,
        objects: Vec<Object>,
        filters: &Filters,
    ) -> Vec<NewKey> {
        let now = SystemTime::now();
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
    pub fn add_page(&mut self, seen: u64, counts: &crate::ledger::Ingested, changed: u64) {
        self.pages += 1;
        self.objects += seen;
        self.new += counts.added();
        self.changed += changed;
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
    let skip_reason = eligibility::refusal(&object.key, Some(object.size));
    Ok(NewKey {
        bucket: bucket.to_owned(),
        key: object.key,
        size: Some(object.size),
        etag: object.etag,
        last_modified: object
            .last_modified
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        skip_reason,
    })
}

impl Runner {
    /// Lists from where `state` stands to the end, feeding dispatch page by page. A listing
    /// that fails for good stops the run.
    pub async fn list_bucket(
        &self,
        lister: &Lister,
        bucket: &str,
        state: ListingState,
        filters: &Filters,
        on_changed: OnChanged,
    ) -> Result<ListSummary> {
        let mut summary = ListSummary {
            complete: state.listed,
            ..Default::default()
        };
        let mut marker = state.marker;
        self.stats.listing.store(!state.listed, Relaxed);
        if state.listed {
            tracing::info!(
                "the listing of `{bucket}` finished in the run this one resumes; not listing again"
            );
        } else if let Some(m) = &marker {
            tracing::info!("resuming the listing of `{bucket}` after `{m}`");
        }
        while !summary.complete && !self.stop.is_cancelled() {
            let finished = crate::retry::with_retries(
                self.max_attempts,
                self.backoff,
                &self.stop,
                |_| async { Listed(lister.page(marker.as_deref()).await) },
            )
            .await;
            let page = match finished.last.0 {
                Ok(page) => page,
                Err(_) if finished.interrupted => break,
                Err(error) => {
                    self.stop_for(FatalStop {
                        message: error.to_string(),
                        hint: Some(error.hint().into()),
                    });
                    break;
                }
            };
            let seen = page.objects.len() as u64;
            let rows = summary.judge_page(bucket, page.objects, filters);
            let (scope, next) = (self.scope.clone(), page.next_marker.clone());
            let (counts, changed) = self
                .writer
                .write(move |t| {
                    listings::record_page(
                        t,
                        &scope,
                        state.id,
                        &rows,
                        seen,
                        next.as_deref(),
                        on_changed,
                    )
                })
                .await?;
            summary.add_page(seen, &counts, changed);
            self.stats.discovered.fetch_add(seen, Relaxed);
            self.stats.queued.fetch_add(
                counts.new
                    + if on_changed == OnChanged::Reimport {
                        changed
                    } else {
                        0
                    },
                Relaxed,
            );
            self.feed.arrived();
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => summary.complete = true,
            }
        }
        self.stats.listing.store(false, Relaxed);
        self.feed.close();
        Ok(summary)
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
