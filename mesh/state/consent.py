"""Consent, retention and aggregated analytics over the shared state.

Theory of operation:
- Subjects are pseudonymous codes printed on badges: 7 random Crockford base32 characters and one
  check character, shown as `XXXX-XXXX`. The check is a weighted sum over GF(32) with distinct
  weights, so every single mistyped character and every swap of two different characters is
  refused instead of silently naming another attendee. Nothing else about a person is stored.
- Codes are not secrets (anyone who sees a badge reads one), so the direction of a decision
  matters: a revoke can only hide and needs the code alone, but a grant from a stranger (the public
  `/consent` page) needs the badge secret, which the badge carries in its QR code only: 19 random
  Crockford characters (95 bits) and one check character, shown as `XXXX-XXXX-XXXX-XXXX-XXXX`.
  A badge's code is derived from its secret: scrypt (RFC 7914; salt = a domain tag and the mesh id,
  cost `BADGE_KDF`) truncated to the code's 35 random bits, then the check character. Checking a
  secret costs one scrypt; forging one for a code that was only seen costs about 2^35 of them, in
  this mesh only (the salt defeats tables made for all meshes). The secret is checked where the
  grant arrives and never stored: decisions name only the code. Crew commands on a member node
  (the operator checked the badge) record grants without it; codes printed without a secret
  (`new_subject_code`) can be revoked anywhere and granted only by the crew.
- Policies are statements signed by an organizer exactly like releases (Ed25519 over
  `assetmesh/v1/policy\\x00` + canonical CBOR, blob [chain, [body, signature]]), verified on read
  at their own time: a member that is not an organizer cannot set one. A policy targets either a
  consent scope (`scope:photo`: default grant or deny, plain-language description) or a retention
  category (`retention:captured`: seconds). Per target the valid statement with the greatest
  (at, id) is in force.
- Decisions (grant or revoke of one scope for one subject) may be written by any member. Each is
  one entry under its own key `subject/scope/id` (id = hash of its bytes), so concurrent decisions
  never hide each other, and none is ever removed. A decision lists the ids of the revokes of its
  subject and scope that its writer had seen. Effective consent, a function of the set of entries
  only (hence the same on every replica whatever the merge order):
  granted iff some grant has seen every revoke present; else denied if any revoke is present;
  else (no decision) the scope's default. So a revoke is never undone by a grant that had not seen
  it, and a grant made after seeing every revoke restores. Too many decisions for one subject and
  scope (a flood) reads as denied: failures close, never open.
- An asset's scopes: its media type's (image/* photo, video/* video, audio/* audio, else media)
  plus one per `scope:NAME` tag. It is visible iff every subject it names has consent for every one
  of its scopes and it has not expired. Captured media (an asset naming a subject) expires after
  the shorter of its own retention and the `retention:captured` rule; other assets after their own.
  Expiry is judged against the reader's clock, `skew_s` late: with every clock within `skew_s` of
  true time, a node hides an asset between 0 and `2 * skew_s` after its stamped expiry
  (added_at + retention), never before.
- Views are counted per tag in one integer entry per (node, process, tag) that only that process
  writes (a grow-only counter; Automerge counters crash this binding, see mesh.state.document);
  the total is the sum. Nothing is recorded per person.
- Pure code: time (`at`, `now`) and randomness (`rng`) are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from mesh.errors import CredentialError, UsageError
from mesh.ids import mesh_id_from_authority_key
from mesh.state.document import MeshState
from mesh.state.membership import (
    CLOCK_SKEW_S,
    RevocationList,
    _cbor_loads,
    _check_authority_key,
    _check_now,
)
from mesh.state.records import AssetRecord, normalize_tag
from mesh.state.releases import (
    _check_publisher,
    _check_signer,
    _open_blob,
    _sign_blob,
    _time_problem,
    state_revocations,
    statement_id,
)

# --- limits and names ---------------------------------------------------------------------------

SUBJECT_CODE_CHARS = 8  # 7 random characters and 1 check character
SUBJECT_RANDOM_CHARS = 7  # 35 random bits
SUBJECT_INPUT_CHARS_MAX = 32  # longer user input is refused before any parsing
BADGE_SECRET_CHARS = 20  # 19 random characters and 1 check character
BADGE_SECRET_RANDOM_CHARS = 19  # 95 random bits
BADGE_SECRET_GROUP_CHARS = 4  # shown as XXXX-XXXX-XXXX-XXXX-XXXX
BADGE_SECRET_INPUT_CHARS_MAX = 64  # longer user input is refused before any parsing
BADGE_SALT_PREFIX = b"assetmesh/v1/badge-code\x00"  # scrypt salt: this, then the mesh id
SCOPE_CHARS_MAX = 32
DESCRIPTION_CHARS_MAX = 500
RETENTION_S_MAX = 100 * 365 * 86400.0
POLICIES_READ_MAX = 4096  # entries of the policy map a reader considers
DECISIONS_PER_SCOPE_MAX = 128  # decisions per (subject, scope); more reads as denied
DECISION_BYTES_MAX = 4096  # one decision: about 80 bytes plus 18 per revoke it saw
NODE_REF_CHARS_MAX = 128  # the `by` field of a decision
RETENTION_SKEW_S = CLOCK_SKEW_S  # tolerance for clock skew when judging expiry
CAPTURED = "captured"  # the retention category of assets that name a subject
RETENTION_CATEGORIES = frozenset({CAPTURED})
SCOPE_TARGET = "scope:"  # policy target prefix for consent scopes
RETENTION_TARGET = "retention:"  # policy target prefix for retention rules
SCOPE_TAG = "scope:"  # an asset tag `scope:NAME` puts the asset in scope NAME as well
MEDIA_TYPE_SCOPES = (("image/", "photo"), ("video/", "video"), ("audio/", "audio"))
OTHER_MEDIA_SCOPE = "media"  # the scope of any other media type
UNKNOWN_SCOPE_DEFAULT_GRANT = False  # a scope no policy describes is denied by default
VISIBLE = "visible"  # may be listed, served, replicated
PENDING = "pending"  # undecided consent: kept (unserved) only where it was captured
WITHDRAWN = "withdrawn"  # revoked or expired: purged everywhere

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_GF32_POLY = 0b100101  # x^5 + x^2 + 1, primitive: the powers of x are 31 distinct non-zero weights
_SCOPE_NAME = re.compile(r"[a-z][a-z0-9-]*")
_POLICY_FIELDS = frozenset(
    {"kind", "mesh", "publisher", "at", "target", "default", "description", "retention_s"}
)
_DECISION_FIELDS = frozenset({"kind", "subject", "scope", "grant", "at", "by", "seen"})
_KEY_SEP = "/"


# --- subject codes ------------------------------------------------------------------------------


def _gf32_mul(a: int, b: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        b >>= 1
        a <<= 1
        if a & 0b100000:
            a ^= _GF32_POLY
    return product


def _x_power(n: int) -> int:
    value = 1
    for _ in range(n):
        value = _gf32_mul(value, 2)
    return value


# Weights x^(n-1) ... x^1 for the n-1 random characters, then 1 for the check: distinct and
# non-zero for any n up to 31 (x has order 31), so codes (n = 8) and badge secrets (n = 20) alike
# refuse every single wrong character and every swap of two different characters.
_WEIGHTS = {n: tuple(_x_power(n - 1 - i) for i in range(n))
            for n in (SUBJECT_CODE_CHARS, BADGE_SECRET_CHARS)}


def _check_value(values: list[int]) -> int:
    """The GF(32) sum of weight * value; a valid text sums to zero with its check included."""
    total = 0
    for weight, value in zip(_WEIGHTS[len(values)], values):
        total ^= _gf32_mul(weight, value)
    return total


def _with_check(values: list[int]) -> list[int]:
    """`values` followed by the check character that makes the weighted sum zero."""
    return values + [_check_value(values + [0])]


def _random_values(rng: random.Random, count: int) -> list[int]:
    bits = rng.getrandbits(5 * count)
    return [(bits >> (5 * i)) & 31 for i in range(count)]


def _parse_crockford(text: object, chars: int, chars_max: int, what: str, example: str) -> list[int]:
    """The values of `chars` Crockford characters typed by a person; ValueError saying why not."""
    if not isinstance(text, str) or len(text) > chars_max:
        raise ValueError(f"a {what} looks like {example}")
    compact = "".join(text.split()).replace("-", "").upper().translate(_CROCKFORD_ALIASES)
    if len(compact) != chars:
        raise ValueError(f"a {what} has {chars} characters, like {example}")
    bad = sorted({ch for ch in compact if ch not in _CROCKFORD})
    if bad:
        raise ValueError(f"a {what} cannot contain {''.join(bad)!r}")
    values = [_CROCKFORD.index(ch) for ch in compact]
    if _check_value(values):
        raise ValueError(f"not a valid {what}: a character is mistyped (check failed)")
    return values


def _format_code(values: list[int]) -> str:
    text = "".join(_CROCKFORD[v] for v in values)
    return f"{text[:4]}-{text[4:]}"


def new_subject_code(rng: random.Random) -> str:
    """A fresh pseudonymous subject code such as `7KQ2-M9X7` (35 random bits, 1 check char) with
    no badge secret: revocable by anyone, grantable only by the crew (see `new_badge`)."""
    return _format_code(_with_check(_random_values(rng, SUBJECT_RANDOM_CHARS)))


def parse_subject_code(text: str) -> str:
    """The canonical form of a subject code typed or scanned by a person; ValueError if invalid.

    Case, hyphens and spaces do not matter; O reads as 0 and I, L as 1 (Crockford base32).
    """
    values = _parse_crockford(text, SUBJECT_CODE_CHARS, SUBJECT_INPUT_CHARS_MAX, "subject code",
                              "7KQ2-M9X7")
    return _format_code(values)


# --- badge secrets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadgeKdf:
    """The scrypt cost of deriving a badge's code from its secret (RFC 7914 parameters)."""

    n: int = 2**13  # CPU and memory cost
    r: int = 8  # block size; memory is 128 * n * r bytes (8 MiB)
    p: int = 1  # parallelism


