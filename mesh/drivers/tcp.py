"""TCP transport for trio: the `Transport` the agent uses on real networks."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
from pathlib import Path

import trio

from mesh.core.events import Address
from mesh.ports import StreamHandler

log = logging.getLogger("mesh.tcp")

PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PICKED_PORT = 10000
UNSENT_BYTES_MAX = 256 * 1024  # TCP_NOTSENT_LOWAT of peer connections (see `_tune`)
_handed: set[int] = set()  # ports this process picked: none twice before its listener binds it


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A TCP port free on `host` now, for a process started next to listen on (`mesh demo`, the
    tests and benches). Picked below the kernel's ephemeral range: a port the kernel handed out
    for `bind(0)` is one it may hand again to any outgoing connection before the listener binds
    it (seen as "already in use" about once in a few hundred starts)."""
    try:
        ephemeral_low = int(PORT_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = max(ephemeral_low - 1, LOWEST_PICKED_PORT + 1000)
    for _ in range(attempts):
        port = random.randint(LOWEST_PICKED_PORT, high)
        if port in _handed:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed.add(port)
        return port
    with socket.socket() as probe:  # a crowded range: let the kernel choose
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _tune(stream: trio.SocketStream) -> None:
    """Let the kernel hold up to UNSENT_BYTES_MAX of a peer connection's bytes not yet sent
    (trio sets 16 KiB on every stream). With 16 KiB a 1 MiB chunk record went into the socket
    ~64 KiB per wake-up: on the capped lab a seed's writer waited for room 15 times per MiB,
    each wait an epoll change, a wake-up and a trio step. The cost of a larger queue is latency
    for what is sent after it: a request or HaveUpdate written behind it waits for its bytes to
    leave (~10 ms at 200 Mbit/s, ~100 ms on a 20 Mbit/s WAN link), next to the up to 1 MiB of
    chunk record it may already wait behind in the writer."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux or macOS: the kernel's default
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_BYTES_MAX)


class TcpTransport:
    """Plain TCP streams (the secure channel runs on top)."""

    async def connect(self, address: Address, timeout_s: float) -> trio.abc.Stream:
        host, port = address
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port)
        _tune(stream)
        return stream

    async def serve(self, address: Address, handler: StreamHandler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = address
        try:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
        except OSError as exc:
            exc.mesh_address = address  # type: ignore[attr-defined]  # `mesh up` names it in one line
            raise
        bound = listeners[0].socket.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, handler, nursery)
            task_status.started((bound[0], bound[1]))

    async def _accept_loop(self, listener: trio.SocketListener, handler: StreamHandler, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                    log.warning("tcp.accept_failed error=%s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_run_handler, handler, stream)


async def _run_handler(handler: StreamHandler, stream: trio.SocketStream) -> None:
    _tune(stream)
    try:
        peer = stream.socket.getpeername()
        remote = (peer[0], peer[1])
    except OSError:
        remote = None
    try:
        await handler(stream, remote)
    except Exception as exc:  # one connection's failure never stops the listener
        log.warning("tcp.handler_failed remote=%s error=%r", remote, exc)
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
