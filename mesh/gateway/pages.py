"""Attendee pages: home with the tag cloud, search, asset pages, consent, the printable door page,
the service worker and its offline list, and the JSON API behind them. Server-rendered with jinja2
templates shipped in the package (`templates/`, `static/`); no external CDN, font or script."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mesh.errors import CredentialError, MeshError, UsageError
from mesh.gateway.forms import CSRF_FIELD, FormError, check_csrf, csrf_secret, form_token, read_form, remember_secret
from mesh.state import consent as cs
from mesh.state.records import AssetRecord, normalize_tag

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
RECENT_ASSETS_MAX = 24
RELEASE_LISTED_MAX = 100
DOOR_URL_CHARS_MAX = 300
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; media-src 'self' blob:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make browsers send `Origin: null` on our own forms
    (b"x-frame-options", b"DENY"),
]

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=jinja2.select_autoescape(["html", "svg"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _kind(media_type: str) -> str:
    for prefix in ("image", "video", "audio"):
        if media_type.startswith(prefix + "/"):
            return prefix
    return "file"


def _rate(per_s: float | None) -> str:
    return "–" if per_s is None else _size(int(per_s)).replace(" bytes", " B") + "/s"


def _when(unix_s: float | None) -> str:
    """An absolute time for pages (scripts replace it with '3 min ago')."""
    return "never" if not unix_s else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_s))


_env.filters["size"] = _size
_env.filters["rate"] = _rate
_env.filters["when"] = _when
_env.filters["kind"] = _kind
_env.filters["urlpath"] = lambda path: quote(path)


def render(request: Request, view, name: str, status: int = 200, **context) -> HTMLResponse:
    """Render a template with the node, the crew state and per-form CSRF tokens."""
    html = render_part(request, view, name, **context)
    response = HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-cache"})
    return remember_secret(request, response)


def render_part(request: Request, view, name: str, **context) -> str:
    """A template's HTML with what `render` gives every template (a page, or a part of one)."""
    secret = csrf_secret(request)
    can_show = getattr(view, "can_show", None) or getattr(view, "has_file", lambda cid: False)
    return _env.get_template(name).render(
        node=view.node_info(), csrf=lambda form: form_token(secret, form), csrf_field=CSRF_FIELD,
        path=request.url.path, can_show=can_show, **context,
    )


def asset_json(record: AssetRecord) -> dict:
    return {"cid": record.cid, "name": record.name, "size": record.size, "media_type": record.media_type,
            "tags": sorted(record.tags), "added_at": record.added_at, "thumbnail": record.thumbnail,
            "url": f"/c/{record.cid}", "page": f"/a/{record.cid}",
            "thumbnail_url": f"/c/{record.thumbnail}" if record.thumbnail else None}


def _tag_param(request: Request) -> str | None:
    text = request.query_params.get("tag", "").strip()
    if not text:
        return None
    try:
        return normalize_tag(text)
    except ValueError:
        return None


