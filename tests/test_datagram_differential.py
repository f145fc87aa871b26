"""Random datagram exchanges must leave the stock loop's trace on weaveloop.

Two connected datagram endpoints on one loop (named Unix datagram sockets, or two
loopback UDP sockets connected to each other) and a third UDP endpoint, connected to a
port nobody listens on, are driven by a seeded program: ``sendto`` to the peer (with
and without an address), from the third endpoint (the kernel answers with an error),
with bad arguments, bursts larger than the socket buffer, ``close``, ``abort``,
buffer-size probes, interleaved with a random number of loop iterations; the protocols
react to what they receive. The trace records every protocol callback with its data and
address, every exception-handler call, what each call raised and asyncio's log
messages, and must match the stock loop's step for step: the kernel hands a datagram to
its peer (or an ICMP error back) at once, so what the stock loop reads in each
iteration is fixed.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import tempfile

import pytest
from _differential import End, Recording, assert_programs_agree, chunks, spin, tracer, without

SEEDS = range(400)

OPS = [
    "send",
    "send_addr",
    "send_nowhere",
    "send_bad",
    "burst",
    "limits",
    "close",
    "abort",
    "probe",
]
WEIGHTS = [12, 4, 2, 1, 1, 1, 1, 1, 3]


class Program:
    def __init__(self, seed: int, family: str) -> None:
        rng = random.Random(seed)
        self.family = family
        ops, weights = (OPS, WEIGHTS) if family == "udp" else without(OPS, WEIGHTS, "send_nowhere")
        self.steps = [
            (rng.randint(0, 3), rng.choice("AB"), rng.choices(ops, weights)[0])
            for _ in range(rng.randint(3, 25))
        ]
        self.reactions = {
            side: [
                rng.choice([None, None, None, "send", "send", "close", "probe"]) for _ in range(60)
            ]
            for side in "AB"
        }


class Endpoint(End, asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr) -> None:
        self.world.log.append((self.name, "datagram", data[:16], len(data), self.world.who(addr)))
        self.world.react(self.name)

    def error_received(self, exc) -> None:
        self.world.log.append((self.name, "error", type(exc).__name__, exc.errno))


class World(Recording):
    def __init__(self, loop, program: Program) -> None:
        super().__init__(loop)
        self.directory = tempfile.TemporaryDirectory()
        self.program = program
        self.transports: dict[str, asyncio.DatagramTransport] = {}
        self.lost = {side: loop.create_future() for side in "ABC"}
        self.reactions = {side: iter(program.reactions[side]) for side in "AB"}
        self.names: dict = {}
        self.sent = 0

    def who(self, addr) -> str:
        """Addresses differ from run to run (ports): log which end they name."""
        return self.names.get(addr, repr(addr) if not addr else "somewhere")

    def do(self, side: str, op: str, reacting: bool = False) -> None:
        transport = self.transports[side]
        peer = self.addresses["B" if side == "A" else "A"]
        self.log.append((side, "op", op, reacting))
        try:
            if op in ("send", "send_addr", "burst"):
                # A burst overflows the receiver: UDP drops what does not fit, a Unix
                # datagram socket refuses it and the transport keeps the rest.
                udp = self.program.family == "udp"
                count = (40 if udp else 600) if op == "burst" else 1
                size = 60_000 if op == "burst" and udp else 200
                for _ in range(count):
                    self.sent += 1
                    data = b"%s%d;" % (side.encode(), self.sent)
                    data += b"." * (size - len(data))
                    if op == "send_addr":
                        transport.sendto(data, peer)
                    else:
                        transport.sendto(data)
            elif op == "send_nowhere":
                self.transports["C"].sendto(b"lost")
            elif op == "send_bad":
                transport.sendto("text, not bytes")
            elif op == "limits":
                transport.set_write_buffer_limits(high=4096)
                self.log.append((side, "limits", transport.get_write_buffer_limits()))
            elif op == "close":
                transport.close()
            elif op == "abort":
                transport.abort()
            elif op == "probe":
                state = (transport.is_closing(), transport.get_write_buffer_size())
                self.log.append((side, "state", *state))
        except Exception as exc:  # noqa: BLE001 - what an operation raises is the trace
            self.log.append((side, "raised", type(exc).__name__, str(exc)))

    async def main(self) -> None:
        loop = self.loop
        if self.program.family == "unix":
            # Named ends: an unnamed pair's peer address is "" and the stock transport
            # then refuses every send without an address (TypeError; weaveloop too).
            a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            a.bind(os.path.join(self.directory.name, "a"))
            b.bind(os.path.join(self.directory.name, "b"))
        else:
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        b.connect(a.getsockname())
        self.addresses = {"A": a.getsockname(), "B": b.getsockname()}
        self.names = {a.getsockname(): "A", b.getsockname(): "B"}
        await loop.create_datagram_endpoint(lambda: Endpoint(self, "A"), sock=a)
        await loop.create_datagram_endpoint(lambda: Endpoint(self, "B"), sock=b)
        # A third endpoint, connected to a port that nobody listens on: the kernel
        # answers its datagrams with an error (a connected socket's, for
        # error_received). The port is held until C is bound, so C cannot get it.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.nowhere = probe.getsockname()
            sock_c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock_c.bind(("127.0.0.1", 0))
        sock_c.connect(self.nowhere)
        await loop.create_datagram_endpoint(lambda: Endpoint(self, "C"), sock=sock_c)
        await self.play(self.program.steps)
        await spin(4)
        await self.settle(self.transports, self.lost)

    def release(self) -> None:
        self.directory.cleanup()


trace = tracer(World, log_messages=True)


family = pytest.mark.parametrize("family", ["unix", "udp"])


@chunks(2)
@family
def test_random_exchanges_leave_the_stock_loops_trace(family, chunk, monkeypatch):
    seeds = chunk.seeds(SEEDS, monkeypatch)
    programs = ((f"{family} seed {s}", Program(s, family)) for s in seeds)
    assert_programs_agree(trace, programs)


@family
def test_the_exchanges_exercise_every_callback(family):
    """The generator is not vacuous: across the seeds, each kind of event happens."""
    seen: set[str] = set()
    for seed in SEEDS:
        for entry in trace("asyncio", Program(seed, family)):
            seen.add(entry[1] if entry[0] in "ABC" else entry[0])
            if entry[0] == "C":
                seen.add(f"C {entry[1]}")
            if entry[1] in ("raised", "error"):
                seen.add(f"{entry[1]} {entry[2]}")
    expected = {"made", "datagram", "lost", "op", "state", "raised TypeError", "settle close"}
    if family == "udp":
        expected |= {"error ConnectionRefusedError", "C error"}
    else:
        expected |= {"pause_writing", "resume_writing"}
    assert expected <= seen, f"never seen: {sorted(expected - seen)}"
