"""Membership: who belongs to a mesh, proven offline by chains of signed statements.

Theory of operation:
- A statement is canonical CBOR body bytes plus an Ed25519 signature over a per-kind prefix
  (`assetmesh/v1/<kind>\\x00`) followed by the body, so a signature of one kind can never be
  replayed as another. Every body also names its kind and its mesh.
- A credential chain is a CBOR list of statements: a root credential signed by the mesh authority,
  then pairs (invite, credential). Each invite is signed by the credential before it, which must
  be an organizer's; the credential after it is signed by the invite's one-time key, which only the
  token carried. A chain therefore proves membership with no server and no network.
- Validity nests: no invite and no credential may outlive the credential of the organizer that
  issued it, so an expired organizer can mint nothing, and the last credential's expiry bounds all.
- Revocations name a node, are signed by the authority or by an organizer, and only ever add.
- Invites are single use per verifier: an `InviteLedger` remembers the first node seen using each.
- Pure code: time arrives as `now` (unix seconds); only keys and invite ids are random. Malformed
  input of any shape becomes `CredentialError` with a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Iterable

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.errors import CredentialError, UsageError
from mesh.ids import (
    ED25519_PUBLIC_KEY_BYTES,
    MeshId,
    NodeId,
    b32encode,
    mesh_id_from_authority_key,
    node_id_from_public_key,
    public_key_from_node_id,
    short,
)

TOKEN_PREFIX = "am1"
MESH_KEY_BYTES = 32  # the mesh's secret channel key (see mesh.drivers.channel.channel_psk)
MESH_NAME_CHARS_MAX = 128
TOKEN_CHARS_MAX = 4096
CHAIN_BYTES_MAX = 8192
FLEET_USES_MAX = 10_000  # boxes one fleet key may admit at most
INVITE_DEPTH_MAX = 4  # organizers invited by organizers, counted from the authority
CHAIN_STATEMENTS_MAX = 1 + 2 * INVITE_DEPTH_MAX
REVOCATION_BYTES_MAX = CHAIN_BYTES_MAX + 1024
NAME_CHARS_MAX = 64
REASON_CHARS_MAX = 200
HINTS_MAX = 8
HOST_CHARS_MAX = 253
CLOCK_SKEW_S = 300.0
INVITE_SEEN_SKEW_S = 60.0  # a member first seeing an invite used this long after its expiry refuses it
CREDENTIAL_VALID_S_DEFAULT = 365 * 86400.0
REVOCATIONS_MAX = 65536
LEDGER_ENTRIES_MAX = 65536
CBOR_DEPTH_MAX = 6
TIME_S_MAX = 1e11  # far beyond any real clock; keeps hostile floats out of arithmetic

_SIGNATURE_BYTES = 64
_PRIVATE_KEY_BYTES = 32
_INVITE_ID_BYTES = 16
_KINDS = ("credential", "invite", "revocation")
_PREFIXES = {kind: b"assetmesh/v1/" + kind.encode() + b"\x00" for kind in _KINDS}
_OTHER_MESH = {
    "credential": "credential signed by another mesh's authority",
    "invite": "invite belongs to another mesh",
    "revocation": "revocation belongs to another mesh",
}
_CREDENTIAL_FIELDS = frozenset(
    {"kind", "mesh", "node_key", "role", "name", "issued_at", "expires_at", "invite_id"}
)
_INVITE_FIELDS = frozenset(
    {"kind", "mesh", "invite_id", "role", "name", "issued_at", "expires_at", "invite_key"}
)
_FLEET_INVITE_FIELDS = _INVITE_FIELDS | {"uses"}  # a fleet key: one invite for up to `uses` boxes
_REVOCATION_FIELDS = frozenset({"kind", "mesh", "node_key", "at", "reason"})
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class Role(str, enum.Enum):
    """What a member may do: organizers invite and revoke; hubs and edges only serve."""

    ORGANIZER = "organizer"
    HUB = "hub"
    EDGE = "edge"


@dataclass(frozen=True)
class Member:
    """A verified member of a mesh, as its credential chain proves it."""

    node_id: NodeId  # the member's Ed25519 public key, as a node id
    mesh_id: MeshId  # the mesh the chain belongs to
    role: Role  # what the member may do
    name: str  # human name, as signed in the credential
    expires_at: float  # unix seconds after which the credential is void
    invite_id: str | None  # base32 id of the invite it joined with; None for the first organizer
    issuer_node_id: NodeId | None  # the organizer that invited it; None = the mesh authority


@dataclass(frozen=True)
class Invite:
    """What an invite token offers, as `parse_invite` read it."""

    authority_public_key: bytes  # the mesh authority's raw Ed25519 public key
    mesh_id: MeshId  # derived from the authority key
    invite_id: str  # base32 of the invite's random 16-byte id
    role: Role  # the role the joiner will have
    name: str | None  # the name the joiner must take; None = the joiner chooses
    expires_at: float  # unix seconds after which the token cannot be redeemed
    hints: tuple[tuple[str, int], ...]  # (host, port) addresses where the inviter may be reached
    uses: int = 1  # distinct nodes it may admit: a fleet key admits many (`mesh invite --uses N`)
    key_id: NodeId | None = None  # the invite key as a node id: what `mesh invite revoke` revokes
    mesh_key: bytes | None = None  # the mesh's secret channel key (tokens made before it existed: None)
    mesh_name: str | None = None  # the event's display name, as the inviter knows it


@dataclass(frozen=True)
class JoinResult:
    """A redeemed invite: the joiner's new chain and what it proves."""

    chain: bytes  # the joiner's credential chain, to store and present to peers
    member: Member  # the verified membership the chain proves
    invite: Invite  # the invite it was made from (hints to dial)


