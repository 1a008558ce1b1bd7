//! The emulator's memory: assets, registrations per key, analyses, counters, fault dice.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use super::{EmulatorConfig, FileNameMode};

/// How long before the emulator started the assets present before a run were made.
const PRELOAD_AGE: Duration = Duration::from_secs(3600);

/// One asset in the project.
#[derive(Debug, Clone)]
pub struct AssetRecord {
    pub asset_id: i64,
    pub bucket: String,
    pub key: String,
    pub created: Instant,
    pub created_wall: SystemTime,
    pub size: Option<u64>,
    /// Registered through the API (not present before the run, as a console upload is).
    pub registered: bool,
    /// How long after its creation the list shows it: the list's lag when it was made.
    pub listed_after: Duration,
}

/// An analysis MI accepted for an asset.
#[derive(Debug, Clone)]
pub struct AnalysisRecord {
    pub index_id: i64,
    pub polls: u32,
    pub status: &'static str,
    /// When it was accepted, and how long it takes (with `analysis_time` set).
    pub started: Instant,
    pub takes: Option<Duration>,
}

/// What the emulator has seen, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub register_calls: u64,
    pub status_calls: u64,
    pub list_calls: u64,
    pub asset_calls: u64,
    pub analysis_calls: u64,
    pub analysis_status_calls: u64,
    pub unauthorized: u64,
    pub throttled: u64,
    pub unavailable: u64,
    pub failed_after_create: u64,
    pub dropped_before: u64,
    pub dropped_after: u64,
    pub redirected: u64,
}

/// Which call a logged request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Register,
    ImportStatus,
    ListAssets,
    Analysis,
    Other,
}

impl CallKind {
    pub fn of(method: &str, path: &str) -> Self {
        if path.ends_with("/assets/import/object-storage") {
            CallKind::Register
        } else if path.ends_with("/import-status") {
            CallKind::ImportStatus
        } else if path.ends_with("/assets") && method == "GET" {
            CallKind::ListAssets
        } else if path.contains("/index") {
            CallKind::Analysis
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
    used_ids: HashSet<i64>,
    assets: BTreeMap<i64, AssetRecord>,
    registrations: HashMap<(String, String), u32>,
    analyses: HashMap<i64, AnalysisRecord>,
    /// Analysis requests accepted per asset.
    analyzed: HashMap<i64, u32>,
    counters: Counters,
    admitted: VecDeque<Instant>,
    /// Walks over the list that have had their churn.
    churned: u32,
    /// Keys throttled once already by `throttle_then_lose`.
    throttled_once: HashSet<String>,
    /// Keys dropped once already by `lose_first_before_containing`.
    dropped_once: HashSet<String>,
}

pub(super) struct Shared {
    pub config: EmulatorConfig,
    /// Set while a test wants every analysis request dropped before it is accepted.
    pub analysis_drops: std::sync::atomic::AtomicBool,
    /// How long (ms) a new asset takes to appear in the list: the configured lag, until a
    /// test changes it.
    pub list_lag_ms: std::sync::atomic::AtomicU64,
    /// Whether asset details carry the object key: the configured reading, until a test
    /// changes it.
    pub details_key: std::sync::atomic::AtomicBool,
    inner: Mutex<Inner>,
    dice: Mutex<StdRng>,
    /// The register call's own dice, thrown three times for every call: the n-th register call
    /// meets the same faults whatever the latencies and the interleaving of other requests.
    register_dice: Mutex<StdRng>,
}

/// The faults one register call meets: its answer lost before MI made the asset, lost after,
/// or a gateway error after.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RegisterFaults {
    pub drop_before: bool,
    pub drop_after: bool,
    pub fail_after_create: bool,
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
        let register_dice = Mutex::new(StdRng::seed_from_u64(config.seed ^ 0x0005_eed0_f4e6));
        let list_lag_ms = (config.list_lag.as_millis() as u64).into();
        let details_key = config.details_key.into();
        let inner = Inner {
            next_id: 100_001,
            ..Default::default()
        };
        let shared = Self {
            config,
            analysis_drops: Default::default(),
            list_lag_ms,
            details_key,
            inner: Mutex::new(inner),
            dice,
            register_dice,
        };
        for (bucket, key) in shared.config.preload.clone() {
            shared.insert(&bucket, &key, false);
        }
        shared
    }

