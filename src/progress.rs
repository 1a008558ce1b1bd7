//! What a run shows while it works: indicatif bars on a terminal, a plain status line every
//! few seconds otherwise (cron, pipes), nothing with `--quiet`. Always on stderr.
//!
//! The runner only bumps the counters in [`Stats`]; a separate task reads them, so showing
//! progress never slows the work. Log lines and notices go through [`Stderr`], which prints
//! them above the bar instead of letting the next redraw paint over them.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a terminal bar is redrawn.
const TICK: Duration = Duration::from_millis(200);
/// How often a plain status line is printed when stderr is not a terminal.
pub const DEFAULT_PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// Live counters of one run.
#[derive(Debug, Default)]
pub struct Stats {
    /// Keys waiting to be sent when dispatch began (grows if reconciliation returns keys).
    pub queued: AtomicU64,
    pub requests: AtomicU64,
    pub registered: AtomicU64,
    pub failed: AtomicU64,
    pub uncertain: AtomicU64,
    pub released: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    /// Keys a dead run left unsure that a reconciliation pass found registered.
    pub reconciled: AtomicU64,
    /// Keys whose answer was lost that a pass found registered (this run's or a dead run's).
    pub found_in_list: AtomicU64,
    /// import-status calls.
    pub polls: AtomicU64,
    /// Asset-list pages read to confirm many imports at once.
    pub list_checks: AtomicU64,
    pub completed: AtomicU64,
    pub import_failed: AtomicU64,
    /// Registered assets still waiting for a final import status.
    pub awaiting: AtomicU64,
    /// `registered + reconciled` and `completed + import_failed` when `awaiting` was counted,
    /// so the number shown between two counts follows what happened since.
    pub awaiting_basis: (AtomicU64, AtomicU64),
    /// Objects a listing has seen so far.
    pub discovered: AtomicU64,
    /// A listing is still going (so the total is not known yet).
    pub listing: std::sync::atomic::AtomicBool,
    /// The limiter's current rate in thousandths of a request per second (0: no limit).
    pub current_rate: Arc<AtomicU64>,
    /// Analyses requested (accepted) in this run, finished, failed, and status looks.
    pub analyses_requested: AtomicU64,
    pub analyses_completed: AtomicU64,
    pub analyses_failed: AtomicU64,
    pub analysis_looks: AtomicU64,
    /// Requests whose lost answer proved not accepted: their keys are to be requested again.
    pub analyses_to_resend: AtomicU64,
    /// Pages of MI's asset list read so far in a reconciliation pass, and how many it has
    /// (0 when no pass is going).
    pub asset_pages: AtomicU64,
    pub asset_pages_total: AtomicU64,
    /// The command only follows analyses (`mi-import analyze`): progress speaks of them.
    pub analyses_only: std::sync::atomic::AtomicBool,
}

impl Stats {
    /// Keys a reconciliation pass proved absent go back to the queue: those this run had
    /// counted as uncertain are no longer finished; others (left by a dead run) are new work.
    pub fn requeue(&self, n: u64) {
        let ours = self.uncertain.load(Relaxed).min(n);
        self.uncertain.fetch_sub(ours, Relaxed);
        self.queued.fetch_add(n - ours, Relaxed);
    }

    /// Keys a reconciliation pass found registered: those this run had counted as uncertain
    /// are registered now; others (left by a dead run) are counted apart.
    pub fn found_registered(&self, n: u64) {
        let ours = self.uncertain.load(Relaxed).min(n);
        self.uncertain.fetch_sub(ours, Relaxed);
        self.registered.fetch_add(ours, Relaxed);
        self.reconciled.fetch_add(n - ours, Relaxed);
        self.found_in_list.fetch_add(n, Relaxed);
    }

    pub fn finished(&self) -> u64 {
        self.registered.load(Relaxed) + self.failed.load(Relaxed) + self.uncertain.load(Relaxed)
    }

    /// One line, for a log.
    pub fn line(&self, elapsed: Duration) -> String {
        let (counts, pace) = self.parts(elapsed, true);
        counts + &pace
    }

