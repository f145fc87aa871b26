"""weaveloop.sync locks, semaphores, events, conditions and barriers shared by threads
and coroutines, on the stock loop, uvloop (if installed) and weaveloop.

Coroutine-side behaviour that asyncio documents is checked differentially against
asyncio's own classes; mixed thread/coroutine behaviour (which asyncio lacks) against
the specification of issue 4.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from decimal import Decimal
from fractions import Fraction

import pytest
import weaveloop.sync as ws
from _support import SAFETY, assert_fork_script_passes, join_or_fail, start_thread, wait_or_fail
from _sync_support import (
    SYNC_LOOPS,
    HeldByAThread,
    ThreadLoop,
    call_outcome,
    run,
    wait_until,
)


@pytest.fixture(params=sorted(SYNC_LOOPS))
def factory(request):
    return SYNC_LOOPS[request.param]


# -- differential: the .aio faces against asyncio's classes ---------------------------

ASYNC_LOCKS = {"asyncio": asyncio.Lock, "weaveloop": lambda: ws.Lock().aio}


@pytest.mark.parametrize("impl", sorted(ASYNC_LOCKS))
def test_aio_lock_matches_asyncio(factory, impl):
    async def main():
        lock = ASYNC_LOCKS[impl]()
        order = []
        assert not lock.locked()
        assert await lock.acquire() is True
        assert lock.locked()

        async def worker(i):
            async with lock:
                order.append(i)

        tasks = [asyncio.ensure_future(worker(i)) for i in range(4)]
        await asyncio.sleep(0)
        tasks[1].cancel()  # a queued waiter cancelled: the others keep their turn
        lock.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(RuntimeError, match="Lock is not acquired"):
            lock.release()
        return order, lock.locked()

    assert run(factory, main) == ([0, 2, 3], False)


ASYNC_SEMS = {
    "asyncio": asyncio.BoundedSemaphore,
    "weaveloop": lambda v: ws.BoundedSemaphore(v).aio,
}


@pytest.mark.parametrize("impl", sorted(ASYNC_SEMS))
def test_aio_bounded_semaphore_matches_asyncio(factory, impl):
    async def main():
        sem = ASYNC_SEMS[impl](2)
        await sem.acquire()
        await sem.acquire()
        assert sem.locked()
        waiter = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        sem.release()
        assert await waiter is True
        sem.release()
        sem.release()
        with pytest.raises(ValueError):
            sem.release()
        return sem.locked()

    assert run(factory, main) is False


ASYNC_EVENTS = {"asyncio": asyncio.Event, "weaveloop": lambda: ws.Event().aio}


@pytest.mark.parametrize("impl", sorted(ASYNC_EVENTS))
def test_aio_event_matches_asyncio(factory, impl):
    async def main():
        ev = ASYNC_EVENTS[impl]()
        waiters = [asyncio.ensure_future(ev.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        ev.set()
        results = await asyncio.gather(*waiters)
        ev.clear()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await ev.wait()
        return results, ev.is_set()

    assert run(factory, main) == ([True, True, True], False)


ASYNC_CONDS = {"asyncio": asyncio.Condition, "weaveloop": lambda: ws.Condition(ws.Lock()).aio}


@pytest.mark.parametrize("impl", sorted(ASYNC_CONDS))
def test_aio_condition_matches_asyncio(factory, impl):
    async def main():
        cond = ASYNC_CONDS[impl]()
        woken = []
        with pytest.raises(RuntimeError):
            await cond.wait()
        with pytest.raises(RuntimeError):
            cond.notify()

        async def waiter(i):
            async with cond:
                await cond.wait()
                woken.append(i)

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
        for _ in range(3):
            await asyncio.sleep(0)
        async with cond:
            cond.notify(2)
        for _ in range(5):
            await asyncio.sleep(0)
        first = list(woken)
        async with cond:
            cond.notify_all()
        await asyncio.gather(*tasks)
        return first, woken, cond.locked()

    assert run(factory, main) == ([0, 1], [0, 1, 2], False)


# -- one object, both worlds ----------------------------------------------------------


def test_lock_thread_holds_coroutine_waits_without_stalling_loop(factory):
    lock = ws.Lock()
    holder = HeldByAThread(lock).start()

    async def main():
        ticks = 0
        waiter = asyncio.ensure_future(lock.__aenter__())
        while ticks < 5:  # the loop keeps running while the coroutine waits
            await asyncio.sleep(0)
            ticks += 1
        assert not waiter.done()
        holder.release()
        await waiter
        assert lock.locked()
        lock.release()
        return ticks

    assert run(factory, main) == 5
    assert not lock.locked()


def test_fifo_across_threads_and_coroutines(factory):
    lock = ws.Lock()
    lock.acquire()
    order = []
    lt = ThreadLoop(factory)
    try:
        threads = []
        futs = []
        for i in range(4):
            if i % 2 == 0:

                def take(i=i):
                    with lock:
                        order.append(("thread", i))

                threads.append(start_thread(take))
            else:

                async def take_async(i=i):
                    async with lock:
                        order.append(("coro", i))

                futs.append(lt.submit(take_async()))
            wait_until(lambda i=i: lock._waiting() == i + 1, f"waiter {i} queued")
        lock.release()
        for t in threads:
            t.join(SAFETY)
        for f in futs:
            f.result(SAFETY)
    finally:
        lt.close()
    assert order == [("thread", 0), ("coro", 1), ("thread", 2), ("coro", 3)]
    assert not lock.locked()


def test_granted_then_cancelled_coroutine_passes_permit_on(factory):
    async def main():
        lock = ws.Lock()
        await lock.__aenter__()
        first = asyncio.ensure_future(lock.aio.acquire())
        second = asyncio.ensure_future(lock.aio.acquire())
        await asyncio.sleep(0)
        lock.release()  # grants `first` ...
        first.cancel()  # ... which is cancelled before it runs
        assert await second is True
        assert first.cancelled()
        lock.release()
        return lock.locked(), lock._waiting()

    assert run(factory, main) == (False, 0)


def test_timeouts_leak_nothing(factory):
    async def main():
        sem = ws.Semaphore(1)
        async with sem:
            for _ in range(20):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.001):
                        await sem.aio.acquire()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sem.aio.acquire(), 0.001)
        return sem._value, sem._waiting()

    assert run(factory, main) == (1, 0)


def test_blocking_call_on_loop_thread_is_an_error(factory):
    # Deterministic: a blocking form is refused on a loop's thread even when it would
    # not have had to wait, so the mistake shows in every run, not only under contention.
    async def main():
        lock, ev, q, sem = ws.Lock(), ws.Event(), ws.Queue(), ws.Semaphore(0)
        with pytest.raises(RuntimeError, match="async with lock"):
            lock.acquire()  # free, yet refused
        with pytest.raises(RuntimeError, match="async with lock"):
            with lock:
                pass
        assert not lock.locked()
        assert lock.acquire(False) is True  # non-blocking forms are allowed
        assert lock.acquire(False) is False
        lock.release()
        ev.set()
        with pytest.raises(RuntimeError, match=r"await event\.aio\.wait\(\)"):
            ev.wait()  # already set, yet refused
        assert ev.wait(0) is True
        ev.clear()
        assert ev.wait(0) is False
        q.put_nowait(1)
        with pytest.raises(RuntimeError, match=r"await q\.aio\.get\(\)"):
            q.get()  # an item is there, yet refused
        assert q.get_nowait() == 1
        with pytest.raises(ws.QueueEmpty):
            q.get_nowait()
        with pytest.raises(RuntimeError, match="Semaphore.acquire"):
            sem.acquire()
        cond = ws.Condition()
        assert cond.acquire(False)
        try:
            with pytest.raises(RuntimeError, match=r"await cond\.aio\.wait\(\)"):
                cond.wait()
        finally:
            cond.release()
        with pytest.raises(RuntimeError, match=r"await barrier\.aio\.wait\(\)"):
            ws.Barrier(2).wait()

    run(factory, main)


def test_closed_loop_with_pending_waiter_leaves_no_thread_hanging(factory):
    lock = ws.Lock()
    lock.acquire()
    lt = ThreadLoop(factory)
    lt.submit(lock.aio.acquire())
    wait_until(lambda: lock._waiting() == 1, "the coroutine to queue")
    lt.close()  # stopped and closed with the coroutine still waiting
    got = []
    t = start_thread(lambda: got.append(lock.acquire(timeout=SAFETY)))
    wait_until(lambda: lock._waiting() == 2, "the thread to queue")
    lock.release()  # the closed loop's waiter cannot run: the thread gets the lock
    t.join(SAFETY)
    assert got == [True]


def test_event_set_from_thread_wakes_coroutines_on_two_loops_and_threads(factory):
    ev = ws.Event()
    loops = [ThreadLoop(factory), ThreadLoop(factory)]
    try:
        futs = [lt.submit(ev.aio.wait()) for lt in loops for _ in range(3)]
        results = []
        threads = [start_thread(lambda: results.append(ev.wait(SAFETY))) for _ in range(2)]
        wait_until(lambda: len(threads) == 2, "threads")
        start_thread(ev.set).join(SAFETY)
        assert [f.result(SAFETY) for f in futs] == [True] * 6
        for t in threads:
            t.join(SAFETY)
        assert results == [True, True]
    finally:
        for lt in loops:
            lt.close()


def test_condition_notifies_threads_and_coroutines_in_order(factory):
    cond = ws.Condition(ws.Lock())
    woken = []
    lt = ThreadLoop(factory)
    try:

        def thread_waiter(i):
            with cond:
                cond.wait(SAFETY)
                woken.append(i)

        async def coro_waiter(i):
            async with cond:
                await cond.aio.wait()
                woken.append(i)

        pending = []
        for i in range(4):
            if i % 2:
                pending.append(lt.submit(coro_waiter(i)))
            else:
                pending.append(start_thread(thread_waiter, i))
            wait_until(lambda i=i: cond._n._waiting() == i + 1, f"waiter {i}")
        for i in range(4):
            with cond:
                cond.notify()
            wait_until(lambda i=i: len(woken) == i + 1, f"wake-up {i}")
        for p in pending:
            p.result(SAFETY) if hasattr(p, "result") else p.join(SAFETY)
    finally:
        lt.close()
    assert woken == [0, 1, 2, 3]


def test_barrier_counts_threads_and_coroutines_together(factory):
    barrier = ws.Barrier(4)
    lt = ThreadLoop(factory)
    try:
        futs = [lt.submit(barrier.aio.wait()) for _ in range(2)]
        indices = []
        threads = [start_thread(lambda: indices.append(barrier.wait(SAFETY))) for _ in range(2)]
        for t in threads:
            t.join(SAFETY)
        indices += [f.result(SAFETY) for f in futs]
        assert sorted(indices) == [0, 1, 2, 3]
        # Broken: catchable as threading's and asyncio's BrokenBarrierError.
        fut = lt.submit(barrier.aio.wait())
        wait_until(lambda: barrier.n_waiting == 1, "the coroutine at the barrier")
        barrier.abort()
        with pytest.raises(threading.BrokenBarrierError):
            fut.result(SAFETY)
        with pytest.raises(asyncio.BrokenBarrierError):
            barrier.wait()
    finally:
        lt.close()


def test_rlock_owner_is_the_task_in_coroutines(factory):
    async def main():
        rlock = ws.RLock()
        async with rlock:
            async with rlock:  # re-entered by the same task
                assert rlock._recursion_count() == 2

            async def other():
                async with rlock:
                    return "other"

            t = asyncio.ensure_future(other())
            await asyncio.sleep(0)
            assert not t.done()  # a different task waits
        return await t

    assert run(factory, main) == "other"


def test_semaphore_thread_side_errors_match_threading():
    for cls in (ws.Semaphore, ws.BoundedSemaphore):
        with pytest.raises(ValueError):
            cls(-1)
        with pytest.raises(ValueError, match="one or more"):
            cls(1).release(0)
    with pytest.raises(ValueError, match="released too many times"):
        ws.BoundedSemaphore(1).release()
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        ws.Lock().release()
    with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
        ws.RLock().release()


def _blocking_argument_script(mod) -> list:
    """Calls on a semaphore with no permit, a held lock and an unset event that must
    return or raise at once: a false `blocking` (None among them), NaN and negative
    timeouts."""
    sem, lock, event = mod.Semaphore(0), mod.Lock(), mod.Event()
    lock.acquire()
    nan = float("nan")
    return [
        call_outcome(lambda: sem.acquire(None)),
        call_outcome(lambda: sem.acquire(0)),
        call_outcome(lambda: sem.acquire(""))
        if sys.version_info >= (3, 12) or mod is threading
        else ("returned", False),
        call_outcome(lambda: sem.acquire(None, timeout=1)),
        # (Not `sem.acquire(timeout=nan)`: threading's loops forever, busy; weaveloop's
        # reads NaN as no time left, as threading's Condition.wait does.)
        call_outcome(lambda: lock.acquire(timeout=nan)),
        call_outcome(lambda: lock.acquire(timeout=-2)),
        call_outcome(lambda: mod.RLock().acquire(timeout=-2)),
        call_outcome(lambda: event.wait(nan)),
    ]


def test_blocking_arguments_and_nan_timeouts_read_as_threadings():
    assert _blocking_argument_script(ws) == _blocking_argument_script(threading)


@pytest.mark.parametrize("releaser", ["this thread", "another thread"])
def test_grant_to_a_loop_closed_before_it_runs_is_passed_on(factory, releaser):
    # A stock loop's close() discards queued callbacks, the posted wake-up among them;
    # weaveloop's runs those other threads posted, before it marks the loop closed, and
    # drops what they schedule: either way the grant must come back to the lock, not
    # vanish with the loop.
    lp = factory()
    lock = ws.Lock()
    lock.acquire()

    async def waiter():
        async with lock.aio:
            pass

    task = lp.create_task(waiter())
    lp.run_until_complete(asyncio.sleep(0))  # the coroutine queues on the lock
    wait_until(lambda: lock._waiting() == 1, "the coroutine to queue")
    # Granted to the coroutine: a wake-up is posted to the idle loop ...
    if releaser == "this thread":
        lock.release()
    else:
        join_or_fail(start_thread(lock.release))
    lp.close()  # ... and discarded, or run while the loop closes
    task._log_destroy_pending = False  # left pending on purpose: no warning at its end
    del task
    assert lock.acquire(timeout=SAFETY), "the grant was lost with the loop"
    lock.release()


@pytest.mark.parametrize("give_up", ["cancel", "timeout"])
def test_a_notification_taken_by_a_waiter_cancelled_while_relocking_goes_to_the_next(
    factory, give_up
):
    # Notified, then cancelled while it waits to take the lock back (the notifier still
    # holds it): the waiter gives up, and the notification wakes the next waiter instead
    # of being lost with it (as asyncio.Condition does since 3.13).
    async def main():
        cond = ws.Condition(ws.Lock())
        state = 0
        queued = 0

        async def consumer():
            nonlocal state, queued
            async with cond.aio:
                queued += 1
                await cond.aio.wait_for(lambda: state != 0)
                state -= 1

        async def impatient():
            async with asyncio.timeout(0.01):
                await consumer()

        first = asyncio.ensure_future(impatient() if give_up == "timeout" else consumer())
        second = asyncio.ensure_future(consumer())
        while queued < 2:
            await asyncio.sleep(0)
        async with cond.aio:
            state += 1
            cond.aio.notify(1)  # to `first`, which then cannot take the lock back
            if give_up == "cancel":
                await asyncio.sleep(0)
                first.cancel()
            else:
                while not first.cancelling():  # its timeout has fired
                    await asyncio.sleep(0.001)
        await second
        with pytest.raises((asyncio.CancelledError, TimeoutError)):
            await first
        return state, cond._n._waiting()

    assert run(factory, main) == (0, 0)


def test_condition_wait_zero_on_a_loop_thread_keeps_the_lock(factory):
    async def main():
        for lock in (ws.Lock(), ws.RLock()):
            cond = ws.Condition(lock)
            assert cond.acquire(False)
            with pytest.raises(RuntimeError, match=r"await cond\.aio\.wait\(\)"):
                cond.wait(0)
            assert cond._is_owned(), "refused before the lock was given up"
            cond.release()

    run(factory, main)


def test_semaphore_overflow_is_an_error_not_a_wrap():
    with pytest.raises(OverflowError):
        ws.Semaphore(2**62)
    sem = ws.Semaphore(1)
    with pytest.raises(OverflowError):
        sem.release(2**62)
    assert sem.acquire(False) and not sem.acquire(False), "the value stayed 1"


@pytest.mark.parametrize(
    "maxsize",
    [
        2**62,
        sys.maxsize,
        10**30,
        -(10**30),
        -(2**63) - 1,
        2.5,
        Fraction(5, 2),
        Decimal("2.5"),
        Decimal(-1),
    ],
)
def test_any_maxsize_reads_as_in_queue_queue(maxsize):
    # queue.Queue takes any number: no queue holds more than memory does, and one of 0
    # or less is unbounded (huge ones were an OverflowError here, a Fraction a TypeError).
    import queue

    def transcript(q) -> list:
        out = [q.maxsize]
        for item in range(4):
            try:
                q.put_nowait(item)
                out.append("put")
            except queue.Full:  # (weaveloop's QueueFull is one)
                out.append("full")
        out += [q.qsize(), q.full()]
        q.maxsize = 1
        out.append(q.full())
        q.maxsize = maxsize
        out += [q.full(), [q.get_nowait() for _ in range(q.qsize())]]
        return out

    assert transcript(ws.Queue(maxsize)) == transcript(queue.Queue(maxsize))


def test_a_whole_float_semaphore_value_counts_as_its_int():
    # threading.Semaphore(2.0) counts down by ones, as its int would.
    for cls in (ws.Semaphore, ws.BoundedSemaphore):
        sem = cls(2.0)
        assert [sem.acquire(False) for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize("cls", [threading.Condition, ws.Condition])
def test_a_refused_wait_timeout_leaves_no_waiter_behind(cls):
    # As threading's: the failed wait() is not queued, so a later notify() reaches the
    # real waiter.
    cond = cls()
    with cond:
        for bad in (float("inf"), "x"):
            with pytest.raises((OverflowError, TypeError)):
                cond.wait(bad)
    queued = threading.Event()
    got = []

    def waiter():
        with cond:
            queued.set()
            got.append(cond.wait(SAFETY))

    t = start_thread(waiter)
    wait_or_fail(queued, "the waiter to hold the lock")
    with cond:  # the waiter is parked once this is acquired (wait() released it)
        cond.notify()
    join_or_fail(t)
    assert got == [True]


@pytest.mark.parametrize("impl", ["asyncio", "weaveloop"])
def test_a_cancelled_barrier_party_leaves_without_breaking_it(factory, impl):
    # As asyncio.Barrier: the others keep waiting for a full count.
    async def main():
        b = asyncio.Barrier(3) if impl == "asyncio" else ws.Barrier(3).aio
        first = asyncio.ensure_future(b.wait())
        second = asyncio.ensure_future(b.wait())
        while b.n_waiting < 2:
            await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        state = [b.broken, b.n_waiting]
        rest = await asyncio.gather(second, b.wait(), b.wait())
        return state, sorted(rest)

    # (Arrival indexes are as asyncio gives them: the second party keeps its 1.)
    assert run(factory, main) == ([False, 1], [1, 1, 2])


@pytest.mark.parametrize("impl", ["asyncio", "weaveloop"])
def test_condition_wait_through_wait_for_on_the_default_lock(factory, impl):
    # On Python 3.11 wait_for runs the wait in a task of its own, not in the task that
    # holds the lock; asyncio.Condition accepts that, and so does the RLock-based face.
    async def main():
        cond = asyncio.Condition() if impl == "asyncio" else ws.Condition().aio
        out = []
        async with cond:
            try:
                await asyncio.wait_for(cond.wait(), 0.01)
            except TimeoutError:
                out.append("timeout")
            out.append(cond.locked())  # held again, by this task

        async def notifier():
            async with cond:
                cond.notify()

        async with cond:
            asyncio.ensure_future(notifier())
            out.append(await asyncio.wait_for(cond.wait(), SAFETY))
        out.append(cond.locked())
        return out

    assert run(factory, main) == ["timeout", True, True, False]


def test_condition_face_still_refuses_a_wait_on_a_lock_held_by_a_thread(factory):
    async def main():
        cond = ws.Condition()
        holder = HeldByAThread(cond).start()
        try:
            with pytest.raises(RuntimeError, match="cannot wait on un-acquired lock"):
                await cond.aio.wait()
        finally:
            holder.release()
        return True

    assert run(factory, main)


# -- coroutines that end outside their task or loop -------------------------------------


def _abandon_a_condition_waiter(factory, cond):
    """A coroutine waits in ``cond.aio.wait()`` inside ``async with cond``; its loop is
    stopped and closed without cancelling it (a background loop shut down). Returns the
    coroutine, for the caller to close as the garbage collector would finalize it."""
    tl = ThreadLoop(factory)
    tasks = []

    async def waiter():
        tasks.append(asyncio.current_task())
        async with cond:
            await cond.aio.wait()

    tl.submit(waiter())
    wait_until(lambda: cond._n._waiting() == 1, "the coroutine to wait")
    tl.close()
    return tasks[0].get_coro()


@pytest.mark.parametrize("order", ["whole coroutine", "wait first"])
@pytest.mark.parametrize("held", [True, False], ids=["held by a thread", "free"])
@pytest.mark.parametrize("lock", ["Lock", "RLock"])
def test_a_condition_waiter_closed_outside_its_loop_releases_no_lock(factory, lock, held, order):
    # The waiter cannot take the lock back with no loop running, and its `async with`
    # exit must not release it then. It used to release a plain lock that a thread
    # held, letting a second thread in; and to take a free RLock for its dead task and
    # keep it for good. The garbage collector finalizes such a coroutine in either
    # order: the whole coroutine at once, or the wait's own coroutine first.
    from weaveloop.sync._waiting import LockNotRetaken

    cond = ws.Condition(getattr(ws, lock)())
    coro = _abandon_a_condition_waiter(factory, cond)
    holder = HeldByAThread(cond).start() if held else None
    if order == "wait first":
        with pytest.raises(LockNotRetaken):
            coro.cr_await.close()
        coro.close()
    else:
        with pytest.raises(LockNotRetaken):
            coro.close()
    if holder is not None:
        assert cond._lock.locked()
        got = []
        join_or_fail(start_thread(lambda: got.append(cond.acquire(timeout=0.05))))
        assert got == [False], "a second thread got in while the first held the lock"
        holder.release()
    assert not cond._lock.locked()
    got = []
    join_or_fail(start_thread(lambda: got.append(cond.acquire(timeout=SAFETY))))
    assert got == [True]


def test_an_rlock_held_by_an_async_generator_closed_by_the_loop_is_released(factory):
    # The consumer leaves `async for` early; the loop's finalizer closes the generator
    # in a task of its own, whose exit of `async with rlock` releases the entry the
    # generator made (as the consumer's task) instead of being refused.
    rlock = ws.RLock()

    async def main():
        done = asyncio.Event()

        async def agen():
            try:
                async with rlock:
                    yield 1
                    yield 2
            finally:
                done.set()

        async for _ in agen():
            break
        await asyncio.wait_for(done.wait(), SAFETY)
        await asyncio.sleep(0)
        return rlock.locked()

    assert run(factory, main) is False
    got = []
    join_or_fail(start_thread(lambda: got.append(rlock.acquire(timeout=SAFETY))))
    assert got == [True]


def test_an_rlock_entered_by_a_task_finalized_after_its_loop_closed_is_released(factory):
    import gc

    rlock = ws.RLock()
    tl = ThreadLoop(factory)
    inside = threading.Event()

    async def holder():
        async with rlock:
            inside.set()
            await asyncio.Event().wait()

    fut = tl.submit(holder())
    wait_or_fail(inside, "the task to enter")
    tl.close()
    del fut
    gc.collect()
    got = []
    join_or_fail(start_thread(lambda: got.append(rlock.acquire(timeout=SAFETY))))
    assert got == [True]


# -- smaller differences from threading / asyncio ---------------------------------------


@pytest.mark.parametrize("n", [-1, 0, 2**64])
def test_notify_with_any_count_as_threading_and_asyncio(factory, n):
    # n <= 0 wakes nobody, a huge n everybody (it was an OverflowError).
    cond = ws.Condition()
    with cond:
        cond.notify(n)

    async def main():
        async with cond:
            cond.aio.notify(n)
        return True

    assert run(factory, main)


def _left_waiting_after_notify(cond, n, waiting) -> int:
    """Three threads wait on ``cond`` (a ws or a threading Condition); how many are still
    waiting right after ``notify(n)`` (both take the notified ones off at once)."""

    def waiter():
        with cond:
            cond.wait(SAFETY)

    threads = [start_thread(waiter) for _ in range(3)]
    wait_until(lambda: waiting(cond) == 3, "three threads to wait")
    with cond:
        cond.notify(n)
        left = waiting(cond)
        cond.notify_all()
    for t in threads:
        join_or_fail(t)
    return left


@pytest.mark.parametrize("n", [1.0, 1.5, 0.25, -1.0, 2.0**70, float("inf"), float("nan")])
def test_notify_with_a_float_count_wakes_as_many_as_threading(n):
    # threading's `while n > 0: n -= 1`: the ceiling of a fraction, none for a NaN (a
    # float was a TypeError here).
    mine = _left_waiting_after_notify(ws.Condition(), n, lambda c: c._n._waiting())
    theirs = _left_waiting_after_notify(threading.Condition(), n, lambda c: len(c._waiters))
    assert mine == theirs


@pytest.mark.parametrize("n", [1.0, 1.5, 0.25, -1.0, float("inf"), float("nan")])
def test_aio_notify_with_a_float_count_wakes_as_many_as_asyncio(factory, n):
    # asyncio's `if woken >= n: break`: the ceiling of a fraction, everybody for a NaN.
    async def left_waiting(cond, waiting) -> int:
        async def waiter():
            async with cond:
                await cond.wait()

        tasks = [asyncio.ensure_future(waiter()) for _ in range(3)]
        while waiting() < 3:
            await asyncio.sleep(0)  # lets the next task queue itself; not a time wait
        async with cond:
            cond.notify(n)
            left = waiting()
            cond.notify_all()
        await asyncio.gather(*tasks)
        return left

    async def main():
        mine = ws.Condition()
        theirs = asyncio.Condition()
        return (
            await left_waiting(mine.aio, mine._n._waiting),
            await left_waiting(theirs, lambda: sum(not f.done() for f in theirs._waiters)),
        )

    mine, theirs = run(factory, main)
    assert mine == theirs


def _timeout_calls(mod, timeout) -> dict:
    """Blocking calls given ``timeout`` that need no wait (the event set, a permit free,
    an item or a slot there), and the same calls where they would have to wait."""
    import queue

    sync = ws if mod == "ws" else threading
    queues = ws if mod == "ws" else queue

    def ready(make, prepare, call):
        def go():
            obj = make()
            prepare(obj)
            return call(obj)

        return go

    def nothing(_):
        return None

    def with_item(q):
        q.put("item")

    def set_event(e):
        e.set()

    return {
        "set Event.wait": ready(sync.Event, set_event, lambda e: e.wait(timeout)),
        "unset Event.wait": ready(sync.Event, nothing, lambda e: e.wait(timeout)),
        "Semaphore(1).acquire": ready(
            lambda: sync.Semaphore(1), nothing, lambda s: s.acquire(timeout=timeout)
        ),
        "BoundedSemaphore(1).acquire": ready(
            lambda: sync.BoundedSemaphore(1), nothing, lambda s: s.acquire(timeout=timeout)
        ),
        "Semaphore(0).acquire": ready(
            lambda: sync.Semaphore(0), nothing, lambda s: s.acquire(timeout=timeout)
        ),
        "Queue.get of an item": ready(queues.Queue, with_item, lambda q: q.get(timeout=timeout)),
        "Queue(2).put": ready(
            lambda: queues.Queue(2), nothing, lambda q: q.put(1, timeout=timeout)
        ),
        "SimpleQueue.get of an item": ready(
            queues.SimpleQueue, with_item, lambda q: q.get(timeout=timeout)
        ),
        "empty Queue.get": ready(queues.Queue, nothing, lambda q: q.get(timeout=timeout)),
        "held Lock.acquire": ready(
            sync.Lock, lambda lock: lock.acquire(), lambda lock: lock.acquire(timeout=timeout)
        ),
        "free Lock.acquire": ready(sync.Lock, nothing, lambda lock: lock.acquire(timeout=timeout)),
        "non-blocking Lock.acquire": ready(
            sync.Lock, nothing, lambda lock: lock.acquire(False, timeout)
        ),
        "full Queue(1).put": ready(
            lambda: queues.Queue(1), with_item, lambda q: q.put(1, timeout=timeout)
        ),
    }


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, 10**10, float("nan"), 10**400, -(10**400)])
def test_a_timeout_no_wait_can_use_is_refused_only_by_a_call_that_waits(timeout):
    # As threading and queue: a call that need not wait returns without looking at its
    # timeout; one that has to wait refuses it. (It was refused up front here, and an int
    # too large for a float before anything.) Calls the stdlib would spin on for good
    # with a NaN (it never reaches 0 left) are left out; SimpleQueue, in C, converts its
    # timeout first, and the queue module makes its deadline first.
    mine, theirs = _timeout_calls("ws", timeout), _timeout_calls("stdlib", timeout)
    spins = {"Semaphore(0).acquire", "empty Queue.get", "full Queue(1).put"}
    for name in mine:
        if timeout != timeout and name in spins:
            continue
        assert call_outcome(mine[name]) == call_outcome(theirs[name]), name


class _FloatLike:
    """Converts to a float (``__float__``) and nothing else."""

    def __float__(self) -> float:
        return 0.01


@pytest.mark.parametrize(
    "timeout", [Fraction(1, 100), Decimal("0.01"), _FloatLike(), "0.01"], ids=repr
)
def test_a_timeout_of_another_type_reads_as_in_threading_and_queue(timeout):
    # Each call reads its timeout as the stdlib's: a lock's acquire, a Condition's (so an
    # Event's and a Semaphore's) wait and SimpleQueue.get as CPython's clock does (a
    # float or an int: a Fraction is a TypeError), Semaphore.acquire and queue.Queue
    # with Python's arithmetic first (a Decimal or a str is a TypeError there), and none
    # of them when it never waits (a set event's wait takes a str). Were read as any
    # float before. (A Fraction on a queue really waits: 10 ms, then Empty or Full.)
    def outcome(call):
        kind, what = call_outcome(call)
        return {"QueueEmpty": "Empty", "QueueFull": "Full"}.get(kind, kind), what

    mine, theirs = _timeout_calls("ws", timeout), _timeout_calls("stdlib", timeout)
    for name in mine:
        assert outcome(mine[name]) == outcome(theirs[name]), name


class _IntWithoutFloat(int):
    """An int whose ``__float__`` fails: CPython's clock reads its int value."""

    def __float__(self) -> float:
        raise RuntimeError("not read as a float")


