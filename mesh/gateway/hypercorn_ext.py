"""What the gateway adds to hypercorn's trio worker, applied once by `install()` (from
`serve_http`). Each part replaces one or two of its methods (part 4: the class of one attribute);
a hypercorn without those internals is left as it is (and `available` stays false).

1. **A connection the client closed is closed at once** (`TCPServer._read_data`). Hypercorn's
   `TCPServer.run` reads until end of file and then leaves the connection's task group, which
   waits for the keep-alive timer still running in it: every connection a client closed after
   its response stayed open (CLOSE-WAIT, a file descriptor and ~40 objects the collector walks)
   for `keep_alive_timeout` (5 s). At 150 fresh connections a second that is ~750 open sockets,
   and a flood of short connections runs the process out of file descriptors. Stopping the timer
   once reading ended lets the task group, and the connection, close at once (what the asyncio
   worker does).

2. **File bodies from the page cache to the socket**: ASGI's `http.response.zerocopysend`
   extension, which hypercorn does not implement. The gateway checks every chunk before it sends
   a byte of it (mesh.gateway.app); what it sent then was a copy of the checked buffer, handed to
   `send()`: for a large file, the copy and the user-to-kernel copy were half the agent's CPU.
   Now the checked chunk's still-open file goes out with `os.sendfile`. A `FileSpan` (descriptor,
   offset, count) travels where a body's bytes would:
   - `HTTPStream.app_send` turns the ASGI message into a body event holding the span;
   - `H11Protocol._send_h11_event` frames it with h11's `send_with_data_passthrough`, made for
     this (h11 counts the span's length against Content-Length and never reads it);
   - `TCPServer.protocol_send` writes it under the connection's send lock: `os.sendfile` on a
     plain TCP socket, read and sent in pieces on TLS (where the bytes must be encrypted anyway).
   HTTP/2 is not taught: `available(scope)` is false there, and the app sends copies.

3. **A response's head leaves with its first body bytes** (`H11Protocol._send_h11_event`).
   Hypercorn wrote the status line and headers, the body, and the (empty) end of the message as
   three writes: two system calls and two TCP segments for a thumbnail. A response that declares
   its Content-Length now holds its head until the body's first bytes (up to COALESCE_BYTES of
   them are joined to it) or its end, and sends nothing for an empty end. Responses without a
   length (event streams) send their head at once, as before.

4. **One keep-alive timer per connection, not one per request** (`TCPServer.idle_task`).
   Hypercorn stopped its idle timer when a request came and started a new timer task when the
   response ended: ~70 us of CPU per request on a kept connection (a lock twice, a task spawned
   with `nursery.start`, the old one cancelled), an eighth of a thumbnail's whole cost. `IdleTimer`
   keeps one task per connection waiting in a cancel scope whose deadline it moves: now plus
   `keep_alive_timeout` when the connection goes idle, never while a request runs. At the
   deadline (or when the worker terminates) it closes the connection as hypercorn's timer did.
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass

import trio

ZEROCOPY_SEND = "http.response.zerocopysend"
TLS_PIECE_BYTES = 256 * 1024  # a span goes to a TLS stream in reads of this size
COALESCE_BYTES = 64 * 1024  # a held response head is joined to first body bytes up to this size
_HTTP1 = ("1.0", "1.1")
_installed = False


@dataclass(frozen=True)
class FileSpan:
    """`count` bytes of open file `fd` from `offset`: a body piece h11 frames without reading."""

    fd: int
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


def available(scope) -> bool:
    """Whether a response to this request may send `http.response.zerocopysend` messages."""
    return _installed and scope.get("http_version") in _HTTP1


def install() -> bool:
    """Apply the three parts (once); whether the zero-copy send is available."""
    global _installed
    if _installed:
        return True
    _close_on_peer_eof()
    _one_idle_timer()
    try:
        import h11
        from hypercorn.events import Closed, RawData
        from hypercorn.protocol import h11 as h11_protocol
        from hypercorn.protocol import http_stream
        from hypercorn.protocol.events import Body
        from hypercorn.trio import tcp_server
        from hypercorn.utils import suppress_body

        stream_class, protocol_class = http_stream.HTTPStream, h11_protocol.H11Protocol
        server_class, responding = tcp_server.TCPServer, http_stream.ASGIHTTPState.RESPONSE
        app_send, send_event = stream_class.app_send, protocol_class._send_h11_event
        protocol_send = server_class.protocol_send
    except (ImportError, AttributeError):
        return False

    async def app_send_span(self, message) -> None:
        if message is None or message.get("type") != ZEROCOPY_SEND or self.state != responding:
            await app_send(self, message)
            return
        span = _span(message)
        if span.count and not suppress_body(self.scope["method"], int(self.response["status"])):
            await self.send(Body(stream_id=self.stream_id, data=span))
        if not message.get("more_body", False):
            await self._send_closed()

    def framed(self, event, passthrough: bool = False):
        """What h11 makes of the event (None if our side already failed, as hypercorn does)."""
        try:
            if passthrough:
                return self.connection.send_with_data_passthrough(event)
            return self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return None

    async def send_event_joined(self, event) -> None:
        kind = type(event)
        if kind is h11.Response and any(name == b"content-length" for name, _ in event.headers):
            self._mesh_head = framed(self, event)  # held for the first body bytes (part 3)
            return
        head, self._mesh_head = self._mesh_head, None
        if kind is h11.Data and isinstance(event.data, FileSpan):
            pieces = framed(self, event, passthrough=True)
            if pieces is None:
                return
            if head:
                await self.send(RawData(data=head))
            for piece in pieces:  # the span itself, between a chunk's framing if the body is chunked
                await self.send(RawData(data=piece))
            return
        if kind is not h11.Data and kind is not h11.EndOfMessage:
            if head:
                await self.send(RawData(data=head))
            await send_event(self, event)
            return
        data = framed(self, event)
        if data is None:
            return
        if head and len(data) <= COALESCE_BYTES:
            head, data = None, head + data
        if head:
            await self.send(RawData(data=head))
        if data:  # the end of a body of known length is no bytes: no write for it
            await self.send(RawData(data=data))

    async def protocol_send_span(self, event) -> None:
        if type(event) is not RawData or not isinstance(event.data, FileSpan):
            await protocol_send(self, event)
            return
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True):  # as hypercorn sends any bytes
                    await _send_span(self.stream, event.data)
            except FileEndedError:
                await self.stream.aclose()  # nothing more may follow a short body: the client
                await self.protocol.handle(Closed())  # sees the connection end before it
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())

    stream_class.app_send = app_send_span
    protocol_class._send_h11_event = send_event_joined
    protocol_class._mesh_head = None  # a response's framed head, held until its body
    server_class.protocol_send = protocol_send_span
    _installed = True
    return True


def _span(message) -> FileSpan:
    """The message's span: `file` a descriptor or a file object; `offset` and `count` default, as
    the extension says, to the file's position and the rest of it."""
    file = message["file"]
    fd = file if isinstance(file, int) else file.fileno()
    offset = message.get("offset")
    if offset is None:
        offset = os.lseek(fd, 0, os.SEEK_CUR)
    count = message.get("count")
    if count is None:
        count = os.fstat(fd).st_size - offset
    return FileSpan(fd, offset, count)