@dataclass(frozen=True)
class Revocation:
    """A verified statement that a node no longer belongs to the mesh."""

    node_id: NodeId  # the revoked node
    revoked_by: NodeId | None  # the organizer that signed it; None = the mesh authority
    at: float  # unix seconds when it was signed
    reason: str  # free text for humans, possibly empty


@dataclass(frozen=True)
class _Credential:
    """The fields of one credential statement."""

    node_key: bytes  # raw Ed25519 public key of the member
    role: Role  # the member's role
    name: str  # the member's name
    issued_at: float  # unix seconds when it was signed
    expires_at: float  # unix seconds when it stops being valid
    invite_id: bytes | None  # the invite that admitted it; None for the authority's root credential


@dataclass(frozen=True)
class _InviteStatement:
    """The fields of one invite statement."""

    invite_id: bytes  # random 16 bytes naming the invite
    role: Role  # role the joiner must take
    name: str | None  # name the joiner must take, or None
    issued_at: float  # unix seconds when the organizer signed it
    expires_at: float  # unix seconds after which no credential may be made from it
    invite_key: bytes  # raw public half of the one-time key the token carries
    uses: int = 1  # distinct nodes it may admit (a fleet key: more than one)


@dataclass(frozen=True)
class _Walk:
    """A chain whose signatures and links are checked, independent of time."""

    mesh_id: MeshId  # the mesh every statement names
    credentials: tuple[_Credential, ...]  # root first; invites[i] admitted credentials[i + 1]
    invites: tuple[_InviteStatement, ...]  # invites[i] was signed by credentials[i]


@dataclass(frozen=True)
class _Opened:
    """A statement decoded and checked for kind and mesh, signature not yet checked."""

    body: dict  # the decoded body map
    body_bytes: bytes  # the exact signed bytes
    signature: bytes  # the 64-byte Ed25519 signature


@dataclass(frozen=True)
class _Token:
    """Everything an invite token carries, verified apart from time."""

    invite: Invite  # the public view
    invite_key: Ed25519PrivateKey  # the one-time key that signs the joiner's credential
    statements: list  # issuer chain statements followed by the invite statement
    walk: _Walk  # the verified form of `statements`


# --- keys ---------------------------------------------------------------------------------------


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of a private key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _check_authority_key(authority_public_key: object) -> bytes:
    if not isinstance(authority_public_key, (bytes, bytearray)):
        raise CredentialError("the authority public key must be bytes")
    if len(authority_public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise CredentialError("the authority public key must have 32 bytes")
    return bytes(authority_public_key)


# --- CBOR and statements ------------------------------------------------------------------------


def _reject_tag(*_args: object) -> object:
    raise ValueError("CBOR tags are not allowed")


_NO_TAGS = {tag: _reject_tag for tag in range(1024)} | {55799: _reject_tag}


def _cbor_loads(data: bytes, what: str) -> Any:
    """Decode untrusted CBOR that must be exactly the canonical encoding of plain values."""
    try:
        value = cbor2.loads(
            data,
            tag_hook=_reject_tag,
            semantic_decoders=_NO_TAGS,
            max_depth=CBOR_DEPTH_MAX,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
        canonical = cbor2.dumps(value, canonical=True) == data
    except Exception:  # noqa: BLE001 - the trust boundary: cbor2 raises many kinds on hostile input
        raise CredentialError(f"malformed {what}: not valid CBOR") from None
    if not canonical:
        raise CredentialError(f"malformed {what}: not canonical CBOR")
    return value


def _sign(key: Ed25519PrivateKey, kind: str, body: dict) -> list:
    body_bytes = cbor2.dumps(body, canonical=True)
    return [body_bytes, key.sign(_PREFIXES[kind] + body_bytes)]


def _decode_statement(raw: object, kind: str, mesh_id: MeshId, where: str) -> _Opened:
    """Decode one statement and check its kind and mesh; the caller then checks its signature."""
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, bytes) for x in raw)):
        raise CredentialError(f"malformed {where}: a statement is [body, signature]")
    body_bytes, signature = raw
    if len(signature) != _SIGNATURE_BYTES:
        raise CredentialError(f"malformed {where}: a signature has 64 bytes")
    body = _cbor_loads(body_bytes, where)
    if not isinstance(body, dict):
        raise CredentialError(f"malformed {where}: the body is not a map")
    if body.get("kind") != kind:
        raise CredentialError(f"malformed {where}: expected a {kind} statement")
    if body.get("mesh") != mesh_id:
        raise CredentialError(_OTHER_MESH[kind])
    return _Opened(body, body_bytes, signature)


def _check_signature(opened: _Opened, kind: str, public_key: bytes, where: str) -> None:
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(opened.signature, _PREFIXES[kind] + opened.body_bytes)
    except (InvalidSignature, ValueError):
        raise CredentialError(f"bad signature on {where}") from None


