"""Limited drops on a box's web side: the attendee's phone page and the JSON API (rules in
`mesh.state.drops`).

Routes: `GET /drop/ID` (what is left, a reserve button; with `?order=CODE` the order's code, QR and
status), `GET /drop/ID/updates[?order=CODE]` (server-sent events: what is left and the order's
status whenever they change; the page's script applies them), `POST /drop/ID/reserve` (form,
CSRF), `GET /api/drops`, `GET /api/drops/ID`, `POST /api/drops/ID/reserve`
({"order","expires","pay_url"}), and for the POS or crew (a crew token as `Authorization: Bearer`)
`POST /api/drops/ID/sell` and `/cancel` with {"order": CODE}.
A box reserves only from its own allowance; writes go through the state file like the CLI's.
"""

from __future__ import annotations

import random
import time
from collections import deque

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mesh.errors import CredentialError, MeshError, NotFoundError, UsageError
from mesh.gateway.forms import CSRF_FIELD, FormError, check_csrf, read_form
from mesh.state import drops as dr

RESERVE_WINDOW_S = 10 * 60.0  # reservations one client address may make ...
RESERVES_PER_ADDRESS_MAX = 3  # ... at most this many in that window (a phone hoarding the stock)
ADDRESSES_TRACKED_MAX = 4096  # then the oldest addresses are forgotten
REFRESH_S = 30  # without JavaScript the page reloads this often (with it, /drop/ID/updates streams)
LIVE_STREAMS_MAX = 512  # phones following drops on this box at once; more see a page that does not move
LIVE_STREAMS_PER_ADDRESS_MAX = 8  # ... from one client address
LIVE_TALLY_S = 5.0  # a tally the streams share is recomputed at least this often (holds lapse)
ORDER_CHARS_MAX = 32


def about_left(tally: dr.Tally) -> str:
    """What the page says is left: exact when one box holds every unit, "about" when they are
    spread over boxes (another box may be selling its share right now)."""
    left = tally.left
    if tally.closed:
        return "This drop is closed."
    if left <= 0:
        return "Sold out."
    if tally.spread():
        return f"About {left} left."
    return f"{left} left."


def drop_json(tally: dr.Tally, node_id: str) -> dict:
    return {**tally.as_json(), "about": about_left(tally), "left_here": max(0, tally.node(node_id).left),
            "spread": tally.spread()}


