//! At-least-once offset bookkeeping: which offset of each partition may be stored.
//!
//! This module owns the rule "an offset is stored only after that sample's verdict (or its
//! dead-letter copy) has been acknowledged by the broker". Verdicts of one partition can be
//! acknowledged out of order (batches in flight, retries), so storing the latest acknowledged
//! offset could skip a sample that is still in flight. The tracker keeps, per partition, the
//! set of offsets received but not yet acknowledged; the storable position is the smallest
//! of those (or one past the highest acknowledged offset when none is in flight) — Kafka's
//! "next offset to read" convention.

use std::collections::{BTreeSet, HashMap};

/// Per-partition in-flight offsets and the highest acknowledged one.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<(String, i32), Part>,
}

#[derive(Debug, Default)]
struct Part {
    in_flight: BTreeSet<i64>,
    /// Highest offset acknowledged so far.
    max_acked: Option<i64>,
    /// Last position handed out by [`OffsetTracker::ack`], to store only on progress.
    last_stored: Option<i64>,
}

impl OffsetTracker {
    /// A tracker with no partitions.
    pub fn new() -> Self {
        Self::default()
    }

    /// A message at `offset` was received and is now in flight.
    pub fn received(&mut self, topic: &str, partition: i32, offset: i64) {
        self.parts
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Part {
                // Nothing before the first offset seen is ours to store.
                last_stored: Some(offset),
                ..Part::default()
            })
            .in_flight
            .insert(offset);
    }

    /// The message at `offset` is done (its verdict or dead-letter copy is acknowledged).
    /// Returns the position to store (next offset to read) when it advanced, else `None`.
    pub fn ack(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.parts.get_mut(&(topic.to_string(), partition))?;
        // An acknowledgement of an offset not in flight (a late one from before a revoke and
        // re-assignment) must not move the stored position past samples fetched again.
        if !p.in_flight.remove(&offset) {
            return None;
        }
        p.max_acked = Some(p.max_acked.map_or(offset, |m| m.max(offset)));
        let pos = match p.in_flight.first() {
            Some(&first) => first,
            None => p.max_acked? + 1,
        };
        if p.last_stored.is_none_or(|s| pos > s) {
            p.last_stored = Some(pos);
            Some(pos)
        } else {
            None
        }
    }

    /// Messages received and not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|p| p.in_flight.len()).sum()
    }

    /// Forget a partition (it was revoked in a rebalance: its in-flight samples will be
    /// redelivered to the new owner from the committed offset).
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_string(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_the_contiguous_acknowledged_prefix() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.received("s", 0, o);
        }
        assert_eq!(t.ack("s", 0, 12), None, "10 and 11 still in flight");
        assert_eq!(t.ack("s", 0, 11), None);
        assert_eq!(t.ack("s", 0, 10), Some(13));
        assert_eq!(t.ack("s", 0, 14), None, "13 still in flight");
        assert_eq!(t.ack("s", 0, 13), Some(15));
        assert_eq!(t.in_flight(), 0);
        // Partitions are independent.
        t.received("s", 1, 0);
        assert_eq!(t.ack("s", 1, 0), Some(1));
        assert_eq!(t.ack("s", 2, 0), None, "unknown partition");
    }

    #[test]
    fn a_late_ack_from_before_a_revoke_does_not_skip_refetched_samples() {
        let mut t = OffsetTracker::new();
        for o in 0..3 {
            t.received("s", 0, o);
        }
        t.revoke("s", 0);
        // Re-assigned: fetched again from the committed offset 0; offset 2's old verdict is
        // acknowledged late. Storing 3 would skip 0 and 1, whose new copies are in flight.
        t.received("s", 0, 0);
        assert_eq!(t.ack("s", 0, 2), None);
        t.received("s", 0, 1);
        assert_eq!(t.ack("s", 0, 0), Some(1), "1 is still in flight");
        // Before: the late ack had set the highest acknowledged offset to 2, and this stored 3.
        assert_eq!(
            t.ack("s", 0, 1),
            Some(2),
            "2's new copy is not acknowledged yet"
        );
    }
}
