//! Synchronisation primitives shared by threads and coroutines (weaveloop.sync's core).
//!
//! Every primitive keeps its state and its FIFO queue of waiters here, in plain Rust.
//! A waiter is either a parked thread (woken here, with `Thread::unpark`) or a
//! coroutine, represented by an opaque token `T` that the caller (the binding layer)
//! wakes through the coroutine's own event loop: operations that release waiters
//! return the coroutine waiters they granted, in FIFO order, and never touch `T`.
//! Invariant: no lock here is held while a waiter is woken or a token is dropped.

pub mod condition;
pub mod counter;
pub mod event;
pub mod fork;
pub mod lock;
pub mod semaphore;
pub mod waiter;

pub use condition::Notifier;
pub use counter::TaskCounter;
pub use event::EventCore;
pub use lock::RecursiveOwner;
pub use semaphore::Semaphore;
pub use waiter::{Cancel, Granted, Waiter};

/// Atomics, mutex and threads: std's, or loom's under `--cfg loom` for model checking.
pub(crate) mod prim {
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    #[cfg(loom)]
    pub use loom::sync::{Mutex, MutexGuard};
    #[cfg(loom)]
    pub use loom::thread::{current, Thread};

    #[cfg(not(loom))]
    pub use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    #[cfg(not(loom))]
    pub use std::sync::{Mutex, MutexGuard};
    #[cfg(not(loom))]
    pub use std::thread::{current, Thread};

    /// Locks a mutex whose data stays consistent even if a holder panicked.
    pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        #[cfg(loom)]
        {
            m.lock().unwrap()
        }
        #[cfg(not(loom))]
        {
            m.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}
