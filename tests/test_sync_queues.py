"""weaveloop.sync queues: the queue.Queue face (the object) and the asyncio.Queue face
(``.aio`` / ``.async_q``) over one set of items, on asyncio, uvloop and weaveloop.
"""

from __future__ import annotations

import asyncio
import queue
import threading

import pytest
import weaveloop.sync as ws
from _support import SAFETY, join_or_fail, start_thread
from _sync_support import SYNC_LOOPS, ThreadLoop, call_outcome, run, wait_until


@pytest.fixture(params=sorted(SYNC_LOOPS))
def factory(request):
    return SYNC_LOOPS[request.param]


ASYNC_QUEUES = {
    "asyncio": asyncio.Queue,
    "asyncio-lifo": asyncio.LifoQueue,
    "asyncio-priority": asyncio.PriorityQueue,
    "weaveloop": lambda n: ws.Queue(n).aio,
    "weaveloop-lifo": lambda n: ws.LifoQueue(n).aio,
    "weaveloop-priority": lambda n: ws.PriorityQueue(n).aio,
}


def _script(q) -> list:
    """Public asyncio.Queue behaviour, recorded as a transcript."""
    out = [q.maxsize, q.qsize(), q.empty(), q.full()]
    for item in (3, 1, 2):
        q.put_nowait(item)
    out += [q.qsize(), q.full()]
    try:
        q.put_nowait(9)
    except asyncio.QueueFull:
        out.append("full")
    out += [q.get_nowait() for _ in range(3)]
    try:
        q.get_nowait()
    except asyncio.QueueEmpty:
        out.append("empty")
    for _ in range(3):
        q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    return out


@pytest.mark.parametrize("kind", ["", "-lifo", "-priority"])
def test_aio_face_matches_asyncio_queue(factory, kind):
    async def transcript(name):
        return _script(ASYNC_QUEUES[name](3))

    assert run(factory, transcript, "weaveloop" + kind) == run(
        factory, transcript, "asyncio" + kind
    )


def test_aio_face_blocking_get_put_join_match_asyncio(factory):
    async def main(make):
        q = make(1)
        got = []

        async def consumer():
            for _ in range(3):
                got.append(await q.get())
                q.task_done()

        c = asyncio.ensure_future(consumer())
        for i in range(3):
            await q.put(i)  # maxsize 1: waits for the consumer each time
        await q.join()
        await c
        return got, q.empty()

    expect = run(factory, main, asyncio.Queue)
    assert run(factory, main, lambda n: ws.Queue(n).aio) == expect == ([0, 1, 2], True)


def test_exceptions_caught_by_both_worlds():
    q = ws.Queue(1)
    q.put(1)
    for exc in (queue.Full, asyncio.QueueFull):
        with pytest.raises(exc):
            q.put_nowait(2)
        with pytest.raises(exc):
            q.put(2, timeout=0.001)
    q.get()
    for exc in (queue.Empty, asyncio.QueueEmpty):
        with pytest.raises(exc):
            q.get_nowait()
        with pytest.raises(exc):
            q.aio.get_nowait()
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)


def test_thread_to_coroutine_and_back(factory):
    q_in, q_out = ws.Queue(), ws.Queue()

    def producer():
        for i in range(1000):
            q_in.put(i)
        q_in.put(None)

    async def main():
        start_thread(producer)
        items = []
        while (item := await q_in.aio.get()) is not None:
            items.append(item)
            await q_out.async_q.put(item * 2)
        return items

    assert run(factory, main) == list(range(1000))
    assert [q_out.get(timeout=SAFETY) for _ in range(1000)] == [2 * i for i in range(1000)]