@pytest.mark.parametrize("timeout", [-0.9999999995, -1e-10, -1e-9, _IntWithoutFloat(1)], ids=repr)
def test_a_lock_and_simple_queue_read_timeouts_in_whole_nanoseconds(timeout):
    # CPython's clock rounds a lock's timeout away from zero (-0.9999999995 s is -1 s: no
    # timeout) and SimpleQueue's up (-1e-10 s is 0: no wait), and reads an int as its
    # value. Only calls that need not wait.
    import queue

    def outcomes(lock_cls, simple_cls):
        held = lock_cls()
        held.acquire()
        with_item = simple_cls()
        with_item.put(1)
        out = [
            call_outcome(lambda: lock_cls().acquire(timeout=timeout)),
            call_outcome(lambda: held.acquire(False, timeout)),
            call_outcome(lambda: with_item.get(timeout=timeout)),
        ]
        if timeout < 0:
            out.append(call_outcome(lambda: simple_cls().get(timeout=timeout)))
        return [({"QueueEmpty": "Empty"}.get(kind, kind), what) for kind, what in out]

    mine = outcomes(ws.Lock, ws.SimpleQueue)
    assert mine == outcomes(threading.Lock, queue.SimpleQueue)


@pytest.mark.parametrize("timeout", [9223372036.5, 9223372036, 9223372037.0, 9223372037])
def test_the_largest_timeout_a_lock_takes_is_the_clocks(timeout):
    # Under 2**63 ns, as CPython's clock holds it (not _thread.TIMEOUT_MAX, 9223372036.0),
    # in its words for a float and for an int. Only calls that need not wait.
    import queue

    def outcomes(lock, simple):
        simple.put(1)
        return [
            call_outcome(lambda: lock.acquire(timeout=timeout)),
            call_outcome(lambda: simple.get(timeout=timeout)),
        ]

    mine = outcomes(ws.Lock(), ws.SimpleQueue())
    assert mine == outcomes(threading.Lock(), queue.SimpleQueue())


