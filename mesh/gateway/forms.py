"""Forms that cannot be forged from another site: a random secret in a SameSite=Strict, HttpOnly
cookie, and in every form a per-form token derived from it (HMAC-SHA256 of the form's name keyed by
the secret). A POST is accepted only when the token matches the cookie's secret for that form.
Bodies are read with a byte limit and parsed as `application/x-www-form-urlencoded`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

CSRF_COOKIE = "mesh_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
FORM_BYTES_MAX = 16 * 1024
FORM_FIELDS_MAX = 32
SECRET_BYTES = 32


class FormError(Exception):
    """A form that is too large, malformed, or fails the CSRF check."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def csrf_secret(request: Request) -> str:
    """This browser's secret: from its cookie, or a fresh one (set by `remember_secret`)."""
    found = request.cookies.get(CSRF_COOKIE, "")
    if len(found) == 2 * SECRET_BYTES and all(c in "0123456789abcdef" for c in found):
        return found
    secret = request.scope.setdefault("mesh.new_csrf", secrets.token_hex(SECRET_BYTES))
    return secret


def form_token(secret: str, form: str) -> str:
    return hmac.new(bytes.fromhex(secret), form.encode(), hashlib.sha256).hexdigest()


def remember_secret(request: Request, response: Response) -> Response:
    """Set the cookie if this request minted a new secret."""
    fresh = request.scope.get("mesh.new_csrf")
    if fresh:
        response.set_cookie(CSRF_COOKIE, fresh, httponly=True, samesite="strict", path="/")
    return response


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body as a dict (last value wins); FormError past the limits."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > FORM_BYTES_MAX):
        raise FormError("form too large", 413)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > FORM_BYTES_MAX:
            raise FormError("form too large", 413)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormError("expected a form (application/x-www-form-urlencoded)", 415)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=FORM_FIELDS_MAX)
    except (UnicodeDecodeError, ValueError):
        raise FormError("malformed form") from None
    return dict(pairs)


def check_csrf(request: Request, form_name: str, sent: str | None) -> None:
    """FormError 403 unless `sent` is this browser's token for `form_name`."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if len(cookie) != 2 * SECRET_BYTES or not sent:
        raise FormError("this form expired or came from another site: reload the page and try again", 403)
    try:
        expected = form_token(cookie, form_name)
    except ValueError:
        raise FormError("bad form token", 403) from None
    if not hmac.compare_digest(expected, sent):
        raise FormError("this form expired or came from another site: reload the page and try again", 403)
