//! The I/O poller: mio (epoll) underneath, asyncio's level-triggered semantics on top.
//!
//! `add_reader` callbacks may leave data unread and expect to be called again, as with
//! select() or the selectors module's level-triggered epoll. mio registers every source
//! edge-triggered, so the watched fds are registered on mio's epoll instance directly,
//! level-triggered (`epoll_ctl`): readiness is reported for as long as it lasts, with no
//! re-arming per event. mio still polls, decodes the events and owns the wake-up
//! eventfd and the timer, which are its own edge-triggered registrations.
//! A timed poll ends at its exact deadline through a timerfd, not epoll's milliseconds.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Poll, Registry, Token, Waker};

use crate::timerfd::TimerFd;

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);

/// How long a poll may block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// Until an fd is ready or a wake-up.
    Forever,
    /// At most this long (zero: do not block).
    For(Duration),
    /// Until this CLOCK_MONOTONIC time, in seconds (as `clock::monotonic()`): the next
    /// timer's deadline. The timerfd stays armed for it across polls, so the polls of
    /// a busy loop waiting on the same timer set it once, not every iteration.
    Until(f64),
}

/// One fd's readiness as reported by a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
}

/// What an fd is watched for. `once`: each side watched is a wait for one readiness
/// (a socket operation that is done once it succeeds): epoll reports it once
/// (EPOLLONESHOT) and then holds the registration disabled (see `Interests::disarmed`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
    pub once: bool,
}

impl Interest {
    /// The epoll events for this interest (None: not watched). Level-triggered; errors
    /// and hang-ups are always reported.
    fn epoll_events(self) -> Option<u32> {
        let mut events = 0;
        if self.read {
            events |= libc::EPOLLIN | libc::EPOLLRDHUP;
        }
        if self.write {
            events |= libc::EPOLLOUT;
        }
        if events == 0 {
            return None;
        }
        if self.once {
            events |= libc::EPOLLONESHOT;
        }
        Some(events as u32)
    }
}

struct PollState {
    poll: Poll,
    events: Events,
    /// Ends a timed poll at its exact deadline (epoll_wait rounds up to milliseconds).
    timer: TimerFd,
    timer_armed: Armed,
}

/// What the timerfd is set to.
#[derive(Clone, Copy, PartialEq)]
enum Armed {
    No,
    /// For a relative wait (its deadline is not kept).
    Relative,
    /// For this `Wait::Until` deadline.
    At(f64),
}

/// The fds watched, and the registry (its epoll fd) to change the epoll set with (None
/// once closed).
struct Interests {
    wanted: HashMap<RawFd, Interest>,
    /// The fds whose one-shot registration fired: epoll holds it disabled, reporting
    /// nothing, until a MOD re-arms it. One still wanted is re-armed before the next
    /// wait (its operation was not done: the readiness did not last). One no longer
    /// wanted is left in the set, dormant, instead of removed: the next wait on the same
    /// file (the next `sock_recv` on a socket) re-arms it with one MOD, where a DEL now
    /// and an ADD then would be two calls. If the file was closed meanwhile, epoll has
    /// forgotten it (or, while a duplicate keeps the file open, keeps it disabled for
    /// good, reporting nothing), the MOD fails, and an ADD follows.
    disarmed: HashSet<RawFd>,
    /// Numbers whose dormant registration gave way to another file (its MOD failed, an
    /// ADD followed): epoll may still hold the dormant one, of a file a duplicate keeps
    /// open. Should that file come back under the number (`dup2`, fd passing), its ADD
    /// fails with EEXIST, and a MOD re-arms the dormant registration instead. (The
    /// poller's own fds, whose EEXIST is an error, are open for its whole life: their
    /// numbers never had another file's registration.)
    gave_way: HashSet<RawFd>,
    registry: Option<Registry>,
    /// See `note_stale_before_fork`.
    stale_at_fork: Vec<RawFd>,
}

/// The eventfd that interrupts a blocking poll from any thread. Closed with the
/// poller: a thread that saw the loop parked and is only now waking it then finds it
/// gone, instead of writing to whatever file reused its number.
pub struct Wakeup(Mutex<Option<Waker>>);