def test_barrier_reset_and_abort_are_allowed_on_a_loops_thread(factory):
    # They never wait for the barrier (threading.Barrier's own lock is held only for
    # moments), so a plain loop callback may call them; rule 4 refused them before.
    async def main():
        b = ws.Barrier(2)
        b.reset()
        assert not b.broken
        b.abort()
        return b.broken

    assert run(factory, main) is True


ASYNC_BARRIERS = {"asyncio": asyncio.Barrier, "weaveloop": lambda n: ws.Barrier(n).aio}


@pytest.mark.parametrize("impl", sorted(ASYNC_BARRIERS))
def test_aio_barrier_reset_while_draining_matches_asyncio(factory, impl):
    # asyncio.Barrier resets a draining barrier too: the parties not yet out get
    # BrokenBarrierError (threading's rule, used before, let them pass).
    async def main():
        barrier = ASYNC_BARRIERS[impl](4)
        results = []

        async def party():
            try:
                await barrier.wait()
                results.append("passed")
            except asyncio.BrokenBarrierError:
                results.append("broken")

        async def last():
            await barrier.wait()
            await barrier.reset()  # the other three are woken, not yet out
            results.append("passed")

        others = [asyncio.ensure_future(party()) for _ in range(3)]
        while barrier.n_waiting < 3:
            await asyncio.sleep(0)
        await last()
        await asyncio.gather(*others)
        return sorted(results), barrier.broken, barrier.n_waiting

    assert run(factory, main) == (["broken", "broken", "broken", "passed"], False, 0)