# About 16 ms on one core of the x86-64 dev machine (2026), a few times that on an ARM edge box: one
# per grant checked, about 2^35 of them (17 CPU-years) to forge a secret for a code that was seen.
BADGE_KDF = BadgeKdf()


@dataclass(frozen=True)
class Badge:
    """What one printed badge carries: the code in print, the secret only in its QR code."""

    code: str  # canonical subject code, derived from the secret
    secret: str  # canonical badge secret, XXXX-XXXX-XXXX-XXXX-XXXX


def _format_secret(values: list[int]) -> str:
    text = "".join(_CROCKFORD[v] for v in values)
    step = BADGE_SECRET_GROUP_CHARS
    return "-".join(text[i : i + step] for i in range(0, len(text), step))


def new_badge_secret(rng: random.Random) -> str:
    """A fresh badge secret (95 random bits and 1 check character, in groups of 4)."""
    return _format_secret(_with_check(_random_values(rng, BADGE_SECRET_RANDOM_CHARS)))


def parse_badge_secret(text: str) -> str:
    """The canonical form of a badge secret typed or scanned by a person; ValueError if invalid
    (same rules as codes: case, hyphens and spaces do not matter; O is 0, I and L are 1)."""
    values = _parse_crockford(text, BADGE_SECRET_CHARS, BADGE_SECRET_INPUT_CHARS_MAX, "badge secret",
                              "XXXX-XXXX-XXXX-XXXX-XXXX")
    return _format_secret(values)


