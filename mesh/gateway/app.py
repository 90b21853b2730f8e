"""The HTTP face of a node (ASGI, served by hypercorn's trio worker inside the agent's nursery).

Routes: `GET /healthz`, `GET /metrics`, `GET /api/status`, the local CDN `GET|HEAD /c/CID` and
`GET|HEAD /release/current/PATH` (Range, ETag, If-None-Match, immutable caching for CIDs; hidden
assets answer 410 and never bytes), the attendee pages (`mesh.gateway.pages`: home, search, asset,
consent, door, service worker) and the crew's dashboard and actions (`mesh.gateway.crew`).
docs/web.md lists every route.

How file bytes leave (`send_file`):
- Every chunk is checked before any of its bytes is sent: against the checksum the store recorded
  when the chunk entered it, CID-verified (`read_chunk`). A chunk that fails ends the response
  short (or, for the first chunk, answers an error before the headers): never wrong bytes.
- A chunk the page cache holds is read on the event loop (`read_chunk_nowait`); others on a
  worker thread, the next chunk read while the current one is sent.
- Memory: chunks are read into a pool of page-aligned buffers, SERVE_BUFFER_BYTES_MAX for all
  responses together (`BufferPool`); a response waits for room, and its buffers return once their
  last byte went to the server (or the client left). Beyond that each response holds one
  SEND_PIECE_BYTES copy (the body is handed to the server as bytes).
- Over HTTP/1.1 a piece of ZEROCOPY_MIN_BYTES or more is checked the same way, and then its
  buffers return at once and the bytes go from the chunk's file, still open, to the socket with
  `os.sendfile` (`mesh.gateway.hypercorn_ext`): no copy in the agent.
- `/c/CID` of a file the view has cached for this state head (`served_file`) is answered by
  `CdnRoute.layer` in front of the middlewares, doing their work (Host check, security headers,
  request count) with their own functions; everything else goes the whole way through them.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from typing import Protocol

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mesh.content.cid import Cid
from mesh.errors import MeshError, NotFoundError
from mesh.gateway import hypercorn_ext
from mesh.gateway.hosts import HostGuard, is_local_request, own_names, request_header

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
PUBLIC_RELEASE_FIELDS = ("id", "name", "complete", "have_bytes", "total_bytes")  # /api/status for anyone
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
SERVE_BUFFER_BYTES_MAX = 32 * 1024 * 1024  # buffers for the chunks all responses hold at once
SERVE_SLOT_BYTES = 1024 * 1024  # ... in page-aligned pieces of this size (a chunk takes as many as it needs)
SERVE_WAIT_S = 30.0  # a response waits this long for room in that buffer, then gives up (503 / ends short)
SEND_PIECE_BYTES = 256 * 1024  # a verified chunk goes to the server in body messages of this size
ZEROCOPY_MIN_BYTES = 64 * 1024  # ... or, this much of it or more, from its file (mesh.gateway.hypercorn_ext)
_CONDITIONAL_HEADERS = (b"if-none-match", b"range", b"if-range")


@dataclass(frozen=True)
class FileRef:
    """A file the gateway may serve."""

    cid: str  # file CID
    size: int  # bytes
    media_type: str  # Content-Type
    arriving: bool = False  # not all here yet: fetched from peers, streamed as its chunks are verified


@dataclass(frozen=True)
class ServedFile:
    """What answering `/c/CID` needs, looked up once per state head (`AgentView.served_file`)."""

    ref: FileRef  # the file
    cache: str  # its Cache-Control
    spans: tuple[tuple[str, int], ...]  # (chunk CID, length) in order


class GatewayView(Protocol):
    """The read-only view of a node the gateway needs. Lookups run on the event loop (they are
    index queries), and so does `read_chunk_into` with `cached_only`; without, on a worker thread."""

    def status(self) -> dict: ...

    def file_by_cid(self, cid: str, vouched: bool = False) -> FileRef | None: ...

    def file_in_current_release(self, path: str) -> FileRef | None: ...

    def chunk_spans(self, cid: str) -> list[tuple[str, int]]: ...  # (chunk CID, length) in order

    def read_chunk_into(self, cid: str, buffers: list[memoryview], cached_only: bool) -> int: ...
    # ^ the chunk's checked bytes (see above) into buffers, its size; MeshError if it cannot;
    # with cached_only (on the event loop) BlockingIOError when the page cache lacks them

    # Optional (AgentView has them; a bare view serves the CDN routes only): `is_hidden(cid)`,
    # `record_view(cid)`, `catalog()`, `search(q, tag)`, `asset(cid)`, consent and crew methods;
    # `served_file(cid)` (a cached ServedFile, or None for the full path); `settle(cid)`, awaited
    # before a CID the view's catalog cannot vouch for yet is judged; `open_chunk_into(cid,
    # buffers, cached_only)`, `read_chunk_into` returning the chunk file's open descriptor, from
    # which large pieces are sent without a copy (`hypercorn_ext`).


def create_app(view: GatewayView) -> Starlette:
    """An app over a read-only view of the node."""
    pool = BufferPool(SERVE_BUFFER_BYTES_MAX, SERVE_SLOT_BYTES)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def release_file(request: Request):
        path = request.path_params["path"]
        if path == "" or path.endswith("/"):
            path += "index.html"  # a directory of the release answers its index page, as web servers do
        ref = view.file_in_current_release(path)
        if ref is None and _release_path_hidden(view, path):
            return _gone()
        return FileResponse(view, pool, ref, REVALIDATE)

    names = getattr(view, "http_hosts", own_names)
    cdn = CdnRoute(view, pool, HostGuard(None, names))
    routes = [
        Route("/healthz", healthz),
        Route("/c/{cid}", cdn.endpoint, methods=["GET", "HEAD"]),  # what CdnRoute.layer lets through
        Route("/release/current/{path:path}", release_file, methods=["GET", "HEAD"]),
    ]
    if not hasattr(view, "catalog"):
        app = Starlette(routes=routes + [Route("/api/status", status_route(view))])
        app.add_middleware(HostGuard, names=names)
        app.add_middleware(CdnRoute.layer, cdn=cdn)
        return app
    from mesh.gateway import crew, metrics, pages
    from mesh.gateway import drops as drop_pages

    registry = metrics.Registry(view)
    cdn.extra_headers, cdn.count = pages.SECURITY_HEADERS, registry.count  # what the middlewares add
    routes += [Route("/metrics", registry.endpoint)] + pages.routes(view) + crew.routes(view)
    routes += drop_pages.routes(view)  # limited drops: /drop/ID and /api/drops
    from mesh.gateway import hls

    routes += hls.routes(view, pool)  # live streams: player, playlist, segments
    app = Starlette(routes=routes, exception_handlers=pages.exception_handlers())
    app.add_middleware(metrics.CountRequests, registry=registry)
    app.add_middleware(pages.SecurityHeaders)
    app.add_middleware(HostGuard, names=names)  # a foreign Host reaches nothing
    app.add_middleware(CdnRoute.layer, cdn=cdn)  # outermost: the middlewares' work for cached files, fused
    return app


def status_route(view: GatewayView, is_crew=lambda request: False):
    """`GET /api/status`: the whole `mesh status` document for the crew; for anyone else only what
    attendees' pages need (how far the release is), never who the members and peers are."""

    async def api_status(request: Request) -> JSONResponse:
        doc = view.status()
        if is_crew(request):
            return JSONResponse(doc)
        release = doc.get("release") or None
        public = {key: release.get(key) for key in PUBLIC_RELEASE_FIELDS} if release else None
        shown = {"ok": True, "release": public}
        if is_local_request(request):
            shown["pid"] = doc.get("pid")  # the machine itself (`mesh demo`'s own checks)
        return JSONResponse(shown, headers={"Cache-Control": "no-store"})

    return api_status