impl Wakeup {
    pub fn wake(&self) -> io::Result<()> {
        match &*lock(&self.0) {
            Some(w) => w.wake(),
            None => Ok(()),
        }
    }
}

/// epoll with a wake-up eventfd and level-triggered reporting.
pub struct Poller {
    /// None once closed (the epoll fd and the timerfd are released).
    state: Mutex<Option<PollState>>,
    interests: Mutex<Interests>,
    waker: Arc<Wakeup>,
}

fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `lock` for a forked child, where a lock may be held by a thread of the parent that
/// the child does not have: None instead of waiting for it forever.
fn lock_if_free<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let poll = Poll::new()?;
        let waker = Arc::new(Wakeup(Mutex::new(Some(Waker::new(
            poll.registry(),
            WAKER,
        )?))));
        let registry = poll.registry().try_clone()?;
        let timer = TimerFd::new()?;
        registry.register(
            &mut SourceFd(&timer.as_raw_fd()),
            TIMER,
            mio::Interest::READABLE,
        )?;
        Ok(Poller {
            state: Mutex::new(Some(PollState {
                poll,
                events: Events::with_capacity(1024),
                timer,
                timer_armed: Armed::No,
            })),
            interests: Mutex::new(Interests {
                wanted: HashMap::new(),
                disarmed: HashSet::new(),
                gave_way: HashSet::new(),
                registry: Some(registry),
                stale_at_fork: Vec::new(),
            }),
            waker,
        })
    }

    /// Releases every fd (the loop was closed): later polls and interest changes fail
    /// with EBADF, later wake-ups do nothing.
    pub fn close(&self) {
        self.release_fds(true);
    }

    /// `close`, in a forked child, for a poller inherited from the parent: a lock that a
    /// thread of the parent held at the fork (a loop parked in `poll` holds `state`)
    /// stays locked for good, because that thread does not exist here. What such a lock
    /// guards is left open rather than waited for.
    pub fn close_after_fork(&self) {
        self.release_fds(false);
    }

    /// Takes out and drops what holds the fds; `wait`: for locks that are held, else
    /// skipping what they guard.
    fn release_fds(&self, wait: bool) {
        fn take<T, R: Default>(m: &Mutex<T>, wait: bool, f: impl FnOnce(&mut T) -> R) -> R {
            if wait {
                return f(&mut lock(m));
            }
            lock_if_free(m).map_or_else(R::default, |mut g| f(&mut g))
        }
        let state = take(&self.state, wait, Option::take);
        let registry = take(&self.interests, wait, |i| {
            i.wanted.clear();
            i.disarmed.clear();
            i.gave_way.clear();
            i.registry.take()
        });
        let waker = take(&self.waker.0, wait, Option::take);
        drop((state, registry, waker));
    }

    /// Before a fork, in the parent: notes the watched fds whose file the epoll set no
    /// longer holds — closed without being unwatched (epoll forgets a file when it is
    /// closed), their numbers maybe another file's by now — asked by re-stating each
    /// fd's interest unchanged. The child reads the note with `stale_at_fork`.
    pub fn note_stale_before_fork(&self) {
        let mut interests = lock(&self.interests);
        let Interests {
            wanted,
            registry,
            stale_at_fork,
            ..
        } = &mut *interests;
        stale_at_fork.clear();
        let Some(registry) = registry else { return };
        for (fd, w) in wanted.iter() {
            if let Some(events) = w.epoll_events() {
                if epoll_ctl(registry.as_raw_fd(), libc::EPOLL_CTL_MOD, *fd, events).is_err() {
                    stale_at_fork.push(*fd);
                }
            }
        }
    }

    /// In a forked child: whether `fd` was noted stale before the fork (false when that
    /// is not known: a thread of the parent held the interests at the fork).
    pub fn stale_at_fork(&self, fd: RawFd) -> bool {
        lock_if_free(&self.interests).is_some_and(|i| i.stale_at_fork.contains(&fd))
    }

    /// The eventfd waker that interrupts `poll` from any thread.
    pub fn waker(&self) -> Arc<Wakeup> {
        self.waker.clone()
    }

    /// Sets what `fd` is watched for, level-triggered; (false, false) stops watching it.
    /// See `watch`.
    pub fn set_interest(&self, fd: RawFd, read: bool, write: bool) -> io::Result<()> {
        self.watch(
            fd,
            Interest {
                read,
                write,
                once: false,
            },
        )
    }

    /// Sets what `fd` is watched for; no side stops watching it. If epoll refuses to
    /// change a registration (the fd was closed since, its number maybe reused), the fd
    /// is forgotten and the error returned, as the selectors module drops the key.
    pub fn watch(&self, fd: RawFd, new: Interest) -> io::Result<()> {
        let new = Interest {
            once: new.once && (new.read || new.write),
            ..new
        };
        let mut interests = lock(&self.interests);
        let Interests {
            wanted,
            disarmed,
            gave_way,
            registry,
            ..
        } = &mut *interests;
        let registry = registry.as_ref().ok_or_else(closed)?;
        let old = wanted.get(&fd).copied().unwrap_or_default();
        if old == new {
            return Ok(());
        }
        let epfd = registry.as_raw_fd();
        match (old.epoll_events(), new.epoll_events()) {
            // A dormant registration (see `disarmed`) re-armed, if epoll still holds it
            // for the file under this number; else the file is registered afresh.
            (None, Some(events)) if disarmed.remove(&fd) => {
                if epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events).is_err() {
                    gave_way.insert(fd);
                    epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events)?;
                }
            }
            // EEXIST (a number that is one of the poller's own fds, the waker's or the
            // timer's: its file is already in the set) is an error, as the selectors
            // module's epoll registration raises it: taking that entry over would take
            // the poller's own wake-ups away. Unless the number's dormant registration
            // gave way (see `gave_way`): then it is that one's file, back.
            (None, Some(events)) => match epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && gave_way.remove(&fd) => {
                    epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events)?
                }
                r => r?,
            },
            (Some(_), Some(events)) => {
                disarmed.remove(&fd);
                if let Err(e) = epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, events) {
                    // ENOENT: the watched file was closed (epoll forgot it) and another
                    // took its number. If only the one-shot flag changed, the selectors
                    // module would have made no call for the same read/write mask, and
                    // raised nothing: the new file is registered afresh. Otherwise, as
                    // its `modify` fails: the error, and the fd forgotten.
                    let same_mask = (old.read, old.write) == (new.read, new.write);
                    let readded = same_mask
                        && e.raw_os_error() == Some(libc::ENOENT)
                        && epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, events).is_ok();
                    if !readded {
                        // (What epoll may still hold under this number is not ours.)
                        let _ = epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0);
                        wanted.remove(&fd);
                        return Err(e);
                    }
                }
            }
            // A fired one-shot registration stays, dormant (see `disarmed`).
            (Some(_), None) if disarmed.contains(&fd) => {}
            (Some(_), None) => {
                // ENOENT/EBADF here only mean epoll already forgot a closed fd.
                let _ = epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0);
            }
            (None, None) => {}
        }
        if new.epoll_events().is_some() {
            wanted.insert(fd, new);
        } else {
            wanted.remove(&fd);
        }
        Ok(())
    }

    /// Before a wait: re-arms the fired one-shot registrations still wanted (see
    /// `disarmed`); one that epoll refuses (its file closed since) is left to report
    /// nothing, as a closed fd's level-triggered registration does. Returns the number
    /// of fds watched.
    fn rearm_fired(&self) -> usize {
        let mut interests = lock(&self.interests);
        let Interests {
            wanted,
            disarmed,
            registry,
            ..
        } = &mut *interests;
        if !disarmed.is_empty() {
            if let Some(registry) = registry {
                let epfd = registry.as_raw_fd();
                disarmed.retain(|fd| match wanted.get(fd).and_then(|w| w.epoll_events()) {
                    Some(events) => {
                        let _ = epoll_ctl(epfd, libc::EPOLL_CTL_MOD, *fd, events);
                        false
                    }
                    None => true,
                });
            }
        }
        wanted.len()
    }

    /// Number of fds being watched.
    pub fn len(&self) -> usize {
        lock(&self.interests).wanted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blocks as `wait` allows and appends ready fds to `out`. Wake-ups through the
    /// waker return with nothing appended. EINTR is returned as an error of kind
    /// `Interrupted` so that the caller can run signal handlers.
    pub fn poll(&self, wait: Wait, out: &mut Vec<Readiness>) -> io::Result<()> {
        let mut st = lock(&self.state);
        let st = st.as_mut().ok_or_else(closed)?;
        // epoll's own timeout (rounded up to ms) stays as a safety net.
        let timeout = match wait {
            Wait::Forever => {
                if st.timer_armed != Armed::No {
                    st.timer.disarm()?;
                    st.timer_armed = Armed::No;
                }
                None
            }
            Wait::For(t) if t.is_zero() => Some(t),
            Wait::For(t) => {
                st.timer.arm(t)?;
                st.timer_armed = Armed::Relative;
                Some(t)
            }
            Wait::Until(deadline) => {
                if st.timer_armed != Armed::At(deadline) {
                    st.timer.arm_at(deadline)?;
                    st.timer_armed = Armed::At(deadline);
                }
                let left = deadline - crate::clock::monotonic();
                Some(Duration::try_from_secs_f64(left).unwrap_or(Duration::ZERO))
            }
        };
        // Room for every watched fd (and the waker and the timer), as the selectors
        // module sizes epoll's result: each ready fd is served in this iteration.
        let room = self.rearm_fired() + 2;
        if st.events.capacity() < room {
            st.events = Events::with_capacity(room.next_power_of_two());
        }
        st.poll.poll(&mut st.events, timeout)?;
        let mut interests = lock(&self.interests);
        let Interests {
            wanted, disarmed, ..
        } = &mut *interests;
        for ev in st.events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            if ev.token() == TIMER {
                st.timer.clear();
                st.timer_armed = Armed::No;
                continue;
            }
            let fd = ev.token().0 as RawFd;
            let Some(w) = wanted.get(&fd) else { continue };
            if w.once {
                // Reported once: epoll now holds the registration disabled.
                disarmed.insert(fd);
            }
            let err = ev.is_error();
            let readable = w.read && (ev.is_readable() || ev.is_read_closed() || err);
            let writable = w.write && (ev.is_writable() || ev.is_write_closed() || err);
            if readable || writable {
                out.push(Readiness {
                    fd,
                    readable,
                    writable,
                });
            }
        }
        Ok(())
    }
}

