"""Cross-thread scheduling: call_soon_threadsafe, run_coroutine_threadsafe, close races.

Differential unless marked. The lost-wake-up stress test posts at random moments against a
loop that keeps parking; random jitter only varies timing, every wait is on an event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import logging
import random
import sys
import threading
import time
import warnings
import weakref

import pytest
import weaveloop
from _support import (
    SAFETY,
    LoopThread,
    assert_fork_script_passes,
    join_or_fail,
    run,
    start_thread,
    wait_or_fail,
    weaveloop_factory,
)


def test_post_wakes_a_parked_loop(loop):
    stopped_by = []

    def stop(by):
        stopped_by.append(by)
        loop.stop()

    def poster(running):
        wait_or_fail(running, "the loop to run")
        loop.call_soon_threadsafe(stop, "post")

    running = threading.Event()
    loop.call_soon(running.set)
    guard = loop.call_later(SAFETY, stop, "safety timer")
    t = start_thread(poster, running)
    loop.run_forever()
    guard.cancel()
    join_or_fail(t)
    assert stopped_by == ["post"]


def test_posts_from_one_thread_run_in_order(loop):
    ran = []
    running = threading.Event()

    def poster():
        wait_or_fail(running, "the loop to run")
        for i in range(2000):
            loop.call_soon_threadsafe(ran.append, i)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(running.set)
    guard = loop.call_later(SAFETY, loop.stop)
    t = start_thread(poster)
    loop.run_forever()
    guard.cancel()
    join_or_fail(t)
    assert ran == list(range(2000))


# 4 x 12000 posts cross weaveloop's flow-control line (posters wait while 8192 or more
# callbacks are queued) many times; nothing may be lost or reordered either way.
@pytest.mark.parametrize("per_thread", [1000, 12_000], ids=["few", "past-flow-control"])
def test_posts_from_many_threads_keep_per_thread_order(threaded_loop, per_thread):
    loop = threaded_loop.loop
    n_threads = 4
    ran = {k: [] for k in range(n_threads)}
    barrier = threading.Barrier(n_threads, timeout=SAFETY)

    def poster(k):
        barrier.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(ran[k].append, i)

    threads = [start_thread(poster, k) for k in range(n_threads)]
    for t in threads:
        join_or_fail(t)
    done = threading.Event()
    loop.call_soon_threadsafe(done.set)
    wait_or_fail(done, "the posts to drain")
    for k in range(n_threads):
        assert ran[k] == list(range(per_thread))


def _stuck(loop):
    """Makes the running ``loop`` block in a callback; returns the event that frees it."""
    stuck, release = threading.Event(), threading.Event()

    def block():
        stuck.set()
        release.wait(4 * SAFETY)

    loop.call_soon_threadsafe(block)
    wait_or_fail(stuck, "the loop to be stuck in a callback")
    return release


def test_a_flood_to_a_loop_blocked_in_a_callback_is_not_slowed_to_a_crawl(threaded_loop):
    # The loop thread is stuck in a callback until the poster has posted 30000 callbacks.
    # Flow control waits at most once for a loop that does not drain: waiting 2 ms per
    # post past the 8192 backlog would take over 40 s and trip the safety timeout.
    loop = threaded_loop.loop
    release = _stuck(loop)
    ran = []
    posted = threading.Event()

    def poster():
        for i in range(30_000):
            loop.call_soon_threadsafe(ran.append, i)
        posted.set()

    t = start_thread(poster)
    try:
        wait_or_fail(posted, "30000 posts to a stuck loop")
    finally:
        release.set()
    join_or_fail(t)
    done = threading.Event()
    loop.call_soon_threadsafe(done.set)
    wait_or_fail(done, "the posts to drain")
    assert ran == list(range(30_000))


def test_flow_control_waits_once_for_a_loop_that_does_not_drain(wloop):
    lt = LoopThread(wloop).start()
    release = _stuck(wloop)
    try:
        for i in range(10_000):  # past the 8192 backlog, while nothing drains
            wloop.call_soon_threadsafe(int, i)
        assert wloop._flow_control_waits == 1
    finally:
        release.set()
        lt.stop()


def test_a_flood_from_several_threads_does_not_grow_each_iteration(loop):
    # Four threads post as fast as they can while a coroutine awaits executor round
    # trips, each of which waits for an iteration or two behind the flood. Posters that
    # outrun the loop (they share the GIL with it) must not make each iteration longer
    # than the last: counted in callbacks run per round trip, not in time. (Before, a
    # drained backlog was not counted by flow control, and the callbacks per round trip
    # grew several-fold each time: ~0.3M, 0.8M, 2.5M, ...)
    ran = [0]
    stop = threading.Event()
    limit = 1_000_000

    def count():
        ran[0] += 1

    def poster():
        while not stop.is_set():
            try:
                loop.call_soon_threadsafe(count)
            except RuntimeError:  # closed
                return

    async def main():
        per_trip = []
        for _ in range(12):
            before = ran[0]
            await loop.run_in_executor(None, int)
            per_trip.append(ran[0] - before)
            if per_trip[-1] > limit:
                break
        return per_trip

    threads = [start_thread(poster) for _ in range(4)]
    try:
        per_trip = run(loop, main())
    finally:
        stop.set()
        for t in threads:
            join_or_fail(t)
    assert max(per_trip) < limit, per_trip


def test_flow_control_never_stalls_a_thread_running_a_loop_of_its_own(wloop):
    # A callback of another running loop floods this (stuck) loop: that thread must not
    # be made to wait, or its own loop's timers and I/O would stall.
    lt = LoopThread(wloop).start()
    release = _stuck(wloop)
    other = weaveloop.new_event_loop()
    try:

        async def flood():
            for i in range(10_000):
                wloop.call_soon_threadsafe(int, i)

        other.run_until_complete(flood())
        assert wloop._flow_control_waits == 0
    finally:
        other.close()
        release.set()
        lt.stop()


def test_post_made_during_an_iteration_waits_for_the_next(loop):
    # Like call_soon: a post that lands while a batch runs is not part of that batch.
    ran = []
    go, posted = threading.Event(), threading.Event()

    def poster():
        wait_or_fail(go, "the batch to start")
        loop.call_soon_threadsafe(ran.append, "posted")
        posted.set()

    def first():
        go.set()
        wait_or_fail(posted, "the post")
        loop.stop()

    t = start_thread(poster)
    loop.call_soon(first)
    loop.call_soon(ran.append, "same batch")
    loop.run_forever()
    join_or_fail(t)
    assert ran == ["same batch"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["same batch", "posted"]


def test_post_from_the_loop_thread_works(loop):
    ran = []
    loop.call_soon(lambda: loop.call_soon_threadsafe(ran.append, "inner"))
    loop.call_soon(lambda: loop.call_soon(loop.stop))
    loop.run_forever()
    assert ran == ["inner"]


@pytest.mark.parametrize("method", ["call_soon_threadsafe", "call_soon"])
def test_post_from_the_loop_thread_runs_after_an_earlier_post_of_another_thread(loop, method):
    # Thread P posts "a", then the loop thread posts "x": "a" was posted first, so it
    # runs first, whether the loop thread posts with call_soon or call_soon_threadsafe.
    order = []
    posted = threading.Event()

    def poster():
        loop.call_soon_threadsafe(order.append, "a")
        posted.set()

    def on_loop():
        start_thread(poster)
        # Blocks the loop thread, only to order the two posts.
        wait_or_fail(posted, "the other thread's post")
        getattr(loop, method)(order.append, "x")
        loop.call_soon(loop.call_soon, loop.stop)

    loop.call_soon(on_loop)
    loop.run_forever()
    assert order == ["a", "x"]


def test_posts_keep_their_order_while_a_completion_is_settled(wloop):
    # Settling an executor completion can run Python code (here a done callback's
    # `_is_coroutine`, read by the debug-mode callback check of the call_soon that
    # schedules it), and another thread may post meanwhile. Its earlier post, drained
    # with the completion, still runs first.
    wloop.set_debug(True)
    pool = weaveloop.ThreadPoolExecutor(max_workers=1)
    order = []
    c2_posted = threading.Event()
    settling = threading.Event()
    c3_posted = threading.Event()

    class Probe:
        @property
        def _is_coroutine(self):
            if not settling.is_set():
                settling.set()
                wait_or_fail(c3_posted, "the post made while settling")
            return None

        def __call__(self, fut):
            pass

    def second_job(loop):
        # The one worker posted the first job's completion before it started this one.
        loop.call_soon_threadsafe(order.append, "C2")
        c2_posted.set()
        wait_or_fail(settling, "the loop to settle the first job")
        loop.call_soon_threadsafe(order.append, "C3")
        c3_posted.set()

    async def main():
        loop = asyncio.get_running_loop()
        first = loop.run_in_executor(pool, str, "first")
        first.add_done_callback(Probe())
        second = loop.run_in_executor(pool, second_job, loop)
        # Keeps the loop from draining until the completion and C2 are both queued.
        wait_or_fail(c2_posted, "C2")
        await second
        await asyncio.sleep(0)
        return await first

    try:
        assert wloop.run_until_complete(asyncio.wait_for(main(), SAFETY)) == "first"
    finally:
        pool.shutdown()
    assert order == ["C2", "C3"]


def test_threadsafe_handle_can_be_cancelled(loop):
    ran = []
    box = []
    t = start_thread(lambda: box.append(loop.call_soon_threadsafe(ran.append, "x")))
    join_or_fail(t)
    box[0].cancel()
    assert box[0].cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == []


def test_threadsafe_context(loop):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctx")
    seen = []
    loop.call_soon_threadsafe(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["ctx"]


def test_posts_from_threads_run_in_the_context_each_thread_had(loop):
    # The poster's context as it is at the post: never used (a new thread's), holding a
    # variable, emptied again by a reset, a fresh one entered by Context.run. Each
    # callback changes the variable; no change reaches another callback or the poster.
    var = contextvars.ContextVar("var", default="unset")
    seen = {}
    left_in_poster = {}

    def report(name):
        seen[name] = var.get()
        var.set("changed by " + name)

    def untouched():
        loop.call_soon_threadsafe(report, "untouched")

    def holding():
        var.set("held")
        loop.call_soon_threadsafe(report, "holding")
        loop.call_soon_threadsafe(report, "holding again")
        left_in_poster["holding"] = var.get()

    def emptied():
        var.reset(var.set("gone"))
        loop.call_soon_threadsafe(report, "emptied")

    def fresh():
        var.set("fresh")
        loop.call_soon_threadsafe(report, "fresh")

    def in_fresh_context():
        contextvars.Context().run(fresh)

    for target in (untouched, holding, emptied, in_fresh_context):
        join_or_fail(start_thread(target))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == {
        "untouched": "unset",
        "holding": "held",
        "holding again": "held",
        "emptied": "unset",
        "fresh": "fresh",
    }
    assert left_in_poster == {"holding": "held"}
    assert var.get() == "unset"


def test_weaveloop_reads_the_posting_threads_context_in_place():
    # On the Pythons whose thread-state layout it knows (3.11-3.13) the emptiness check
    # of a callback's context reads the thread state instead of copying the context (a
    # Context allocated per post only to be dropped); a layout that does not check out
    # falls back to the copy silently, which this makes loud.
    from weaveloop import _core

    assert _core._reads_context_in_place() == (sys.version_info[:2] <= (3, 13))


def test_close_drops_what_the_closing_thread_posted_itself(loop, caplog):
    # Posted by the thread that then closes the loop (tornado's add_callback posts so):
    # it did not race close(), which drops it with the ready queue, as asyncio's does.
    # Before, it ran inside close() and what it scheduled failed: "Event loop is closed".
    ran = []
    fut = loop.create_future()
    fut.add_done_callback(lambda f: ran.append("done callback"))

    def step():
        ran.append("step")
        fut.set_result(None)

    loop.call_soon_threadsafe(step)
    # (A call_soon now moves that post into the ready queue; one more stays posted.)
    loop.call_soon(ran.append, "call_soon")
    loop.call_soon_threadsafe(step)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.close()
    assert ran == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("before", ["nothing", "stop()"])
def test_a_loop_abandoned_with_a_post_that_refers_back_to_it_is_collected(loop_factory, before):
    # loop -> pending post -> loop.stop -> loop: a cycle the GC collects (with the
    # "unclosed event loop" warning) on the stock loop, so on weaveloop too; also when
    # something was queued before it (stop() on a loop that is not running).
    lp = loop_factory()
    if before == "stop()":
        lp.stop()
    join_or_fail(start_thread(lp.call_soon_threadsafe, lp.stop))
    ref = weakref.ref(lp)
    del lp
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        gc.collect()
    assert ref() is None


def test_an_abandoned_loop_runs_nothing_other_threads_posted(loop_factory):
    # Its finalizer closes it, as the stock loop's does, and drops what is queued:
    # nothing runs inside the garbage collector (close() itself runs such posts).
    lp = loop_factory()
    ran = []
    join_or_fail(start_thread(lp.call_soon_threadsafe, ran.append, "posted"))
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del lp
        gc.collect()
    assert ran == []


def test_a_post_wakes_a_loop_driven_by_run_once_directly(loop):
    # Some code drives a loop with _run_once() alone: the loop is not running, yet the
    # iteration parks. A post made once the iteration began must wake it. The post is
    # made from the clock the iteration reads just before it parks.
    ran, fired = [], []
    timer = loop.call_later(SAFETY, fired.append, "the safety timer")
    real_time = loop.time
    armed = [True]

    def clock():
        if armed:
            armed.clear()
            join_or_fail(start_thread(loop.call_soon_threadsafe, ran.append, "posted"))
        return real_time()

    loop.time = clock
    try:
        loop._run_once()
    finally:
        del loop.time
        timer.cancel()
    assert (ran, fired) == (["posted"], [])


def test_post_to_a_closed_loop_raises(loop):
    loop.close()
    errors = []

    def poster():
        try:
            loop.call_soon_threadsafe(lambda: None)
        except RuntimeError as e:
            errors.append(str(e))

    join_or_fail(start_thread(poster))
    assert errors == ["Event loop is closed"]


# -- run_coroutine_threadsafe ------------------------------------------------------------


def test_run_coroutine_threadsafe_result(threaded_loop):
    async def work(x):
        await asyncio.sleep(0)
        return x + 1

    fut = asyncio.run_coroutine_threadsafe(work(41), threaded_loop.loop)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=SAFETY) == 42


def test_run_coroutine_threadsafe_exception(threaded_loop):
    async def work():
        raise ValueError("in coroutine")

    fut = asyncio.run_coroutine_threadsafe(work(), threaded_loop.loop)
    with pytest.raises(ValueError, match="in coroutine"):
        fut.result(timeout=SAFETY)


def test_run_coroutine_threadsafe_result_timeout(threaded_loop):
    loop = threaded_loop.loop
    gate = {}

    async def work():
        gate["event"] = asyncio.Event()
        await gate["event"].wait()
        return "released"

    fut = asyncio.run_coroutine_threadsafe(work(), loop)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.01)  # the coroutine is blocked on an event: it cannot finish
    loop.call_soon_threadsafe(lambda: gate["event"].set())
    assert fut.result(timeout=SAFETY) == "released"


def test_cancelling_the_concurrent_future_cancels_the_task(threaded_loop):
    started = threading.Event()
    saw_cancel = threading.Event()

    async def work():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    fut = asyncio.run_coroutine_threadsafe(work(), threaded_loop.loop)
    wait_or_fail(started, "the coroutine to start")
    assert fut.cancel()
    wait_or_fail(saw_cancel, "the task to see the cancellation")
    assert fut.cancelled()


def test_cancelling_the_task_cancels_the_concurrent_future(threaded_loop):
    async def work():
        asyncio.current_task().cancel()
        await asyncio.sleep(0)

    fut = asyncio.run_coroutine_threadsafe(work(), threaded_loop.loop)
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(timeout=SAFETY)
    assert fut.cancelled()


def test_many_run_coroutine_threadsafe_round_trips(threaded_loop):
    async def echo(i):
        return i

    for i in range(300):
        assert asyncio.run_coroutine_threadsafe(echo(i), threaded_loop.loop).result(SAFETY) == i


# -- the wake-up protocol under stress -----------------------------------------------------


def _jitter(rng: random.Random) -> None:
    """Vary the moment of the next post (timing variety only, never synchronisation)."""
    kind = rng.randrange(4)
    if kind == 1:
        time.sleep(0)
    elif kind == 2:
        end = time.perf_counter() + rng.uniform(0, 50e-6)
        while time.perf_counter() < end:
            pass
    elif kind == 3:
        for _ in range(rng.randrange(200)):
            pass


def _ping_pong(loop, rounds: int, seed: int, lost: list, counter: list) -> None:
    rng = random.Random(seed)
    seen = threading.Event()

    def observed():
        counter[0] += 1
        seen.set()

    for i in range(rounds):
        _jitter(rng)
        seen.clear()
        loop.call_soon_threadsafe(observed)
        if not seen.wait(SAFETY):
            lost.append((seed, i))
            return


@pytest.mark.parametrize("park", ["idle", "far-timer"])
def test_no_lost_wakeups_single_poster(loop, park):
    # Each post is made while the loop is parked or about to park; each must be observed.
    if park == "far-timer":
        loop.call_later(3600, lambda: None)
    lt = LoopThread(loop).start()
    lost, counter = [], [0]
    try:
        _ping_pong(loop, 10_000, 1, lost, counter)
    finally:
        lt.stop()
    assert lost == []
    assert counter[0] == 10_000


def test_no_lost_wakeups_many_posters(threaded_loop):
    loop = threaded_loop.loop
    lost, counter = [], [0]
    threads = [start_thread(_ping_pong, loop, 2500, seed, lost, counter) for seed in range(4)]
    for t in threads:
        join_or_fail(t, timeout=4 * SAFETY)
    drained = threading.Event()
    loop.call_soon_threadsafe(drained.set)
    wait_or_fail(drained, "the last posts to run")
    assert lost == []
    assert counter[0] == 4 * 2500


# -- posts racing close (weaveloop only) ----------------------------------------------------


def test_post_accepted_before_close_is_not_lost():
    # Stock asyncio's close() silently drops accepted posts; weaveloop promises each post
    # either runs or raises.
    lp = weaveloop.new_event_loop()
    ran = []
    join_or_fail(start_thread(lambda: lp.call_soon_threadsafe(ran.append, "posted")))
    lp.close()
    assert ran == ["posted"]


def _close_race_trial(lp, closer: str, n_posters: int = 3) -> tuple[int, int]:
    """Posters hammer ``lp`` while it is stopped and closed; returns (accepted, ran).

    Until the stop is requested, posters keep at most ``max_ahead`` posts outstanding so
    the backlog stays small; from then on they post without pause, racing stop and close
    (yielding the GIL between posts, so the loop thread is not starved meanwhile).
    """
    max_ahead = 2000
    lock = threading.Lock()
    ran = [0]
    accepted = [0] * n_posters
    ended_by_close = [False] * n_posters
    errors = []
    warmed_up = threading.Event()
    stopping = threading.Event()
    deadline = time.monotonic() + SAFETY

    def callback():
        with lock:
            ran[0] += 1
            if ran[0] >= 200:
                warmed_up.set()

    def poster(k):
        while time.monotonic() < deadline:  # safety net: the loop must close before this
            while not stopping.is_set() and sum(accepted) - ran[0] > max_ahead:
                time.sleep(0)
            if stopping.is_set():
                time.sleep(0)
            try:
                lp.call_soon_threadsafe(callback)
            except RuntimeError as e:
                if str(e) != "Event loop is closed":
                    errors.append(str(e))
                ended_by_close[k] = True
                return
            accepted[k] += 1

    def loop_main():
        lp.run_forever()
        if closer == "loop-thread":
            lp.close()

    loop_thread = start_thread(loop_main)
    posters = [start_thread(poster, k) for k in range(n_posters)]
    wait_or_fail(warmed_up, "posts to start running")
    stopping.set()
    lp.call_soon_threadsafe(lp.stop)
    join_or_fail(loop_thread)
    if closer == "other-thread":
        lp.close()
    for t in posters:
        join_or_fail(t)
    assert errors == []
    assert all(ended_by_close), "a poster never saw the loop close"
    return sum(accepted), ran[0]


@pytest.mark.parametrize("closer", ["loop-thread", "other-thread"])
def test_posts_racing_close_each_run_or_raise(closer):
    # Stock asyncio fails this (close() drops queued callbacks); weaveloop must not.
    for trial in range(30):
        accepted, ran = _close_race_trial(weaveloop.new_event_loop(), closer)
        assert ran == accepted, f"trial {trial}: {accepted - ran} accepted posts vanished"


def test_ping_pong_posts_racing_close_each_run_or_raise():
    # A thread in ping-pong with the loop (post, wait for it to run) finds the loop
    # spinning between rounds and hands it the GIL (Injector::hand_over); posts that race
    # the stop and close on that path must still each run or raise.
    for trial in range(20):
        lp = weaveloop.new_event_loop()
        ran = []
        accepted = []
        seen = threading.Event()

        def observed(i, lp=lp, ran=ran, seen=seen):
            ran.append(i)
            seen.set()
            if i == 50:
                lp.stop()

        def poster(lp=lp, accepted=accepted, seen=seen):
            for i in range(10_000):  # bounded: the loop closes after ~50 rounds
                seen.clear()
                try:
                    lp.call_soon_threadsafe(observed, i)
                except RuntimeError:
                    return
                accepted.append(i)
                wait_or_fail(seen, "the post to run")

        def loop_main(lp=lp):
            lp.run_forever()
            lp.close()

        loop_thread = start_thread(loop_main)
        t = start_thread(poster)
        join_or_fail(t)
        join_or_fail(loop_thread)
        assert ran == accepted, f"trial {trial}"
        assert len(ran) > 50


def test_stop_from_another_thread_stops_a_loop_that_just_spun():
    # weaveloop only: its stop() is safe from any thread (the stock loop's is not, it
    # only sets a flag). After quick executor round trips the loop spins briefly before
    # parking; a stop() from another thread during that spin must still end the run.
    rescued = 0
    for _ in range(20):
        loop = weaveloop_factory()
        go, stopped = threading.Event(), threading.Event()

        def stopper(loop=loop, go=go, stopped=stopped):
            nonlocal rescued
            wait_or_fail(go, "the round trips")
            loop.stop()
            if not stopped.wait(SAFETY):  # safety net: a lost stop() would hang
                rescued += 1
                loop.call_soon_threadsafe(loop.stop)

        async def round_trips(loop=loop, go=go):
            for _ in range(30):
                await loop.run_in_executor(None, int)
            go.set()

        t = start_thread(stopper)
        loop.create_task(round_trips())
        loop.run_forever()
        stopped.set()
        join_or_fail(t)
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    assert rescued == 0


def test_post_moved_to_the_ready_queue_still_runs_at_close(wloop):
    # weaveloop only: the stock loop's close() drops queued threadsafe callbacks. Here a
    # foreign post that a call_soon in the last batch moved into the ready queue is not
    # dropped with the rest of that queue: it runs (DESIGN: a post runs or raises).
    loop = wloop
    ran = []
    go, posted = threading.Event(), threading.Event()

    def foreign():
        wait_or_fail(go, "the last batch")
        loop.call_soon_threadsafe(ran.append, "foreign")
        posted.set()

    def first():
        go.set()
        wait_or_fail(posted, "the foreign post")

    t = start_thread(foreign)
    loop.call_soon(first)
    loop.call_soon(loop.call_soon, lambda: None)  # drains the injector mid-batch
    loop.call_soon(loop.stop)
    loop.run_forever()
    join_or_fail(t)
    loop.close()
    assert ran == ["foreign"]


POSTED_BEFORE_FORK = """
import asyncio, os, signal, sys
import weaveloop

