//! The injector's queue: a lock-free stack of posted items whose one word also holds
//! the loop's park flag, the close gate and the count of what is queued.
//!
//! The word: the address of the newest node (nodes are 8-byte aligned, and user-space
//! addresses fit in 48 bits), two flag bits below it, and above it how many nodes are
//! queued (saturating at `MAX_COUNT`).
//!
//! * poster: one compare-and-swap puts its node on top (the address it read becomes
//!   the node's `next`), adds one to the count and clears PARKED; refused while CLOSED.
//! * loop, taking: one RMW clears address and count and keeps the flags; the nodes it
//!   gets are its own, newest first, and come out in posting order.
//! * loop, parking: sets PARKED only if nothing is queued (a compare-and-swap from an
//!   empty word). Then it blocks; the first post after that reads PARKED in its own
//!   compare-and-swap and must wake it.
//! * close: one swap to CLOSED, which hands over everything queued.
//!
//! Invariants, resting on nothing but the modification order of this one word (all
//! sides change it by RMWs; no fences, no GIL):
//! (1) no lost wake-up: if a post's RMW precedes the park's, the park finds the word
//!     non-empty and does not happen; if it follows, it reads PARKED. Only the first
//!     post per park reads PARKED (its RMW clears it): wake-ups are coalesced.
//! (2) a post is accepted (its node is in the word's chain) or refused (it read
//!     CLOSED); everything accepted is taken by a later take or by `close`, never lost.
//!     A post is one RMW, so nothing is ever half-published (a forked child finds the
//!     stack consistent, whatever its other threads were doing).
//! (3) no thread reads a node it does not own: a poster reads only the word, never the
//!     node it points to, so a taken node is never touched again by a poster (and a
//!     stale compare-and-swap simply fails: no ABA problem).
//!
//! Node memory is recycled (see `nodes`): the loop hands each taken chain back whole, a
//! poster takes it whole into a cache of its thread, so neither side pays for an
//! allocation per item.
//!
//! Why not crossbeam's `SegQueue`, which this replaced: the handshake and the gate
//! need a word of their own beside it, which costs a post two more RMWs (in and out of
//! the gate), and the segmented queue itself makes two RMWs per push and two per pop
//! (six per item in all, against one here and one per batch taken). On the
//! `threadsafe_1` shape (a thread posting to the loop, both sharing the GIL, so every
//! cost adds up) the change measured +12-18% posts per second.
//!
//! `tests::loom_*` model-check (1) and (2) (run with
//! `RUSTFLAGS="--cfg loom" cargo test -p weaveloop-engine --release --lib loom`).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr;