def routes(view) -> list:
    """The attendee routes over an AgentView."""

    async def home(request: Request) -> Response:
        await view.refresh()
        catalog = view.catalog()
        recent = view.search()[:RECENT_ASSETS_MAX]
        files = view.release_paths()[:RELEASE_LISTED_MAX]
        release = (view.status().get("release") or {})
        return render(request, view, "home.html", tags=catalog.tags, assets=recent, files=files,
                      release=release, total=len(catalog.visible), retention=retention_sentence(view.policies_json()))

    async def search(request: Request) -> Response:
        query = request.query_params.get("q", "")[:100]
        tag = _tag_param(request)
        await view.refresh()
        found = view.search(query, tag)
        return render(request, view, "search.html", query=query, tag=tag, assets=found,
                      tags=view.catalog().tags)

    async def api_search(request: Request) -> JSONResponse:
        await view.refresh()
        found = view.search(request.query_params.get("q", "")[:100], _tag_param(request))
        return JSONResponse({"assets": [asset_json(r) for r in found]})

    async def api_tags(request: Request) -> JSONResponse:
        await view.refresh()
        return JSONResponse({"tags": [t.__dict__ for t in view.catalog().tags]})

    async def asset_page(request: Request) -> Response:
        cid = request.path_params["cid"]
        record = view.asset(cid)
        if record is None:
            gone = view.is_hidden(cid)
            return render(request, view, "message.html", status=410 if gone else 404,
                          title="No longer shown" if gone else "Not found",
                          message=("This media was withdrawn (consent) or its time is over (retention)."
                                   if gone else "There is nothing with this address on this node."))
        return render(request, view, "asset.html", asset=record, held=view.has_file(cid),
                      available=view.can_show(cid) if hasattr(view, "can_show") else view.has_file(cid))

    async def api_asset(request: Request) -> JSONResponse:
        cid = request.path_params["cid"]
        record = view.asset(cid)
        if record is None:
            gone = view.is_hidden(cid)
            return JSONResponse({"error": "gone" if gone else "not found"}, status_code=410 if gone else 404)
        return JSONResponse({**asset_json(record), "held": view.has_file(cid)})

    async def consent_page(request: Request) -> Response:
        code_text = request.query_params.get("code", "").strip()[:cs.SUBJECT_INPUT_CHARS_MAX]
        code, error, rows = None, None, []
        if code_text:
            try:
                code = cs.parse_subject_code(code_text)
                rows = view.consent_rows(code)
            except ValueError as exc:
                error = f"{code_text!r} is not a badge code: {exc}"
        return render(request, view, "consent.html", code=code, code_text=code_text, error=error, rows=rows,
                      policies=view.policies_json(), done=request.query_params.get("done"))

    async def consent_post(request: Request) -> Response:
        form = await read_form(request)
        check_csrf(request, "consent", form.get(CSRF_FIELD))
        action = form.get("action")
        if action not in ("grant", "revoke"):
            raise FormError("choose grant or revoke")
        try:
            code = cs.parse_subject_code(form.get("code", ""))
            scope = cs.check_scope(form.get("scope", ""))
        except (ValueError, UsageError) as exc:
            raise FormError(str(exc)) from None
        secret = form.get("secret", "").strip()
        refused = await badge_refusal(code, secret) if action == "grant" else None
        if refused:
            status, message = refused
            return render(request, view, "consent.html", status=status, code=code, code_text=code, error=message,
                          rows=view.consent_rows(code), policies=view.policies_json(), done=None,
                          kept={"scope": scope, "secret": secret})
        try:
            await view.decide(code, scope, action == "grant")
        except (ValueError, UsageError) as exc:
            raise FormError(str(exc)) from None
        query = urlencode({"code": code, "done": f"{action}:{scope}"})
        return RedirectResponse(f"/consent?{query}", status_code=303)

    async def badge_refusal(code: str, secret: str) -> tuple[int, str] | None:
        """Why this page may not record a grant for `code` with `secret` (status, message), or None.
        A withdrawal needs only the code (it can only hide); a grant needs the badge's secret."""
        if not secret:
            return 400, ("To allow, your badge secret is needed: scan the QR code on your badge and it is "
                         "filled in. Stopping needs only the code. A badge without a QR code: ask the crew desk.")
        if view.badge_checks_busy():
            return 503, "Nothing was changed: this box is busy checking badges. Try again in a moment."
        try:
            holds = await view.badge_holds(code, secret)
        except ValueError as exc:
            return 400, f"Nothing was changed: that badge secret is mistyped ({exc})."
        if not holds:
            return 403, (f"Nothing was changed: that secret is not the one of badge {code}. Scan the QR code "
                         "on your badge again, or ask the crew desk.")
        return None

    async def api_consent(request: Request) -> JSONResponse:
        try:
            code = cs.parse_subject_code(request.path_params["code"])
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"subject": code, "scopes": view.consent_rows(code)})

    async def api_policies(request: Request) -> JSONResponse:
        return JSONResponse(view.policies_json())

    async def door(request: Request) -> Response:
        url = door_url(request, view)
        return render(request, view, "door.html", url=url, qr=qr_svg(url),
                      retention=retention_sentence(view.policies_json()))

    async def offline_list(request: Request) -> JSONResponse:
        release = view.status().get("release") or {}
        await view.refresh()
        thumbs = [f"/c/{r.thumbnail}" for r in view.search() if r.thumbnail and view.has_file(r.thumbnail)]
        files = ["/release/current/" + quote(path) for path in view.offline_files()]
        pages = ["/", "/search", "/consent", "/static/style.css", "/static/app.js", "/static/consent.js"]
        version = f"{release.get('root')}:{len(thumbs)}"
        return JSONResponse({"version": version, "pages": pages, "files": files, "thumbs": thumbs[:200]},
                            headers={"Cache-Control": "no-store"})

    async def service_worker(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "sw.js", media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    return [
        Route("/", home),
        Route("/search", search),
        Route("/a/{cid}", asset_page),
        Route("/consent", consent_page, methods=["GET"]),
        Route("/consent", consent_post, methods=["POST"]),
        Route("/door", door),
        Route("/sw.js", service_worker),
        Route("/offline.json", offline_list),
        Route("/favicon.ico", favicon),
        Route("/api/search", api_search),
        Route("/api/tags", api_tags),
        Route("/api/assets/{cid}", api_asset),
        Route("/api/consent/{code}", api_consent),
        Route("/api/policies", api_policies),
        Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]


def retention_sentence(policies: dict) -> str:
    """What the arrival screens say about how long media showing people is kept."""
    for rule in policies.get("retention", ()):
        if rule.get("category") == cs.CAPTURED and rule.get("retention_s"):
            return (f"Photos and clips that show people are kept {rule['plain']}, then deleted from every "
                    "box here; you decide on your badge code's page whether they are shown at all.")
    return ("Photos and clips that show people are shown only with their consent (your badge code's page), "
            "and kept until the crew deletes them.")


def door_url(request: Request, view) -> str:
    """The address attendees should open: ?url=, else the host the browser used unless it is
    loopback, else this node's first LAN address."""
    given = request.query_params.get("url", "").strip()
    if given.startswith(("http://", "https://")) and len(given) <= DOOR_URL_CHARS_MAX:
        return given
    host = request.url.hostname or "127.0.0.1"
    port = request.url.port
    if _loopback(host):
        lan = view.lan_hosts()
        if lan:
            host = lan[0]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}{':' + str(port) if port and port != 80 else ''}/"