    /// The same on two lines under the bar (which shows done/total itself), so it fits a
    /// narrow terminal.
    fn bar_message(&self, elapsed: Duration) -> String {
        let (counts, pace) = self.parts(elapsed, false);
        match pace.strip_prefix("; ") {
            Some(pace) => format!("{counts}\n  {pace}"),
            None => counts,
        }
    }

    /// What was done so far (with done/total unless a bar shows it), then (each part starting
    /// with "; ") the pace, ETA and confirmation.
    fn parts(&self, elapsed: Duration, with_total: bool) -> (String, String) {
        if self.analyses_only.load(Relaxed) {
            return (
                format!(
                    "analysis: {} requested, {} done, {} failed; {} index-status checks",
                    self.analyses_requested.load(Relaxed),
                    self.analyses_completed.load(Relaxed),
                    self.analyses_failed.load(Relaxed),
                    self.analysis_looks.load(Relaxed)
                ),
                String::new(),
            );
        }
        let done = self.finished();
        let queued = self.queued.load(Relaxed).max(done);
        let measured = done as f64 / elapsed.as_secs_f64().max(0.001);
        let mut line = String::new();
        if self.listing.load(Relaxed) {
            line.push_str(&format!(
                "listing: {} objects seen; ",
                self.discovered.load(Relaxed)
            ));
        }
        let pages = self.asset_pages_total.load(Relaxed);
        if pages > 0 {
            line.push_str(&format!(
                "checking MI's asset list: page {} of {pages}; ",
                self.asset_pages.load(Relaxed)
            ));
        }
        if with_total {
            line.push_str(&format!("{done}/{queued} keys, "));
        }
        line.push_str(&format!(
            "{measured:.1}/s: {} registered, {} failed, {} uncertain; {}, {} throttled",
            self.registered.load(Relaxed) + self.reconciled.load(Relaxed),
            self.failed.load(Relaxed),
            self.uncertain.load(Relaxed),
            words(self.retries.load(Relaxed), "retry", "retries"),
            self.throttled.load(Relaxed),
        ));
        let counts = std::mem::take(&mut line);
        let limit = self.current_rate.load(Relaxed) as f64 / 1000.0;
        if limit > 0.0 {
            line.push_str(&format!("; rate now {limit:.1}/s"));
        }
        line.push_str(&eta(
            queued.saturating_sub(done),
            measured,
            limit,
            self.listing.load(Relaxed),
        ));
        let (polls, completed, import_failed) = (
            self.polls.load(Relaxed) + self.list_checks.load(Relaxed),
            self.completed.load(Relaxed),
            self.import_failed.load(Relaxed),
        );
        if polls > 0 {
            line.push_str(&format!(
                "; confirmed {completed} completed, {import_failed} import_failed, {} waiting",
                self.waiting()
            ));
        }
        let requested = self.analyses_requested.load(Relaxed);
        if requested > 0 {
            line.push_str(&format!(
                "; analysis {requested} requested, {} done, {} failed",
                self.analyses_completed.load(Relaxed),
                self.analyses_failed.load(Relaxed)
            ));
        }
        (counts, line)
    }
}

impl Stats {
    /// Notes the count of registered assets waiting for a final status.
    pub fn set_awaiting(&self, counted: u64) {
        self.awaiting.store(counted, Relaxed);
        self.awaiting_basis
            .0
            .store(self.newly_registered(), Relaxed);
        self.awaiting_basis.1.store(self.settled(), Relaxed);
    }

    /// The last count, moved on by what was registered and settled since.
    pub fn waiting(&self) -> u64 {
        let added = self
            .newly_registered()
            .saturating_sub(self.awaiting_basis.0.load(Relaxed));
        let settled = self
            .settled()
            .saturating_sub(self.awaiting_basis.1.load(Relaxed));
        (self.awaiting.load(Relaxed) + added).saturating_sub(settled)
    }

    fn newly_registered(&self) -> u64 {
        self.registered.load(Relaxed) + self.reconciled.load(Relaxed)
    }

    fn settled(&self) -> u64 {
        self.completed.load(Relaxed) + self.import_failed.load(Relaxed)
    }
}