# --- body fields --------------------------------------------------------------------------------


def _require_fields(body: dict, fields: frozenset[str], where: str) -> None:
    if body.keys() != fields:
        raise CredentialError(f"malformed {where}: unexpected or missing fields")


def _read_bytes(body: dict, field: str, size: int, where: str) -> bytes:
    value = body[field]
    if not isinstance(value, bytes) or len(value) != size:
        raise CredentialError(f"malformed {where}: {field} must be {size} bytes")
    return value


def _read_time(body: dict, field: str, where: str) -> float:
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CredentialError(f"malformed {where}: {field} must be a number")
    if not (math.isfinite(value) and 0 <= value <= TIME_S_MAX):
        raise CredentialError(f"malformed {where}: {field} is out of range")
    return float(value)


def _read_role(body: dict, where: str) -> Role:
    try:
        return Role(body["role"])
    except (ValueError, TypeError):
        raise CredentialError(f"malformed {where}: unknown role") from None


def _name_problem(name: object) -> str | None:
    """Why `name` is not an acceptable member name, or None if it is."""
    if not isinstance(name, str):
        return "a name must be text"
    if not 1 <= len(name) <= NAME_CHARS_MAX:
        return f"a name has 1 to {NAME_CHARS_MAX} characters"
    if not name.isprintable() or name != name.strip():
        return "a name must be printable, without leading or trailing spaces"
    return None


def _read_name(body: dict, where: str, optional: bool) -> str | None:
    name = body["name"]
    if name is None and optional:
        return None
    problem = _name_problem(name)
    if problem:
        raise CredentialError(f"malformed {where}: {problem}")
    return name


def _read_invite_id(body: dict, where: str) -> bytes | None:
    if body["invite_id"] is None:
        return None
    return _read_bytes(body, "invite_id", _INVITE_ID_BYTES, where)


def _read_validity(body: dict, where: str) -> tuple[float, float]:
    issued_at = _read_time(body, "issued_at", where)
    expires_at = _read_time(body, "expires_at", where)
    if expires_at <= issued_at:
        raise CredentialError(f"malformed {where}: it expires before it is issued")
    return issued_at, expires_at


def _credential_from(body: dict, where: str) -> _Credential:
    _require_fields(body, _CREDENTIAL_FIELDS, where)
    issued_at, expires_at = _read_validity(body, where)
    return _Credential(
        node_key=_read_bytes(body, "node_key", ED25519_PUBLIC_KEY_BYTES, where),
        role=_read_role(body, where),
        name=_read_name(body, where, optional=False),  # type: ignore[arg-type]
        issued_at=issued_at,
        expires_at=expires_at,
        invite_id=_read_invite_id(body, where),
    )


def _invite_from(body: dict, where: str) -> _InviteStatement:
    _require_fields(body, _FLEET_INVITE_FIELDS if "uses" in body else _INVITE_FIELDS, where)
    issued_at, expires_at = _read_validity(body, where)
    uses = body.get("uses", 1)
    if "uses" in body and (isinstance(uses, bool) or not isinstance(uses, int) or not 2 <= uses <= FLEET_USES_MAX):
        raise CredentialError(f"malformed {where}: uses must be a whole number from 2 to {FLEET_USES_MAX}")
    return _InviteStatement(
        invite_id=_read_bytes(body, "invite_id", _INVITE_ID_BYTES, where),
        role=_read_role(body, where),
        name=_read_name(body, where, optional=True),
        issued_at=issued_at,
        expires_at=expires_at,
        invite_key=_read_bytes(body, "invite_key", ED25519_PUBLIC_KEY_BYTES, where),
        uses=uses,
    )


# --- chains -------------------------------------------------------------------------------------


def _check_statement_list(statements: object, what: str, ends_with_invite: bool) -> list:
    if not isinstance(statements, list) or not statements:
        raise CredentialError(f"malformed {what}: expected a list of statements")
    if len(statements) > CHAIN_STATEMENTS_MAX:
        raise CredentialError(f"{what} too long: at most {CHAIN_STATEMENTS_MAX} statements")
    if (len(statements) % 2 == 0) != ends_with_invite:
        last = "an invite" if ends_with_invite else "a credential"
        raise CredentialError(f"malformed {what}: it must end with {last}")
    return statements


def _decode_chain(chain: object) -> list:
    if not isinstance(chain, (bytes, bytearray)):
        raise CredentialError("malformed credential chain: expected bytes")
    if len(chain) > CHAIN_BYTES_MAX:
        raise CredentialError(f"credential chain too large: at most {CHAIN_BYTES_MAX} bytes")
    statements = _cbor_loads(bytes(chain), "credential chain")
    return _check_statement_list(statements, "credential chain", ends_with_invite=False)


def _open_root(raw: object, mesh_id: MeshId, authority: bytes) -> _Credential:
    where = "the root credential"
    opened = _decode_statement(raw, "credential", mesh_id, where)
    _check_signature(opened, "credential", authority, where)
    root = _credential_from(opened.body, where)
    if root.invite_id is not None:
        raise CredentialError("malformed root credential: it names an invite")
    return root


