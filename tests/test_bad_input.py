"""DESIGN.md's bad-input table, row by row, for the loop and the executor.

Rows tested elsewhere: "run_forever while running / nested" in test_running.py;
"exception in a callback or executor job" and "KeyboardInterrupt/SystemExit in a callback"
in test_exception_handler.py; "closing a loop with executor jobs in flight" in
test_run_in_executor.py; "foreign-thread posts racing close()" in test_threadsafe.py;
"submit after shutdown" and "initializer failure" (direct use) in test_executor.py;
"run_in_executor after shutdown_default_executor" in test_run_in_executor.py.
Differential where the stock loop shares the behaviour; weaveloop-only tests say why.
"""

from __future__ import annotations

import asyncio
import decimal
import fractions
import math
import re
import socket
import ssl

import pytest
import weaveloop
from _support import SAFETY, run


async def coro_function():
    pass


class NotCallable:
    pass


# -- row: non-callable callback, coroutine passed to call_soon/run_in_executor -------------

SCHEDULERS = {
    "call_soon": lambda lp, cb: lp.call_soon(cb),
    "call_soon_threadsafe": lambda lp, cb: lp.call_soon_threadsafe(cb),
    "call_later": lambda lp, cb: lp.call_later(0, cb),
    "call_at": lambda lp, cb: lp.call_at(lp.time(), cb),
    "run_in_executor": lambda lp, cb: lp.run_in_executor(None, cb),
}

BAD_CALLBACKS = {
    "coroutine_function": lambda: coro_function,
    "coroutine": coro_function,  # called per test: a fresh coroutine object
    "none": lambda: None,
    "int": lambda: 42,
    "object": NotCallable,
}


def _type_error_scheduling(loop, method: str, kind: str) -> str:
    """Schedules a bad callback of ``kind`` with ``method``; returns the TypeError's text."""
    cb = BAD_CALLBACKS[kind]()
    try:
        with pytest.raises(TypeError) as info:
            SCHEDULERS[method](loop, cb)
    finally:
        if asyncio.iscoroutine(cb):
            cb.close()
    return str(info.value)


@pytest.mark.parametrize("method", list(SCHEDULERS))
@pytest.mark.parametrize("kind", list(BAD_CALLBACKS))
def test_bad_callback_is_a_type_error_in_debug_mode(loop, method, kind):
    # The stock loop validates callbacks in debug mode; both loops must agree there.
    loop.set_debug(True)
    message = _type_error_scheduling(loop, method, kind)
    # The stock call_later validates through call_at and names that method.
    names = {method, "call_at"} if method == "call_later" else {method}
    if kind.startswith("coroutine"):
        assert message in {f"coroutines cannot be used with {n}()" for n in names}
    else:
        assert any(message.startswith(f"a callable object was expected by {n}()") for n in names)


ALWAYS_CHECKED = [
    (method, kind)
    for method in SCHEDULERS
    for kind in BAD_CALLBACKS
    # The contract names call_soon and run_in_executor for coroutine functions; every
    # scheduling method refuses non-callables (coroutine objects included).
    if kind != "coroutine_function" or method in ("call_soon", "run_in_executor")
]


@pytest.mark.parametrize("method, kind", ALWAYS_CHECKED)
def test_bad_callback_is_always_a_type_error_on_weaveloop(wloop, method, kind):
    # weaveloop-only: the stock loop checks only in debug mode; weaveloop always does.
    assert not wloop.get_debug()
    message = _type_error_scheduling(wloop, method, kind)
    if kind.startswith("coroutine"):
        assert "coroutine" in message
    else:
        assert "callable" in message


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later"])
def test_keyword_arguments_for_the_callback_are_refused(loop, method):
    with pytest.raises(TypeError):
        if method == "call_later":
            loop.call_later(0, print, sep="")
        else:
            getattr(loop, method)(print, sep="")


def test_set_exception_handler_non_callable(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)


# -- row: NaN or infinite delay; negative delay ------------------------------------------


@pytest.mark.parametrize("schedule", ["call_later", "call_at"])
def test_nan_delay_is_a_value_error(wloop, schedule):
    # weaveloop-only: the stock loop accepts NaN and puts a never-ordered timer in its heap.
    with pytest.raises(ValueError):
        if schedule == "call_later":
            wloop.call_later(math.nan, lambda: None)
        else:
            wloop.call_at(math.nan, lambda: None)
    # The loop is unharmed.
    assert run(wloop, asyncio.sleep(0.001, "ok")) == "ok"


