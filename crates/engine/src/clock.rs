//! The loop clock: CLOCK_MONOTONIC in seconds, the clock behind Python's `time.monotonic()`,
//! so `loop.time()` and `time.monotonic()` can be compared directly.

/// Seconds on the monotonic clock, as `time.monotonic()` returns them.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC is always supported
    // on Linux, so clock_gettime only writes into it and cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Resolution of the monotonic clock in seconds (what `time.get_clock_info` reports).
pub fn resolution() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `monotonic`, a valid out-pointer for a clock that always exists.
    unsafe {
        libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(resolution() > 0.0 && resolution() < 0.001);
    }
}