def _open_invite(raw: object, mesh_id: MeshId, issuer: _Credential, where: str) -> _InviteStatement:
    opened = _decode_statement(raw, "invite", mesh_id, where)
    if issuer.role is not Role.ORGANIZER:
        raise CredentialError("only organizers may invite")
    _check_signature(opened, "invite", issuer.node_key, where)
    invite = _invite_from(opened.body, where)
    if invite.issued_at < issuer.issued_at - CLOCK_SKEW_S:
        raise CredentialError("invite predates its issuer's credential")
    if invite.expires_at > issuer.expires_at:
        raise CredentialError("invite outlives its issuer's credential")
    return invite


def _check_admission(
    credential: _Credential, invite: _InviteStatement, issuer: _Credential
) -> None:
    if credential.invite_id != invite.invite_id:
        raise CredentialError("credential names another invite")
    if credential.role is not invite.role:
        raise CredentialError("role does not match the invite")
    if invite.name is not None and credential.name != invite.name:
        raise CredentialError("name does not match the invite")
    if credential.issued_at > invite.expires_at:
        raise CredentialError("credential created after the invite expired")
    if credential.issued_at < invite.issued_at - CLOCK_SKEW_S:
        raise CredentialError("credential predates its invite")
    if credential.expires_at > issuer.expires_at:
        raise CredentialError("credential outlives its issuer's credential")


def _open_member(
    raw: object, mesh_id: MeshId, invite: _InviteStatement, issuer: _Credential, where: str
) -> _Credential:
    opened = _decode_statement(raw, "credential", mesh_id, where)
    _check_signature(opened, "credential", invite.invite_key, where)
    credential = _credential_from(opened.body, where)
    _check_admission(credential, invite, issuer)
    return credential


def _walk(statements: list, authority: bytes) -> _Walk:
    """Check every signature and link of a statement list; no clock involved."""
    mesh_id = mesh_id_from_authority_key(authority)
    credentials = [_open_root(statements[0], mesh_id, authority)]
    invites: list[_InviteStatement] = []
    for position, raw in enumerate(statements[1:], start=2):
        where = f"statement {position} of {len(statements)}"
        if position % 2 == 0:
            invites.append(_open_invite(raw, mesh_id, credentials[-1], f"the invite ({where})"))
        else:
            where = f"the credential ({where})"
            credentials.append(_open_member(raw, mesh_id, invites[-1], credentials[-1], where))
    return _Walk(mesh_id, tuple(credentials), tuple(invites))


def _check_now(now: object) -> float:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise CredentialError("now must be a finite number of unix seconds")
    return float(now)


def _check_current(walk: _Walk, now: float) -> None:
    for statement in walk.credentials + walk.invites:
        if statement.issued_at > now + CLOCK_SKEW_S:
            raise CredentialError("credential issued in the future (check this device's clock)")
    if walk.credentials[-1].expires_at <= now:  # validity nests, so this bounds the whole chain
        raise CredentialError("credential expired")


def _admissions(walk: _Walk) -> list[tuple[_Credential, _InviteStatement, _Credential]]:
    """(issuer, invite, admitted) for each invite in the chain."""
    return list(zip(walk.credentials, walk.invites, walk.credentials[1:]))


def _check_revocations(walk: _Walk, revocations: RevocationList) -> None:
    if revocations.mesh_id != walk.mesh_id:
        raise CredentialError("revocation list belongs to another mesh")
    if revocations.is_revoked(node_id_from_public_key(walk.credentials[-1].node_key)):
        raise CredentialError("node revoked")
    for issuer, invite, admitted in _admissions(walk):
        revocation = revocations.revocation_of(node_id_from_public_key(issuer.node_key))
        if revocation and max(invite.issued_at, admitted.issued_at) >= revocation.at:
            raise CredentialError("invited by an organizer after that organizer was revoked")


def _check_ledger(walk: _Walk, ledger: InviteLedger, now: float, revocations: RevocationList | None,
                  member_since: float | None = None) -> None:
    uses = [
        (b32encode(invite.invite_id), invite, node_id_from_public_key(admitted.node_key))
        for _issuer, invite, admitted in _admissions(walk)
    ]
    for invite_id, invite, node_id in uses:
        known = ledger.holds(invite_id, node_id)
        if (not known and member_since is not None and member_since <= invite.expires_at
                and now > invite.expires_at + INVITE_SEEN_SKEW_S):
            kind = "fleet key" if invite.uses > 1 else "invite"
            raise CredentialError(f"{kind} expired before any member saw it used: ask the crew for a new one")
        if not known and revocations is not None and revocations.is_revoked(node_id_from_public_key(invite.invite_key)):
            kind = "fleet key" if invite.uses > 1 else "invite"
            raise CredentialError(f"{kind} revoked: ask the crew for a new one")
        if invite.uses == 1:
            prior = ledger.used_by(invite_id)
            if prior is not None and prior != node_id:
                raise CredentialError(f"invite already used by {short(prior)}")
        elif not known and len(ledger.users(invite_id)) >= invite.uses:
            raise CredentialError(f"fleet key used up: it admits {invite.uses} boxes, all taken")
    for invite_id, invite, node_id in uses:
        if invite.uses > 1 and ledger.holds(invite_id, node_id) and node_id not in ledger.users(invite_id)[: invite.uses]:
            raise CredentialError(f"fleet key used up: {invite.uses} boxes used it before this one")
    for invite_id, _invite, node_id in uses:
        ledger.record(invite_id, node_id, now)


