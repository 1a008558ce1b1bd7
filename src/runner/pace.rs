//! How a run paces itself beyond the limiter: how many attempts a request gets, how long the
//! asset list may take to show a new asset, and the floors the protocol builds into its
//! waits. Each floor keeps today's value unless the hidden `MI_IMPORT_FLOORS` lowers it, which
//! only the tests do (docs/design.md, "Floors"); one test per floor still runs at its default.

use std::time::Duration;

/// Names the floors a test may lower, as `heartbeat=200ms,late-slack=100ms,…`.
pub const FLOORS_VARIABLE: &str = "MI_IMPORT_FLOORS";

/// No request leaves more than this after its run's last commit: a key claimed long before
/// (waiting on the rate limiter or a backoff) is sent only once a commit has stamped the
/// run's heartbeat this recently, so a killed run's unknown moments stay close to it.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Added to the slowest answer a dead run got, for the moment its unanswered requests are
/// given up: MI may take a little longer on one request than on the others.
pub const LATE_SLACK: Duration = Duration::from_secs(2);
/// The first look at a new asset's import status, or at a requested analysis, waits this
/// long: MI needs a moment, and a look too early costs a request.
pub const FIRST_LOOK: Duration = Duration::from_secs(3);
/// A key whose size has nothing learned yet (one of its size is being probed) waits this
/// long before it is considered again.
pub const DEFER: Duration = Duration::from_secs(15);
/// Due import-status looks are gathered this long before a pass over the list, so that one
/// pass serves many.
pub const LIST_GATHER: Duration = Duration::from_secs(10);

/// How a run paces itself, beyond the limiter.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub max_attempts: u32,
    /// How long MI's asset list may take to show a new asset: absence proves nothing sooner
    /// (`--list-settle`).
    pub list_settle: Duration,
    pub floors: Floors,
}

/// The waits built into the protocol, each at its constant above unless lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floors {
    /// [`HEARTBEAT`]; recorded with the run, so a later run dates its unknown moments by the
    /// floor it kept.
    pub heartbeat: Duration,
    /// [`LATE_SLACK`].
    pub late_slack: Duration,
    /// [`FIRST_LOOK`].
    pub first_look: Duration,
    /// [`DEFER`].
    pub defer: Duration,
    /// [`LIST_GATHER`].
    pub list_gather: Duration,
}

impl Default for Floors {
    fn default() -> Self {
        Self {
            heartbeat: HEARTBEAT,
            late_slack: LATE_SLACK,
            first_look: FIRST_LOOK,
            defer: DEFER,
            list_gather: LIST_GATHER,
        }
    }
}

impl Floors {
    /// The defaults, with those `text` names lowered: `name=duration` pairs, comma-separated
    /// (`heartbeat`, `late-slack`, `first-look`, `defer`, `gather`). A floor is only ever
    /// lowered: a value above the default is refused, as is a zero heartbeat (every request
    /// would commit first).
    pub fn lowered(text: &str) -> Result<Floors, String> {
        let mut floors = Floors::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not name=duration"))?;
            let value =
                crate::config::parse_duration(value.trim()).map_err(|e| format!("{name}: {e}"))?;
            let (slot, default) = match name.trim() {
                "heartbeat" => (&mut floors.heartbeat, HEARTBEAT),
                "late-slack" => (&mut floors.late_slack, LATE_SLACK),
                "first-look" => (&mut floors.first_look, FIRST_LOOK),
                "defer" => (&mut floors.defer, DEFER),
                "gather" => (&mut floors.list_gather, LIST_GATHER),
                other => {
                    return Err(format!(
                        "no floor `{other}` (heartbeat, late-slack, first-look, defer, gather)"
                    ));
                }
            };
            if value > default {
                return Err(format!(
                    "{name} {value:?} is above its default {default:?}: a floor is only lowered"
                ));
            }
            *slot = value;
        }
        if floors.heartbeat.is_zero() || floors.first_look.is_zero() {
            return Err("heartbeat and first-look must stay above zero".into());
        }
        Ok(floors)
    }

    /// Whether any floor is below its default.
    pub fn are_lowered(&self) -> bool {
        *self != Floors::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_are_todays_values_unless_lowered() {
        let today = Floors::default();
        assert_eq!(
            (
                today.heartbeat,
                today.late_slack,
                today.first_look,
                today.defer,
                today.list_gather
            ),
            (
                Duration::from_secs(5),
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(15),
                Duration::from_secs(10)
            )
        );
        assert!(!today.are_lowered());
        let low = Floors::lowered(
            "heartbeat=200ms, late-slack=0s,first-look=100ms,defer=1s,gather=300ms",
        )
        .unwrap();
        assert_eq!(low.heartbeat, Duration::from_millis(200));
        assert_eq!(low.late_slack, Duration::ZERO);
        assert_eq!(low.first_look, Duration::from_millis(100));
        assert_eq!(low.defer, Duration::from_secs(1));
        assert_eq!(low.list_gather, Duration::from_millis(300));
        assert!(low.are_lowered());
        assert_eq!(Floors::lowered("").unwrap(), today);
    }

    #[test]
    fn a_floor_is_never_raised_nor_named_wrong() {
        for (text, said) in [
            ("heartbeat=10s", "above its default"),
            ("hearbeat=1s", "no floor `hearbeat`"),
            ("defer", "not name=duration"),
            ("gather=soon", "gather"),
            ("heartbeat=0s", "above zero"),
        ] {
            let err = Floors::lowered(text).unwrap_err();
            assert!(err.contains(said), "{text}: {err}");
        }
    }
}
