//! The adaptive rule: how the rate reacts to MI's 429s. Pure apart from reading the clock
//! passed in.
//!
//! A gateway may answer a steady share of calls 429 whatever the rate (noise), or refuse what
//! is over a limit. The rule tells them apart by what the share does when the rate drops:
//!
//! - Every answer is counted in a sliding window of [`WINDOW`]. The rate reacts only when the
//!   429s in it are at least [`MIN_THROTTLED`] and their share exceeds the noise already
//!   learned by more than chance explains (three standard deviations of a sample that size,
//!   and at least [`TRIGGER_MARGIN`]).
//! - Then the rate drops to [`HEADROOM`] of what MI accepted in the last second (the limit it
//!   keeps, whatever was being sent), sending pauses until that second has passed (so the
//!   service's own window drains), and the 429s of requests already in flight are ignored for
//!   [`COOLDOWN`].
//! - For [`PROBE`] after that, the share is measured again at the lower rate. A limit leaves
//!   no 429 there (or only the noise known): the accepted rate is kept as the known limit. A
//!   share that stays is noise:
//!   the rate goes back to where it was, and that share is what later windows are held
//!   against.
//! - While no 429 wave comes, the rate climbs each second by [`CLIMB_SHARE`] (at least one
//!   request per second), up to [`NEAR`] of a known limit, then by [`SLOW_CLIMB`] only, so it
//!   probes the limit gently; past [`FORGET`] of it the limit is taken to have moved. Never
//!   above the ceiling.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Answers are counted in buckets of this length...
const BUCKET: Duration = Duration::from_millis(100);
/// ...over this window.
pub const WINDOW: Duration = Duration::from_secs(2);
/// The rate reacts to no fewer 429s than this within the window, among no fewer answers than
/// [`MIN_SAMPLE`] (a few calls now and then tell nothing of a limit)...
pub const MIN_THROTTLED: u32 = 3;
pub const MIN_SAMPLE: u32 = 20;
/// Share of the rate kept after a wave while fewer calls are made than the rate allows (so
/// what MI accepted says nothing of its limit).
pub const BACKOFF_FACTOR: f64 = 0.85;
/// ...and to a share of them above the learned noise by more than this.
pub const TRIGGER_MARGIN: f64 = 0.03;
/// After a limit is met, the rate is this share of what MI accepted in the last second.
pub const HEADROOM: f64 = 0.97;
/// 429s this soon after a decrease belong to the same overshoot.
pub const COOLDOWN: Duration = Duration::from_secs(1);
/// How long the share is measured at the lower rate before it is judged noise or a limit.
pub const PROBE: Duration = Duration::from_secs(2);
/// Share of the current rate added per quiet second, away from a known limit.
pub const CLIMB_SHARE: f64 = 0.05;
/// Near a known limit (from this share of it), the climb per second is this share of the rate.
pub const NEAR: f64 = 0.98;
pub const SLOW_CLIMB: f64 = 0.005;
/// A rate this far above the known limit without a 429 wave means the limit moved.
pub const FORGET: f64 = 1.1;
/// A share of 429s above this is never taken for noise.
pub const NOISE_CAP: f64 = 0.20;
/// The rate never goes below one request per second (or the ceiling, if that is lower).
pub const FLOOR: f64 = 1.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Instant,
    answers: u32,
    throttled: u32,
}

/// Answers and 429s over the last [`WINDOW`].
#[derive(Debug, Clone, Default)]
struct Window {
    buckets: VecDeque<Bucket>,
}

impl Window {
    fn trim(&mut self, now: Instant) {
        while self
            .buckets
            .front()
            .is_some_and(|b| now.duration_since(b.start) >= WINDOW)
        {
            self.buckets.pop_front();
        }
    }

