//! Keys that may share a listed name, kept apart while they are sent. Where MI names assets
//! by the key's last segment and the list carries no size, two keys of one file name whose
//! answers are both lost can be told apart only by when their assets were made: so no two
//! of them are in flight at once, and a key whose answer was lost holds its name's others
//! back for [`crate::reconcile::sharers_apart_ms`], so that their send windows do not
//! overlap. Only evidence rests on it, never exactly-once: a name it fails to match is
//! merely sent alongside its sharers, and a manifest of mostly one name is sent as before
//! ([`crate::ledger::keys::claim_admitted`] fills a claim with held keys when too few others wait).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use crate::ledger::{self, keys::Admit};

#[derive(Debug, Default)]
pub struct Apart {
    /// How long a lost answer holds its name's other keys back; 0: names are not kept apart.
    ms: AtomicI64,
    names: Mutex<Names>,
}

#[derive(Debug, Default)]
struct Names {
    /// Each name held back, and why.
    names: HashMap<String, Hold>,
    /// The name of each key claimed and not yet written back, by row.
    sent: HashMap<i64, String>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Hold {
    in_flight: u32,
    until: i64,
}

/// The name a key may have in the list, wherever MI may name assets by their last segment.
fn name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

impl Apart {
    pub fn set_ms(&self, ms: i64) {
        self.ms.store(ms, Relaxed);
    }

    pub fn ms(&self) -> i64 {
        self.ms.load(Relaxed)
    }

    /// Holds the names of keys whose outcome became unknown at `unsure_at` (a run that
    /// stopped, or one before it).
    pub fn hold(&self, key: &str, unsure_at: i64) {
        let until = unsure_at + self.ms();
        let mut guard = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let hold = guard.names.entry(name(key).to_owned()).or_default();
        hold.until = hold.until.max(until);
    }

    /// Outcomes just written to the ledger: their keys' names are free, or held on where
    /// the outcome is unknown.
    pub fn written(&self, outcomes: &[ledger::Outcome], now: i64) {
        let ms = self.ms();
        let mut guard = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let Names { names, sent } = &mut *guard;
        for outcome in outcomes {
            let Some(name) = sent.remove(&outcome.id) else {
                continue;
            };
            if let Some(hold) = names.get_mut(&name) {
                hold.in_flight = hold.in_flight.saturating_sub(1);
                if outcome.state == Some(ledger::State::Uncertain) {
                    hold.until = hold.until.max(now + ms);
                }
            }
        }
    }

    /// Claims pending keys, keeping names apart if MI's naming calls for it.
    pub fn claim(
        &self,
        conn: &rusqlite::Connection,
        scope: &ledger::Scope,
        limit: usize,
        run: i64,
        now: i64,
    ) -> rusqlite::Result<(Vec<ledger::Claimed>, bool)> {
        if self.ms() <= 0 {
            return Ok((ledger::keys::claim(conn, scope, limit, run, now)?, false));
        }
        let mut guard = self.names.lock().unwrap_or_else(|p| p.into_inner());
        guard.names.retain(|_, h| h.in_flight > 0 || h.until > now);
        ledger::keys::claim_admitted(conn, scope, limit, run, now, &mut Admitted(&mut guard, now))
    }
}

struct Admitted<'a>(&'a mut Names, i64);

