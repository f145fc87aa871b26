//! weaveloop's engine: the parts of an event loop that need no Python — clock, timer
//! heap, poller, cross-thread injector with its wake-up handshake, and the thread pool.
//! Invariant: nothing here knows about the GIL; the binding layer owns that.

pub mod clock;
pub mod injector;
pub mod net;
pub mod poller;
pub mod pool;
pub mod stack;
pub mod sync;
pub mod timerfd;
pub mod timers;

pub use injector::{CpuBackoff, Injector, Spun, Throttle};
pub use poller::{Poller, Readiness, Wait};
pub use pool::{Pool, Submitted};
pub use timers::TimerHeap;