/// `n` and its noun, singular or plural.
fn words(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The time left for `remaining` keys: at the slower of the measured and the allowed rate,
/// and not at all while a listing may still add keys.
pub fn eta(remaining: u64, measured: f64, limit: f64, listing: bool) -> String {
    if remaining == 0 {
        return String::new();
    }
    if listing {
        return "; eta: once the listing ends".into();
    }
    let speed = match (measured > 0.0, limit > 0.0) {
        (true, true) => measured.min(limit),
        (true, false) => measured,
        (false, true) => limit,
        (false, false) => return String::new(),
    };
    let secs = (remaining as f64 / speed).ceil() as u64;
    format!(
        "; eta {}",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// The bar on screen, if any, for [`Stderr`] to print around.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);
/// Set once the command is stopping: the bar is gone and stays gone.
static HIDDEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Clears the bar and keeps it away (a signal: what follows is words, not progress).
pub fn hide_bar() {
    HIDDEN.store(true, Relaxed);
    if let Some(bar) = shown_bar() {
        bar.finish_and_clear();
    }
    set_shown_bar(None);
}

fn shown_bar() -> Option<ProgressBar> {
    SHOWN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_shown_bar(bar: Option<ProgressBar>) {
    *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Standard error, written above the progress bar while one is shown. Give it to the log
/// subscriber, and print notices with [`note`].
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match shown_bar() {
            Some(bar) => bar
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Whether stderr carries JSON only (`--log-format json`): then every notice, progress line,
/// error and summary is a log event, one JSON object per line.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_json(on: bool) {
    JSON.store(on, Relaxed);
}

pub fn is_json() -> bool {
    JSON.load(Relaxed)
}

/// Prints one line for the operator on stderr, above the progress bar if one is shown.
pub fn note(line: &str) {
    if is_json() {
        tracing::warn!(event = "notice", "{line}");
        return;
    }
    // One write, so the bar is lifted once for the whole line and its newline.
    let _ = Stderr.write_all(format!("{}\n", crate::escape::lines(line)).as_bytes());
}

/// The error that ended a command, with its hint, printed once.
pub fn error(message: &str, hint: Option<&str>) {
    if is_json() {
        match hint {
            Some(hint) => tracing::error!(event = "error", hint, "{message}"),
            None => tracing::error!(event = "error", "{message}"),
        }
        return;
    }
    let mut text = format!("error: {message}\n");
    if let Some(hint) = hint {
        text.push_str(&format!("hint: {hint}\n"));
    }
    let _ = Stderr.write_all(crate::escape::lines(&text).as_bytes());
}

/// The words a command ends with, and (for JSON) its record as one `summary` event, with
/// `summary` a nested object. Written whatever the log level: `-q` silences chatter, never
/// the reason for an exit code.
pub fn summary(text: &str, record: &serde_json::Value, quiet: bool) {
    if is_json() {
        let event = serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": "INFO",
            "fields": {
                "event": "summary",
                "message": text.trim_end(),
                "summary": record,
            },
        });
        let _ = Stderr.write_all(format!("{event}\n").as_bytes());
        return;
    }
    let lead = if quiet { "" } else { "\n" };
    let text = crate::escape::lines(text);
    let text = match terminal_width() {
        Some(width) => wrapped(&text, width),
        None => text.into_owned(),
    };
    let _ = Stderr.write_all(format!("{lead}{text}").as_bytes());
}

/// The terminal's width, when stderr is one.
fn terminal_width() -> Option<usize> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(std::io::stderr()).map(|(w, _)| usize::from(w.0))
}

/// `text` with each line broken at spaces to fit `width` columns (continuation lines
/// indented by two), so a terminal never breaks a word.
pub fn wrapped(text: &str, width: usize) -> String {
    let width = width.max(20);
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        let mut column = 0;
        for word in body.split(' ') {
            let len = word.chars().count();
            if column > 0 && column + 1 + len > width {
                out.push_str("\n  ");
                column = 2;
            } else if column > 0 {
                out.push(' ');
                column += 1;
            }
            out.push_str(word);
            column += len;
        }
        out.push_str(end);
    }
    out
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Bar,
    Lines(Duration),
    Quiet,
}

impl Display {
    /// A bar on a terminal, lines otherwise, nothing when quiet.
    pub fn choose(quiet: bool, interval: Duration) -> Self {
        if quiet {
            Display::Quiet
        } else if std::io::stderr().is_terminal() && !is_json() {
            Display::Bar
        } else {
            Display::Lines(interval)
        }
    }
}

/// Shows progress until `done` is cancelled, then leaves the screen clean.
pub async fn show(stats: Arc<Stats>, display: Display, done: CancellationToken) {
    let start = Instant::now();
    match display {
        Display::Quiet => done.cancelled().await,
        Display::Lines(every) => {
            show_lines(&stats, every, &done, |line| {
                if is_json() {
                    tracing::info!(event = "progress", "{line}");
                } else {
                    eprintln!("progress: {}", crate::escape::lines(line));
                }
            })
            .await
        }
        Display::Bar => {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len}\n  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            set_shown_bar(Some(bar.clone()));
            loop {
                if HIDDEN.load(Relaxed) {
                    break;
                }
                // No bar to fill before there is anything to send: a spinner and the words.
                let finished = stats.finished();
                match stats.queued.load(Relaxed).max(finished) {
                    0 => bar.unset_length(),
                    total => bar.set_length(total),
                }
                bar.set_position(finished);
                bar.set_message(stats.bar_message(start.elapsed()));
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            set_shown_bar(None);
            bar.finish_and_clear();
        }
    }
}

/// Emits one status line every `every` until `done`.
async fn show_lines(
    stats: &Stats,
    every: Duration,
    done: &CancellationToken,
    mut emit: impl FnMut(&str),
) {
    let start = Instant::now();
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(every) => emit(&stats.line(start.elapsed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_uses_the_slower_rate_and_waits_for_the_listing() {
        assert_eq!(eta(100, 10.0, 5.0, false), "; eta 20s");
        assert_eq!(eta(100, 2.0, 5.0, false), "; eta 50s");
        assert_eq!(eta(100, 0.0, 0.0, false), "");
        assert_eq!(eta(100, 10.0, 5.0, true), "; eta: once the listing ends");
        assert_eq!(eta(0, 10.0, 5.0, false), "");
    }

    #[test]
    fn summaries_break_at_spaces_to_fit_the_terminal() {
        let text = "this run: 30 registered, 0 failed in 2.0s; 31 requests\nshort\n";
        let out = wrapped(text, 30);
        for line in out.lines() {
            assert!(line.chars().count() <= 30, "{line:?}");
        }
        assert_eq!(out.replace("\n  ", " "), text);
        assert_eq!(wrapped("a b\n", 80), "a b\n");
    }

    #[test]
    fn waiting_follows_what_happened_since_the_last_count() {
        let s = Stats::default();
        s.registered.store(10, Relaxed);
        s.set_awaiting(10);
        s.registered.store(15, Relaxed);
        s.completed.store(7, Relaxed);
        s.import_failed.store(1, Relaxed);
        assert_eq!(s.waiting(), 10 + 5 - 8);
    }

    #[test]
    fn line_counts_and_rate() {
        let s = Stats::default();
        s.queued.store(10, Relaxed);
        s.registered.store(4, Relaxed);
        s.failed.store(1, Relaxed);
        let line = s.line(Duration::from_secs(5));
        assert!(
            line.starts_with("5/10 keys, 1.0/s: 4 registered, 1 failed"),
            "{line}"
        );
        assert!(line.contains("0 retries"), "{line}");
        s.current_rate.store(2_000, Relaxed);
        let line = s.line(Duration::from_secs(5));
        assert!(
            line.ends_with("throttled; rate now 2.0/s; eta 5s"),
            "{line}"
        );
        let message = s.bar_message(Duration::from_secs(5));
        assert!(
            message.ends_with("throttled\n  rate now 2.0/s; eta 5s"),
            "{message}"
        );
        assert!(
            !message.contains("5/10"),
            "the bar shows the totals: {message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn plain_lines_appear_every_interval_and_stop_when_done() {
        let stats = Arc::new(Stats::default());
        stats.queued.store(3, Relaxed);
        let done = CancellationToken::new();
        let canceller = done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            canceller.cancel();
        });
        let mut lines = Vec::new();
        show_lines(&stats, Duration::from_secs(1), &done, |l| {
            lines.push(l.to_owned())
        })
        .await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("0/3 keys"), "{lines:?}");
    }
}