def _badge_salt(mesh_id: str) -> bytes:
    if not isinstance(mesh_id, str) or not mesh_id:
        raise UsageError("a badge belongs to a mesh: give its mesh id")
    return BADGE_SALT_PREFIX + mesh_id.encode("utf-8")


def badge_code(secret: str, mesh_id: str, kdf: BadgeKdf = BADGE_KDF) -> str:
    """The subject code of the badge with `secret` in mesh `mesh_id` (ValueError: not a secret)."""
    compact = parse_badge_secret(secret).replace("-", "")
    digest = hashlib.scrypt(compact.encode("ascii"), salt=_badge_salt(mesh_id), n=kdf.n, r=kdf.r,
                            p=kdf.p, dklen=5, maxmem=256 * kdf.n * kdf.r * kdf.p + 2**20)
    bits = int.from_bytes(digest, "big") >> (40 - 5 * SUBJECT_RANDOM_CHARS)
    values = [(bits >> (5 * (SUBJECT_RANDOM_CHARS - 1 - i))) & 31 for i in range(SUBJECT_RANDOM_CHARS)]
    return _format_code(_with_check(values))


def new_badge(rng: random.Random, mesh_id: str, kdf: BadgeKdf = BADGE_KDF) -> Badge:
    """A fresh badge for mesh `mesh_id`: a random secret and the code derived from it."""
    secret = new_badge_secret(rng)
    return Badge(code=badge_code(secret, mesh_id, kdf), secret=secret)


def badge_holds(code: str, secret: str, mesh_id: str, kdf: BadgeKdf = BADGE_KDF) -> bool:
    """Whether `secret` is the secret of the badge printed with `code` in mesh `mesh_id`.

    ValueError if either text is malformed (a typo in the secret is caught here, before the KDF).
    """
    subject, canonical = parse_subject_code(code), parse_badge_secret(secret)
    return hmac.compare_digest(badge_code(canonical, mesh_id, kdf), subject)


