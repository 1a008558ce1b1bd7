//! Results waiting a moment so that many keys share one transaction (one fsync).
//!
//! Only results go through here, never the pre-send journal: a result lost in a crash leaves
//! its row `in_flight`, which the next run reconciles, so delaying it costs nothing in
//! correctness and saves a commit per key.

use anyhow::Result;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ledger::writer::LedgerWriter;

/// Longest a result waits before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Results that make a flush start at once.
pub const FLUSH_AT: usize = 256;

/// Results not yet written.
pub struct Outbox<T> {
    items: Mutex<Vec<T>>,
    full: Notify,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            full: Notify::new(),
        }
    }
}

impl<T: Send + 'static> Outbox<T> {
    pub fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items.push(item);
        if items.len() >= FLUSH_AT {
            self.full.notify_one();
        }
    }

    /// Something of each result not written yet (the rows they are about, say).
    pub fn pending<K>(&self, of: impl Fn(&T) -> K) -> Vec<K> {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(of)
            .collect()
    }

    /// Everything not written yet, for a caller that writes it itself (ahead of a change that
    /// must come after it).
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs `work` while what it pushes is written; returns once both are done, so nothing
    /// pushed is left unwritten.
    pub async fn flushing_during<W>(
        &self,
        writer: &LedgerWriter,
        write: W,
        work: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()>
    where
        W: Fn(&rusqlite::Connection, &[T]) -> rusqlite::Result<usize> + Clone + Send + 'static,
    {
        let done = CancellationToken::new();
        let working = async {
            let worked = work.await;
            done.cancel();
            worked
        };
        let (worked, flushed) = tokio::join!(working, self.flush_until(writer, &done, write));
        worked.and(flushed)
    }

    /// Writes what waits every [`FLUSH_EVERY`], or sooner when [`FLUSH_AT`] results wait,
    /// until `done`; then once more, so nothing is left behind.
    async fn flush_until<W>(
        &self,
        writer: &LedgerWriter,
        done: &CancellationToken,
        write: W,
    ) -> Result<()>
    where
        W: Fn(&rusqlite::Connection, &[T]) -> rusqlite::Result<usize> + Clone + Send + 'static,
    {
        loop {
            let last = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = self.full.notified() => false,
                _ = done.cancelled() => true,
            };
            let batch = self.take();
            if !batch.is_empty() {
                let write = write.clone();
                writer.write(move |t| write(t, &batch)).await?;
            }
            if last {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::ledger::keys::{claim, counts, insert_keys, record};
    use crate::ledger::{Ledger, NewKey, OnChanged, Outcome, Scope, State};

    #[tokio::test]
    async fn everything_pushed_is_written_by_the_time_the_flusher_ends() {
        let ledger = Ledger::open_in_memory().unwrap();
        let scope = Scope::open(ledger.conn(), "http://mi.test", "w", "p").unwrap();
        let (writer, _thread) = LedgerWriter::spawn(ledger, None);
        let keys: Vec<NewKey> = (0..600)
            .map(|i| NewKey::new("b", format!("k{i}")))
            .collect();
        let s = scope.clone();
        let claimed = writer
            .write(move |t| {
                insert_keys(t, &s, &keys, OnChanged::Report)?;
                claim(t, &s, 600, 1, now_ms())
            })
            .await
            .unwrap();
        let outbox = std::sync::Arc::new(Outbox::default());
        let done = CancellationToken::new();
        let (o, w, d) = (outbox.clone(), writer.clone(), done.clone());
        let flusher = tokio::spawn(async move {
            o.flush_until(&w, &d, |t, items| {
                record(t, items, 1, crate::runner::pace::FIRST_LOOK)
            })
            .await
        });
        for c in claimed {
            outbox.push(Outcome {
                id: c.id,
                state: Some(State::Registered),
                asset_id: Some(c.id),
                ..Default::default()
            });
        }
        done.cancel();
        flusher.await.unwrap().unwrap();
        let n = writer
            .write(move |t| counts(t, Some(&scope)))
            .await
            .unwrap();
        assert!(n.contains(&(State::Registered, 600)), "{n:?}");
    }
}