# ---- the local CDN: /c/CID ---------------------------------------------------------------------


class CdnRoute:
    """`GET|HEAD /c/CID`. A held file the view has cached for this state head (`served_file`) is
    answered by `layer`, in front of the middlewares, doing what they would (the Host check, the
    security headers, the request count) with the same functions, without their per-message
    wrappers, the router or a Request; anything else (a foreign Host, unknown, hidden, held
    elsewhere, malformed) goes through them to `endpoint`."""

    def __init__(self, view: GatewayView, pool: BufferPool, guard: HostGuard) -> None:
        self.view = view
        self.pool = pool
        self.guard = guard
        self.cached = getattr(view, "served_file", None)
        self.extra_headers: list[tuple[bytes, bytes]] = []  # pages.SECURITY_HEADERS when that middleware runs
        self.count = None  # metrics.Registry.count when that middleware runs

    @staticmethod
    def layer(app, cdn: CdnRoute):
        """The ASGI middleware: `/c/CID` of a cached file to `cdn.answer`, all else to `app`."""

        async def route(scope, receive, send) -> None:
            served = cdn.served(scope)
            if served is None:
                await app(scope, receive, send)
            else:
                await cdn.answer(scope, receive, send, served)

        return route

    def served(self, scope) -> ServedFile | None:
        if scope["type"] != "http" or self.cached is None or scope["method"] not in ("GET", "HEAD"):
            return None
        path = scope["path"]
        if not path.startswith("/c/") or not self.guard.host_ok(request_header(scope, b"host")):
            return None
        return self.cached(path[3:])

    async def answer(self, scope, receive, send, served: ServedFile) -> None:
        status = None
        try:
            status = await send_file(scope, receive, send, self.view, self.pool, served.ref, served.cache,
                                     served.spans, self.extra_headers)
        finally:
            if self.count is not None:
                self.count(scope["method"], scope["path"], status)

    async def endpoint(self, request: Request):
        view, text = self.view, request.path_params["cid"]
        try:
            Cid.parse(text)
        except ValueError:
            return JSONResponse({"error": "not a CID"}, status_code=400)
        settle = getattr(view, "settle", None)
        if settle is not None:  # a CID the catalog being built will vouch for (or not): wait for it
            await settle(text)
        if _hidden(view, text):
            return _gone()
        may_hide = getattr(view, "may_hide", None)
        # Media that consent or retention may withdraw is revalidated on every use (a cheap 304),
        # so a browser never keeps showing it from its cache after a revoke.
        cache = REVALIDATE if may_hide is not None and may_hide(text) else IMMUTABLE
        ref = view.file_by_cid(text)
        fetch = getattr(view, "fetch_file", None)
        if ref is None and fetch is not None:  # media another node holds: fetched now, streamed as it arrives
            ref = await fetch(text)
        return FileResponse(view, self.pool, ref, cache)


