"""Shared fixtures: differential tests run on weaveloop and on the stock loop (the oracle).

``loop`` is parametrised over both loops; ``wloop`` is weaveloop only, for behaviour the
stock loop does not have (each such test says why). ``pool_cls``/``make_pool`` do the same
for thread pools: weaveloop.ThreadPoolExecutor and concurrent.futures' (the oracle).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import socket
import sys

import pytest
from _support import FACTORIES, LOOP_KINDS, LoopThread, weaveloop_factory

#: A test still running after this long is hung: dump every stack and exit.
HANG_GUARD = 90.0
SOAK_HANG_GUARD = 1800.0


@pytest.fixture(autouse=True)
def _hang_guard(request):
    """Turn a hung test into a traceback dump instead of a suite that never ends."""
    limit = SOAK_HANG_GUARD if request.node.get_closest_marker("soak") else HANG_GUARD
    faulthandler.dump_traceback_later(limit, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _restore_asyncio_globals():
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)
    asyncio.set_event_loop(None)


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request) -> str:
    return request.param


@pytest.fixture
def loop_factory(loop_kind):
    """A zero-argument loop factory for the parametrised loop kind."""
    return FACTORIES[loop_kind]


@pytest.fixture
def make_loop(loop_factory):
    """Create loops of the current kind; every one is closed at teardown."""
    loops = []

    def make():
        lp = loop_factory()
        loops.append(lp)
        return lp

    yield make
    for lp in loops:
        _dispose(lp)


@pytest.fixture
def pair():
    """A connected pair of non-blocking Unix stream sockets, closed at teardown."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def loop(make_loop):
    """A fresh loop of the parametrised kind, closed at teardown."""
    return make_loop()


@pytest.fixture
def threaded_loop(loop):
    """``loop`` running forever in a worker thread (a LoopThread), stopped at teardown."""
    lt = LoopThread(loop).start()
    yield lt
    lt.stop()


@pytest.fixture
def wloop():
    """A weaveloop loop, for tests of behaviour only weaveloop promises."""
    lp = weaveloop_factory()
    yield lp
    _dispose(lp)


def _dispose(lp) -> None:
    if lp.is_running():
        return  # a failed test left it running in another thread; nothing safe to do
    if not lp.is_closed():
        lp.close()


POOL_KINDS = ["weaveloop", "stdlib"]


@pytest.fixture(params=POOL_KINDS, ids=[f"{k}-pool" for k in POOL_KINDS])
def pool_cls(request):
    """weaveloop.ThreadPoolExecutor, or the stdlib pool as the oracle."""
    if request.param == "weaveloop":
        import weaveloop

        return weaveloop.ThreadPoolExecutor
    return concurrent.futures.ThreadPoolExecutor


@pytest.fixture
def make_pool(pool_cls):
    """Create pools of the current kind; every one is shut down at teardown."""
    pools = []

    def make(*args, **kwargs):
        p = pool_cls(*args, **kwargs)
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.shutdown(wait=True, cancel_futures=True)
