//! The ledger's single writer: one thread owns the connection; async tasks send it work.
//!
//! Work that arrives together is committed together: the thread takes every job waiting in
//! its queue, runs them all in one transaction, commits (one fsync), and only then answers
//! each caller. So a caller that gets an answer knows its change is on disk, and the number
//! of fsyncs stays small however many keys are moving.

use anyhow::{Result, anyhow};
use rusqlite::Transaction;
use std::sync::mpsc;
use tokio::sync::oneshot;

use super::Ledger;

/// Most jobs committed in one transaction: bounds the latency a large batch adds to the jobs
/// queued behind it.
const MAX_JOBS_PER_COMMIT: usize = 512;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// Given the open transaction, or why none could be opened (then it only answers its caller).
type Job = Box<dyn FnOnce(Result<&Transaction<'_>, &str>) -> Reply + Send>;

/// A handle to the writer thread. Cheap to clone; the thread ends when every handle is gone.
#[derive(Clone)]
pub struct LedgerWriter {
    jobs: mpsc::Sender<Job>,
}

impl LedgerWriter {
    /// Moves the ledger onto its own thread.
    pub fn spawn(ledger: Ledger) -> (Self, std::thread::JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || serve(ledger, queue))
            .expect("spawning the ledger thread");
        (Self { jobs }, thread)
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
                .map_err(|e| anyhow!("ledger: cannot start a transaction: {e}"))
                .and_then(|txn| work(txn).map_err(|e| anyhow!("ledger: {e}")));
            Box::new(move |committed: Result<(), String>| {
                let answer = match (result, committed) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(anyhow!("ledger commit failed: {e}")),
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

fn serve(mut ledger: Ledger, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let txn = match ledger.conn_mut().transaction() {
            Ok(txn) => txn,
            Err(e) => {
                let message = e.to_string();
                for job in jobs {
                    job(Err(&message))(Ok(()));
                }
                continue;
            }
        };
        let replies: Vec<Reply> = jobs.into_iter().map(|job| job(Ok(&txn))).collect();
        let committed = txn.commit().map_err(|e| e.to_string());
        for reply in replies {
            reply(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{NewKey, Scope, State, claim, counts, insert_keys};

    #[tokio::test]
    async fn concurrent_writes_all_commit_and_answer() {
        let (writer, thread) = LedgerWriter::spawn(Ledger::open_in_memory().unwrap());
        let scope = Scope {
            workspace: "w".into(),
            project: "p".into(),
        };
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (w, s) = (writer.clone(), scope.clone());
            tasks.push(tokio::spawn(async move {
                let k = NewKey::new("b", format!("k{i}"));
                w.write(move |t| insert_keys(t, &s, &[k])).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().new, 1);
        }
        let s = scope.clone();
        let got = writer.write(move |t| claim(t, &s, 100)).await.unwrap();
        assert_eq!(got.len(), 50);
        let n = writer
            .write(move |t| counts(t, Some(&scope)))
            .await
            .unwrap();
        assert!(n.contains(&(State::InFlight, 50)));
        drop(writer);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_failing_statement_is_reported_to_its_caller() {
        let (writer, _thread) = LedgerWriter::spawn(Ledger::open_in_memory().unwrap());
        let err = writer
            .write(|t| t.execute("INSERT INTO no_such_table VALUES (1)", []))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no_such_table"), "{err}");
    }
}
