//! The injector's queue: a lock-free stack of posted items whose one word also holds
//! the loop's park flag, the close gate and the count of what is queued.
//!
//! The word: the address of the newest node (nodes are 8-byte aligned, and user-space
//! addresses of x86-64 and aarch64, untagged, fit in 48 bits), two flag bits below it,
//! and above it how many nodes are queued (saturating at `MAX_COUNT`).
//!
//! * poster: one compare-and-swap puts its node on top (the address it read becomes
//!   the node's `next`), adds one to the count and clears PARKED; refused while CLOSED.
//! * taking (the loop thread; any thread may, each take gets its own nodes): one RMW
//!   clears address and count and keeps the flags; the nodes it returns are the
//!   taker's alone, newest first, and come out in posting order.
//! * the loop parking: it sets PARKED only if nothing is queued (a compare-and-swap
//!   from an empty word). Then it blocks; the first post after that reads PARKED in its
//!   own compare-and-swap and must wake it.
//! * close: one swap to CLOSED, which hands over everything queued.
//!
//! Invariants (all sides change the word by RMWs, so they see one modification order;
//! no fences, no GIL):
//! (1) no lost wake-up: if a post's RMW precedes the park's, the park finds the word
//!     non-empty and does not happen; if it follows, it reads PARKED. Only the first
//!     post per park reads PARKED (its RMW clears it): wake-ups are coalesced.
//! (2) a post is accepted (its node is in the word's chain) or refused (it read
//!     CLOSED); everything accepted is taken by a later take or by `close`, never lost.
//!     A post is one RMW, so nothing is ever half-published.
//! (3) a node's contents are seen whole by its taker: the poster writes them before its
//!     release compare-and-swap, the taker reads them after its acquire RMW.
//! (4) a poster never reads through the address it found in the word (it only stores
//!     it as its node's `next`), so it never touches a node that was taken meanwhile
//!     and maybe reused; a stale compare-and-swap either fails or, if the address came
//!     back (ABA), links to exactly what is now on top, which is correct.
//!
//! Node memory is recycled (see `nodes`): the loop hands each taken chain back, and a
//! posting thread takes a part of it into a cache of its own, so neither side pays for
//! an allocation per item.
//!
//! Why not crossbeam's `SegQueue`, which this replaced: the handshake and the gate
//! need a word of their own beside it, which costs a post two more RMWs (in and out of
//! the gate), and the segmented queue itself makes two RMWs per push and two per pop
//! (six per item in all, against one here and one per batch taken). On the
//! `threadsafe_1` shape (a thread posting to the loop, both sharing the GIL, so every
//! cost adds up) the change measured +12-18% posts per second.
//!
//! `loom_tests` model-check (1), (2) and (3) (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p weaveloop-engine --release --lib loom`).

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the injector's word packs a 48-bit address with a count: 64-bit targets only");

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;

#[cfg(loom)]
use loom::{
    cell::UnsafeCell,
    sync::atomic::{
        AtomicPtr, AtomicUsize,
        Ordering::{AcqRel, Acquire, Relaxed, Release},
    },
};
#[cfg(not(loom))]
use std::sync::atomic::{
    AtomicPtr, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

/// std's `UnsafeCell` with loom's interface, so that under loom every access to a
/// node's fields is checked against the happens-before order of the word's RMWs.
#[cfg(not(loom))]
#[repr(transparent)]
struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }
    fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

const PARKED: usize = 0b01;
const CLOSED: usize = 0b10;
const FLAGS: usize = PARKED | CLOSED;
const ADDRESS_BITS: u32 = 48;
const ADDRESS: usize = ((1 << ADDRESS_BITS) - 1) & !FLAGS;
/// The count saturates here (it only steers flow control, far below it).
pub const MAX_COUNT: usize = (1 << (usize::BITS - ADDRESS_BITS)) - 1;
/// The most emptied nodes a take hands back for reuse (the rest are freed): as many as
/// flow control usually lets a flood queue (see `Throttle::CALLBACKS`).
const CHAIN_MAX: usize = 8192;