@pytest.mark.parametrize("impl", sorted(ASYNC_BARRIERS))
def test_aio_barrier_errors_say_what_asyncio_says(factory, impl):
    async def main():
        barrier = ASYNC_BARRIERS[impl](2)
        waiting = asyncio.ensure_future(barrier.wait())
        while barrier.n_waiting < 1:
            await asyncio.sleep(0)
        await barrier.abort()
        messages = []
        for waiter in (waiting, barrier.wait()):  # woken by the abort; arriving after it
            try:
                await waiter
            except asyncio.BrokenBarrierError as e:
                messages.append(str(e))
        return messages

    assert run(factory, main) == ["Abort or reset of barrier", "Barrier aborted"]


def test_an_rlock_condition_takes_its_lock_back_before_a_signal_handler_runs():
    # As threading's RLock._acquire_restore: not interruptible. A handler's exception
    # surfaces once the lock is back, and `with cond` exits cleanly; before, it cut the
    # re-acquire short and the exit failed with "cannot release un-acquired lock".
    import signal

    class Boom(Exception):
        pass

    cond = ws.Condition(ws.RLock())
    handled = threading.Event()
    during_hold = []

    def handler(*_):
        handled.set()
        raise Boom

    main = threading.get_ident()

    def notifier():
        wait_until(lambda: cond._n._waiting() == 1, "the main thread to wait")
        with cond:
            cond.notify()
            wait_until(lambda: cond._lock._waiting() == 1, "the main thread to re-acquire")
            signal.pthread_kill(main, signal.SIGUSR1)
            # Bounded on purpose: an interruptible re-acquire runs the handler within
            # 50 ms; this one must not run it until the lock is released below.
            during_hold.append(handled.wait(0.3))

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = start_thread(notifier)
        with pytest.raises(Boom):
            with cond:
                cond.wait(SAFETY)
        join_or_fail(t)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert during_hold == [False]
    assert not cond._lock.locked()


