//! When to look at an import's status: when it is likely done, by what this project's own
//! imports have taken. Pure: the confirmation loop feeds it what each look found.
//!
//! Imports are grouped by size (a bin per power of two of bytes; one bin for unknown sizes).
//! For each bin the model keeps a bracket: the longest time an import was still in progress
//! (`lo`) and the shortest time within which one was found done (`hi`). An asset is first
//! looked at a little after `hi`: most imports of its size are done by then, so most keys cost
//! one look. A few keys of a bin whose bracket is still wide are looked at in its middle
//! (probes), which narrows it. A bin with no completion yet has one probe at a time, looked at
//! again each time a quarter of its age has passed (so it is seen done at most a quarter late);
//! the other keys of that bin wait for what it finds.
//!
//! Only what the model itself planned teaches it. An asset registered before it began
//! watching (left by an earlier run, or settled by `resolve`) is looked at at once, and what
//! that late look finds says nothing of how long imports take: learning from it would make
//! every later import of its size wait as long as that asset had waited. Likewise an import
//! still in progress long past what its size takes (stuck in MI) does not push the other
//! imports' looks later.

use std::collections::HashMap;
use std::time::Duration;

/// A probe is looked at again when this share of its age has passed.
const PROBE_SHARE: f64 = 0.25;
/// The longest gap between two looks at one asset.
pub const MAX_GAP: Duration = Duration::from_secs(300);
/// Added to a bin's `hi`, in share of it and in time: a look a little late costs nothing,
/// one too early costs a request.
const MARGIN_SHARE: f64 = 0.05;
const MARGIN: Duration = Duration::from_millis(500);
/// A bracket narrower than this share of its `hi` is tight enough: no more probes.
const TIGHT_SHARE: f64 = 0.10;
/// Every this many keys of a bin with a wide bracket, one is a probe.
const PROBE_EVERY: u64 = 16;
/// An import seen in progress raises its bin's `lo` only while its age is within this many
/// times the bin's `hi`: beyond, it is an outlier, not a measure of its size's imports.
const OUTLIER: i64 = 4;

/// What the model knows of one size bin (ms since registration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bracket {
    /// The longest an import of this bin was seen still in progress.
    pub lo: i64,
    /// The shortest time within which one was seen done (`None`: none was yet).
    pub hi: Option<i64>,
    /// Keys planned in this bin (to pick every n-th as a probe).
    planned: u64,
}

/// When to look first at a newly registered asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstLook {
    /// This long after registration.
    After(Duration),
    /// Nothing is known of its bin: ask again after the run's defer floor
    /// (`runner::pace::DEFER` unless lowered).
    Wait,
}

/// What one kind of work (imports, or analyses) has taken in this project, by size: when to
/// look at each piece of it.
#[derive(Debug, Clone)]
pub struct WorkTimes {
    bins: HashMap<i32, Bracket>,
    /// Bins with a probe out (a key being looked at on the doubling schedule).
    probing: HashMap<i32, i64>,
    /// When it began watching (Unix ms): assets registered before are caught up with.
    since: i64,
    /// A probe is looked at again when this share of its age has passed (0: [`PROBE_SHARE`]).
    probe_share: f64,
    /// The first look at anything, and the shortest gap between two looks (the run's floor,
    /// `runner::pace::FIRST_LOOK` unless lowered).
    first_look: Duration,
}

/// The bin of an object's size: its power of two (`-1` when unknown).
pub fn bin_of(size: Option<u64>) -> i32 {
    match size {
        Some(bytes) => 64 - bytes.max(1).leading_zeros() as i32,
        None => -1,
    }
}

impl Default for WorkTimes {
    /// Nothing learned, watching from the epoch, first looks at the default floor.
    fn default() -> Self {
        Self::with_bins(HashMap::new(), 0, super::pace::FIRST_LOOK)
    }
}

impl WorkTimes {
    /// A model seeded with what earlier runs learned, watching from `since` (Unix ms), its
    /// first looks `first_look` after registration.
    pub fn with_bins(
        bins: HashMap<i32, (i64, Option<i64>)>,
        since: i64,
        first_look: Duration,
    ) -> Self {
        Self {
            bins: bins
                .into_iter()
                .map(|(bin, (lo, hi))| (bin, Bracket { lo, hi, planned: 0 }))
                .collect(),
            probing: HashMap::new(),
            since,
            probe_share: PROBE_SHARE,
            first_look,
        }
    }

    /// The gap after a look found an asset registered before it watched still in progress,
    /// `age` after its registration.
    pub fn probe_gap(&self, age: i64) -> Duration {
        ms(age)
            .mul_f64(PROBE_SHARE)
            .max(self.first_look)
            .min(MAX_GAP)
    }

