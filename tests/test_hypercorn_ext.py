"""What mesh.gateway.hypercorn_ext adds to hypercorn, on the real server: hypercorn's trio worker as the
agent runs it (`serve_http`), real sockets, real files. An app sends `http.response.zerocopysend`
messages between ordinary body messages; the client must get exactly the file's bytes, framed
right; over plain TCP they leave by `os.sendfile`, over TLS through the TLS stream; a client that
leaves mid-file, or a file shorter than promised, ends that response only."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
from pathlib import Path

import pytest
import trio

from mesh.drivers.tcp import free_port
from mesh.gateway import hypercorn_ext
from mesh.gateway.app import serve_http
from tests.tls_certs import TestCa

DATA = os.urandom(3 * 1024 * 1024 + 12345)
SPANS = [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, len(DATA) - (2 << 20) - 100)]  # then 100 bytes as a copy


def _asgi(respond):
    """An ASGI app that answers hypercorn's lifespan messages and each HTTP request with
    `respond(scope, send)`."""

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await respond(scope, send)

    return app


def _app(path: Path):
    """Sends DATA from `path`: three zero-copy spans, then the last 100 bytes as an ordinary body
    message."""

    async def respond(scope, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(DATA)).encode())]})
        if not hypercorn_ext.available(scope):
            await send({"type": "http.response.body", "body": DATA})
            return
        with open(path, "rb") as file:
            for offset, count in SPANS:
                await send({"type": hypercorn_ext.ZEROCOPY_SEND, "file": file, "offset": offset, "count": count,
                            "more_body": True})
        await send({"type": "http.response.body", "body": DATA[-100:]})

    return _asgi(respond)


async def _serve(app, fn, certfile=None, keyfile=None):
    port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_http(app, ("127.0.0.1", port), certfile=certfile,
                                                           keyfile=keyfile, task_status=task_status))
        try:
            return await trio.to_thread.run_sync(fn, port)
        finally:
            nursery.cancel_scope.cancel()


def _get(port: int, requests: int = 1, context: ssl.SSLContext | None = None) -> list[bytes]:
    """Bodies of `requests` GETs on one kept connection."""
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=15, context=context)
    bodies = []
    for _ in range(requests):
        conn.request("GET", "/file", headers={"Host": "event.test"})
        response = conn.getresponse()
        assert response.status == 200
        bodies.append(response.read())
    conn.close()
    return bodies


@pytest.fixture
def counted_sendfile(monkeypatch):
    """The real os.sendfile, counting the bytes it sent."""
    sent = [0]
    real = os.sendfile

    def sendfile(out_fd, in_fd, offset, count):
        done = real(out_fd, in_fd, offset, count)
        sent[0] += done
        return done

    monkeypatch.setattr(os, "sendfile", sendfile)
    return sent


def test_spans_go_by_sendfile_exactly_and_the_connection_stays_usable(tmp_path: Path, counted_sendfile) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(DATA)
    bodies = trio.run(_serve, _app(path), lambda port: _get(port, requests=3))
    assert bodies == [DATA] * 3  # framed right: a second and third response on the same connection
    assert counted_sendfile[0] == 3 * (len(DATA) - 100)


def test_over_tls_the_same_bytes_pass_through_the_tls_stream(tmp_path: Path, counted_sendfile) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(DATA)
    ca = TestCa.make()
    cert, key, _ = ca.write_leaf(tmp_path, "event", ["event.test"])
    context = ssl.create_default_context(cadata=ca.pem.decode())
    context.check_hostname = False  # the name is checked elsewhere (test_tls); here only the bytes
    bodies = trio.run(_serve, _app(path), lambda port: _get(port, 2, context), str(cert), str(key))
    assert bodies == [DATA] * 2
    assert counted_sendfile[0] == 0  # never around TLS


def test_a_client_that_leaves_mid_file_ends_only_its_own_response(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(DATA)

    def leave_then_fetch(port: int) -> list[bytes]:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /file HTTP/1.1\r\nHost: event.test\r\n\r\n")
                assert sock.recv(1000).startswith(b"HTTP/1.1 200")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return _get(port)  # closed with RST above, mid-span

    assert trio.run(_serve, _app(path), leave_then_fetch) == [DATA]


def test_a_file_shorter_than_its_span_ends_the_response_short(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(DATA[:(1 << 20) + 5000])  # the second span runs past its end

    def fetch_short(port: int) -> tuple[bytes, bool]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request("GET", "/file", headers={"Host": "event.test"})
        response = conn.getresponse()
        try:
            return response.read(), True
        except http.client.IncompleteRead as short:
            return short.partial, False
        finally:
            conn.close()

    body, complete = trio.run(_serve, _app(path), fetch_short)
    assert not complete and body == DATA[:len(body)] and len(body) <= (1 << 20) + 5000


# ---- a response's head with its first body bytes ------------------------------------------------


@pytest.fixture
def counted_writes(monkeypatch):
    """The real SocketStream.send_all, counting the writes that carried bytes."""
    writes = [0]
    real = trio.SocketStream.send_all

    async def send_all(self, data):
        if len(data):
            writes[0] += 1
        await real(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", send_all)
    return writes


def _small_app(body: bytes):
    async def respond(scope, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"x-test", b"1")]})
        await send({"type": "http.response.body", "body": body})

    return _asgi(respond)


def test_a_small_response_leaves_in_one_write_with_its_head(counted_writes) -> None:
    body = os.urandom(20 * 1024)

    def fetch(port: int) -> list:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        got = []
        for method in ("GET", "GET", "HEAD", "GET"):
            conn.request(method, "/thumb", headers={"Host": "event.test"})
            response = conn.getresponse()
            got.append((method, response.status, response.getheader("x-test"), response.read()))
        conn.close()
        return got

    got = trio.run(_serve, _small_app(body), fetch)
    assert got == [("GET", 200, "1", body)] * 2 + [("HEAD", 200, "1", b""), ("GET", 200, "1", body)]
    assert counted_writes[0] == 4  # head and body together, and no write for an empty end


def test_a_stream_without_a_length_sends_its_head_at_once() -> None:
    """An event stream's client must see the response start before the first event."""
    released = trio.Event()

    async def respond(scope, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        with trio.fail_after(5):
            await released.wait()  # set by the client once it has the head
        await send({"type": "http.response.body", "body": b"data: 1\n\n"})

    def fetch(port: int) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/events", headers={"Host": "event.test"})
        response = conn.getresponse()
        trio.from_thread.run_sync(released.set)
        body = response.read()
        conn.close()
        return body

    assert trio.run(_serve, _asgi(respond), fetch) == b"data: 1\n\n"


# ---- one keep-alive timer per connection ------------------------------------------------------------


@pytest.fixture
def short_keep_alive(monkeypatch):
    """Hypercorn's keep-alive limit at 0.5 s (its default is 5 s), for every server made after."""
    from hypercorn.config import Config

    monkeypatch.setattr(Config, "keep_alive_timeout", 0.5)
    return 0.5


def _slow_app(delay_s: float):
    async def respond(scope, send) -> None:
        await trio.sleep(delay_s if scope["path"] == "/slow" else 0)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return _asgi(respond)


def _request(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: event.test\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        piece = sock.recv(4096)
        assert piece, f"the server closed the connection during {path}"
        data += piece
    return data


def test_an_idle_kept_connection_is_closed_after_the_keep_alive_limit(short_keep_alive) -> None:
    import time

    def use_then_idle(port: int) -> float:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(3):  # reused within the limit: the same connection answers each time
                assert _request(sock, "/").startswith(b"HTTP/1.1 200")
                time.sleep(short_keep_alive / 2)
            began = time.monotonic()
            assert sock.recv(100) == b""  # then idle: the server closes it
            return time.monotonic() - began

    waited = trio.run(_serve, _slow_app(0), use_then_idle)
    assert short_keep_alive * 0.5 <= waited < short_keep_alive * 6


def test_a_response_slower_than_the_keep_alive_limit_is_not_cut(short_keep_alive) -> None:
    def slow(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert _request(sock, "/").startswith(b"HTTP/1.1 200")  # idle, then busy again ...
            return _request(sock, "/slow")  # ... for four times the limit

    assert trio.run(_serve, _slow_app(4 * short_keep_alive), slow).startswith(b"HTTP/1.1 200")