def _member(walk: _Walk) -> Member:
    last = walk.credentials[-1]
    issuer = walk.credentials[-2] if len(walk.credentials) > 1 else None
    return Member(
        node_id=node_id_from_public_key(last.node_key),
        mesh_id=walk.mesh_id,
        role=last.role,
        name=last.name,
        expires_at=last.expires_at,
        invite_id=b32encode(last.invite_id) if last.invite_id is not None else None,
        issuer_node_id=node_id_from_public_key(issuer.node_key) if issuer else None,
    )


def verify_chain(
    chain: bytes,
    authority_public_key: bytes,
    now: float,
    revocations: RevocationList | None = None,
    invite_ledger: InviteLedger | None = None,
    expected_node_public_key: bytes | None = None,
    member_since: float | None = None,
) -> Member:
    """Verify a credential chain at time `now`; the member it proves, or CredentialError.

    With `revocations`, a revoked member is refused. An organizer revoked *after* it invited
    someone does not take that member down with it: members stay valid unless revoked themselves,
    so revoking a lost organizer laptop does not evict every node it ever invited. What a revoked
    organizer can no longer do is admit anyone: an invite issued, or redeemed, at or after its
    revocation time is refused (issuing times are signed by the organizer, so a stolen key can
    backdate them; revoke the nodes it admitted as well if that matters).
    With `invite_ledger`, every invite in the chain is recorded as used by the node it admitted,
    and a chain whose invite the ledger saw used by another node is refused (single use).
    The joiner signs its own credential, so "made before the invite expired" is its claim; a
    verifier that has been a member since before an invite expired (`member_since`, its own
    credential's issuing time) judges a use it has never seen by its own clock instead: first
    seen more than INVITE_SEEN_SKEW_S after the expiry, it is refused. A fresh node, which cannot
    know which uses the mesh saw in time, accepts the claim until its state says otherwise.
    """
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    walk = _walk(_decode_chain(chain), authority)
    _check_current(walk, now)
    if expected_node_public_key is not None:
        if walk.credentials[-1].node_key != expected_node_public_key:
            raise CredentialError("credential belongs to another node")
    if revocations is not None:
        _check_revocations(walk, revocations)
    if invite_ledger is not None:
        _check_ledger(walk, invite_ledger, now, revocations, member_since)
    return _member(walk)


def member_since(chain: bytes, authority_public_key: bytes) -> float:
    """When the credential a chain ends in was issued (this node's own chain: since when it is a
    member, for `verify_chain(member_since=)`); CredentialError if the chain does not verify."""
    walk = _walk(_decode_chain(chain), _check_authority_key(authority_public_key))
    return walk.credentials[-1].issued_at


def create_first_credential(
    authority_key: Ed25519PrivateKey,
    node_key: Ed25519PrivateKey,
    name: str,
    now: float,
    valid_s: float = CREDENTIAL_VALID_S_DEFAULT,
) -> bytes:
    """The chain of the node that ran `mesh init`: an organizer credential from the authority."""
    problem = _name_problem(name)
    if problem:
        raise UsageError(problem)
    if not valid_s > 0:
        raise UsageError("a credential must be valid for a positive time")
    now = _check_now(now)
    authority = public_key_bytes(authority_key)
    body = _credential_body(authority, node_key, Role.ORGANIZER, name, now, now + valid_s, None)
    chain = cbor2.dumps([_sign(authority_key, "credential", body)], canonical=True)
    verify_chain(chain, authority, now)
    return chain


def _credential_body(
    authority: bytes,
    node_key: Ed25519PrivateKey,
    role: Role,
    name: str,
    issued_at: float,
    expires_at: float,
    invite_id: bytes | None,
) -> dict:
    return {
        "kind": "credential",
        "mesh": mesh_id_from_authority_key(authority),
        "node_key": public_key_bytes(node_key),
        "role": role.value,
        "name": name,
        "issued_at": float(issued_at),
        "expires_at": float(expires_at),
        "invite_id": invite_id,
    }


# --- invites ------------------------------------------------------------------------------------


def _hint_problem(hint: object) -> str | None:
    """Why `hint` is not an acceptable (host, port) pair, or None if it is."""
    if not (isinstance(hint, (tuple, list)) and len(hint) == 2):
        return "a hint is a (host, port) pair"
    host, port = hint
    if not isinstance(host, str) or not 1 <= len(host) <= HOST_CHARS_MAX:
        return f"a hint's host has 1 to {HOST_CHARS_MAX} characters"
    if not host.isascii() or not host.isprintable() or " " in host:
        return "a hint's host must be printable ASCII without spaces"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return "a hint's port is 1 to 65535"
    return None


def _hints_problem(hints: object) -> str | None:
    if not isinstance(hints, (list, tuple)):
        return "hints must be a list of (host, port) pairs"
    if len(hints) > HINTS_MAX:
        return f"at most {HINTS_MAX} hints"
    return next((p for p in map(_hint_problem, hints) if p), None)