def test_backpressure_applies_to_both_sides(factory):
    q = ws.Queue(2)
    lt = ThreadLoop(factory)
    try:
        # A coroutine putter blocks on a full queue until a thread gets.
        q.put(0)
        q.put(1)
        fut = lt.submit(q.aio.put(2))
        wait_until(lambda: q._putters_waiting() == 1, "the coroutine putter to queue")
        assert not fut.done()
        assert q.get(timeout=SAFETY) == 0
        fut.result(SAFETY)
        assert q.qsize() == 2
        # A thread putter blocks until a coroutine gets.
        done = []
        t = start_thread(lambda: done.append(q.put(3, timeout=SAFETY)))
        wait_until(lambda: q._putters_waiting() == 1, "the thread putter to queue")
        assert lt.submit(q.aio.get()).result(SAFETY) == 1
        t.join(SAFETY)
        assert done == [None]
        assert [q.get_nowait() for _ in range(2)] == [2, 3]
    finally:
        lt.close()


def test_join_waits_for_task_done_from_the_other_world(factory):
    q = ws.Queue()
    for i in range(5):
        q.put(i)
    lt = ThreadLoop(factory)
    try:
        joined = lt.submit(q.aio.join())
        for _ in range(5):
            q.get()
            assert not joined.done() or q.unfinished_tasks == 0
            q.task_done()
        joined.result(SAFETY)
        assert q.unfinished_tasks == 0
    finally:
        lt.close()


def test_cancelled_getter_loses_no_item(factory):
    async def main():
        q = ws.Queue()
        first = asyncio.ensure_future(q.aio.get())
        second = asyncio.ensure_future(q.aio.get())
        await asyncio.sleep(0)
        q.put_nowait("x")  # granted to `first` ...
        first.cancel()  # ... cancelled before it ran: the item goes to `second`
        return await second, q.qsize()

    assert run(factory, main) == ("x", 0)


def test_lifo_and_priority_order():
    lq, pq = ws.LifoQueue(), ws.PriorityQueue()
    for i in (2, 3, 1):
        lq.put(i)
        pq.put(i)
    assert [lq.get() for _ in range(3)] == [1, 3, 2]
    assert [pq.get() for _ in range(3)] == [1, 2, 3]
    sq = ws.SimpleQueue()
    sq.put(1)
    assert sq.sync_q is sq and sq.get() == 1 and sq.empty()


def _resize_script(q) -> list:
    """queue.Queue's behaviour when maxsize changes under stored items, as a transcript."""
    out = []

    def try_put(item):
        try:
            q.put_nowait(item)
            out.append(("put", item, q.qsize()))
        except queue.Full:
            out.append(("full", item, q.qsize()))

    for i in range(3):
        q.put(i)
    q.maxsize = 2  # below qsize(): nothing is evicted, putters wait for getters
    try_put(3)
    out.append((q.full(), q.get_nowait()))
    try_put(4)  # qsize 2 == maxsize
    out.append(q.get_nowait())
    try_put(5)
    try_put(6)
    q.maxsize = 4  # raised: room at once
    try_put(7)
    try_put(8)
    try_put(9)
    q.maxsize = 0  # unbounded
    for i in range(10, 20):
        try_put(i)
    q.maxsize = 5  # bounded again, with 14 stored
    try_put(20)
    while q.qsize() > 4:
        q.get_nowait()
    try_put(21)
    try_put(22)
    out.append((q.maxsize, q.qsize(), q.full()))
    return out


@pytest.mark.parametrize("kind", ["Queue", "LifoQueue", "PriorityQueue", "SimpleQueue"])
def test_a_false_block_and_nan_timeouts_read_as_the_queue_modules(kind):
    def script(mod) -> list:
        empty = getattr(mod, kind)()
        out = [_outcome(empty.get, None), _outcome(empty.get, False, 1)]
        if kind != "SimpleQueue":
            full = getattr(mod, kind)(1)
            full.put(0)
            out.append(_outcome(full.put, 1, None))
        return out

    assert script(ws) == script(queue)
    # A NaN timeout: the queue module's loops forever, busy (NaN is never <= 0 left,
    # and its Condition.wait reads it as no wait); refused here, in the words of the
    # locks' NaN error.
    nan_refused = ("ValueError", "Invalid value NaN (not a number)")
    q = getattr(ws, kind)()
    assert call_outcome(lambda: q.get(timeout=float("nan"))) == nan_refused
    if kind != "SimpleQueue":
        q = getattr(ws, kind)(1)
        q.put(0)
        assert call_outcome(lambda: q.put(1, timeout=float("nan"))) == nan_refused


