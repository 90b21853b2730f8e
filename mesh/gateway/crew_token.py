"""Crew tokens: an organizer's signed statement that whoever holds it is crew until it expires.

A token is `amc1.` + base64url of the canonical CBOR blob [organizer's credential chain, [body,
signature]], the same shape as release and policy statements (`mesh.state.releases`). The body is
{kind "crew", mesh, publisher, at, expires_at}; the signature is Ed25519 by the publisher's node key
over `assetmesh/v1/crew\\x00` + body. Any node of the mesh verifies it offline: the chain must prove
the publisher an organizer at `at` and not revoked at all (a revocation ends every token it ever
signed, whenever it was signed), and `now` must lie in [at - skew, expires_at]. Tokens live hours,
not days (CREW_VALID_S_MAX); an organizer node renews one before it runs out. Nothing is stored:
the crew cookie carries the token itself.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.errors import CredentialError, UsageError
from mesh.ids import mesh_id_from_authority_key, public_key_from_node_id
from mesh.state.membership import CLOCK_SKEW_S, RevocationList, Role, _check_authority_key, _check_now, verify_chain
from mesh.state.releases import BLOB_BYTES_MAX, _check_signer, _open_blob, _time_problem

TOKEN_PREFIX = "amc1."
TOKEN_CHARS_MAX = 4 * BLOB_BYTES_MAX // 3 + 16
CREW_VALID_S_DEFAULT = 8 * 3600.0  # a crew's shift; renewed on an organizer node (POST /api/crew/renew)
CREW_VALID_S_MAX = 24 * 3600.0  # a stolen token is good for a day at most
_KIND = "crew"
_PREFIX = b"assetmesh/v1/crew\x00"
_FIELDS = frozenset({"kind", "mesh", "publisher", "at", "expires_at"})


@dataclass(frozen=True)
class CrewGrant:
    """A verified crew token."""

    publisher: str  # node id of the organizer that signed it
    at: float  # unix seconds when it was signed
    expires_at: float  # unix seconds after which it is refused


def create_crew_token(authority_public_key: bytes, key: Ed25519PrivateKey, chain: bytes, now: float,
                      valid_s: float = CREW_VALID_S_DEFAULT) -> str:
    """A crew token signed by this organizer node; CredentialError if it is not an organizer."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    if not 0 < valid_s <= CREW_VALID_S_MAX:
        raise UsageError(f"a crew token is valid for more than 0 and at most {CREW_VALID_S_MAX:.0f} s")
    publisher = _check_signer(authority, key, chain, now, "issue crew tokens")
    body = {"kind": _KIND, "mesh": mesh_id_from_authority_key(authority), "publisher": publisher,
            "at": now, "expires_at": now + valid_s}
    body_bytes = cbor2.dumps(body, canonical=True)
    blob = cbor2.dumps([bytes(chain), [body_bytes, key.sign(_PREFIX + body_bytes)]], canonical=True)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(blob).decode("ascii").rstrip("=")


def verify_crew_token(token: str, authority_public_key: bytes, now: float,
                      revocations: RevocationList | None = None) -> CrewGrant:
    """The grant a token proves now, or CredentialError (whatever the input)."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    signed = _open_blob(_decode(token), _KIND, _FIELDS, mesh_id_from_authority_key(authority))
    body = signed.body
    for field in ("at", "expires_at"):
        if _time_problem(body[field]):
            raise CredentialError(f"malformed crew token: {field}")
    at, expires_at = float(body["at"]), float(body["expires_at"])
    if at > now + CLOCK_SKEW_S or expires_at < now or expires_at - at > CREW_VALID_S_MAX:
        raise CredentialError("crew token expired or not yet valid")
    try:
        public_key = public_key_from_node_id(body["publisher"])
    except (ValueError, TypeError, AttributeError):
        raise CredentialError("malformed crew token: publisher") from None
    member = verify_chain(signed.chain, authority, at, expected_node_public_key=public_key)
    if member.role is not Role.ORGANIZER:
        raise CredentialError("only organizers issue crew tokens")
    if revocations is not None and revocations.revocation_of(member.node_id) is not None:
        raise CredentialError("crew token of a revoked organizer")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signed.signature, _PREFIX + signed.body_bytes)
    except (InvalidSignature, ValueError):
        raise CredentialError("bad signature on crew token") from None
    return CrewGrant(member.node_id, at, expires_at)


def _decode(token: object) -> bytes:
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > TOKEN_CHARS_MAX:
        raise CredentialError("not a crew token (it starts with amc1.)")
    text = token[len(TOKEN_PREFIX):].strip()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CredentialError("not a crew token: bad base64") from None
