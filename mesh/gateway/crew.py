"""The crew's side: login (a crew token, or a click from this machine itself), the dashboard, its
JSON API, and the actions rollback / revoke member / set policy.

Rules:
- Crew requests carry either `Authorization: Bearer <crew token>` (scripts) or the `mesh_crew`
  session cookie (browsers; HttpOnly, SameSite=Strict). A session is minted by POST /crew/login
  with a valid token, or without one when the request comes from a loopback address *and* names a
  loopback host (someone at the node's own keyboard, not a page whose name rebinds to 127.0.0.1;
  mesh.gateway.hosts refuses foreign names before any route). Nothing else is crew: a LAN request
  without either is refused (403). Wrong tokens are throttled per client address (429).
- Tokens live hours (mesh.gateway.crew_token); an organizer node renews one (POST /api/crew/renew).
- Every crew form POST carries its per-form CSRF token (`mesh.gateway.forms`); API POSTs with a
  cookie session need the `X-CSRF-Token` header, bearer requests need none.
- Actions are signed with this node's key, so only an organizer node can perform them; elsewhere
  the dashboard shows them disabled with the reason.
- Sessions live in memory (bounded); a token session re-verifies its token on every request, so
  revoking the organizer that signed it ends it.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mesh.errors import CredentialError, MeshError, UsageError
from mesh.gateway import charts, event_text
from mesh.gateway.app import status_route
from mesh.gateway.dashboard import HISTORY_S, Rates, node_rows, updates_route
from mesh.gateway.forms import CSRF_FIELD, CSRF_HEADER, FormError, check_csrf, csrf_secret, form_token, read_form
from mesh.gateway.hosts import is_local_request
from mesh.gateway.pages import _size, render, render_part

SESSION_COOKIE = "mesh_crew"
SESSIONS_MAX = 256
LOCAL_SESSION_S = 12 * 3600.0
EVENTS_SHOWN_MAX = 50
REASON_CHARS_MAX = 200
WRONG_TOKENS_MAX = 20  # wrong crew tokens one address may send per window
WRONG_TOKENS_WINDOW_S = 60.0
THROTTLED_ADDRESSES_MAX = 4096  # addresses remembered (the oldest are forgotten first)


@dataclass(frozen=True)
class Session:
    """A logged-in browser."""

    who: str  # "token:<organizer node id>" or "local"
    expires_at: float  # unix seconds
    token: str | None  # the crew token it was made from (re-verified on use)


class Sessions:
    """Bounded in-memory session table; the oldest goes first when full."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, Session] = OrderedDict()

    def add(self, session: Session) -> str:
        key = secrets.token_urlsafe(32)
        self._items[key] = session
        while len(self._items) > SESSIONS_MAX:
            self._items.popitem(last=False)
        return key

    def get(self, key: str | None) -> Session | None:
        found = self._items.get(key) if key else None
        if found is not None and found.expires_at < time.time():
            self._items.pop(key, None)
            return None
        return found

    def drop(self, key: str | None) -> None:
        if key:
            self._items.pop(key, None)


class Throttle:
    """Wrong crew tokens per client address: past WRONG_TOKENS_MAX in WRONG_TOKENS_WINDOW_S, the
    address is refused (429) until the window ends, before any signature is verified."""

    def __init__(self) -> None:
        self._wrong: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address -> (window start, count)

    def blocked(self, address: str, now: float) -> bool:
        start, count = self._wrong.get(address, (now, 0))
        if now - start >= WRONG_TOKENS_WINDOW_S:
            self._wrong.pop(address, None)
            return False
        return count >= WRONG_TOKENS_MAX

    def wrong(self, address: str, now: float) -> None:
        start, count = self._wrong.pop(address, (now, 0))
        if now - start >= WRONG_TOKENS_WINDOW_S:
            start, count = now, 0
        self._wrong[address] = (start, count + 1)
        while len(self._wrong) > THROTTLED_ADDRESSES_MAX:
            self._wrong.popitem(last=False)