def _canonical_subject(text: object) -> str | None:
    try:
        code = parse_subject_code(text)  # type: ignore[arg-type]
    except ValueError:
        return None
    return code if code == text else None


# --- scopes -------------------------------------------------------------------------------------


def _scope_problem(scope: object) -> str | None:
    if not isinstance(scope, str) or not 1 <= len(scope) <= SCOPE_CHARS_MAX:
        return f"a scope name has 1 to {SCOPE_CHARS_MAX} characters"
    if not _SCOPE_NAME.fullmatch(scope):
        return "a scope name is lower-case letters, digits and '-', starting with a letter"
    return None


def check_scope(scope: str) -> str:
    """`scope` if it can name a consent scope; UsageError saying why not otherwise."""
    problem = _scope_problem(scope)
    if problem:
        raise UsageError(problem)
    return scope


def asset_scopes(asset: AssetRecord) -> frozenset[str]:
    """The consent scopes an asset falls under: its media type's, plus one per `scope:NAME` tag."""
    media_type = asset.media_type.lower() if isinstance(asset.media_type, str) else ""
    scope = next((s for prefix, s in MEDIA_TYPE_SCOPES if media_type.startswith(prefix)), None)
    scopes = {scope or OTHER_MEDIA_SCOPE}
    for tag in asset.tags:
        name = tag[len(SCOPE_TAG) :] if tag.startswith(SCOPE_TAG) else None
        if name is not None and _scope_problem(name) is None:
            scopes.add(name)
    return frozenset(scopes)


# --- policies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScopePolicy:
    """A verified consent scope policy."""

    id: str  # statement id: base32 BLAKE3 of the signed body, truncated
    scope: str  # scope name, e.g. "photo"
    default_grant: bool  # consent of a subject who made no decision
    description: str  # plain language, shown to attendees
    at: float  # unix seconds when signed; the greatest (at, id) per scope is in force
    publisher: str  # node id of the organizer that signed it


@dataclass(frozen=True)
class RetentionPolicy:
    """A verified retention rule."""

    id: str  # statement id: base32 BLAKE3 of the signed body, truncated
    category: str  # which assets it covers: "captured" (assets naming a subject)
    retention_s: float | None  # seconds after added_at the assets are kept; None = no limit
    at: float  # unix seconds when signed; the greatest (at, id) per category is in force
    publisher: str  # node id of the organizer that signed it


@dataclass(frozen=True)
class Policies:
    """The policies in force: one per scope and one per retention category."""

    scopes: dict[str, ScopePolicy] = field(default_factory=dict)  # scope name -> policy
    retention: dict[str, RetentionPolicy] = field(default_factory=dict)  # category -> rule

    def default_grant(self, scope: str) -> bool:
        """Consent for `scope` of a subject who made no decision."""
        policy = self.scopes.get(scope)
        return policy.default_grant if policy else UNKNOWN_SCOPE_DEFAULT_GRANT

    def retention_s(self, category: str) -> float | None:
        """Seconds assets of `category` are kept; None if no rule limits them."""
        rule = self.retention.get(category)
        return rule.retention_s if rule else None


def _description_problem(text: object, required: bool) -> str | None:
    if not isinstance(text, str) or len(text) > DESCRIPTION_CHARS_MAX or not text.isprintable():
        return f"a description is printable text of at most {DESCRIPTION_CHARS_MAX} characters"
    if required and not text.strip():
        return "a consent scope needs a plain-language description"
    return None


