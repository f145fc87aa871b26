//! The loop clock: CLOCK_MONOTONIC in seconds, the clock behind Python's `time.monotonic()`,
//! so `loop.time()` and `time.monotonic()` can be compared directly.

type ClockCall = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// Asks CLOCK_MONOTONIC through `call` (`clock_gettime` or `clock_getres`), in seconds.
fn query(call: ClockCall) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on
    // Linux, so both calls only write into it and cannot fail.
    unsafe {
        call(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Seconds on the monotonic clock, as `time.monotonic()` returns them.
pub fn monotonic() -> f64 {
    query(libc::clock_gettime)
}

/// Resolution of the monotonic clock in seconds (what `time.get_clock_info` reports).
pub fn resolution() -> f64 {
    query(libc::clock_getres)
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
