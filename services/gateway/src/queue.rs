//! A session's outbound queue: bounded, single consumer (the writer), and
//! allocated only while it holds something. An idle session's queue is an
//! empty `VecDeque` (no heap); after a burst it gives its memory back. (A
//! tokio mpsc channel allocates a block of 32 slots up front, about 2 KiB
//! per session.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// `depth` items are waiting: the consumer is not keeping up.
    Full,
    /// The consumer is gone.
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    depth: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The producing side; cheap to clone.
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// The consuming side. Dropping it closes the queue.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue of at most `depth` items.
pub fn bounded<T>(depth: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
        }),
        ready: Notify::new(),
        depth: depth.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Appends `item` unless the queue is full or closed.
    pub fn try_send(&self, item: T) -> Result<(), PushError> {
        let mut st = self.0.lock();
        if st.closed {
            return Err(PushError::Closed);
        }
        if st.items.len() >= self.0.depth {
            return Err(PushError::Full);
        }
        st.items.push_back(item);
        drop(st);
        // Stores a permit if the consumer is not waiting yet.
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Appends `item` only while the queue is at most half full: for hints
    /// (heads) that must never take the room real work needs. False when
    /// it was not queued.
    pub fn try_send_hint(&self, item: T) -> bool {
        let mut st = self.0.lock();
        if st.closed || st.items.len() >= self.0.depth / 2 {
            return false;
        }
        st.items.push_back(item);
        drop(st);
        self.0.ready.notify_one();
        true
    }
}

impl<T> Receiver<T> {
    /// The next item, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut st = self.0.lock();
        let item = st.items.pop_front();
        if st.items.is_empty() && st.items.capacity() > 0 {
            // Idle sessions hold no queue memory (one allocation per burst
            // is cheaper than holding it in every idle session).
            st.items = VecDeque::new();
        }
        item
    }

    /// Waits for the next item. (Never `None` while a sender may push: the
    /// queue closes only when this receiver is dropped.)
    pub async fn recv(&mut self) -> T {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            self.0.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.closed = true;
        st.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn holds_at_most_depth_then_reports_full() {
        let (tx, mut rx) = bounded::<u32>(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(PushError::Full));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(tx.try_send(3), Ok(()));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn allocates_nothing_while_empty_and_gives_memory_back_after_a_burst() {
        let (tx, mut rx) = bounded::<u64>(1000);
        assert_eq!(tx.0.lock().items.capacity(), 0);
        for i in 0..500 {
            assert_eq!(tx.try_send(i), Ok(()));
        }
        assert!(tx.0.lock().items.capacity() >= 500);
        for i in 0..500 {
            assert_eq!(rx.try_recv(), Some(i));
        }
        assert_eq!(tx.0.lock().items.capacity(), 0);
    }

    #[test]
    fn hints_never_fill_more_than_half_the_queue() {
        let (tx, mut rx) = bounded::<u32>(4);
        assert!(tx.try_send_hint(1));
        assert!(tx.try_send_hint(2));
        assert!(!tx.try_send_hint(3), "a hint took the second half");
        assert_eq!(tx.try_send(3), Ok(()));
        assert_eq!(tx.try_send(4), Ok(()), "real work still fits");
        assert_eq!(rx.try_recv(), Some(1));
        assert!(!tx.try_send_hint(5));
    }

    #[test]
    fn a_dropped_receiver_closes_the_queue() {
        let (tx, rx) = bounded::<u32>(4);
        assert_eq!(tx.try_send(1), Ok(()));
        drop(rx);
        assert_eq!(tx.try_send(2), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn recv_wakes_for_an_item_pushed_while_it_waits() {
        let (tx, mut rx) = bounded::<u32>(4);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert_eq!(tx.try_send(7), Ok(()));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(got, Ok(Ok(7))), "{got:?}");
    }
}
