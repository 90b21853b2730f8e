"""Limited drops: an escrow (bounded-counter) CRDT in the shared state that never oversells.

Theory of operation:
- A drop is an organizer-signed statement {name, stock, price, tag, pay_url, alloc, publisher, at},
  signed like releases (Ed25519 by the organizer's node key over `assetmesh/v1/drop\\x00` + the
  canonical CBOR body, blob [chain, [body, signature]], checked at its own time; the publisher an
  organizer then and not revoked at or before it). Its id is base32 BLAKE3 of the body, truncated.
  `alloc` gives nodes their initial allowance; the rest of the stock is the publisher's.
- Everything a node does with its allowance is an *op* signed by that node's own key (the node id
  is its Ed25519 public key; no chain is needed, see the invariant): reserve one unit under an
  order code, cancel or mark paid one of its own reservations, give units to another node (a
  transfer), ask for more (a request; spends nothing). Each op carries the node's next sequence
  number `seq`. Organizers sign two more statements: close (no new reservations or transfers
  anywhere once seen) and reclaim (take a dead node's allowance: see below).
- Entries live in one late root map under unique keys (`d/DROP`, `x/DROP/ID`, `o/DROP/NODE/SEQ/ID`);
  none is ever changed or removed, so merging is set union and every reader sees a function of
  the set of entries: replicas that merged the same entries compute the same tally, in any order.
- Admission (the merge rule). Per node, its credit is its allowance plus the units admitted to it
  by others' transfers (and reclaims it received). Its ops, ordered by (seq, kind, id), are split
  into segments by the reclaims of it (a reclaim names `upto`, the greatest seq of the node the
  organizer had seen). Within a segment, first its reservations are admitted while every live
  (not cancelled) one fits in the credit left (a strict prefix: once one does not fit, no later
  reservation of that node is admitted); then its transfers, each clamped to what is left; then
  the segment's reclaim, clamped likewise. What a clamped transfer or reclaim does not carry is
  never credited to anyone. Credits and admissions form a monotone system (more credit admits
  more and leaves more); the book iterates from the allowances up, and any iterate is safe.
- Invariant: sum over nodes of live admitted reservations <= stock, for every set of entries,
  hence under any partition, crash, duplicate, reordering or hostile member. Per node, live
  reservations + transfers out + reclaims of it <= allowance + transfers in + reclaims to it;
  summed over nodes every admitted transfer or reclaim appears once on each side, so the live
  reservations sum to at most the allowances, which sum to the stock. A forged op does not verify
  and is ignored; a node's signature can only spend that node's own credit, so a non-member key
  can spend only what a holder chose to give it.
- Offline: a node checks a new reservation or transfer against its own admitted credit. Its
  credit can only grow as it learns more (transfers to it; reclaims are the exception), and only
  it signs its spends, so what it admitted stays admitted after any merge. The processes of one
  node (the agent, CLI commands, the gateway) write through the state file's lock, so they never
  fork its sequence; the agent's automatic answers to requests give at most half of what is left.
- Reclaim: an organizer takes what a dead node had left as the organizer saw it (amount) and
  fixes `upto`. When the node returns, its ops with seq > upto come after the reclaim: they are
  admitted only from credit the organizer had not counted (transfers it had not seen), so the
  units are never spent twice; reservations the node made while cut off beyond that are void (and
  shown so). A node that sees a reclaim of itself stops selling from what was taken.
- Orders: a reservation holds an order code (6 Crockford characters, random), its expiry and
  nothing about the buyer. Only the node that reserved it marks it paid or cancels it (the first of
  the two in its sequence wins); an expired unpaid reservation is cancelled by its node's next
  write. A close stops new reservations where it is seen; reservations made before a node saw it
  still count, and outstanding ones may still be settled, so the final tally is exact everywhere
  once all entries have met: sold (paid), reserved (outstanding), unsold = stock - both.
- Pure code: time (`now`) and randomness (`rng`) are passed in; bad input raises UsageError with a
  one-line reason; a bad entry from a peer is skipped, never raised.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.errors import CredentialError, NotFoundError, UsageError
from mesh.ids import mesh_id_from_authority_key, public_key_from_node_id
from mesh.state.document import MeshState
from mesh.state.membership import (
    CHAIN_BYTES_MAX,
    CLOCK_SKEW_S,
    TIME_S_MAX,
    Role,
    _cbor_loads,
    _check_authority_key,
    _check_now,
    public_key_bytes,
    verify_chain,
)
from mesh.state.releases import _check_signer, _node_id_problem, state_revocations, statement_id

STOCK_MAX = 1_000_000  # units in one drop
NAME_CHARS_MAX = 128
PRICE_CHARS_MAX = 32
PAY_URL_CHARS_MAX = 300
ALLOC_NODES_MAX = 256  # nodes named in a drop's initial allocation
STATEMENT_BYTES_MAX = 16 * 1024  # one organizer statement body (the alloc map dominates)
OP_BYTES_MAX = 512  # one node op blob; ours are about 250 bytes
BLOB_BYTES_MAX = CHAIN_BYTES_MAX + STATEMENT_BYTES_MAX + 128
DROPS_READ_MAX = 256  # drops a reader considers
OPS_PER_DROP_MAX = 200_000  # node ops of one drop a reader considers (more are ignored)
ITERATIONS_MAX = 256  # rounds of the credit fixpoint (every round's result is safe; see module notes)
VERIFY_CACHE_MAX = 65536  # verified op blobs remembered (entries never change)
ORDER_CODE_CHARS = 6  # 30 random bits
RESERVATION_TTL_S_DEFAULT = 15 * 60.0  # how long an unpaid reservation holds its unit
RESERVATION_TTL_S_MAX = 7 * 86400.0
ANSWER_SPARE_MIN = 2  # a node answers a request only if it has this many units left
ASK_AMOUNT_DEFAULT = 5  # units a box asks for by itself when a reservation leaves it ASK_LOW_WATER or fewer
ASK_LOW_WATER = 1

_PREFIX = b"assetmesh/v1/drop\x00"  # organizer statements
_OP_PREFIX = b"assetmesh/v1/drop-op\x00"  # node ops
_SIGNATURE_BYTES = 64
_SEP = "/"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_ID = re.compile(r"[a-z2-7]{16}")
_TAG = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_STATEMENT_FIELDS = {
    "drop": frozenset({"kind", "mesh", "publisher", "at", "name", "stock", "price", "tag", "pay_url", "alloc"}),
    "drop-close": frozenset({"kind", "mesh", "publisher", "at", "drop"}),
    "drop-reclaim": frozenset({"kind", "mesh", "publisher", "at", "drop", "node", "upto", "amount", "to"}),
}
_OP_FIELDS = frozenset({"kind", "mesh", "drop", "node", "seq", "op", "ref", "n", "to", "expires", "at"})
OPS = ("cancel", "paid", "reserve", "give", "ask")  # within one seq, in this order
_OP_RANK = {op: i for i, op in enumerate(OPS)}

RESERVED, PAID, CANCELLED, VOID = "reserved", "paid", "cancelled", "void"


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    """A verified drop statement."""

    id: str  # base32 BLAKE3 of the signed body, truncated
    name: str  # what is sold, e.g. "Signed print"
    stock: int  # units in all
    price: str  # e.g. "25EUR" (display only: no payment is processed here)
    tag: str | None  # canonical tag it belongs to (sales per tag), or None
    pay_url: str | None  # payment link template; "{order}" becomes the order code
    alloc: dict[str, int]  # node id -> initial allowance (the publisher holds the rest)
    publisher: str  # organizer node that signed it
    at: float  # unix seconds when it was signed


@dataclass(frozen=True)
class Op:
    """A verified node op."""

    id: str  # base32 BLAKE3 of its body, truncated
    node: str  # the node that signed it
    seq: int  # its place in that node's sequence
    op: str  # one of OPS
    ref: str | None  # order code (reserve, cancel, paid); the request answered (give)
    n: int  # units: 1 (reserve), the amount (give, ask), 0 otherwise
    to: str | None  # receiving node (give)
    expires: float | None  # reservation expiry, unix seconds
    at: float  # unix seconds on the node's clock when it signed


@dataclass(frozen=True)
class Reclaim:
    """A verified organizer reclaim of one node's allowance."""

    id: str
    node: str  # the node whose allowance is taken
    upto: int  # its greatest seq the organizer had seen: later ops come after the reclaim
    amount: int  # what the organizer saw left there
    to: str  # the node credited (the reclaiming organizer)
    at: float