def test_with_cond_in_a_coroutine_names_the_condition(factory):
    async def main():
        cond = ws.Condition()
        with pytest.raises(RuntimeError, match=r"Condition\.acquire\(\).*'async with cond'"):
            with cond:
                pass
        return True

    assert run(factory, main)


def test_a_wait_in_a_child_forked_by_another_thread_runs_signal_handlers():
    # The thread that forks is the child's main thread, where signal handlers run (and
    # Ctrl+C arrives): a blocking wait there must run them, also when that thread had
    # waited before the fork as a non-main thread (a cached answer once said otherwise,
    # and the child's wait never woke).
    import os
    import signal

    outcome = {}

    def forker():
        ws.Event().wait(0.001)  # this thread has waited once, as a non-main thread
        pid = os.fork()
        if pid == 0:
            # (No faulthandler timer here: cancelling one armed before the fork waits
            # for its thread, which the child does not have. The parent kills a child
            # that hangs.)
            class Alarm(Exception):
                pass

            def on_alarm(*_):
                raise Alarm

            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            try:
                ws.Event().wait()  # never set: only the handler ends it
            except Alarm:
                os._exit(0)
            os._exit(1)
        safety_net = threading.Timer(SAFETY, os.kill, (pid, signal.SIGKILL))
        safety_net.start()
        try:
            outcome["status"] = os.waitpid(pid, 0)[1]
        finally:
            safety_net.cancel()

    t = start_thread(forker)
    join_or_fail(t)
    assert os.waitstatus_to_exitcode(outcome["status"]) == 0


