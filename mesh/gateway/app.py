"""The HTTP face of a node (ASGI, served by hypercorn's trio worker inside the agent's nursery).

Routes: `GET /healthz`, `GET /metrics`, `GET /api/status`, the local CDN `GET|HEAD /c/CID` and
`GET|HEAD /release/current/PATH` (Range, ETag, If-None-Match, immutable caching for CIDs, bytes
streamed chunk by chunk and re-hashed before they leave; hidden assets answer 410 and never bytes),
the attendee pages (`mesh.gateway.pages`: home, search, asset, consent, door, service worker) and
the crew's dashboard and actions (`mesh.gateway.crew`). docs/web.md lists every route.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mesh.content.cid import Cid
from mesh.errors import MeshError
from mesh.gateway.hosts import HostGuard, is_local_request, own_names

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
PUBLIC_RELEASE_FIELDS = ("id", "name", "complete", "have_bytes", "total_bytes")  # /api/status for anyone
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class FileRef:
    """A file the gateway may serve."""

    cid: str  # file CID
    size: int  # bytes
    media_type: str  # Content-Type
    arriving: bool = False  # not all here yet: fetched from peers, streamed as its chunks are verified


class GatewayView(Protocol):
    """The read-only view of a node the gateway needs. Lookups run on the event loop (they are
    index queries); `read_chunk` runs on a worker thread."""

    def status(self) -> dict: ...

    def file_by_cid(self, cid: str) -> FileRef | None: ...

    def file_in_current_release(self, path: str) -> FileRef | None: ...

    def chunk_spans(self, cid: str) -> list[tuple[str, int]]: ...  # (chunk CID, length) in order

    def read_chunk(self, cid: str) -> bytes: ...  # re-hashed; MeshError if it cannot

    # Optional (AgentView has them; a bare view serves the CDN routes only): `is_hidden(cid)`,
    # `record_view(cid)`, `catalog()`, `search(q, tag)`, `asset(cid)`, consent and crew methods.


def create_app(view: GatewayView) -> Starlette:
    """An app over a read-only view of the node."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def by_cid(request: Request) -> Response:
        text = request.path_params["cid"]
        try:
            Cid.parse(text)
        except ValueError:
            return JSONResponse({"error": "not a CID"}, status_code=400)
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
        return await _serve(request, view, ref, cache)

    async def release_file(request: Request) -> Response:
        ref = view.file_in_current_release(request.path_params["path"])
        if ref is None and _release_path_hidden(view, request.path_params["path"]):
            return _gone()
        return await _serve(request, view, ref, "no-cache")

    routes = [
        Route("/healthz", healthz),
        Route("/c/{cid}", by_cid, methods=["GET", "HEAD"]),
        Route("/release/current/{path:path}", release_file, methods=["GET", "HEAD"]),
    ]
    names = getattr(view, "http_hosts", own_names)
    if not hasattr(view, "catalog"):
        app = Starlette(routes=routes + [Route("/api/status", status_route(view))])
        app.add_middleware(HostGuard, names=names)
        return app
    from mesh.gateway import crew, metrics, pages

    registry = metrics.Registry(view)
    routes += [Route("/metrics", registry.endpoint)] + pages.routes(view) + crew.routes(view)
    app = Starlette(routes=routes, exception_handlers=pages.exception_handlers())
    app.add_middleware(metrics.CountRequests, registry=registry)
    app.add_middleware(pages.SecurityHeaders)
    app.add_middleware(HostGuard, names=names)  # outermost: a foreign Host reaches nothing
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


async def _serve(request: Request, view: GatewayView, ref: FileRef | None, cache: str) -> Response:
    if ref is None:
        return JSONResponse({"error": "not found"}, status_code=404, headers={"Cache-Control": "no-store"})
    etag = f'"{ref.cid}"'
    headers = {"ETag": etag, "Cache-Control": cache, "Accept-Ranges": "bytes",
               "X-Content-Type-Options": "nosniff"}
    if _none_match(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    span = _parse_range(request.headers.get("range"), ref.size)
    if span is not None and not _if_range_ok(request.headers.get("if-range"), etag):
        span = None  # If-Range names another version: send the whole file (RFC 9110 13.1.5)
    if span == "invalid":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{ref.size}"})
    start, end = span if span else (0, ref.size)
    status = 206 if span else 200
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{ref.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=ref.media_type)
    if start == 0:
        record = getattr(view, "record_view", None)
        if record is not None:
            record(ref.cid)
    spans = view.chunk_spans(ref.cid)
    body = _stream(view, ref, spans, start, end)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=ref.media_type)


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


async def _stream(view: GatewayView, ref: FileRef, spans: list[tuple[str, int]], start: int,
                  end: int) -> AsyncIterator[bytes]:
    wait = getattr(view, "wait_chunk", None) if ref.arriving else None  # each chunk once verified here
    offset = 0
    for chunk_cid, length in spans:
        chunk_start, chunk_end = offset, offset + length
        offset = chunk_end
        if chunk_end <= start or chunk_start >= end:
            continue
        try:
            if wait is not None:
                await wait(ref.cid, chunk_cid)
            data = await trio.to_thread.run_sync(view.read_chunk, chunk_cid)
        except MeshError:
            return  # a chunk went bad or stopped coming mid-response: end short rather than send wrong bytes
        yield data[max(0, start - chunk_start): min(length, end - chunk_start)]


async def serve_http(app: Starlette, address: tuple[str, int], *, certfile: str | None = None,
                     keyfile: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on address with hypercorn's trio worker until cancelled; over TLS (HTTP/2 and
    HTTP/1.1) with `certfile` (the chain, PEM) and `keyfile`."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    host, port = address
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    if certfile is not None and keyfile is not None:
        config.certfile, config.keyfile = certfile, keyfile
    await serve(app, config, task_status=task_status)


