//! A loop's pool of spent `call_soon_threadsafe` handles, whose objects later posts
//! reuse: a flood of posts then allocates and frees no Python object per post (+18%
//! posts/s from one thread). Only the GIL guards it: posters and the loop thread use it
//! under the GIL, never together.
//!
//! Size: a flood's batch of posts comes back to the pool after it has run, and the next
//! batch takes it out again; the pool never holds more objects than were queued at once.
//! Each time the loop goes idle it frees what was not taken since the last time (the
//! pool's low-water mark), so a loop that has gone quiet keeps at most the last batch's
//! worth, and an idle one keeps a few.

use pyo3::prelude::*;

use crate::gil::GilCell;
use crate::handles::Handle;

pub struct Spent(GilCell<Pool>);

struct Pool {
    handles: Vec<Py<Handle>>,
    /// The fewest handles the pool held since the last `trim`.
    low: usize,
    /// How many posts reused an object (introspection for tests).
    reused: u64,
}

impl Default for Spent {
    fn default() -> Self {
        Spent(GilCell::new(Pool {
            handles: Vec::new(),
            low: 0,
            reused: 0,
        }))
    }
}

impl Spent {
    /// The most the pool holds (~1.8 MiB of objects): twice what flow control lets a
    /// flood have queued (see `Throttle::CALLBACKS`), so a flood's batches all come back.
    pub const MAX: usize = 1 << 14;
    /// What a pool trimmed twice without a post keeps.
    pub const IDLE: usize = 256;

    /// An object to reuse for a post: its one reference (see `Handle::spend`).
    #[inline(always)]
    pub fn take(&self, py: Python<'_>) -> Option<Py<Handle>> {
        self.0.with(py, |pool| {
            let handle = pool.handles.pop()?;
            pool.low = pool.low.min(pool.handles.len());
            pool.reused += 1;
            Some(handle)
        })
    }

    /// Takes the loop's reference to a posted handle it has run (or dropped): kept for
    /// reuse if that is the object's only reference (`Handle::spend`), else let go.
    pub fn keep(&self, py: Python<'_>, handle: Py<Handle>) {
        let room = self.0.with(py, |pool| pool.handles.len() < Self::MAX);
        if room && Handle::spend(py, &handle) {
            self.0.with(py, |pool| pool.handles.push(handle));
        }
    }

    /// The loop goes idle: frees the objects no post took since the last trim (keeping a
    /// few), then starts counting again.
    pub fn trim(&self, py: Python<'_>) {
        let unused = self.0.with(py, |pool| {
            let len = pool.handles.len();
            let free = pool.low.min(len.saturating_sub(Self::IDLE));
            // The bottom ones: the least recently used (the pool is a stack).
            let unused: Vec<Py<Handle>> = pool.handles.drain(..free).collect();
            pool.low = pool.handles.len();
            unused
        });
        drop(unused); // (outside the cell: freeing objects may run the GC)
    }

    /// (Introspection for tests.) How many objects the pool holds, and how many posts
    /// reused one so far.
    pub fn counts(&self, py: Python<'_>) -> (usize, u64) {
        self.0.with(py, |pool| (pool.handles.len(), pool.reused))
    }

    /// At close: frees every object.
    pub fn clear(&self, py: Python<'_>) {
        let all = self.0.with(py, |pool| {
            pool.low = 0;
            std::mem::take(&mut pool.handles)
        });
        drop(all);
    }
}