class TooManyTries(CredentialError):
    """A client sent too many wrong crew tokens (answered 429)."""

    status = 429


def routes(view) -> list:
    sessions = Sessions()
    throttle = Throttle()
    rates = Rates()

    def verify(request: Request, token: str):
        """The grant of a token a request sent; wrong ones count against its address."""
        address, now = request.client.host if request.client else "-", time.time()
        if throttle.blocked(address, now):
            raise TooManyTries(f"too many wrong crew tokens: wait {WRONG_TOKENS_WINDOW_S:.0f} s")
        try:
            return view.verify_crew(token)
        except CredentialError:
            throttle.wrong(address, now)
            raise

    def crew_of(request: Request) -> Session | None:
        """The crew identity of a request, or None."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            try:
                grant = verify(request, header[7:].strip())
            except TooManyTries:
                raise
            except CredentialError:
                return None
            return Session(f"token:{grant.publisher}", grant.expires_at, header[7:].strip())
        key = request.cookies.get(SESSION_COOKIE)
        session = sessions.get(key)
        if session is not None and session.token is not None:
            try:
                view.verify_crew(session.token)
            except CredentialError:
                sessions.drop(key)
                return None
        return session

    def require_crew(request: Request, form: dict | None, form_name: str) -> Session:
        session = crew_of(request)
        if session is None:
            raise CredentialError("crew only: log in at /crew with a crew token (`mesh crew-token`)")
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        if not bearer:
            sent = form.get(CSRF_FIELD) if form is not None else request.headers.get(CSRF_HEADER)
            check_csrf(request, form_name, sent)
        return session

    async def dashboard(request: Request) -> Response:
        session = crew_of(request)
        if session is None:
            return render(request, view, "login.html", status=401 if request.method == "GET" else 403,
                          local=is_local_request(request), error=LOGIN_ERRORS.get(request.query_params.get("error", "")))
        data = dashboard_data(view, rates)
        return render(request, view, "dashboard.html", data=data, session=session, **event_words(data),
                      blocked=view.crew_actions_allowed(), done=request.query_params.get("done"),
                      api_csrf=form_token(csrf_secret(request), "api"))

    def updated_parts(request: Request) -> dict:
        """The parts of the dashboard that change, rendered as on the page (for /crew/updates)."""
        data = dashboard_data(view, rates)
        context = {"data": data, "blocked": view.crew_actions_allowed(), **event_words(data)}
        return {name: render_part(request, view, template, **context) for name, template in UPDATED_PARTS.items()}

    async def login(request: Request) -> Response:
        form = await read_form(request)
        check_csrf(request, "login", form.get(CSRF_FIELD))
        token = form.get("token", "").strip()
        if token:
            try:
                grant = verify(request, token)
            except CredentialError as exc:
                return RedirectResponse("/crew?" + urlencode({"error": _login_error(exc)}), status_code=303)
            session = Session(f"token:{grant.publisher}", grant.expires_at, token)
        elif is_local_request(request):  # a loopback peer that also used a loopback name (not a rebound one)
            session = Session("local", time.time() + LOCAL_SESSION_S, None)
        else:
            return RedirectResponse("/crew?" + urlencode({"error": "missing"}), status_code=303)
        response = RedirectResponse("/crew", status_code=303)
        response.set_cookie(SESSION_COOKIE, sessions.add(session), httponly=True, samesite="strict", path="/",
                            max_age=int(max(60, session.expires_at - time.time())))
        return response

    async def logout(request: Request) -> Response:
        form = await read_form(request)
        check_csrf(request, "logout", form.get(CSRF_FIELD))
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/crew", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def act(request: Request, name: str) -> Response:
        """A crew form: check crew and CSRF, run the action, redirect with what happened."""
        if crew_of(request) is None:  # refuse before reading anything
            raise CredentialError("crew only: log in at /crew with a crew token (`mesh crew-token`)")
        form = await read_form(request)
        require_crew(request, form, name)
        try:
            done = await ACTIONS[name](view, form)
        except (UsageError, CredentialError, MeshError, ValueError) as exc:
            return RedirectResponse("/crew?" + urlencode({"done": f"failed: {exc}"}), status_code=303)
        return RedirectResponse("/crew?" + urlencode({"done": done}), status_code=303)

    async def api_act(request: Request, name: str) -> Response:
        require_crew(request, None if _has_bearer(request) else {CSRF_FIELD: request.headers.get(CSRF_HEADER)}, "api")
        form = await _json_or_form(request)
        try:
            done = await ACTIONS[name](view, form)
        except (UsageError, CredentialError, MeshError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "done": done})

    def crew_get(build):
        async def endpoint(request: Request) -> Response:
            if crew_of(request) is None:
                return JSONResponse({"error": "crew only: send Authorization: Bearer <crew token>"},
                                    status_code=403)
            return JSONResponse(build())
        return endpoint

    def post(handler, name):
        async def endpoint(request: Request) -> Response:
            return await handler(request, name)
        return endpoint

    async def renew(request: Request) -> Response:
        """A fresh crew token for a crew member, signed by this organizer node."""
        session = require_crew(request, None if _has_bearer(request) else {CSRF_FIELD: request.headers.get(CSRF_HEADER)},
                               "api")
        try:
            token = view.renew_crew(session.token)
        except (UsageError, CredentialError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        grant = view.verify_crew(token)
        return JSONResponse({"token": token, "expires_at": grant.expires_at}, headers={"Cache-Control": "no-store"})

    return [
        Route("/api/status", status_route(view, lambda request: crew_of(request) is not None)),
        Route("/api/crew/renew", renew, methods=["POST"]),
        Route("/crew", dashboard, methods=["GET"]),
        Route("/crew/updates", updates_route(lambda request: crew_of(request) is not None, updated_parts)),
        Route("/crew/login", login, methods=["POST"]),
        Route("/crew/logout", logout, methods=["POST"]),
        *[Route(f"/crew/{name}", post(act, name), methods=["POST"]) for name in ACTIONS],
        *[Route(f"/api/crew/{name}", post(api_act, name), methods=["POST"]) for name in ACTIONS],
        Route("/api/dashboard", crew_get(lambda: dashboard_data(view, rates))),
        Route("/api/members", crew_get(lambda: {"members": view.members()})),
        Route("/api/peers", crew_get(lambda: {"peers": view.status().get("peers", [])})),
        Route("/api/releases", crew_get(lambda: {"releases": view.releases()})),
        Route("/api/events", crew_get(lambda: {"events": _events(view)})),
        Route("/api/health", crew_get(lambda: {"health": view.status().get("health"),
                                               "peers": {p["node_id"]: p.get("health")
                                                         for p in view.status().get("peers", [])}})),
        Route("/api/store", crew_get(lambda: {"store": view.status().get("store"),
                                              "release": view.status().get("release")})),
    ]


# The login page shows only these messages, named by code in its URL (`/crew?error=CODE`): text
# from a URL would let a crafted link show anything on our page.
LOGIN_ERRORS = {
    "missing": "Paste a crew token (`mesh crew-token` on an organizer's laptop prints one).",
    "expired": "That crew token has expired or is not valid yet: get a fresh one with `mesh crew-token`.",
    "revoked": "That crew token's organizer has been revoked.",
    "throttled": "Too many wrong crew tokens from this device: wait a minute.",
    "invalid": "That is not a crew token of this mesh.",
}


def _login_error(exc: CredentialError) -> str:
    if isinstance(exc, TooManyTries):
        return "throttled"
    text = str(exc)
    return "expired" if "expired" in text else "revoked" if "revoked" in text else "invalid"


def _has_bearer(request: Request) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


async def _json_or_form(request: Request) -> dict:
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.body()
        if len(body) > 16 * 1024:
            raise FormError("body too large", 413)
        import json

        try:
            found = json.loads(body or b"{}")
        except ValueError:
            raise FormError("malformed JSON") from None
        if not isinstance(found, dict):
            raise FormError("expected a JSON object")
        return {str(k): str(v) for k, v in found.items() if v is not None}
    return await read_form(request)


def _events(view) -> list[dict]:
    events = view.events()[-EVENTS_SHOWN_MAX:]
    return [{k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in e.items()}
            for e in reversed(events)]


def event_words(data: dict) -> dict:
    """What the dashboard's templates draw with: `sentence(event)` and `raw_line(event)`
    (mesh.gateway.event_text), and the charts' SVG (mesh.gateway.charts)."""
    names = {m["node_id"]: m["name"] for m in data["members"] if m.get("name")}
    return {"sentence": lambda event: event_text.sentence(event, names, _size), "raw_line": event_text.raw_line,
            "throughput_svg": charts.throughput_svg(data["throughput"], time.time(), HISTORY_S),
            "tags_svg": charts.tags_svg(data["tags"])}