loop = weaveloop.new_event_loop() if sys.argv[1] == "weaveloop" else asyncio.new_event_loop()
ran = []
loop.call_soon_threadsafe(ran.append, "posted")
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # safety net: a hung child dies instead of lingering
    loop.call_soon(loop.stop)
    loop.run_forever()
    os._exit(0 if ran == ["posted"] else 1)
_, status = os.waitpid(pid, 0)
loop.close()
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_callback_posted_before_fork_runs_in_the_child(loop_kind):
    assert_fork_script_passes(POSTED_BEFORE_FORK, loop_kind)


def test_a_post_from_a_thread_gone_before_close_still_runs(wloop):
    # Posted by a thread that has exited; a new thread (which the system may give the
    # same thread id) closes the loop: the post came from another thread, so it runs.
    ran = []
    join_or_fail(start_thread(wloop.call_soon_threadsafe, ran.append, "posted"))
    join_or_fail(start_thread(wloop.close))
    assert ran == ["posted"]


def test_close_runs_other_threads_posts_before_it_marks_the_loop_closed(wloop, caplog):
    # A post that raced close() runs (it must run or raise), and runs while the loop is
    # still open: what it schedules (here the future's done callback) is dropped with the
    # rest, as the stock loop drops its ready queue. Run after the loop was marked
    # closed, its call_soon failed and close() logged "Exception in callback ... Event
    # loop is closed" for nearly every such post.
    fut = wloop.create_future()
    ran = []
    fut.add_done_callback(lambda f: ran.append("done callback"))
    join_or_fail(start_thread(wloop.call_soon_threadsafe, fut.set_result, 1))
    join_or_fail(start_thread(wloop.call_soon_threadsafe, wloop.close))  # re-entrant
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        wloop.close()
    assert wloop.is_closed()
    assert fut.result() == 1
    assert ran == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        wloop.call_soon_threadsafe(print)


