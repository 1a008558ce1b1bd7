//! When to try again, and how long to wait first. Pure apart from the sleep.
//!
//! Each answer says what it means for its key through [`Disposition`] (the API error type
//! decides, see `api::error`); this module turns "retry" into a capped exponential backoff with
//! full jitter, honouring a server's `Retry-After`, and stops early on shutdown.

use rand::Rng;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// First backoff ceiling: short enough that one 503 costs little.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Longest wait between two attempts of one key (and the cap on a server's `Retry-After`), so
/// a misbehaving header cannot park a key for hours.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// What one answer means for the key it was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done: the call did what was asked.
    Success,
    /// Not processed; safe to send again, after `after` if the server said so.
    Retry { after: Option<Duration> },
    /// The request may have reached the server; the outcome is unknown.
    Uncertain,
    /// The service refused this key; sending it again would not help.
    Permanent,
    /// Nothing will succeed (credentials, permission, workspace or project): stop the run.
    Fatal,
    /// No request was sent: the run is stopping. Never retried.
    Abandoned,
}

/// Something that knows whether it is worth another attempt.
pub trait Retryable {
    fn disposition(&self) -> Disposition;
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: BACKOFF_BASE,
            cap: BACKOFF_CAP,
        }
    }
}

impl Backoff {
    /// The longest wait after the `attempt`-th failure (1-based): base × 2^(attempt−1), capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait after the `attempt`-th failure: a server's `Retry-After` when given (capped),
    /// else a uniform draw in [0, ceiling], which spreads many workers' retries apart.
    pub fn next_delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        match retry_after {
            Some(after) => after.min(self.cap),
            None => {
                let ceiling = self.ceiling(attempt).as_micros() as u64;
                Duration::from_micros(rng.random_range(0..=ceiling))
            }
        }
    }
}

/// How a retried operation ended.
#[derive(Debug)]
pub struct Finished<T> {
    /// The last answer.
    pub last: T,
    /// Attempts made, counting the last.
    pub attempts: u32,
    /// Shutdown came during a backoff: the last answer was retryable but no retry was made.
    pub interrupted: bool,
}

/// Calls `attempt(n)` until its answer is not `Retry`, `max_attempts` is reached, or shutdown
/// is requested while waiting to retry.
pub async fn with_retries<T, F, Fut>(
    max_attempts: u32,
    backoff: Backoff,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Finished<T>
where
    T: Retryable,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = T>,
{
    let mut n = 1;
    loop {
        let last = attempt(n).await;
        let Disposition::Retry { after } = last.disposition() else {
            return Finished {
                last,
                attempts: n,
                interrupted: false,
            };
        };
        if n >= max_attempts {
            return Finished {
                last,
                attempts: n,
                interrupted: false,
            };
        }
        let delay = backoff.next_delay(n, after, &mut rand::rng());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Finished { last, attempts: n, interrupted: true },
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tokio::time::Instant;

    #[derive(Debug)]
    struct Answer(Disposition);
    impl Retryable for Answer {
        fn disposition(&self) -> Disposition {
            self.0
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let got: Vec<_> = (1..=6).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(200), Duration::from_secs(1));
    }

    #[test]
    fn jittered_delay_stays_within_ceiling_and_varies() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<_> = (0..200).map(|_| b.next_delay(3, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= b.ceiling(3)));
        assert!(delays.iter().any(|d| *d < b.ceiling(3) / 4));
        assert!(delays.iter().any(|d| *d > b.ceiling(3) * 3 / 4));
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            b.next_delay(1, Some(Duration::from_secs(7)), &mut rng),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.next_delay(1, Some(Duration::from_secs(3600)), &mut rng),
            BACKOFF_CAP
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_waiting_between_attempts() {
        let token = CancellationToken::new();
        let start = Instant::now();
        let mut seen = Vec::new();
        let after = Some(Duration::from_secs(2));
        let done = with_retries(5, Backoff::default(), &token, |n| {
            seen.push(Instant::now() - start);
            async move {
                if n < 3 {
                    Answer(Disposition::Retry { after })
                } else {
                    Answer(Disposition::Success)
                }
            }
        })
        .await;
        assert_eq!(done.attempts, 3);
        assert_eq!(done.last.0, Disposition::Success);
        assert_eq!(
            seen,
            vec![
                Duration::ZERO,
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts_and_never_retries_uncertain() {
        let token = CancellationToken::new();
        let done = with_retries(4, Backoff::default(), &token, |_| async {
            Answer(Disposition::Retry { after: None })
        })
        .await;
        assert_eq!((done.attempts, done.interrupted), (4, false));

        let mut calls = 0;
        let done = with_retries(4, Backoff::default(), &token, |_| {
            calls += 1;
            async { Answer(Disposition::Uncertain) }
        })
        .await;
        assert_eq!((done.attempts, calls), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_backoff_returns_at_once() {
        let token = CancellationToken::new();
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.cancel();
        });
        let start = Instant::now();
        let done = with_retries(5, Backoff::default(), &token, |_| async {
            Answer(Disposition::Retry {
                after: Some(Duration::from_secs(30)),
            })
        })
        .await;
        assert!(done.interrupted);
        assert_eq!(done.attempts, 1);
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }
}
