"""Live streams to browsers: the player page, the HLS playlist and segments, from the local store.

- `GET /live/NAME` is the player page: native HLS where the browser has it (Safari, iOS), else the
  vendored hls.js (`/static/hls.light.min.js`, no CDN); it says plainly when the stream is not live.
- `GET /live/NAME.m3u8` is a live media playlist (RFC 8216) of the segments this node holds: the
  longest consecutive run ending at the newest one held (mesh.core.live `live_playlist`), so a
  player always starts near the live edge; `#EXT-X-ENDLIST` once the stream ended. 404 when the
  stream is unknown here or its consent is withdrawn.
- `GET /live/NAME/N.ts` is segment N, re-hashed on the way out like every served byte; only
  segments of the stream's current window are served.
- `GET /api/live` lists the streams this node follows (for the page's status line and `mesh live ls`).
Each player polls the playlist; a count of distinct recent pollers is the node's viewer figure.
"""

from __future__ import annotations

import math
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mesh.gateway.app import REVALIDATE, FileRef, FileResponse
from mesh.gateway.pages import render

VIEWER_WINDOW_S = 15.0  # a player that polled the playlist this recently counts as a viewer
VIEWERS_TRACKED_MAX = 4096  # pollers remembered per node (the rest are not counted)


class Viewers:
    """Distinct recent playlist pollers per stream (by client address and port-less agent)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def saw(self, stream: str, who: str, now: float) -> None:
        if len(self._seen) >= VIEWERS_TRACKED_MAX:
            self._forget(now)
        if len(self._seen) < VIEWERS_TRACKED_MAX:
            self._seen[(stream, who)] = now

    def _forget(self, now: float) -> None:
        self._seen = {key: at for key, at in self._seen.items() if now - at <= VIEWER_WINDOW_S}

    def counts(self, now: float) -> dict[str, int]:
        self._forget(now)
        found: dict[str, int] = {}
        for stream, _ in self._seen:
            found[stream] = found.get(stream, 0) + 1
        return found


def playlist_text(name: str, window, segments) -> str:
    """The m3u8 of `segments` (held, consecutive) of `window`."""
    target = max([window.segment_ms, *(s.duration_ms for s in segments)]) / 1000
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{math.ceil(target)}",
             f"#EXT-X-MEDIA-SEQUENCE:{segments[0].number if segments else 0}"]
    for index, segment in enumerate(segments):
        if segment.discontinuity and index:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += [f"#EXTINF:{segment.duration_ms / 1000:.3f},", f"/live/{name}/{segment.number}.ts"]
    if window.ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _core(view):
    """The agent's core (None before it runs): live windows are ephemeral, the core holds them."""
    agent = getattr(view, "agent", None)
    return agent.core if agent is not None else None


def routes(view, pool) -> list:
    """The live routes over an AgentView."""
    viewers = Viewers()
    agent = getattr(view, "agent", None)
    if agent is not None:
        agent.live_viewers = viewers  # its status document reports them

    async def player(request: Request) -> Response:
        name = request.path_params["name"]
        return render(request, view, "live_player.html", stream=name)

    async def playlist(request: Request) -> Response:
        name = request.path_params["name"]
        core = _core(view)
        found = core.live_playlist(name) if core is not None else None
        if found is None:
            return JSONResponse({"error": f"no live stream {name!r} here"}, status_code=404,
                                headers={"Cache-Control": "no-store"})
        client = request.client.host if request.client else "-"
        viewers.saw(name, f"{client}/{request.headers.get('user-agent', '')[:80]}", time.monotonic())
        return Response(playlist_text(name, *found), media_type="application/vnd.apple.mpegurl",
                        headers={"Cache-Control": "no-cache"})

    async def segment(request: Request) -> Response:
        name, number = request.path_params["name"], request.path_params["number"]
        core = _core(view)
        cid = core.live_segment(name, number) if core is not None else None
        # The core names it as a segment of a live window (no asset's): a catalog still being
        # built after a change is no reason to withhold it; a hidden asset's CID still is.
        ref = view.file_by_cid(cid, vouched=True) if cid is not None else None
        if ref is not None:
            ref = FileRef(ref.cid, ref.size, "video/mp2t")
        return FileResponse(view, pool, ref, REVALIDATE)

    async def streams(request: Request) -> Response:
        counts = viewers.counts(time.monotonic())
        core = _core(view)
        rows = [{**row, "viewers": counts.get(row["name"], 0)} for row in (core.live_status() if core else [])]
        return JSONResponse({"streams": rows}, headers={"Cache-Control": "no-store"})

    return [
        Route("/live/{name}.m3u8", playlist, methods=["GET", "HEAD"]),
        Route("/live/{name}/{number:int}.ts", segment, methods=["GET", "HEAD"]),
        Route("/live/{name}", player),
        Route("/api/live", streams),
    ]
