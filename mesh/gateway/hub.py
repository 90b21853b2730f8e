"""A co-op hub's HTTP side: one port, each mesh's app under its own host name, the hub's own app
for every other name.

- `HubRouter` picks the app by the request's Host (exact name, any port): a mesh's pages, API and
  CDN answer only on the host hub.json gives that mesh, so nothing under one mesh's host can
  reach another mesh's store or state. Any other Host reaches the hub app, which names no mesh.
- The hub app: `/` says this box is a hub and nothing more (which meshes it serves is not the
  public's business); `/hub` is the operator's view (meshes, quotas, disk, health, peers per
  mesh) behind the hub's operator token (`mesh hub token`), as a SameSite=Strict HttpOnly
  cookie after the login form or as `Authorization: Bearer`; `/hub/api/status` is its JSON.
  Host and Origin rules are those of every node (mesh.gateway.hosts).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mesh.gateway.forms import FormError, check_csrf, csrf_secret, form_token, read_form, remember_secret
from mesh.gateway.hosts import HostGuard, request_header, split_host
from mesh.gateway.pages import STATIC_DIR, SecurityHeaders, _env

HUB_COOKIE = "mesh_hub"
LOGIN_FORM = "hub-login"


class HubRouter:
    """Pure ASGI: a mesh's app for its host name, the hub app for anything else."""

    def __init__(self, apps: dict[str, Callable], hub_app: Callable) -> None:
        self.apps = {host.lower().rstrip("."): app for host, app in apps.items()}
        self.hub_app = hub_app

    async def __call__(self, scope, receive, send) -> None:
        app = self.hub_app
        if scope["type"] in ("http", "websocket"):
            header = request_header(scope, b"host")
            if header is not None:
                app = self.apps.get(split_host(header)[0].rstrip("."), self.hub_app)
        await app(scope, receive, send)


def session_value(operator_token: str) -> str:
    """What the operator's cookie holds: derived from the token (the token itself never sits in
    a cookie jar), so rotating the token logs everyone out."""
    return hmac.new(operator_token.encode(), b"assetmesh hub session", hashlib.sha256).hexdigest()


def hub_app(status: Callable[[], dict], operator_token: Callable[[], str], names: Callable[[], frozenset[str]]):
    """The hub's own app; `status()` is the operator's document (mesh.drivers.hub)."""

    def operator(request: Request) -> bool:
        token = operator_token()
        bearer = request.headers.get("authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(bearer[7:].strip().encode(), token.encode()):
            return True
        cookie = request.cookies.get(HUB_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), session_value(token).encode())

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        secret = csrf_secret(request)
        html = _env.get_template(name).render(csrf=form_token(secret, LOGIN_FORM), **context)
        response = HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})
        return remember_secret(request, response)

    async def public(request: Request) -> Response:
        return page(request, "hub_public.html")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def dashboard(request: Request) -> Response:
        if not operator(request):
            return page(request, "hub_login.html", error=request.query_params.get("error") == "token")
        return page(request, "hub.html", hub=status())

    async def login(request: Request) -> Response:
        try:
            form = await read_form(request)
            check_csrf(request, LOGIN_FORM, form.get("csrf"))
        except FormError as exc:
            return HTMLResponse(str(exc), status_code=exc.status)
        token = operator_token()
        if not hmac.compare_digest(form.get("token", "").strip().encode(), token.encode()):
            return RedirectResponse("/hub?error=token", status_code=303)
        response = RedirectResponse("/hub", status_code=303)
        response.set_cookie(HUB_COOKIE, session_value(token), httponly=True, samesite="strict", path="/hub")
        return response

    async def logout(request: Request) -> Response:
        try:
            check_csrf(request, LOGIN_FORM, (await read_form(request)).get("csrf"))
        except FormError as exc:
            return HTMLResponse(str(exc), status_code=exc.status)
        response = RedirectResponse("/hub", status_code=303)
        response.delete_cookie(HUB_COOKIE, path="/hub")
        return response

    async def api_status(request: Request) -> Response:
        if not operator(request):
            return JSONResponse({"error": "the hub's operator token is needed (`mesh hub token`)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return JSONResponse(status(), headers={"Cache-Control": "no-store"})

    async def not_found(request: Request, exc) -> Response:
        return page(request, "hub_public.html", status_code=404, missing=True)

    app = Starlette(routes=[
        Route("/", public), Route("/healthz", healthz), Route("/hub", dashboard),
        Route("/hub/login", login, methods=["POST"]), Route("/hub/logout", logout, methods=["POST"]),
        Route("/hub/api/status", api_status),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ], exception_handlers={404: not_found})
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HostGuard, names=names)
    return app

