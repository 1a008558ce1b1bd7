//! Matching keys whose registration is unknown against the project's asset list.
//!
//! MI's asset list has no filter by name and its `fileName` may be the full key or only its
//! last segment (NCP-API.md marks this unsure). [`match_assets`] is the pure rule: full key
//! first; the last segment only when exactly one listed asset and exactly one unsure key share
//! it; never an asset the ledger already gives to another key. The runner does the paging.

use std::collections::{HashMap, HashSet};

use crate::ledger::Claimed;

/// The names worth remembering from the listing: every unsure key and its last segment.
pub fn wanted_names(unsure: &[Claimed]) -> HashSet<String> {
    unsure
        .iter()
        .flat_map(|c| [c.key.clone(), last_segment(&c.key).to_owned()])
        .collect()
}

pub fn last_segment(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The verdict for each unsure key: `(row id, asset id)` pairs found, and row ids not found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub found: Vec<(i64, i64)>,
    pub not_found: Vec<i64>,
}

/// `listing` maps a listed `fileName` to its asset IDs (ascending); `known` holds asset IDs the
/// ledger already records for other keys.
pub fn match_assets(
    unsure: &[Claimed],
    listing: &HashMap<String, Vec<i64>>,
    known: &HashSet<i64>,
) -> Verdict {
    let free = |name: &str| -> Vec<i64> {
        listing
            .get(name)
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|id| !known.contains(id))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut segment_users: HashMap<&str, usize> = HashMap::new();
    for c in unsure {
        *segment_users.entry(last_segment(&c.key)).or_default() += 1;
    }
    let mut taken = HashSet::new();
    let mut verdict = Verdict::default();
    for c in unsure {
        let by_key = free(&c.key).into_iter().find(|id| !taken.contains(id));
        let by_segment = || {
            let segment = last_segment(&c.key);
            let ids = free(segment);
            (segment != c.key && ids.len() == 1 && segment_users[segment] == 1).then(|| ids[0])
        };
        match by_key.or_else(by_segment).filter(|id| !taken.contains(id)) {
            Some(id) => {
                taken.insert(id);
                verdict.found.push((c.id, id));
            }
            None => verdict.not_found.push(c.id),
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsure(keys: &[&str]) -> Vec<Claimed> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| Claimed {
                id: i as i64 + 1,
                bucket: "b".into(),
                key: (*k).into(),
            })
            .collect()
    }

    fn listing(pairs: &[(&str, i64)]) -> HashMap<String, Vec<i64>> {
        let mut map: HashMap<String, Vec<i64>> = HashMap::new();
        for (name, id) in pairs {
            map.entry((*name).into()).or_default().push(*id);
        }
        map
    }

    #[test]
    fn full_key_match_wins() {
        let keys = unsure(&["a/x.mp4", "b/y.mp4"]);
        let v = match_assets(&keys, &listing(&[("a/x.mp4", 10)]), &HashSet::new());
        assert_eq!(
            v,
            Verdict {
                found: vec![(1, 10)],
                not_found: vec![2]
            }
        );
    }

    #[test]
    fn last_segment_only_when_unambiguous() {
        let keys = unsure(&["2024/01/x.mp4", "2024/02/y.mp4", "2024/03/y.mp4"]);
        let list = listing(&[("x.mp4", 10), ("y.mp4", 11)]);
        let v = match_assets(&keys, &list, &HashSet::new());
        // x.mp4 belongs to one unsure key; y.mp4 could be either of two, so neither is matched.
        assert_eq!(v.found, vec![(1, 10)]);
        assert_eq!(v.not_found, vec![2, 3]);

        let list = listing(&[("x.mp4", 10), ("x.mp4", 12)]);
        let v = match_assets(&unsure(&["d/x.mp4"]), &list, &HashSet::new());
        assert_eq!(v.not_found, vec![1], "two listed assets share the segment");
    }

    #[test]
    fn assets_owned_by_other_keys_are_not_taken() {
        let keys = unsure(&["a/x.mp4"]);
        let list = listing(&[("a/x.mp4", 10)]);
        let v = match_assets(&keys, &list, &HashSet::from([10]));
        assert_eq!(v.not_found, vec![1]);
    }

    #[test]
    fn wanted_names_cover_keys_and_segments() {
        let names = wanted_names(&unsure(&["a/b/c.mp4"]));
        assert!(names.contains("a/b/c.mp4") && names.contains("c.mp4"));
    }
}