_PARENTS_WAITERS_IN_A_FORKED_CHILD = """
import os, threading, traceback
import weaveloop.sync as ws
from _support import SAFETY, reap_child
from _sync_support import wait_until

q, full, lock, sem, cond = ws.Queue(), ws.Queue(1), ws.Lock(), ws.Semaphore(0), ws.Condition()
full.put(0)
lock.acquire()

def cond_waits():
    with cond:
        cond.wait(SAFETY)

# One thread per primitive, each blocked there when the main thread forks.
waiting = [
    threading.Thread(target=f, daemon=True)
    for f in (
        lambda: q.get(timeout=SAFETY),
        lambda: full.put(1, timeout=SAFETY),
        lambda: lock.acquire(timeout=SAFETY),
        lambda: sem.acquire(timeout=SAFETY),
        cond_waits,
    )
]
for t in waiting:
    t.start()
wait_until(
    lambda: (q._getters_waiting(), full._putters_waiting(), lock._waiting(), sem._waiting(),
             cond._n._waiting()) == (1, 1, 1, 1, 1),
    "every thread to wait",
)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        # The parent's waiting threads do not exist here: none counts, and what is
        # released goes to the child's own waiters, not to them.
        assert (q._getters_waiting(), full._putters_waiting(), lock._waiting(),
                sem._waiting(), cond._n._waiting()) == (0, 0, 0, 0, 0)
        q.put("a")
        assert q.get(timeout=SAFETY) == "a"
        assert full.get_nowait() == 0
        full.put("b", timeout=SAFETY)
        assert full.get_nowait() == "b"
        lock.release()
        assert lock.acquire(timeout=SAFETY)
        sem.release()
        assert sem.acquire(timeout=SAFETY)
        woke = []
        def child_waits():
            with cond:
                woke.append(cond.wait(SAFETY))
        t = threading.Thread(target=child_waits)
        t.start()
        wait_until(lambda: cond._n._waiting() == 1, "the child's thread to wait")
        with cond:
            cond.notify()
        t.join(SAFETY)
        assert woke == [True], woke
        code = 0
    except BaseException:
        traceback.print_exc()
    os._exit(code)
print(reap_child(pid, timeout=60))
q.put(None)
full.get()
lock.release()
sem.release()
with cond:
    cond.notify_all()
for t in waiting:
    t.join(SAFETY)
"""