@dataclass
class Order:
    """One reservation as the book reads it."""

    code: str  # order code
    node: str  # the node that reserved it (whose allowance it uses)
    seq: int
    expires: float  # unix seconds
    at: float  # when reserved
    status: str  # RESERVED, PAID, CANCELLED or VOID (not admitted: beyond the node's credit)


@dataclass
class NodeTally:
    """One node's share of a drop."""

    credit: int = 0  # allowance plus units admitted to it
    given: int = 0  # units it transferred (admitted, clamped) and units reclaimed from it
    sold: int = 0  # paid reservations
    reserved: int = 0  # outstanding reservations
    void: int = 0  # reservations beyond its credit (after a reclaim it had not seen)

    @property
    def left(self) -> int:
        """Units it may still reserve or give."""
        return self.credit - self.given - self.sold - self.reserved


@dataclass
class Tally:
    """A drop as one state proves it now."""

    drop: Drop
    closed: bool
    nodes: dict[str, NodeTally]
    orders: dict[tuple[str, str], Order]  # (node, code) -> order
    asks: list[Op]  # every request for more
    gives: list[Op]  # every admitted transfer (clamped amounts are in `received`)
    reclaims: list[Reclaim]
    received: dict[str, int] = field(default_factory=dict)  # give op id -> units admitted

    @property
    def sold(self) -> int:
        return sum(t.sold for t in self.nodes.values())

    @property
    def reserved(self) -> int:
        return sum(t.reserved for t in self.nodes.values())

    @property
    def left(self) -> int:
        return self.drop.stock - self.sold - self.reserved

    def node(self, node_id: str) -> NodeTally:
        return self.nodes.get(node_id) or NodeTally()

    def spread(self) -> bool:
        """More than one node holds units: a page elsewhere sees only an estimate."""
        return sum(1 for t in self.nodes.values() if t.left > 0) > 1

    def open_asks(self) -> list[Op]:
        """Requests no transfer has answered yet and whose node has not received units since."""
        answered = {g.ref for g in self.gives if g.ref}
        return [a for a in self.asks if a.id not in answered]

    def find_orders(self, code: str) -> list[Order]:
        return [o for (_, c), o in sorted(self.orders.items()) if c == code]

    def as_json(self, now: float | None = None) -> dict:
        """The `mesh drop ls --json` row."""
        per_node = {node: {"credit": t.credit, "given": t.given, "sold": t.sold, "reserved": t.reserved,
                           "left": t.left, "void": t.void} for node, t in sorted(self.nodes.items())}
        return {"id": self.drop.id, "name": self.drop.name, "stock": self.drop.stock, "sold": self.sold,
                "reserved": self.reserved, "left": self.left, "closed": self.closed, "price": self.drop.price,
                "tag": self.drop.tag, "per_node": per_node}


# --- input checks -------------------------------------------------------------------------------


def _time_ok(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and 0 <= value <= TIME_S_MAX)