@pytest.mark.parametrize("timeout", ["ssl_handshake_timeout", "ssl_shutdown_timeout"])
@pytest.mark.parametrize(
    "how", ["ssl=", "start_tls", "server", "unix server", "accepted socket", "start_server"]
)
def test_a_nan_tls_timeout_is_a_value_error_at_once(wloop, timeout, how, tmp_path):
    # weaveloop-only (follows from the row above): the stock TLS protocol refuses a
    # timeout <= 0 as it is made, in these words, and NaN passes that test; its timer
    # would then fail inside the protocol and leave the connection hanging. Refused
    # before anything connects (no connection reaches the listener) or serves (a server
    # would fail each connection it accepts).
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    address = listener.getsockname()
    context = ssl.create_default_context()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    nan = {timeout: math.nan}

    async def main():
        if how == "ssl=":
            await wloop.create_connection(asyncio.Protocol, *address, ssl=context, **nan)
        elif how == "start_tls":
            transport, protocol = await wloop.create_connection(asyncio.Protocol, *address)
            try:
                await wloop.start_tls(transport, protocol, context, **nan)
            finally:
                transport.close()
        elif how == "server":
            await wloop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server_context, **nan)
        elif how == "unix server":
            path = str(tmp_path / "s")
            await wloop.create_unix_server(asyncio.Protocol, path, ssl=server_context, **nan)
        elif how == "accepted socket":
            ours, theirs = socket.socketpair()
            try:
                await wloop.connect_accepted_socket(
                    asyncio.Protocol, ours, ssl=server_context, **nan
                )
            finally:
                ours.close()
                theirs.close()
        else:
            await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=server_context, **nan)

    try:
        with pytest.raises(ValueError, match=f"^{timeout} should be a positive number, got nan$"):
            run(wloop, asyncio.wait_for(main(), 10))
        if how != "start_tls":
            with pytest.raises(BlockingIOError):
                listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize("how", ["create_connection", "open_connection"])
def test_a_nan_happy_eyeballs_delay_is_a_value_error_before_connecting(wloop, how):
    # weaveloop-only (follows from the NaN-delay row): the stock race waits that long
    # between attempts through the loop's timers. It raised there, after the first
    # attempt had connected a socket it then left open.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    address = listener.getsockname()

    async def main():
        if how == "create_connection":
            await wloop.create_connection(asyncio.Protocol, *address, happy_eyeballs_delay=math.nan)
        else:
            await asyncio.open_connection(*address, happy_eyeballs_delay=math.nan)

    try:
        with pytest.raises(
            ValueError, match=r"^Invalid happy_eyeballs_delay: NaN \(not a number\)$"
        ):
            run(wloop, asyncio.wait_for(main(), 10))
        with pytest.raises(BlockingIOError):  # no attempt reached the listener
            listener.accept()
    finally:
        listener.close()


def test_a_nan_happy_eyeballs_delay_with_a_connected_sock_is_not_used(loop):
    # With sock= there is no race to wait in, and the stock loop ignores the delay.
    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(listener.getsockname())
    sock.setblocking(False)

    async def main():
        transport, _ = await loop.create_connection(
            asyncio.Protocol, sock=sock, happy_eyeballs_delay=math.nan
        )
        transport.close()
        return "connected"

    try:
        assert run(loop, main()) == "connected"
    finally:
        sock.close()
        listener.close()


def test_start_tls_checks_its_context_before_a_nan_timeout(loop):
    # As the stock start_tls: the context's type first (its TypeError), the timeouts after.
    listener = socket.create_server(("127.0.0.1", 0))

    async def main():
        transport, protocol = await loop.create_connection(
            asyncio.Protocol, *listener.getsockname()
        )
        try:
            await loop.start_tls(transport, protocol, "no context", ssl_handshake_timeout=math.nan)
        finally:
            transport.close()

    try:
        with pytest.raises(TypeError, match="sslcontext is expected to be an instance"):
            run(loop, main())
    finally:
        listener.close()


@pytest.mark.parametrize("schedule", ["call_later", "call_at"])
def test_infinite_delay_never_fires(loop, schedule):
    ran = []
    if schedule == "call_later":
        h = loop.call_later(math.inf, ran.append, "inf")
    else:
        h = loop.call_at(math.inf, ran.append, "inf")
    assert h.when() == math.inf
    # Other timers keep working around it, and the loop does not spin or fire it.
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert ran == []
    assert run(loop, asyncio.sleep(0.001, "ok")) == "ok"
    h.cancel()


@pytest.mark.parametrize("delay", [-1, -1e9, -0.0])
def test_negative_delay_means_now(loop, delay):
    ran = []
    loop.call_later(delay, ran.append, "timer")
    loop.call_soon(loop.stop)
    loop.run_forever()  # one iteration: the timer is already due
    assert ran == ["timer"]


def test_call_at_in_the_past_means_now(loop):
    ran = []
    loop.call_at(loop.time() - 100, ran.append, "past")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["past"]


BAD_DELAYS = {
    "none": None,
    "str": "1",
    "decimal": decimal.Decimal("0.1"),  # has __float__, but does not add to a float
    "list": [1],
    "huge_int": 10**400,
}


