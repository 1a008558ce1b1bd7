//! Deciding, from one pass over MI's asset list, what became of keys whose registration is
//! unknown. Pure: the runner pages the list and the ledger supplies the keys and the evidence.
//!
//! The rule: **a key is sent again only on proof that it is not registered, and given an
//! asset only on evidence that the asset is its own.** MI's list has no filter by name, its
//! `fileName` may be the full key or only its last segment, it may show a new asset only some
//! time after it was made, and it holds assets made outside this ledger (docs/service.md).
//!
//! - **Candidates.** A listed asset may be a key's if its name is the key's under MI's naming
//!   (learned from assets the ledger knows; both forms while unknown; each form as sent, in
//!   Unicode NFC, and without a leading `/`, since MI may store names normalised), no key of
//!   the ledger's scope owns it (now or ever), its size does not contradict the object's, and nothing shows it was
//!   made before the key's request could have left (its creation time or its ID, where the
//!   ledger has learned how MI's times and IDs run).
//! - **Observations.** Every pass over the list is recorded, with each asset ID it showed
//!   (the first pass that showed it) and whether it was current (whole, and showing the
//!   ledger's own recent assets: everything made before its freshness moment). An asset a
//!   pass showed that ended before the key's request could have left is not the key's. An
//!   asset no current pass showed that ended shortly before the send (within
//!   [`BASELINE_REACH_MS`] of its freshness) was made after that pass: evidence that puts it
//!   in the send window, where the list carries no time and its IDs are not known to grow.
//!   The runner takes such a baseline pass at a run's first unknown outcome, and before
//!   sending where an earlier run learned that nothing else orders the list; so only keys
//!   whose answers were lost before any baseline stay ambiguous for want of evidence. (A
//!   console upload of the same name between the baseline and the send could be taken for
//!   the key's own; the reach keeps that window short.)
//! - **Details.** Where MI's asset details name the object key an asset was made from (as NCP
//!   documents; learned per scope from the ledger's own assets, as the naming is), a
//!   candidate whose details name another key (or another bucket, where they name one) is not
//!   the key's: that tells apart the sharers of a file name that no list entry can. A
//!   candidate whose details name the key is of the key's object, which is not yet to say the
//!   key's request made it (a console upload of the same file carries the same key): the
//!   evidence below decides that, as it does for a full-key name. Details that could not be
//!   read (the asset is gone, or the answer failed) are evidence of nothing.
//! - **Sharers apart.** Two keys of one file name in flight at once, both answers lost, leave
//!   two assets within both windows, which nothing in a list without sizes can tell apart.
//!   So the runner sends them apart (`crate::runner`'s `apart`): never two in flight at once,
//!   and after a lost answer not before [`sharers_apart_ms`], so that the windows do not
//!   overlap and a creation time (or a baseline pass between) places each asset in one.
//! - **Registered** when exactly one candidate is within the key's send window by that same
//!   evidence, and it is within no other unsure key's window.
//! - **Not registered** when no asset is a candidate under MI's naming (under both forms while
//!   it is not learned; never when MI's names follow neither form), and the list is known to
//!   show every asset made before the key's outcome became unknown (the pass began a settle
//!   window after that moment, showed the assets the ledger knows from that time, and read a
//!   list that held still: see below).
//! - **A list that held still.** MI pages its list by number, so an asset deleted or added
//!   while it is read shifts the later entries: one slides onto a page already read and is
//!   missed, with `totalCount` unchanged. A pass proves absence only when its walk over the
//!   list is whole (every page carried the same `totalCount` and `totalPage` and its own
//!   number; the entries read add up to them, none twice; the end found from the entries, not
//!   from `totalPage` alone) and agrees page for page, entry for entry, with the walk just
//!   before it: any deletion or addition between the two changes some page. Presence needs
//!   no such care: an asset seen once is seen. The runner reads the list a second time only
//!   when some key would be proven absent ([`crate::runner`]).
//! - Otherwise the key **waits** (no candidate, but no proof yet) or is **ambiguous** (its
//!   candidates are kept for `mi-import resolve`, each with [`Why`] it could not be given).
//!   Neither is ever sent.

use std::collections::{HashMap, HashSet};

/// A key whose outcome is unknown, with what the ledger knows of its send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsureKey {
    pub id: i64,
    pub bucket: String,
    pub key: String,
    pub size: Option<u64>,
    /// No request for it left before this (Unix ms).
    pub sent_at: i64,
    /// No request for it was alive after this.
    pub unsure_at: i64,
}

/// One entry of MI's asset list, as far as it matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub asset_id: i64,
    pub file_name: String,
    /// `metaData.size`, when the entry carries it.
    pub size: Option<u64>,
    /// `createdTime` as MI wrote it (no zone), read as if UTC, in ms.
    pub created: Option<i64>,
}

/// An asset the ledger knows from MI's own answer: when its request left and its answer came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub asset_id: i64,
    pub key: String,
    pub sent_at: i64,
    pub answered_at: i64,
}

/// What an asset's details said it was made from, where they said it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detail {
    /// `result.key`: the object key.
    pub key: Option<String>,
    /// `result.bucketName`.
    pub bucket: Option<String>,
}

impl Detail {
    /// Whether these details say the asset was made from another object than `key`'s.
    pub fn names_another(&self, key: &UnsureKey) -> bool {
        let other_key = self
            .key
            .as_deref()
            .is_some_and(|named| !spellings(&key.key).iter().any(|s| s == named));
        let other_bucket = self.key.is_some()
            && self
                .bucket
                .as_deref()
                .is_some_and(|bucket| bucket != key.bucket);
        other_key || other_bucket
    }
}

/// What `fileName` holds in this project's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    FullKey,
    LastSegment,
    /// Neither: names cannot tell which asset is which key.
    Other,
}

impl Naming {
    pub fn as_str(self) -> &'static str {
        match self {
            Naming::FullKey => "full-key",
            Naming::LastSegment => "last-segment",
            Naming::Other => "other",
        }
    }

    pub fn parse(text: &str) -> Option<Naming> {
        [Naming::FullKey, Naming::LastSegment, Naming::Other]
            .into_iter()
            .find(|n| n.as_str() == text)
    }
}

/// How MI's `createdTime` relates to our clock: `created - offset` is our time of creation,
/// give or take `tolerance` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub offset: i64,
    pub tolerance: i64,
}

/// What the ledger has learned about this project's list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    pub naming: Option<Naming>,
    pub clock: Option<Clock>,
    /// Asset IDs grow with creation (learned from the ledger's own assets).
    pub ids_ordered: bool,
}