def _hidden(view: GatewayView, cid: str) -> bool:
    check = getattr(view, "is_hidden", None)
    return bool(check is not None and check(cid))


def _release_path_hidden(view: GatewayView, path: str) -> bool:
    entries = getattr(view, "_release_entries", None)
    entry = entries().get(path) if entries is not None else None
    return entry is not None and _hidden(view, str(entry.cid))


def _gone() -> Response:
    """A hidden asset (consent withdrawn or retention over): 410, never cached, never bytes."""
    return JSONResponse({"error": "gone: this media is no longer shown (consent or retention)"},
                        status_code=410, headers={"Cache-Control": "no-store"})


def _not_found() -> Response:
    return JSONResponse({"error": "not found"}, status_code=404, headers={"Cache-Control": "no-store"})


# ---- sending a file --------------------------------------------------------------------------------


class BufferPool:
    """Page-aligned buffers of `slot_bytes` shared by every response, `total_bytes` in all: a chunk
    is read into as many as it needs, and they return once its last byte went to the server. The
    memory they take is the gateway's bound (untouched pages cost nothing)."""

    def __init__(self, total_bytes: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self._free = [memoryview(mmap.mmap(-1, slot_bytes)) for _ in range(max(1, total_bytes // slot_bytes))]
        self.slots = len(self._free)
        self._waiters = trio.lowlevel.ParkingLot()

    async def take(self, size: int) -> list[memoryview]:
        """Buffers holding `size` bytes, waiting for them; MeshError if the pool cannot ever."""
        await trio.lowlevel.checkpoint_if_cancelled()
        count = max(1, -(-size // self.slot_bytes))
        if count > self.slots:
            raise MeshError(f"a {size}-byte chunk is larger than the serving buffer")
        while len(self._free) < count:
            await self._waiters.park()
        taken = self._free[-count:]
        del self._free[-count:]
        return taken

    def give_back(self, buffers: list[memoryview]) -> None:
        self._free.extend(buffers)
        self._waiters.unpark_all()  # each waiter re-checks


class FileResponse:
    """An ASGI response (what a starlette endpoint may return) sending `ref` with `send_file`."""

    def __init__(self, view: GatewayView, pool: BufferPool, ref: FileRef | None, cache: str) -> None:
        self.view, self.pool, self.ref, self.cache = view, pool, ref, cache

    async def __call__(self, scope, receive, send) -> None:
        if self.ref is None:
            await _not_found()(scope, receive, send)
            return
        await send_file(scope, receive, send, self.view, self.pool, self.ref, self.cache)


async def send_file(scope, receive, send, view: GatewayView, pool: BufferPool, ref: FileRef, cache: str,
                    spans=None, extra_headers=()) -> int:
    """Answer a GET or HEAD for `ref` (conditional requests and one byte range honoured), with
    `extra_headers` on the response; the status sent."""
    asked = _request_headers(scope)
    etag = f'"{ref.cid}"'
    headers = [(b"etag", etag.encode()), (b"cache-control", cache.encode()), (b"accept-ranges", b"bytes"),
               (b"x-content-type-options", b"nosniff"), *extra_headers]
    if _none_match(asked.get(b"if-none-match", ""), etag):
        return await _send_head(send, 304, headers)
    span = _parse_range(asked.get(b"range"), ref.size)
    if span is not None and not _if_range_ok(asked.get(b"if-range"), etag):
        span = None  # If-Range names another version: send the whole file (RFC 9110 13.1.5)
    if span == "invalid":
        return await _send_head(send, 416, [*headers, (b"content-range", f"bytes */{ref.size}".encode()),
                                            (b"content-length", b"0")])
    start, end = span if span else (0, ref.size)
    if span:
        headers.append((b"content-range", f"bytes {start}-{end - 1}/{ref.size}".encode()))
    headers += [(b"content-length", str(end - start).encode()), (b"content-type", _content_type(ref.media_type))]
    status = 206 if span else 200
    if scope["method"] == "HEAD":
        return await _send_head(send, status, headers)
    if start == 0:
        record = getattr(view, "record_view", None)
        if record is not None:
            record(ref.cid)
    pieces = _pieces(spans if spans is not None else view.chunk_spans(ref.cid), start, end)
    return await _send_body(scope, receive, send, view, pool, ref, pieces, status, headers, extra_headers)


def _request_headers(scope) -> dict[bytes, str]:
    found = {}
    for name, value in scope.get("headers", ()):
        if name in _CONDITIONAL_HEADERS:
            found[name] = value.decode("latin-1")
    return found


def _content_type(media_type: str) -> bytes:
    """As starlette writes it: text types say their charset."""
    if media_type.startswith("text/") and "charset=" not in media_type.lower():
        media_type += "; charset=utf-8"
    return media_type.encode("latin-1")


async def _send_head(send, status: int, headers: list[tuple[bytes, bytes]]) -> int:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
    return status


def _pieces(spans, start: int, end: int) -> list[tuple[str, int, int, int]]:
    """(chunk CID, chunk length, first byte, end byte within it) of the chunks [start, end) covers."""
    found, offset = [], 0
    for chunk_cid, length in spans:
        chunk_start, offset = offset, offset + length
        if offset > start and chunk_start < end:
            found.append((chunk_cid, length, max(0, start - chunk_start), min(length, end - chunk_start)))
    return found


async def _send_body(scope, receive, send, view, pool: BufferPool, ref: FileRef, pieces, status: int,
                     headers, extra_headers) -> int:
    """The headers, then the pieces' bytes. The first chunk of a file held here is read before the
    headers go, so a file whose first chunk is missing or damaged answers 404 or 500 instead."""
    first = None
    by_file = hypercorn_ext.available(scope) and getattr(view, "open_chunk_into", None) is not None
    if pieces and not ref.arriving:
        try:
            first = (await _take_and_read(view, pool, pieces[0], None, by_file), pieces[0])
        except MeshError as exc:
            return await _refuse_file(scope, send, exc, extra_headers)
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
    except BaseException:  # cancelled (the client left): what the first chunk holds goes back
        if first is not None:
            _release(pool, first[0])
        raise
    if len(pieces) > 1 or first is None:
        await _send_chunks(receive, send, view, pool, ref, pieces, first, by_file)
    else:
        await _send_owned(send, pool, first, last=True)
    return status


async def _refuse_file(scope, send, exc: MeshError, extra_headers) -> int:
    """404 (a chunk gone from the store), 503 (no room to serve) or 500 (a chunk failed its check)."""
    if isinstance(exc, NotFoundError):
        response = _not_found()
    else:
        busy = isinstance(exc, ServeBusyError)
        text = "busy: try again in a moment" if busy else "this file failed its integrity check here"
        response = JSONResponse({"error": text}, status_code=503 if busy else 500,
                                headers={"Cache-Control": "no-store"})
    response.raw_headers.extend(extra_headers)
    await response(scope, None, send)
    return response.status_code


class ServeBusyError(MeshError):
    """No room in the serving buffer for SERVE_WAIT_S."""


async def _take_and_read(view, pool: BufferPool, piece, wait, by_file: bool = False) -> list[memoryview] | int:
    """The piece's whole chunk, checked: in buffers from the pool or, with `by_file` and a piece
    of at least ZEROCOPY_MIN_BYTES, as the open file descriptor those bytes were read from (the
    buffers back in the pool). MeshError if it cannot be had (ServeBusyError after SERVE_WAIT_S
    without room)."""
    chunk_cid, length, lo, hi = piece
    buffers = None
    with trio.move_on_after(SERVE_WAIT_S):
        buffers = await pool.take(length)
    if buffers is None:
        raise ServeBusyError(f"no room to serve {chunk_cid} for {SERVE_WAIT_S:g} s")
    by_file = by_file and hi - lo >= ZEROCOPY_MIN_BYTES
    read = view.open_chunk_into if by_file else view.read_chunk_into
    try:
        if wait is not None:
            await wait(chunk_cid)
        try:
            got = read(chunk_cid, buffers, True)
        except BlockingIOError:  # not in the page cache: a worker thread waits for the disk (not
            # abandoned on cancel: it writes into the buffers, which return to the pool after it)
            got = await trio.to_thread.run_sync(read, chunk_cid, buffers, False)
    except BaseException:
        pool.give_back(buffers)
        raise
    if not by_file:
        return buffers
    pool.give_back(buffers)
    return got


def _release(pool: BufferPool, held: list[memoryview] | int) -> None:
    """Return what `_take_and_read` gave: buffers to the pool, or close the file."""
    if isinstance(held, int):
        os.close(held)
    else:
        pool.give_back(held)


async def _send_owned(send, pool: BufferPool, item, last: bool = False) -> None:
    """Bytes [lo, hi) of a checked chunk (`last`: ending the body), then its buffers go back to
    the pool, or its file is closed: from a file, one zero-copy message; from buffers, in
    SEND_PIECE_BYTES messages."""
    held, (_, _, lo, hi) = item
    if isinstance(held, int):
        try:
            await send({"type": hypercorn_ext.ZEROCOPY_SEND, "file": held, "offset": lo, "count": hi - lo,
                        "more_body": not last})
        finally:
            os.close(held)
        return
    buffers, slot = held, pool.slot_bytes
    try:
        for at in range(lo, hi, SEND_PIECE_BYTES):
            upto = min(hi, at + SEND_PIECE_BYTES, (at // slot + 1) * slot)  # within one buffer
            body = bytes(buffers[at // slot][at % slot:at % slot + upto - at])
            await send({"type": "http.response.body", "body": body, "more_body": not last or upto < hi})
    finally:
        pool.give_back(buffers)


async def _send_chunks(receive, send, view, pool: BufferPool, ref: FileRef, pieces, first, by_file: bool) -> None:
    """Send every piece (the first already read, unless the file is arriving), reading the next
    chunk while the current one goes out. Ends short (the server then closes the connection) at
    the first chunk that cannot be had; stops when the client goes away."""
    wait = getattr(view, "wait_chunk", None) if ref.arriving else None  # each chunk once verified here
    wait_one = (lambda chunk: wait(ref.cid, chunk)) if wait is not None else None
    rest = pieces[1:] if first is not None else pieces
    sent = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
        chunks_tx, chunks_rx = trio.open_memory_channel(0)  # the reader holds one chunk ahead at most
        nursery.start_soon(_read_ahead, view, pool, rest, wait_one, chunks_tx, by_file)
        if first is not None:
            await _send_owned(send, pool, first)
        async with chunks_rx:
            async for item in chunks_rx:
                await _send_owned(send, pool, item)
                sent += 1
        if sent == len(rest):
            await send({"type": "http.response.body", "body": b""})
        nursery.cancel_scope.cancel()


async def _read_ahead(view, pool: BufferPool, pieces, wait, chunks_tx, by_file: bool) -> None:
    async with chunks_tx:
        for piece in pieces:
            try:
                held = await _take_and_read(view, pool, piece, wait, by_file)
            except MeshError:
                return  # a chunk went bad or stopped coming: end short rather than send wrong bytes
            try:
                await chunks_tx.send((held, piece))
            except BaseException:
                _release(pool, held)
                raise


async def _cancel_on_disconnect(receive, cancel_scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel_scope.cancel()
            return


def _if_range_ok(header: str | None, etag: str) -> bool:
    return header is None or header.strip() == etag


def _none_match(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/"x" matches "x"."""
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
    return etag in tags or "*" in tags


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end-exclusive) for one `bytes=` range, None for no range, "invalid" if unsatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # unsupported forms (multiple ranges) get the whole file, as RFC 9110 allows
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        return (max(0, size - length), size) if length > 0 and size > 0 else "invalid"
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return "invalid"
    return start, end


async def serve_http(app: Starlette, address: tuple[str, int], *, certfile: str | None = None,
                     keyfile: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on address with hypercorn's trio worker until cancelled; over TLS (HTTP/2 and
    HTTP/1.1) with `certfile` (the chain, PEM) and `keyfile`."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    hypercorn_ext.install()
    config = Config()
    host, port = address
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    if certfile is not None and keyfile is not None:
        config.certfile, config.keyfile = certfile, keyfile
    await serve(app, config, task_status=task_status)