class FileEndedError(Exception):
    """The file ended before the span did, or could not be read: the response is short, and its
    connection closes."""


async def _send_span(stream, span: FileSpan) -> None:
    """All of the span to the stream; BrokenResourceError if the peer left, FileEndedError if the
    file ended early."""
    if isinstance(stream, trio.SocketStream):
        sock = stream.socket.fileno()
        offset, left = span.offset, span.count
        while left:
            try:
                sent = os.sendfile(sock, span.fd, offset, left)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                    raise trio.BrokenResourceError(str(exc)) from None
                raise FileEndedError(f"reading the file: {exc}") from None  # EIO: end the response short
            if sent == 0:
                raise FileEndedError(f"{left} bytes short")
            offset, left = offset + sent, left - sent
        return
    offset, end = span.offset, span.offset + span.count  # TLS: the bytes must pass through Python
    while offset < end:
        try:
            data = os.pread(span.fd, min(TLS_PIECE_BYTES, end - offset), offset)
        except OSError as exc:
            raise FileEndedError(f"reading the file: {exc}") from None
        if not data:
            raise FileEndedError(f"{end - offset} bytes short")
        await stream.send_all(data)
        offset += len(data)


def _close_on_peer_eof() -> None:
    """Part 1: `TCPServer._read_data` stops the keep-alive timer once reading ended."""
    from hypercorn.trio import tcp_server

    server = getattr(tcp_server, "TCPServer", None)
    read = getattr(server, "_read_data", None)
    if read is None or getattr(read, "_mesh_stops_idle", False):
        return

    async def read_then_stop_idle(self) -> None:
        await read(self)
        idle = getattr(self, "idle_task", None)
        if isinstance(idle, IdleTimer):
            idle.end()  # the connection is over: its timer task leaves (part 4)
        elif idle is not None:
            await idle.stop()

    read_then_stop_idle._mesh_stops_idle = True
    server._read_data = read_then_stop_idle


class IdleTimer:
    """Part 4: what `TCPServer.idle_task` is asked to do (`restart(task_group, action)` when the
    connection goes idle, `stop()` when a request comes), with one task for the connection's life.
    `action` is the server's `_idle_timeout` (`_one_idle_timer` installs this only where it is):
    the timeout and the close are the server's own."""

    def __init__(self) -> None:
        self._scope: trio.CancelScope | None = None  # the waiting task's; its deadline is the idle limit
        self._ended = False

    async def restart(self, task_group, action) -> None:
        server = action.__self__
        timeout = server.config.keep_alive_timeout
        if self._scope is None:
            self._scope = trio.CancelScope()
            task_group._nursery.start_soon(self._wait, server)
        self._scope.deadline = trio.current_time() + (math.inf if timeout is None else timeout)

    async def stop(self) -> None:
        if self._scope is not None:
            self._scope.deadline = math.inf  # busy: no limit until the next restart

    def end(self) -> None:
        """The connection ended: the waiting task returns without closing anything."""
        self._ended = True
        if self._scope is not None:
            self._scope.cancel()

    async def _wait(self, server) -> None:
        with self._scope:
            await server.context.terminated.wait()
        if self._ended:
            return
        with trio.CancelScope(shield=True):  # idle too long, or the worker terminates: close, as hypercorn did
            await server._initiate_server_close()


def _one_idle_timer() -> None:
    """Part 4: TCPServer makes an `IdleTimer` where it made a `TrioSingleTask`."""
    from hypercorn.trio import tcp_server

    server = getattr(tcp_server, "TCPServer", None)
    if getattr(tcp_server, "TrioSingleTask", None) in (None, IdleTimer) or not all(
            hasattr(server, name) for name in ("_idle_timeout", "_initiate_server_close")):
        return
    tcp_server.TrioSingleTask = IdleTimer