/// What one pass found for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Registered(i64),
    NotRegistered,
    /// No candidate, but no proof of absence yet: look again later.
    Wait,
    /// These assets may be the key's; only new evidence or the user can tell.
    Ambiguous(Vec<i64>),
}

/// Fewest witnesses before a clock offset is trusted.
const MIN_CLOCK_WITNESSES: usize = 3;
/// Fewest witnesses before asset IDs are trusted to grow with creation.
const MIN_ORDER_WITNESSES: usize = 5;
/// Slack added to the measured spread of the clock offset.
const CLOCK_SLACK_MS: i64 = 1_000;
/// A spread wider than this means MI's times say nothing useful about single requests.
const MAX_CLOCK_SPREAD_MS: i64 = 60_000;
/// With no later send of the ledger's own to bound IDs from above, a pass that began this
/// soon after a key's outcome became unknown bounds them instead (the asset was listed, so
/// made before the pass): the window is wider, but still short.
const OPEN_WINDOW_MS: i64 = 120_000;

pub fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The spellings MI may list a name under: as sent, in Unicode NFC, and without a leading
/// `/` (docs/service.md: names may be stored normalised).
pub fn spellings(name: &str) -> Vec<String> {
    use unicode_normalization::UnicodeNormalization;
    let nfc: String = name.nfc().collect();
    let mut all = vec![name.to_owned()];
    for form in [
        nfc.as_str(),
        name.trim_start_matches('/'),
        nfc.trim_start_matches('/'),
    ] {
        if !form.is_empty() && !all.iter().any(|f| f == form) {
            all.push(form.to_owned());
        }
    }
    all
}

/// The names a key's asset may bear under MI's naming: the full key's spellings, or its last
/// segment's, or both while the naming is not known.
pub fn names_for(key: &str, naming: Option<Naming>) -> Vec<String> {
    let full = || spellings(key);
    let segment = || -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for form in spellings(key) {
            let last = last_segment(&form).to_owned();
            if !last.is_empty() && !all.contains(&last) {
                all.push(last);
            }
        }
        all
    };
    match naming {
        Some(Naming::FullKey) => full(),
        Some(Naming::LastSegment) => segment(),
        Some(Naming::Other) => Vec::new(),
        None => {
            let mut all = full();
            all.extend(segment().into_iter().filter(|s| !full().contains(s)));
            all
        }
    }
}

/// The names worth keeping from the listing: every name an unsure key's asset may bear.
pub fn wanted_names(unsure: &[UnsureKey]) -> HashSet<String> {
    unsure
        .iter()
        .flat_map(|k| names_for(&k.key, None))
        .collect()
}

/// The naming the listed witnesses show: one form only if every informative witness (a key
/// with a folder, where the forms differ) agrees; `Other` if any shows neither form.
pub fn learn_naming(witnesses: &[Witness], listed: &HashMap<i64, Listed>) -> Option<Naming> {
    let (mut full, mut last) = (0, 0);
    for w in witnesses {
        let Some(entry) = listed.get(&w.asset_id) else {
            continue;
        };
        let as_full = names_for(&w.key, Some(Naming::FullKey)).contains(&entry.file_name);
        let as_last = names_for(&w.key, Some(Naming::LastSegment)).contains(&entry.file_name);
        match (as_full, as_last) {
            // A key without a folder: both forms are one, and teach nothing.
            (true, true) => {}
            (true, false) => full += 1,
            (false, true) => last += 1,
            (false, false) => return Some(Naming::Other),
        }
    }
    match (full, last) {
        (0, 0) => None,
        (_, 0) => Some(Naming::FullKey),
        (0, _) => Some(Naming::LastSegment),
        _ => Some(Naming::Other),
    }
}

/// The offset between MI's `createdTime` and our clock, from listed witnesses: each was made
/// between its send and its answer.
pub fn learn_clock(witnesses: &[Witness], listed: &HashMap<i64, Listed>) -> Option<Clock> {
    let mut gaps: Vec<i64> = witnesses
        .iter()
        .filter_map(|w| Some(listed.get(&w.asset_id)?.created? - w.answered_at))
        .collect();
    if gaps.len() < MIN_CLOCK_WITNESSES {
        return None;
    }
    gaps.sort_unstable();
    let offset = gaps[gaps.len() / 2];
    let spread = gaps.iter().map(|g| (g - offset).abs()).max().unwrap_or(0);
    (spread <= MAX_CLOCK_SPREAD_MS).then_some(Clock {
        offset,
        tolerance: spread + CLOCK_SLACK_MS,
    })
}

/// How long after a key's outcome became unsure a key that may share its listed name is held
/// back, where MI names assets by the last segment: two clock tolerances (the lost key's
/// window reaches one past its unsure moment, the sharer's one before its send) and a little
/// more, so their windows do not overlap and the creation time tells whose asset is whose.
/// Also while the naming is not learned (it may be last segments). Capped: a clock so loose
/// would hold sharers for minutes for little.
pub fn sharers_apart_ms(naming: Option<Naming>, clock: Option<Clock>) -> i64 {
    if matches!(naming, Some(Naming::FullKey | Naming::Other)) {
        return 0;
    }
    let tolerance = clock.map_or(CLOCK_SLACK_MS, |c| c.tolerance);
    (2 * tolerance + SHARERS_MARGIN_MS).min(SHARERS_APART_MAX_MS)
}

const SHARERS_MARGIN_MS: i64 = 500;
const SHARERS_APART_MAX_MS: i64 = 30_000;

/// What one pass shows of how long the list takes to show a new asset, from the ledger's
/// own assets. An asset is made after its request left (`sent_at`) and before its answer came
/// (`answered_at`), so a shown asset's age is counted from when its request left (an upper
/// bound on its lag) and a missing one's from its answer (a lower bound): a slow answer never
/// makes the lag look shorter than it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagReading {
    /// A lower bound on the lag: the age of the oldest witness the list did not show (0 if
    /// it showed every one).
    pub missing_at: i64,
    /// An upper bound: the age of the youngest witness shown above `missing_at`, if any.
    pub shown_within: Option<i64>,
}

/// Reads the lag from a pass begun at `started`: `seen_at` holds, for each witness the list
/// showed, when the page that showed it arrived. A witness missing for longer than `ceiling`
/// (`--list-settle`) is taken as deleted, not as lag: the pass's freshness check looks those
/// up one by one.
pub fn read_lag(
    witnesses: &[Witness],
    seen_at: &HashMap<i64, i64>,
    started: i64,
    ceiling: i64,
) -> LagReading {
    let mut shown = Vec::new();
    let mut missing_at = 0;
    for w in witnesses {
        match seen_at.get(&w.asset_id) {
            Some(at) => shown.push((at - w.sent_at).max(0)),
            None if w.answered_at < started && started - w.answered_at <= ceiling => {
                missing_at = missing_at.max(started - w.answered_at);
            }
            None => {}
        }
    }
    LagReading {
        missing_at,
        shown_within: shown.into_iter().filter(|age| *age > missing_at).min(),
    }
}

