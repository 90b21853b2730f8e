"""The HTTP face of a node (ASGI, served by hypercorn inside the agent's nursery).

For now: `GET /healthz` and `GET /api/status`. The local CDN, search, consent pages and dashboard
arrive with the gateway issue.
"""

from __future__ import annotations

from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def create_app(status: Callable[[], dict]) -> Starlette:
    """An app over a read-only view: `status()` returns the `mesh status --json` document."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def api_status(request: Request) -> JSONResponse:
        return JSONResponse(status())

    return Starlette(routes=[Route("/healthz", healthz), Route("/api/status", api_status)])


async def serve_http(app: Starlette, address: tuple[str, int], *, task_status=None) -> None:
    """Serve `app` on address with hypercorn's trio worker until cancelled."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    host, port = address
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    if task_status is None:
        task_status = trio.TASK_STATUS_IGNORED
    await serve(app, config, task_status=task_status)
