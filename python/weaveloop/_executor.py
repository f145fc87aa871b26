"""``weaveloop.ThreadPoolExecutor``: a ``concurrent.futures.Executor`` whose pool is Rust.

Workers are real ``threading.Thread`` objects running a Rust loop; like the stdlib
pool's they are joined at interpreter exit and replaced with fresh ones after fork.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread
import os
import threading
import weakref

from . import _core

__all__ = ["ThreadPoolExecutor", "BrokenThreadPool"]

BrokenThreadPool = concurrent.futures.thread.BrokenThreadPool

_live_pools: weakref.WeakSet[ThreadPoolExecutor] = weakref.WeakSet()


class ThreadPoolExecutor(_core.PoolCore, concurrent.futures.Executor):
    """Drop-in for ``concurrent.futures.ThreadPoolExecutor`` (same arguments and errors).

    ``run_in_executor`` on a weaveloop loop takes a fast path with it: no
    ``concurrent.futures.Future`` and no self-pipe write per call.
    """

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        self._configure(max_workers, thread_name_prefix, initializer, initargs)
        _live_pools.add(self)

    def submit(self, fn, /, *args, **kwargs):
        return self._submit(fn, args, kwargs or None)

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown(cancel_futures)
        if wait:
            for t in self._started_threads():
                if t is not threading.current_thread():
                    t.join()

    shutdown.__doc__ = concurrent.futures.Executor.shutdown.__doc__

    def _start_worker(self, name, worker_args):
        # The thread holds the pool's Rust state, not this executor: dropped without
        # shutdown(), the executor is collected and its workers exit.
        t = threading.Thread(name=name, target=_core.worker_main, args=(worker_args,))
        t.start()
        return t


def _python_exit():
    _core._mark_interpreter_exiting()
    pools = list(_live_pools)
    for p in pools:
        p._shutdown(False)
    for p in pools:
        for t in p._started_threads():
            t.join()


def _after_fork_in_child():
    for p in list(_live_pools):
        p._reset_after_fork()


threading._register_atexit(_python_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