def create_invite(
    authority_public_key: bytes,
    issuer_key: Ed25519PrivateKey,
    issuer_chain: bytes,
    role: Role,
    name: str | None,
    expires_at: float,
    hints: list[tuple[str, int]],
    now: float,
    mesh_key: bytes | None = None,
    mesh_name: str | None = None,
    uses: int = 1,
) -> str:
    """A one-line invite token (URL-safe text starting "am1") signed by an organizer; with
    `uses` > 1 a fleet key, which admits that many distinct boxes (each names itself).

    The invite cannot outlive the issuer's own credential: a later `expires_at` is shortened.
    The token also carries the mesh's secret channel key and display name (not signed: they come
    from the organizer who hands over the token, and the key proves nothing about membership).
    """
    signer = public_key_bytes(issuer_key)
    issuer = verify_chain(issuer_chain, authority_public_key, now, expected_node_public_key=signer)
    if issuer.role is not Role.ORGANIZER:
        raise CredentialError("only organizers may invite")
    statements = _decode_chain(issuer_chain)
    if len(statements) + 2 > CHAIN_STATEMENTS_MAX:
        raise CredentialError("invite chain too deep: ask an organizer nearer the mesh authority")
    body = _invite_body(issuer, role, name, min(expires_at, issuer.expires_at), now)
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= FLEET_USES_MAX:
        raise UsageError(f"an invite admits 1 to {FLEET_USES_MAX} boxes")
    if uses > 1:
        if name is not None:
            raise UsageError("a fleet key admits many boxes: it cannot name one (each box names itself)")
        body["uses"] = uses
    invite_key = Ed25519PrivateKey.generate()
    body["invite_key"] = public_key_bytes(invite_key)
    problem = _hints_problem(hints) or _mesh_extras_problem(mesh_key, mesh_name)
    if problem:
        raise UsageError(problem)
    statements.append(_sign(issuer_key, "invite", body))
    payload = [
        bytes(authority_public_key),
        _private_key_bytes(invite_key),
        statements,
        [[host, port] for host, port in hints],
    ]
    if mesh_key is not None or mesh_name is not None:
        payload += [None if mesh_key is None else bytes(mesh_key), mesh_name]
    encoded = base64.urlsafe_b64encode(cbor2.dumps(payload, canonical=True)).rstrip(b"=")
    token = TOKEN_PREFIX + encoded.decode("ascii")
    if len(token) > TOKEN_CHARS_MAX:
        raise UsageError("invite token too long: use fewer hints or shorter names")
    return token


def _invite_body(
    issuer: Member, role: Role, name: str | None, expires_at: float, now: float
) -> dict:
    try:
        role = Role(role)
    except ValueError:
        raise UsageError(f"unknown role {role!r}") from None
    problem = _name_problem(name) if name is not None else None
    if problem:
        raise UsageError(problem)
    if not (math.isfinite(expires_at) and expires_at > now):
        raise UsageError("an invite must expire in the future")
    return {
        "kind": "invite",
        "mesh": issuer.mesh_id,
        "invite_id": secrets.token_bytes(_INVITE_ID_BYTES),
        "role": role.value,
        "name": name,
        "issued_at": float(now),
        "expires_at": float(expires_at),
    }


