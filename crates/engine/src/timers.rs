//! The timer heap (4-ary): entries ordered by deadline, ties broken by insertion order so timers
//! with equal deadlines fire FIFO. Cancellation is lazy: the caller decides, through a
//! predicate, which entries are dead; they are skipped when popped or dropped by `remove_where`.

/// Children per node. A 4-ary heap halves the depth of a binary one, and with it the
/// cache misses of a pop when hundreds of thousands of timers are scheduled.
const ARITY: usize = 4;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    /// Earlier deadline first; equal deadlines in insertion order.
    #[inline]
    fn before(&self, other: &Self) -> bool {
        self.when < other.when || (self.when == other.when && self.seq < other.seq)
    }
}

/// A min-heap of `(deadline, item)`; equal deadlines pop in insertion order.
pub struct TimerHeap<T> {
    entries: Vec<Entry<T>>,
    seq: u64,
    /// An upper bound of every deadline in the heap (exact after a rebuild).
    max_when: f64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerHeap<T> {
    pub fn new() -> Self {
        TimerHeap {
            entries: Vec::new(),
            seq: 0,
            max_when: f64::NEG_INFINITY,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Schedules `item` at `when`. NaN must be rejected by the caller.
    pub fn push(&mut self, when: f64, item: T) {
        debug_assert!(!when.is_nan());
        self.seq += 1;
        self.max_when = self.max_when.max(when);
        self.entries.push(Entry {
            when,
            seq: self.seq,
            item,
        });
        self.sift_up(self.entries.len() - 1);
    }

    /// The earliest entry, dead or alive.
    pub fn peek(&self) -> Option<(f64, &T)> {
        self.entries.first().map(|e| (e.when, &e.item))
    }

    /// Removes and returns the earliest entry.
    pub fn pop(&mut self) -> Option<(f64, T)> {
        if self.entries.is_empty() {
            return None;
        }
        let top = self.entries.swap_remove(0);
        if !self.entries.is_empty() {
            self.sift_down(0);
        }
        Some((top.when, top.item))
    }

    /// Pops the earliest entry if its deadline is strictly before `deadline`. A NaN
    /// `deadline` (a clock reading NaN) finds every entry due, as asyncio's
    /// `when >= end` test never holds then.
    pub fn pop_due(&mut self, deadline: f64) -> Option<T> {
        match self.entries.first() {
            Some(e) if e.when < deadline || deadline.is_nan() => self.pop().map(|(_, item)| item),
            _ => None,
        }
    }

    /// Moves every entry due strictly before `deadline` (all of them if it is NaN) into
    /// `out`, in firing order.
    /// When every entry is due (a timer storm, or a loop that was blocked), the whole
    /// heap is sorted at once instead of popped one by one: sequential, cache-friendly.
    pub fn pop_all_due(&mut self, deadline: f64, out: &mut impl Extend<T>) {
        if self.entries.len() > 64 && (self.max_when < deadline || deadline.is_nan()) {
            let mut all = std::mem::take(&mut self.entries);
            all.sort_unstable_by(|a, b| a.when.total_cmp(&b.when).then(a.seq.cmp(&b.seq)));
            self.max_when = f64::NEG_INFINITY;
            out.extend(all.into_iter().map(|e| e.item));
            return;
        }
        out.extend(std::iter::from_fn(|| self.pop_due(deadline)));
    }

    /// Moves the entries for which `dead` is true out (one O(n) rebuild that keeps the
    /// order of the rest), so the caller can drop them outside any lock it holds.
    pub fn remove_where(&mut self, mut dead: impl FnMut(&T) -> bool) -> Vec<T> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| dead(&e.item));
        self.entries = kept;
        self.max_when = self
            .entries
            .iter()
            .map(|e| e.when)
            .fold(f64::NEG_INFINITY, f64::max);
        if self.entries.len() > 1 {
            for i in (0..=(self.entries.len() - 2) / ARITY).rev() {
                self.sift_down(i);
            }
        }
        gone.into_iter().map(|e| e.item).collect()
    }

    /// Removes every entry, returning them in no particular order.
    pub fn drain(&mut self) -> Vec<T> {
        self.max_when = f64::NEG_INFINITY;
        self.entries.drain(..).map(|e| e.item).collect()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.item)
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if !self.entries[i].before(&self.entries[parent]) {
                break;
            }
            self.entries.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let len = self.entries.len();
        loop {
            let first = i * ARITY + 1;
            if first >= len {
                break;
            }
            let mut min = first;
            for c in first + 1..(first + ARITY).min(len) {
                if self.entries[c].before(&self.entries[min]) {
                    min = c;
                }
            }
            if !self.entries[min].before(&self.entries[i]) {
                break;
            }
            self.entries.swap(i, min);
            i = min;
        }
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
    fn random_pushes_and_pops_come_out_sorted_and_stable() {
        // A small LCG: deterministic, no dependency.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let mut h = TimerHeap::new();
        let mut model = Vec::new();
        for i in 0..5000u64 {
            let when = (next() % 64) as f64;
            h.push(when, i);
            model.push((when, i));
            if next() % 3 == 0 {
                let got = h.pop().unwrap();
                model.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                assert_eq!(got, model.remove(0));
            }
        }
        model.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let rest: Vec<_> = std::iter::from_fn(|| h.pop()).collect();
        assert_eq!(rest, model);
    }

    #[test]
    fn pop_all_due_keeps_firing_order_on_both_paths() {
        for (n, deadline) in [(1000, 1e9), (1000, 500.0), (10, 1e9)] {
            let mut h = TimerHeap::new();
            for i in 0..n {
                h.push(f64::from((i * 7919) % 1000), i);
            }
            let mut out = Vec::new();
            h.pop_all_due(deadline, &mut out);
            let mut expected: Vec<_> = (0..n)
                .map(|i| (f64::from((i * 7919) % 1000), i))
                .filter(|(w, _)| *w < deadline)
                .collect();
            expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            assert_eq!(out, expected.iter().map(|e| e.1).collect::<Vec<_>>());
            assert_eq!(h.len(), n as usize - out.len());
        }
    }

    #[test]
    fn a_nan_deadline_finds_every_entry_due_on_both_paths() {
        for n in [10, 1000] {
            let mut h = TimerHeap::new();
            h.push(f64::INFINITY, n);
            for i in 0..n {
                h.push(f64::from((i * 7919) % 1000), i);
            }
            let mut out = Vec::new();
            h.pop_all_due(f64::NAN, &mut out);
            let mut expected: Vec<_> = (0..n).map(|i| (f64::from((i * 7919) % 1000), i)).collect();
            expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            expected.push((f64::INFINITY, n));
            assert_eq!(out, expected.iter().map(|e| e.1).collect::<Vec<_>>());
            assert!(h.is_empty());
        }
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