def badge_url(base_url: str, badge: cs.Badge) -> str:
    """The consent link for a badge's QR code: `BASE/consent?code=CODE#secret=SECRET`. The secret
    rides in the fragment, which browsers never send: the page's script moves it into the form, so
    it reaches the node only in the body of a grant, never in a URL the node or a proxy logs."""
    if not base_url.startswith(("http://", "https://")):
        raise UsageError("a node's address starts with http:// or https://")
    return f"{base_url.rstrip('/')}/consent?{urlencode({'code': badge.code})}#secret={badge.secret}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def qr_svg(url: str, scale: int = 8) -> str:
    """An inline SVG QR code of `url` (segno; error correction M) with a viewBox and no fixed
    size, so CSS scales it to its box on a phone, a desktop and paper."""
    import segno

    return segno.make(url, error="m").svg_inline(scale=scale, border=2, omitsize=True)


def exception_handlers() -> dict:
    async def form_error(request: Request, exc: FormError) -> Response:
        return _error(request, exc.status, str(exc))

    async def credential_error(request: Request, exc: CredentialError) -> Response:
        return _error(request, getattr(exc, "status", 403), str(exc))  # 429 for too many wrong tokens

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, exc.detail or "error")

    async def mesh_error(request: Request, exc: MeshError) -> Response:
        return _error(request, 400, str(exc))

    return {FormError: form_error, CredentialError: credential_error, HTTPException: http_error,
            MeshError: mesh_error}


def _error(request: Request, status: int, message: str) -> Response:
    browser = "text/html" in request.headers.get("accept", "")
    if browser and not request.url.path.startswith("/api/"):  # the API answers JSON, whoever asks
        html = _env.get_template("message.html").render(
            node=None, title=f"Error {status}", message=message, path=request.url.path)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


class SecurityHeaders:
    """Pure ASGI middleware: a strict CSP (same-origin only) and friends on every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