    fn record(&mut self, throttled: bool, now: Instant) {
        self.trim(now);
        match self.buckets.back_mut() {
            Some(b) if now.duration_since(b.start) < BUCKET => {
                b.answers += 1;
                b.throttled += u32::from(throttled);
            }
            _ => self.buckets.push_back(Bucket {
                start: now,
                answers: 1,
                throttled: u32::from(throttled),
            }),
        }
    }

    /// Answers and 429s in the window.
    fn totals(&mut self, now: Instant) -> (u32, u32) {
        self.trim(now);
        self.buckets
            .iter()
            .fold((0, 0), |(a, t), b| (a + b.answers, t + b.throttled))
    }

    /// Answers per second since `since` (or over less, if the window holds less).
    fn answer_rate(&self, since: Instant, now: Instant) -> f64 {
        let most = now.duration_since(since).max(BUCKET);
        let recent = || self.buckets.iter().filter(|b| b.start + BUCKET > since);
        let span = recent()
            .next()
            .map_or(most, |b| (now.duration_since(b.start) + BUCKET).min(most));
        f64::from(recent().map(|b| b.answers).sum::<u32>()) / span.as_secs_f64()
    }

    /// Calls MI accepted within the last second, and when the earliest of them came.
    fn accepted_last_second(&self, now: Instant) -> (u32, Option<Instant>) {
        let second = Duration::from_secs(1);
        let recent = self
            .buckets
            .iter()
            .filter(|b| now.duration_since(b.start) < second && b.answers > b.throttled);
        recent.fold((0, None), |(n, first), b| {
            (n + b.answers - b.throttled, first.or(Some(b.start)))
        })
    }
}

/// A decrease whose effect is being measured.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The rate before it.
    before: f64,
    /// What MI accepted in the second before it.
    accepted: f64,
    /// Whether calls were being made as fast as the rate allowed (else what MI accepted says
    /// nothing of a limit).
    bound: bool,
    /// The share of 429s that set it off.
    share: f64,
    /// When the verdict is due.
    ends: Instant,
}

/// What an answer or the passing of time changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// A wave of 429s: the rate is lowered, and nothing is sent for `hold`.
    Lowered { rate: f64, hold: Duration },
    /// The rate climbed.
    Raised(f64),
    /// The share of 429s did not fall with the rate: noise, and the rate is back.
    Noise { rate: f64, share: f64 },
    /// The share fell to nothing with the rate: a limit, kept near `limit`.
    Limit { limit: f64 },
}

/// The adaptive rate of one run.
#[derive(Debug, Clone)]
pub struct Aimd {
    ceiling: f64,
    floor: f64,
    current: f64,
    last_change: Instant,
    last_decrease: Option<Instant>,
    window: Window,
    /// The share of 429s MI answers whatever the rate, as learned.
    noise: f64,
    /// The rate MI was last seen to refuse above.
    known: Option<f64>,
    probe: Option<Probe>,
}

impl Aimd {
    pub fn new(ceiling: f64, now: Instant) -> Self {
        Self {
            ceiling,
            floor: FLOOR.min(ceiling),
            current: ceiling,
            last_change: now,
            last_decrease: None,
            window: Window::default(),
            noise: 0.0,
            known: None,
            probe: None,
        }
    }