# What /crew/updates sends: element id on the page -> the template that renders its content.
UPDATED_PARTS = {"nodes": "_nodes.html", "current-release": "_current_release.html", "events": "_events.html",
                 "charts": "_charts.html", "drops": "_drops.html"}


def dashboard_data(view, rates: Rates | None = None) -> dict:
    status = view.status()
    rates = rates if rates is not None else Rates()
    return {"node": view.node_info(), "members": node_rows(view, status, rates, time.time()),
            "releases": view.releases(), "throughput": list(rates.history),
            "tags": view.tag_counts() if hasattr(view, "tag_counts") else [],
            "drops": view.drop_rows(),
            "release": status.get("release"), "store": status.get("store"), "health": status.get("health"),
            "events": _events(view), "actions_blocked": view.crew_actions_allowed(),
            "listen_addresses": status.get("listen_addresses", []), "pending": status.get("pending_boxes", [])}


# ---- actions: (view, form) -> one line saying what happened ------------------------------------------


async def _rollback(view, form: dict) -> str:
    release_id = (form.get("release_id") or "").strip().lower() or None
    made = await view.rollback(release_id)
    await view.wait_state(lambda: any(r["current"] and r["id"] == made["id"] for r in view.releases()))
    return f"release {made['name']} ({made['id']}) is current again"


