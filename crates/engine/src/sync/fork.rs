//! Which queued thread waiters a `fork()` left behind.
//!
//! A forked child has one thread: the one that called `fork()`. Thread waiters that other
//! threads of the parent had queued on a primitive are still in its queues there, and a
//! release that granted one of them would hand its permit (or item, or notification) to
//! a thread that does not exist. So every thread waiter records where it was made: the
//! fork generation of the process and a number for its thread. A queue drops, the first
//! time it is used after a fork, the thread waiters that are gone: made before the last
//! fork by any thread other than the one that forked.
//! Invariant: a waiter is dropped only if its thread does not exist in this process; the
//! check costs one atomic load while no fork has happened since the queue was last used.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Once;

/// How many forks this process descends through (0 in a process that never forked).
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// The thread number (see `this_thread`) of the thread that made the last fork.
static FORKER: AtomicU64 = AtomicU64::new(0);
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's number, given on first use; 0 until then.
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

/// A number for the calling thread, unique in this process and kept across a fork (the
/// forking thread is the child's only thread, with its thread-locals).
fn this_thread() -> u64 {
    THREAD.with(|t| {
        if t.get() == 0 {
            t.set(NEXT_THREAD.fetch_add(1, Relaxed));
        }
        t.get()
    })
}

/// The current fork generation.
#[inline]
pub fn generation() -> usize {
    GENERATION.load(Relaxed)
}

/// Where a thread waiter was made.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    generation: usize,
    thread: u64,
}

impl Origin {
    /// The calling thread, now.
    pub fn here() -> Self {
        Origin {
            generation: generation(),
            thread: this_thread(),
        }
    }

    /// Whether the thread that made this waiter does not exist in this process: it was
    /// made before the last fork, by a thread other than the one that forked.
    pub fn is_gone(&self) -> bool {
        self.is_gone_after(generation(), FORKER.load(Relaxed))
    }

    /// `is_gone` in a process of fork generation `now` whose last fork `forker` made.
    fn is_gone_after(&self, now: usize, forker: u64) -> bool {
        self.generation != now && self.thread != forker
    }
}

/// Called in a forked child, by its only thread, before it runs anything else.
pub fn after_fork_in_child() {
    FORKER.store(this_thread(), Relaxed);
    GENERATION.fetch_add(1, Relaxed);
}

extern "C" fn child_handler() {
    after_fork_in_child();
}

/// Registers `after_fork_in_child` with `pthread_atfork`, once per process, so that every
/// fork is seen (Python's `os.fork()`, `subprocess`'s, and one made by C code).
pub fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // The handler touches only atomics and a const-initialised thread-local `Cell`
        // without a destructor. The first use of a thread-local in a `dlopen`ed library
        // may allocate in glibc; a forked child may do that, as glibc resets its
        // allocator's and loader's locks in the child before child handlers run (a fork
        // from a C signal handler would not be safe here, nor is it for CPython's own
        // at-fork hooks).
        // SAFETY: registers a plain `extern "C"` function with no captured state, as a
        // child handler only (see above).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(child_handler)) };
        assert_eq!(rc, 0, "pthread_atfork failed: {rc}");
    });
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn only_the_forking_threads_waiters_outlive_a_fork() {
        let (a, b) = (
            Origin::here(),
            std::thread::spawn(Origin::here).join().unwrap(),
        );
        assert_ne!(a.thread, b.thread);
        let g = a.generation;
        assert!(
            !a.is_gone_after(g, 0) && !b.is_gone_after(g, 0),
            "no fork since"
        );
        // A fork made by a's thread: b's thread is not in the child.
        assert!(!a.is_gone_after(g + 1, a.thread));
        assert!(b.is_gone_after(g + 1, a.thread));
        // Then a fork made by a thread of that child: a's thread is gone too.
        assert!(a.is_gone_after(g + 2, a.thread + 100));
    }

    /// A real fork, through the `pthread_atfork` handler: in the child, a waiter made by
    /// another thread of the parent is gone, the forking thread's is not.
    #[test]
    fn a_forked_child_sees_other_threads_gone() {
        install();
        let mine = Origin::here();
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tx.send(Origin::here()).unwrap();
            let _ = stop_rx.recv(); // alive across the fork
        });
        let theirs = rx.recv().unwrap();
        // SAFETY: the child only reads atomics and thread-locals, then `_exit`s: it
        // allocates nothing and takes no lock another thread of the parent may hold.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = !mine.is_gone() && theirs.is_gone() && !Origin::here().is_gone();
            // SAFETY: ends the child at once, running no destructors or atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        assert!(pid > 0, "fork failed");
        stop_tx.send(()).unwrap();
        other.join().unwrap();
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child: {status}"
        );
        assert!(
            !mine.is_gone() && !theirs.is_gone(),
            "the parent is unchanged"
        );
    }
}
