//! The ledger's vocabulary: the state of a key, its name for people and its number on disk.
//!
//! The number in the `state` column is the enum's explicit discriminant, never its position:
//! reordering or adding a state cannot change what an existing ledger's rows mean. SQL names
//! a state only through [`sql`]'s constants (spliced in at compile time with `formatcp!`, so
//! the statement text still holds the literal number a partial index needs to match) or binds
//! [`State::code`], and the tests below pin every number, the partial index of
//! `migrations/0007` included.

use std::fmt;
use std::str::FromStr;

/// The state of one key (docs/design.md, "Key states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i64)]
pub enum State {
    Pending = 0,
    InFlight = 1,
    Uncertain = 2,
    Registered = 3,
    Completed = 4,
    ImportFailed = 5,
    Failed = 6,
    Skipped = 7,
}

/// The `state` column's numbers, for SQL text: `formatcp!("… WHERE state = {PENDING}")`.
pub mod sql {
    use super::State;

    pub const PENDING: i64 = State::Pending as i64;
    pub const IN_FLIGHT: i64 = State::InFlight as i64;
    pub const UNCERTAIN: i64 = State::Uncertain as i64;
    pub const REGISTERED: i64 = State::Registered as i64;
    pub const COMPLETED: i64 = State::Completed as i64;
    pub const IMPORT_FAILED: i64 = State::ImportFailed as i64;
    pub const FAILED: i64 = State::Failed as i64;
    pub const SKIPPED: i64 = State::Skipped as i64;
}

impl State {
    pub const ALL: [State; 8] = [
        State::Pending,
        State::InFlight,
        State::Uncertain,
        State::Registered,
        State::Completed,
        State::ImportFailed,
        State::Failed,
        State::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::InFlight => "in_flight",
            State::Uncertain => "uncertain",
            State::Registered => "registered",
            State::Completed => "completed",
            State::ImportFailed => "import_failed",
            State::Failed => "failed",
            State::Skipped => "skipped",
        }
    }

    /// The number stored in the `state` column.
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<State> {
        State::ALL.into_iter().find(|s| s.code() == code)
    }

    /// A key this run left in this state makes it exit 1 rather than 0.
    pub fn is_trouble(self) -> bool {
        matches!(self, State::Failed | State::ImportFailed | State::Uncertain)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = State::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state `{s}` (one of: {})", names.join(", "))
            })
    }
}

impl rusqlite::types::FromSql for State {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let code = value.as_i64()?;
        State::from_code(code).ok_or(rusqlite::types::FromSqlError::OutOfRange(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ledger ever written holds these numbers: they never change.
    #[test]
    fn every_state_keeps_its_number_on_disk() {
        let pinned = [
            (State::Pending, 0, sql::PENDING),
            (State::InFlight, 1, sql::IN_FLIGHT),
            (State::Uncertain, 2, sql::UNCERTAIN),
            (State::Registered, 3, sql::REGISTERED),
            (State::Completed, 4, sql::COMPLETED),
            (State::ImportFailed, 5, sql::IMPORT_FAILED),
            (State::Failed, 6, sql::FAILED),
            (State::Skipped, 7, sql::SKIPPED),
        ];
        assert_eq!(
            pinned.len(),
            State::ALL.len(),
            "a state without a pinned number"
        );
        for (state, number, constant) in pinned {
            assert_eq!(state.code(), number, "{state}");
            assert_eq!(constant, number, "{state}'s SQL constant");
            assert_eq!(State::from_code(number), Some(state));
        }
        assert_eq!(State::from_code(8), None);
        assert_eq!(State::from_code(-1), None);
    }

    #[test]
    fn state_names_and_codes_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
            assert_eq!(State::from_code(s.code()), Some(s));
        }
        assert!("done".parse::<State>().unwrap_err().contains("one of"));
    }

    /// The migrations wrote state numbers of their own: the `keys` table's CHECK and the
    /// partial index of due checks must mean what the enum means.
    #[test]
    fn the_schema_names_states_by_the_same_numbers() {
        let ledger = crate::ledger::Ledger::open_in_memory().unwrap();
        let sql_of = |name: &str| -> String {
            ledger
                .conn()
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let due = sql_of("keys_due");
        assert!(
            due.ends_with(&format!("WHERE state = {}", sql::REGISTERED)),
            "{due}"
        );
        let keys = sql_of("keys");
        let (first, last) = (
            State::ALL[0].code(),
            State::ALL[State::ALL.len() - 1].code(),
        );
        assert!(
            keys.contains(&format!("CHECK (state BETWEEN {first} AND {last})")),
            "{keys}"
        );
        assert!(
            State::ALL
                .iter()
                .all(|s| (first..=last).contains(&s.code()))
        );
    }
}