@pytest.mark.parametrize("kind", ["Queue", "LifoQueue", "PriorityQueue"])
def test_changing_maxsize_matches_queue_queue(kind):
    assert _resize_script(getattr(ws, kind)(3)) == _resize_script(getattr(queue, kind)(3))


def test_raising_maxsize_lets_waiting_putters_in_from_both_worlds(factory):
    q = ws.Queue(1)
    q.put("held")
    lt = ThreadLoop(factory)
    try:
        coro_put = lt.submit(q.aio.put("coro"))
        wait_until(lambda: q._putters_waiting() == 1, "the coroutine putter to queue")
        done = []
        t = start_thread(lambda: done.append(q.put("thread", timeout=SAFETY)))
        wait_until(lambda: q._putters_waiting() == 2, "the thread putter to queue")
        q.maxsize = 3  # two more slots: both waiters get in
        coro_put.result(SAFETY)
        t.join(SAFETY)
        assert done == [None]
        # (Both were granted a slot at once; which stores its item first is a race.)
        items = [q.get_nowait() for _ in range(3)]
        assert items[0] == "held" and sorted(items[1:]) == ["coro", "thread"]
    finally:
        lt.close()


def test_lowering_maxsize_holds_putters_until_getters_catch_up(factory):
    q = ws.Queue(4)
    for i in range(4):
        q.put(i)
    q.maxsize = 2
    lt = ThreadLoop(factory)
    try:
        put = lt.submit(q.aio.put("late"))
        wait_until(lambda: q._putters_waiting() == 1, "the putter to queue")
        assert q.get_nowait() == 0 and q.get_nowait() == 1  # qsize 2: still at maxsize
        assert not put.done() and q._putters_waiting() == 1
        assert q.get_nowait() == 2  # qsize 1: room for one
        put.result(SAFETY)
        assert q.qsize() == 2 and q.full()
    finally:
        lt.close()


def test_going_unbounded_releases_every_waiting_putter():
    q = ws.Queue(1)
    q.put(0)
    threads = [start_thread(q.put, i, True, SAFETY) for i in range(1, 4)]
    wait_until(lambda: q._putters_waiting() == 3, "the putters to queue")
    q.maxsize = 0
    for t in threads:
        join_or_fail(t)
    assert q.qsize() == 4 and not q.full()


def test_simple_queue_has_no_maxsize_to_set():
    with pytest.raises(AttributeError):
        ws.SimpleQueue().maxsize = 3


def test_lowered_maxsize_holds_when_a_granted_putter_is_cancelled(factory):
    # A putter granted a slot, then cancelled before it ran, passes the slot on: after
    # a lowered maxsize that slot pays the shortfall instead of letting a put through.
    async def main():
        q = ws.Queue(2)
        q.put_nowait(0)
        q.put_nowait(1)
        putter = asyncio.ensure_future(q.aio.put("x"))
        await asyncio.sleep(0)
        assert q._putters_waiting() == 1
        q.get_nowait()  # hands the freed slot to the queued putter
        q.maxsize = 1
        putter.cancel()
        try:
            await putter
        except asyncio.CancelledError:
            pass
        out = [q.qsize(), q.full()]
        try:
            q.put_nowait("y")
        except queue.Full:
            out.append("full")
        q.get_nowait()
        q.put_nowait("z")
        try:
            q.put_nowait("w")
        except queue.Full:
            out.append("full again")
        return out

    assert run(factory, main) == [1, True, "full", "full again"]