#[cfg(loom)]
use loom::sync::atomic::{
    AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
#[cfg(not(loom))]
use std::sync::atomic::{
    AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

const PARKED: usize = 0b01;
const CLOSED: usize = 0b10;
const FLAGS: usize = PARKED | CLOSED;
const ADDRESS_BITS: u32 = 48;
const ADDRESS: usize = ((1 << ADDRESS_BITS) - 1) & !FLAGS;
/// The count saturates here (it only steers flow control, far below it).
pub const MAX_COUNT: usize = (1 << (usize::BITS - ADDRESS_BITS)) - 1;

#[repr(C)]
struct Node<T> {
    /// First, so that a node's memory is a `nodes::Block` (see there).
    next: *mut Node<T>,
    item: MaybeUninit<T>,
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
    /// A chain of emptied nodes the loop handed back (a `nodes::Block` chain), or 0.
    spare: AtomicUsize,
    _owns: PhantomData<Box<Node<T>>>,
}

// SAFETY: items cross threads only through the word, by the ownership transfer its RMWs
// order (a poster gives its node up in the compare-and-swap that publishes it, the
// taker owns what its RMW returned; spare chains move the same way), so the stack may
// be sent and shared when its items may be sent.
unsafe impl<T: Send> Send for PostStack<T> {}
// SAFETY: see above; shared access is only through atomic operations on the two words.
unsafe impl<T: Send> Sync for PostStack<T> {}

impl<T> Default for PostStack<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn address<T>(word: usize) -> *mut Node<T> {
    (word & ADDRESS) as *mut Node<T>
}

fn count(word: usize) -> usize {
    word >> ADDRESS_BITS
}

impl<T> PostStack<T> {
    pub fn new() -> Self {
        PostStack {
            word: AtomicUsize::new(0),
            spare: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// Any thread: queues `item` unless closed.
    pub fn push(&self, item: T) -> Pushed<T> {
        let node = nodes::take::<Node<T>>(&self.spare);
        // (A user-space address always fits; this is the check that it did.)
        assert_eq!(
            node as usize & !ADDRESS,
            0,
            "a node's address does not fit the injector's word"
        );
        // SAFETY: `node` is fresh memory for a Node<T>, this thread's alone.
        unsafe { ptr::addr_of_mut!((*node).item).write(MaybeUninit::new(item)) };
        let mut seen = self.word.load(Relaxed);
        loop {
            if seen & CLOSED != 0 {
                // SAFETY: `node` was never published; its item was written above.
                let item = unsafe { (*node).item.assume_init_read() };
                // SAFETY: `node` is a lone, emptied node of ours.
                unsafe {
                    (*node).next = ptr::null_mut();
                    nodes::give_back::<Node<T>>(&self.spare, node.cast());
                }
                return Pushed::Refused(item);
            }
            // SAFETY: `node` is not published yet: this thread is its only user.
            unsafe { (*node).next = address(seen) };
            let queued = (count(seen) + 1).min(MAX_COUNT);
            // Release: the node's contents before its publication. The new word has
            // PARKED clear (and CLOSED too, checked above).
            match self.word.compare_exchange_weak(
                seen,
                node as usize | queued << ADDRESS_BITS,
                Release,
                Relaxed,
            ) {
                Ok(_) => return Pushed::Queued(seen & PARKED != 0),
                Err(now) => seen = now,
            }
        }
    }

    /// Owner (the loop thread): moves everything queued into `out`, oldest first.
    /// Returns how many items it moved.
    pub fn take_into(&self, out: &mut Vec<T>) -> usize {
        if address::<T>(self.word.load(Relaxed)).is_null() {
            return 0;
        }
        // Acquire: pairs with the posters' Release, so the nodes' contents are visible.
        let top = address(self.word.fetch_and(FLAGS, Acquire));
        // SAFETY: the RMW made this chain ours alone.
        unsafe { self.collect(top, out) }
    }

    /// Refuses every later post and moves everything queued into `out`, oldest first.
    pub fn close_into(&self, out: &mut Vec<T>) -> usize {
        let top = address(self.word.swap(CLOSED, Acquire));
        // SAFETY: the swap made this chain ours alone.
        unsafe { self.collect(top, out) }
    }

    /// # Safety
    /// `top` heads a chain of filled nodes made by `push` that no other thread reaches.
    unsafe fn collect(&self, top: *mut Node<T>, out: &mut Vec<T>) -> usize {
        let start = out.len();
        let (mut at, mut kept) = (top, 0);
        let mut surplus = ptr::null_mut();
        while !at.is_null() {
            // SAFETY: per the contract, `at` is an owned node whose item was written
            // and is read out once, here.
            let next = unsafe {
                out.push((*at).item.assume_init_read());
                (*at).next
            };
            kept += 1;
            if kept == nodes::CHAIN_MAX {
                // Kept for reuse: the nodes up to here; the rest is freed (below).
                // SAFETY: `at` is ours.
                unsafe { (*at).next = ptr::null_mut() };
                surplus = next;
            }
            at = next;
        }
        out[start..].reverse();
        // SAFETY: both chains are ours and emptied (the first one cut from the second).
        unsafe {
            nodes::give_back::<Node<T>>(&self.spare, top.cast());
            nodes::free_chain::<Node<T>>(surplus.cast());
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

    /// Owner: announces a park if nothing is queued; returns whether it did (and so
    /// whether the owner may block until woken). A park is ended by `unpark`.
    pub fn park(&self) -> bool {
        let mut seen = self.word.load(Relaxed);
        loop {
            if !address::<T>(seen).is_null() {
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

    /// Owner: its park is over (whether a post woke it or not).
    pub fn unpark(&self) {
        self.word.fetch_and(!PARKED, Relaxed);
    }
}

impl<T> Drop for PostStack<T> {
    fn drop(&mut self) {
        let mut rest = Vec::new();
        self.close_into(&mut rest);
        drop(rest);
        // SAFETY: `&mut self`: the spare chain is reachable from here alone.
        unsafe { nodes::free_chain::<Node<T>>(self.spare.swap(0, Acquire) as *mut _) };
    }
}

/// Node memory, recycled: a node is emptied by the loop thread and filled by a posting
/// thread, so a general-purpose allocator would see every block freed on another
/// thread than the one that allocated it (its slowest path). Instead the loop hands a
/// taken chain back whole (`give_back`: one swap; a chain left there untaken is freed)
/// and a posting thread takes it whole into a cache of its own (`take`: one swap per
/// chain) when its cache is empty. A chain handed back holds at most `CHAIN_MAX`
/// nodes, so that is all a thread ever keeps. Every node type whose memory fits a
/// `Block` shares the cache (the blocks are untyped); others, and every node under
/// loom (whose threads share one OS thread), are plain boxes.
mod nodes {
    use super::*;
    use std::cell::Cell;

    #[repr(C, align(8))]
    pub(super) struct Block {
        next: *mut Block,
        _rest: [MaybeUninit<u8>; 24],
    }

    /// The most nodes a chain handed back keeps (256 KiB): as many as flow control
    /// lets a flood queue (see `Throttle::CALLBACKS`).
    pub(super) const CHAIN_MAX: usize = 8192;

    const fn shared<N>() -> bool {
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
        static CACHE: Cache = const {
            Cache { top: Cell::new(ptr::null_mut()) }
        };
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
    unsafe fn free_blocks(mut top: *mut Block) {
        while !top.is_null() {
            // SAFETY: per the contract.
            let block = unsafe { Box::from_raw(top) };
            top = block.next;
        }
    }

    /// Uninitialised memory for one `N`, this thread's to fill.
    pub(super) fn take<N>(spare: &AtomicUsize) -> *mut N {
        if !shared::<N>() {
            return Box::into_raw(Box::new(MaybeUninit::<N>::uninit())).cast();
        }
        let cached = CACHE
            .try_with(|cache| {
                let mut top = cache.top.get();
                if top.is_null() {
                    // Acquire: pairs with give_back's release of the emptied chain.
                    top = spare.swap(0, Acquire) as *mut Block;
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
            new_block().cast()
        } else {
            cached.cast()
        }
    }

    /// Hands an emptied chain back for posting threads to reuse.
    ///
    /// # Safety
    /// `top` heads an owned chain of emptied nodes, linked through their first word,
    /// made by `take::<N>` (or is null).
    pub(super) unsafe fn give_back<N>(spare: &AtomicUsize, top: *mut Block) {
        if top.is_null() {
            return;
        }
        if !shared::<N>() {
            // SAFETY: per the contract, boxes of N linked through their first word.
            unsafe { free_chain::<N>(top) };
            return;
        }
        // Release: the chain's links before a poster reads them.
        let old = spare.swap(top as usize, AcqRel) as *mut Block;
        // SAFETY: the swap made the old chain ours.
        unsafe { free_blocks(old) };
    }

    /// # Safety
    /// As `give_back`.
    pub(super) unsafe fn free_chain<N>(mut top: *mut Block) {
        if shared::<N>() {
            // SAFETY: per the contract, blocks.
            unsafe { free_blocks(top) };
            return;
        }
        while !top.is_null() {
            // SAFETY: per the contract, a box of N whose first word links the chain.
            unsafe {
                let next = *top.cast::<*mut Block>();
                drop(Box::from_raw(top.cast::<MaybeUninit<N>>()));
                top = next;
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;

    /// One park of the loop against `posters` posts: if the loop blocks (its park was
    /// announced), exactly one poster must have been told to wake it; if it does not,
    /// it must have seen an item; and every item is taken in the end.
    fn model(posters: usize) {
        loom::model(move || {
            let stack = Arc::new(PostStack::new());
            let wakers = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..posters)
                .map(|i| {
                    let (stack, wakers) = (stack.clone(), wakers.clone());
                    thread::spawn(move || match stack.push(i) {
                        Pushed::Queued(true) => {
                            wakers.fetch_add(1, Relaxed);
                        }
                        Pushed::Queued(false) => {}
                        Pushed::Refused(_) => panic!("refused while open"),
                    })
                })
                .collect();
            let parked = stack.park();
            for h in handles {
                h.join().unwrap();
            }
            let woken = wakers.load(Relaxed);
            if parked {
                assert_eq!(woken, 1, "a blocked loop is woken exactly once");
            } else {
                assert_eq!(woken, 0, "no wake-up for a loop that did not park");
            }
            stack.unpark();
            let mut out = Vec::new();
            stack.take_into(&mut out);
            out.sort();
            assert_eq!(out, (0..posters).collect::<Vec<_>>(), "every item taken");
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

    /// Posts racing `close`: each is refused, or handed over by `close`.
    #[test]
    fn loom_a_post_racing_close_is_refused_or_handed_over() {
        loom::model(|| {
            let stack = Arc::new(PostStack::new());
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let stack = stack.clone();
                    thread::spawn(move || matches!(stack.push(i), Pushed::Queued(_)))
                })
                .collect();
            let mut handed = Vec::new();
            stack.close_into(&mut handed);
            let accepted = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|&a| a)
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
        let stack = Arc::new(PostStack::new());
        let made = || nodes::MADE.with(|m| m.get());
        // This thread posts and takes: its second round of posts reuses the chain the
        // first take handed back (once its own cache, if any, is used up).
        for i in 0..100 {
            stack.push(i);
        }
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
    fn a_chain_handed_back_is_capped() {
        let stack = PostStack::new();
        for i in 0..nodes::CHAIN_MAX as u32 + 50 {
            stack.push(i);
        }
        taken(&stack);
        let mut spare = stack.spare.load(SeqCst) as *mut *mut u8;
        let mut len = 0;
        while !spare.is_null() {
            len += 1;
            // SAFETY: the spare chain is not taken by anyone meanwhile (this thread
            // alone uses the stack); each block's first word links the next.
            spare = unsafe { *spare }.cast();
        }
        assert_eq!(len, nodes::CHAIN_MAX);
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
        for seq in got {
            assert_eq!(seq, (0..EACH).collect::<Vec<_>>());
        }
    }
}
