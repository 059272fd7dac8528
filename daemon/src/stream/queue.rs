//! A channel of byte chunks bounded by bytes: each queued chunk holds as many permits of
//! a semaphore as it has bytes, given back when the consumer takes it. Several queues
//! may share one budget (every stream of a SPDY session does), so a client's queued
//! bytes are bounded per connection however many streams it opens.
//!
//! Hand-written because neither tokio nor futures has a channel bounded by the size of
//! its items; this is a thin layer over tokio's mpsc and Semaphore.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Chunks larger than this are split before they are queued (a budget is never smaller).
pub const CHUNK: usize = 32 << 10;

/// A byte budget, shared by the queues made from it.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>, usize);

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        let bytes = bytes.max(CHUNK);
        Budget(Arc::new(Semaphore::new(bytes)), bytes)
    }

    /// A new queue drawing on this budget.
    pub fn queue(&self) -> (ByteTx, ByteRx) {
        // The count only has to exceed what the budget admits in the smallest chunks
        // anyone sends; the bytes are what bound it.
        let (tx, rx) = mpsc::unbounded_channel();
        (
            ByteTx {
                tx,
                budget: self.clone(),
            },
            ByteRx { rx },
        )
    }
}

/// A queue with a budget of its own.
pub fn queue(bytes: usize) -> (ByteTx, ByteRx) {
    Budget::new(bytes).queue()
}

/// The receiver went away.
#[derive(Debug)]
pub struct Closed;

#[derive(Clone)]
pub struct ByteTx {
    tx: mpsc::UnboundedSender<(Vec<u8>, OwnedSemaphorePermit)>,
    budget: Budget,
}

impl ByteTx {
    /// Queues `data` (in chunks of at most [`CHUNK`]), waiting while the budget is spent.
    pub async fn send(&self, data: Vec<u8>) -> Result<(), Closed> {
        if data.len() <= CHUNK {
            return self.send_chunk(data).await;
        }
        for c in data.chunks(CHUNK) {
            self.send_chunk(c.to_vec()).await?;
        }
        Ok(())
    }

    async fn send_chunk(&self, data: Vec<u8>) -> Result<(), Closed> {
        let n = u32::try_from(data.len().clamp(1, self.budget.1)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            p = self.budget.0.clone().acquire_many_owned(n) => p.map_err(|_| Closed)?,
            _ = self.tx.closed() => return Err(Closed),
        };
        self.tx.send((data, permit)).map_err(|_| Closed)
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub struct ByteRx {
    rx: mpsc::UnboundedReceiver<(Vec<u8>, OwnedSemaphorePermit)>,
}

impl ByteRx {
    /// The next chunk; its bytes leave the budget. None once every sender is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await.map(|(data, _permit)| data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn senders_wait_while_the_shared_budget_is_spent() {
        let b = Budget::new(64 << 10);
        let (a_tx, mut a_rx) = b.queue();
        let (b_tx, mut b_rx) = b.queue();
        a_tx.send(vec![1; 64 << 10]).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(100), b_tx.send(vec![2; 10]));
        assert!(blocked.await.is_err(), "the budget is spent: b must wait");
        assert_eq!(a_rx.recv().await.unwrap().len(), CHUNK);
        b_tx.send(vec![2; 10]).await.unwrap();
        assert_eq!(b_rx.recv().await.unwrap(), vec![2; 10]);
        assert_eq!(a_rx.recv().await.unwrap().len(), CHUNK);
    }

    #[tokio::test]
    async fn a_dropped_receiver_gives_back_its_bytes_and_fails_its_senders() {
        let b = Budget::new(CHUNK);
        let (a_tx, a_rx) = b.queue();
        let (b_tx, mut b_rx) = b.queue();
        a_tx.send(vec![0; CHUNK]).await.unwrap();
        let waiting = tokio::spawn({
            let a_tx = a_tx.clone();
            async move { a_tx.send(vec![0; 5]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a_rx);
        assert!(waiting.await.unwrap().is_err());
        assert!(a_tx.is_closed());
        b_tx.send(vec![7; CHUNK]).await.unwrap();
        assert_eq!(b_rx.recv().await.unwrap().len(), CHUNK);
    }
}