/// The lag to keep after a pass, from the one kept before (`None` while nothing is learned).
/// A reading that stays within it may tighten it; a witness missing for longer shows it grew,
/// and the reading replaces it (or, if it bounds nothing, unlearns it).
pub fn next_lag(kept: Option<i64>, reading: LagReading) -> Option<i64> {
    match kept {
        Some(lag) if reading.missing_at <= lag => {
            Some(reading.shown_within.map_or(lag, |within| within.min(lag)))
        }
        _ => reading.shown_within,
    }
}

/// Whether asset IDs grow with creation: no witness answered before another was sent has the
/// larger ID, over enough witnesses to mean something.
pub fn learn_id_order(witnesses: &[Witness]) -> bool {
    if witnesses.len() < MIN_ORDER_WITNESSES {
        return false;
    }
    let mut by_answer: Vec<&Witness> = witnesses.iter().collect();
    by_answer.sort_by_key(|w| w.answered_at);
    let mut by_send: Vec<&Witness> = witnesses.iter().collect();
    by_send.sort_by_key(|w| w.sent_at);
    let (mut i, mut highest_before) = (0, None::<i64>);
    let mut ordered_pairs = 0;
    for w in by_send {
        while i < by_answer.len() && by_answer[i].answered_at < w.sent_at {
            highest_before = highest_before.max(Some(by_answer[i].asset_id));
            i += 1;
        }
        if let Some(h) = highest_before {
            if h >= w.asset_id {
                return false;
            }
            ordered_pairs += 1;
        }
    }
    ordered_pairs >= MIN_ORDER_WITNESSES - 1
}

/// Where a key's asset must lie by the ledger's own assets: above the IDs made before its
/// send (`floor`), below the IDs sent after its outcome became unknown (`ceiling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct IdBounds {
    floor: Option<i64>,
    ceiling: Option<i64>,
}

fn id_bounds(key: &UnsureKey, witnesses: &[Witness]) -> IdBounds {
    let mut bounds = IdBounds::default();
    for w in witnesses {
        if w.answered_at < key.sent_at {
            bounds.floor = bounds.floor.max(Some(w.asset_id));
        }
        if w.sent_at > key.unsure_at {
            bounds.ceiling = Some(bounds.ceiling.map_or(w.asset_id, |c| c.min(w.asset_id)));
        }
    }
    bounds
}

/// A recorded pass over the list, as evidence: when it ended, and as of when it was known
/// to show everything made before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub ended_at: i64,
    pub current_as_of: Option<i64>,
}

/// What the ledger saw of the list: each listed asset's first pass, and the passes.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// When the pass that first showed each asset ended, by asset ID (for the listed ones).
    pub first_seen: HashMap<i64, i64>,
    /// Every recorded pass.
    pub passes: Vec<Observation>,
}

impl Observed {
    /// The latest pass that ended by `t` (a key committed in the millisecond a baseline
    /// ended is sent after it) and was known to be current: a baseline.
    fn baseline_before(&self, t: i64) -> Option<i64> {
        self.passes
            .iter()
            .filter(|p| p.ended_at <= t)
            .filter_map(|p| p.current_as_of)
            .max()
    }
}

/// How long after a baseline pass's freshness a key's send may come for the baseline to
/// vouch that an asset it did not show was made after the send began. Longer, and a console
/// upload of the same name between the baseline and the send is too likely to be taken for
/// the key's own.
pub const BASELINE_REACH_MS: i64 = 30 * 60 * 1000;

/// Why a candidate could not be given to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// Nothing places it in the key's send window: no creation time, IDs not known to grow,
    /// no pass shortly before the send.
    NoEvidence,
    /// The evidence puts it after the key's outcome became unknown (MI may finish a request
    /// late: not ruled out, not proven).
    Late,
    /// It lies in the send window of other unsure keys too.
    Shared,
    /// Another candidate lies in the key's send window as well.
    Several,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NoEvidence => {
                "nothing places it in the key's send window (no creation time, IDs not known to grow, no pass of the list shortly before the send)"
            }
            Why::Late => "made after the key's answer was lost, as far as the evidence goes",
            Why::Shared => "it may as well be another uncertain key's (their send windows overlap)",
            Why::Several => "another candidate lies in the key's send window too",
        }
    }
}

/// One pass over the list, and what it may prove.
pub struct Pass<'a> {
    /// Listed assets whose names are wanted.
    pub listed: &'a [Listed],
    /// What the ledger saw of the list before (and in) this pass.
    pub observed: &'a Observed,
    /// Assets any key of the ledger has or had.
    pub owned: &'a HashSet<i64>,
    pub evidence: &'a Evidence,
    pub witnesses: &'a [Witness],
    /// The list showed every asset made before this moment (`None`: nothing is proven).
    pub fresh_as_of: Option<i64>,
    /// When the pass began: every listed asset was made before it.
    pub started: i64,
    /// What the details of candidates said, where they were read (by asset ID).
    pub details: &'a HashMap<i64, Detail>,
}

/// How one listed asset stands against one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fit {
    /// Cannot be the key's.
    No,
    /// May be the key's; why nothing places it inside the key's send window.
    Maybe(Why),
    /// May be, and evidence puts its creation inside the key's send window.
    Window,
}

