//! The ledger's single writer: one task owns the connection; async tasks send it work.
//!
//! Work that arrives together is committed together: the writer takes every job waiting in
//! its queue, runs them all in one transaction, commits (one fsync), and only then answers
//! each caller. So a caller that gets an answer knows its change is on disk, and the number
//! of fsyncs stays small however many keys are moving. Each commit also stamps the run's
//! heartbeat, so a killed run's last moment of life is on disk.
//!
//! A batch runs as a blocking task of the runtime (`spawn_blocking`), the connection handed
//! to it and back: SQLite never blocks a worker thread, the batch reads the runtime's clock
//! ([`crate::clock`]), and on a paused test runtime time does not move while it runs.

use anyhow::{Result, anyhow};
use rusqlite::Transaction;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::{mpsc, oneshot};

use super::Ledger;
use crate::clock::now_ms;

/// Most jobs committed in one transaction: bounds the latency a large batch adds to the jobs
/// queued behind it.
const MAX_JOBS_PER_COMMIT: usize = 512;

type Reply = Box<dyn FnOnce(Result<(), rusqlite::Error>) + Send>;
/// Given the open transaction, or why none could be opened (then it only answers its caller).
type Job = Box<dyn FnOnce(Result<&Transaction<'_>, &rusqlite::Error>) -> Reply + Send>;

/// A handle to the writer. Cheap to clone; the writer ends when every handle is gone.
#[derive(Clone)]
pub struct LedgerWriter {
    jobs: mpsc::UnboundedSender<Job>,
    /// When the last commit stamped the run's heartbeat (Unix ms; 0 before the first).
    beat: Arc<AtomicI64>,
}

impl LedgerWriter {
    /// Moves the ledger into its writer, a task of the current runtime; each commit stamps
    /// `run`'s heartbeat, if any. The task ends once every handle is dropped.
    pub fn spawn(ledger: Ledger, run: Option<i64>) -> (Self, tokio::task::JoinHandle<()>) {
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        let beat = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn(serve(ledger, queue, run, beat.clone()));
        (Self { jobs, beat }, task)
    }

    /// Makes sure the run's heartbeat on disk is at most `age` old: commits (and so stamps
    /// it) if the last commit was longer ago. A request sent after this left no later than
    /// `age` after a heartbeat a later run can read.
    pub async fn beat_within(&self, age: std::time::Duration) -> Result<()> {
        let last = self.beat.load(Ordering::SeqCst);
        if now_ms() - last <= age.as_millis() as i64 {
            return Ok(());
        }
        self.write(|_| Ok(())).await
    }

    /// Runs `work` inside the next transaction; resolves once that transaction is committed.
    pub async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let result = txn
                .map_err(|e| {
                    anyhow::Error::new(same_error(e)).context("ledger: cannot start a transaction")
                })
                .and_then(|txn| work(txn).map_err(|e| anyhow::Error::new(e).context("ledger")));
            Box::new(move |committed: Result<(), rusqlite::Error>| {
                let answer = match (result, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(anyhow::Error::new(e).context("ledger: commit failed")),
                };
                let _ = tx.send(answer);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| anyhow!("the ledger writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow!("the ledger writer has stopped"))?
    }
}

/// Takes what waits in the queue, commits it as one batch on a blocking thread, and again,
/// until every handle is gone.
async fn serve(
    mut ledger: Ledger,
    mut queue: mpsc::UnboundedReceiver<Job>,
    run: Option<i64>,
    beat: Arc<AtomicI64>,
) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let beat = beat.clone();
        let committed = tokio::task::spawn_blocking(move || {
            commit(&mut ledger, jobs, run, &beat);
            ledger
        })
        .await;
        match committed {
            Ok(back) => ledger = back,
            // A job panicked: the writer is gone, and every later write says so.
            Err(_) => return,
        }
    }
}

/// Runs `jobs` in one transaction, stamps the heartbeat, commits, and answers each.
fn commit(ledger: &mut Ledger, jobs: Vec<Job>, run: Option<i64>, beat: &AtomicI64) {
    let txn = match ledger.conn_mut().transaction() {
        Ok(txn) => txn,
        Err(e) => {
            for job in jobs {
                job(Err(&e))(Ok(()));
            }
            return;
        }
    };
    let replies: Vec<Reply> = jobs.into_iter().map(|job| job(Ok(&txn))).collect();
    let stamped_at = now_ms();
    let stamped = match run {
        Some(run) => super::runs::heartbeat(&txn, run, stamped_at),
        None => Ok(()),
    };
    let committed = stamped.and_then(|()| txn.commit());
    if committed.is_ok() && run.is_some() {
        beat.store(stamped_at, Ordering::SeqCst);
    }
    for reply in replies {
        reply(match &committed {
            Ok(()) => Ok(()),
            Err(e) => Err(same_error(e)),
        });
    }
}

/// rusqlite's error is not `Clone`; every caller of a failed commit gets its code and text.
fn same_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::ToSqlConversionFailure(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::ledger::keys::{claim, counts, insert_keys};
    use crate::ledger::{NewKey, OnChanged, Scope, State};

    #[tokio::test]
    async fn concurrent_writes_all_commit_and_answer() {
        let ledger = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(ledger.conn(), "http://mi.test", "w", "p").unwrap();
        let (writer, thread) = LedgerWriter::spawn(ledger, None);
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (w, s) = (writer.clone(), scope.clone());
            tasks.push(tokio::spawn(async move {
                let k = NewKey::new("b", format!("k{i}"));
                w.write(move |t| insert_keys(t, &s, &[k], OnChanged::Report))
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().new, 1);
        }
        let s = scope.clone();
        let got = writer
            .write(move |t| claim(t, &s, 100, 1, now_ms()))
            .await
            .unwrap();
        assert_eq!(got.len(), 50);
        let n = writer
            .write(move |t| counts(t, Some(&scope)))
            .await
            .unwrap();
        assert!(n.contains(&(State::InFlight, 50)));
        drop(writer);
        thread.await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_statement_is_reported_to_its_caller() {
        let (writer, _thread) = LedgerWriter::spawn(Ledger::open_in_memory().unwrap(), None);
        let err = writer
            .write(|t| t.execute("INSERT INTO no_such_table VALUES (1)", []))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");
    }

    #[tokio::test]
    async fn every_commit_stamps_the_runs_heartbeat() {
        let ledger = Ledger::open_in_memory().unwrap();
        let run = crate::ledger::start_run(
            ledger.conn(),
            "run",
            None,
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        ledger
            .conn()
            .execute("UPDATE runs SET alive_at = 0", [])
            .unwrap();
        let (writer, _thread) = LedgerWriter::spawn(ledger, Some(run));
        let before = now_ms();
        let alive: i64 = writer
            .write(|t| t.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap();
        assert_eq!(alive, 1);
        let stamped: i64 = writer
            .write(|t| t.query_row("SELECT alive_at FROM runs", [], |r| r.get(0)))
            .await
            .unwrap();
        assert!(stamped >= before, "{stamped} < {before}");
    }
}