def _count_ok(value: object, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _node_ok(value: object) -> bool:
    return isinstance(value, str) and _node_id_problem(value) is None


def _text_problem(value: object, what: str, chars_max: int, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= chars_max or not value.isprintable():
        return f"a drop's {what} is printable text of 1 to {chars_max} characters"
    if value != value.strip():
        return f"a drop's {what} has no leading or trailing spaces"
    return None


def _pay_url_problem(value: object) -> str | None:
    if value is None:
        return None
    problem = _text_problem(value, "pay URL", PAY_URL_CHARS_MAX, False)
    if problem:
        return problem
    if not value.startswith(("https://", "http://")) or " " in value:
        return "a pay URL starts with https:// (or http://) and has no spaces; {order} becomes the order code"
    return None


def _drop_body_problem(body: dict) -> str | None:
    problem = (_text_problem(body["name"], "name", NAME_CHARS_MAX, False)
               or _text_problem(body["price"], "price", PRICE_CHARS_MAX, False)
               or _pay_url_problem(body["pay_url"]))
    if problem:
        return problem
    if body["tag"] is not None and not (isinstance(body["tag"], str) and _TAG.fullmatch(body["tag"])):
        return "a drop's tag is a canonical tag"
    if not _count_ok(body["stock"], 1, STOCK_MAX):
        return f"a drop's stock is a whole number from 1 to {STOCK_MAX}"
    alloc = body["alloc"]
    if not isinstance(alloc, dict) or len(alloc) > ALLOC_NODES_MAX:
        return f"an allocation names at most {ALLOC_NODES_MAX} nodes"
    if not all(_node_ok(k) and _count_ok(v, 0, STOCK_MAX) for k, v in alloc.items()):
        return "an allocation maps node ids to whole numbers of units"
    if sum(alloc.values()) > body["stock"]:
        return f"the allocation ({sum(alloc.values())}) exceeds the stock ({body['stock']})"
    return None


def parse_order_code(text: object) -> str:
    """The canonical form of an order code typed by a person; UsageError if it is not one."""
    if not isinstance(text, str) or len(text) > 32:
        raise UsageError(f"an order code has {ORDER_CODE_CHARS} characters, like 7KQ2M9")
    compact = "".join(text.split()).replace("-", "").upper().translate(_CROCKFORD_ALIASES)
    if len(compact) != ORDER_CODE_CHARS or any(ch not in _CROCKFORD for ch in compact):
        raise UsageError(f"{text!r} is not an order code ({ORDER_CODE_CHARS} characters, like 7KQ2M9)")
    return compact


def _code_ok(value: object) -> bool:
    return (isinstance(value, str) and len(value) == ORDER_CODE_CHARS
            and all(ch in _CROCKFORD for ch in value))


def new_order_code(rng: random.Random) -> str:
    bits = rng.getrandbits(5 * ORDER_CODE_CHARS)
    return "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in range(ORDER_CODE_CHARS))


def check_drop_id(text: str) -> str:
    """`text` if it can be a drop id; UsageError otherwise."""
    if not isinstance(text, str) or not _ID.fullmatch(text.strip().lower()):
        raise UsageError(f"{text!r} is not a drop id (16 base32 characters; see `mesh drop ls`)")
    return text.strip().lower()


def pay_link(drop: Drop, code: str) -> str | None:
    """The payment link of an order: the drop's template with {order} replaced."""
    return drop.pay_url.replace("{order}", code) if drop.pay_url else None


# --- organizer statements -----------------------------------------------------------------------


def _sign_statement(authority_public_key: bytes, key: Ed25519PrivateKey, chain: bytes, kind: str,
                    fields: dict, at: float, doing: str) -> tuple[str, bytes]:
    authority = _check_authority_key(authority_public_key)
    at = _check_now(at)
    publisher = _check_signer(authority, key, chain, at, doing)
    body = {"kind": kind, "mesh": mesh_id_from_authority_key(authority), "publisher": publisher, "at": at,
            **fields}
    body_bytes = cbor2.dumps(body, canonical=True)
    if len(body_bytes) > STATEMENT_BYTES_MAX:
        raise UsageError(f"the {kind} statement is too large ({len(body_bytes)} bytes)")
    blob = cbor2.dumps([bytes(chain), [body_bytes, key.sign(_PREFIX + body_bytes)]], canonical=True)
    return statement_id(body_bytes), blob


def create_drop(authority_public_key: bytes, key: Ed25519PrivateKey, chain: bytes, name: str, stock: int,
                price: str, tag: str | None, pay_url: str | None, alloc: dict[str, int],
                at: float) -> tuple[str, bytes]:
    """(drop id, blob) of a new drop signed by an organizer; UsageError on bad fields."""
    fields = {"name": name, "stock": stock, "price": price, "tag": tag, "pay_url": pay_url,
              "alloc": dict(sorted(alloc.items()))}
    problem = _drop_body_problem(fields)
    if problem:
        raise UsageError(problem)
    return _sign_statement(authority_public_key, key, chain, "drop", fields, at, "create drops")


def create_close(authority_public_key: bytes, key: Ed25519PrivateKey, chain: bytes, drop_id: str,
                 at: float) -> tuple[str, bytes]:
    return _sign_statement(authority_public_key, key, chain, "drop-close", {"drop": check_drop_id(drop_id)}, at,
                           "close drops")


def create_reclaim(authority_public_key: bytes, key: Ed25519PrivateKey, chain: bytes, drop_id: str,
                   node: str, upto: int, amount: int, at: float) -> tuple[str, bytes]:
    to = _check_signer(_check_authority_key(authority_public_key), key, chain, _check_now(at), "reclaim allowances")
    fields = {"drop": check_drop_id(drop_id), "node": node, "upto": upto, "amount": amount, "to": to}
    return _sign_statement(authority_public_key, key, chain, "drop-reclaim", fields, at, "reclaim allowances")


@functools.lru_cache(maxsize=4096)
def _open_statement(blob: bytes, authority: bytes) -> tuple[str, dict] | None:
    """(id, body) of an organizer statement whose chain and signature verify at its own time;
    None for anything else. Revocations are checked by the caller (they change; this is cached)."""
    try:
        if len(blob) > BLOB_BYTES_MAX:
            return None
        outer = _cbor_loads(blob, "drop")
        if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)
                and isinstance(outer[1], list) and len(outer[1]) == 2):
            return None
        body_bytes, signature = outer[1]
        if not (isinstance(body_bytes, bytes) and isinstance(signature, bytes)):
            return None
        if len(body_bytes) > STATEMENT_BYTES_MAX or len(signature) != _SIGNATURE_BYTES:
            return None
        body = _cbor_loads(body_bytes, "drop")
        if not isinstance(body, dict) or body.get("kind") not in _STATEMENT_FIELDS:
            return None
        if body.keys() != _STATEMENT_FIELDS[body["kind"]] or body["mesh"] != mesh_id_from_authority_key(authority):
            return None
        if not _time_ok(body["at"]) or not _node_ok(body["publisher"]):
            return None
        public_key = public_key_from_node_id(body["publisher"])
        member = verify_chain(outer[0], authority, float(body["at"]), expected_node_public_key=public_key)
        if member.role is not Role.ORGANIZER:
            return None
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _PREFIX + body_bytes)
    except (CredentialError, InvalidSignature, ValueError, TypeError):
        return None
    return statement_id(body_bytes), body