#[repr(C)]
struct Node<T> {
    /// First, so that a recycled node's memory is a `nodes::Block` whose link this is.
    next: UnsafeCell<*mut Node<T>>,
    item: UnsafeCell<MaybeUninit<T>>,
}

/// What a post did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Queued; `true` if it found the loop parked and must wake it.
    Queued(bool),
    /// Refused: the stack is closed. The item comes back.
    Refused(T),
}

pub struct PostStack<T> {
    word: AtomicUsize,
    /// Emptied nodes handed back by takes, for posters to reuse (see `nodes`).
    spare: AtomicPtr<nodes::Block>,
    _owns: PhantomData<Box<Node<T>>>,
}

// SAFETY: items cross threads only through the word, by the ownership transfer its RMWs
// order (a poster gives its node up in the compare-and-swap that publishes it, a taker
// owns the chain its RMW returned; spare chains move the same way), so the stack may be
// sent and shared when its items may be sent.
unsafe impl<T: Send> Send for PostStack<T> {}
// SAFETY: see above; shared access is only through atomic operations on the two words.
unsafe impl<T: Send> Sync for PostStack<T> {}

impl<T> Default for PostStack<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn address<T>(word: usize) -> *mut Node<T> {
    ptr::with_exposed_provenance_mut(word & ADDRESS)
}

fn count(word: usize) -> usize {
    word >> ADDRESS_BITS
}

impl<T> PostStack<T> {
    /// Whether this stack's nodes are recycled through `nodes` (otherwise: boxes).
    const RECYCLED: bool = nodes::fits::<Node<T>>();