def test_the_parents_thread_waiters_are_gone_in_a_forked_child():
    # A forked child has only the thread that forked. Thread waiters the parent's other
    # threads had queued stayed queued there, and a release handed its item, slot,
    # permit or notification to one of them: a thread that does not exist. The child's
    # get, put, acquire and wait then waited for good.
    assert_fork_script_passes(_PARENTS_WAITERS_IN_A_FORKED_CHILD, "weaveloop")


def test_a_signal_during_a_blocking_acquire_wins_over_a_grant_that_follows_it():
    # As threading.Lock's acquire, interrupted: the handler's exception comes out of
    # acquire() and the lock is not taken. (The handler used to run only after acquire()
    # had returned True, up to 50 ms later: the exception left the lock held.)
    import signal

    class Boom(Exception):
        pass

    def handler(*_):
        raise Boom

    lock = ws.Lock()
    lock.acquire()
    main = threading.get_ident()

    def interrupter():
        wait_until(lambda: lock._waiting() == 1, "the main thread to wait")
        signal.pthread_kill(main, signal.SIGUSR1)
        lock.release()  # granted to the main thread right after the signal

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = start_thread(interrupter)
        with pytest.raises(Boom):
            lock.acquire(timeout=SAFETY)
        join_or_fail(t)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert not lock.locked()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
