"""The web page of a box waiting to be admitted (mesh.drivers.pairing).

It says that the box waits and how to admit it. The code itself is shown only to a browser on the
box itself (a kiosk screen, `http://localhost:8080/`; a loopback peer that used a loopback name,
so a page whose name rebinds to the box learns nothing): anyone on the LAN who read the code could
answer an organizer's `mesh admit` in the box's place (announcing a look-alike box) and receive
its invite. The JSON at /api/pending follows the same rule.
"""

from __future__ import annotations

from typing import Callable

from markupsafe import escape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mesh.gateway.hosts import HostGuard, is_local_request, own_names

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="10"><title>Waiting to be admitted</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}
.code{{font:700 3rem/1.2 ui-monospace,monospace;letter-spacing:.1em}}small{{color:#555}}</style></head>
<body><h1>Waiting to be admitted</h1>
<p>This box (<b>box {box}</b>) has not joined a mesh yet.</p>
{code_block}
<p><small>An organizer admits it with <code>mesh admit CODE</code>, or from the crew dashboard's
"Waiting to be admitted" list. A fleet key (<code>enroll</code> in its config, <code>MESH_ENROLL</code>
or <code>/boot/assetmesh.key</code>) makes it join by itself.</small></p></body></html>
"""


def pending_app(state: Callable[[], dict], http_hosts: tuple[str, ...] = ()) -> Starlette:
    """`state()` -> {"node_id", "code"} (the code shown now)."""
    names = own_names(http_hosts)

    async def page(request: Request) -> Response:
        doc = state()
        if is_local_request(request):
            block = f'<p>Code: <span class="code">{escape(doc["code"])}</span></p>'
        else:
            block = "<p>The code is on this box's own screen and console (it is not shown over the network).</p>"
        return HTMLResponse(PAGE.format(box=escape(doc["node_id"][:6]), code_block=block),
                            headers={"Cache-Control": "no-store"})

    async def api(request: Request) -> Response:
        doc = state()
        shown = {"node_id": doc["node_id"], "state": "pending"}
        if is_local_request(request):
            shown["code"] = doc["code"]
        return JSONResponse(shown, headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("waiting to be admitted\n")

    async def other(request: Request) -> Response:
        return PlainTextResponse("this box is waiting to be admitted\n", status_code=503)

    app = Starlette(routes=[Route("/", page), Route("/api/pending", api), Route("/healthz", healthz),
                            Route("/{path:path}", other)])
    app.add_middleware(HostGuard, names=lambda: names)  # a rebound name never sees the code
    return app