    pub fn new() -> Self {
        PostStack {
            word: AtomicUsize::new(0),
            spare: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// Any thread: queues `item` unless closed.
    pub fn push(&self, item: T) -> Pushed<T> {
        let node = self.new_node(item);
        let mut seen = self.word.load(Relaxed);
        loop {
            if seen & CLOSED != 0 {
                // SAFETY: `node` was never published; its item is read out once, here,
                // and the node is then released as the lone node it is.
                let item = unsafe { (*node).item.with(|p| (*p).assume_init_read()) };
                // SAFETY: as above.
                unsafe { self.release_one(node) };
                return Pushed::Refused(item);
            }
            // SAFETY: `node` is not published yet: this thread is its only user.
            unsafe { (*node).next.with_mut(|p| *p = address(seen)) };
            let queued = (count(seen) + 1).min(MAX_COUNT);
            // Release: the node's contents before its publication. The new word has
            // PARKED clear (and CLOSED too, checked above).
            match self.word.compare_exchange_weak(
                seen,
                node.expose_provenance() | queued << ADDRESS_BITS,
                Release,
                Relaxed,
            ) {
                Ok(_) => return Pushed::Queued(seen & PARKED != 0),
                Err(now) => seen = now,
            }
        }
    }

    /// A node holding `item`, not published.
    fn new_node(&self, item: T) -> *mut Node<T> {
        let at = if Self::RECYCLED {
            nodes::take(&self.spare).cast::<Node<T>>()
        } else {
            Box::into_raw(Box::new(MaybeUninit::<Node<T>>::uninit())).cast()
        };
        if at.addr() & !ADDRESS != 0 {
            // SAFETY: `at` is fresh, unwritten node memory of ours.
            unsafe { self.free_uninit(at) };
            // (`item` is still ours here: dropped as the panic unwinds.)
            panic!(
                "weaveloop's injector needs untagged 48-bit user-space addresses (x86-64, \
                 or aarch64 without memory tagging); the allocator returned {at:p}"
            );
        }
        let node = Node {
            next: UnsafeCell::new(ptr::null_mut()),
            item: UnsafeCell::new(MaybeUninit::new(item)),
        };
        // SAFETY: `at` is fresh memory sized and aligned for a Node<T> (a block when
        // RECYCLED, see `nodes::fits`), this thread's alone.
        unsafe { at.write(node) };
        at
    }

    /// Owner (the loop thread, or a thread draining for it): moves everything queued
    /// into `out`, oldest first. Returns how many items it moved.
    pub fn take_into(&self, out: &mut Vec<T>) -> usize {
        // (Callers look at `is_empty` first where it matters: no early return here,
        // which would also hide the race from the loom model.)
        // Acquire: pairs with the posters' Release, so the nodes' contents are visible.
        let word = self.word.fetch_and(FLAGS, Acquire);
        out.reserve(count(word));
        // SAFETY: the RMW made this chain ours alone.
        unsafe { self.collect(address(word), out) }
    }

    /// Refuses every later post and moves everything queued into `out`, oldest first.
    pub fn close_into(&self, out: &mut Vec<T>) -> usize {
        let word = self.word.swap(CLOSED, Acquire);
        // SAFETY: the swap made this chain ours alone.
        unsafe { self.collect(address(word), out) }
    }

    /// # Safety
    /// `top` heads a chain of filled nodes made by `push` that no other thread reaches.
    // SAFETY: (contract) called by take_into/close_into with the chain their RMW took.
    unsafe fn collect(&self, top: *mut Node<T>, out: &mut Vec<T>) -> usize {
        let start = out.len();
        let (mut at, mut kept) = (top, 0);
        let mut surplus = ptr::null_mut();
        while !at.is_null() {
            // SAFETY: per the contract, `at` is an owned node whose item was written
            // and is read out once, here.
            let next = unsafe {
                (*at).item.with(|p| out.push((*p).assume_init_read()));
                (*at).next.with(|p| *p)
            };
            kept += 1;
            if kept == CHAIN_MAX {
                // Handed back for reuse: the nodes up to here; the rest is freed.
                // SAFETY: `at` is ours.
                unsafe { (*at).next.with_mut(|p| *p = ptr::null_mut()) };
                surplus = next;
            }
            at = next;
        }
        out[start..].reverse();
        // SAFETY: both chains are ours and emptied (the first one cut from the second).
        unsafe {
            self.release_chain(top);
            self.free_chain(surplus);
        }
        out.len() - start
    }

    /// Whether anything is queued.
    pub fn is_empty(&self) -> bool {
        address::<T>(self.word.load(Relaxed)).is_null()
    }

    /// How many items are queued (at most `MAX_COUNT`).
    pub fn len(&self) -> usize {
        count(self.word.load(Relaxed))
    }

    /// The loop thread (the one owner of the park): announces a park if nothing is
    /// queued and the stack is open; returns whether it did, and so whether the loop
    /// may block until woken. A park is ended by `unpark`.
    pub fn park(&self) -> bool {
        let mut seen = self.word.load(Relaxed);
        loop {
            if !address::<T>(seen).is_null() || seen & CLOSED != 0 {
                return false;
            }
            match self
                .word
                .compare_exchange_weak(seen, seen | PARKED, AcqRel, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }

    /// The loop thread: its park is over (whether a post woke it or not).
    pub fn unpark(&self) {
        self.word.fetch_and(!PARKED, Relaxed);
    }

    /// # Safety
    /// `top` heads an owned chain of emptied nodes (or is null).
    // SAFETY: (contract) called by `collect` with chains it took and emptied.
    unsafe fn release_chain(&self, top: *mut Node<T>) {
        if Self::RECYCLED {
            // SAFETY: per the contract; RECYCLED nodes are blocks linked by their first
            // word (`Node::next`).
            unsafe { nodes::give_back(&self.spare, top.cast()) };
        } else {
            // SAFETY: per the contract.
            unsafe { self.free_chain(top) };
        }
    }

    /// # Safety
    /// As `release_chain`.
    // SAFETY: (contract) called by `collect` and `release_chain` with owned, emptied
    // chains.
    unsafe fn free_chain(&self, mut top: *mut Node<T>) {
        if Self::RECYCLED {
            // SAFETY: as in `release_chain`.
            unsafe { nodes::free_blocks(top.cast()) };
            return;
        }
        while !top.is_null() {
            // SAFETY: per the contract, boxes made by `new_node`, emptied (the item is
            // MaybeUninit: dropping the node does not drop it).
            let node = unsafe { Box::from_raw(top) };
            // SAFETY: `p` points into the node just boxed, alive until the next line.
            top = node.next.with(|p| unsafe { *p });
        }
    }

    /// # Safety
    /// `node` is an emptied node of ours that no chain links.
    // SAFETY: (contract) called by `push` with its own node, refused and emptied.
    unsafe fn release_one(&self, node: *mut Node<T>) {
        if Self::RECYCLED {
            // SAFETY: per the contract (a block, see `release_chain`).
            unsafe { nodes::keep(node.cast()) };
        } else {
            // SAFETY: per the contract, a box made by `new_node`.
            drop(unsafe { Box::from_raw(node) });
        }
    }

    /// Frees node memory that was never written (not recycled: its address is unusable).
    ///
    /// # Safety
    /// `at` is node memory from `new_node`, not written yet, of ours.
    // SAFETY: (contract) called by `new_node` with memory it just got, unwritten.
    unsafe fn free_uninit(&self, at: *mut Node<T>) {
        if Self::RECYCLED {
            // SAFETY: per the contract, a block of ours that no chain links.
            unsafe { nodes::free_one(at.cast()) };
        } else {
            // SAFETY: per the contract, the uninitialised box made by `new_node`.
            drop(unsafe { Box::from_raw(at.cast::<MaybeUninit<Node<T>>>()) });
        }
    }
}

impl<T> Drop for PostStack<T> {
    fn drop(&mut self) {
        let mut rest = Vec::new();
        self.close_into(&mut rest);
        let spare = self.spare.swap(ptr::null_mut(), Acquire);
        // SAFETY: `&mut self`: the spare chain is reachable from here alone.
        unsafe { nodes::free_blocks(spare) };
        // (Last: an item's drop that panics leaves no node memory behind.)
        drop(rest);
    }
}

/// Node memory, recycled: a node is emptied by the loop thread and filled by a posting
/// thread, so a general-purpose allocator would see every block freed on another
/// thread than the one that allocated it, its slowest path. Instead a take hands its
/// emptied chain back (`give_back`: one swap; a chain left there untaken is freed), and
/// a posting thread whose cache is empty takes the spare chain (one swap), keeps up to
/// `CACHE_MAX` blocks of it and puts the rest back for the other posters (one
/// compare-and-swap; freed if a newer chain came meanwhile). A thread keeps at most
/// `CACHE_MAX` blocks (12 KiB with malloc's overhead); the spare chain holds at most
/// `CHAIN_MAX`. Every node type whose memory fits a `Block` shares the cache (blocks are
/// untyped); others, and every node under loom (whose threads share one OS thread, and
/// whose cells are larger), are plain boxes.
mod nodes {
    use super::*;
    use std::cell::Cell;

    #[repr(C, align(8))]
    pub(super) struct Block {
        next: *mut Block,
        _rest: [MaybeUninit<u8>; 24],
    }

    /// The most free blocks a thread keeps for itself.
    pub(super) const CACHE_MAX: usize = 256;

    pub(super) const fn fits<N>() -> bool {
        !cfg!(loom)
            && std::mem::size_of::<N>() <= std::mem::size_of::<Block>()
            && std::mem::align_of::<N>() <= std::mem::align_of::<Block>()
    }

    struct Cache {
        top: Cell<*mut Block>,
    }

    impl Drop for Cache {
        fn drop(&mut self) {
            // SAFETY: the cache's chain is this (exiting) thread's alone.
            unsafe { free_blocks(self.top.get()) };
        }
    }

    thread_local! {
        static CACHE: Cache = const { Cache { top: Cell::new(ptr::null_mut()) } };
    }

    #[cfg(test)]
    thread_local! {
        /// Blocks this thread allocated (tests: is memory reused?).
        pub(super) static MADE: Cell<usize> = const { Cell::new(0) };
    }

    fn new_block() -> *mut Block {
        #[cfg(test)]
        MADE.with(|m| m.set(m.get() + 1));
        Box::into_raw(Box::new(Block {
            next: ptr::null_mut(),
            _rest: [MaybeUninit::uninit(); 24],
        }))
    }

    /// # Safety
    /// `top` heads an owned chain of blocks made by `new_block` (or is null).
    pub(super) unsafe fn free_blocks(mut top: *mut Block) {
        while !top.is_null() {
            // SAFETY: per the contract.
            let block = unsafe { Box::from_raw(top) };
            top = block.next;
        }
    }

    /// Memory for one node, this thread's to fill.
    pub(super) fn take(spare: &AtomicPtr<Block>) -> *mut Block {
        let cached = CACHE
            .try_with(|cache| {
                let mut top = cache.top.get();
                if top.is_null() {
                    top = refill(spare);
                    if top.is_null() {
                        return ptr::null_mut();
                    }
                }
                // SAFETY: the chain is this thread's own.
                cache.top.set(unsafe { (*top).next });
                top
            })
            .unwrap_or(ptr::null_mut());
        if cached.is_null() {
            new_block()
        } else {
            cached
        }
    }

    /// Takes up to CACHE_MAX blocks of the spare chain; the rest goes back.
    fn refill(spare: &AtomicPtr<Block>) -> *mut Block {
        if spare.load(Relaxed).is_null() {
            return ptr::null_mut();
        }
        // Acquire: pairs with the Release of whoever put the chain there.
        let top = spare.swap(ptr::null_mut(), Acquire);
        if top.is_null() {
            return ptr::null_mut();
        }
        let mut last = top;
        // SAFETY (all three blocks): the swap made the chain ours.
        unsafe {
            for _ in 1..CACHE_MAX {
                if (*last).next.is_null() {
                    break;
                }
                last = (*last).next;
            }
            let rest = (*last).next;
            if !rest.is_null() {
                (*last).next = ptr::null_mut();
                if spare
                    .compare_exchange(ptr::null_mut(), rest, Release, Relaxed)
                    .is_err()
                {
                    // A newer chain was handed back meanwhile: posters have plenty.
                    free_blocks(rest);
                }
            }
        }
        top
    }

    /// Hands an emptied chain back for posting threads to reuse.
    ///
    /// # Safety
    /// `top` heads an owned chain of emptied blocks (or is null).
    pub(super) unsafe fn give_back(spare: &AtomicPtr<Block>, top: *mut Block) {
        if top.is_null() {
            return;
        }
        // Release: the chain's links before a poster reads them; Acquire: the old chain
        // (put back by a poster) before it is freed here.
        let old = spare.swap(top, AcqRel);
        // SAFETY: the swap made the old chain ours.
        unsafe { free_blocks(old) };
    }

    /// Frees one block, linked or not (memory fresh from `take` holds whatever its link
    /// held: it is cleared first).
    ///
    /// # Safety
    /// `block` is an owned block that no chain links.
    pub(super) unsafe fn free_one(block: *mut Block) {
        // SAFETY: per the contract; with its link cleared it is a chain of one.
        unsafe {
            (*block).next = ptr::null_mut();
            free_blocks(block);
        }
    }

    /// Puts one block back into this thread's cache (freed if the cache is gone).
    ///
    /// # Safety
    /// `block` is an owned block that no chain links.
    pub(super) unsafe fn keep(block: *mut Block) {
        let kept = CACHE.try_with(|cache| {
            // SAFETY: per the contract.
            unsafe { (*block).next = cache.top.get() };
            cache.top.set(block);
        });
        if kept.is_err() {
            // SAFETY: per the contract.
            unsafe { free_one(block) };
        }
    }

    #[cfg(all(test, not(loom)))]
    /// The length of the chain at `top` (tests).
    ///
    /// # Safety
    /// No other thread changes the chain meanwhile.
    pub(super) unsafe fn chain_len(mut top: *mut Block) -> usize {
        let mut n = 0;
        while !top.is_null() {
            n += 1;
            // SAFETY: per the contract.
            top = unsafe { (*top).next };
        }
        n
    }

    #[cfg(all(test, not(loom)))]
    /// Frees this thread's cache (tests: a known start).
    pub(super) fn clear_cache() {
        // SAFETY: the cache is this thread's own.
        CACHE.with(|cache| unsafe { free_blocks(cache.top.replace(ptr::null_mut())) });
    }

    #[cfg(all(test, not(loom)))]
    /// The length of this thread's cache (tests).
    pub(super) fn cached() -> usize {
        // SAFETY: the cache is this thread's own.
        CACHE.with(|cache| unsafe { chain_len(cache.top.get()) })
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Starts `n` posters, poster `i` posting `i`; each returns what its post did.
    fn posters(stack: &Arc<PostStack<usize>>, n: usize) -> Vec<thread::JoinHandle<Pushed<usize>>> {
        (0..n)
            .map(|i| {
                let stack = stack.clone();
                thread::spawn(move || stack.push(i))
            })
            .collect()
    }

    fn joined(handles: Vec<thread::JoinHandle<Pushed<usize>>>) -> Vec<Pushed<usize>> {
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// One park of the loop against `n` posts: if the loop blocks (its park was
    /// announced), exactly one poster must have been told to wake it; if it does not,
    /// it must have seen an item; and every item is taken in the end.
    fn model(n: usize) {
        loom::model(move || {
            let stack = Arc::new(PostStack::new());
            let handles = posters(&stack, n);
            let parked = stack.park();
            let pushed = joined(handles);
            assert!(!pushed.iter().any(|p| matches!(p, Pushed::Refused(_))));
            let woken = pushed
                .iter()
                .filter(|&p| *p == Pushed::Queued(true))
                .count();
            if parked {
                assert_eq!(woken, 1, "a blocked loop is woken exactly once");
            } else {
                assert_eq!(woken, 0, "no wake-up for a loop that did not park");
            }
            stack.unpark();
            let mut out = Vec::new();
            stack.take_into(&mut out);
            out.sort();
            assert_eq!(out, (0..n).collect::<Vec<_>>(), "every item taken");
        });
    }

    #[test]
    fn loom_one_poster_never_loses_a_wakeup() {
        model(1);
    }

    #[test]
    fn loom_two_posters_never_lose_a_wakeup_and_wake_once() {
        model(2);
    }

    /// A take racing the posts (then a last take after them): every item comes out
    /// once, read whole. Loom checks each read of a node's fields against the
    /// happens-before order the word's RMWs make (the cells are loom's), so a post
    /// published without Release, or a take without Acquire, fails here.
    #[test]
    fn loom_a_take_racing_posts_reads_every_item_whole_once() {
        loom::model(|| {
            let stack = Arc::new(PostStack::new());
            let handles = posters(&stack, 2);
            let mut out = Vec::new();
            stack.take_into(&mut out);
            for pushed in joined(handles) {
                assert_eq!(pushed, Pushed::Queued(false));
            }
            stack.take_into(&mut out);
            out.sort();
            assert_eq!(out, vec![0, 1]);
        });
    }

    /// Posts racing `close`: each is refused, or handed over by `close`.
    #[test]
    fn loom_a_post_racing_close_is_refused_or_handed_over() {
        loom::model(|| {
            let stack = Arc::new(PostStack::new());
            let handles = posters(&stack, 2);
            let mut handed = Vec::new();
            stack.close_into(&mut handed);
            let pushed = joined(handles);
            let accepted = pushed
                .iter()
                .filter(|p| matches!(p, Pushed::Queued(_)))
                .count();
            assert_eq!(handed.len(), accepted, "an accepted post vanished");
            assert!(matches!(stack.push(9), Pushed::Refused(9)));
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    fn taken(stack: &PostStack<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        stack.take_into(&mut out);
        out
    }

    #[test]
    fn items_come_out_in_posting_order_and_are_counted() {
        let stack = PostStack::new();
        assert!(stack.is_empty());
        for i in 0..5 {
            assert_eq!(stack.push(i), Pushed::Queued(false));
        }
        assert_eq!(stack.len(), 5);
        assert!(!stack.is_empty());
        assert_eq!(taken(&stack), vec![0, 1, 2, 3, 4]);
        assert_eq!(stack.len(), 0);
        assert!(stack.is_empty());
        assert_eq!(taken(&stack), Vec::<u32>::new());
        stack.push(5);
        assert_eq!(taken(&stack), vec![5], "a take leaves the stack usable");
    }

    #[test]
    fn a_park_is_announced_only_on_an_empty_stack_and_woken_once() {
        let stack = PostStack::new();
        stack.push(1);
        assert!(!stack.park(), "something is queued: no park");
        assert_eq!(stack.push(2), Pushed::Queued(false), "and no wake-up");
        taken(&stack);
        assert!(stack.park());
        assert_eq!(stack.push(3), Pushed::Queued(true), "the first post wakes");
        assert_eq!(
            stack.push(4),
            Pushed::Queued(false),
            "wake-ups are coalesced"
        );
        stack.unpark();
        assert_eq!(taken(&stack), vec![3, 4]);
        assert!(stack.park());
        stack.unpark();
        assert_eq!(stack.push(5), Pushed::Queued(false), "the park is over");
    }

    #[test]
    fn close_hands_over_what_is_queued_and_refuses_later_posts() {
        let stack = PostStack::new();
        stack.push(1);
        stack.push(2);
        let mut handed = Vec::new();
        assert_eq!(stack.close_into(&mut handed), 2);
        assert_eq!(handed, vec![1, 2]);
        assert_eq!(stack.push(3), Pushed::Refused(3));
        assert!(stack.is_empty());
        assert_eq!(taken(&stack), Vec::<u32>::new());
    }

    #[test]
    fn the_count_saturates() {
        let stack = PostStack::new();
        for i in 0..MAX_COUNT as u32 + 10 {
            stack.push(i);
        }
        assert_eq!(stack.len(), MAX_COUNT);
        assert_eq!(taken(&stack).len(), MAX_COUNT + 10, "items are not capped");
        assert_eq!(stack.len(), 0);
    }

    #[test]
    fn dropping_the_stack_drops_what_is_queued_and_a_refused_item_comes_back() {
        let item = Arc::new(());
        let stack = PostStack::new();
        stack.push(item.clone());
        stack.push(item.clone());
        assert_eq!(Arc::strong_count(&item), 3);
        drop(stack);
        assert_eq!(Arc::strong_count(&item), 1, "queued items were dropped");
        let stack = PostStack::new();
        stack.close_into(&mut Vec::new());
        match stack.push(item.clone()) {
            Pushed::Refused(back) => assert!(Arc::ptr_eq(&back, &item)),
            Pushed::Queued(_) => panic!("accepted after close"),
        }
        assert_eq!(Arc::strong_count(&item), 1);
    }

    #[test]
    fn node_memory_taken_by_the_loop_is_reused_by_posters() {
        const { assert!(PostStack::<u32>::RECYCLED) };
        nodes::clear_cache();
        let stack = Arc::new(PostStack::new());
        let made = || nodes::MADE.with(|m| m.get());
        // This thread posts and takes: its second round of posts reuses the chain the
        // first take handed back.
        let start = made();
        for i in 0..100 {
            stack.push(i);
        }
        assert_eq!(made() - start, 100, "the first round allocates");
        taken(&stack);
        let before = made();
        for i in 0..100 {
            stack.push(i);
        }
        assert_eq!(made(), before, "no new node memory for the second round");
        // Another thread posting after a take reuses it too.
        taken(&stack);
        let poster = {
            let stack = stack.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    stack.push(i);
                }
                nodes::MADE.with(|m| m.get())
            })
        };
        assert_eq!(
            poster.join().unwrap(),
            0,
            "the other thread reused the chain"
        );
        assert_eq!(taken(&stack).len(), 100);
    }

    #[test]
    fn a_chain_handed_back_is_capped_and_shared_out_in_parts() {
        let stack = PostStack::new();
        for i in 0..CHAIN_MAX as u32 + 50 {
            stack.push(i);
        }
        // (Posting emptied this thread's cache.)
        assert_eq!(nodes::cached(), 0);
        taken(&stack);
        // SAFETY (both): this thread alone uses the stack, so the chain stays put.
        let spare = || unsafe { nodes::chain_len(stack.spare.load(SeqCst)) };
        assert_eq!(spare(), CHAIN_MAX, "the surplus was freed");
        stack.push(1);
        assert_eq!(
            nodes::cached(),
            nodes::CACHE_MAX - 1,
            "a thread keeps a part"
        );
        assert_eq!(
            spare(),
            CHAIN_MAX - nodes::CACHE_MAX,
            "and puts the rest back"
        );
    }

    #[test]
    fn a_refused_post_keeps_its_node_for_the_next_post() {
        nodes::clear_cache();
        let open = PostStack::new();
        for i in 0..10 {
            open.push(i);
        }
        taken(&open);
        open.push(0); // refills this thread's cache from the chain just handed back
        assert_eq!(nodes::cached(), 9);
        let closed = PostStack::new();
        closed.close_into(&mut Vec::new());
        assert_eq!(closed.push(7), Pushed::Refused(7));
        assert_eq!(
            nodes::cached(),
            9,
            "the refused post's node went back to the cache"
        );
        let before = nodes::MADE.with(|m| m.get());
        for i in 1..10 {
            open.push(i);
        }
        assert_eq!(nodes::MADE.with(|m| m.get()), before, "all from the cache");
        assert_eq!(taken(&open), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn concurrent_takes_share_the_items_out_once() {
        // The poster keeps posting until both takers have taken something, so the test
        // does not depend on how the threads are scheduled (the deadline is only a
        // safety net). Every item must then come out exactly once.
        let stack = Arc::new(PostStack::new());
        let took = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let both_took = |took: &[AtomicBool; 2]| took.iter().all(|t| t.load(SeqCst));
        let poster = {
            let (stack, took) = (stack.clone(), took.clone());
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                let mut posted = 0u32;
                while !both_took(&took) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the takers never both took"
                    );
                    stack.push(posted);
                    posted += 1;
                }
                posted
            })
        };
        let take = move |stack: &PostStack<u32>, took: &[AtomicBool; 2], who: usize| {
            let mut got = Vec::new();
            while !both_took(took) {
                let before = got.len();
                stack.take_into(&mut got);
                if got.len() > before {
                    took[who].store(true, SeqCst);
                }
            }
            got
        };
        let taker = {
            let (stack, took) = (stack.clone(), took.clone());
            std::thread::spawn(move || take(&stack, &took, 1))
        };
        let mut all = take(&stack, &took, 0);
        all.extend(taker.join().unwrap());
        let posted = poster.join().unwrap();
        stack.take_into(&mut all);
        all.sort();
        assert_eq!(all, (0..posted).collect::<Vec<_>>());
    }

    /// Posters against a loop thread that takes and parks (blocking on a channel until a
    /// poster told to wake it does): every item arrives once, each poster's in order,
    /// and the loop is never left blocked (a lost wake-up would end in the timeout).
    #[test]
    fn posters_against_a_parking_loop_lose_nothing() {
        const POSTERS: u32 = 4;
        const EACH: u32 = 20_000;
        let stack = Arc::new(PostStack::new());
        let (wake, woken) = mpsc::channel::<()>();
        let posters: Vec<_> = (0..POSTERS)
            .map(|p| {
                let (stack, wake) = (stack.clone(), wake.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        if stack.push(p * EACH + i) == Pushed::Queued(true) {
                            wake.send(()).unwrap();
                        }
                        if i % 97 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); POSTERS as usize];
        let mut total = 0;
        let blocked_forever = AtomicBool::new(false);
        while total < POSTERS * EACH {
            let mut out = Vec::new();
            stack.take_into(&mut out);
            for v in out {
                got[(v / EACH) as usize].push(v % EACH);
                total += 1;
            }
            if total < POSTERS * EACH && stack.park() {
                if woken.recv_timeout(Duration::from_secs(20)).is_err() {
                    blocked_forever.store(true, SeqCst);
                    break;
                }
                stack.unpark();
            }
        }
        assert!(!blocked_forever.load(SeqCst), "lost wake-up");
        for p in posters {
            p.join().unwrap();
        }
        assert!(woken.try_recv().is_err(), "a park was woken twice");
        for seq in got {
            assert_eq!(seq, (0..EACH).collect::<Vec<_>>());
        }
    }
}