    /// The same, its probes looked at again each time `share` of their age has passed: a
    /// finer share costs a few more looks at the first of a size and places every other
    /// look closer to when it is done (worth it for work as long as an analysis).
    pub fn with_probe_share(mut self, share: f64) -> Self {
        self.probe_share = share;
        self
    }

    /// Whether an asset registered at `registered_at` (Unix ms) was registered while this
    /// model watched. One registered before is overdue: it is looked at now, then on
    /// [`Self::probe_gap`]s while in progress, and teaches nothing.
    pub fn watched(&self, registered_at: i64) -> bool {
        registered_at >= self.since
    }

    /// What it knows, to keep for the next run: bin → (lo, hi).
    pub fn bins(&self) -> HashMap<i32, (i64, Option<i64>)> {
        self.bins.iter().map(|(b, k)| (*b, (k.lo, k.hi))).collect()
    }

    /// When to first look at `key` (a row id) of `size`, registered `age` ago.
    pub fn first_look(&mut self, key: i64, size: Option<u64>) -> FirstLook {
        let bin = bin_of(size);
        let bracket = self.bins.entry(bin).or_default();
        bracket.planned += 1;
        match bracket.hi {
            Some(hi) if hi > bracket.lo => {
                let wide = (hi - bracket.lo) as f64 > hi as f64 * TIGHT_SHARE;
                if wide && bracket.planned.is_multiple_of(PROBE_EVERY) {
                    return FirstLook::After(ms((bracket.lo + hi) / 2));
                }
                FirstLook::After(ms(hi) + ms(hi).mul_f64(MARGIN_SHARE) + MARGIN)
            }
            // Imports of this size took longer than the shortest one seen done: be generous.
            Some(_) => {
                let lo = ms(bracket.lo);
                FirstLook::After(lo + lo.mul_f64(MARGIN_SHARE * 2.0) + MARGIN)
            }
            None => match self.probing.get(&bin) {
                Some(probe) if *probe != key => FirstLook::Wait,
                _ => {
                    self.probing.insert(bin, key);
                    FirstLook::After(self.first_look)
                }
            },
        }
    }

    /// Whether an import of `size` was seen done (its bin has something learned).
    pub fn knows(&self, size: Option<u64>) -> bool {
        self.bins.get(&bin_of(size)).is_some_and(|b| b.hi.is_some())
    }

    /// `key` of `size` ended otherwise than completed (its import failed): it tells nothing
    /// of how long imports take, but it is no longer its bin's probe.
    pub fn failed(&mut self, key: i64, size: Option<u64>) {
        let bin = bin_of(size);
        if self.probing.get(&bin) == Some(&key) {
            self.probing.remove(&bin);
        }
    }

    /// A look at `key` of `size`, `age` after registration (the previous look `before`, if
    /// any), found it `done` or still in progress. Returns when to look again if in progress.
    pub fn looked(
        &mut self,
        key: i64,
        size: Option<u64>,
        age: i64,
        before: Option<i64>,
        done: bool,
    ) -> Duration {
        let bin = bin_of(size);
        let bracket = self.bins.entry(bin).or_default();
        if done {
            bracket.hi = Some(bracket.hi.map_or(age, |hi| hi.min(age)));
            if let Some(before) = before {
                bracket.raise_lo(before);
            }
            if self.probing.get(&bin) == Some(&key) {
                self.probing.remove(&bin);
            }
            return Duration::ZERO;
        }
        bracket.raise_lo(age);
        let probing = self.probing.get(&bin) == Some(&key) || bracket.hi.is_none();
        match bracket.hi {
            // Past what the bin's imports took: a little more should do.
            Some(hi) if !probing => {
                let guess = (hi.max(bracket.lo) - age).max(0);
                ms(guess)
                    .max(ms(hi).mul_f64(TIGHT_SHARE))
                    .max(self.first_look)
            }
            _ => {
                let share = if self.probe_share > 0.0 {
                    self.probe_share
                } else {
                    PROBE_SHARE
                };
                ms(age).mul_f64(share).max(self.first_look).min(MAX_GAP)
            }
        }
    }
}

impl Bracket {
    /// An import of this bin was still in progress `age` after registration.
    fn raise_lo(&mut self, age: i64) {
        if self.hi.is_none_or(|hi| age <= hi.saturating_mul(OUTLIER)) {
            self.lo = self.lo.max(age);
        }
    }
}

