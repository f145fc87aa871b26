//! Python faces of the engine's sync primitives (`weaveloop.sync`): the thread side
//! (blocking calls park without the GIL) and the hooks the Python package uses for the
//! coroutine side (enqueue a future, give up, pass a grant on).
//! Invariant: every grant handed to a coroutine waiter is either delivered through its
//! loop, or passed on to the next waiter; none is dropped.

use pyo3::prelude::*;

mod block;
mod condition;
mod event;
mod lock;
mod queue;
mod rlock;
mod semaphore;
mod wake;

/// Adds the sync classes to `weaveloop._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<wake::SyncWaiter>()?;
    m.add_class::<lock::LockCore>()?;
    m.add_class::<rlock::RLockCore>()?;
    m.add_class::<semaphore::SemaphoreCore>()?;
    m.add_class::<event::EventCore>()?;
    m.add_class::<condition::NotifierCore>()?;
    m.add_class::<queue::QueueCore>()?;
    m.add_class::<wake::WakeBatch>()?;
    // Thread waiters a fork leaves behind are dropped from the queues in the child.
    weaveloop_engine::sync::fork::install();
    Ok(())
}
