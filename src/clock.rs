//! The program's one clock. Every wait is on tokio's time, and so is every "now" the ledger,
//! the runner and the emulator read: [`now`] is tokio's instant, anchored once to the wall
//! clock. In a run the two agree; on a paused test runtime time moves only as tokio's does,
//! so a test can take the runner through minutes of waiting in milliseconds, and the
//! ledger's times agree with its sleeps.
//!
//! Some readings stay on the wall clock, because they are about the machine's clock itself or
//! for people: a request's signature timestamp (the gateway refuses one five minutes off,
//! `api::signer`), `check`'s comparison with the gateway's `Date`, the time of day a `--rate`
//! schedule or a log line names, and the `started_at`/`finished_at` text of the `runs` table
//! (SQLite's own clock, for people reading `status`).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall clock and tokio's (monotonic) clock at the moment the program first asked.
static ANCHOR: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();

/// Now: the wall clock at the anchor plus tokio's time since.
pub fn now() -> SystemTime {
    let (wall, at) = *ANCHOR.get_or_init(|| (SystemTime::now(), std::time::Instant::now()));
    let now = tokio::time::Instant::now().into_std();
    match now.checked_duration_since(at) {
        Some(since) => wall + since,
        // A paused test runtime started before the anchor was taken.
        None => wall - at.duration_since(now),
    }
}

/// Now, in milliseconds since the Unix epoch: the ledger's unit of time.
pub fn now_ms() -> i64 {
    epoch_ms(now())
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A ledger time as text for people and reports: RFC 3339, UTC, milliseconds.
pub fn ms_text(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_it_is_the_wall_clock() {
        let wall = epoch_ms(SystemTime::now());
        assert!((now_ms() - wall).abs() < 1_000, "{} vs {wall}", now_ms());
    }

    /// On a paused runtime, "now" moves with tokio's time and only with it.
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_now_moves_with_the_sleeps() {
        let before = now_ms();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let after = now_ms();
        assert!(
            (after - before - 3_600_000).abs() < 50,
            "{}",
            after - before
        );
        let blocked = tokio::task::spawn_blocking(now_ms).await.unwrap();
        assert!(
            (blocked - after).abs() < 50,
            "a blocking task reads the same clock"
        );
    }

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(ms_text(1_500), "1970-01-01T00:00:01.500Z");
    }
}
