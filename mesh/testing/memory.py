"""In-process doubles of the trio ports: a memory network with `Transport`s, and a discovery hub.

`MemoryNetwork` holds listeners by (host, port). `MemoryTransport(network, host)` is one host on
it: `serve` binds (port 0 picks a free one), `connect` to an address nobody serves raises
`ConnectionRefusedError` (an OSError) at once. Streams are `MemoryStream` pairs: half-closeable,
with a bounded buffer per direction (`buffer_bytes_max`), so a fast sender blocks like it would
on a full TCP window. Both pass `tests/transport_conformance.py`, like `TcpTransport`.
"""

from __future__ import annotations

import errno
import itertools
import logging
import operator

import trio

from mesh.core.events import Address
from mesh.drivers.discovery import Discovered, mesh_hash
from mesh.ports import StreamHandler
from mesh.wire.messages import PROTOCOL_VERSION

log = logging.getLogger("mesh.memory")

BUFFER_BYTES_MAX = 64 * 1024
RECEIVE_BYTES_DEFAULT = 64 * 1024
EPHEMERAL_PORT_FIRST = 40000
ANY_HOSTS = ("", "0.0.0.0", "::")


# ---- streams -------------------------------------------------------------------------------------


class _Pipe:
    """One direction of a stream: a bounded byte buffer between one sender and one receiver."""

    def __init__(self, buffer_bytes_max: int) -> None:
        self.buffer = bytearray()  # bytes sent, not yet received
        self.buffer_bytes_max = buffer_bytes_max  # the most `buffer` holds
        self.eof = False  # the sender is done (send_eof or aclose): b"" after the buffer drains
        self.receiver_closed = False  # the receiver closed: sends break
        self.lot = trio.lowlevel.ParkingLot()  # tasks waiting for any change

    @property
    def room(self) -> int:
        return self.buffer_bytes_max - len(self.buffer)

    def changed(self) -> None:
        self.lot.unpark_all()


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of an in-process byte stream with bounded buffers."""

    def __init__(self, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self._sending = False  # send_all, wait_send_all_might_not_block or send_eof running
        self._receiving = False

    def _enter_send(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True

    def _check_send(self) -> None:
        if self._closed or self._out.eof:
            raise trio.ClosedResourceError("this stream was closed for sending")
        if self._out.receiver_closed:
            raise trio.BrokenResourceError("the peer closed the stream")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._enter_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            data = bytes(data)
            self._check_send()
            sent = 0
            while sent < len(data):
                if self._out.room <= 0:
                    await self._out.lot.park()
                    self._check_send()
                    continue
                chunk = data[sent : sent + self._out.room]
                self._out.buffer += chunk
                sent += len(chunk)
                self._out.changed()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._enter_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed")
                if self._out.room > 0 or self._out.receiver_closed or self._out.eof:
                    break
                await self._out.lot.park()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        self._enter_send()
        try:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            self._out.eof = True
            self._out.changed()
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            data = await self._wait_data(max_bytes or RECEIVE_BYTES_DEFAULT)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def _wait_data(self, max_bytes: int) -> bytes:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            if self._in.buffer:
                data = bytes(self._in.buffer[:max_bytes])
                del self._in.buffer[:max_bytes]
                self._in.changed()
                return data
            if self._in.eof:
                return b""
            await self._in.lot.park()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.receiver_closed = True
            self._in.buffer.clear()
            self._out.changed()
            self._in.changed()
        await trio.lowlevel.checkpoint()


def memory_stream_pair(buffer_bytes_max: int = BUFFER_BYTES_MAX) -> tuple[MemoryStream, MemoryStream]:
    """Two connected `MemoryStream`s, each direction buffering at most `buffer_bytes_max`."""
    forward, backward = _Pipe(buffer_bytes_max), _Pipe(buffer_bytes_max)
    return MemoryStream(forward, backward), MemoryStream(backward, forward)


# ---- transport -----------------------------------------------------------------------------------


class _Listener:
    """A served address: where accepted streams go."""

    def __init__(self, handler: StreamHandler, nursery: trio.Nursery | None) -> None:
        self.handler = handler  # the serve() caller's handler
        self.nursery = nursery  # runs one task per accepted stream (None until serving)


class MemoryNetwork:
    """Addresses -> listeners, shared by every `MemoryTransport` of one test."""

    def __init__(self, buffer_bytes_max: int = BUFFER_BYTES_MAX) -> None:
        self.buffer_bytes_max = buffer_bytes_max
        self._listeners: dict[Address, _Listener] = {}
        self._ports = itertools.count(EPHEMERAL_PORT_FIRST)
        self.connections = 0  # streams opened so far

    def free_port(self, host: str) -> int:
        while True:
            port = next(self._ports)
            if (host, port) not in self._listeners:
                return port

    def bind(self, address: Address, listener: _Listener) -> None:
        if address in self._listeners:
            raise OSError(errno.EADDRINUSE, f"address already in use: {address}")
        self._listeners[address] = listener

    def unbind(self, address: Address) -> None:
        self._listeners.pop(address, None)

    def open(self, source_host: str, address: Address) -> trio.abc.Stream:
        """A stream to whoever serves `address`; ConnectionRefusedError if nobody does."""
        listener = self._listeners.get(address)
        if listener is None or listener.nursery is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"connection refused: {address}")
        client, server = memory_stream_pair(self.buffer_bytes_max)
        remote = (source_host, self.free_port(source_host))
        self.connections += 1
        listener.nursery.start_soon(_run_handler, listener.handler, server, remote)
        return client


class MemoryTransport:
    """One host on a `MemoryNetwork`; the `Transport` protocol without sockets."""

    def __init__(self, network: MemoryNetwork, host: str = "10.0.0.1") -> None:
        self.network = network
        self.host = host

    async def connect(self, address: Address, timeout_s: float) -> trio.abc.Stream:
        with trio.fail_after(timeout_s):
            await trio.lowlevel.checkpoint()
            return self.network.open(self.host, (address[0], int(address[1])))

    async def serve(self, address: Address, handler: StreamHandler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = address
        host = self.host if host in ANY_HOSTS else host
        bound = (host, port or self.network.free_port(host))
        listener = _Listener(handler, None)
        self.network.bind(bound, listener)  # before the nursery, so EADDRINUSE is a plain OSError
        try:
            async with trio.open_nursery() as nursery:
                listener.nursery = nursery
                task_status.started(bound)
                await trio.sleep_forever()
        finally:
            self.network.unbind(bound)


async def _run_handler(handler: StreamHandler, stream: trio.abc.Stream, remote: Address) -> None:
    try:
        await handler(stream, remote)
    except Exception as exc:  # one connection's failure never stops the listener
        log.warning("memory.handler_failed remote=%s error=%r", remote, exc)
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


# ---- discovery -----------------------------------------------------------------------------------


class MemoryDiscoveryHub:
    """The 'LAN' that `MemoryDiscovery` instances announce on and browse."""

    def __init__(self) -> None:
        self._announced: dict[str, Discovered] = {}  # node id -> its announcement
        self._changed = trio.lowlevel.ParkingLot()
        self.version = 0  # bumped on every change

    def announce(self, announcement: Discovered) -> None:
        self._announced[announcement.node_id] = announcement
        self._bump()

    def withdraw(self, node_id: str) -> None:
        self._announced.pop(node_id, None)
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.unpark_all()

    def announcements(self) -> list[Discovered]:
        return [self._announced[node] for node in sorted(self._announced)]

    async def wait_changed(self) -> None:
        await self._changed.park()


class MemoryDiscovery:
    """The `Discovery` port on a `MemoryDiscoveryHub`: reports `Discovered` records, like mDNS."""

    def __init__(self, hub: MemoryDiscoveryHub, node_id: str, mesh_id: str, address: Address) -> None:
        self.hub = hub
        self.node_id = node_id
        self._ours = Discovered(
            node_id=node_id, mesh_hash=mesh_hash(mesh_id), addresses=(address[0],), port=address[1],
            protocol_version=PROTOCOL_VERSION,
        )

    async def run(self, found: trio.MemorySendChannel, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Announce us; send every other same-mesh announcement into `found` once, until cancelled."""
        self.hub.announce(self._ours)
        reported: set[Discovered] = set()
        try:
            task_status.started()
            while True:
                version = self.hub.version
                for other in self.hub.announcements():
                    if other.node_id != self.node_id and other.mesh_hash == self._ours.mesh_hash \
                            and other not in reported:
                        reported.add(other)
                        await found.send(other)
                if version == self.hub.version:
                    await self.hub.wait_changed()
        finally:
            self.hub.withdraw(self.node_id)


__all__ = [
    "MemoryDiscovery", "MemoryDiscoveryHub", "MemoryNetwork", "MemoryStream", "MemoryTransport",
    "memory_stream_pair",
]
