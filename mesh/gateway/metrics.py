"""`GET /metrics` in the Prometheus text format: the agent's numbers read at scrape time by a
custom collector, plus HTTP request counters kept by an ASGI middleware. One registry per app (not
prometheus-client's global one), so several nodes in one process never mix their numbers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response

ROUTE_LABELS = ("c", "release", "api", "crew", "a", "search", "consent", "door", "static", "metrics",
                "healthz", "sw.js", "offline.json")  # first path segments with a label of their own
# agent counter name -> (metric name, help)
AGENT_COUNTERS = {
    "bytes_in": ("mesh_bytes_in", "Bytes received from peers."),
    "bytes_out": ("mesh_bytes_out", "Bytes sent to peers."),
    "chunks_served": ("mesh_chunks_served", "Chunks served to peers."),
    "chunks.verified": ("mesh_chunks_verified", "Chunks received and verified."),
    "chunks.rejected": ("mesh_chunks_rejected", "Chunks received and rejected."),
    "chunks.timeouts": ("mesh_chunk_timeouts", "Chunk requests that timed out."),
}


class AgentCollector:
    """Reads the view's status and counters at every scrape."""

    def __init__(self, view) -> None:
        self.view = view

    def collect(self):
        status = self.view.status()
        yield _gauge("mesh_peers", "Connected peers.", len(status.get("peers", [])))
        members = status.get("members") or []
        yield _gauge("mesh_members", "Members of the mesh other than this node (revoked ones included) "
                     "in its state.", len(members))
        yield _gauge("mesh_members_online", "Members other than this node connected to it now.",
                     sum(1 for m in members if m.get("online")))
        store = status.get("store") or {}
        yield _gauge("mesh_store_chunks", "Chunks in the local store.", store.get("chunks", 0))
        yield _gauge("mesh_store_bytes", "Bytes in the local store.", store.get("bytes", 0))
        yield from _release_metrics(status.get("release"))
        loop = status.get("loop") or {}
        yield _gauge("mesh_loop_stall_max_seconds", "Longest trio task step in the last window (loop.window_s).",
                     (loop.get("stall_max_ms") or 0.0) / 1000.0)
        counters = self.view.counters()
        for key, (name, text) in AGENT_COUNTERS.items():
            family = CounterMetricFamily(name, text)
            family.add_metric([], counters.get(key, 0.0))
            yield family
        catalog = self.view.catalog()
        yield _gauge("mesh_assets_visible", "Assets attendees may see now.", len(catalog.visible))
        yield _gauge("mesh_assets_hidden", "Assets hidden by consent or retention.",
                     len(set(catalog.hidden) - set(catalog.thumb_owner)))


def _release_metrics(release: dict | None):
    release = release or {}
    yield _gauge("mesh_release_have_bytes", "Bytes of the current release held here.", release.get("have_bytes") or 0)
    yield _gauge("mesh_release_total_bytes", "Bytes of the current release.", release.get("total_bytes") or 0)
    yield _gauge("mesh_release_complete", "1 if the current release is complete here.",
                 1 if release.get("complete") else 0)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


class Registry:
    """The app's registry: the agent collector and the HTTP request counter."""

    def __init__(self, view) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(view))
        self.requests = Counter("mesh_http_requests", "HTTP requests served, by route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self._children: dict[tuple[str, str, int], object] = {}  # (method, path prefix, status) -> counter child

    def count(self, method: str, path: str, status: int | None) -> None:
        """One response (None: none was sent, counted as 500) to `method` `path`."""
        label = method if method in ("GET", "HEAD", "POST") else "other"
        route = route_label(path)
        key = (label, route, status or 500)
        child = self._children.get(key)
        if child is None:  # the keys are bounded: the labels are
            child = self._children[key] = self.requests.labels(label, route, str(status or 500))
        child.inc()

    async def endpoint(self, request: Request) -> Response:
        # The text format 0.0.4 unless the scraper asks for OpenMetrics (prometheus-client's
        # negotiation; its CONTENT_TYPE_LATEST names a version 1.0.0 scrapers do not all accept).
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), headers={"Content-Type": content_type})


def route_label(path: str) -> str:
    """A bounded label for a path: its first segment if known, "/" or "other"."""
    first = path.lstrip("/").split("/", 1)[0]
    if not first:
        return "/"
    return first if first in ROUTE_LABELS else "other"


class CountRequests:
    """Pure ASGI middleware counting responses (streams pass through untouched)."""

    def __init__(self, app, registry: Registry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen: list[int] = []

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                seen.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.registry.count(scope.get("method", "GET"), scope.get("path", "/"), seen[0] if seen else None)
