//! The emulator's memory: assets, registrations per key, counters, fault dice.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use super::{EmulatorConfig, FileNameMode};

/// One registered asset.
#[derive(Debug, Clone)]
pub struct AssetRecord {
    pub asset_id: i64,
    pub bucket: String,
    pub key: String,
    pub created: Instant,
}

/// What the emulator has seen, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub register_calls: u64,
    pub status_calls: u64,
    pub list_calls: u64,
    pub unauthorized: u64,
    pub throttled: u64,
    pub unavailable: u64,
    pub dropped_before: u64,
    pub dropped_after: u64,
}

/// Which call a logged request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Register,
    ImportStatus,
    Other,
}

impl CallKind {
    pub fn of_path(path: &str) -> Self {
        if path.ends_with("/assets/import/object-storage") {
            CallKind::Register
        } else if path.ends_with("/import-status") {
            CallKind::ImportStatus
        } else {
            CallKind::Other
        }
    }
}

/// The most arrivals within any one second, of `times` in arrival order.
pub fn busiest_second(times: &[Instant]) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[derive(Default)]
struct Inner {
    /// Arrival time of every signed request.
    log: Vec<(Instant, CallKind)>,
    next_id: i64,
    assets: BTreeMap<i64, AssetRecord>,
    registrations: HashMap<(String, String), u32>,
    counters: Counters,
    admitted: VecDeque<Instant>,
}

pub(super) struct Shared {
    pub config: EmulatorConfig,
    inner: Mutex<Inner>,
    dice: Mutex<StdRng>,
}

/// What the dice say about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    Throttle,
    Unavailable,
}

impl Shared {
    pub fn new(config: EmulatorConfig) -> Self {
        let dice = Mutex::new(StdRng::seed_from_u64(config.seed));
        let inner = Inner {
            next_id: 100_001,
            ..Default::default()
        };
        Self {
            config,
            inner: Mutex::new(inner),
            dice,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn roll(&self, probability: f64) -> bool {
        probability > 0.0
            && self
                .dice
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_bool(probability.min(1.0))
    }

    pub fn latency(&self) -> Duration {
        let (lo, hi) = self.config.latency;
        if hi <= lo {
            return lo;
        }
        let mut dice = self.dice.lock().unwrap_or_else(|p| p.into_inner());
        Duration::from_micros(dice.random_range(lo.as_micros() as u64..=hi.as_micros() as u64))
    }

    pub fn log(&self, kind: CallKind) {
        self.inner().log.push((Instant::now(), kind));
    }

    pub fn request_log(&self) -> Vec<(Instant, CallKind)> {
        self.inner().log.clone()
    }

    pub fn count(&self, update: impl FnOnce(&mut Counters)) {
        update(&mut self.inner().counters);
    }

    /// The gateway's rate limit, then the random faults, for one signed request.
    pub fn admit(&self) -> Fault {
        if let Some(limit) = self.config.rate_limit {
            let mut inner = self.inner();
            let now = Instant::now();
            while inner
                .admitted
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                inner.admitted.pop_front();
            }
            if inner.admitted.len() >= limit as usize {
                inner.counters.throttled += 1;
                return Fault::Throttle;
            }
            inner.admitted.push_back(now);
        }
        if self.roll(self.config.rate_429) {
            self.count(|c| c.throttled += 1);
            return Fault::Throttle;
        }
        if self.roll(self.config.rate_503) {
            self.count(|c| c.unavailable += 1);
            return Fault::Unavailable;
        }
        Fault::None
    }

    pub fn create(&self, bucket: &str, key: &str) -> i64 {
        let mut inner = self.inner();
        let asset_id = inner.next_id;
        inner.next_id += 1;
        let record = AssetRecord {
            asset_id,
            bucket: bucket.into(),
            key: key.into(),
            created: Instant::now(),
        };
        inner.assets.insert(asset_id, record);
        *inner
            .registrations
            .entry((bucket.into(), key.into()))
            .or_default() += 1;
        asset_id
    }

    pub fn asset(&self, asset_id: i64) -> Option<AssetRecord> {
        self.inner().assets.get(&asset_id).cloned()
    }

    /// One page of assets in id order, as (assetId, fileName), and the total.
    pub fn page(&self, page_num: u32, page_size: u32) -> (Vec<(i64, String)>, usize) {
        let inner = self.inner();
        let skip = (page_num.max(1) as usize - 1) * page_size as usize;
        let names = inner
            .assets
            .values()
            .skip(skip)
            .take(page_size as usize)
            .map(|a| (a.asset_id, self.file_name(&a.key)))
            .collect();
        (names, inner.assets.len())
    }

    fn file_name(&self, key: &str) -> String {
        match self.config.file_name {
            FileNameMode::FullKey => key.to_owned(),
            FileNameMode::LastSegment => key.rsplit('/').next().unwrap_or(key).to_owned(),
        }
    }

    pub fn registrations(&self, bucket: &str, key: &str) -> u32 {
        self.inner()
            .registrations
            .get(&(bucket.to_owned(), key.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn duplicates(&self) -> Vec<(String, String, u32)> {
        let mut dups: Vec<_> = self
            .inner()
            .registrations
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|((b, k), n)| (b.clone(), k.clone(), *n))
            .collect();
        dups.sort();
        dups
    }

    pub fn assets(&self) -> Vec<AssetRecord> {
        self.inner().assets.values().cloned().collect()
    }

    pub fn counters(&self) -> Counters {
        self.inner().counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_second_counts_arrivals_less_than_a_second_apart() {
        let base = Instant::now();
        let at = |ms: &[u64]| -> Vec<Instant> {
            ms.iter()
                .map(|m| base + Duration::from_millis(*m))
                .collect()
        };
        assert_eq!(busiest_second(&at(&[])), 0);
        assert_eq!(busiest_second(&at(&[0, 100, 900, 1000, 1999])), 3);
        assert_eq!(busiest_second(&at(&[0, 1000, 2000])), 1);
    }
}