# --- node ops -----------------------------------------------------------------------------------


def _sign_op(state: MeshState, authority_public_key: bytes, key: Ed25519PrivateKey, drop_id: str, seq: int,
             op: str, at: float, ref: str | None = None, n: int = 0, to: str | None = None,
             expires: float | None = None) -> Op:
    from mesh.ids import node_id_from_public_key

    node = node_id_from_public_key(public_key_bytes(key))
    body = {"kind": "drop-op", "mesh": mesh_id_from_authority_key(_check_authority_key(authority_public_key)),
            "drop": drop_id, "node": node, "seq": seq, "op": op, "ref": ref, "n": n, "to": to,
            "expires": expires, "at": float(at)}
    body_bytes = cbor2.dumps(body, canonical=True)
    blob = cbor2.dumps([body_bytes, key.sign(_OP_PREFIX + body_bytes)], canonical=True)
    op_id = statement_id(body_bytes)
    state.put_drop_entry(_op_key(drop_id, node, seq, op_id), blob)
    return Op(op_id, node, seq, op, ref, n, to, expires, float(at))


def _op_key(drop_id: str, node: str, seq: int, op_id: str) -> str:
    return _SEP.join(("o", drop_id, node, str(seq), op_id))


def _op_body_ok(body: dict) -> bool:
    op = body["op"]
    if op not in _OP_RANK or not _count_ok(body["seq"], 1, 1 << 53) or not _time_ok(body["at"]):
        return False
    if op in ("reserve", "cancel", "paid") and not _code_ok(body["ref"]):
        return False
    if op == "reserve":
        return body["n"] == 1 and _time_ok(body["expires"]) and body["to"] is None
    if op == "give":
        return (_count_ok(body["n"], 1, STOCK_MAX) and _node_ok(body["to"]) and body["to"] != body["node"]
                and (body["ref"] is None or (isinstance(body["ref"], str) and _ID.fullmatch(body["ref"]))))
    if op == "ask":
        return _count_ok(body["n"], 1, STOCK_MAX) and body["ref"] is None and body["to"] is None
    return body["n"] == 0 and body["to"] is None


@functools.lru_cache(maxsize=VERIFY_CACHE_MAX)
def _open_op(blob: bytes, key: str, mesh_id: str) -> Op | None:
    """The op a blob stored under `key` proves (signed by the node it names), or None."""
    try:
        if len(blob) > OP_BYTES_MAX:
            return None
        outer = cbor2.loads(blob)
        if not (isinstance(outer, list) and len(outer) == 2 and all(isinstance(x, bytes) for x in outer)):
            return None
        body_bytes, signature = outer
        body = _cbor_loads(body_bytes, "drop op")
        if not isinstance(body, dict) or body.keys() != _OP_FIELDS or body["kind"] != "drop-op":
            return None
        if body["mesh"] != mesh_id or not _node_ok(body["node"]) or not _op_body_ok(body):
            return None
        op_id = statement_id(body_bytes)
        if key != _op_key(body["drop"], body["node"], body["seq"], op_id):
            return None
        Ed25519PublicKey.from_public_bytes(public_key_from_node_id(body["node"])).verify(
            signature, _OP_PREFIX + body_bytes)
    except (CredentialError, InvalidSignature, ValueError, TypeError, cbor2.CBORDecodeError, RecursionError):
        return None
    expires = float(body["expires"]) if body["expires"] is not None else None
    return Op(op_id, body["node"], body["seq"], body["op"], body["ref"], body["n"], body["to"], expires,
              float(body["at"]))


# --- the book -----------------------------------------------------------------------------------


@dataclass
class _Entries:
    """One drop's verified entries."""

    drop: Drop
    ops: dict[str, list[Op]] = field(default_factory=dict)  # node -> its ops
    reclaims: dict[str, list[Reclaim]] = field(default_factory=dict)  # node -> reclaims of it
    closed: bool = False


