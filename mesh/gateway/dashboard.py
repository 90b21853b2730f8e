"""The crew dashboard's changing parts: per-node rows (status badge, progress, rates, disk), the
throughput history its chart draws, and `GET /crew/updates`, a server-sent event stream that sends
the re-rendered parts of the page every UPDATE_INTERVAL_S.

Rates are differences of byte counters between two samples of this node's status: this node's
totals, and per peer the bytes exchanged with this node (what one node can know of another).
Samples are taken when a dashboard is built (page, API or stream), so the chart covers the time a
dashboard was open on this node, HISTORY_S at most. Everything here is bounded.
"""

from __future__ import annotations

import json
from collections import Counter, deque

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

UPDATE_INTERVAL_S = 2.0  # how often /crew/updates sends fresh parts
UPDATE_STREAM_S_MAX = 15 * 60.0  # a stream ends after this long (the browser's EventSource reconnects)
UPDATE_STREAMS_MAX = 16  # streams open at once on this node; more are answered 503
UPDATE_IDLE_S = 20.0  # a stream with nothing new sends a comment line this often
RATE_SAMPLE_S_MIN = 1.0  # two samples closer than this reuse the last rate
RATE_KEYS_MAX = 1024  # nodes whose last sample is kept
HISTORY_STEP_S = 5.0  # the throughput history keeps one sample per this many seconds
HISTORY_S = 10 * 60.0  # ... over this long
HISTORY_POINTS_MAX = int(HISTORY_S / HISTORY_STEP_S) + 1


class Rates:
    """Byte rates per node from successive counter samples, and this node's throughput history."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float, float]] = {}  # key -> (time, bytes in, bytes out)
        self._rates: dict[str, tuple[float, float]] = {}  # key -> (in/s, out/s)
        self.history: deque[tuple[float, float, float]] = deque(maxlen=HISTORY_POINTS_MAX)  # (t, in/s, out/s)

    def rate(self, key: str, now: float, bytes_in: float, bytes_out: float) -> tuple[float, float] | None:
        """(in, out) bytes per second since the previous sample of `key`; None for the first."""
        last = self._last.get(key)
        if last is not None and now - last[0] < RATE_SAMPLE_S_MIN:
            return self._rates.get(key)
        if last is not None and bytes_in >= last[1] and bytes_out >= last[2]:
            elapsed = now - last[0]
            self._rates[key] = ((bytes_in - last[1]) / elapsed, (bytes_out - last[2]) / elapsed)
        else:
            self._rates.pop(key, None)  # first sample, or the counters restarted (a new session)
        self._last[key] = (now, bytes_in, bytes_out)
        while len(self._last) > RATE_KEYS_MAX:
            dropped = next(iter(self._last))
            self._last.pop(dropped)
            self._rates.pop(dropped, None)
        return self._rates.get(key)

    def note_total(self, now: float, rates: tuple[float, float] | None) -> None:
        """Keep this node's rates in the history, one point per HISTORY_STEP_S."""
        if rates is None or (self.history and now - self.history[-1][0] < HISTORY_STEP_S):
            return
        self.history.append((now, *rates))


def node_rows(view, status: dict, rates: Rates, now: float) -> list[dict]:
    """view.members(), each with badge, release name, media, rates, disk and failing checks added."""
    peers = {p["node_id"]: p for p in status.get("peers", [])}
    counters = view.counters() if hasattr(view, "counters") else {}
    names = {r["root"]: r["name"] for r in view.releases()} if hasattr(view, "releases") else {}
    rows = []
    for member in view.members():
        row = dict(member)
        row["release_name"] = names.get((row.get("release") or {}).get("root"))
        if row.get("self"):
            row["media"] = status.get("media")
            found = rates.rate("self", now, counters.get("bytes_in", 0.0), counters.get("bytes_out", 0.0))
            row["rates"] = _rates(found)
            rates.note_total(now, found)
        else:
            peer = peers.get(row["node_id"])
            found = rates.rate(row["node_id"], now, peer.get("bytes_in", 0), peer.get("bytes_out", 0)) if peer else None
            row["rates"] = _rates(found)
            row["store"] = (row.get("health") or {}).get("store") or row.get("store")  # its health signal carries it
            row["media"] = (row.get("health") or {}).get("media")
        row["disk"] = _disk(row.get("health"))
        row["failing"] = [c.get("name", "?") for c in (row.get("health") or {}).get("checks", []) if not c.get("ok", True)]
        row["badge"] = badge(row)
        rows.append(row)
    return rows


def _rates(found: tuple[float, float] | None) -> dict | None:
    return None if found is None else {"in": found[0], "out": found[1]}


def _disk(health: dict | None) -> str | None:
    for check in (health or {}).get("checks", []):
        if check.get("name") == "disk" and check.get("detail"):
            return str(check["detail"]).split(",")[0]  # "78.8 GiB free"
    return None


def badge(row: dict) -> str:
    """offline, failing, syncing or ok: the coloured word of a node's status."""
    if not row.get("online"):
        return "offline"
    if (row.get("health") or {}).get("ok") is False:
        return "failing"
    release, media = row.get("release") or {}, row.get("media") or {}
    if (release and not release.get("complete")) or media.get("held", 0) < media.get("wanted", 0):
        return "syncing"
    return "ok"


# ---- GET /crew/updates ------------------------------------------------------------------------------


def sse(event: str, data: dict) -> bytes:
    """One server-sent event (the data is one JSON line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def updates_route(allowed, parts, streams_max: int = UPDATE_STREAMS_MAX,
                  denied: str = "crew only: log in at /crew", per_address_max: int | None = None):
    """A server-sent event stream (`GET /crew/updates`, a drop's live page): `parts(request)` (a dict
    of named fragments) as an `update` event now and whenever it changed, looked at every
    UPDATE_INTERVAL_S, with a comment line every UPDATE_IDLE_S so proxies keep a quiet stream open.
    403 with `denied` for a request `allowed` refuses (checked again each round: a revoked
    organizer's token ends the stream), 503 past `streams_max` open at once or `per_address_max`
    from one client address."""
    open_streams = [0]
    per_address: Counter[str] = Counter()

    async def stream(request: Request, address: str):
        open_streams[0] += 1
        per_address[address] += 1
        try:
            with trio.move_on_after(UPDATE_STREAM_S_MAX):
                yield b"retry: 3000\n\n"
                last, quiet_s = b"", 0.0
                while allowed(request):
                    fresh = sse("update", parts(request))
                    if fresh != last or quiet_s >= UPDATE_IDLE_S:
                        yield fresh if fresh != last else b": idle\n\n"
                        last, quiet_s = fresh, 0.0
                    await trio.sleep(UPDATE_INTERVAL_S)
                    quiet_s += UPDATE_INTERVAL_S
        finally:
            open_streams[0] -= 1
            per_address[address] -= 1
            if per_address[address] <= 0:
                del per_address[address]

    async def endpoint(request: Request) -> Response:
        if not allowed(request):
            return Response(denied, status_code=403, media_type="text/plain")
        address = request.client.host if request.client else "-"
        if open_streams[0] >= streams_max or (per_address_max is not None and per_address[address] >= per_address_max):
            return Response("too many live pages open on this node", status_code=503, media_type="text/plain")
        return StreamingResponse(stream(request, address), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return endpoint
