//! The adaptive rule: how the rate reacts to MI's 429s. Pure apart from reading the clock
//! passed in.
//!
//! On a 429 the rate drops to [`BACKOFF_FACTOR`] of what was actually being sent (not of the
//! configured ceiling, which may be far above the service's limit), once per [`COOLDOWN`]:
//! the 429s of requests already in flight belong to the same overshoot. While no 429 comes,
//! the rate climbs back by [`CLIMB_SHARE`] (at least one request per second) each second, up
//! to the ceiling. So the rate settles just under the service's limit, probing it now and
//! then, as TCP's congestion control and the AWS SDKs' adaptive retry mode do.

use std::time::Duration;
use tokio::time::Instant;

/// Share of the measured rate kept after a 429.
pub const BACKOFF_FACTOR: f64 = 0.85;
/// Share of the current rate added per quiet second.
pub const CLIMB_SHARE: f64 = 0.05;
/// One decrease per this long, and no climbing this soon after a 429.
pub const COOLDOWN: Duration = Duration::from_secs(1);
/// The rate never goes below one request per second (or the ceiling, if that is lower).
pub const FLOOR: f64 = 1.0;

/// The adaptive rate of one run.
#[derive(Debug, Clone)]
pub struct Aimd {
    ceiling: f64,
    floor: f64,
    current: f64,
    last_change: Instant,
    last_throttle: Option<Instant>,
}

impl Aimd {
    pub fn new(ceiling: f64, now: Instant) -> Self {
        Self {
            ceiling,
            floor: FLOOR.min(ceiling),
            current: ceiling,
            last_change: now,
            last_throttle: None,
        }
    }

    pub fn current(&self) -> f64 {
        self.current
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// The ceiling changed (a rate schedule's next step): the rate moves to it at once, up or
    /// down, and adapts from there.
    pub fn set_ceiling(&mut self, ceiling: f64, now: Instant) {
        self.ceiling = ceiling;
        self.floor = FLOOR.min(ceiling);
        self.current = ceiling;
        self.last_change = now;
    }

    /// A 429 came back while `measured` requests/s were being started. Returns the new rate
    /// if it changed.
    pub fn throttled(&mut self, measured: f64, now: Instant) -> Option<f64> {
        if self
            .last_throttle
            .is_some_and(|t| now.duration_since(t) < COOLDOWN)
        {
            return None;
        }
        self.last_throttle = Some(now);
        self.last_change = now;
        let base = if measured > 0.0 {
            measured.min(self.current)
        } else {
            self.current
        };
        let next = (base * BACKOFF_FACTOR).max(self.floor);
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }

    /// Time has passed. Returns the new rate if it climbed.
    pub fn tick(&mut self, now: Instant) -> Option<f64> {
        let quiet = self
            .last_throttle
            .is_none_or(|t| now.duration_since(t) >= COOLDOWN);
        let since = now.duration_since(self.last_change);
        if self.current >= self.ceiling || !quiet || since < Duration::from_secs(1) {
            return None;
        }
        let mut next = self.current;
        for _ in 0..since.as_secs() {
            next = (next + (next * CLIMB_SHARE).max(1.0)).min(self.ceiling);
        }
        self.current = next;
        self.last_change = now;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_429_drops_to_a_share_of_the_measured_rate_once_per_cooldown() {
        let mut a = Aimd::new(200.0, Instant::now());
        assert_eq!(
            a.throttled(45.0, Instant::now()),
            Some(45.0 * BACKOFF_FACTOR)
        );
        // More 429s from the same overshoot change nothing.
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(a.throttled(40.0, Instant::now()), None);
        tokio::time::advance(COOLDOWN).await;
        let again = a.throttled(40.0, Instant::now()).unwrap();
        assert_eq!(
            again,
            45.0 * BACKOFF_FACTOR * BACKOFF_FACTOR,
            "from the current rate, below what was measured"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn climbs_back_each_quiet_second_up_to_the_ceiling() {
        let mut a = Aimd::new(50.0, Instant::now());
        a.throttled(20.0, Instant::now());
        assert_eq!(a.current(), 17.0);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            a.tick(Instant::now()),
            None,
            "not within a second of the 429"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(a.tick(Instant::now()), Some(18.0));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            a.tick(Instant::now()),
            Some(50.0),
            "never above the ceiling"
        );
        assert_eq!(a.tick(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn never_below_the_floor_and_untouched_without_429s() {
        let mut a = Aimd::new(3.0, Instant::now());
        for _ in 0..20 {
            a.throttled(1.0, Instant::now());
            tokio::time::advance(COOLDOWN).await;
        }
        assert_eq!(a.current(), FLOOR);
        let mut steady = Aimd::new(100.0, Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(steady.tick(Instant::now()), None);
        assert_eq!(steady.current(), 100.0);
    }

    /// A service that refuses what is over 40 requests in any second, met by a client
    /// configured for 200/s, simulated in 5 ms steps for 100 s.
    #[tokio::test(start_paused = true)]
    async fn settles_near_a_limit_it_cannot_see() {
        use std::collections::VecDeque;
        let (limit, second) = (40, Duration::from_secs(1));
        let mut a = Aimd::new(200.0, Instant::now());
        let (mut starts, mut accepted) = (VecDeque::new(), VecDeque::new());
        let (mut credit, mut sent, mut refused) = (0.0, 0u32, 0u32);
        for _ in 0..20_000 {
            tokio::time::advance(Duration::from_millis(5)).await;
            let now = Instant::now();
            a.tick(now);
            starts.retain(|t: &Instant| now.duration_since(*t) < second);
            accepted.retain(|t: &Instant| now.duration_since(*t) < second);
            credit += a.current() * 0.005;
            while credit >= 1.0 {
                credit -= 1.0;
                starts.push_back(now);
                if accepted.len() < limit {
                    accepted.push_back(now);
                    sent += 1;
                } else {
                    refused += 1;
                    a.throttled(starts.len() as f64, now);
                }
            }
        }
        let achieved = f64::from(sent) / 100.0;
        let refused_share = f64::from(refused) / f64::from(sent + refused);
        assert!(achieved >= 0.8 * limit as f64, "achieved {achieved}/s");
        assert!(
            refused_share < 0.05,
            "{:.1} % of calls refused",
            refused_share * 100.0
        );
    }
}