async def _revoke(view, form: dict) -> str:
    node_id = (form.get("node_id") or "").strip()
    await view.revoke_member(node_id, (form.get("reason") or "")[:REASON_CHARS_MAX])
    return f"revoked {node_id[:16]}…; peers drop it as soon as they sync"


async def _policy(view, form: dict) -> str:
    scope = (form.get("scope") or "").strip()
    default = form.get("default")
    if default not in ("grant", "deny"):
        raise UsageError("a policy's default is grant or deny")
    await view.set_policy(scope, default, (form.get("description") or "").strip())
    return f"policy for {scope} set (default {default})"


async def _admit(view, form: dict) -> str:
    name = (form.get("name") or "").strip() or None
    node_id = await view.admit_box(form.get("node_id") or "", form.get("code") or "", form.get("role") or "edge", name)
    return f"admitted {node_id[:16]}… as {name or 'the name it picks'}; it joins the mesh now"


async def _drop_settle(view, form: dict) -> str:
    """Mark a reservation made at this box paid (`paid=yes`) or cancel it."""
    paid = form.get("paid", "yes") != "no"
    order = await view.settle_order((form.get("drop_id") or "").strip(), form.get("order") or "", paid)
    await view.wait_state(lambda: not any(o["order"] == order.code for d in view.drop_rows() for o in d["waiting"]))
    return f"order {order.code} is {order.status}"


ACTIONS = {"rollback": _rollback, "revoke": _revoke, "policy": _policy, "admit": _admit,
           "drop-settle": _drop_settle}