class DropBook:
    """Every drop one state proves at one time (entries verified once, tallies computed on demand)."""

    def __init__(self, state: MeshState, authority_public_key: bytes, now: float) -> None:
        self.authority = _check_authority_key(authority_public_key)
        self.now = _check_now(now)
        self.mesh_id = mesh_id_from_authority_key(self.authority)
        self.revocations = state_revocations(state, self.authority, self.now)
        self._drops: dict[str, _Entries] = {}
        self._tallies: dict[str, Tally] = {}
        self._read(state, state.drop_entries())

    def _read(self, state: MeshState, entries: dict[str, bytes]) -> None:
        statements, ops = [], []
        for key, blob in entries.items():
            kind = key.split(_SEP, 1)[0]
            if kind in ("d", "x"):  # few: read afresh (values are cached per key)
                statements.append((key, state.drop_entry(key) or blob))
            else:
                ops.append((key, blob))
        for key, blob in statements:
            if key.startswith("d/"):
                self._read_drop(key, blob)
        for key, blob in statements:
            if key.startswith("x/"):
                self._read_statement(key, blob)
        counts: dict[str, int] = {}
        for key, blob in ops:
            parts = key.split(_SEP)
            entries_of = self._drops.get(parts[1]) if len(parts) == 5 and parts[0] == "o" else None
            if entries_of is None or counts.get(parts[1], 0) >= OPS_PER_DROP_MAX:
                continue
            op = _open_op(blob, key, self.mesh_id)
            if op is None:  # values are cached per key: what is stored there now may differ
                now_blob = state.drop_entry(key)
                op = _open_op(now_blob, key, self.mesh_id) if now_blob not in (None, blob) else None
            if op is not None:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
                entries_of.ops.setdefault(op.node, []).append(op)

    def verified_statement(self, blob: bytes, kind: str) -> tuple[str, dict] | None:
        opened = _open_statement(bytes(blob), self.authority)
        if opened is None or opened[1]["kind"] != kind or opened[1]["at"] > self.now + CLOCK_SKEW_S:
            return None
        revocation = self.revocations.revocation_of(opened[1]["publisher"])
        if revocation is not None and opened[1]["at"] >= revocation.at:
            return None
        return opened

    def _read_drop(self, key: str, blob: bytes) -> None:
        opened = self.verified_statement(blob, "drop")
        if opened is None or key != f"d/{opened[0]}" or len(self._drops) >= DROPS_READ_MAX:
            return
        drop_id, body = opened
        if _drop_body_problem(body):
            return
        drop = Drop(drop_id, body["name"], body["stock"], body["price"], body["tag"], body["pay_url"],
                    dict(body["alloc"]), body["publisher"], float(body["at"]))
        self._drops[drop_id] = _Entries(drop)

    def _read_statement(self, key: str, blob: bytes) -> None:
        parts = key.split(_SEP)
        if len(parts) != 3:
            return
        entries = self._drops.get(parts[1])
        opened = _open_statement(bytes(blob), self.authority)
        if entries is None or opened is None or parts[2] != opened[0]:
            return
        opened = self.verified_statement(blob, opened[1]["kind"])
        if opened is None or opened[1]["drop"] != parts[1]:
            return
        statement_id_, body = opened
        if body["kind"] == "drop-close":
            entries.closed = True
        elif (body["kind"] == "drop-reclaim" and _node_ok(body["node"]) and _node_ok(body["to"])
              and body["to"] != body["node"] and _count_ok(body["upto"], 0, 1 << 53)
              and _count_ok(body["amount"], 0, STOCK_MAX)):
            reclaim = Reclaim(statement_id_, body["node"], body["upto"], body["amount"], body["to"], float(body["at"]))
            entries.reclaims.setdefault(reclaim.node, []).append(reclaim)

    def drops(self) -> list[Drop]:
        """Every valid drop, oldest first."""
        return sorted((e.drop for e in self._drops.values()), key=lambda d: (d.at, d.id))

    def drop(self, drop_id: str) -> Drop | None:
        entries = self._drops.get(drop_id)
        return entries.drop if entries else None

    def tally(self, drop_id: str) -> Tally:
        """The drop's tally (NotFoundError if this state holds no valid drop with that id)."""
        if drop_id not in self._tallies:
            entries = self._drops.get(drop_id)
            if entries is None:
                raise NotFoundError(f"no drop {drop_id} here (see `mesh drop ls`)")
            self._tallies[drop_id] = _tally(entries)
        return self._tallies[drop_id]

    def tallies(self) -> list[Tally]:
        return [self.tally(d.id) for d in self.drops()]

    def own_ops(self, drop_id: str, node: str) -> list[Op]:
        entries = self._drops.get(drop_id)
        return list(entries.ops.get(node, ())) if entries else []

    def next_seq(self, drop_id: str, node: str) -> int:
        """1 + the greatest seq of the node's ops, and after any reclaim of it."""
        entries = self._drops[drop_id]
        seqs = [op.seq for op in entries.ops.get(node, ())] + [r.upto for r in entries.reclaims.get(node, ())]
        return max(seqs, default=0) + 1


# --- admission (the merge rule in the module notes) ---------------------------------------------


def _order_key(op: Op) -> tuple:
    return (op.seq, _OP_RANK[op.op], op.id)


def _statuses(ops: list[Op]) -> dict[str, tuple[Op, str]]:
    """order code -> (its first reservation, its status): the first cancel or paid after it wins."""
    found: dict[str, tuple[Op, str]] = {}
    for op in ops:
        if op.op == "reserve" and op.ref not in found:
            found[op.ref] = (op, RESERVED)
        elif op.op in ("cancel", "paid") and op.ref in found:
            reservation, status = found[op.ref]
            if status == RESERVED and op.seq > reservation.seq:
                found[op.ref] = (reservation, CANCELLED if op.op == "cancel" else PAID)
    return found


@dataclass
class _NodeRun:
    """What admission made of one node's ops at one credit."""

    used: int = 0  # live reservations + transfers + reclaims admitted
    admitted: set[str] = field(default_factory=set)  # reservation op ids admitted
    gives: dict[str, int] = field(default_factory=dict)  # give op id -> units admitted
    reclaimed: dict[str, int] = field(default_factory=dict)  # reclaim id -> units admitted


