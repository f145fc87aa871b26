"""``weaveloop.ThreadPoolExecutor``: a ``concurrent.futures.Executor`` whose pool is Rust.

Workers are real ``threading.Thread`` objects running a Rust loop; like the stdlib
pool's they are joined at interpreter exit and replaced with fresh ones after fork.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread
import math
import os
import sys
import threading
import weakref

from . import _core
from ._patches import defined_in

__all__ = ["ThreadPoolExecutor", "BrokenThreadPool"]

BrokenThreadPool = concurrent.futures.thread.BrokenThreadPool

_live_pools: weakref.WeakSet[ThreadPoolExecutor] = weakref.WeakSet()
# Every worker started, as the stdlib's _threads_queues: joined at exit even once its
# pool is gone (and even if it is a daemon thread, made so by a daemon creator).
_workers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def _worker_count(max_workers):
    # As the stdlib pool reads it: any number above 0 (an int, a float, a Decimal...),
    # and it starts a thread while fewer than max_workers run.
    if max_workers is None:
        return None
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    try:
        return min(math.ceil(max_workers), sys.maxsize)
    except OverflowError:  # (inf)
        return sys.maxsize


def _is_stdlib_submit(f):
    """Whether ``f`` is the stdlib pool's own ``submit`` (not a tracing agent's wrapper)."""
    return defined_in(f, concurrent.futures.thread, "submit")


class ThreadPoolExecutor(_core.PoolCore, concurrent.futures.ThreadPoolExecutor):
    """Drop-in for ``concurrent.futures.ThreadPoolExecutor`` (a subclass of it, with the
    same arguments and errors).

    ``run_in_executor`` on a weaveloop loop takes a fast path with it: no
    ``concurrent.futures.Future`` and no self-pipe write per call.
    """

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        self._configure(
            _worker_count(max_workers),
            str(thread_name_prefix) if thread_name_prefix else "",
            initializer,
            initargs,
        )
        # What the stdlib pool's own submit uses (see submit).
        self._shutdown_lock = threading.Lock()
        _live_pools.add(self)

    @property
    def _threads(self):
        """The worker threads started (the stdlib pool's attribute)."""
        return set(self._started_threads())

    def submit(self, fn, /, *args, **kwargs):
        future = self._submit(fn, args, kwargs or None)
        if future is NotImplemented:
            # Something wraps the stdlib pool's submit (tracing agents do, to carry a
            # context into the job): the wrapper gets the job, and the stdlib method it
            # calls queues it here, through _work_queue.
            return concurrent.futures.thread.ThreadPoolExecutor.submit(self, fn, *args, **kwargs)
        return future

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

    @property
    def _work_queue(self):
        """Where the stdlib pool's own ``submit`` puts its work items (only ``put``)."""
        return _WorkItems(self)

    def _adjust_thread_count(self):
        """(The stdlib pool's own ``submit`` calls this; queueing starts the workers.)"""

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown_pool(cancel_futures)
        if wait:
            # As the stdlib pool: every worker is joined, so a job that shuts its own
            # pool down gets RuntimeError('cannot join current thread') (after the
            # workers joined before its own), instead of waiting on the other jobs,
            # which may be waiting on it.
            for t in self._started_threads():
                t.join()

    shutdown.__doc__ = concurrent.futures.Executor.shutdown.__doc__

    def _start_worker(self, name, worker_args):
        # The thread holds the pool's Rust state, not this executor: dropped without
        # shutdown(), the executor is collected and its workers exit.
        t = threading.Thread(name=name, target=_core.worker_main, args=(worker_args,))
        t.start()
        _workers.add(t)
        return t


_OWN_SUBMIT = ThreadPoolExecutor.__dict__["submit"]


class _WorkItems:
    """A pool's ``_work_queue`` as the stdlib pool's ``submit`` uses it."""

    __slots__ = ("_pool",)

    def __init__(self, pool):
        self._pool = pool

    def put(self, item, block=True, timeout=None):
        self._pool._put_work_item(item)


def _python_exit():
    _core._mark_interpreter_exiting()
    # The workers of every pool that has some are told to stop once their queue is
    # done, then joined. A pool reads as shut down once one of its workers has stopped
    # so, as the stdlib's workers mark theirs: a submit there hears "after interpreter
    # shutdown" until then (from a job still running, say), "after shutdown" after.
    started = [(p, p._started_threads()) for p in list(_live_pools)]
    for p, threads in started:
        if threads:
            p._shutdown_pool(False, by_exit=True)
    for _, threads in started:
        for t in threads:
            t.join()
    # Also the workers of pools collected meanwhile: they exit once their queue is done.
    for t in list(_workers):
        if t is not threading.current_thread():
            t.join()


def _after_fork_in_child():
    for p in list(_live_pools):
        p._reset_after_fork()


threading._register_atexit(_python_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
