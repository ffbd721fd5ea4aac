//! The in-flight budget: how many records and bytes are handed to librdkafka and not
//! yet settled, against the configured caps. `send` waits for room; every release
//! wakes the waiters (senders, `flush`).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct InFlightBudget {
    records: AtomicUsize,
    bytes: AtomicUsize,
    max_records: usize,
    max_bytes: usize,
    changed: Notify,
}

impl InFlightBudget {
    pub(crate) fn new(max_records: usize, max_bytes: usize) -> InFlightBudget {
        InFlightBudget {
            records: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_records,
            max_bytes,
            changed: Notify::new(),
        }
    }

    /// Records and bytes in flight.
    pub(crate) fn in_flight(&self) -> (usize, usize) {
        (
            self.records.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }

    /// Whether one more record of `bytes` fits the caps. A record larger than the byte
    /// cap is admitted when nothing else is in flight, or it would wait forever.
    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        let (records, in_bytes) = self.in_flight();
        records < self.max_records
            && (records == 0 || in_bytes.saturating_add(bytes) <= self.max_bytes)
    }

    /// Counts one record of `bytes` as in flight.
    pub(crate) fn reserve(&self, bytes: usize) {
        self.records.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Returns one record of `bytes` and wakes the waiters.
    pub(crate) fn release(&self, bytes: usize) {
        // Saturating, so that an accounting bug shows as a wrong number, not a wrap.
        let _ = self
            .records
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(bytes))
            });
        self.wake();
    }

    /// Wakes the waiters without a release (e.g. the producer failed fatally, so that
    /// waiting senders notice).
    pub(crate) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// A future that completes at the next release or wake. Enable it before checking
    /// the condition it waits for, so that a release in between is not missed.
    pub(crate) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_bind_on_records_and_on_bytes() {
        let b = InFlightBudget::new(3, 100);
        assert!(b.has_room(500), "an oversized record fits an empty budget");
        b.reserve(60);
        assert!(!b.has_room(41));
        assert!(b.has_room(40));
        b.reserve(20);
        b.reserve(20);
        assert_eq!(b.in_flight(), (3, 100));
        assert!(!b.has_room(0), "record cap reached");
        b.release(60);
        assert_eq!(b.in_flight(), (2, 40));
        assert!(b.has_room(60));
    }

    #[test]
    fn release_saturates_instead_of_wrapping() {
        let b = InFlightBudget::new(3, 100);
        b.release(10);
        assert_eq!(b.in_flight(), (0, 0));
    }

    #[tokio::test]
    async fn release_wakes_an_enabled_waiter() {
        let b = InFlightBudget::new(1, 100);
        b.reserve(10);
        let woken = b.changed();
        tokio::pin!(woken);
        woken.as_mut().enable();
        b.release(10);
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("woken by the release");
    }
}