/// `epoll_ctl(2)` for a watched fd, level-triggered, its token the fd itself (as mio
/// decodes it: `Token(fd)`).
fn epoll_ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: epoll_ctl only reads `event` (ignored for EPOLL_CTL_DEL), a live local;
    // bad or stale fds are reported through errno, which is returned.
    if unsafe { libc::epoll_ctl(epfd, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    impl Poller {
        /// What the epoll set holds: (fd, events mask) of each registration, read from
        /// `/proc/self/fdinfo` (the waker's and the timer's left out).
        fn epoll_set(&self) -> Vec<(RawFd, u32)> {
            let epfd = lock(&self.interests).registry.as_ref().unwrap().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")).unwrap();
            let mut set: Vec<(RawFd, u32)> = info
                .lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    (words.next()? == "tfd:").then_some(())?;
                    let fd = words.next()?.parse().ok()?;
                    (words.next()? == "events:").then_some(())?;
                    let mask = u32::from_str_radix(words.next()?, 16).ok()?;
                    Some((fd, mask))
                })
                .filter(|(_, mask)| mask & libc::EPOLLET as u32 == 0) // mio's own
                .collect();
            set.sort_unstable();
            set
        }
    }

    fn once(read: bool, write: bool) -> Interest {
        Interest {
            read,
            write,
            once: true,
        }
    }

    fn ready_fds(p: &Poller) -> Vec<RawFd> {
        let mut out = Vec::new();
        p.poll(Wait::For(Duration::ZERO), &mut out).unwrap();
        out.iter().map(|r| r.fd).collect()
    }

    #[test]
    fn a_one_shot_registration_reports_again_while_still_wanted() {
        let p = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        p.watch(fd, once(true, false)).unwrap();
        let oneshot = libc::EPOLLONESHOT as u32;
        assert!(p.epoll_set()[0].1 & oneshot != 0);
        a.write_all(b"x").unwrap();
        // Reported, disabled by epoll, re-armed before the next wait: as level-triggered
        // for as long as the fd is watched and ready.
        for _ in 0..3 {
            assert_eq!(ready_fds(&p), [fd]);
        }
        // Either side watched level-triggered makes the whole registration so.
        p.watch(
            fd,
            Interest {
                read: true,
                write: true,
                once: false,
            },
        )
        .unwrap();
        assert_eq!(p.epoll_set()[0].1 & oneshot, 0);
    }

    /// A socket pair whose second end was watched one-shot, reported readable (with a
    /// byte unread), then unwatched: its registration is dormant.
    fn fired_and_unwatched(p: &Poller) -> (UnixStream, UnixStream, RawFd) {
        let (mut a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        p.watch(fd, once(true, false)).unwrap();
        a.write_all(b"x").unwrap();
        assert_eq!(ready_fds(p), [fd]);
        p.set_interest(fd, false, false).unwrap();
        (a, b, fd)
    }

    #[test]
    fn a_fired_one_shot_unwatched_stays_dormant_and_a_new_wait_rearms_it() {
        let p = Poller::new().unwrap();
        let (_a, _b, fd) = fired_and_unwatched(&p);
        assert!(p.is_empty());
        assert_eq!(p.epoll_set().len(), 1, "left in the set, not removed");
        assert_eq!(ready_fds(&p), [] as [RawFd; 0], "dormant: reports nothing");
        p.watch(fd, once(true, false)).unwrap();
        assert_eq!(ready_fds(&p), [fd], "re-armed");
        // An armed one that never fired is removed, as a level-triggered one is.
        let (_c, d) = UnixStream::pair().unwrap();
        p.watch(d.as_raw_fd(), once(true, false)).unwrap();
        p.set_interest(d.as_raw_fd(), false, false).unwrap();
        assert_eq!(p.epoll_set().iter().map(|r| r.0).collect::<Vec<_>>(), [fd]);
    }

    #[test]
    fn a_dormant_registration_gives_way_to_a_new_file_under_its_number() {
        let p = Poller::new().unwrap();
        let (mut a, b, fd) = fired_and_unwatched(&p);
        // The file stays open through a duplicate: epoll keeps its registration,
        // disabled, for good. The number goes to a new file (in one step, so no other
        // test thread can take it meanwhile).
        // SAFETY: `b`'s fd is open; the duplicate is owned here and closed below.
        let dup = unsafe { libc::dup(fd) };
        assert!(dup >= 0);
        let (mut c, d) = UnixStream::pair().unwrap();
        // SAFETY: both fds are open and owned by this test; `b` keeps owning the number,
        // now a duplicate of `d`, and closes it when dropped.
        assert_eq!(unsafe { libc::dup2(d.as_raw_fd(), fd) }, fd);
        p.set_interest(fd, true, false).unwrap();
        // The old file is readable (unread data, more coming) and reports nothing; the
        // new one reports its own readiness only.
        a.write_all(b"more").unwrap();
        assert_eq!(ready_fds(&p), [] as [RawFd; 0]);
        c.write_all(b"y").unwrap();
        assert_eq!(ready_fds(&p), [fd]);
        // SAFETY: `dup` is the duplicate made above, not closed yet.
        unsafe { libc::close(dup) };
        // Closed for good: epoll forgets the dormant registration by itself.
        p.set_interest(fd, false, false).unwrap();
        assert_eq!(p.epoll_set(), []);
        drop((b, d));
    }

    #[test]
    fn a_file_back_under_the_number_of_its_dormant_registration_is_watched_again() {
        let p = Poller::new().unwrap();
        let (mut a, b, fd) = fired_and_unwatched(&p);
        // SAFETY: `b`'s fd is open; the duplicate is owned here and closed below.
        let kept = unsafe { libc::dup(fd) };
        assert!(kept >= 0);
        let (_c, d) = UnixStream::pair().unwrap();
        // SAFETY: all three fds are open and owned by this test; `b` keeps owning the
        // number, which names `d`'s file, then (from `kept`) its own again.
        assert_eq!(unsafe { libc::dup2(d.as_raw_fd(), fd) }, fd);
        p.set_interest(fd, true, false).unwrap(); // the dormant one gives way
        p.set_interest(fd, false, false).unwrap();
        // SAFETY: as above: `kept` and the number are open and this test's.
        assert_eq!(unsafe { libc::dup2(kept, fd) }, fd);
        // The first file is back: its ADD finds the dormant registration (EEXIST), which
        // is re-armed instead, and reports the byte left unread and more.
        p.watch(fd, once(true, false)).unwrap();
        a.write_all(b"y").unwrap();
        assert_eq!(ready_fds(&p), [fd]);
        // SAFETY: `kept` is the duplicate made above, not closed yet.
        unsafe { libc::close(kept) };
        drop(b);
    }

    #[test]
    fn fds_closed_while_watched_are_noted_before_a_fork() {
        let p = Poller::new().unwrap();
        let (live, _peer) = UnixStream::pair().unwrap();
        let (watched, _watched_peer) = UnixStream::pair().unwrap();
        let number = watched.as_raw_fd();
        p.set_interest(number, true, true).unwrap();
        // Another file takes the number, closing the watched file in the same step (so
        // no other test thread can take the number meanwhile); epoll forgets the file.
        let (other, _other_peer) = UnixStream::pair().unwrap();
        // SAFETY: both fds are open and owned by this test; `watched` keeps owning the
        // number, now a duplicate of `other`, and closes it when dropped.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), number) }, number);
        p.note_stale_before_fork();
        assert!(p.stale_at_fork(number));
        assert!(!p.stale_at_fork(live.as_raw_fd()));
        // Noting again starts afresh.
        p.set_interest(number, false, false).unwrap();
        p.note_stale_before_fork();
        assert!(!p.stale_at_fork(number));
    }

    #[test]
    fn after_close_polls_and_interest_changes_fail_cleanly() {
        let p = Poller::new().unwrap();
        let (_a, b) = UnixStream::pair().unwrap();
        p.set_interest(b.as_raw_fd(), true, false).unwrap();
        p.close();
        assert!(p.is_empty());
        let mut out = Vec::new();
        let err = p.poll(Wait::For(Duration::ZERO), &mut out).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = p.set_interest(b.as_raw_fd(), true, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        p.waker().wake().unwrap(); // a no-op now
        p.close(); // idempotent
    }

    #[test]
    fn a_refused_change_forgets_the_fd() {
        let p = Poller::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        p.set_interest(fd, true, true).unwrap();
        drop(b); // epoll forgets it; the number is free for the next file
        let (c, _d) = UnixStream::pair().unwrap();
        assert_eq!(c.as_raw_fd(), fd, "the number is reused");
        let err = p.set_interest(fd, true, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(p.is_empty(), "the stale registration is forgotten");
        // So the new file under that number can be watched.
        p.set_interest(fd, true, false).unwrap();
        drop(a);
    }

    #[test]
    fn a_new_file_under_a_closed_watched_number_is_registered_when_only_once_changes() {
        // A socket closed while a sock_* wait (one-shot) or add_reader (level) still
        // watched it, and a new socket under its number watched the other way: the
        // selectors module makes no call for the same mask and raises nothing; the new
        // file is registered afresh, and reports its own readiness.
        for (first, second) in [(true, false), (false, true)] {
            let p = Poller::new().unwrap();
            let (_a, b) = UnixStream::pair().unwrap();
            let fd = b.as_raw_fd();
            let interest = |once| Interest {
                read: true,
                write: false,
                once,
            };
            p.watch(fd, interest(first)).unwrap();
            let (mut c, d) = UnixStream::pair().unwrap();
            // SAFETY: both fds are open and owned by this test; `b` keeps owning the
            // number, now a duplicate of `d`, and closes it when dropped.
            assert_eq!(unsafe { libc::dup2(d.as_raw_fd(), fd) }, fd);
            p.watch(fd, interest(second)).unwrap();
            c.write_all(b"x").unwrap();
            assert_eq!(ready_fds(&p), [fd]);
            drop((b, d));
        }
    }

    #[test]
    fn every_ready_fd_is_reported_in_one_poll() {
        let p = Poller::new().unwrap();
        let pairs: Vec<_> = (0..1500).map(|_| UnixStream::pair().unwrap()).collect();
        for (a, b) in &pairs {
            (&*a).write_all(b"x").unwrap();
            p.set_interest(b.as_raw_fd(), true, false).unwrap();
        }
        let mut out = Vec::new();
        p.poll(Wait::For(Duration::ZERO), &mut out).unwrap();
        assert_eq!(out.len(), pairs.len());
    }

    #[test]
    fn close_after_fork_skips_what_a_held_lock_guards() {
        let p = Poller::new().unwrap();
        let held = p.state.lock().unwrap();
        p.close_after_fork(); // must not wait for `state`
        assert!(
            held.is_some(),
            "the poll state under the held lock is left alone"
        );
        drop(held);
        let mut out = Vec::new();
        assert!(p.poll(Wait::For(Duration::ZERO), &mut out).is_ok());
        let (_a, b) = UnixStream::pair().unwrap();
        let err = p.set_interest(b.as_raw_fd(), true, false).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EBADF),
            "the free locks' part is closed"
        );
    }

    #[test]
    fn readiness_is_level_triggered() {
        let p = Poller::new().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        p.set_interest(b.as_raw_fd(), true, false).unwrap();
        a.write_all(b"xy").unwrap();
        for _ in 0..3 {
            let mut out = Vec::new();
            p.poll(Wait::For(Duration::from_secs(5)), &mut out).unwrap();
            assert_eq!(out.len(), 1, "unread data is reported on every poll");
            assert!(out[0].readable && !out[0].writable);
        }
        let mut buf = [0u8; 2];
        (&b).read_exact(&mut buf).unwrap();
        let mut out = Vec::new();
        p.poll(Wait::For(Duration::from_millis(0)), &mut out)
            .unwrap();
        assert!(out.is_empty(), "drained fd is quiet");
    }

    #[test]
    fn a_timed_poll_never_ends_early_and_leaves_no_stale_event() {
        let p = Poller::new().unwrap();
        let mut out = Vec::new();
        for micros in [1, 200, 1500] {
            let t0 = std::time::Instant::now();
            p.poll(Wait::For(Duration::from_micros(micros)), &mut out)
                .unwrap();
            assert!(t0.elapsed() >= Duration::from_micros(micros));
            assert!(out.is_empty(), "the timer's own wake-up is not an fd event");
        }
        // The timer fired and was consumed: a zero-timeout poll finds nothing.
        p.poll(Wait::For(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_poll_until_a_deadline_ends_there_and_not_before() {
        let p = Poller::new().unwrap();
        let mut out = Vec::new();
        let deadline = crate::clock::monotonic() + 0.002;
        // While an fd is ready, polls until the deadline return at once.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"x").unwrap();
        p.set_interest(b.as_raw_fd(), true, false).unwrap();
        for _ in 0..3 {
            out.clear();
            p.poll(Wait::Until(deadline), &mut out).unwrap();
            assert_eq!(out.len(), 1);
        }
        // Then the deadline, set once for all of them, still ends the wait.
        p.set_interest(b.as_raw_fd(), false, false).unwrap();
        out.clear();
        p.poll(Wait::Until(deadline), &mut out).unwrap();
        assert!(crate::clock::monotonic() >= deadline, "ended early");
        assert!(out.is_empty());
        // A relative wait in between, then the same deadline again (now past): no
        // stale setting makes it block.
        p.poll(Wait::For(Duration::from_micros(100)), &mut out)
            .unwrap();
        p.poll(Wait::Until(deadline), &mut out).unwrap();
        // A later deadline replaces the earlier one.
        let later = crate::clock::monotonic() + 0.001;
        p.poll(Wait::Until(later), &mut out).unwrap();
        assert!(crate::clock::monotonic() >= later, "ended early");
        assert!(out.is_empty(), "the timer's own wake-up is not an fd event");
    }

    #[test]
    fn waker_interrupts_poll_and_interest_changes_apply() {
        let p = Arc::new(Poller::new().unwrap());
        let (a, _b) = UnixStream::pair().unwrap();
        p.set_interest(a.as_raw_fd(), false, true).unwrap();
        let mut out = Vec::new();
        p.poll(Wait::For(Duration::from_secs(5)), &mut out).unwrap();
        assert!(out[0].writable);
        p.set_interest(a.as_raw_fd(), false, false).unwrap();
        assert!(p.is_empty());
        let waker = p.waker();
        let t = std::thread::spawn(move || waker.wake().unwrap());
        out.clear();
        p.poll(Wait::Forever, &mut out).unwrap();
        assert!(out.is_empty());
        t.join().unwrap();
    }
}
