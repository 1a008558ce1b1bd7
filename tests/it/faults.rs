//! Exactly-once under the faults a long run meets: the process killed outright, answers lost
//! after MI created the asset.

use crate::common::*;
use mi_import::emulator::EmulatorConfig;
use mi_import::exit::Exit;
use mi_import::ledger::State;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// SIGKILL the real binary at random moments, five times, then let a plain re-run finish:
/// every key is registered exactly once. At the floors a user's run keeps (the heartbeat and
/// the late slack that date a killed run's unknown moments): the one kill test that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_never_registers_a_key_twice() {
    const KEYS: usize = 3000;
    const KILLS: usize = 5;
    let seed: u64 = rand::random();
    eprintln!("kill delays drawn with seed {seed}");
    let mut dice = rand::rngs::StdRng::seed_from_u64(seed);

    let ws = Workspace::new();
    let config = EmulatorConfig {
        latency: (Duration::from_millis(5), Duration::from_millis(30)),
        ..healthy()
    };
    let emu = emulator(config).await;
    let keys = keys(KEYS, "kill");
    let manifest = ws.manifest("m.csv", &keys);
    let run = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .set("--concurrency", "32")
        .shipped_floors();

    let mut kills = 0;
    let mut in_flight_at_kill = Vec::new();
    while kills < KILLS {
        let before = emu.assets().len();
        let mut child = run.spawn_quiet();
        // Wait until this run has sent something, then a random while longer.
        while emu.assets().len() == before && child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(dice.random_range(0..150))).await;
        if child.try_wait().unwrap().is_some() {
            break; // it finished first: nothing left to kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        in_flight_at_kill.push(ws.count(State::InFlight));
    }
    assert!(
        kills >= 3,
        "the run finished before it could be killed enough ({kills})"
    );
    assert!(
        in_flight_at_kill.iter().any(|n| *n > 0),
        "kills caught keys in flight: {in_flight_at_kill:?}"
    );

    let out = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .shipped_floors()
        .output()
        .await;
    assert_eq!(
        out.status.code(),
        Some(Exit::Success.code()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_registered_once(&ws, &emu, &keys);
    assert_eq!(emu.assets().len(), KEYS);
    eprintln!(
        "{kills} kills, in flight at each: {in_flight_at_kill:?}; {:?}",
        emu.counters()
    );
}

/// 5 % of register calls lose their answer after the asset was created: every key still ends
/// registered exactly once, found through the asset list rather than sent again.
#[tokio::test(start_paused = true)]
async fn five_percent_of_answers_lost_after_creation_still_exactly_once() {
    let ws = Workspace::new();
    let emu = local(EmulatorConfig {
        drop_after: 0.05,
        seed: 11,
        ..healthy()
    });
    let keys = keys(2000, "drop");
    let result = import(job(&ws, &emu, ws.manifest("m.csv", &keys))).await;
    assert_eq!(result.exit, Exit::Success);
    let dropped = emu.counters().dropped_after;
    assert!(dropped > 50, "{dropped}");
    assert_registered_once(&ws, &emu, &keys);
    assert_eq!(
        emu.counters().register_calls,
        2000,
        "no key was sent a second time"
    );
}