def _segments(ops: list[Op], reclaims: list[Reclaim]) -> list[tuple[list[Op], Reclaim | None]]:
    """The node's ops cut by the reclaims of it, each segment with the reclaim that ends it."""
    cuts = sorted(reclaims, key=lambda r: (r.upto, r.id))
    segments, start = [], 0
    for reclaim in cuts:
        end = start
        while end < len(ops) and ops[end].seq <= reclaim.upto:
            end += 1
        segments.append((ops[start:end], reclaim))
        start = end
    segments.append((ops[start:], None))
    return segments


def _run_node(ops: list[Op], reclaims: list[Reclaim], statuses: dict[str, tuple[Op, str]],
              credit: int) -> _NodeRun:
    run, stopped = _NodeRun(), False
    for segment, reclaim in _segments(ops, reclaims):
        for op in segment:
            if op.op != "reserve" or stopped or statuses[op.ref][0].id != op.id:
                continue
            if statuses[op.ref][1] == CANCELLED:
                continue  # consumes nothing
            if run.used + 1 > credit:
                stopped = True
                continue
            run.used += 1
            run.admitted.add(op.id)
        for op in segment:
            if op.op == "give":
                units = max(0, min(op.n, credit - run.used))
                run.gives[op.id] = units
                run.used += units
        if reclaim is not None:
            units = max(0, min(reclaim.amount, credit - run.used))
            run.reclaimed[reclaim.id] = units
            run.used += units
    return run


def _tally(entries: _Entries) -> Tally:
    drop = entries.drop
    initial = dict(drop.alloc)
    initial[drop.publisher] = initial.get(drop.publisher, 0) + drop.stock - sum(drop.alloc.values())
    ops = {node: sorted(found, key=_order_key) for node, found in entries.ops.items()}
    statuses = {node: _statuses(found) for node, found in ops.items()}
    nodes = set(initial) | set(ops) | set(entries.reclaims)
    gives = {op.id: op for found in ops.values() for op in found if op.op == "give"}
    reclaims = {r.id: r for found in entries.reclaims.values() for r in found}
    nodes |= {op.to for op in gives.values()} | {r.to for r in reclaims.values()}
    incoming: dict[str, int] = {}
    runs: dict[str, _NodeRun] = {}
    for _ in range(ITERATIONS_MAX):
        runs = {n: _run_node(ops.get(n, []), entries.reclaims.get(n, []), statuses.get(n, {}),
                             initial.get(n, 0) + incoming.get(n, 0)) for n in nodes}
        received: dict[str, int] = {}
        for run in runs.values():
            for give_id, units in run.gives.items():
                received[gives[give_id].to] = received.get(gives[give_id].to, 0) + units
            for reclaim_id, units in run.reclaimed.items():
                received[reclaims[reclaim_id].to] = received.get(reclaims[reclaim_id].to, 0) + units
        if received == incoming:
            break
        incoming = received  # monotone: a round never admits less than the one before
    return _assemble(entries, initial, incoming, ops, statuses, runs, gives)


def _assemble(entries: _Entries, initial: dict[str, int], incoming: dict[str, int], ops: dict[str, list[Op]],
              statuses: dict[str, dict[str, tuple[Op, str]]], runs: dict[str, _NodeRun],
              gives: dict[str, Op]) -> Tally:
    nodes: dict[str, NodeTally] = {}
    orders: dict[tuple[str, str], Order] = {}
    received: dict[str, int] = {}
    for node, run in sorted(runs.items()):
        tally = NodeTally(credit=initial.get(node, 0) + incoming.get(node, 0))
        tally.given = sum(run.gives.values()) + sum(run.reclaimed.values())
        received.update(run.gives)
        for code, (op, status) in statuses.get(node, {}).items():
            if status != CANCELLED and op.id not in run.admitted:
                status = VOID
            orders[(node, code)] = Order(code, node, op.seq, op.expires or 0.0, op.at, status)
            if status == PAID:
                tally.sold += 1
            elif status == RESERVED:
                tally.reserved += 1
            elif status == VOID:
                tally.void += 1
        nodes[node] = tally
    asks = [op for found in ops.values() for op in found if op.op == "ask"]
    admitted_gives = [g for g in gives.values() if received.get(g.id, 0) > 0]
    reclaims = [r for found in entries.reclaims.values() for r in found]
    return Tally(entries.drop, entries.closed, nodes, orders, sorted(asks, key=lambda a: (a.at, a.id)),
                 admitted_gives, reclaims, received)


# --- local writes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """Who writes: this node's key and the mesh it belongs to."""

    authority_public_key: bytes  # the mesh authority's raw public key
    key: Ed25519PrivateKey  # this node's key
    chain: bytes = b""  # its credential chain (organizer statements only)

    @property
    def node_id(self) -> str:
        from mesh.ids import node_id_from_public_key

        return node_id_from_public_key(public_key_bytes(self.key))


def put_statement(state: MeshState, made: tuple[str, bytes], drop_id: str | None = None) -> str:
    """Store an organizer statement made above (a drop, or a close or reclaim of `drop_id`)."""
    statement_id_, blob = made
    key = f"d/{statement_id_}" if drop_id is None else _SEP.join(("x", drop_id, statement_id_))
    state.put_drop_entry(key, blob)
    return statement_id_


def _open_tally(state: MeshState, signer: Signer, drop_id: str, now: float) -> tuple[DropBook, Tally]:
    book = DropBook(state, signer.authority_public_key, now)
    return book, book.tally(check_drop_id(drop_id))


def _require_open(tally: Tally, doing: str) -> None:
    if tally.closed:
        raise UsageError(f"drop {tally.drop.id} ({tally.drop.name}) is closed: cannot {doing}")


def expire_own(state: MeshState, signer: Signer, drop_id: str, now: float) -> list[str]:
    """Cancel this node's unpaid reservations of `drop_id` that expired; their codes."""
    book, tally = _open_tally(state, signer, drop_id, now)
    node = signer.node_id
    expired = [o.code for (n, _), o in sorted(tally.orders.items())
               if n == node and o.status == RESERVED and o.expires < now]
    seq = book.next_seq(drop_id, node)
    for i, code in enumerate(expired):
        _sign_op(state, signer.authority_public_key, signer.key, drop_id, seq + i, "cancel", now, ref=code)
    return expired