def test_a_post_close_runs_may_post_again_and_that_is_dropped(wloop, caplog):
    # As the child watcher of asyncio's subprocesses does (its posted exit callback posts
    # `call_soon` with call_soon_threadsafe): a post made by a callback that close() runs
    # is dropped with the ready queue, as that callback's call_soon would be, rather than
    # failing with "Event loop is closed" (logged as an error) while the loop closes.
    ran = []

    def child_exited():
        ran.append("posted")
        wloop.call_soon_threadsafe(wloop.call_soon, ran.append, "posted again")

    join_or_fail(start_thread(wloop.call_soon_threadsafe, child_exited))
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        wloop.close()
    assert ran == ["posted"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    # Other threads' posts are refused while close() runs them, and after.
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        wloop.call_soon_threadsafe(print)


def test_another_threads_post_while_close_runs_the_posted_is_refused(wloop):
    # Only the closing thread's own callbacks post into the closing loop; a post from
    # any other thread meanwhile raises (it would otherwise be dropped unrun).
    outcome = []
    posted = threading.Event()

    def post_from_elsewhere():
        try:
            wloop.call_soon_threadsafe(print)
            outcome.append("accepted")
        except RuntimeError as e:
            outcome.append(str(e))
        posted.set()

    def during_close():
        start_thread(post_from_elsewhere)
        assert posted.wait(SAFETY)

    join_or_fail(start_thread(wloop.call_soon_threadsafe, during_close))
    wloop.close()
    assert outcome == ["Event loop is closed"]


def test_a_task_a_post_makes_while_close_runs_it_is_dropped_silently(wloop, caplog):
    # run_coroutine_threadsafe() to a loop that stopped, which is then closed: close()
    # runs the post (it must run or raise), which makes a task that can never run. It is
    # dropped with the rest, as what the post schedules with call_soon is, not reported
    # as "Task was destroyed but it is pending!" (the stock loop drops the post unrun).
    # Its coroutine never ran: the usual "never awaited" warning, as on the stock loop.
    async def work():
        return 42

    posted = []
    join_or_fail(
        start_thread(lambda: posted.append(asyncio.run_coroutine_threadsafe(work(), wloop)))
    )
    with (
        caplog.at_level(logging.DEBUG, logger="asyncio"),
        pytest.warns(RuntimeWarning, match="coroutine .*work.* was never awaited"),
    ):
        wloop.close()
        posted.clear()
        gc.collect()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_async_generator_collected_elsewhere_before_close_is_dropped_silently(wloop, caplog):
    # Its finalizer hook posts aclose(); close() runs that post while the loop closes:
    # there is no iteration left to run it in, and it is dropped (as on the stock loop),
    # not made into a task that never runs.
    async def agen():
        yield 1

    held = []

    async def start():
        gen = agen()
        await gen.__anext__()
        held.append(gen)

    wloop.run_until_complete(start())
    join_or_fail(start_thread(held.clear))  # the last reference goes in another thread
    with caplog.at_level(logging.DEBUG, logger="asyncio"), warnings.catch_warnings():
        warnings.simplefilter("error")
        wloop.close()
        gc.collect()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_close_finishes_when_a_post_it_runs_raises_system_exit(wloop):
    # The SystemExit of a posted callback that close() runs comes out of close(), but
    # only once the loop is closed all the same: its default executor shut down (its
    # threads let go) and the closed state final.
    wloop.run_until_complete(wloop.run_in_executor(None, int))
    executor = wloop._default_executor
    join_or_fail(start_thread(wloop.call_soon_threadsafe, sys.exit, 3))
    with pytest.raises(SystemExit):
        wloop.close()
    assert wloop.is_closed()
    assert wloop._default_executor is None
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(int)
    wloop.close()  # idempotent
