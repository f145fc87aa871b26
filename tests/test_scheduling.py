"""Scheduling: call_soon FIFO, call_later/call_at ordering, run-once batches, the clock.

Differential: every test runs on weaveloop and on the stock loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import decimal
import fractions
import math
import random
import socket
import sys
import threading
import time
from unittest import mock

import pytest
from _support import SAFETY


def test_call_soon_runs_fifo(loop):
    ran = []
    for i in range(200):
        loop.call_soon(ran.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == list(range(200))


def test_call_soon_passes_args_and_returns_handle(loop):
    got = []
    h = loop.call_soon(lambda *a: got.append(a), 1, "two", None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == [(1, "two", None)]
    assert hasattr(h, "cancel")


def test_call_soon_from_a_callback_keeps_fifo_across_iterations(loop):
    ran = []

    def first():
        ran.append("first")
        loop.call_soon(ran.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(ran.append, "second")
    loop.call_soon(lambda: loop.call_soon(loop.stop))
    loop.run_forever()
    assert ran == ["first", "second", "scheduled-by-first"]


def test_call_soon_runs_in_the_given_context(loop):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in-ctx", "unset"]


def test_call_soon_captures_the_context_at_scheduling_time(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []
    token = var.set("at-schedule")
    loop.call_soon(lambda: seen.append(var.get()))
    var.reset(token)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["at-schedule"]


def test_call_at_fires_in_deadline_order(loop):
    ran = []
    base = loop.time()
    for k in [5, 1, 4, 2, 3]:
        loop.call_at(base + k * 0.002, ran.append, k)
    loop.call_at(base + 0.011, loop.stop)
    loop.run_forever()
    assert ran == [1, 2, 3, 4, 5]


def test_call_later_fires_in_delay_order(loop):
    ran = []
    for k in [3, 1, 2]:
        loop.call_later(k * 0.003, ran.append, k)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert ran == [1, 2, 3]


def test_many_random_timers_fire_in_deadline_order(loop):
    rng = random.Random(1234)
    fired = []
    pending = 1000

    def fire(when):
        nonlocal pending
        fired.append(when)
        pending -= 1
        if pending == 0:
            loop.stop()

    for _ in range(1000):
        when = loop.time() + rng.uniform(0, 0.05)
        loop.call_at(when, fire, when)
    guard = loop.call_later(SAFETY, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert pending == 0
    assert fired == sorted(fired)


def test_timer_never_fires_before_its_deadline(loop):
    late = []

    def check(when):
        late.append(loop.time() - when)

    for k in range(1, 21):
        when = loop.time() + k * 0.0005
        loop.call_at(when, check, when)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert len(late) == 20
    assert min(late) >= -1e-6


def test_expired_timer_runs_after_callbacks_already_ready(loop):
    # asyncio appends expired timers behind the ready queue of the same iteration.
    ran = []
    loop.call_soon(ran.append, "a")
    loop.call_later(0, ran.append, "timer")
    loop.call_soon(ran.append, "c")
    loop.call_soon(lambda: loop.call_soon(loop.stop))
    loop.run_forever()
    assert ran == ["a", "c", "timer"]


def test_run_once_runs_only_callbacks_ready_when_it_began(loop):
    # stop() lets the current batch finish; what that batch schedules waits for the next.
    ran = []

    def a():
        ran.append("a")
        loop.call_soon(ran.append, "scheduled-by-a")
        loop.stop()

    loop.call_soon(a)
    loop.call_soon(ran.append, "b")
    loop.run_forever()
    assert ran == ["a", "b"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["a", "b", "scheduled-by-a"]


def test_stop_before_run_forever_runs_one_iteration(loop):
    ran = []
    loop.call_soon(ran.append, 1)
    loop.stop()
    loop.run_forever()
    assert ran == [1]
    assert not loop.is_running()


def test_ready_io_is_polled_between_batches(loop):
    # A callback chain that always reschedules itself must not starve a ready reader.
    a, b = socket.socketpair()
    try:
        b.send(b"x")
        steps = 0
        reader_seen_at = []

        def on_readable():
            reader_seen_at.append(steps)
            a.recv(1)
            loop.remove_reader(a)

        def chain():
            nonlocal steps
            steps += 1
            if reader_seen_at or steps >= 1000:
                loop.stop()
            else:
                loop.call_soon(chain)

        loop.add_reader(a, on_readable)
        loop.call_soon(chain)
        loop.run_forever()
        assert reader_seen_at, "reader never ran while the ready queue stayed busy"
        assert reader_seen_at[0] <= 3
    finally:
        a.close()
        b.close()


def test_due_timer_is_not_starved_by_a_busy_ready_queue(loop):
    fired = []
    start = loop.time()

    def chain():
        if fired or loop.time() - start > SAFETY:
            loop.stop()
        else:
            loop.call_soon(chain)

    loop.call_later(0.001, fired.append, True)
    loop.call_soon(chain)
    loop.run_forever()
    assert fired


def test_time_is_the_monotonic_clock(loop):
    for _ in range(100):
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        assert before - 1e-6 <= now <= after + 1e-6


def test_time_is_the_monotonic_clock_while_running(loop):
    samples = []

    def sample():
        before = time.monotonic()
        samples.append((before, loop.time(), time.monotonic()))
        loop.stop()

    loop.call_soon(sample)
    loop.run_forever()
    (before, now, after) = samples[0]
    assert before - 1e-6 <= now <= after + 1e-6


def test_timer_handle_when_is_relative_to_loop_time(loop):
    before = loop.time()
    h = loop.call_later(100, lambda: None)
    after = loop.time()
    assert before + 100 <= h.when() <= after + 100
    h.cancel()


@pytest.mark.parametrize("delay", [0, 0.0, 0.001])
def test_call_later_accepts_int_and_float(loop, delay):
    ran = []
    loop.call_later(delay, ran.append, delay)
    loop.call_later(0.005, loop.stop)
    loop.run_forever()
    assert ran == [delay]


def test_a_patched_time_drives_the_scheduler(loop):
    # Virtual-clock test helpers replace loop.time on the instance; as in the stock loop,
    # timers then fire by that clock and call_later counts from it.
    async def main():
        now = loop.time()
        fired = []
        with mock.patch.object(loop, "time") as fake:
            fake.return_value = now
            loop.call_at(now + 3600, fired.append, "an hour later")
            fake.return_value = now + 3600
            later = loop.call_later(10, fired.append, "never")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            later.cancel()
        # Put back: the loop's own clock again.
        await asyncio.sleep(0)
        return fired, later.when() - (now + 3600)

    # (Not under wait_for: the jump would fire its timeout too.)
    assert loop.run_until_complete(main()) == (["an hour later"], 10)


def test_a_time_patched_on_the_class_after_the_loop_was_made_drives_its_next_run(loop):
    # Far from the real monotonic clock: a timer read by that one would never fire here.
    start = 1e9
    fired = []

    async def main(fake):
        loop.call_at(start + 3600, fired.append, "an hour later")
        fake.return_value = start + 3601  # (past it: at 1e9 the clock resolution is lost)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    with mock.patch.object(type(loop), "time") as fake:
        fake.return_value = start
        loop.run_until_complete(main(fake))
    assert fired == ["an hour later"]
    # Put back: the next run is on the loop's own clock again.
    assert abs(loop.run_until_complete(_loop_time()) - time.monotonic()) < 60


async def _loop_time():
    return asyncio.get_running_loop().time()


@pytest.mark.parametrize("how", ["method", "attribute set before set-up"])
def test_a_subclass_time_drives_the_scheduler(loop, how):
    if how == "method":

        class FakeClock(type(loop)):
            fake = 0.0

            def time(self):
                return self.fake

    else:

        class FakeClock(type(loop)):
            def __init__(self):
                self.fake = 0.0
                self.time = lambda: self.fake
                super().__init__()

    fake_loop = FakeClock()
    try:
        fired = []
        fake_loop.call_later(1000, fired.append, "at 1000")
        fake_loop.fake = 1000.0
        fake_loop.run_until_complete(asyncio.sleep(0))
        fake_loop.run_until_complete(asyncio.sleep(0))
        assert fired == ["at 1000"]
    finally:
        fake_loop.close()


def test_call_later_adds_the_delay_to_a_clock_of_another_type_in_its_arithmetic(loop):
    # A virtual clock that counts in ints or Fractions: the deadline keeps its type (the
    # stock call_later computes `time() + delay`), and one that does not add to the delay
    # is asyncio's TypeError.
    def named():
        pass

    loop.time = lambda: 100
    h = loop.call_later(5, named)
    assert (h.when(), type(h.when())) == (105, int)
    loop.time = lambda: fractions.Fraction(1, 3)
    t = loop.call_later(fractions.Fraction(1, 3), named)
    assert (t.when(), type(t.when())) == (fractions.Fraction(2, 3), fractions.Fraction)
    loop.time = lambda: decimal.Decimal(100)
    with pytest.raises(TypeError, match="unsupported operand"):
        loop.call_later(2.5, named)
    assert loop.call_later(decimal.Decimal(1), named).when() == decimal.Decimal(101)
    for handle in (h, t):
        handle.cancel()


def test_call_later_names_call_at_in_its_callback_errors(loop):
    # The stock call_later hands the callback to call_at, whose check names itself.
    loop.set_debug(True)

    async def coro_fn():
        pass

    with pytest.raises(TypeError, match=r"coroutines cannot be used with call_at\(\)"):
        loop.call_later(1, coro_fn)
    with pytest.raises(TypeError, match=r"a callable object was expected by call_at\(\)"):
        loop.call_later(1, 42)


def test_a_clock_at_infinity_with_a_timer_at_infinity_leaves_the_loop_usable(loop, loop_kind):
    # inf - inf is NaN: the poll waits not at all (asyncio: max(0, nan) is 0) rather than
    # failing to turn it into a timeout (which left the loop marked running for good).
    if loop_kind == "asyncio" and sys.version_info >= (3, 13):
        pytest.skip("Python 3.13's own loop raises ValueError turning NaN into a timeout")
    loop.time = lambda: math.inf
    never = loop.call_at(math.inf, lambda: None)
    fut = loop.create_future()
    started = threading.Event()

    def poster():
        started.wait(SAFETY)
        loop.call_soon_threadsafe(fut.set_result, "done")

    t = threading.Thread(target=poster)
    t.start()
    loop.call_soon(started.set)
    try:
        assert loop.run_until_complete(fut) == "done"
    finally:
        t.join(SAFETY)
        never.cancel()
    assert not loop.is_running()


def test_a_nan_clock_finds_every_timer_due_as_stock_does(loop):
    # A replaced clock that reads NaN: every deadline compares false against it, so the
    # stock loop finds each timer due at its next iteration, including those of
    # call_later, whose deadline is NaN too. (weaveloop used to keep such a timer forever.)
    fired = []
    loop.call_at(loop.time() + 1000, fired.append, "at")
    loop.time = lambda: math.nan
    h = loop.call_later(1000, fired.append, "later")
    assert math.isnan(h.when())
    loop.run_until_complete(asyncio.sleep(0))
    assert sorted(fired) == ["at", "later"]


def test_a_float_subclass_clock_reading_nan_finds_the_timer_due(loop):
    # (numpy's float64 is one.)
    class Seconds(float):
        pass

    fired = []
    loop.time = lambda: Seconds("nan")
    h = loop.call_later(1, fired.append, "later")
    assert math.isnan(h.when())
    loop.run_until_complete(asyncio.sleep(0))
    assert fired == ["later"]


def test_a_nan_deadline_fires_at_once_on_a_sane_clock(loop):
    # The NaN timer of a clock that read NaN for a moment stays due once the clock is
    # back: it fires at the next iteration, before later timers, and the others keep
    # their order.
    fired = []
    loop.time = lambda: math.nan
    loop.call_later(0, fired.append, "nan")
    del loop.time
    loop.call_later(0, fired.append, "zero")
    loop.call_later(1000, fired.append, "far")
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))
    assert fired == ["nan", "zero"]


def test_timers_with_the_same_deadline_run_in_scheduling_order(wloop):
    # (asyncio leaves this order undefined; the stock loop's heap mixes such timers up.)
    ran = []
    when = wloop.time() + 0.001
    for i in range(12):
        wloop.call_at(when, ran.append, i)
    done = wloop.create_future()
    wloop.call_at(when + 0.001, done.set_result, None)
    wloop.run_until_complete(done)
    assert ran == list(range(12))