    pub fn current(&self) -> f64 {
        self.current
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// The limit MI was seen to keep, if one was met.
    pub fn known_limit(&self) -> Option<f64> {
        self.known
    }

    /// The ceiling changed (a rate schedule's next step): the rate moves to it at once, up or
    /// down, and adapts from there.
    pub fn set_ceiling(&mut self, ceiling: f64, now: Instant) {
        self.ceiling = ceiling;
        self.floor = FLOOR.min(ceiling);
        self.current = ceiling;
        self.last_change = now;
        self.probe = None;
    }

    /// The share of 429s above which a window is a wave: the noise learned, plus what chance
    /// gives a sample of `answers` of it (three standard deviations), and never less than
    /// [`TRIGGER_MARGIN`] above it.
    fn threshold(&self, answers: u32) -> f64 {
        let spread = (self.noise * (1.0 - self.noise) / f64::from(answers.max(1))).sqrt();
        self.noise + (3.0 * spread).max(TRIGGER_MARGIN)
    }

    /// The fewest answers over `span` that say anything: [`MIN_SAMPLE`], or half of what the
    /// current rate can give in it, if that is fewer.
    fn min_sample(&self, span: Duration) -> u32 {
        let half = (self.current * span.as_secs_f64() / 2.0) as u32;
        half.clamp(MIN_THROTTLED, MIN_SAMPLE)
    }

    fn cooling(&self, now: Instant) -> bool {
        self.last_decrease
            .is_some_and(|t| now.duration_since(t) < COOLDOWN)
    }

    /// MI answered a call (`throttled`: with a 429).
    pub fn answered(&mut self, throttled: bool, now: Instant) -> Option<Change> {
        if self.cooling(now) {
            return None;
        }
        self.window.record(throttled, now);
        if !throttled || self.probe.is_some() {
            return None;
        }
        let (answers, refused) = self.window.totals(now);
        let share = f64::from(refused) / f64::from(answers.max(1));
        if refused < MIN_THROTTLED
            || answers < self.min_sample(WINDOW)
            || share <= self.threshold(answers)
        {
            return None;
        }
        let (accepted, first) = self.window.accepted_last_second(now);
        let accepted = f64::from(accepted);
        let since = self
            .last_change
            .max(now - Duration::from_secs(1).min(now - self.last_change));
        let bound = self.window.answer_rate(since, now) >= self.current / 2.0;
        let next = if bound {
            accepted * HEADROOM
        } else {
            self.current * BACKOFF_FACTOR
        }
        .clamp(self.floor, self.current.max(self.floor));
        let hold = first.map_or(Duration::ZERO, |f| {
            (f + Duration::from_secs(1)).saturating_duration_since(now)
        });
        self.probe = Some(Probe {
            before: self.current,
            accepted,
            bound,
            share,
            ends: now + COOLDOWN + PROBE,
        });
        self.window = Window::default();
        self.last_decrease = Some(now);
        self.last_change = now;
        self.current = next;
        Some(Change::Lowered { rate: next, hold })
    }

    /// Time has passed: a probe's verdict, or a climb.
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        if let Some(probe) = self.probe.filter(|p| now >= p.ends) {
            self.probe = None;
            let (answers, refused) = self.window.totals(now);
            let share = f64::from(refused) / f64::from(answers.max(1));
            self.last_change = now;
            if answers < self.min_sample(PROBE) {
                // Too few calls at the lower rate to tell: as it was.
                self.current = probe.before;
                return Some(Change::Raised(self.current));
            }
            // A limit leaves the lower rate without 429s, or with only the noise already known;
            // noise stays whatever the rate.
            let fell = refused == 0
                || share <= probe.share / 4.0
                || (self.noise > 0.0 && share <= self.noise + TRIGGER_MARGIN / 2.0);
            if fell || share > NOISE_CAP {
                if !probe.bound {
                    return None;
                }
                let limit = probe.accepted.max(self.floor);
                self.known = Some(limit);
                return Some(Change::Limit { limit });
            }
            self.noise = self.noise.max(share).min(NOISE_CAP);
            self.current = probe.before;
            return Some(Change::Noise {
                rate: self.current,
                share,
            });
        }
        let since = now.duration_since(self.last_change);
        if self.current >= self.ceiling
            || self.probe.is_some()
            || self.cooling(now)
            || since < Duration::from_secs(1)
        {
            return None;
        }
        let mut next = self.current;
        for _ in 0..since.as_secs() {
            next = match self.known {
                Some(limit) if next >= NEAR * limit => next + (next * SLOW_CLIMB).max(0.05),
                Some(limit) => (next + (next * CLIMB_SHARE).max(1.0)).min(NEAR * limit),
                None => next + (next * CLIMB_SHARE).max(1.0),
            }
            .min(self.ceiling);
        }
        if self.known.is_some_and(|limit| next > FORGET * limit) {
            self.known = None;
        }
        self.current = next;
        self.last_change = now;
        Some(Change::Raised(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// A client at `ceiling` following the rule, against `service` (true: accepted), in 5 ms
    /// steps for `seconds`. Returns calls accepted per second and the share refused.
    async fn simulate(
        ceiling: f64,
        seconds: u32,
        mut service: impl FnMut(Instant) -> bool,
    ) -> (f64, f64) {
        let mut a = Aimd::new(ceiling, Instant::now());
        let (mut credit, mut sent, mut refused) = (0.0, 0u32, 0u32);
        let mut hold_until = Instant::now();
        for _ in 0..seconds * 200 {
            tokio::time::advance(Duration::from_millis(5)).await;
            let now = Instant::now();
            a.tick(now);
            if now < hold_until {
                continue;
            }
            credit = (credit + a.current() * 0.005).min(a.current() * 0.05 + 1.0);
            while credit >= 1.0 {
                credit -= 1.0;
                let accepted = service(now);
                if accepted {
                    sent += 1;
                } else {
                    refused += 1;
                }
                if let Some(Change::Lowered { hold, .. }) = a.answered(!accepted, now) {
                    hold_until = now + hold;
                    credit = 0.0;
                    break;
                }
            }
        }
        let achieved = f64::from(sent) / f64::from(seconds);
        eprintln!(
            "achieved {achieved:.1}/s, {:.2} % refused",
            100.0 * f64::from(refused) / f64::from(sent + refused)
        );
        (achieved, f64::from(refused) / f64::from(sent + refused))
    }

    /// A service that refuses what is over `limit` calls in any second.
    fn hard_limit(limit: usize) -> impl FnMut(Instant) -> bool {
        let mut accepted = VecDeque::new();
        move |now| {
            accepted.retain(|t: &Instant| now.duration_since(*t) < Duration::from_secs(1));
            let room = accepted.len() < limit;
            if room {
                accepted.push_back(now);
            }
            room
        }
    }

    #[tokio::test(start_paused = true)]
    async fn settles_near_a_limit_it_cannot_see_and_rarely_crosses_it() {
        let (achieved, refused) = simulate(200.0, 100, hard_limit(40)).await;
        assert!(achieved >= 36.0, "achieved {achieved:.1}/s");
        assert!(refused <= 0.02, "{:.2} % of calls refused", refused * 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_share_of_429s_whatever_the_rate_is_noise_not_a_limit() {
        let mut dice = StdRng::seed_from_u64(7);
        let (achieved, _) = simulate(100.0, 100, move |_| !dice.random_bool(0.02)).await;
        assert!(achieved >= 90.0, "achieved {achieved:.1}/s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenth_of_calls_refused_at_random_is_noise_too() {
        let mut dice = StdRng::seed_from_u64(3);
        let (achieved, _) = simulate(50.0, 100, move |_| !dice.random_bool(0.10)).await;
        assert!(achieved >= 0.85 * 50.0, "achieved {achieved:.1}/s");
    }

    #[tokio::test(start_paused = true)]
    async fn noise_on_top_of_a_limit_still_finds_the_limit() {
        let mut dice = StdRng::seed_from_u64(11);
        let mut limit = hard_limit(40);
        let (achieved, refused) =
            simulate(200.0, 100, move |now| !dice.random_bool(0.02) && limit(now)).await;
        assert!(achieved >= 34.0, "achieved {achieved:.1}/s");
        assert!(refused <= 0.05, "{:.2} % of calls refused", refused * 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wave_lowers_to_what_was_accepted_and_a_quiet_probe_keeps_it_as_the_limit() {
        let mut a = Aimd::new(200.0, Instant::now());
        let start = Instant::now();
        for i in 0..40 {
            assert_eq!(
                a.answered(false, start + Duration::from_millis(i * 5)),
                None
            );
        }
        tokio::time::advance(Duration::from_millis(250)).await;
        let now = Instant::now();
        assert_eq!(a.answered(true, now), None, "one 429 is not a wave");
        assert_eq!(a.answered(true, now), None);
        let Some(Change::Lowered { rate, hold }) = a.answered(true, now) else {
            panic!("three 429s among 43 answers are a wave");
        };
        assert_eq!(rate, 40.0 * HEADROOM);
        assert!(
            hold > Duration::from_millis(600),
            "waits out the second MI counted: {hold:?}"
        );
        assert_eq!(a.answered(true, now), None, "the same overshoot");
        tokio::time::advance(COOLDOWN).await;
        for _ in 0..38 {
            tokio::time::advance(Duration::from_millis(50)).await;
            assert_eq!(a.answered(false, Instant::now()), None);
        }
        tokio::time::advance(PROBE - Duration::from_millis(1900)).await;
        assert_eq!(a.tick(Instant::now()), Some(Change::Limit { limit: 40.0 }));
        assert_eq!(a.known_limit(), Some(40.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_that_stays_at_the_lower_rate_restores_the_rate() {
        let mut a = Aimd::new(100.0, Instant::now());
        for _ in 0..30 {
            a.answered(false, Instant::now());
        }
        for _ in 0..3 {
            a.answered(true, Instant::now());
        }
        assert!(a.current() < 100.0);
        tokio::time::advance(COOLDOWN).await;
        for i in 0..100 {
            a.answered(i % 20 == 0, Instant::now());
            tokio::time::advance(Duration::from_millis(15)).await;
        }
        tokio::time::advance(PROBE - Duration::from_millis(1500)).await;
        let Some(Change::Noise { rate, share }) = a.tick(Instant::now()) else {
            panic!("the share stayed: noise");
        };
        assert_eq!(rate, 100.0, "the rate is back");
        assert!((0.04..=0.05).contains(&share), "{share}");
        for i in 0..100 {
            assert_eq!(
                a.answered(i % 20 == 0, Instant::now()),
                None,
                "noise is learned"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn climbs_back_each_quiet_second_up_to_the_ceiling() {
        let mut a = Aimd::new(50.0, Instant::now());
        a.known = Some(30.0);
        a.current = 20.0;
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(a.tick(Instant::now()), None, "not within a second");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(a.tick(Instant::now()), Some(Change::Raised(21.0)));
        tokio::time::advance(Duration::from_secs(10)).await;
        a.tick(Instant::now());
        assert!(
            a.current() > NEAR * 30.0 && a.current() < 30.0,
            "fast up to near the known limit, then slow: {}",
            a.current()
        );
        tokio::time::advance(Duration::from_secs(600)).await;
        a.tick(Instant::now());
        assert_eq!(
            a.current(),
            50.0,
            "the limit moved, and never above the ceiling"
        );
        assert_eq!(a.known_limit(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn never_below_the_floor_and_untouched_without_429s() {
        let mut a = Aimd::new(3.0, Instant::now());
        for _ in 0..20 {
            for _ in 0..5 {
                a.answered(true, Instant::now());
            }
            tokio::time::advance(COOLDOWN).await;
            for _ in 0..4 {
                tokio::time::advance(Duration::from_millis(400)).await;
                a.answered(false, Instant::now());
            }
            tokio::time::advance(PROBE - Duration::from_millis(1600)).await;
            a.tick(Instant::now());
        }
        assert_eq!(a.current(), FLOOR);
        let mut steady = Aimd::new(100.0, Instant::now());
        for _ in 0..1000 {
            steady.answered(false, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(steady.tick(Instant::now()), None);
        assert_eq!(steady.current(), 100.0);
    }
}
