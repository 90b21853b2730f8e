"""Every Transport passes the same conformance suite; the memory stream passes trio's own checks."""

from __future__ import annotations

import errno
import socket

import pytest
import trio
import trio.testing

from mesh.drivers.tcp import UNSENT_BYTES_MAX, TcpTransport
from mesh.testing.memory import (
    MemoryDiscovery, MemoryDiscoveryHub, MemoryNetwork, MemoryTransport, memory_stream_pair,
)
from transport_conformance import TransportConformance, TransportPair


class TestTcpTransport(TransportConformance):
    @pytest.fixture
    def transport_pair(self) -> TransportPair:
        return TransportPair(server=TcpTransport(), client=TcpTransport(), listen=("127.0.0.1", 0))


class TestMemoryTransport(TransportConformance):
    @pytest.fixture
    def transport_pair(self) -> TransportPair:
        network = MemoryNetwork(buffer_bytes_max=16 * 1024)
        return TransportPair(
            server=MemoryTransport(network, "10.0.0.1"), client=MemoryTransport(network, "10.0.0.2"),
            listen=("10.0.0.1", 0),
        )


BUFFER = 1024


async def _pair():
    return memory_stream_pair(BUFFER)


async def _clogged_pair():
    left, right = memory_stream_pair(BUFFER)
    await left.send_all(b"x" * BUFFER)  # fills the buffer exactly; the next send blocks
    await right.send_all(b"x" * BUFFER)
    return left, right


def test_memory_stream_passes_trio_checks_including_clogged() -> None:
    async def main() -> None:
        await trio.testing.check_half_closeable_stream(_pair, _clogged_pair)

    trio.run(main)


def test_memory_stream_buffer_is_bounded() -> None:
    async def main() -> None:
        left, right = memory_stream_pair(BUFFER)
        with trio.move_on_after(1) as scope:
            await left.send_all(b"y" * (BUFFER + 1))
        assert scope.cancelled_caught  # the last byte found no room

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_memory_refused_connect_is_an_oserror() -> None:
    async def main() -> None:
        transport = MemoryTransport(MemoryNetwork(), "10.0.0.9")
        with pytest.raises(OSError) as raised:
            await transport.connect(("10.0.0.1", 7450), 1.0)
        assert raised.value.errno == errno.ECONNREFUSED

    trio.run(main)


def test_memory_serve_twice_on_one_address_is_refused() -> None:
    async def main() -> None:
        transport = MemoryTransport(MemoryNetwork(), "10.0.0.1")

        async def handler(stream, remote) -> None:
            pass

        async with trio.open_nursery() as nursery:
            await nursery.start(transport.serve, ("10.0.0.1", 7450), handler)
            with pytest.raises(OSError):
                await nursery.start(transport.serve, ("10.0.0.1", 7450), handler)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_memory_discovery_reports_same_mesh_peers_only() -> None:
    async def main() -> None:
        hub = MemoryDiscoveryHub()
        node = lambda c: c * 52  # noqa: E731 - any distinct strings serve as node ids here
        ours = MemoryDiscovery(hub, node("a"), "mesh-one", ("10.0.0.1", 7450))
        peer = MemoryDiscovery(hub, node("b"), "mesh-one", ("10.0.0.2", 7450))
        stranger = MemoryDiscovery(hub, node("c"), "mesh-two", ("10.0.0.3", 7450))
        send, receive = trio.open_memory_channel(8)
        sink_send, _sink_receive = trio.open_memory_channel(8)
        async with trio.open_nursery() as nursery:
            await nursery.start(stranger.run, sink_send)
            await nursery.start(ours.run, send)
            await nursery.start(peer.run, sink_send.clone())
            found = await receive.receive()
            assert found.node_id == node("b")
            assert found.addresses == ("10.0.0.2",) and found.port == 7450
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()  # the other mesh's node was never reported
            nursery.cancel_scope.cancel()
        assert hub.announcements() == []  # everyone withdrew

    trio.run(main)


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="this kernel has no TCP_NOTSENT_LOWAT")
def test_tcp_connections_take_a_chunk_record_in_large_writes_at_both_ends() -> None:
    """trio sets 16 KiB of not-yet-sent bytes per socket, which made a capped seed wake ~15 times
    per MiB it sent; both the dialled and the accepted end of ours allow UNSENT_BYTES_MAX."""
    async def main() -> None:
        transport = TcpTransport()
        accepted: list[int] = []
        done = trio.Event()

        async def handler(stream, remote) -> None:
            accepted.append(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT))
            done.set()

        async with trio.open_nursery() as nursery:
            address = await nursery.start(transport.serve, ("127.0.0.1", 0), handler)
            stream = await transport.connect(address, timeout_s=5)
            dialled = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
            await done.wait()
            await stream.aclose()
            nursery.cancel_scope.cancel()
        assert dialled == accepted[0] == UNSENT_BYTES_MAX

    trio.run(main)