@pytest.mark.parametrize("kind", ["Queue", "LifoQueue", "PriorityQueue"])
def test_put_on_an_unbounded_queue_is_allowed_on_a_loop_thread(factory, kind):
    # It never waits, so rule 4 has nothing to refuse (a bounded put() is refused).
    async def main():
        q = getattr(ws, kind)()
        q.put(1)
        with pytest.raises(RuntimeError, match="would block the event loop"):
            getattr(ws, kind)(1).put(1)
        return q.qsize()

    assert run(factory, main) == 1


def test_size_checks_agree_with_the_nowait_calls_while_waiters_are_served(factory):
    # An item (or a slot) handed to a queued waiter is that waiter's: the checks do not
    # count it, so `while not q.empty(): q.get_nowait()` never raises.
    async def main():
        q = ws.Queue()
        getter = asyncio.ensure_future(q.aio.get())
        await asyncio.sleep(0)  # queued
        q.put_nowait("x")  # handed to the getter, which has not run yet
        out = [q.empty(), q.qsize()]
        while not q.empty():
            q.get_nowait()
        out.append(await getter)

        b = ws.Queue(1)
        b.put_nowait(0)
        putter = asyncio.ensure_future(b.aio.put(1))
        await asyncio.sleep(0)  # queued
        b.get_nowait()  # the free slot is handed to the putter
        out.append(b.full())
        await putter
        out.append(b.get_nowait())
        return out

    assert run(factory, main) == [True, 0, "x", True, 1]


@pytest.mark.parametrize("kind", ["Queue", "LifoQueue", "PriorityQueue", "SimpleQueue"])
def test_queue_classes_are_subscriptable_in_annotations(kind):
    cls = getattr(ws, kind)
    # As queue.Queue[int], asyncio.Queue[int] and janus.Queue[int].
    alias = cls[int]
    assert type(alias) is type(getattr(queue, kind)[int])
    assert (alias.__origin__, alias.__args__) == (cls, (int,))