fn fit(key: &UnsureKey, asset: &Listed, pass: &Pass<'_>, bounds: IdBounds) -> Fit {
    let ev = pass.evidence;
    if pass.owned.contains(&asset.asset_id) {
        return Fit::No;
    }
    if let (Some(a), Some(b)) = (key.size, asset.size)
        && a != b
    {
        return Fit::No;
    }
    // Made from another object, by its details.
    if pass
        .details
        .get(&asset.asset_id)
        .is_some_and(|d| d.names_another(key))
    {
        return Fit::No;
    }
    // Shown by a pass that ended before the key's request could have left: not the key's.
    if pass
        .observed
        .first_seen
        .get(&asset.asset_id)
        .is_some_and(|end| *end < key.sent_at)
    {
        return Fit::No;
    }
    // Made before the key's request could have left: not the key's. Made after its outcome
    // became unknown proves nothing (MI may finish a request the client gave up on), so only
    // the window's start excludes.
    let mut windows = Vec::new();
    if let (Some(clock), Some(created)) = (ev.clock, asset.created) {
        let made = created - clock.offset;
        if made < key.sent_at - clock.tolerance {
            return Fit::No;
        }
        windows.push(made <= key.unsure_at + clock.tolerance);
    }
    if ev.ids_ordered {
        if bounds.floor.is_some_and(|f| asset.asset_id <= f) {
            return Fit::No;
        }
        // IDs place an asset inside the window only above a known neighbour made before the
        // send, and below one sent after it (or, lacking that, in a pass begun soon after).
        match (bounds.floor, bounds.ceiling) {
            (Some(_), Some(ceiling)) => windows.push(asset.asset_id < ceiling),
            (Some(_), None) if pass.started - key.unsure_at <= OPEN_WINDOW_MS => windows.push(true),
            _ => {}
        }
    }
    // Not shown by a current pass that ended shortly before the send: made after that
    // pass's freshness, so (within the reach) after the send began.
    if let Some(fresh) = pass.observed.baseline_before(key.sent_at)
        && key.sent_at - fresh <= BASELINE_REACH_MS
    {
        windows.push(true);
    }
    match (windows.is_empty(), windows.iter().all(|inside| *inside)) {
        (false, true) => Fit::Window,
        (true, _) => Fit::Maybe(Why::NoEvidence),
        (false, false) => Fit::Maybe(Why::Late),
    }
}

/// The verdict for every unsure key of one pass.
pub fn judge(keys: &[UnsureKey], pass: &Pass<'_>) -> Vec<(i64, Verdict)> {
    judge_explained(keys, pass)
        .into_iter()
        .map(|(id, verdict, _)| (id, verdict))
        .collect()
}

/// One key's verdict, with why each of its candidates could not be given to it.
pub type Explained = (i64, Verdict, Vec<(i64, Why)>);

