//! Per-transaction bookkeeping: how many records each transaction sent and how many
//! are settled, and when that makes a [`Completion`].
//!
//! The ledger only decides; it sends nothing. Its caller emits the completions it
//! returns, so a mode that must hold completions back (until a Kafka transaction
//! commits, say) changes the caller, not the counting. Settlements can arrive in any
//! order (docs/architecture.md, "Delivery reports"), so nothing here depends on it.

use std::collections::HashMap;

use crate::record::{Completion, DeliveryFailure, TxnId};

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    txns: HashMap<TxnId, TxnState>,
}

#[derive(Debug, Default)]
struct TxnState {
    /// Records registered (handed to librdkafka, or refused by it and being handled).
    sent: usize,
    /// Records settled, successfully or not.
    settled: usize,
    /// Records settled by their dead-letter record's acknowledgement.
    dead_lettered: usize,
    /// Set by `end`.
    expected: Option<usize>,
    /// A `Failed` completion was returned.
    failed: bool,
}

impl Ledger {
    /// Counts a record of `txn` as sent. Refused once the transaction has ended.
    pub(crate) fn register(&mut self, txn: TxnId) -> Result<(), String> {
        let state = self.txns.entry(txn).or_default();
        if let Some(expected) = state.expected {
            return Err(format!(
                "send for {txn} after end_transaction({txn}, {expected})"
            ));
        }
        state.sent += 1;
        Ok(())
    }

    /// Undoes `register` for a record librdkafka did not take (queue full, fatal).
    pub(crate) fn unregister(&mut self, txn: TxnId) {
        if let Some(state) = self.txns.get_mut(&txn) {
            state.sent = state.sent.saturating_sub(1);
            if state.sent == 0 && state.expected.is_none() {
                self.txns.remove(&txn);
            }
        }
    }

    /// No more records for `txn`; the caller says `record_count` were sent. A count
    /// that disagrees with ours fails the transaction: something upstream lost or
    /// invented a record, and completing it could confirm a position whose records
    /// never reached Kafka.
    pub(crate) fn end(&mut self, txn: TxnId, record_count: usize) -> Option<Completion> {
        let state = self.txns.entry(txn).or_default();
        if state.expected.is_some() {
            tracing::warn!(%txn, "end_transaction called twice; ignoring the second call");
            return None;
        }
        state.expected = Some(record_count);
        if state.sent != record_count && !state.failed {
            state.failed = true;
            let reason = format!(
                "end_transaction declared {record_count} records but {} were sent",
                state.sent
            );
            tracing::error!(%txn, %reason, "transaction record count mismatch");
            let failure = DeliveryFailure {
                event_id: String::new(),
                lsn: 0,
                index: 0,
                topic: String::new(),
                reason,
                transient: false,
            };
            self.finish(txn);
            return Some(Completion::Failed { txn, failure });
        }
        self.finish(txn)
    }

    /// A record of `txn` was acknowledged, on its own topic or (`dead_lettered`) on the
    /// dead-letter topic.
    pub(crate) fn settle_ok(&mut self, txn: TxnId, dead_lettered: bool) -> Option<Completion> {
        let Some(state) = self.txns.get_mut(&txn) else {
            tracing::warn!(%txn, "delivery report for an unknown transaction");
            return None;
        };
        state.settled += 1;
        if dead_lettered {
            state.dead_lettered += 1;
        }
        self.finish(txn)
    }

    /// A record of `txn` could neither be delivered nor dead-lettered. The first such
    /// record fails the transaction; `failure` is only built for that one.
    pub(crate) fn settle_failed(
        &mut self,
        txn: TxnId,
        failure: impl FnOnce() -> DeliveryFailure,
    ) -> Option<Completion> {
        let Some(state) = self.txns.get_mut(&txn) else {
            tracing::warn!(%txn, "failure report for an unknown transaction");
            return None;
        };
        state.settled += 1;
        if state.failed {
            tracing::debug!(%txn, "another record of a failed transaction failed");
            self.finish(txn);
            return None;
        }
        state.failed = true;
        let failure = failure();
        tracing::debug!(%txn, %failure, "transaction failed");
        self.finish(txn);
        Some(Completion::Failed { txn, failure })
    }

    /// Once the transaction has ended and every record is settled: forgets it, and
    /// returns `Delivered` unless it failed (its `Failed` went out already).
    fn finish(&mut self, txn: TxnId) -> Option<Completion> {
        let state = self.txns.get(&txn)?;
        let expected = state.expected?;
        if state.settled < state.sent {
            return None;
        }
        let delivered = (!state.failed).then_some(Completion::Delivered {
            txn,
            records: expected,
            dead_lettered: state.dead_lettered,
        });
        self.txns.remove(&txn);
        delivered
    }

    /// Transactions still tracked (sent to, or ended, and not finished).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.txns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(reason: &str) -> DeliveryFailure {
        DeliveryFailure {
            event_id: "e-1".into(),
            lsn: 1,
            index: 0,
            topic: "t".into(),
            reason: reason.into(),
            transient: false,
        }
    }

    #[test]
    fn delivered_once_ended_and_all_settled_in_any_order() {
        let mut l = Ledger::default();
        let t = TxnId(1);
        for _ in 0..3 {
            l.register(t).unwrap();
        }
        assert_eq!(l.settle_ok(t, false), None);
        assert_eq!(l.settle_ok(t, true), None);
        assert_eq!(l.end(t, 3), None, "one record still in flight");
        assert_eq!(
            l.settle_ok(t, false),
            Some(Completion::Delivered {
                txn: t,
                records: 3,
                dead_lettered: 1
            })
        );
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn empty_transaction_completes_at_end() {
        let mut l = Ledger::default();
        assert_eq!(
            l.end(TxnId(9), 0),
            Some(Completion::Delivered {
                txn: TxnId(9),
                records: 0,
                dead_lettered: 0
            })
        );
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn one_failed_completion_per_transaction() {
        let mut l = Ledger::default();
        let t = TxnId(2);
        l.register(t).unwrap();
        l.register(t).unwrap();
        l.end(t, 2);
        let first = l.settle_failed(t, || failure("first"));
        assert!(
            matches!(&first, Some(Completion::Failed { failure, .. }) if failure.reason == "first")
        );
        assert_eq!(
            l.settle_failed(t, || unreachable!("built only for the first")),
            None
        );
        assert_eq!(l.tracked(), 0, "finished after the last settlement");
    }

    #[test]
    fn a_count_mismatch_fails_and_registering_after_end_is_refused() {
        let mut l = Ledger::default();
        let t = TxnId(3);
        l.register(t).unwrap();
        let c = l.end(t, 2);
        assert!(
            matches!(&c, Some(Completion::Failed { failure, .. }) if failure.reason.contains("declared 2")),
            "{c:?}"
        );
        assert!(l.register(t).is_err());
        assert_eq!(l.end(t, 1), None, "a second end is ignored");
        assert_eq!(l.settle_ok(t, false), None, "no Delivered after Failed");
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn unregister_forgets_an_unended_transaction_without_records() {
        let mut l = Ledger::default();
        l.register(TxnId(4)).unwrap();
        l.unregister(TxnId(4));
        assert_eq!(l.tracked(), 0);
        assert_eq!(l.settle_ok(TxnId(4), false), None, "unknown: ignored");
    }
}