@pytest.mark.parametrize("blocking", [None, 1.5, "1", 0, 2, True], ids=repr)
def test_lock_acquire_reads_blocking_as_an_int_as_threading_does(kind, blocking):
    # _thread's locks parse `blocking` as an int: None or a float is a TypeError there,
    # not a truth value (a weaveloop lock took acquire(None) for a blocking acquire).
    def outcome(lock):
        try:
            return lock.acquire(blocking)
        except TypeError as e:
            return str(e)

    expected = outcome(getattr(threading, kind)())
    assert outcome(getattr(ws, kind)()) == expected


def test_condition_and_barrier_faces_show_their_state_as_asyncio_does(factory):
    def state(obj) -> str:
        return repr(obj).rsplit("[", 1)[1]

    async def script(cond, barrier) -> list:
        out = [state(cond), state(barrier)]
        async with cond:
            out.append(state(cond))
        barrier_waiter = asyncio.ensure_future(barrier.wait())
        while barrier.n_waiting == 0:
            await asyncio.sleep(0)
        out.append(state(barrier))
        await barrier.abort()
        out.append(state(barrier))
        with pytest.raises(asyncio.BrokenBarrierError):
            await barrier_waiter
        return out

    async def main():
        ours = await script(ws.Condition().aio, ws.Barrier(2).aio)
        theirs = await script(asyncio.Condition(), asyncio.Barrier(2))
        return ours, theirs

    ours, theirs = run(factory, main)
    assert ours == theirs