def _b64_decode(text: str) -> bytes:
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise CredentialError("malformed invite token: not URL-safe base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CredentialError("malformed invite token: not URL-safe base64") from None


def _token_payload(token: object) -> list:
    if not isinstance(token, str):
        raise CredentialError("malformed invite token: expected text")
    text = token.strip()
    if len(text) > TOKEN_CHARS_MAX:
        raise CredentialError(f"invite token too long: at most {TOKEN_CHARS_MAX} characters")
    if not text.startswith(TOKEN_PREFIX):
        raise CredentialError(f"not an AssetMesh invite token (those start with {TOKEN_PREFIX!r})")
    payload = _cbor_loads(_b64_decode(text[len(TOKEN_PREFIX) :]), "invite token")
    if not (isinstance(payload, list) and len(payload) in (4, 6)):
        raise CredentialError("malformed invite token: expected 4 or 6 fields")
    return payload if len(payload) == 6 else [*payload, None, None]


def _mesh_extras_problem(mesh_key: object, mesh_name: object) -> str | None:
    if mesh_key is not None and not (isinstance(mesh_key, bytes) and len(mesh_key) == MESH_KEY_BYTES):
        return f"the mesh key must have {MESH_KEY_BYTES} bytes"
    if mesh_name is not None and not (isinstance(mesh_name, str) and 0 < len(mesh_name) <= MESH_NAME_CHARS_MAX
                                      and mesh_name.isprintable()):
        return f"the mesh name is printable text of 1 to {MESH_NAME_CHARS_MAX} characters"
    return None


def _parse_token(token: object) -> _Token:
    authority, secret, statements, hints, mesh_key, mesh_name = _token_payload(token)
    authority = _check_authority_key(authority)
    if not isinstance(secret, bytes) or len(secret) != _PRIVATE_KEY_BYTES:
        raise CredentialError("malformed invite token: the invite key must have 32 bytes")
    invite_key = Ed25519PrivateKey.from_private_bytes(secret)
    statements = _check_statement_list(statements, "invite token", ends_with_invite=True)
    walk = _walk(statements, authority)
    statement = walk.invites[-1]
    if public_key_bytes(invite_key) != statement.invite_key:
        raise CredentialError("malformed invite token: its key does not match its invite")
    problem = _hints_problem(hints) or _mesh_extras_problem(mesh_key, mesh_name)
    if problem:
        raise CredentialError(f"malformed invite token: {problem}")
    invite = Invite(
        authority_public_key=authority,
        mesh_id=walk.mesh_id,
        invite_id=b32encode(statement.invite_id),
        role=statement.role,
        name=statement.name,
        expires_at=statement.expires_at,
        hints=tuple((host, port) for host, port in hints),
        uses=statement.uses,
        key_id=node_id_from_public_key(statement.invite_key),
        mesh_key=mesh_key,
        mesh_name=mesh_name,
    )
    return _Token(invite, invite_key, statements, walk)


def parse_invite(token: str) -> Invite:
    """Read and verify an invite token (signatures and links, not time); CredentialError if bad."""
    return _parse_token(token).invite


def _joiner_name(invite: Invite, name: str | None) -> str:
    if invite.name is not None:
        if name is not None and name != invite.name:
            raise CredentialError(f"name does not match the invite (it names {invite.name!r})")
        return invite.name
    if name is None:
        raise UsageError("this invite names no one: choose a name")
    problem = _name_problem(name)
    if problem:
        raise UsageError(problem)
    return name


def redeem_invite(
    token: str,
    node_key: Ed25519PrivateKey,
    name: str | None,
    now: float,
    valid_s: float = CREDENTIAL_VALID_S_DEFAULT,
) -> JoinResult:
    """Make `node_key` a member offline from a token: the joiner signs its own credential.

    The credential cannot outlive the inviting organizer's credential: it is shortened to fit.
    """
    parsed = _parse_token(token)
    invite, statement = parsed.invite, parsed.walk.invites[-1]
    now = _check_now(now)
    if now >= invite.expires_at:
        raise CredentialError("invite expired")
    if now < statement.issued_at - CLOCK_SKEW_S:
        raise CredentialError("this device's clock is behind the inviter's: fix it and retry")
    name = _joiner_name(invite, name)
    if not valid_s > 0:
        raise UsageError("a credential must be valid for a positive time")
    expires_at = min(now + valid_s, parsed.walk.credentials[-1].expires_at)
    authority, invite_id = invite.authority_public_key, statement.invite_id
    body = _credential_body(authority, node_key, invite.role, name, now, expires_at, invite_id)
    statements = parsed.statements + [_sign(parsed.invite_key, "credential", body)]
    chain = cbor2.dumps(statements, canonical=True)
    member = verify_chain(
        chain, invite.authority_public_key, now, expected_node_public_key=public_key_bytes(node_key)
    )
    return JoinResult(chain=chain, member=member, invite=invite)


# --- revocations --------------------------------------------------------------------------------


def _reason_problem(reason: object) -> str | None:
    if not isinstance(reason, str):
        return "a reason must be text"
    if len(reason) > REASON_CHARS_MAX or not reason.isprintable():
        return f"a reason is printable and at most {REASON_CHARS_MAX} characters"
    return None


def create_revocation(
    authority_public_key: bytes,
    issuer_key: Ed25519PrivateKey,
    issuer_chain: bytes | None,
    node_id: NodeId,
    now: float,
    reason: str = "",
) -> bytes:
    """A revocation of `node_id`, signed by an organizer (with its chain) or, with no chain
    (None or b""), by the mesh authority key itself."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    try:
        target = public_key_from_node_id(node_id)
    except (ValueError, TypeError):
        raise UsageError(f"not a node id: {node_id!r}") from None
    problem = _reason_problem(reason)
    if problem:
        raise UsageError(problem)
    signer = public_key_bytes(issuer_key)
    if issuer_chain:
        issuer = verify_chain(issuer_chain, authority, now, expected_node_public_key=signer)
        if issuer.role is not Role.ORGANIZER:
            raise CredentialError("only organizers may revoke")
    elif signer != authority:
        raise CredentialError("without a credential chain, only the mesh authority may revoke")
    body = {
        "kind": "revocation",
        "mesh": mesh_id_from_authority_key(authority),
        "node_key": target,
        "at": now,
        "reason": reason,
    }
    statement = _sign(issuer_key, "revocation", body)
    return cbor2.dumps([bytes(issuer_chain) if issuer_chain else None, statement], canonical=True)


def _revocation_parts(blob: object) -> tuple[bytes | None, object]:
    if not isinstance(blob, (bytes, bytearray)):
        raise CredentialError("malformed revocation: expected bytes")
    if len(blob) > REVOCATION_BYTES_MAX:
        raise CredentialError(f"revocation too large: at most {REVOCATION_BYTES_MAX} bytes")
    outer = _cbor_loads(bytes(blob), "revocation")
    if not (isinstance(outer, list) and len(outer) == 2):
        raise CredentialError("malformed revocation: expected [issuer chain, statement]")
    chain, statement = outer
    if chain is not None and not isinstance(chain, bytes):
        raise CredentialError("malformed revocation: the issuer chain must be bytes or null")
    return chain, statement


def _revocation_signer(chain: bytes | None, authority: bytes, at: float) -> NodeId | None:
    """Who may have signed a revocation made at `at`: None for the authority, else the organizer.

    The issuer's chain is checked as of the revocation's own time and without revocations, so a
    revocation stays valid after its issuer expires or is revoked, and a list converges to the same
    content whatever order its blobs arrive in.
    """
    if chain is None:
        return None
    try:
        issuer = verify_chain(chain, authority, at)
    except CredentialError as exc:
        raise CredentialError(f"revocation issuer's credential is invalid: {exc}") from None
    if issuer.role is not Role.ORGANIZER:
        raise CredentialError("only organizers may revoke")
    return issuer.node_id


def _verify_revocation(blob: object, authority: bytes, now: float) -> Revocation:
    chain, statement = _revocation_parts(blob)
    where = "revocation"
    mesh_id = mesh_id_from_authority_key(authority)
    opened = _decode_statement(statement, "revocation", mesh_id, where)
    _require_fields(opened.body, _REVOCATION_FIELDS, where)
    target = _read_bytes(opened.body, "node_key", ED25519_PUBLIC_KEY_BYTES, where)
    at = _read_time(opened.body, "at", where)
    reason = opened.body["reason"]
    problem = _reason_problem(reason)
    if problem:
        raise CredentialError(f"malformed revocation: {problem}")
    if at > now + CLOCK_SKEW_S:
        raise CredentialError("revocation dated in the future")
    revoked_by = _revocation_signer(chain, authority, at)
    signer = public_key_from_node_id(revoked_by) if revoked_by else authority
    _check_signature(opened, "revocation", signer, where)
    return Revocation(node_id_from_public_key(target), revoked_by, at, reason)


class RevocationList:
    """The verified revocations of one mesh: grows only, at most REVOCATIONS_MAX nodes.

    Per node it keeps the earliest revocation (ties broken by bytes), so two lists fed the same
    blobs in any order hold the same content and `blobs()` the same bytes.
    """

    def __init__(self, authority_public_key: bytes) -> None:
        self.authority_public_key = _check_authority_key(authority_public_key)
        self.mesh_id = mesh_id_from_authority_key(self.authority_public_key)
        self._by_node: dict[str, tuple[Revocation, bytes]] = {}

    def add(self, blob: bytes, now: float) -> Revocation:
        """Verify and keep a revocation blob; CredentialError if it does not verify. Idempotent."""
        revocation = _verify_revocation(blob, self.authority_public_key, _check_now(now))
        kept = self._by_node.get(revocation.node_id)
        if kept is None and len(self._by_node) >= REVOCATIONS_MAX:
            raise CredentialError("revocation list full")
        if kept is None or (revocation.at, bytes(blob)) < (kept[0].at, kept[1]):
            self._by_node[revocation.node_id] = (revocation, bytes(blob))
        return revocation

    def is_revoked(self, node_id: str) -> bool:
        """Whether `node_id` has been revoked."""
        return node_id in self._by_node

    def revocation_of(self, node_id: str) -> Revocation | None:
        """The kept revocation of `node_id`, if any."""
        kept = self._by_node.get(node_id)
        return kept[0] if kept else None

    def blobs(self) -> list[bytes]:
        """The kept blobs, ordered by node id: for exchange on connect and for persistence."""
        return [self._by_node[node][1] for node in sorted(self._by_node)]

    def revocations(self) -> list[Revocation]:
        """The kept revocations, ordered by node id."""
        return [self._by_node[node][0] for node in sorted(self._by_node)]


class InviteLedger:
    """Which nodes used each invite, and when: a single-use invite admits only its first user, a
    fleet key its first `uses`. "First" is the smallest (time recorded, node id), the order the
    shared state's `invite_uses` keeps on every node, so after a partition heals every verifier
    agrees on the same first ones (and refuses the later ones at their next handshake).

    Holds at most LEDGER_ENTRIES_MAX uses; `items()` is for persistence, `entries` reloads it.
    """

    def __init__(self, entries: Iterable[tuple[str, str] | tuple[str, str, float]] = ()) -> None:
        self._uses: dict[str, dict[str, float]] = {}
        self._count = 0
        for entry in entries:
            self.record(*entry)

    def record(self, invite_id: str, node_id: str, at: float = math.inf) -> bool:
        """Note that `node_id` used `invite_id` at `at` (the earliest time is kept; no time: after
        every timed use); True if it is the invite's first user (or was already), False if
        another node came first."""
        users = self._uses.setdefault(invite_id, {})
        if node_id in users:
            users[node_id] = min(users[node_id], at)
        else:
            if self._count >= LEDGER_ENTRIES_MAX:
                raise CredentialError("invite ledger full")
            users[node_id] = at
            self._count += 1
        return self.used_by(invite_id) == node_id

    def used_by(self, invite_id: str) -> str | None:
        """The node that used `invite_id` first, or None if no use was seen."""
        users = self.users(invite_id)
        return users[0] if users else None

    def users(self, invite_id: str) -> list[str]:
        """Every node seen using `invite_id`, first first."""
        users = self._uses.get(invite_id, {})
        return [node for node, _ in sorted(users.items(), key=lambda item: (item[1], item[0]))]

    def holds(self, invite_id: str, node_id: str) -> bool:
        """`node_id` was seen using `invite_id` before."""
        return node_id in self._uses.get(invite_id, {})

    def items(self) -> list[tuple[str, str, float]]:
        """Every (invite id, node id, time) use seen, ordered by invite id, then first first."""
        return [(invite_id, node, self._uses[invite_id][node]) for invite_id in sorted(self._uses)
                for node in self.users(invite_id)]
