//! The timer heap: entries ordered by deadline, ties broken by insertion order so timers
//! with equal deadlines fire FIFO. Cancellation is lazy: the caller decides, through a
//! predicate, which entries are dead; they are skipped when popped or dropped by `retain`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A min-heap of `(deadline, item)`; equal deadlines pop in insertion order.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerHeap<T> {
    pub fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Schedules `item` at `when`. NaN must be rejected by the caller.
    pub fn push(&mut self, when: f64, item: T) {
        debug_assert!(!when.is_nan());
        self.seq += 1;
        self.heap.push(Entry {
            when,
            seq: self.seq,
            item,
        });
    }

    /// The earliest entry, dead or alive.
    pub fn peek(&self) -> Option<(f64, &T)> {
        self.heap.peek().map(|e| (e.when, &e.item))
    }

    /// Removes and returns the earliest entry.
    pub fn pop(&mut self) -> Option<(f64, T)> {
        self.heap.pop().map(|e| (e.when, e.item))
    }

    /// Pops the earliest entry if its deadline is strictly before `deadline`.
    pub fn pop_due(&mut self, deadline: f64) -> Option<T> {
        match self.heap.peek() {
            Some(e) if e.when < deadline => self.heap.pop().map(|e| e.item),
            _ => None,
        }
    }

    /// Moves the entries for which `dead` is true out (one O(n) rebuild that keeps the
    /// order of the rest), so the caller can drop them outside any lock it holds.
    pub fn remove_where(&mut self, mut dead: impl FnMut(&T) -> bool) -> Vec<T> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .partition(|e| dead(&e.item));
        self.heap = BinaryHeap::from(kept);
        gone.into_iter().map(|e| e.item).collect()
    }

    /// Removes every entry, returning them in no particular order.
    pub fn drain(&mut self) -> Vec<T> {
        self.heap.drain().map(|e| e.item).collect()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_fifo_on_ties() {
        let mut h = TimerHeap::new();
        h.push(2.0, "c");
        h.push(1.0, "a");
        h.push(1.0, "b");
        h.push(f64::INFINITY, "never");
        assert_eq!(h.pop_due(1.5), Some("a"));
        assert_eq!(h.pop_due(1.5), Some("b"));
        assert_eq!(h.pop_due(1.5), None);
        assert_eq!(h.peek().map(|(w, _)| w), Some(2.0));
        assert_eq!(h.pop_due(1e300), Some("c"));
        assert_eq!(h.pop_due(1e300), None, "an infinite deadline never fires");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn remove_where_drops_dead_entries_and_keeps_order() {
        let mut h = TimerHeap::new();
        for i in 0..100 {
            h.push(f64::from(100 - i), i);
        }
        let gone = h.remove_where(|i| i % 2 == 1);
        assert_eq!(gone.len(), 50);
        assert_eq!(h.len(), 50);
        let mut last = f64::NEG_INFINITY;
        while let Some((when, item)) = h.pop() {
            assert!(when >= last);
            assert_eq!(item % 2, 0);
            last = when;
        }
    }
}