fn ms(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::pace::FIRST_LOOK;

    const GB: u64 = 1 << 30;

    /// Imports that take `took` ms each, looked at as the model says: how many looks each.
    fn looks_per_key(model: &mut WorkTimes, keys: i64, took: i64, size: Option<u64>) -> f64 {
        let mut total = 0;
        for key in 0..keys {
            let mut at = match model.first_look(key, size) {
                FirstLook::After(d) => d.as_millis() as i64,
                FirstLook::Wait => continue,
            };
            let mut before = None;
            loop {
                total += 1;
                let done = at >= took;
                let gap = model.looked(key, size, at, before, done);
                if done {
                    break;
                }
                before = Some(at);
                at += gap.as_millis() as i64;
            }
        }
        total as f64 / keys as f64
    }

    #[test]
    fn a_bin_with_nothing_learned_sends_one_probe_and_holds_the_rest() {
        let mut model = WorkTimes::default();
        assert_eq!(model.first_look(1, Some(GB)), FirstLook::After(FIRST_LOOK));
        assert_eq!(model.first_look(2, Some(GB)), FirstLook::Wait);
        assert_eq!(
            model.first_look(3, Some(GB / 1000)),
            FirstLook::After(FIRST_LOOK),
            "another bin"
        );
        // The probe is still importing after 3 s and 6 s, done at 12 s.
        assert_eq!(model.looked(1, Some(GB), 3_000, None, false), FIRST_LOOK);
        assert_eq!(
            model.looked(1, Some(GB), 6_000, Some(3_000), false),
            FIRST_LOOK
        );
        model.looked(1, Some(GB), 12_000, Some(6_000), true);
        match model.first_look(2, Some(GB)) {
            FirstLook::After(d) => assert!(
                d >= Duration::from_secs(12) && d < Duration::from_secs(14),
                "{d:?}"
            ),
            FirstLook::Wait => panic!("learned"),
        }
    }

    #[test]
    fn a_minute_long_import_settles_near_one_look_per_key() {
        let mut model = WorkTimes::default();
        // The probe: looked at 3, 6, 9, 12, 15, 18.8 … 57.2 s (in progress), 71.5 s (done):
        // twelve looks, once for the whole bin.
        let first = looks_per_key(&mut model, 1, 60_000, Some(GB));
        assert_eq!(first, 12.0);
        let rest = looks_per_key(&mut model, 3000, 60_000, Some(GB));
        assert!(rest <= 1.05, "{rest} looks per key");
        // And it learned the minute: keys are looked at soon after it, not at 93 s.
        match model.first_look(99_999, Some(GB)) {
            FirstLook::After(d) => assert!(d < Duration::from_secs(66), "{d:?}"),
            FirstLook::Wait => panic!(),
        }
    }

    #[test]
    fn slower_imports_than_learned_raise_the_bracket() {
        let mut model = WorkTimes::with_bins(
            HashMap::from([(bin_of(Some(GB)), (50_000, Some(60_000)))]),
            0,
            FIRST_LOOK,
        );
        let looks = looks_per_key(&mut model, 200, 90_000, Some(GB));
        assert!(looks < 2.2, "{looks}");
        let (lo, _) = model.bins()[&bin_of(Some(GB))];
        assert!(lo >= 60_000, "{lo}");
    }

    #[test]
    fn an_import_stuck_in_mi_does_not_make_the_others_wait() {
        let mut model = WorkTimes::default();
        looks_per_key(&mut model, 20, 10_000, Some(GB));
        // One import of the bin stays in progress for an hour, looked at on its gaps.
        let mut age = 3_000;
        let mut before = None;
        while age < 3_600_000 {
            let gap = model.looked(7_777, Some(GB), age, before, false);
            before = Some(age);
            age += gap.as_millis() as i64;
        }
        let (lo, hi) = model.bins()[&bin_of(Some(GB))];
        assert!(lo <= hi.unwrap() * OUTLIER, "lo {lo}, hi {hi:?}");
        match model.first_look(99_999, Some(GB)) {
            FirstLook::After(d) => assert!(d < Duration::from_secs(60), "{d:?}"),
            FirstLook::Wait => panic!("learned"),
        }
    }

    #[test]
    fn only_assets_registered_while_it_watched_are_planned() {
        let model = WorkTimes::with_bins(HashMap::new(), 1_000, FIRST_LOOK);
        assert!(!model.watched(999));
        assert!(model.watched(1_000));
        // An overdue asset still in progress after an hour is looked at again on the longest gap.
        assert_eq!(model.probe_gap(3_600_000), MAX_GAP);
        // A lowered floor is the shortest gap.
        let quick = WorkTimes::with_bins(HashMap::new(), 0, Duration::from_millis(100));
        assert_eq!(quick.probe_gap(200), Duration::from_millis(100));
    }

    #[test]
    fn sizes_fall_in_power_of_two_bins() {
        assert_eq!(bin_of(None), -1);
        assert_eq!(bin_of(Some(1)), 1);
        assert_eq!(bin_of(Some(1024)), 11);
        assert_eq!(bin_of(Some(1500)), 11);
        assert_eq!(bin_of(Some(2048)), 12);
    }
}
