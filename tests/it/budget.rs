//! MI's rate is the scarce resource, and confirmation shares it: an import is looked at when
//! it is likely done (by what this project's imports of its size took), and where the asset
//! list's entries carry the import status, many are confirmed per page of the list.

use crate::common::*;
use mi_import::emulator::EmulatorConfig;
use mi_import::exit::Exit;
use mi_import::ledger::State;
use std::collections::HashMap;
use std::time::Duration;

/// 240 keys in two sizes (one and four GB): imports take 2 s plus 1 s per GB in the emulator.
async fn confirm_with(status_in_list: bool) -> (mi_import::emulator::Counters, usize) {
    let ws = Workspace::new();
    let keys = keys(240, "budget");
    let size = |i: usize| {
        if i.is_multiple_of(2) {
            1u64 << 30
        } else {
            4u64 << 30
        }
    };
    let sizes: HashMap<(String, String), u64> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ((BUCKET.to_string(), k.clone()), size(i)))
        .collect();
    let emu = local(EmulatorConfig {
        import_time: Duration::from_secs(2),
        import_time_per_gb: Duration::from_millis(930),
        sizes,
        list_upload_status: status_in_list,
        ..healthy()
    });
    let manifest = ws.path("m.csv");
    let mut w = csv::Writer::from_path(&manifest).unwrap();
    w.write_record(["bucket", "key", "size"]).unwrap();
    for (i, k) in keys.iter().enumerate() {
        w.write_record([BUCKET, k, &size(i).to_string()]).unwrap();
    }
    w.flush().unwrap();
    let mut job = job(&ws, &emu, manifest);
    job.limits.rate = Some(60.0);
    job.options.confirm = Some(Duration::from_secs(60));
    let result = import(job).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    assert_eq!(ws.count(State::Completed), keys.len());
    (emu.counters(), keys.len())
}

#[tokio::test(start_paused = true)]
async fn imports_are_looked_at_about_once_each_when_likely_done() {
    let (c, keys) = confirm_with(false).await;
    // One look per key, plus a probe's few looks per size and a margin for slower ones.
    assert!(
        c.status_calls as f64 <= keys as f64 * 1.1 + 20.0,
        "{} import-status checks for {keys} keys",
        c.status_calls
    );
}

#[tokio::test(start_paused = true)]
async fn where_the_list_carries_the_status_many_are_confirmed_per_page() {
    let (c, keys) = confirm_with(true).await;
    assert!(
        c.list_calls >= 2,
        "a first entry to learn from, then passes: {c:?}"
    );
    assert!(
        c.status_calls + c.list_calls <= keys as u64 / 4,
        "{} import-status checks and {} list pages for {keys} keys",
        c.status_calls,
        c.list_calls
    );
}

/// Imports an earlier run left unconfirmed (registered an hour ago, say, with `--no-confirm`)
/// are overdue: they are looked at at once, and how late that look was teaches nothing. Were
/// it learned, every later import of their size would be looked at an hour after its
/// registration, long after the run's patience. Returns the emulator's counters and how many
/// keys there were.
async fn catch_up_with(status_in_list: bool) -> (mi_import::emulator::Counters, u64) {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        list_upload_status: status_in_list,
        ..healthy()
    });
    let earlier = keys(20, "yesterday");
    let mut first = job(&ws, &emu, ws.manifest("a.csv", &earlier));
    first.options.confirm = None;
    let result = import(first).await;
    assert_eq!(
        ws.count(State::Registered),
        earlier.len(),
        "{}",
        result.summary
    );
    let hour = 3_600_000;
    rusqlite::Connection::open(ws.db())
        .unwrap()
        .execute(
            "UPDATE keys SET sent_at = sent_at - ?1, registered_at = registered_at - ?1",
            [hour],
        )
        .unwrap();

    let tonight = keys(20, "tonight");
    let mut second = job(&ws, &emu, ws.manifest("b.csv", &tonight));
    second.options.confirm = Some(Duration::from_secs(30));
    let result = import(second).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    assert_eq!(
        ws.count(State::Completed),
        earlier.len() + tonight.len(),
        "every import confirmed within the run's patience: {}",
        result.summary
    );
    (emu.counters(), (earlier.len() + tonight.len()) as u64)
}

#[tokio::test(start_paused = true)]
async fn an_earlier_runs_imports_do_not_teach_a_later_run_to_look_late() {
    let (c, keys) = catch_up_with(false).await;
    assert!(c.status_calls <= keys + 5, "about one look each: {c:?}");
}

/// The same where the asset list's entries carry the import status: the overdue imports are
/// settled by paging the list.
#[tokio::test(start_paused = true)]
async fn where_the_list_carries_the_status_overdue_imports_are_settled_by_pages() {
    let (c, keys) = catch_up_with(true).await;
    assert!(
        c.list_calls >= 1 && c.status_calls + c.list_calls <= keys / 4,
        "many per page: {c:?}"
    );
}

/// A backlog of overdue imports larger than any one gathering of due looks (5,000): where the
/// list's entries carry the status, one pass over the list settles them all, each page's
/// entries looked up among the due keys in the ledger.
#[tokio::test(start_paused = true)]
async fn a_backlog_of_any_size_is_settled_in_one_pass_over_the_list() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        list_upload_status: true,
        ..healthy()
    });
    let backlog = keys(12_000, "backlog");
    let manifest = ws.manifest("a.csv", &backlog);
    let mut first = job(&ws, &emu, manifest.clone());
    first.limits.rate = None;
    first.limits.concurrency = 32;
    first.options.confirm = None;
    let result = import(first).await;
    assert_eq!(
        ws.count(State::Registered),
        backlog.len(),
        "{}",
        result.summary
    );
    let hour = 3_600_000;
    rusqlite::Connection::open(ws.db())
        .unwrap()
        .execute(
            "UPDATE keys SET sent_at = sent_at - ?1, registered_at = registered_at - ?1,
                 next_check_at = next_check_at - ?1",
            [hour],
        )
        .unwrap();
    let before = emu.counters();

    let mut second = job(&ws, &emu, manifest);
    second.limits.rate = None;
    second.options.confirm = Some(Duration::from_secs(60));
    let result = import(second).await;
    assert_eq!(result.exit, Exit::Success, "{}", result.summary);
    assert_eq!(
        ws.count(State::Completed),
        backlog.len(),
        "{}",
        result.summary
    );
    let c = emu.counters();
    let pages = c.list_calls - before.list_calls;
    let one_pass = (backlog.len() as u64).div_ceil(1000);
    assert!(
        pages as f64 <= one_pass as f64 * 1.1 + 1.0,
        "{pages} list pages where one pass is {one_pass} (and one entry to learn from)"
    );
    assert_eq!(
        c.status_calls, before.status_calls,
        "no look of its own for a key the pass saw"
    );
}