def reserve(state: MeshState, signer: Signer, drop_id: str, now: float, rng: random.Random,
            ttl_s: float = RESERVATION_TTL_S_DEFAULT) -> Order:
    """Reserve one unit from this node's allowance under a fresh order code (expired reservations of
    this node are cancelled first). UsageError if the drop is closed or this node has none left."""
    if not (isinstance(ttl_s, (int, float)) and 0 < ttl_s <= RESERVATION_TTL_S_MAX):
        raise UsageError(f"a reservation holds for 0 to {RESERVATION_TTL_S_MAX:g} seconds")
    expire_own(state, signer, drop_id, now)
    book, tally = _open_tally(state, signer, drop_id, now)
    _require_open(tally, "reserve")
    node = signer.node_id
    mine = tally.node(node)
    if mine.left < 1:
        where = "" if not tally.left else f"; about {tally.left} left elsewhere: ask with `mesh drop ask {drop_id}`"
        raise UsageError(f"drop {drop_id}: this box's allowance is used up ({mine.sold} sold, "
                         f"{mine.reserved} reserved){where}")
    taken = {code for (_, code) in tally.orders}
    code = new_order_code(rng)
    while code in taken:
        code = new_order_code(rng)
    op = _sign_op(state, signer.authority_public_key, signer.key, drop_id, book.next_seq(drop_id, node), "reserve",
                  now, ref=code, n=1, expires=float(now) + ttl_s)
    if mine.left - 1 <= ASK_LOW_WATER and not any(a.node == node for a in tally.open_asks()):
        _sign_op(state, signer.authority_public_key, signer.key, drop_id, op.seq + 1, "ask", now, n=ASK_AMOUNT_DEFAULT)
    return Order(code, node, op.seq, op.expires, op.at, RESERVED)


def _own_order(tally: Tally, node: str, code: str) -> Order:
    code = parse_order_code(code)
    order = tally.orders.get((node, code))
    if order is not None:
        return order
    elsewhere = tally.find_orders(code)
    if elsewhere:
        raise UsageError(f"order {code} was reserved at another box ({elsewhere[0].node[:10]}): settle it there")
    raise UsageError(f"no order {code} in drop {tally.drop.id}")


def _settle(state: MeshState, signer: Signer, drop_id: str, code: str, now: float, op: str) -> Order:
    book, tally = _open_tally(state, signer, drop_id, now)
    node = signer.node_id
    order = _own_order(tally, node, code)
    if order.status != RESERVED:
        raise UsageError(f"order {order.code} is {order.status}: nothing changed")
    _sign_op(state, signer.authority_public_key, signer.key, drop_id, book.next_seq(drop_id, node), op, now,
             ref=order.code)
    order.status = PAID if op == "paid" else CANCELLED
    return order


def mark_paid(state: MeshState, signer: Signer, drop_id: str, code: str, now: float) -> Order:
    """Mark this node's reservation `code` paid (sold). UsageError if unknown, not ours, or settled."""
    return _settle(state, signer, drop_id, code, now, "paid")


def cancel(state: MeshState, signer: Signer, drop_id: str, code: str, now: float) -> Order:
    """Cancel this node's reservation `code`: its unit returns to this node's allowance."""
    return _settle(state, signer, drop_id, code, now, "cancel")


def give(state: MeshState, signer: Signer, drop_id: str, to: str, amount: int, now: float,
         answering: str | None = None) -> Op:
    """Transfer `amount` units of this node's allowance to node `to` (signed by this node)."""
    book, tally = _open_tally(state, signer, drop_id, now)
    _require_open(tally, "move allowance")
    node = signer.node_id
    if not _node_ok(to) or to == node:
        raise UsageError(f"{to!r} is not another node's id")
    if not _count_ok(amount, 1, STOCK_MAX) or amount > tally.node(node).left:
        raise UsageError(f"this box has {tally.node(node).left} units left to give, not {amount}")
    return _sign_op(state, signer.authority_public_key, signer.key, drop_id, book.next_seq(drop_id, node), "give",
                    now, ref=answering, n=amount, to=to)


def ask(state: MeshState, signer: Signer, drop_id: str, amount: int, now: float) -> Op:
    """Ask the other boxes for `amount` more units (they answer from what they have left)."""
    book, tally = _open_tally(state, signer, drop_id, now)
    _require_open(tally, "ask for more")
    if not _count_ok(amount, 1, STOCK_MAX):
        raise UsageError("ask for a whole number of units")
    node = signer.node_id
    return _sign_op(state, signer.authority_public_key, signer.key, drop_id, book.next_seq(drop_id, node), "ask",
                    now, n=amount)