@pytest.mark.parametrize("delay", BAD_DELAYS.values(), ids=BAD_DELAYS)
def test_bad_delay_types_fail_as_on_the_stock_loop(wloop, delay):
    # The stock loop computes `self.time() + delay`: whatever that raises, with its text.
    stock = asyncio.new_event_loop()
    try:
        with pytest.raises(Exception) as expected:
            stock.call_later(delay, print)
    finally:
        stock.close()
    with pytest.raises(type(expected.value), match=f"^{re.escape(str(expected.value))}$"):
        wloop.call_later(delay, print)


@pytest.mark.parametrize(
    "delay", [fractions.Fraction(1, 10), True, 7], ids=["fraction", "bool", "int"]
)
def test_other_numbers_are_delays_as_on_the_stock_loop(loop, delay):
    before = loop.time()
    handle = loop.call_later(delay, print)
    after = loop.time()
    assert type(handle.when()) is float
    assert before + float(delay) <= handle.when() <= after + float(delay)
    handle.cancel()


# -- row: any method on a closed loop -------------------------------------------------------


CLOSED_LOOP_CALLS = {
    "call_soon": lambda lp, sock: lp.call_soon(lambda: None),
    "call_soon_threadsafe": lambda lp, sock: lp.call_soon_threadsafe(lambda: None),
    "call_later": lambda lp, sock: lp.call_later(1, lambda: None),
    "call_at": lambda lp, sock: lp.call_at(lp.time() + 1, lambda: None),
    "run_forever": lambda lp, sock: lp.run_forever(),
    "run_until_complete": lambda lp, sock: lp.run_until_complete(lp.create_future()),
    "run_in_executor": lambda lp, sock: lp.run_in_executor(None, int),
    "add_reader": lambda lp, sock: lp.add_reader(sock, lambda: None),
    "add_writer": lambda lp, sock: lp.add_writer(sock, lambda: None),
    "add_signal_handler": lambda lp, sock: lp.add_signal_handler(10, lambda: None),
}


@pytest.mark.parametrize("method", list(CLOSED_LOOP_CALLS))
def test_closed_loop_raises(loop, method):
    a, b = socket.socketpair()
    try:
        loop.close()
        with pytest.raises(RuntimeError, match="^Event loop is closed$"):
            CLOSED_LOOP_CALLS[method](loop, a)
    finally:
        a.close()
        b.close()


def test_closed_loop_create_task_raises(loop):
    loop.close()
    coro = coro_function()
    try:
        with pytest.raises(RuntimeError, match="^Event loop is closed$"):
            loop.create_task(coro)
    finally:
        coro.close()


def test_closed_loop_still_answers_queries(loop):
    loop.close()
    assert loop.is_closed()
    assert not loop.is_running()
    assert isinstance(loop.time(), float)
    assert loop.get_debug() in (True, False)
    loop.close()


# -- rows: submit after shutdown, initializer failure (executor) -------------------------


def test_initializer_failure_through_run_in_executor(loop, pool_cls):
    def bad_init():
        raise OSError("cannot initialise")

    pool = pool_cls(max_workers=1, initializer=bad_init)

    async def main():
        with pytest.raises(weaveloop.BrokenThreadPool):
            await loop.run_in_executor(pool, int)
        return "loop still fine"

    try:
        assert run(loop, main()) == "loop still fine"
    finally:
        pool.shutdown(wait=True)


def test_initializer_not_callable(pool_cls):
    with pytest.raises(TypeError):
        pool_cls(max_workers=1, initializer=42)


@pytest.mark.parametrize("workers", [0, -1, 0.0, -1.5, decimal.Decimal(0)])
def test_max_workers_must_be_positive(pool_cls, workers):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        pool_cls(max_workers=workers)


@pytest.mark.parametrize(
    "workers", [2.5, decimal.Decimal(2), fractions.Fraction(3, 2), 2**63, float("inf")]
)
def test_max_workers_may_be_any_positive_number(pool_cls, workers):
    # The stdlib pool compares its thread count with it, whatever number it is.
    pool = pool_cls(max_workers=workers)
    try:
        assert pool.submit(int, "7").result(SAFETY) == 7
    finally:
        pool.shutdown()


# -- fd watcher bad input -------------------------------------------------------------------


@pytest.mark.parametrize("add", ["add_reader", "add_writer"])
def test_invalid_file_objects(loop, add):
    with pytest.raises(ValueError):
        getattr(loop, add)(-1, lambda: None)
    with pytest.raises(ValueError):
        getattr(loop, add)(NotCallable(), lambda: None)


@pytest.mark.parametrize("add", ["add_reader", "add_writer"])
def test_closed_fd_is_refused(loop, add):
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError):
        getattr(loop, add)(fd, lambda: None)