def _retention_problem(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "a retention is a number of seconds"
    if not (math.isfinite(value) and 0 < value <= RETENTION_S_MAX):
        return f"a retention is more than 0 and at most {RETENTION_S_MAX:.0f} seconds"
    return None


def _policy_problem(body: dict) -> str | None:
    """What is wrong with a policy body's target-specific fields, or None."""
    target = body["target"]
    if not isinstance(target, str):
        return "a policy target is text"
    if target.startswith(SCOPE_TARGET):
        if body["default"] not in ("grant", "deny") or body["retention_s"] is not None:
            return "a scope policy has default 'grant' or 'deny' and no retention"
        return _scope_problem(target[len(SCOPE_TARGET) :]) or _description_problem(
            body["description"], required=True
        )
    if target.startswith(RETENTION_TARGET):
        if target[len(RETENTION_TARGET) :] not in RETENTION_CATEGORIES:
            return f"retention categories are {sorted(RETENTION_CATEGORIES)}"
        if body["default"] is not None:
            return "a retention policy has no default"
        return _retention_problem(body["retention_s"]) or _description_problem(
            body["description"], required=False
        )
    return "a policy target is 'scope:NAME' or 'retention:CATEGORY'"


def _sign_policy(
    authority_public_key: bytes, key: Ed25519PrivateKey, chain: bytes, fields: dict, at: float
) -> tuple[str, bytes]:
    """(id, blob) of a policy with `fields` (target, default, description, retention_s)."""
    authority = _check_authority_key(authority_public_key)
    at = _check_now(at)
    publisher = _check_signer(authority, key, chain, at, "set policies")
    body = {"kind": "policy", "mesh": mesh_id_from_authority_key(authority), "publisher": publisher, "at": at, **fields}
    problem = _policy_problem(body)
    if problem:
        raise UsageError(problem)
    return _sign_blob(key, chain, "policy", body)


def create_policy(
    authority_public_key: bytes,
    organizer_key: Ed25519PrivateKey,
    organizer_chain: bytes,
    scope: str,
    default: str,
    description: str,
    now: float,
) -> tuple[str, bytes]:
    """(policy id, blob) defining consent scope `scope` (default "grant" or "deny")."""
    fields = {
        "target": SCOPE_TARGET + check_scope(scope),
        "default": default,
        "description": description,
        "retention_s": None,
    }
    return _sign_policy(authority_public_key, organizer_key, organizer_chain, fields, now)


def create_retention_policy(
    authority_public_key: bytes,
    organizer_key: Ed25519PrivateKey,
    organizer_chain: bytes,
    category: str,
    retention_s: float | None,
    now: float,
    description: str = "",
) -> tuple[str, bytes]:
    """(policy id, blob) keeping assets of `category` for `retention_s` (None: no limit)."""
    fields = {
        "target": RETENTION_TARGET + category,
        "default": None,
        "description": description,
        "retention_s": None if retention_s is None else float(retention_s),
    }
    return _sign_policy(authority_public_key, organizer_key, organizer_chain, fields, now)


def verify_policy(
    blob: bytes,
    authority_public_key: bytes,
    now: float,
    revocations: RevocationList | None = None,
) -> ScopePolicy | RetentionPolicy:
    """The policy a blob proves, or CredentialError (whatever the input)."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    signed = _open_blob(blob, "policy", _POLICY_FIELDS, mesh_id_from_authority_key(authority))
    body = signed.body
    problem = _policy_problem(body) or _time_problem(body["at"])
    if problem:
        raise CredentialError(f"malformed policy: {problem}")
    at = float(body["at"])
    if at > now + CLOCK_SKEW_S:
        raise CredentialError("policy dated in the future")
    _check_publisher(signed, "policy", authority, at, revocations)
    policy_id, publisher = statement_id(signed.body_bytes), body["publisher"]
    target = body["target"]
    if target.startswith(SCOPE_TARGET):
        return ScopePolicy(
            id=policy_id, scope=target[len(SCOPE_TARGET) :],
            default_grant=body["default"] == "grant", description=body["description"], at=at,
            publisher=publisher,
        )
    retention_s = body["retention_s"]
    return RetentionPolicy(
        id=policy_id, category=target[len(RETENTION_TARGET) :],
        retention_s=None if retention_s is None else float(retention_s), at=at, publisher=publisher,
    )


def set_policy(state: MeshState, made: tuple[str, bytes]) -> str:
    """Store a policy made by `create_policy` or `create_retention_policy`; returns its id."""
    policy_id, blob = made
    state.put_consent_policy(policy_id, blob)
    return policy_id


def effective_policies(state: MeshState, authority_public_key: bytes, now: float) -> Policies:
    """The policies in force: per target, the valid statement with the greatest (at, id).

    A statement that does not verify, or is stored under another key than its id, is ignored.
    """
    revocations = state_revocations(state, authority_public_key, now)
    scopes: dict[str, ScopePolicy] = {}
    retention: dict[str, RetentionPolicy] = {}
    for key, blob in sorted(state.consent_policy_blobs().items())[:POLICIES_READ_MAX]:
        try:
            policy = verify_policy(blob, authority_public_key, now, revocations)
        except CredentialError:
            continue
        if policy.id != key:
            continue
        if isinstance(policy, ScopePolicy):
            _keep_latest(scopes, policy.scope, policy)
        else:
            _keep_latest(retention, policy.category, policy)
    return Policies(scopes=dict(sorted(scopes.items())), retention=dict(sorted(retention.items())))


def _keep_latest(found: dict, target: str, policy: ScopePolicy | RetentionPolicy) -> None:
    kept = found.get(target)
    if kept is None or (policy.at, policy.id) > (kept.at, kept.id):
        found[target] = policy


# --- decisions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One consent decision as stored: a grant or a revoke of one scope for one subject."""

    id: str  # base32 BLAKE3 of the stored bytes, truncated; unique per decision
    subject: str  # canonical subject code
    scope: str  # scope name
    grant: bool  # True: grant, False: revoke
    at: float  # unix seconds on the deciding node's clock (informative; the rule ignores it)
    by: str  # node id of the deciding node, as it claimed
    seen: frozenset[str]  # ids of the revokes of this subject and scope its writer had seen


def _decision_key(subject: str, scope: str, decision_id: str) -> str:
    return f"{subject}{_KEY_SEP}{scope}{_KEY_SEP}{decision_id}"


def _scope_prefix(subject: str, scope: str) -> str:
    return f"{subject}{_KEY_SEP}{scope}{_KEY_SEP}"


def _decision_body_problem(body: object) -> str | None:
    if not isinstance(body, dict) or body.keys() != _DECISION_FIELDS or body["kind"] != "consent":
        return "unexpected or missing fields"
    if _canonical_subject(body["subject"]) is None:
        return "not a canonical subject code"
    problem = _scope_problem(body["scope"]) or _time_problem(body["at"])
    if problem:
        return problem
    if not isinstance(body["grant"], bool):
        return "grant is a boolean"
    by, seen = body["by"], body["seen"]
    if not isinstance(by, str) or not 1 <= len(by) <= NODE_REF_CHARS_MAX:
        return "by is a node id"
    if not isinstance(seen, list) or len(seen) > DECISIONS_PER_SCOPE_MAX:
        return "seen is a short list"
    if not all(isinstance(s, str) and len(s) <= NODE_REF_CHARS_MAX for s in seen):
        return "seen lists decision ids"
    return None


def _read_decision(key: str, blob: bytes) -> Decision | None:
    """The decision stored under `key`, or None if the entry is junk of any kind."""
    if len(blob) > DECISION_BYTES_MAX:
        return None
    try:
        body = _cbor_loads(blob, "decision")
    except CredentialError:
        return None
    if _decision_body_problem(body):
        return None
    decision_id = statement_id(blob)
    if key != _decision_key(body["subject"], body["scope"], decision_id):
        return None
    return Decision(
        id=decision_id, subject=body["subject"], scope=body["scope"], grant=body["grant"],
        at=float(body["at"]), by=body["by"], seen=frozenset(body["seen"]),
    )


def _effective(decisions: list[Decision] | None, default_grant: bool) -> bool:
    """The merge rule (see the module notes); None stands for too many decisions: denied."""
    if decisions is None:
        return False
    revokes = {d.id for d in decisions if not d.grant}
    grants = [d for d in decisions if d.grant]
    if not grants and not revokes:
        return default_grant
    return any(revokes <= g.seen for g in grants)


class ConsentView:
    """Consent as one state holds it now: reads the decision keys once, decodes them on demand.

    Build one per listing (ls, search, GC) instead of calling the module functions per asset.
    """

    def __init__(self, state: MeshState, policies: Policies) -> None:
        self.state = state
        self.policies = policies
        self._keys: dict[tuple[str, str], list[str]] = {}
        for key in state.consent_decision_keys():
            subject, sep, rest = key.partition(_KEY_SEP)
            scope, sep2, _ = rest.partition(_KEY_SEP)
            if sep and sep2:
                self._keys.setdefault((subject, scope), []).append(key)
        self._decoded: dict[tuple[str, str], list[Decision] | None] = {}

    def decisions(self, subject: str, scope: str) -> list[Decision] | None:
        """The valid decisions of one subject and scope, by (at, id); None if there are too many."""
        pair = (subject, scope)
        if pair not in self._decoded:
            keys = self._keys.get(pair, [])
            if len(keys) > DECISIONS_PER_SCOPE_MAX:
                self._decoded[pair] = None
            else:
                blobs = self.state.consent_decision_blobs(keys)
                found = (_read_decision(k, b) for k, b in blobs.items())
                valid = [d for d in found if d is not None]
                self._decoded[pair] = sorted(valid, key=lambda d: (d.at, d.id))
        return self._decoded[pair]

    def subject_scopes(self, subject: str) -> list[str]:
        """Every scope with at least one decision entry for `subject`."""
        return sorted(scope for s, scope in self._keys if s == subject)

    def granted(self, subject: str, scope: str) -> bool:
        """Effective consent of `subject` for `scope` (the merge rule in the module notes)."""
        code = _normalized_subject(subject)
        if code is None or _scope_problem(scope):
            return False
        return _effective(self.decisions(code, scope), self.policies.default_grant(scope))

    def consented(self, asset: AssetRecord) -> bool:
        """Every subject the asset names consents to every scope the asset falls under."""
        scopes = asset_scopes(asset)
        for subject in asset.subjects:
            code = _normalized_subject(subject)
            if code is None or not all(self.granted(code, scope) for scope in scopes):
                return False
        return True

    def visible(self, asset: AssetRecord, now: float, skew_s: float = RETENTION_SKEW_S) -> bool:
        """Neither expired nor lacking consent."""
        return not expired(asset, self.policies, now, skew_s) and self.consented(asset)

    def status(self, asset: AssetRecord, now: float, skew_s: float = RETENTION_SKEW_S) -> str:
        """VISIBLE; PENDING when every consent it lacks is undecided (no revoke: captured before
        its subject decided, held where it was captured); otherwise WITHDRAWN (a revoke, a flood of
        decisions, a junk subject code, or expired: purged everywhere)."""
        if expired(asset, self.policies, now, skew_s):
            return WITHDRAWN
        undecided = False
        scopes = asset_scopes(asset)
        for subject in asset.subjects:
            code = _normalized_subject(subject)
            if code is None:
                return WITHDRAWN
            for scope in scopes:
                if self.granted(code, scope):
                    continue
                found = self.decisions(code, scope)
                if found is None or any(not d.grant for d in found):
                    return WITHDRAWN
                undecided = True
        return PENDING if undecided else VISIBLE


def _normalized_subject(text: str) -> str | None:
    try:
        return parse_subject_code(text)
    except ValueError:
        return None


def _require_subject(text: str) -> str:
    """The canonical code of user input; UsageError (for the CLI) if it is not one."""
    try:
        return parse_subject_code(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _revoke_ids(view: ConsentView, subject: str, scope: str) -> list[str] | None:
    decisions = view.decisions(subject, scope)
    return None if decisions is None else sorted(d.id for d in decisions if not d.grant)


def record_decision(
    state: MeshState, subject: str, scope: str, grant: bool, at: float, by_node: str
) -> Decision:
    """Record a grant (True) or revoke (False) that has seen every revoke this state holds.

    A revoke is always recorded; a grant is refused (UsageError) once the subject and scope hold
    DECISIONS_PER_SCOPE_MAX decisions, since it would read as denied anyway.
    """
    code, scope = _require_subject(subject), check_scope(scope)
    if _time_problem(at) or not isinstance(grant, bool):
        raise UsageError("a decision needs a valid time and grant True or False")
    if not isinstance(by_node, str) or not 1 <= len(by_node) <= NODE_REF_CHARS_MAX:
        raise UsageError("a decision names the deciding node")
    seen = _revoke_ids(ConsentView(state, Policies()), code, scope)
    if seen is None or len(seen) >= DECISIONS_PER_SCOPE_MAX:
        if grant:
            raise UsageError(f"{code} has too many decisions for {scope!r}: it stays denied")
        seen = (seen or [])[:DECISIONS_PER_SCOPE_MAX]
    body = {
        "kind": "consent", "subject": code, "scope": scope, "grant": grant, "at": float(at),
        "by": by_node, "seen": seen,
    }
    blob = cbor2.dumps(body, canonical=True)
    decision_id = statement_id(blob)
    state.put_consent_decision(_decision_key(code, scope, decision_id), blob)
    return Decision(decision_id, code, scope, grant, float(at), by_node, frozenset(seen))


def consent_state(state: MeshState, subject: str, scope: str, policies: Policies) -> bool:
    """Whether `subject` consents to `scope` on this replica now."""
    return ConsentView(state, policies).granted(subject, scope)


def decisions(state: MeshState, subject: str) -> list[Decision]:
    """Every valid decision about `subject` (any scope), by (at, id)."""
    view = ConsentView(state, Policies())
    code = _require_subject(subject)
    found = [d for scope in view.subject_scopes(code) for d in view.decisions(code, scope) or ()]
    return sorted(found, key=lambda d: (d.at, d.id))


def revoke_all(
    state: MeshState, subject: str, policies: Policies, at: float, by_node: str
) -> list[Decision]:
    """Revoke every scope a policy names, the subject has decided on, or its assets fall under
    (the decision half of `consent forget`; purging media is the store's job)."""
    code = _require_subject(subject)
    scopes = set(policies.scopes) | set(ConsentView(state, policies).subject_scopes(code))
    for asset in subject_assets(state, code):
        scopes |= asset_scopes(asset)
    return [record_decision(state, code, s, False, at, by_node) for s in sorted(scopes)]


def subject_assets(state: MeshState, subject: str) -> list[AssetRecord]:
    """Every asset that names `subject` (in any spelling of its code), sorted by CID."""
    code = _require_subject(subject)
    return [a for a in state.assets() if any(_normalized_subject(s) == code for s in a.subjects)]


# --- retention and visibility -------------------------------------------------------------------


def retention_s(asset: AssetRecord, policies: Policies) -> float | None:
    """Seconds after `added_at` the asset is kept: the shorter of its own retention and, for
    captured media (an asset naming a subject), the captured rule; None if nothing limits it."""
    limits = [asset.retention_s]
    if asset.subjects:
        limits.append(policies.retention_s(CAPTURED))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def expires_at(asset: AssetRecord, policies: Policies) -> float | None:
    """Unix seconds when the asset expires; None if never; -inf if its fields are junk."""
    keep_s = retention_s(asset, policies)
    if keep_s is None:
        return None
    at = asset.added_at + keep_s
    return at if not math.isnan(at) else -math.inf


def expired(
    asset: AssetRecord, policies: Policies, now: float, skew_s: float = RETENTION_SKEW_S
) -> bool:
    """Expired on this node's clock: added_at + retention < now - skew_s."""
    end = expires_at(asset, policies)
    return end is not None and end < now - skew_s


def visible(
    asset: AssetRecord,
    state: MeshState,
    policies: Policies,
    now: float,
    skew_s: float = RETENTION_SKEW_S,
) -> bool:
    """Whether the asset may be listed, served and kept: not expired and consented by every
    subject it names for every scope it falls under."""
    return ConsentView(state, policies).visible(asset, now, skew_s)


def hidden_assets(state: MeshState, authority_public_key: bytes, now: float,
                  skew_s: float = RETENTION_SKEW_S) -> frozenset[str]:
    """CIDs of every asset that may not be listed, served or kept now (the complement of
    `visible_assets`)."""
    view = ConsentView(state, effective_policies(state, authority_public_key, now))
    return frozenset(a.cid for a in state.assets() if not view.visible(a, now, skew_s))


def asset_statuses(state: MeshState, authority_public_key: bytes, now: float,
                   skew_s: float = RETENTION_SKEW_S) -> tuple[list[AssetRecord], dict[str, str]]:
    """Every asset, and the status (PENDING or WITHDRAWN) of those not visible now: one pass."""
    view = ConsentView(state, effective_policies(state, authority_public_key, now))
    records = state.assets()
    statuses = {}
    for record in records:
        status = view.status(record, now, skew_s)
        if status != VISIBLE:
            statuses[record.cid] = status
    return records, statuses


def visible_assets(
    state: MeshState, policies: Policies, now: float, skew_s: float = RETENTION_SKEW_S
) -> list[AssetRecord]:
    """Every visible asset, sorted by CID."""
    view = ConsentView(state, policies)
    return [a for a in state.assets() if view.visible(a, now, skew_s)]


# --- aggregated analytics -----------------------------------------------------------------------


def _views_prefix(state: MeshState, node_id: str) -> str:
    if not isinstance(node_id, str) or not node_id or _KEY_SEP in node_id:
        raise UsageError("a node id has no '/'")
    return f"{node_id}{_KEY_SEP}{state.actor.hex()}{_KEY_SEP}"


def count_views(state: MeshState, node_id: str, counts: dict[str, int]) -> None:
    """Add views per canonical tag to this process's own counters, in one change (batch views in
    memory and flush now and then: every call is a change kept forever in the history)."""
    for tag in counts:
        if not isinstance(tag, str) or normalize_tag(tag) != tag:
            raise UsageError(f"{tag!r} is not a canonical tag")
    state.add_view_counts(_views_prefix(state, node_id), dict(counts))


def count_view(state: MeshState, node_id: str, tags: Iterable[str], views: int = 1) -> None:
    """Count `views` views of an asset with `tags` (each tag once)."""
    count_views(state, node_id, {tag: views for tag in set(tags)})


def tag_views(state: MeshState) -> dict[str, int]:
    """Total views per tag over every node, sorted by tag."""
    totals: dict[str, int] = {}
    for key, count in state.view_counts().items():
        parts = key.split(_KEY_SEP)
        if len(parts) != 3 or not all(parts):
            continue
        tag = parts[2]
        try:
            canonical = normalize_tag(tag) == tag
        except ValueError:
            canonical = False
        if canonical:
            totals[tag] = totals.get(tag, 0) + count
    return dict(sorted(totals.items()))