class ReserveLimiter:
    """At most RESERVES_PER_ADDRESS_MAX reservations per client address per RESERVE_WINDOW_S."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}

    def allow(self, address: str, now: float) -> bool:
        if len(self._times) >= ADDRESSES_TRACKED_MAX and address not in self._times:
            self._times.pop(next(iter(self._times)))
        times = self._times.setdefault(address, deque(maxlen=RESERVES_PER_ADDRESS_MAX))
        while times and times[0] < now - RESERVE_WINDOW_S:
            times.popleft()
        if len(times) >= RESERVES_PER_ADDRESS_MAX:
            return False
        times.append(now)
        return True


class SharedTallies:
    """Tallies for the live streams: one per drop per state (recomputed when the state's heads move,
    or LIVE_TALLY_S later for reservations that lapse), however many phones follow it."""

    def __init__(self, view) -> None:
        self._view = view
        self._made: dict[str, tuple[float, tuple, dr.Tally | None]] = {}

    def get(self, drop_id: str) -> dr.Tally | None:
        now, heads = time.monotonic(), tuple(self._view.agent.core.state.heads())
        made = self._made.get(drop_id)
        if made is None or made[1] != heads or now - made[0] >= LIVE_TALLY_S:
            if len(self._made) >= ADDRESSES_TRACKED_MAX:
                self._made.clear()
            try:
                tally = self._view.drop_book(time.time()).tally(dr.check_drop_id(drop_id))
            except (UsageError, NotFoundError):
                tally = None
            made = self._made[drop_id] = (now, heads, tally)
        return made[2]


def live_parts(tally: dr.Tally | None, node_id: str, code: str) -> dict:
    """What a phone's /drop/ID page updates in place: the words for what is left, whether it can
    still reserve, and the status of its order (if it has one)."""
    if tally is None:
        return {"left": "This drop is gone.", "open": False, "status": ""}
    order = (tally.orders.get((node_id, code)) or next(iter(tally.find_orders(code)), None)) if code else None
    return {"left": about_left(tally), "open": not tally.closed and tally.left > 0,
            "status": order.status if order is not None else ""}


def routes(view) -> list:
    """The drop routes over an AgentView."""
    from mesh.gateway.dashboard import updates_route

    limiter = ReserveLimiter()

    def info():
        return view.agent.home.info

    book = view.drop_book
    shared = SharedTallies(view)

    def tally_of(request: Request, now: float) -> dr.Tally:
        drop_id = request.path_params["drop_id"]
        try:
            return book(now).tally(dr.check_drop_id(drop_id))
        except UsageError:
            raise NotFoundError(f"no drop {drop_id[:20]!r} here") from None

    async def reserve(drop_id: str, address: str) -> dr.Order:
        now = time.time()
        if not limiter.allow(address, now):
            raise UsageError("too many reservations from this device: pay or wait for one to expire")
        rng = random.SystemRandom()
        return await view._transact(lambda state: dr.reserve(state, view.drop_signer(), drop_id, now, rng))

    def client(request: Request) -> str:
        return request.client.host if request.client else "-"

    async def page(request: Request) -> Response:
        from mesh.gateway.pages import qr_svg, render

        now = time.time()
        tally = tally_of(request, now)
        code_text = request.query_params.get("order", "")[:ORDER_CHARS_MAX]
        order, link, qr = None, None, None
        if code_text:
            try:
                code = dr.parse_order_code(code_text)
            except UsageError as exc:
                return render(request, view, "drop.html", status=400, drop=tally.drop, tally=tally,
                              about=about_left(tally), error=str(exc), order=None, refresh=None)
            order = tally.orders.get((info().node_id, code)) or next(iter(tally.find_orders(code)), None)
            if order is None:  # our own reservation not yet in the agent's state: wait a moment
                await view.wait_state(lambda: book(time.time()).tally(tally.drop.id).find_orders(code))
                tally = book(time.time()).tally(tally.drop.id)
                order = next(iter(tally.find_orders(code)), None)
            if order is not None:
                link = dr.pay_link(tally.drop, order.code)
                qr = qr_svg(link or order.code, scale=6)
        return render(request, view, "drop.html", drop=tally.drop, tally=tally, about=about_left(tally),
                      order=order, pay_link=link, qr=qr, now=now, error=None,
                      refresh=None if order else REFRESH_S)

    def updated(request: Request) -> dict:
        try:
            code = dr.parse_order_code(request.query_params.get("order", "")[:ORDER_CHARS_MAX])
        except UsageError:
            code = ""
        return live_parts(shared.get(request.path_params["drop_id"]), info().node_id, code)

    async def reserve_form(request: Request) -> Response:
        tally = tally_of(request, time.time())
        form = await read_form(request)
        check_csrf(request, "drop", form.get(CSRF_FIELD))
        try:
            order = await reserve(tally.drop.id, client(request))
        except UsageError as exc:
            raise FormError(str(exc), 409) from None
        return RedirectResponse(f"/drop/{tally.drop.id}?order={order.code}", status_code=303)

    async def api_list(request: Request) -> JSONResponse:
        node = info().node_id
        return JSONResponse({"drops": [drop_json(t, node) for t in book(time.time()).tallies()]})

    async def api_one(request: Request) -> JSONResponse:
        try:
            return JSONResponse(drop_json(tally_of(request, time.time()), info().node_id))
        except NotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def api_reserve(request: Request) -> JSONResponse:
        try:
            tally = tally_of(request, time.time())
            order = await reserve(tally.drop.id, client(request))
        except NotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse({"order": order.code, "expires": order.expires, "drop": tally.drop.id,
                             "pay_url": dr.pay_link(tally.drop, order.code)})

    def settle(paid: bool):
        async def endpoint(request: Request) -> JSONResponse:
            header = request.headers.get("authorization", "")
            try:
                if not header.lower().startswith("bearer "):
                    raise CredentialError("crew only: send Authorization: Bearer <crew token> (`mesh crew-token`)")
                view.verify_crew(header[7:].strip())
            except CredentialError as exc:
                return JSONResponse({"error": str(exc)}, status_code=403)
            try:
                tally = tally_of(request, time.time())
                body = await request.json() if request.headers.get("content-type", "").startswith(
                    "application/json") else await read_form(request)
                code = body.get("order") if isinstance(body, dict) else None
                order = await view.settle_order(tally.drop.id, str(code or ""), paid)
            except NotFoundError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except (MeshError, ValueError, FormError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=409 if isinstance(exc, UsageError) else 400)
            return JSONResponse({"order": order.code, "status": order.status, "drop": tally.drop.id})
        return endpoint

    return [
        Route("/drop/{drop_id}", page, methods=["GET"]),
        Route("/drop/{drop_id}/reserve", reserve_form, methods=["POST"]),
        Route("/drop/{drop_id}/updates", updates_route(lambda request: True, updated, LIVE_STREAMS_MAX,
                                                                 per_address_max=LIVE_STREAMS_PER_ADDRESS_MAX)),
        Route("/api/drops", api_list, methods=["GET"]),
        Route("/api/drops/{drop_id}", api_one, methods=["GET"]),
        Route("/api/drops/{drop_id}/reserve", api_reserve, methods=["POST"]),
        Route("/api/drops/{drop_id}/sell", settle(True), methods=["POST"]),
        Route("/api/drops/{drop_id}/cancel", settle(False), methods=["POST"]),
    ]