def answer_asks(state: MeshState, signer: Signer, now: float) -> list[Op]:
    """Answer other nodes' open requests from this node's spare allowance (at most half of what it
    has left each, and only while it has ANSWER_SPARE_MIN left); the transfers made."""
    book = DropBook(state, signer.authority_public_key, now)
    node = signer.node_id
    made: list[Op] = []
    for drop in book.drops():
        tally = book.tally(drop.id)
        if tally.closed:
            continue
        left, seq = tally.node(node).left, book.next_seq(drop.id, node)
        for request in tally.open_asks():
            if request.node == node or left < ANSWER_SPARE_MIN:
                continue
            amount = min(request.n, left // 2)
            made.append(_sign_op(state, signer.authority_public_key, signer.key, drop.id, seq, "give", now,
                                 ref=request.id, n=amount, to=request.node))
            left, seq = left - amount, seq + 1
    return made


def close(state: MeshState, signer: Signer, drop_id: str, now: float) -> Tally:
    """Close a drop (organizers): no new reservations or transfers once seen; the tally as of now."""
    _, tally = _open_tally(state, signer, drop_id, now)
    if tally.closed:
        raise UsageError(f"drop {drop_id} is already closed")
    made = create_close(signer.authority_public_key, signer.key, signer.chain, drop_id, now)
    put_statement(state, made, drop_id)
    _, tally = _open_tally(state, signer, drop_id, now)
    return tally


def reclaim(state: MeshState, signer: Signer, drop_id: str, node: str, now: float) -> Reclaim:
    """Take what node `node` has left of `drop_id` as this state shows it (organizers; for a box
    that died holding allowance). Its later sales count only against units it gets afterwards."""
    book, tally = _open_tally(state, signer, drop_id, now)
    if not _node_ok(node) or node == signer.node_id:
        raise UsageError(f"{node!r} is not another node's id")
    amount = tally.node(node).left
    upto = book.next_seq(drop_id, node) - 1
    made = create_reclaim(signer.authority_public_key, signer.key, signer.chain, drop_id, node, upto, amount, now)
    put_statement(state, made, drop_id)
    return Reclaim(made[0], node, upto, amount, signer.node_id, now)


class DropWatch:
    """What changed in the drops since the last look, as event rows for a node's log and outbox:
    `drop.order` per new or settled order, `drop.entry_refused` per entry that does not verify
    (a forged transfer, another mesh's statement, junk). Remembers at most VERIFY_CACHE_MAX keys.
    After each call `asks_from_others` says whether a drop it touched has open requests for more
    from other nodes that `node_id` may answer (it holds ANSWER_SPARE_MIN or more), unless those
    requests and what it holds are as when it last said so (that answer is decided already)."""

    def __init__(self, node_id: str = "") -> None:
        self._node_id = node_id
        self._seen: set[str] = set()
        self._statuses: dict[tuple[str, str, str], str] = {}  # (drop, node, code) -> status last told
        self._asks_told: dict[str, tuple[frozenset[str], int]] = {}  # drop -> (open asks, units held) last told
        self.asks_from_others = False

    def changed(self, state: MeshState, authority_public_key: bytes, now: float) -> list[tuple[str, dict]] | None:
        """Event rows for the entries new since the last call; None if there are none."""
        entries = state.drop_entries()
        fresh = [k for k in entries if k not in self._seen]
        self.asks_from_others = False
        if not fresh:
            return None
        if len(self._seen) + len(fresh) > VERIFY_CACHE_MAX:
            self._seen.clear()
        self._seen.update(fresh)
        book = DropBook(state, authority_public_key, now)
        rows = [("drop.entry_refused", {"key": key[:80], "reason": "does not verify"})
                for key in fresh if not _entry_counted(book, key, entries[key])]
        for key in {k.split(_SEP)[1] for k in fresh if k.count(_SEP) >= 1}:
            if book.drop(key) is not None:
                tally = book.tally(key)
                rows += self._order_rows(tally)
                self.asks_from_others |= self._worth_answering(tally)
        return rows

    def _worth_answering(self, tally: Tally) -> bool:
        asks = frozenset(a.id for a in tally.open_asks() if a.node != self._node_id)
        left = tally.node(self._node_id).left
        if tally.closed or not asks or left < ANSWER_SPARE_MIN or self._asks_told.get(tally.drop.id) == (asks, left):
            return False
        self._asks_told[tally.drop.id] = (asks, left)
        return True

    def _order_rows(self, tally: Tally) -> list[tuple[str, dict]]:
        rows = []
        for (node, code), order in sorted(tally.orders.items()):
            key = (tally.drop.id, node, code)
            if self._statuses.get(key) != order.status:
                self._statuses[key] = order.status
                rows.append(("drop.order", {"drop": tally.drop.id, "order": code, "status": order.status,
                                            "node": node, "expires": order.expires, "tag": tally.drop.tag}))
        return rows


def _entry_counted(book: DropBook, key: str, blob: bytes) -> bool:
    """Whether the entry under `key` is one the book verified (and counts)."""
    parts = key.split(_SEP)
    if parts[0] == "d" and len(parts) == 2:
        return book.drop(parts[1]) is not None
    if len(parts) < 3 or book.drop(parts[1]) is None:
        return False
    if parts[0] == "x":
        opened = _open_statement(bytes(blob), book.authority)
        return opened is not None and book.verified_statement(blob, opened[1]["kind"]) is not None
    return parts[0] == "o" and _open_op(bytes(blob), key, book.mesh_id) is not None


def sales_per_tag(state: MeshState, authority_public_key: bytes, now: float) -> dict[str, int]:
    """Units sold per tag over every drop (aggregated, like views)."""
    totals: dict[str, int] = {}
    for tally in DropBook(state, authority_public_key, now).tallies():
        if tally.drop.tag:
            totals[tally.drop.tag] = totals.get(tally.drop.tag, 0) + tally.sold
    return dict(sorted(totals.items()))


def resolve_drop(book: DropBook, text: str) -> Drop:
    """The drop `text` names: its id, a unique id prefix (4+ characters) or its exact name."""
    text = text.strip()
    drops = book.drops()
    found = [d for d in drops if d.id == text.lower()]
    found = found or [d for d in drops if len(text) >= 4 and d.id.startswith(text.lower())]
    found = found or [d for d in drops if d.name == text]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFoundError(f"no drop {text!r} here (see `mesh drop ls`)")
    raise UsageError(f"{text!r} names {len(found)} drops: give the id")


__all__: Iterable[str] = [
    "DropBook", "Drop", "Order", "Tally", "Signer", "create_drop", "put_statement", "reserve", "mark_paid",
    "cancel", "give", "ask", "answer_asks", "close", "reclaim", "parse_order_code", "sales_per_tag",
]
