"""Which Host and Origin a node's HTTP side answers: the defence against DNS rebinding.

A page on attacker.example whose name then rebinds to 127.0.0.1 (or to the box's LAN address)
sends requests the browser believes same-origin with attacker.example, from the crew's own
machine. So:
- Every request must name, in its Host header, an IP address (a page cannot rebind a literal
  address: its origin would be that address) or one of the node's own names: localhost, this
  machine's host name and `HOST.local`, the names in `http_hosts` (configuration) and the names
  the event's certificate holds. Anything else answers 421 and nothing more.
- A state-changing request (anything but GET, HEAD, OPTIONS) that carries an Origin must come
  from the origin it is addressed to (same scheme-less host and port as its Host); `null` and
  foreign origins are refused (403). CSRF tokens still apply on top.
- "Log in as this machine" needs a loopback peer *and* a loopback Host (see `is_local_request`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.requests import Request

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
HOST_VERDICTS_MAX = 256  # Host values whose verdict a guard remembers (cleared when full or names change)


def own_names(configured: Iterable[str] = ()) -> frozenset[str]:
    """The names this node answers to besides IP addresses (lower case, no port)."""
    names = set(LOOPBACK_NAMES)
    hostname = socket.gethostname().lower().rstrip(".")
    if hostname:
        names.update({hostname, hostname.split(".")[0] + ".local"})
    names.update(name.lower().rstrip(".") for name in configured if name)
    return frozenset(names)


def split_host(header: str) -> tuple[str, str]:
    """`Host` -> (host lower case without brackets, port text or "")."""
    text = header.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    if header is None:  # HTTP/1.0 without Host: no browser sends that, so no page rebinds it
        return True
    host = split_host(header)[0].rstrip(".")
    wildcard = "*." + host.partition(".")[2]  # a certificate's *.event.example covers one label
    return is_address(host) or host in names or wildcard in names


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """A state-changing request's Origin (if any) names the host it was sent to."""
    if origin is None:
        return True  # scripts and old browsers; CSRF tokens and bearer tokens still apply
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname or host_header is None:
        return False
    host, port = split_host(host_header)
    default = "443" if parts.scheme == "https" else "80"
    return parts.hostname == host and str(parts.port or default) == (port or default)


def is_local_request(request: Request) -> bool:
    """Someone at the node's own keyboard: the TCP peer is loopback and so is the name it used."""
    client = request.client
    if client is None:
        return False
    try:
        peer_loopback = ipaddress.ip_address(client.host.split("%")[0]).is_loopback
    except ValueError:
        return False
    header = request.headers.get("host")
    return peer_loopback and (header is None or is_loopback_host(split_host(header)[0]))


class HostGuard:
    """Pure ASGI middleware applying the rules above to every HTTP request."""

    def __init__(self, app, names: Callable[[], frozenset[str]]) -> None:
        self.app = app
        self.names = names
        self._verdicts: tuple[frozenset[str] | None, dict[str | None, bool]] = (None, {})

    def host_ok(self, host: str | None) -> bool:
        """`host_allowed(host, names())`, remembered per Host value while the names stay the same."""
        names = self.names()
        known, verdicts = self._verdicts
        if known is not names:
            verdicts = {}
            self._verdicts = (names, verdicts)
        verdict = verdicts.get(host)
        if verdict is None:
            verdict = host_allowed(host, names)
            if len(verdicts) >= HOST_VERDICTS_MAX:
                verdicts.clear()  # Host is the client's to choose: keep the memory bounded
            verdicts[host] = verdict
        return verdict

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = request_header(scope, b"host")
        if not self.host_ok(host):
            await _refuse(send, 421, f"this node does not answer to {split_host(host)[0][:100]!r}: use its address, "
                                     "or add the name to http_hosts in its config")
            return
        if scope["method"] not in SAFE_METHODS and not origin_allowed(request_header(scope, b"origin"), host):
            await _refuse(send, 403, "cross-origin request refused")
            return
        await self.app(scope, receive, send)


def request_header(scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case) in an ASGI scope."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _refuse(send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
