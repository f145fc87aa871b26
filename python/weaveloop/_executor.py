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

__all__ = ["ThreadPoolExecutor", "BrokenThreadPool"]

BrokenThreadPool = concurrent.futures.thread.BrokenThreadPool

_live_pools: weakref.WeakSet[ThreadPoolExecutor] = weakref.WeakSet()
# Every worker started, as the stdlib's _threads_queues: joined at exit even once its
# pool is gone (and even if it is a daemon thread, made so by a daemon creator).
_workers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def _worker_count(max_workers):
    # As the stdlib pool reads it: it starts a thread while fewer than max_workers run.
    if isinstance(max_workers, float) and max_workers > 0:
        return min(math.ceil(max_workers), sys.maxsize) if max_workers < math.inf else sys.maxsize
    return max_workers


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
        _live_pools.add(self)

    @property
    def _threads(self):
        """The worker threads started (the stdlib pool's attribute)."""
        return set(self._started_threads())

    def submit(self, fn, /, *args, **kwargs):
        return self._submit(fn, args, kwargs or None)

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

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


def _python_exit():
    _core._mark_interpreter_exiting()
    pools = list(_live_pools)
    for p in pools:
        p._shutdown_pool(False)
    for p in pools:
        for t in p._started_threads():
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
