//! A one-shot CLOCK_MONOTONIC timerfd: it lets a poll end at a sub-millisecond deadline,
//! where epoll_wait itself counts in whole milliseconds (a 0.3 ms wait would last 1 ms).
//! Invariant: the fd is owned here and closed on drop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: plain syscall with constant flags; the result is checked below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(TimerFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Fires once, `after` from now (at least 1 ns: a zero value would disarm it).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        self.set(libc::timespec {
            tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
        })
    }

    /// Fires once at `deadline`, CLOCK_MONOTONIC seconds (as `clock::monotonic()`),
    /// rounded up to the next nanosecond: never before it. A deadline already past
    /// fires at once.
    pub fn arm_at(&self, deadline: f64) -> io::Result<()> {
        // (Not below 1 ns: a zero value would disarm it.)
        let deadline = deadline.max(1e-9);
        let secs = deadline.floor();
        let nanos = ((deadline - secs) * 1e9).ceil();
        let (secs, nanos) = if nanos >= 1e9 {
            (secs + 1.0, 0.0)
        } else {
            (secs, nanos)
        };
        self.set_with(
            libc::TFD_TIMER_ABSTIME,
            libc::timespec {
                tv_sec: secs as libc::time_t,
                tv_nsec: nanos as libc::c_long,
            },
        )
    }

    pub fn disarm(&self) -> io::Result<()> {
        self.set(libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        })
    }

    fn set(&self, value: libc::timespec) -> io::Result<()> {
        self.set_with(0, value)
    }

    fn set_with(&self, flags: libc::c_int, value: libc::timespec) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `self.fd` is a live timerfd; `spec` is a valid itimerspec and the old
        // value is not asked for (NULL is allowed).
        let r = unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), flags, &spec, std::ptr::null_mut())
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes a pending expiration, if any (the fd is non-blocking).
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer from a live fd; EAGAIN
        // (no expiration pending) is fine to ignore.
        unsafe {
            libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len());
        }
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