/// [`judge`], with why each candidate of an ambiguous key could not be given to it.
pub fn judge_explained(keys: &[UnsureKey], pass: &Pass<'_>) -> Vec<Explained> {
    let by_name: HashMap<&str, Vec<&Listed>> =
        pass.listed.iter().fold(HashMap::new(), |mut map, a| {
            map.entry(a.file_name.as_str()).or_default().push(a);
            map
        });
    let fits: Vec<Vec<(i64, Fit)>> = keys
        .iter()
        .map(|key| {
            let bounds = if pass.evidence.ids_ordered {
                id_bounds(key, pass.witnesses)
            } else {
                IdBounds::default()
            };
            let names = names_for(&key.key, pass.evidence.naming);
            let mut found: Vec<(i64, Fit)> = names
                .iter()
                .flat_map(|n| by_name.get(n.as_str()).into_iter().flatten())
                .map(|a| (a.asset_id, fit(key, a, pass, bounds)))
                .filter(|(_, f)| *f != Fit::No)
                .collect();
            found.sort_unstable();
            found.dedup_by_key(|(asset, _)| *asset);
            found
        })
        .collect();
    let mut windows_of: HashMap<i64, usize> = HashMap::new();
    for found in &fits {
        for (asset, f) in found {
            if *f == Fit::Window {
                *windows_of.entry(*asset).or_default() += 1;
            }
        }
    }
    keys.iter()
        .zip(fits)
        .map(|(key, found)| {
            let inside: Vec<i64> = found
                .iter()
                .filter(|(_, f)| *f == Fit::Window)
                .map(|(a, _)| *a)
                .collect();
            let why = |(asset, f): &(i64, Fit)| match f {
                Fit::Window if windows_of[asset] > 1 => (*asset, Why::Shared),
                Fit::Window => (*asset, Why::Several),
                Fit::Maybe(why) => (*asset, *why),
                Fit::No => (*asset, Why::NoEvidence),
            };
            let reasons: Vec<(i64, Why)> = found.iter().map(why).collect();
            let verdict = match inside.as_slice() {
                [only] if windows_of[only] == 1 => Verdict::Registered(*only),
                _ if found.is_empty() => {
                    // Unknown naming: no asset bears the name under either form, which is
                    // proof enough; names that follow neither form prove nothing.
                    let named = pass.evidence.naming != Some(Naming::Other);
                    if named && pass.fresh_as_of.is_some_and(|t| t > key.unsure_at) {
                        Verdict::NotRegistered
                    } else {
                        Verdict::Wait
                    }
                }
                _ => Verdict::Ambiguous(found.iter().map(|(a, _)| *a).collect()),
            };
            (key.id, verdict, reasons)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000;

    static NO_DETAILS: std::sync::LazyLock<HashMap<i64, Detail>> =
        std::sync::LazyLock::new(HashMap::new);

    fn key(id: i64, key: &str, size: Option<u64>, sent: i64, unsure: i64) -> UnsureKey {
        UnsureKey {
            id,
            bucket: "b".into(),
            key: key.into(),
            size,
            sent_at: sent * S,
            unsure_at: unsure * S,
        }
    }

    fn asset(id: i64, name: &str, size: Option<u64>, created: Option<i64>) -> Listed {
        Listed {
            asset_id: id,
            file_name: name.into(),
            size,
            created: created.map(|c| c * S),
        }
    }

    fn evidence(naming: Naming, clock: bool) -> Evidence {
        Evidence {
            naming: Some(naming),
            clock: clock.then_some(Clock {
                offset: 0,
                tolerance: S / 2,
            }),
            ids_ordered: false,
        }
    }

    fn judge_with(
        keys: &[UnsureKey],
        listed: &[Listed],
        evidence: &Evidence,
        owned: &[i64],
        fresh_as_of: Option<i64>,
    ) -> Vec<Verdict> {
        let owned: HashSet<i64> = owned.iter().copied().collect();
        let observed = Observed::default();
        let pass = Pass {
            listed,
            observed: &observed,
            owned: &owned,
            evidence,
            witnesses: &[],
            fresh_as_of: fresh_as_of.map(|t| t * S),
            started: 10_000 * S,
            details: &NO_DETAILS,
        };
        judge(keys, &pass).into_iter().map(|(_, v)| v).collect()
    }

    /// The verdicts, and the reasons, with what the ledger saw of the list.
    fn judge_seen(keys: &[UnsureKey], listed: &[Listed], observed: &Observed) -> Vec<Explained> {
        let owned = HashSet::new();
        let ev = evidence(Naming::LastSegment, false);
        judge_explained(
            keys,
            &Pass {
                listed,
                observed,
                owned: &owned,
                evidence: &ev,
                witnesses: &[],
                fresh_as_of: Some(5_000 * S),
                started: 10_000 * S,
                details: &NO_DETAILS,
            },
        )
    }

    /// [`judge_seen`] with what the candidates' details said, the list current from `fresh`.
    fn judge_detailed(
        keys: &[UnsureKey],
        listed: &[Listed],
        observed: &Observed,
        details: &HashMap<i64, Detail>,
        fresh: i64,
    ) -> Vec<Explained> {
        let owned = HashSet::new();
        let ev = evidence(Naming::LastSegment, false);
        judge_explained(
            keys,
            &Pass {
                listed,
                observed,
                owned: &owned,
                evidence: &ev,
                witnesses: &[],
                fresh_as_of: Some(fresh * S),
                started: 10_000 * S,
                details,
            },
        )
    }

    fn detail(key: &str, bucket: Option<&str>) -> Detail {
        Detail {
            key: Some(key.into()),
            bucket: bucket.map(Into::into),
        }
    }

    /// Four sharers of a file name, each answer lost, each asset made: the list (names only,
    /// no times, no sizes, IDs in no order) cannot tell them apart; their details can, and
    /// each key is left with its own asset alone, which the baseline before the sends places.
    #[test]
    fn details_naming_the_key_tell_sharers_apart() {
        let keys: Vec<UnsureKey> = (1..=4)
            .map(|i| {
                key(
                    i,
                    &format!("news/2024/00{i}/take-001.mp4"),
                    None,
                    100 + i,
                    110 + i,
                )
            })
            .collect();
        let listed: Vec<Listed> = (1..=4)
            .map(|i| asset(50 + i, "take-001.mp4", None, None))
            .collect();
        let observed = Observed {
            first_seen: (1..=4).map(|i| (50 + i, 200 * S)).collect(),
            passes: vec![Observation {
                ended_at: 95 * S,
                current_as_of: Some(90 * S),
            }],
        };
        let without = judge_detailed(&keys, &listed, &observed, &HashMap::new(), 500);
        assert!(
            without
                .iter()
                .all(|(_, v, _)| matches!(v, Verdict::Ambiguous(c) if c.len() == 4)),
            "{without:?}"
        );
        let details: HashMap<i64, Detail> = (1..=4)
            .map(|i| {
                (
                    50 + i,
                    detail(&format!("news/2024/00{i}/take-001.mp4"), Some("b")),
                )
            })
            .collect();
        let with = judge_detailed(&keys, &listed, &observed, &details, 500);
        let verdicts: Vec<&Verdict> = with.iter().map(|(_, v, _)| v).collect();
        assert_eq!(
            verdicts,
            (1..=4)
                .map(|i| Verdict::Registered(50 + i))
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>()
        );
    }

    /// A candidate whose details name another key, or the key in another bucket, is not the
    /// key's; one whose details could not be read (gone, or an error) stays a candidate; a
    /// key whose every candidate is another's is absent once the list is current past it.
    #[test]
    fn details_naming_another_object_rule_a_candidate_out_and_unread_ones_rule_nothing() {
        let keys = [key(1, "day02/take-001.mp4", None, 100, 101)];
        let listed = [
            asset(7, "take-001.mp4", None, None),
            asset(8, "take-001.mp4", None, None),
        ];
        let observed = Observed::default();
        let others: HashMap<i64, Detail> = [
            (7, detail("day01/take-001.mp4", None)),
            (8, detail("day02/take-001.mp4", Some("another-bucket"))),
        ]
        .into();
        let got = judge_detailed(&keys, &listed, &observed, &others, 500);
        assert_eq!(got[0].1, Verdict::NotRegistered, "{got:?}");
        assert_eq!(
            judge_detailed(&keys, &listed, &observed, &others, 100)[0].1,
            Verdict::Wait,
            "absence still needs a list current past the unknown moment"
        );
        // Asset 8's details could not be read: it may be the key's.
        let one_read: HashMap<i64, Detail> = [(7, detail("day01/take-001.mp4", None))].into();
        let got = judge_detailed(&keys, &listed, &observed, &one_read, 500);
        assert_eq!(got[0].1, Verdict::Ambiguous(vec![8]));
        // Details that name no key tell nothing either.
        let blank: HashMap<i64, Detail> = [(7, Detail::default()), (8, Detail::default())].into();
        let got = judge_detailed(&keys, &listed, &observed, &blank, 500);
        assert_eq!(got[0].1, Verdict::Ambiguous(vec![7, 8]));
    }

    /// Details name the key as MI stores it: in NFC, without a leading `/`, the key matches
    /// under each spelling it may be stored in, and no other key does.
    #[test]
    fn details_match_the_key_under_its_spellings_only() {
        let key = key(1, "/cafe\u{301}/take.mp4", None, 100, 101);
        for stored in [
            "/cafe\u{301}/take.mp4",
            "/caf\u{e9}/take.mp4",
            "caf\u{e9}/take.mp4",
        ] {
            assert!(!detail(stored, None).names_another(&key), "{stored}");
        }
        assert!(detail("cafe/take.mp4", None).names_another(&key));
        assert!(
            detail("/caf\u{e9}/take.mp4", Some("b2")).names_another(&key),
            "another bucket"
        );
        assert!(!Detail::default().names_another(&key));
        assert!(
            !Detail {
                key: None,
                bucket: Some("b2".into())
            }
            .names_another(&key),
            "a bucket alone says nothing"
        );
    }

    #[test]
    fn an_asset_a_pass_showed_before_the_send_is_never_the_keys() {
        // No times, no ordered IDs, names shared: only the ledger's own sightings tell.
        let keys = [key(1, "day01/cam/clip01.mp4", None, 100, 101)];
        let listed = [
            asset(7, "clip01.mp4", None, None),
            asset(8, "clip01.mp4", None, None),
        ];
        let observed = Observed {
            first_seen: [(7, 90 * S), (8, 200 * S)].into(),
            passes: vec![Observation {
                ended_at: 90 * S,
                current_as_of: None,
            }],
        };
        let got = judge_seen(&keys, &listed, &observed);
        assert_eq!(got[0].1, Verdict::Ambiguous(vec![8]), "7 was there before");
        assert_eq!(got[0].2, [(8, Why::NoEvidence)]);
    }

    #[test]
    fn a_current_pass_shortly_before_the_send_vouches_for_the_sole_candidate() {
        let keys = [key(1, "day01/cam/clip01.mp4", None, 100, 101)];
        let listed = [
            asset(7, "clip01.mp4", None, None),
            asset(8, "clip01.mp4", None, None),
        ];
        let baseline = |ended: i64| Observed {
            first_seen: [(7, ended), (8, 200 * S)].into(),
            passes: vec![Observation {
                ended_at: ended,
                current_as_of: Some(ended - 5 * S),
            }],
        };
        let got = judge_seen(&keys, &listed, &baseline(95 * S));
        assert_eq!(got[0].1, Verdict::Registered(8));
        // A key committed in the very millisecond the baseline ended is sent after it.
        let same_ms = Observed {
            first_seen: [(7, 90 * S), (8, 200 * S)].into(),
            passes: vec![Observation {
                ended_at: 100 * S,
                current_as_of: Some(95 * S),
            }],
        };
        let got = judge_seen(&keys, &listed, &same_ms);
        assert_eq!(got[0].1, Verdict::Registered(8));
        // A baseline from long before the send vouches for nothing: a console upload of the
        // same name may have come in between.
        let long_before = 100 * S - BASELINE_REACH_MS - 10 * S;
        let got = judge_seen(&keys, &listed, &baseline(long_before));
        assert_eq!(got[0].1, Verdict::Ambiguous(vec![8]));
        // Twins sent after one baseline: each may be the other's.
        let twins = [
            key(1, "day01/cam/clip01.mp4", None, 100, 101),
            key(2, "day02/cam/clip01.mp4", None, 100, 101),
        ];
        let both = [
            asset(8, "clip01.mp4", None, None),
            asset(9, "clip01.mp4", None, None),
        ];
        let got = judge_seen(&twins, &both, &baseline(95 * S));
        assert_eq!(got[0].1, Verdict::Ambiguous(vec![8, 9]));
        assert_eq!(got[0].2, [(8, Why::Shared), (9, Why::Shared)]);
    }

    #[test]
    fn sharers_are_kept_apart_by_two_tolerances_only_where_names_may_be_last_segments() {
        assert_eq!(sharers_apart_ms(Some(Naming::FullKey), None), 0);
        assert_eq!(sharers_apart_ms(Some(Naming::Other), None), 0);
        assert_eq!(
            sharers_apart_ms(None, None),
            2 * CLOCK_SLACK_MS + SHARERS_MARGIN_MS
        );
        let clock = |tolerance| {
            Some(Clock {
                offset: 0,
                tolerance,
            })
        };
        assert_eq!(
            sharers_apart_ms(Some(Naming::LastSegment), clock(1_500)),
            3_500
        );
        assert_eq!(
            sharers_apart_ms(Some(Naming::LastSegment), clock(40_000)),
            SHARERS_APART_MAX_MS
        );
    }

    #[test]
    fn an_asset_made_in_the_send_window_is_the_keys() {
        let keys = [key(1, "day01/cam/clip01.mp4", None, 100, 101)];
        let listed = [asset(7, "day01/cam/clip01.mp4", None, Some(100))];
        let got = judge_with(&keys, &listed, &evidence(Naming::FullKey, true), &[], None);
        assert_eq!(got, [Verdict::Registered(7)]);
    }

    #[test]
    fn without_evidence_a_lone_candidate_stays_ambiguous() {
        // No creation time and no learned ID order: a console upload of the same name cannot
        // be told from this key's own asset.
        let keys = [key(1, "a/x.mp4", None, 100, 101)];
        let listed = [asset(7, "a/x.mp4", None, None)];
        let got = judge_with(
            &keys,
            &listed,
            &evidence(Naming::FullKey, false),
            &[],
            Some(500),
        );
        assert_eq!(got, [Verdict::Ambiguous(vec![7])]);
    }

    #[test]
    fn twins_are_split_by_size() {
        let keys = [
            key(1, "day01/cam/clip01.mp4", Some(10), 100, 101),
            key(2, "day02/cam/clip01.mp4", Some(20), 100, 101),
        ];
        let listed = [
            asset(7, "clip01.mp4", Some(20), Some(100)),
            asset(8, "clip01.mp4", Some(10), Some(100)),
        ];
        let got = judge_with(
            &keys,
            &listed,
            &evidence(Naming::LastSegment, true),
            &[],
            None,
        );
        assert_eq!(got, [Verdict::Registered(8), Verdict::Registered(7)]);
    }

    #[test]
    fn twins_are_split_by_time() {
        let keys = [
            key(1, "day01/cam/clip01.mp4", None, 100, 101),
            key(2, "day02/cam/clip01.mp4", None, 200, 201),
        ];
        let listed = [
            asset(7, "clip01.mp4", None, Some(100)),
            asset(8, "clip01.mp4", None, Some(200)),
        ];
        let got = judge_with(
            &keys,
            &listed,
            &evidence(Naming::LastSegment, true),
            &[],
            None,
        );
        assert_eq!(got, [Verdict::Registered(7), Verdict::Registered(8)]);
    }

    #[test]
    fn twins_sent_together_with_equal_sizes_stay_uncertain_with_their_candidates() {
        let keys = [
            key(1, "day01/cam/clip01.mp4", Some(5), 100, 101),
            key(2, "day02/cam/clip01.mp4", Some(5), 100, 101),
        ];
        let listed = [
            asset(7, "clip01.mp4", Some(5), Some(100)),
            asset(8, "clip01.mp4", Some(5), Some(100)),
        ];
        let got = judge_with(
            &keys,
            &listed,
            &evidence(Naming::LastSegment, true),
            &[],
            Some(900),
        );
        assert_eq!(
            got,
            [
                Verdict::Ambiguous(vec![7, 8]),
                Verdict::Ambiguous(vec![7, 8])
            ]
        );
    }

    #[test]
    fn an_asset_some_key_of_the_ledger_has_or_had_is_never_taken() {
        let keys = [key(1, "a/x.mp4", None, 100, 101)];
        let listed = [asset(7, "a/x.mp4", None, Some(100))];
        let got = judge_with(
            &keys,
            &listed,
            &evidence(Naming::FullKey, true),
            &[7],
            Some(500),
        );
        assert_eq!(got, [Verdict::NotRegistered]);
    }

    #[test]
    fn a_foreign_asset_made_before_the_send_is_not_the_keys() {
        let keys = [key(1, "a/x.mp4", None, 100, 101)];
        let listed = [asset(7, "a/x.mp4", None, Some(50))];
        let ev = evidence(Naming::FullKey, true);
        assert_eq!(
            judge_with(&keys, &listed, &ev, &[], Some(500)),
            [Verdict::NotRegistered]
        );
        assert_eq!(
            judge_with(&keys, &listed, &ev, &[], None),
            [Verdict::Wait],
            "absence needs a current list"
        );
    }

    #[test]
    fn absence_needs_a_list_current_past_the_unknown_moment_and_a_usable_naming() {
        let keys = [key(1, "a/x.mp4", None, 100, 101)];
        let full = evidence(Naming::FullKey, true);
        assert_eq!(
            judge_with(&keys, &[], &full, &[], Some(100)),
            [Verdict::Wait]
        );
        // Current as of the very moment the outcome became unknown shows what was made
        // before it, not an asset made in that moment.
        assert_eq!(
            judge_with(&keys, &[], &full, &[], Some(101)),
            [Verdict::Wait]
        );
        assert_eq!(
            judge_with(&keys, &[], &full, &[], Some(102)),
            [Verdict::NotRegistered]
        );
        let unknown = Evidence {
            naming: None,
            ..full.clone()
        };
        assert_eq!(
            judge_with(&keys, &[], &unknown, &[], Some(500)),
            [Verdict::NotRegistered],
            "absent under both forms"
        );
        let near = [asset(7, "other/x.mp4", None, Some(100))];
        assert_eq!(
            judge_with(&keys, &near, &unknown, &[], Some(500)),
            [Verdict::NotRegistered],
            "another folder's file of the same name is no candidate under either form"
        );
        let same_name = [asset(7, "x.mp4", None, Some(100))];
        assert_eq!(
            judge_with(&keys, &same_name, &unknown, &[], Some(500)),
            [Verdict::Registered(7)],
            "the last segment is a candidate while the naming is not known"
        );
        let other = evidence(Naming::Other, true);
        let listed = [asset(7, "a/x.mp4", None, Some(100))];
        assert_eq!(
            judge_with(&keys, &listed, &other, &[], Some(500)),
            [Verdict::Wait],
            "names that follow no known form prove nothing either way"
        );
    }

    #[test]
    fn a_late_asset_is_never_ruled_out() {
        // Made well after the answer was lost: perhaps MI finished the request late.
        let keys = [key(1, "a/x.mp4", None, 100, 101)];
        let listed = [asset(7, "a/x.mp4", None, Some(150))];
        let got = judge_with(
            &keys,
            &listed,
            &evidence(Naming::FullKey, true),
            &[],
            Some(500),
        );
        assert_eq!(got, [Verdict::Ambiguous(vec![7])]);
    }

    #[test]
    fn a_name_mi_stored_normalised_is_still_the_keys() {
        // "café" with a combining accent (NFD), and a key with a leading slash.
        let nfd = "day1/cafe\u{301}.mp4";
        let keys = [
            key(1, nfd, None, 100, 101),
            key(2, "/top/x.mp4", None, 100, 101),
        ];
        let listed = [
            asset(7, "day1/caf\u{e9}.mp4", None, Some(100)),
            asset(8, "top/x.mp4", None, Some(100)),
        ];
        let ev = evidence(Naming::FullKey, true);
        assert_eq!(
            judge_with(&keys, &listed, &ev, &[], Some(500)),
            [Verdict::Registered(7), Verdict::Registered(8)],
            "never proven absent under a spelling MI changed"
        );
        assert!(wanted_names(&keys).contains("caf\u{e9}.mp4"));
        let ws = [witness(7, nfd, 0, 1)];
        let seen: HashMap<i64, Listed> = [(7, listed[0].clone())].into();
        assert_eq!(learn_naming(&ws, &seen), Some(Naming::FullKey));
    }

    #[test]
    fn under_an_unknown_naming_both_forms_are_candidates() {
        let keys = [key(1, "a/x.mp4", None, 100, 101)];
        let listed = [asset(7, "x.mp4", None, Some(100))];
        let ev = Evidence {
            naming: None,
            ..evidence(Naming::FullKey, true)
        };
        assert_eq!(
            judge_with(&keys, &listed, &ev, &[], None),
            [Verdict::Registered(7)]
        );
    }

    fn witness(id: i64, key: &str, sent: i64, answered: i64) -> Witness {
        Witness {
            asset_id: id,
            key: key.into(),
            sent_at: sent * S,
            answered_at: answered * S,
        }
    }

    #[test]
    fn naming_is_learned_from_the_ledgers_own_assets() {
        let ws = [
            witness(1, "d/a.mp4", 0, 1),
            witness(2, "top.mp4", 0, 1),
            witness(3, "e/b.mp4", 0, 1),
        ];
        let list = |names: &[(i64, &str)]| -> HashMap<i64, Listed> {
            names
                .iter()
                .map(|(id, n)| (*id, asset(*id, n, None, None)))
                .collect()
        };
        assert_eq!(
            learn_naming(
                &ws,
                &list(&[(1, "d/a.mp4"), (2, "top.mp4"), (3, "e/b.mp4")])
            ),
            Some(Naming::FullKey)
        );
        assert_eq!(
            learn_naming(&ws, &list(&[(1, "a.mp4"), (2, "top.mp4")])),
            Some(Naming::LastSegment)
        );
        assert_eq!(
            learn_naming(&ws, &list(&[(1, "a.mp4"), (3, "e/b.mp4")])),
            Some(Naming::Other),
            "mixed forms are no form"
        );
        assert_eq!(learn_naming(&ws, &list(&[(2, "top.mp4")])), None);
        assert_eq!(
            learn_naming(&ws, &list(&[(1, "A.MP4")])),
            Some(Naming::Other)
        );
    }

    #[test]
    fn the_clock_offset_is_learned_and_a_wild_spread_is_refused() {
        let ws: Vec<Witness> = (0..5)
            .map(|i| witness(i, "k", 10 * i, 10 * i + 1))
            .collect();
        let nine_hours = 9 * 3600;
        let listed: HashMap<i64, Listed> = (0..5)
            .map(|i| (i, asset(i, "k", None, Some(10 * i + 1 + nine_hours))))
            .collect();
        let clock = learn_clock(&ws, &listed).unwrap();
        assert_eq!(clock.offset, nine_hours * S);
        assert_eq!(clock.tolerance, CLOCK_SLACK_MS);
        let wild: HashMap<i64, Listed> = (0..5)
            .map(|i| (i, asset(i, "k", None, Some(1000 * i))))
            .collect();
        assert_eq!(learn_clock(&ws, &wild), None);
    }

    #[test]
    fn id_order_is_learned_and_bounds_a_keys_asset() {
        let ws: Vec<Witness> = (0..6)
            .map(|i| witness(100 + i, "k", 10 * i, 10 * i + 1))
            .collect();
        assert!(learn_id_order(&ws));
        let mut shuffled = ws.clone();
        shuffled[1].asset_id = 200;
        assert!(!learn_id_order(&shuffled));

        // Key sent at 25 (after witness 102 was answered at 21), lost at 26 (before 103 left
        // at 30): its asset lies strictly between 102 and 103.
        let ev = Evidence {
            naming: Some(Naming::FullKey),
            clock: None,
            ids_ordered: true,
        };
        let keys = [key(1, "x/k.mp4", None, 25, 26)];
        let owned = HashSet::new();
        let pass = |listed: &[Listed]| {
            judge(
                &keys,
                &Pass {
                    listed,
                    observed: &Observed::default(),
                    owned: &owned,
                    evidence: &ev,
                    witnesses: &ws,
                    fresh_as_of: Some(1000 * S),
                    started: 1000 * S,
                    details: &NO_DETAILS,
                },
            )[0]
            .1
            .clone()
        };
        // No ID lies strictly between 102 and 103: one above is after the window, which is
        // never ruled out (MI may finish a request late) but is no evidence either.
        let late = [asset(150, "x/k.mp4", None, None)];
        assert_eq!(pass(&late), Verdict::Ambiguous(vec![150]));
        let before = [asset(101, "x/k.mp4", None, None)];
        assert_eq!(
            pass(&before),
            Verdict::NotRegistered,
            "made before the send"
        );
    }

    #[test]
    fn id_bounds_attribute_an_asset_between_its_neighbours() {
        let ws = vec![
            witness(10, "a", 0, 1),
            witness(11, "b", 2, 3),
            witness(12, "c", 4, 5),
            witness(20, "d", 30, 31),
            witness(21, "e", 32, 33),
        ];
        assert!(learn_id_order(&ws));
        let ev = Evidence {
            naming: Some(Naming::FullKey),
            clock: None,
            ids_ordered: true,
        };
        let keys = [key(1, "x/k.mp4", None, 10, 11)];
        let owned = HashSet::new();
        let listed = [asset(15, "x/k.mp4", None, None)];
        let got = judge(
            &keys,
            &Pass {
                listed: &listed,
                observed: &Observed::default(),
                owned: &owned,
                evidence: &ev,
                witnesses: &ws,
                fresh_as_of: None,
                started: 1000 * S,
                details: &NO_DETAILS,
            },
        );
        assert_eq!(got, [(1, Verdict::Registered(15))]);
    }

    #[test]
    fn the_last_keys_of_a_run_are_bounded_by_a_pass_soon_after() {
        let ws = vec![
            witness(10, "a", 0, 1),
            witness(11, "b", 2, 3),
            witness(12, "c", 4, 5),
            witness(13, "d", 6, 7),
            witness(14, "e", 8, 9),
        ];
        let ev = Evidence {
            naming: Some(Naming::FullKey),
            clock: None,
            ids_ordered: true,
        };
        // Sent after every witness: nothing the ledger sent later bounds its asset's ID.
        let keys = [key(1, "x/k.mp4", None, 20, 21)];
        let owned = HashSet::new();
        let listed = [asset(15, "x/k.mp4", None, None)];
        let verdict = |started: i64| {
            judge(
                &keys,
                &Pass {
                    listed: &listed,
                    observed: &Observed::default(),
                    owned: &owned,
                    evidence: &ev,
                    witnesses: &ws,
                    fresh_as_of: None,
                    started: started * S,
                    details: &NO_DETAILS,
                },
            )[0]
            .1
            .clone()
        };
        assert_eq!(verdict(60), Verdict::Registered(15));
        assert_eq!(
            verdict(600),
            Verdict::Ambiguous(vec![15]),
            "a pass long after proves less"
        );
    }

    #[test]
    fn the_lag_is_bounded_by_the_witnesses_a_pass_shows_and_misses() {
        // Sent at 9, 19, 26, 28 s, answered a second later; the pass began at 30 s and read
        // its page at 31 s.
        let ws = [
            witness(1, "a", 9, 10),
            witness(2, "b", 19, 20),
            witness(3, "c", 26, 27),
            witness(4, "d", 28, 29),
        ];
        let all: HashMap<i64, i64> = [(1, 31 * S), (2, 31 * S), (3, 31 * S), (4, 31 * S)].into();
        let current = read_lag(&ws, &all, 30 * S, 60 * S);
        assert_eq!(
            current,
            LagReading {
                missing_at: 0,
                shown_within: Some(3 * S)
            },
            "a shown asset's age counts from when its request left"
        );
        // The two youngest missing: the list lags more than 3 s (from their answers), less
        // than 12 s (from the send of the youngest shown).
        let lagging: HashMap<i64, i64> = [(1, 31 * S), (2, 31 * S)].into();
        let late = read_lag(&ws, &lagging, 30 * S, 60 * S);
        assert_eq!(
            late,
            LagReading {
                missing_at: 3 * S,
                shown_within: Some(12 * S)
            }
        );
        // An asset whose answer came late was made when its request left, perhaps: its age
        // is not taken from its answer, which would make the list look faster than it is.
        let slow = [witness(5, "e", 20, 29)];
        let shown: HashMap<i64, i64> = [(5, 31 * S)].into();
        assert_eq!(
            read_lag(&slow, &shown, 30 * S, 60 * S).shown_within,
            Some(11 * S)
        );
        // A witness missing for longer than the ceiling is taken as deleted.
        let deleted: HashMap<i64, i64> = [(2, 31 * S), (3, 31 * S), (4, 31 * S)].into();
        assert_eq!(read_lag(&ws, &deleted, 30 * S, 15 * S).missing_at, 0);
        // Nothing shown above the oldest missing one: the reading bounds nothing.
        let none = read_lag(&ws, &[(4, 31 * S)].into(), 30 * S, 60 * S);
        assert_eq!(none.shown_within, None);
    }

    #[test]
    fn the_kept_lag_tightens_within_itself_and_is_replaced_when_it_grew() {
        let within = |missing_at, shown_within| LagReading {
            missing_at,
            shown_within,
        };
        assert_eq!(next_lag(None, within(0, Some(2 * S))), Some(2 * S));
        assert_eq!(next_lag(None, within(0, None)), None);
        assert_eq!(next_lag(Some(5 * S), within(S, Some(2 * S))), Some(2 * S));
        assert_eq!(
            next_lag(Some(2 * S), within(0, Some(40 * S))),
            Some(2 * S),
            "a pass long after the last answer bounds loosely, and teaches nothing"
        );
        assert_eq!(
            next_lag(Some(2 * S), within(4 * S, Some(9 * S))),
            Some(9 * S)
        );
        assert_eq!(
            next_lag(Some(2 * S), within(4 * S, None)),
            None,
            "grown, and bounded by nothing: unlearned"
        );
    }
}
