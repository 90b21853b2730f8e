"""One suite every `Transport` passes (TCP on loopback, the in-process memory network).

Use it from a test module:

    class TestTcp(TransportConformance):
        @pytest.fixture
        def transport_pair(self):
            return TransportPair(server=TcpTransport(), client=TcpTransport(), listen=("127.0.0.1", 0))

Every test runs inside `trio.run`; nothing here mocks the transport under test.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from mesh.ports import Transport

CONNECT_TIMEOUT_S = 5.0
PROMPT_S = 3.0  # "promptly": a refused connect must not take longer than this
LARGE_TRANSFER_BYTES = 4 * 1024 * 1024
READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class TransportPair:
    """What a conformance test needs: a serving transport, a dialing one, where to listen."""

    server: Transport  # the transport that serves
    client: Transport  # the transport that connects
    listen: tuple[str, int]  # the address to serve on (port 0: any free port)


async def _serving(nursery: trio.Nursery, pair: TransportPair, handler) -> tuple[str, int]:
    return await nursery.start(pair.server.serve, pair.listen, handler)


async def _stream_pair(nursery: trio.Nursery, pair: TransportPair) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A connected (client, server) stream pair through the transport."""
    send, receive = trio.open_memory_channel(1)

    async def handler(stream: trio.abc.Stream, remote) -> None:
        await send.send(stream)
        await trio.sleep_forever()  # keep the stream open; the test closes it

    address = await _serving(nursery, pair, handler)
    client = await pair.client.connect(address, CONNECT_TIMEOUT_S)
    server = await receive.receive()
    return client, server


async def _receive_exactly(stream: trio.abc.Stream, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        chunk = await stream.receive_some(min(READ_BYTES, count - len(got)))
        assert chunk, f"EOF after {len(got)} of {count} bytes"
        got += chunk
    return bytes(got)


def run(test: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run `test(nursery)` under trio; cancel the servers it started when it returns."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(60):
                await test(nursery)
            nursery.cancel_scope.cancel()

    trio.run(main)


class TransportConformance:
    """Subclass and provide a `transport_pair` fixture returning a `TransportPair`."""

    def test_trio_two_way_stream_checks(self, transport_pair: TransportPair) -> None:
        async def test(nursery: trio.Nursery) -> None:
            async def maker():
                return await _stream_pair(nursery, transport_pair)

            client, server = await maker()
            await client.aclose()
            await server.aclose()
            if isinstance(client, trio.abc.HalfCloseableStream):
                await trio.testing.check_half_closeable_stream(maker, None)
            else:
                await trio.testing.check_two_way_stream(maker, None)

        run(test)

    def test_serve_reports_bound_address(self, transport_pair: TransportPair) -> None:
        async def test(nursery: trio.Nursery) -> None:
            async def handler(stream, remote) -> None:
                await stream.send_all(b"hi")

            address = await _serving(nursery, transport_pair, handler)
            host, port = address
            assert isinstance(host, str) and host
            assert isinstance(port, int) and port > 0
            if transport_pair.listen[1]:
                assert port == transport_pair.listen[1]
            stream = await transport_pair.client.connect(address, CONNECT_TIMEOUT_S)
            assert await _receive_exactly(stream, 2) == b"hi"
            await stream.aclose()

        run(test)

    def test_echo_both_ways(self, transport_pair: TransportPair) -> None:
        async def test(nursery: trio.Nursery) -> None:
            remotes = []

            async def echo(stream, remote) -> None:
                remotes.append(remote)
                while data := await stream.receive_some(READ_BYTES):
                    await stream.send_all(data.upper())

            address = await _serving(nursery, transport_pair, echo)
            stream = await transport_pair.client.connect(address, CONNECT_TIMEOUT_S)
            for message in (b"hello", b"x" * 10_000, b"bye"):
                await stream.send_all(message)
                assert await _receive_exactly(stream, len(message)) == message.upper()
            await stream.aclose()
            assert remotes and remotes[0] is not None and remotes[0][1] > 0

        run(test)

    def test_large_transfer_intact(self, transport_pair: TransportPair) -> None:
        payload = os.urandom(LARGE_TRANSFER_BYTES)

        async def test(nursery: trio.Nursery) -> None:
            received = trio.Event()
            got = []

            async def sink(stream, remote) -> None:
                got.append(await _receive_exactly(stream, len(payload)))
                await stream.send_all(b"ok")
                received.set()

            address = await _serving(nursery, transport_pair, sink)
            stream = await transport_pair.client.connect(address, CONNECT_TIMEOUT_S)
            view = memoryview(payload)
            for start in range(0, len(payload), 300_000):  # uneven writes
                await stream.send_all(view[start : start + 300_000])
            assert await _receive_exactly(stream, 2) == b"ok"
            await received.wait()
            assert got[0] == payload
            await stream.aclose()

        run(test)

    def test_connect_to_closed_address_fails_promptly(self, transport_pair: TransportPair) -> None:
        async def test(nursery: trio.Nursery) -> None:
            async def handler(stream, remote) -> None:
                pass

            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    address = await _serving(inner, transport_pair, handler)
                    inner.cancel_scope.cancel()
            assert not scope.cancelled_caught
            started = trio.current_time()
            with pytest.raises((OSError, trio.TooSlowError)):
                await transport_pair.client.connect(address, PROMPT_S)
            assert trio.current_time() - started <= PROMPT_S + 0.5

        run(test)

    def test_failing_handler_does_not_stop_listener(self, transport_pair: TransportPair) -> None:
        async def test(nursery: trio.Nursery) -> None:
            calls = []

            async def handler(stream, remote) -> None:
                calls.append(remote)
                if len(calls) == 1:
                    raise RuntimeError("handler bug")
                await stream.send_all(b"served")

            address = await _serving(nursery, transport_pair, handler)
            first = await transport_pair.client.connect(address, CONNECT_TIMEOUT_S)
            assert await _read_to_eof(first) == b""  # the failed handler's stream is closed
            await first.aclose()
            second = await transport_pair.client.connect(address, CONNECT_TIMEOUT_S)
            assert await _receive_exactly(second, 6) == b"served"
            await second.aclose()
            assert len(calls) == 2

        run(test)

    def test_close_gives_eof_on_the_other_side(self, transport_pair: TransportPair) -> None:
        async def test(nursery: trio.Nursery) -> None:
            client, server = await _stream_pair(nursery, transport_pair)
            await client.send_all(b"last words")
            await client.aclose()
            assert await _read_to_eof(server) == b"last words"
            assert await server.receive_some(10) == b""  # EOF stays EOF
            await server.aclose()

            client, server = await _stream_pair(nursery, transport_pair)
            await server.aclose()
            assert await _read_to_eof(client) == b""
            await client.aclose()

        run(test)


async def _read_to_eof(stream: trio.abc.Stream) -> bytes:
    got = bytearray()
    while chunk := await stream.receive_some(READ_BYTES):
        got += chunk
    return bytes(got)