    /// Assets present before the run were made a while ago.
    fn made_at(&self, registered: bool) -> (Instant, SystemTime) {
        if registered {
            return (Instant::now(), crate::clock::now());
        }
        let age = PRELOAD_AGE;
        (
            Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            crate::clock::now() - age,
        )
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dice(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.dice.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn roll(&self, probability: f64) -> bool {
        probability > 0.0 && self.dice().random_bool(probability.min(1.0))
    }

    pub fn register_faults(&self) -> RegisterFaults {
        let mut dice = self.register_dice.lock().unwrap_or_else(|p| p.into_inner());
        let mut throw = |p: f64| dice.random::<f64>() < p;
        RegisterFaults {
            drop_before: throw(self.config.drop_before),
            drop_after: throw(self.config.drop_after),
            fail_after_create: throw(self.config.fail_after_create),
        }
    }

    pub fn latency(&self) -> Duration {
        let (lo, hi) = self.config.latency;
        if hi <= lo {
            return lo;
        }
        Duration::from_micros(
            self.dice()
                .random_range(lo.as_micros() as u64..=hi.as_micros() as u64),
        )
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

    fn new_id(&self, inner: &mut Inner) -> i64 {
        if self.config.random_ids {
            loop {
                let id = self.dice().random_range(1_000_000..2_000_000_000i64);
                if inner.used_ids.insert(id) {
                    return id;
                }
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        id
    }

    fn insert(&self, bucket: &str, key: &str, registered: bool) -> i64 {
        let mut inner = self.inner();
        let asset_id = self.new_id(&mut inner);
        let (created, created_wall) = self.made_at(registered);
        let record = AssetRecord {
            asset_id,
            bucket: bucket.into(),
            key: key.into(),
            created,
            created_wall,
            size: self
                .config
                .sizes
                .get(&(bucket.to_owned(), key.to_owned()))
                .copied(),
            registered,
            listed_after: self.list_lag(),
        };
        inner.assets.insert(asset_id, record);
        if registered {
            *inner
                .registrations
                .entry((bucket.into(), key.into()))
                .or_default() += 1;
        }
        asset_id
    }

    /// How late the list shows an asset made now.
    fn list_lag(&self) -> Duration {
        Duration::from_millis(self.list_lag_ms.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Adds (bucket, key) as an asset made outside the API (a console upload).
    pub fn add_foreign(&self, bucket: &str, key: &str) -> i64 {
        self.insert(bucket, key, false)
    }

    /// Registers (bucket, key) as a new asset, as the API does.
    pub fn create(&self, bucket: &str, key: &str) -> i64 {
        self.insert(bucket, key, true)
    }

    pub fn delete(&self, asset_id: i64) -> bool {
        self.inner().assets.remove(&asset_id).is_some()
    }

    pub fn asset(&self, asset_id: i64) -> Option<AssetRecord> {
        self.inner().assets.get(&asset_id).cloned()
    }

    /// How long the import of `asset` takes: the base, plus the time per GB of its size.
    pub fn import_time(&self, asset: &AssetRecord) -> Duration {
        let gb = asset.size.unwrap_or(0) as f64 / 1e9;
        self.config.import_time + self.config.import_time_per_gb.mul_f64(gb)
    }

    /// The upload status of `asset` now.
    pub fn upload_status(&self, asset: &AssetRecord) -> (&'static str, Option<&'static str>) {
        if asset.created.elapsed() < self.import_time(asset) {
            ("IN_PROGRESS", None)
        } else {
            final_status(&asset.key)
        }
    }

    /// One page of the assets the list shows now (those older than the list's lag), in ID
    /// order (or newest first), and how many it shows in all. The first page of a walk may
    /// set off the configured churn, once it is served.
    pub fn page(&self, page_num: u32, page_size: u32) -> (Vec<AssetRecord>, usize) {
        let (page, total) = {
            let inner = self.inner();
            let visible: Vec<&AssetRecord> = if self.config.list_newest_first {
                inner
                    .assets
                    .values()
                    .rev()
                    .filter(|a| a.created.elapsed() >= a.listed_after)
                    .collect()
            } else {
                inner
                    .assets
                    .values()
                    .filter(|a| a.created.elapsed() >= a.listed_after)
                    .collect()
            };
            let skip = (page_num.max(1) as usize - 1) * page_size as usize;
            let page = visible
                .iter()
                .skip(skip)
                .take(page_size as usize)
                .map(|a| (*a).clone())
                .collect();
            (page, visible.len())
        };
        if page_num == 1 {
            self.churn();
        }
        (page, total)
    }

    /// One deletion of an older asset (a console upload's, if any) and one addition, as
    /// someone working in the console between two pages of a walk.
    fn churn(&self) {
        let number = {
            let mut inner = self.inner();
            if inner.churned >= self.config.list_churn {
                return;
            }
            inner.churned += 1;
            let oldest = inner
                .assets
                .values()
                .find(|a| !a.registered)
                .or_else(|| inner.assets.values().next())
                .map(|a| a.asset_id);
            if let Some(id) = oldest {
                inner.assets.remove(&id);
            }
            inner.churned
        };
        let (bucket, key) = (
            self.config.bucket.clone(),
            format!("console/upload-{number}.mp4"),
        );
        let mut inner = self.inner();
        let asset_id = self.new_id(&mut inner);
        let (created, created_wall) = self.made_at(true);
        inner.assets.insert(
            asset_id,
            AssetRecord {
                asset_id,
                bucket,
                key,
                created,
                created_wall,
                size: None,
                registered: false,
                listed_after: self.list_lag(),
            },
        );
    }

    /// The name the list gives an asset.
    pub fn file_name(&self, key: &str) -> String {
        let key = if self.config.normalize_names {
            use unicode_normalization::UnicodeNormalization;
            key.nfc()
                .collect::<String>()
                .trim_start_matches('/')
                .to_owned()
        } else {
            key.to_owned()
        };
        match self.config.file_name {
            FileNameMode::FullKey => key,
            FileNameMode::LastSegment => key.rsplit('/').next().unwrap_or(&key).to_owned(),
        }
    }

    /// For `throttle_then_lose`: the `Retry-After` to answer this key with now, or, when it
    /// comes back, how long after arriving its asset is made (its answer is then lost).
    pub fn throttle_then_lose(&self, key: &str) -> Result<Option<Duration>, Duration> {
        let Some(slow) = &self.config.throttle_then_lose else {
            return Ok(None);
        };
        if !key.contains(slow.containing.as_str()) {
            return Ok(None);
        }
        if self.inner().throttled_once.insert(key.to_owned()) {
            return Err(slow.retry_after);
        }
        Ok(Some(slow.made_after))
    }

    /// Whether this register call is dropped before its asset is made, by
    /// `lose_first_before_containing`: the key's first call only.
    pub fn drop_first_before(&self, key: &str) -> bool {
        self.config
            .lose_first_before_containing
            .as_deref()
            .is_some_and(|text| key.contains(text))
            && self.inner().dropped_once.insert(key.to_owned())
    }

    /// The redirect this call meets, if any.
    pub fn redirect_for(&self, kind: CallKind) -> Option<super::RedirectFault> {
        let fault = self.config.redirect.clone()?;
        if fault.register_only && kind != CallKind::Register {
            return None;
        }
        self.roll(f64::from(fault.percent) / 100.0).then_some(fault)
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

    // ---- analysis

    /// Accepts an analysis of `asset_id`: its index ID, or the status of one still waiting
    /// or running (MI answers 409 then).
    pub fn start_analysis(&self, asset_id: i64) -> Result<i64, &'static str> {
        let mut inner = self.inner();
        if let Some(current) = inner.analyses.get(&asset_id)
            && matches!(current.status, "WAIT_ANALYZE" | "ANALYZING")
        {
            return Err(current.status);
        }
        let index_id = self.new_id(&mut inner);
        let takes = self.config.analysis_time.map(|base| {
            let size = inner.assets.get(&asset_id).and_then(|a| a.size);
            base + self
                .config
                .analysis_time_per_gb
                .mul_f64(size.unwrap_or(0) as f64 / 1e9)
        });
        inner.analyses.insert(
            asset_id,
            AnalysisRecord {
                index_id,
                polls: 0,
                status: "WAIT_ANALYZE",
                started: Instant::now(),
                takes,
            },
        );
        *inner.analyzed.entry(asset_id).or_default() += 1;
        Ok(index_id)
    }

    /// One look at an asset's analysis: it moves on with time (`analysis_time`), or else with
    /// each look, to its final status after the configured number of looks.
    pub fn poll_analysis(&self, asset_id: i64, key: &str) -> Option<AnalysisRecord> {
        let mut inner = self.inner();
        let record = inner.analyses.get_mut(&asset_id)?;
        record.polls += 1;
        let (done, running) = match record.takes {
            Some(takes) => {
                let age = record.started.elapsed();
                (age >= takes, age >= takes / 10)
            }
            None => (record.polls > self.config.analysis_polls, record.polls > 1),
        };
        record.status = match record.status {
            "WAIT_ANALYZE" | "ANALYZING" if done => {
                if key.to_ascii_lowercase().contains("unanalyzable") {
                    "ANALYZE_FAIL"
                } else {
                    "ANALYZE_COMPLETED"
                }
            }
            "WAIT_ANALYZE" if running => "ANALYZING",
            other => other,
        };
        Some(record.clone())
    }

    /// Accepted analysis requests per asset.
    pub fn analyses_accepted(&self) -> HashMap<i64, u32> {
        self.inner().analyzed.clone()
    }

    /// What the registrations and accepted analyses add up to.
    pub fn tally(&self) -> Tally {
        let inner = self.inner();
        let twice = |counts: &mut dyn Iterator<Item = &u32>| counts.filter(|n| **n > 1).count();
        Tally {
            registrations: inner.registrations.values().map(|n| u64::from(*n)).sum(),
            keys: inner.registrations.len(),
            keys_twice: twice(&mut inner.registrations.values()),
            analyses: inner.analyzed.values().map(|n| u64::from(*n)).sum(),
            analysed: inner.analyzed.len(),
            analysed_twice: twice(&mut inner.analyzed.values()),
        }
    }
}

/// What the emulator's registrations and analyses add up to: the figures that prove (or
/// disprove) "never twice".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Registrations (assets made by the register call, preloaded ones not counted).
    pub registrations: u64,
    /// Distinct (bucket, key) registered.
    pub keys: usize,
    /// Keys registered more than once.
    pub keys_twice: usize,
    /// Analysis requests accepted.
    pub analyses: u64,
    /// Distinct assets analysed.
    pub analysed: usize,
    /// Assets analysed more than once.
    pub analysed_twice: usize,
}

/// The emulator's stand-in for what MI finds when it reads the file: markers in the key name
/// decide, so demos and tests can show every final status.
pub fn final_status(key: &str) -> (&'static str, Option<&'static str>) {
    let name = key.to_ascii_lowercase();
    if name.contains("corrupt") {
        (
            "INVALID_METADATA",
            Some("unsupported resolution: 4096x2160"),
        )
    } else if name.contains("missing") {
        (
            "FILE_NOT_EXIST",
            Some("the object does not exist in the bucket"),
        )
    } else if name.contains("broken") {
        ("FAILED", Some("transcoding failed"))
    } else {
        ("COMPLETED", None)
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
