"""HTTP -> HTTPS: while the node serves HTTPS, a browser on its plain-HTTP side is sent there.

Rules:
- Only GET and HEAD are redirected (307, never cached for good: HTTPS may stop when the certificate
  is removed), to the same path and query on the HTTPS port.
- Only when the name the browser used is one the served certificate holds: redirecting
  http://192.168.1.20:8080/ to a certificate made for door.event.example would end on a
  certificate error, where plain HTTP works. Other requests are answered over HTTP as before.
- `/healthz` always answers on HTTP (probes and load balancers).
"""

from __future__ import annotations

from collections.abc import Callable

from mesh.gateway.hosts import split_host
from mesh.state.tls import TlsCertificate

HEALTH_PATH = "/healthz"
REDIRECT_METHODS = frozenset({"GET", "HEAD"})


class HttpsRedirect:
    """Pure ASGI middleware applying the rules above."""

    def __init__(self, app, serving: Callable[[], TlsCertificate | None], https_port: int) -> None:
        self.app = app
        self.serving = serving  # the certificate a running HTTPS server uses now, or None
        self.https_port = https_port

    async def __call__(self, scope, receive, send) -> None:
        location = self._location(scope) if scope["type"] == "http" else None
        if location is None:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 307,
                    "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})

    def _location(self, scope) -> str | None:
        if scope["method"] not in REDIRECT_METHODS or scope["path"] == HEALTH_PATH:
            return None
        certificate = self.serving()
        header = dict(scope.get("headers", ())).get(b"host")
        if certificate is None or header is None:
            return None
        host, _ = split_host(header.decode("latin-1"))
        if not host or not certificate.covers(host):
            return None
        shown = f"[{host}]" if ":" in host else host
        port = "" if self.https_port == 443 else f":{self.https_port}"
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        return f"https://{shown}{port}{target}"