@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue"])
def test_unbounded_put_never_looks_at_block_and_timeout(kind):
    # As queue.Queue / queue.SimpleQueue: an unbounded put never waits, so its timeout
    # is not checked (a ValueError or TypeError before).
    q = getattr(ws, kind)()
    q.put(1, timeout=-1)
    q.put(2, True, -0.5)
    q.put(3, timeout="x")
    assert [q.get_nowait() for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("impl", ["queue", "asyncio", "weaveloop"])
def test_a_float_maxsize_holds_its_ceiling(impl):
    # queue.Queue and asyncio.Queue are full once qsize() >= maxsize (CPython's
    # test_float_maxsize); weaveloop refused a float with TypeError.
    make = {
        "queue": queue.Queue,
        "asyncio": asyncio.Queue,
        "weaveloop": ws.Queue,
    }[impl]
    q = make(maxsize=1.3)
    q.put_nowait(1)
    assert not q.full()
    q.put_nowait(2)
    assert q.full() and q.maxsize == 1.3
    if impl == "weaveloop":
        q.maxsize = 3.5  # settable, as queue.Queue's
        assert not q.full() and q.maxsize == 3.5
        q.maxsize = float("inf")
        q.put_nowait(3)
        q.put_nowait(4)
        assert not q.full()


# ---- shutdown (Python 3.13's Queue.shutdown, on every version) ----

STDLIB_HAS_SHUTDOWN = hasattr(queue, "ShutDown")
THREAD_QUEUES = {"": ws.Queue, "-lifo": ws.LifoQueue, "-priority": ws.PriorityQueue}
STDLIB_THREAD_QUEUES = {"": queue.Queue, "-lifo": queue.LifoQueue, "-priority": queue.PriorityQueue}


# The stdlib exceptions a queue's transcript names (queue's and asyncio's alike; where
# the stdlib has no ShutDown yet, weaveloop.sync's).
_NAMED = (
    ("ShutDown", (getattr(queue, "ShutDown", ws.QueueShutDown),
                  getattr(asyncio, "QueueShutDown", ws.QueueShutDown))),
    ("Full", (queue.Full, asyncio.QueueFull)),
    ("Empty", (queue.Empty, asyncio.QueueEmpty)),
    ("ValueError", (ValueError,)),
)  # fmt: skip


def _exception_name(e: Exception) -> str:
    """The transcript's name for ``e``; anything else is raised again."""
    for name, classes in _NAMED:
        if isinstance(e, classes):
            return name
    raise e


def _outcome(call, *args, **kwargs):
    """What a call returned, or the name of the stdlib exception it raised."""
    try:
        return call(*args, **kwargs)
    except Exception as e:
        return _exception_name(e)


def _shutdown_script(make) -> list:
    """queue.Queue's shutdown behaviour, recorded."""
    out = []
    q = make(2)
    q.put(1)
    q.put(2)
    out += [q.is_shutdown, q.full()]
    q.shutdown()
    out += [q.is_shutdown, q.qsize(), q.full(), q.empty()]
    out += [_outcome(q.put, 3), _outcome(q.put_nowait, 3), _outcome(q.put, 3, timeout=0.001)]
    out += [_outcome(q.put, 3, timeout=-1)]  # ShutDown is looked at before the timeout
    out += [sorted([q.get(), q.get_nowait()]), q.empty(), q.full()]
    # Empty and shut down: ShutDown, not Empty, and no wait.
    out += [_outcome(q.get), _outcome(q.get_nowait), _outcome(q.get, True, 60.0)]
    out += [_outcome(q.get, timeout=-1)]  # ShutDown is looked at before the timeout
    q.task_done()
    q.task_done()
    out += [_outcome(q.task_done), q.join(), q.unfinished_tasks]
    q.shutdown(immediate=True)  # allowed after a plain one
    out.append(q.is_shutdown)

    # Immediate: the items left go, each counted done for join().
    q = make(3)
    for i in (5, 4, 6):
        q.put(i)
    first = q.get()
    q.shutdown(immediate=True)
    out += [first, q.qsize(), q.empty(), q.unfinished_tasks]
    out += [_outcome(q.get_nowait), _outcome(q.get), _outcome(q.put_nowait, 7)]
    q.task_done()  # for `first`
    out += [q.unfinished_tasks, q.join(), _outcome(q.task_done)]
    return out


@pytest.mark.parametrize("kind", sorted(THREAD_QUEUES))
def test_shutdown_of_the_thread_face(kind):
    got = _shutdown_script(THREAD_QUEUES[kind])
    # The transcript as Python 3.13's queue.Queue documents it.
    first = {"": 5, "-lifo": 6, "-priority": 4}[kind]
    assert got == [
        False, True,
        True, 2, True, False,
        "ShutDown", "ShutDown", "ShutDown", "ShutDown",
        [1, 2], True, False,
        "ShutDown", "ShutDown", "ShutDown", "ShutDown",
        "ValueError", None, 0,
        True,
        first, 0, True, 1,
        "ShutDown", "ShutDown", "ShutDown",
        0, None, "ValueError",
    ]  # fmt: skip
    if STDLIB_HAS_SHUTDOWN:
        assert got == _shutdown_script(STDLIB_THREAD_QUEUES[kind])


async def _aio_shutdown_script(make) -> list:
    """asyncio.Queue's shutdown behaviour, recorded."""

    async def outcome(call, *args):
        try:
            result = call(*args)
            return await result if asyncio.iscoroutine(result) else result
        except Exception as e:
            return _exception_name(e)

    out = []
    q = make(2)
    await q.put(1)
    q.put_nowait(2)
    q.shutdown()
    out += [q.qsize(), q.full(), await outcome(q.put, 3), await outcome(q.put_nowait, 3)]
    out += [sorted([await q.get(), q.get_nowait()]), q.empty()]
    out += [await outcome(q.get), await outcome(q.get_nowait)]
    q.task_done()
    q.task_done()
    await q.join()

    q = make(0)
    for i in (5, 4, 6):
        q.put_nowait(i)
    first = await q.get()
    q.shutdown(immediate=True)
    out += [first, q.qsize(), await outcome(q.get), await outcome(q.put, 7)]
    q.task_done()  # for `first`: join() then has nothing to wait for
    await q.join()
    out.append(await outcome(q.task_done))
    return out


@pytest.mark.parametrize("kind", ["", "-lifo", "-priority"])
def test_shutdown_of_the_aio_face(factory, kind):
    got = run(factory, _aio_shutdown_script, ASYNC_QUEUES["weaveloop" + kind])
    first = {"": 5, "-lifo": 6, "-priority": 4}[kind]
    assert got == [
        2, True, "ShutDown", "ShutDown",
        [1, 2], True,
        "ShutDown", "ShutDown",
        first, 0, "ShutDown", "ShutDown",
        "ValueError",
    ]  # fmt: skip
    if hasattr(asyncio, "QueueShutDown"):
        assert got == run(factory, _aio_shutdown_script, ASYNC_QUEUES["asyncio" + kind])


def test_shutdown_exception_is_caught_by_both_worlds():
    q = ws.Queue()
    q.shutdown()
    bases = [
        c for c in (getattr(queue, "ShutDown", None), getattr(asyncio, "QueueShutDown", None)) if c
    ]
    for exc in [ws.QueueShutDown, *bases]:
        with pytest.raises(exc):
            q.put(1)
        with pytest.raises(exc):
            q.aio.get_nowait()
    assert "shutdown" in repr(q) and "shutdown" not in repr(ws.Queue())


def test_simple_queue_has_no_shutdown_but_its_aio_face_has(factory):
    assert not hasattr(queue.SimpleQueue(), "shutdown")
    q = ws.SimpleQueue()
    assert not hasattr(q, "shutdown")
    q.put("left")

    async def main():
        q.aio.shutdown()  # asyncio.Queue's API
        got = await q.aio.get()
        try:
            await q.aio.get()
        except ws.QueueShutDown:
            return got, "ShutDown"

    assert run(factory, main) == ("left", "ShutDown")
    with pytest.raises(ws.QueueShutDown):
        q.put("refused")
    with pytest.raises(ws.QueueShutDown):
        q.get_nowait()


def test_shutdown_takes_any_truth_value_for_immediate():
    for immediate, left in ((1, 0), ("yes", 0), (0, 1), (None, 1), ([], 1)):
        q = ws.Queue()
        q.put("x")
        q.shutdown(immediate)
        assert q.qsize() == left, immediate
        q = ws.Queue()
        q.put("x")
        q.aio.shutdown(immediate)
        assert q.qsize() == left, immediate


def test_shutdown_again_and_maxsize_changes_after_it():
    q = ws.Queue(1)
    q.put("a")
    for _ in range(10):
        q.shutdown()
    for size in (5, 0, 1, 3, -1, 2):
        q.maxsize = size
        assert q.full() == (0 < size <= 1) and q.qsize() == 1
        with pytest.raises(ws.QueueShutDown):
            q.put_nowait("b")
    assert q.get_nowait() == "a"
    q.shutdown(immediate=True)
    with pytest.raises(ws.QueueShutDown):
        q.get(timeout=SAFETY)
    assert q.qsize() == 0 and q.empty() and not q.full()


def test_a_priority_item_comparison_may_ask_the_queue_after_shutdown():
    """Comparisons run under the priority queue's lock: asking the size from one must
    not wait for that lock (it is not re-entrant)."""
    q = ws.PriorityQueue()
    sizes = []

    class Item:
        def __init__(self, n):
            self.n = n

        def __lt__(self, other):
            sizes.append((q.qsize(), q.empty()))
            return self.n < other.n

    for n in (3, 1, 2):
        q.put(Item(n))
    q.shutdown()
    got = []
    t = start_thread(lambda: got.extend(q.get().n for _ in range(3)))
    join_or_fail(t)
    assert got == [1, 2, 3] and sizes


def test_immediate_shutdown_releases_a_joining_thread():
    q = ws.Queue()
    q.put("taken")
    q.put("left")
    assert q.get() == "taken"
    joined = threading.Event()
    t = start_thread(lambda: (q.join(), joined.set()))
    q.shutdown(immediate=True)  # "left" is counted done; "taken" is not
    assert q.unfinished_tasks == 1
    q.task_done()
    join_or_fail(t)
    assert joined.is_set()


def test_shutdown_wakes_waiting_threads():
    empty, full = ws.Queue(), ws.Queue(1)
    full.put("kept")
    outcomes = []

    def getter():
        outcomes.append(("get", _outcome(empty.get, timeout=SAFETY)))

    def putter():
        outcomes.append(("put", _outcome(full.put, "refused", timeout=SAFETY)))

    threads = [start_thread(getter), start_thread(putter)]
    wait_until(lambda: empty._getters_waiting() == 1, "the getter to wait")
    wait_until(lambda: full._putters_waiting() == 1, "the putter to wait")
    empty.shutdown()
    full.shutdown()
    for t in threads:
        join_or_fail(t)
    assert sorted(outcomes) == [("get", "ShutDown"), ("put", "ShutDown")]
    # A plain shutdown keeps what the queue holds for its getters.
    assert full.get_nowait() == "kept"
    assert _outcome(full.get_nowait) == "ShutDown"


@pytest.mark.parametrize("immediate", [False, True])
def test_shutdown_from_a_thread_wakes_waiting_coroutines(factory, immediate):
    empty, full, pending = ws.Queue(), ws.Queue(1), ws.Queue()
    full.put("kept")
    pending.put("unfinished")
    lt = ThreadLoop(factory)
    try:

        async def outcome(aw):
            try:
                return await aw
            except ws.QueueShutDown:
                return "ShutDown"

        got = lt.submit(outcome(empty.aio.get()))
        put = lt.submit(outcome(full.aio.put("refused")))
        joined = lt.submit(pending.aio.join())
        wait_until(lambda: empty._getters_waiting() == 1, "the coroutine getter to wait")
        wait_until(lambda: full._putters_waiting() == 1, "the coroutine putter to wait")
        for q in (empty, full, pending):
            q.shutdown(immediate)
        assert got.result(SAFETY) == "ShutDown"
        assert put.result(SAFETY) == "ShutDown"
        if immediate:
            # The item left was removed and counted done: join() is released.
            joined.result(SAFETY)
            assert pending.unfinished_tasks == 0 and full.qsize() == 0
        else:
            # join() still waits for the item's task_done; the item is still there.
            assert not joined.done()
            assert full.get_nowait() == "kept"
            assert pending.get_nowait() == "unfinished"
            pending.task_done()
            joined.result(SAFETY)
    finally:
        lt.close()


def test_shutdown_from_a_coroutine_wakes_a_waiting_thread(factory):
    q = ws.Queue()
    outcomes = []
    t = start_thread(lambda: outcomes.append(_outcome(q.get, timeout=SAFETY)))
    wait_until(lambda: q._getters_waiting() == 1, "the thread getter to wait")

    async def main():
        q.aio.shutdown()

    run(factory, main)
    join_or_fail(t)
    assert outcomes == ["ShutDown"]


@pytest.mark.parametrize("immediate", [False, True])
@pytest.mark.parametrize("kind", sorted(THREAD_QUEUES))
def test_shutdown_amid_putters_and_getters_loses_and_duplicates_nothing(kind, immediate):
    """Threads put and get through a small queue while it is shut down: every put either
    returns (its item is then got exactly once, or removed by an immediate shutdown) or
    raises ShutDown; every getter ends with ShutDown; join() then returns."""
    q = THREAD_QUEUES[kind](4)
    per_putter, putters, getters = 2000, 3, 3
    put_ok: list[list[int]] = [[] for _ in range(putters)]
    got: list[list[int]] = [[] for _ in range(getters)]
    ends = []
    halfway = threading.Event()

    def put_all(n):
        for i in range(per_putter):
            item = n * per_putter + i
            if _outcome(q.put, item, timeout=SAFETY) == "ShutDown":
                ends.append("put")
                return
            put_ok[n].append(item)
            if i == per_putter // 2:
                halfway.set()
        ends.append("put all")

    def get_all(n):
        while True:
            item = _outcome(q.get, timeout=SAFETY)
            if item == "ShutDown":
                ends.append("get")
                return
            got[n].append(item)
            q.task_done()

    threads = [start_thread(put_all, n) for n in range(putters)]
    threads += [start_thread(get_all, n) for n in range(getters)]
    assert halfway.wait(SAFETY)
    q.shutdown(immediate)
    for t in threads:
        join_or_fail(t)
    gotten = sorted(i for g in got for i in g)
    accepted = sorted(i for p in put_ok for i in p)
    assert len(gotten) == len(set(gotten)), "an item was got twice"
    assert set(gotten) <= set(accepted)
    if not immediate:
        assert gotten == accepted, "a plain shutdown lets getters take every item put"
    assert ends.count("get") == getters
    assert q.qsize() == 0 and q.unfinished_tasks == 0
    q.join()


def test_a_put_still_comparing_its_item_is_not_counted_for_task_done():
    """A priority put counts its item only once stored: while its comparison runs, a
    task_done() has only the stored items to mark done (queue.Queue makes it wait for
    the put, then raise); and a put whose comparison raises counts nothing."""
    q = ws.PriorityQueue()
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def __lt__(self, other):
            entered.set()
            release.wait(SAFETY)
            raise TypeError("cannot compare")

        __gt__ = __lt__

    q.put(Slow())  # alone in the heap: nothing to compare it with
    outcome = []

    def put_another():
        try:
            q.put(Slow())
            outcome.append("put")
        except TypeError:
            outcome.append("TypeError")

    t = start_thread(put_another)
    wait_until(entered.is_set, "the put to compare its item")
    assert q.unfinished_tasks == 1
    q.task_done()  # the stored item
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()  # nothing else is in the queue yet
    release.set()
    join_or_fail(t)
    assert outcome == ["TypeError"]
    assert q.unfinished_tasks == 0 and q.qsize() == 1


def test_a_getter_cancelled_as_the_queue_shuts_down_loses_no_item(factory):
    """The item granted to a getter that is cancelled before it runs goes to the next
    getter, also when a shutdown woke that one meanwhile; asyncio.Queue does the same."""

    async def main(make):
        q = make(0)
        first = asyncio.ensure_future(q.get())
        second = asyncio.ensure_future(q.get())
        await asyncio.sleep(0)  # both wait
        q.put_nowait("x")  # granted to `first` ...
        first.cancel()  # ... cancelled before it ran
        q.shutdown()
        got = await second
        try:
            await q.get()
        except Exception as e:  # QueueShutDown, of the queue's own kind
            return got, first.cancelled(), type(e).__name__, q.qsize()

    assert run(factory, main, ASYNC_QUEUES["weaveloop"]) == ("x", True, "QueueShutDown", 0)
    if hasattr(asyncio, "QueueShutDown"):
        assert run(factory, main, ASYNC_QUEUES["asyncio"]) == ("x", True, "QueueShutDown", 0)


def test_a_simple_queues_face_counts_no_tasks(factory):
    # As documented: its threads have no task_done() to call, so there is no count to
    # drain; join() returns with an item still queued, and task_done() does nothing.
    async def main():
        q = ws.SimpleQueue()
        q.aio.put_nowait(1)
        await q.aio.join()
        q.aio.task_done()
        q.aio.task_done()
        return q.aio.get_nowait(), q.aio.empty()

    assert run(factory, main) == (1, True)
