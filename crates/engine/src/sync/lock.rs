//! Ownership and recursion depth of a reentrant lock, layered over a one-permit
//! [`Semaphore`](super::Semaphore). The owner is an opaque non-zero id chosen by the
//! caller (a thread ident, or a task's identity). Invariant: `owner` and `depth` are
//! written only by the current owner, after acquiring and before releasing the permit.

use super::prim::{AtomicUsize, Ordering::*};

#[derive(Default)]
pub struct RecursiveOwner {
    owner: AtomicUsize,
    depth: AtomicUsize,
}

impl RecursiveOwner {
    pub fn owner(&self) -> usize {
        self.owner.load(Acquire)
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Relaxed)
    }

    pub fn is_owned_by(&self, me: usize) -> bool {
        self.owner() == me
    }

    /// The owner re-enters; returns the new depth.
    pub fn reenter(&self) -> usize {
        self.depth.fetch_add(1, Relaxed) + 1
    }

    /// Just acquired the underlying permit: becomes the owner at `depth`.
    pub fn take(&self, me: usize, depth: usize) {
        self.depth.store(depth, Relaxed);
        self.owner.store(me, Release);
    }

    /// The owner leaves one level; returns true when it left the last one (the caller
    /// then releases the permit).
    pub fn leave(&self) -> bool {
        let d = self.depth.fetch_sub(1, Relaxed) - 1;
        if d == 0 {
            self.owner.store(0, Release);
            return true;
        }
        false
    }

    /// The owner gives the lock up entirely (Condition.wait); returns the depth to restore.
    pub fn give_up(&self) -> usize {
        let d = self.depth.swap(0, Relaxed);
        self.owner.store(0, Release);
        d
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn depth_round_trip() {
        let o = RecursiveOwner::default();
        o.take(7, 1);
        assert_eq!(o.reenter(), 2);
        assert!(!o.leave());
        assert!(o.is_owned_by(7));
        assert!(o.leave());
        assert_eq!(o.owner(), 0);
        o.take(9, 3);
        assert_eq!(o.give_up(), 3);
        assert_eq!(o.owner(), 0);
    }
}
