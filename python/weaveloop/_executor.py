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
_interpreter_exiting = False


class ThreadPoolExecutor(_core.PoolCore, concurrent.futures.Executor):
    """Drop-in for ``concurrent.futures.ThreadPoolExecutor`` (same arguments and errors).

    ``run_in_executor`` on a weaveloop loop takes a fast path with it: no
    ``concurrent.futures.Future`` and no self-pipe write per call.
    """

    def __init__(self, max_workers=None, thread_name_prefix="", initializer=None, initargs=()):
        # Validation and state live in PoolCore.__new__; this only registers the pool.
        _live_pools.add(self)

    def submit(self, fn, /, *args, **kwargs):
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        return self._submit(fn, args, kwargs or None)

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown(cancel_futures)
        if wait:
            for t in self._started_threads():
                if t is not threading.current_thread():
                    t.join()

    shutdown.__doc__ = concurrent.futures.Executor.shutdown.__doc__

    def _start_worker(self, name):
        t = threading.Thread(name=name, target=_core.worker_main, args=(self,))
        t.start()
        return t


def _python_exit():
    global _interpreter_exiting
    _interpreter_exiting = True
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