impl Admit for Admitted<'_> {
    fn held(&self) -> usize {
        self.0.names.len()
    }

    fn take(&mut self, id: i64, key: &str, anyway: bool) -> bool {
        let now = self.1;
        let hold = self.0.names.entry(name(key).to_owned()).or_default();
        if !anyway && (hold.in_flight > 0 || hold.until > now) {
            return false;
        }
        hold.in_flight += 1;
        self.0.sent.insert(id, name(key).to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, NewKey, OnChanged, Outcome, Scope, State};

    fn ledger(keys: &[&str]) -> (Ledger, Scope) {
        let l = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(l.conn(), "http://mi.test", "w", "p").unwrap();
        let keys: Vec<NewKey> = keys.iter().map(|k| NewKey::new("b", *k)).collect();
        ledger::keys::insert_keys(l.conn(), &scope, &keys, OnChanged::Report).unwrap();
        (l, scope)
    }

    fn claim(apart: &Apart, l: &Ledger, s: &Scope, limit: usize, now: i64) -> Vec<String> {
        let (claimed, _) = apart.claim(l.conn(), s, limit, 1, now).unwrap();
        claimed.into_iter().map(|c| c.key).collect()
    }

    fn id_of(l: &Ledger, key: &str) -> i64 {
        l.conn()
            .query_row("SELECT id FROM keys WHERE key = ?1", [key], |r| r.get(0))
            .unwrap()
    }

    fn outcome(l: &Ledger, key: &str, state: State) -> Outcome {
        Outcome {
            id: id_of(l, key),
            state: Some(state),
            attempts: 1,
            asset_id: (state == State::Registered).then_some(7),
            http_status: None,
            error_code: None,
            message: None,
            trace_id: None,
        }
    }

    #[test]
    fn sharers_go_one_at_a_time_and_a_lost_answer_holds_its_name() {
        let (l, s) = ledger(&["cam1/x.mp4", "cam2/x.mp4", "cam1/y.mp4", "cam2/y.mp4"]);
        let apart = Apart::default();
        apart.set_ms(2_500);
        assert_eq!(
            claim(&apart, &l, &s, 4, 1_000),
            ["cam1/x.mp4", "cam1/y.mp4"]
        );
        // Their sharers wait while they are in flight, even once answered: only the
        // ledger's record frees a name.
        assert!(claim(&apart, &l, &s, 4, 1_100).is_empty());
        let x = outcome(&l, "cam1/x.mp4", State::Registered);
        let y = outcome(&l, "cam1/y.mp4", State::Uncertain);
        ledger::keys::record(
            l.conn(),
            &[x.clone(), y.clone()],
            1,
            crate::runner::pace::FIRST_LOOK,
        )
        .unwrap();
        apart.written(&[x, y], 1_200);
        assert_eq!(claim(&apart, &l, &s, 4, 1_300), ["cam2/x.mp4"]);
        // A lost answer holds its name's others back for the whole time.
        assert!(claim(&apart, &l, &s, 4, 3_699).is_empty());
        assert_eq!(claim(&apart, &l, &s, 4, 3_701), ["cam2/y.mp4"]);
    }

    #[test]
    fn a_run_stopped_with_a_key_unknown_holds_its_name_from_that_moment() {
        // `a/x.mp4` was in flight when a run stopped: the ledger holds it uncertain.
        let (l, s) = ledger(&["b/x.mp4", "c/z.mp4"]);
        let apart = Apart::default();
        apart.set_ms(2_500);
        apart.hold("a/x.mp4", 10_000);
        assert_eq!(claim(&apart, &l, &s, 4, 11_000), ["c/z.mp4"]);
        assert_eq!(claim(&apart, &l, &s, 4, 12_501), ["b/x.mp4"]);
    }

    #[test]
    fn keys_too_alike_to_keep_apart_are_sent_as_before() {
        let keys: Vec<String> = (0..100).map(|i| format!("d{i:03}/same.mp4")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (l, s) = ledger(&refs);
        let apart = Apart::default();
        apart.set_ms(2_500);
        // The window of pending keys holds nothing else: the claim is filled, in order.
        assert_eq!(
            claim(&apart, &l, &s, 3, 1_000),
            ["d000/same.mp4", "d001/same.mp4", "d002/same.mp4"]
        );
        assert_eq!(
            claim(&apart, &l, &s, 2, 1_000),
            ["d003/same.mp4", "d004/same.mp4"]
        );
        // Names not kept apart at all where MI lists full keys.
        apart.set_ms(0);
        assert_eq!(claim(&apart, &l, &s, 2, 1_000).len(), 2);
    }

    #[test]
    fn the_tail_of_a_run_waits_for_its_sharers_rather_than_sending_them_together() {
        let (l, s) = ledger(&["a/x.mp4", "b/x.mp4"]);
        let apart = Apart::default();
        apart.set_ms(2_500);
        let (first, held) = apart.claim(l.conn(), &s, 8, 1, 1_000).unwrap();
        assert_eq!((first.len(), held), (1, true));
        let (second, held) = apart.claim(l.conn(), &s, 8, 1, 1_000).unwrap();
        assert_eq!((second.len(), held), (0, true));
    }
}
