"""Wire messages: frozen dataclasses, a declarative schema per field, and their CBOR codec.

A message travels as one canonical CBOR array `[type_code, field1, field2, ...]`; a nested record
(such as `PeerAddress`) is an array of its fields. Adding a message is one dataclass:

    @message(type_code=8)
    @dataclass(frozen=True)
    class Want(Message):
        cids: tuple[str, ...] = wire(TupleOf(Text(bytes_max=100), items_max=64))  # what we want

Decoding trusts nothing. Before cbor2 sees a byte, `_scan_cbor` walks the item heads without
recursion and admits only what our encoder can produce: integers, byte and text strings,
definite-length arrays, false/true/null, each head in its shortest form, nesting at most
`CBOR_DEPTH_MAX`, at most `CBOR_ITEMS_MAX` items, no trailing bytes. So no tag (datetime, regex,
bignum, shared references...), map, float or indefinite length ever reaches cbor2, and an accepted
body re-encodes to the same bytes. Then every field is checked against its schema. Whatever goes
wrong, `decode_message` raises only `RemoteProtocolError`, with a reason naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import cbor2

from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.wire.frames import FRAME_BYTES_MAX, FRAME_HEADER_BYTES, FrameDecoder, encode_frame

PROTOCOL_VERSION = 1

CBOR_DEPTH_MAX = 8
CBOR_ITEMS_MAX = 8192

FEATURES_MAX = 32
FEATURE_BYTES_MAX = 64
CLOSE_REASON_BYTES_MAX = 1024
REVOCATIONS_MAX = 1024
REVOCATION_BYTES_MAX = 10 * 1024
PEER_ADDRESSES_MAX = 256
HOST_BYTES_MAX = 255
STATE_SYNC_BYTES_MAX = 1024 * 1024
UINT64_MAX = 2**64 - 1

BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
FEATURE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-_./"
HOST_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_:[]%"

_SPEC_KEY = "mesh.wire.spec"


# --- field schemas ----------------------------------------------------------------------------


class Spec:
    """Schema of one field: checks a decoded CBOR value and turns a Python value into one."""

    def from_wire(self, raw: object, where: str) -> Any:
        """The Python value for `raw`, or RemoteProtocolError naming `where`."""
        raise NotImplementedError

    def to_wire(self, value: object, where: str) -> Any:
        """The CBOR-ready value for `value`, or LocalProtocolError naming `where`."""
        raise NotImplementedError


class _Leaf(Spec):
    """A scalar whose wire value is its Python value; subclasses say what is wrong with it."""

    def problem(self, value: object) -> str | None:
        """Why `value` breaks this schema, or None."""
        raise NotImplementedError

    def from_wire(self, raw: object, where: str) -> Any:
        problem = self.problem(raw)
        if problem is not None:
            raise RemoteProtocolError(f"{where}: {problem}")
        return raw

    def to_wire(self, value: object, where: str) -> Any:
        problem = self.problem(value)
        if problem is not None:
            raise LocalProtocolError(f"{where}: {problem}")
        return value


@dataclass(frozen=True)
class Int(_Leaf):
    """An integer in `min..max` (booleans are not integers here)."""

    min: int  # smallest allowed value
    max: int  # largest allowed value

    def problem(self, value: object) -> str | None:
        if type(value) is not int:
            return f"expected an integer, got {_kind(value)}"
        if not self.min <= value <= self.max:
            return f"{value} is outside {self.min}..{self.max}"
        return None


@dataclass(frozen=True)
class Text(_Leaf):
    """A text string of `bytes_min..bytes_max` UTF-8 bytes, printable or from `alphabet`."""

    bytes_max: int  # longest allowed UTF-8 encoding
    bytes_min: int = 0  # shortest allowed UTF-8 encoding
    alphabet: str | None = None  # the only characters allowed; None allows any printable ones

    def problem(self, value: object) -> str | None:
        if type(value) is not str:
            return f"expected text, got {_kind(value)}"
        if len(value) > self.bytes_max:  # cheap bound before encoding: a char is >= 1 byte
            return f"text longer than {self.bytes_max} bytes"
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "text is not valid Unicode"
        if not self.bytes_min <= size <= self.bytes_max:
            return f"text of {size} bytes, allowed {self.bytes_min}..{self.bytes_max}"
        return self._character_problem(value)

    def _character_problem(self, value: str) -> str | None:
        if self.alphabet is None:
            return None if value.isprintable() else "text has unprintable characters"
        bad = set(value).difference(self.alphabet)
        return f"characters not allowed: {''.join(sorted(bad))!r}" if bad else None


@dataclass(frozen=True)
class Base32Id(_Leaf):
    """An id in unpadded lower-case base32 naming exactly `raw_bytes` bytes, in canonical form."""

    raw_bytes: int  # length of the identified bytes (32 for a node id, 16 for a mesh id)
    what: str  # the id's name in error messages

    @property
    def chars(self) -> int:
        """Length of the text form."""
        return -(-self.raw_bytes * 8 // 5)

    def problem(self, value: object) -> str | None:
        expected = f"not a {self.what} ({self.chars} lower-case base32 characters)"
        if type(value) is not str or len(value) != self.chars:
            return expected
        if not set(value).issubset(BASE32_ALPHABET):
            return expected
        spare_bits = self.chars * 5 - self.raw_bytes * 8
        if BASE32_ALPHABET.index(value[-1]) & ((1 << spare_bits) - 1):
            return f"not a canonical {self.what} (non-zero trailing bits)"
        return None


@dataclass(frozen=True)
class Bytes(_Leaf):
    """A byte string of `bytes_min..bytes_max` bytes."""

    bytes_max: int  # longest allowed
    bytes_min: int = 0  # shortest allowed

    def to_wire(self, value: object, where: str) -> Any:
        if type(value) is memoryview:  # a received piece (see `_decode_chunk_data`), sent on
            value = bytes(value)
        return super().to_wire(value, where)

    def problem(self, value: object) -> str | None:
        if type(value) is not bytes:
            return f"expected bytes, got {_kind(value)}"
        if not self.bytes_min <= len(value) <= self.bytes_max:
            return f"{len(value)} bytes, allowed {self.bytes_min}..{self.bytes_max}"
        return None


@dataclass(frozen=True)
class Nullable(Spec):
    """Either None (CBOR null) or a value of `inner`."""

    inner: Spec  # schema of the value when present

    def from_wire(self, raw: object, where: str) -> Any:
        return None if raw is None else self.inner.from_wire(raw, where)

    def to_wire(self, value: object, where: str) -> Any:
        return None if value is None else self.inner.to_wire(value, where)


@dataclass(frozen=True)
class TupleOf(Spec):
    """A tuple of up to `items_max` values of `item` (a CBOR array)."""

    item: Spec  # schema of each element
    items_max: int  # most elements allowed

    def from_wire(self, raw: object, where: str) -> Any:
        if type(raw) is not list:
            raise RemoteProtocolError(f"{where}: expected an array, got {_kind(raw)}")
        if len(raw) > self.items_max:
            raise RemoteProtocolError(f"{where}: {len(raw)} items, at most {self.items_max}")
        return tuple(self.item.from_wire(x, f"{where}[{i}]") for i, x in enumerate(raw))

    def to_wire(self, value: object, where: str) -> Any:
        if type(value) is not tuple:
            raise LocalProtocolError(f"{where}: expected a tuple, got {_kind(value)}")
        if len(value) > self.items_max:
            raise LocalProtocolError(f"{where}: {len(value)} items, at most {self.items_max}")
        return [self.item.to_wire(x, f"{where}[{i}]") for i, x in enumerate(value)]


@dataclass(frozen=True)
class Nested(Spec):
    """A record: an instance of the frozen dataclass `cls`, on the wire an array of its fields."""

    cls: type  # the record's dataclass; every field declared with `wire(...)`

    def __post_init__(self) -> None:
        record_fields(self.cls)  # fail at import time, not on first use

    def from_wire(self, raw: object, where: str) -> Any:
        if type(raw) is not list:
            raise RemoteProtocolError(f"{where}: expected an array, got {_kind(raw)}")
        return _record_from_wire(self.cls, raw, where)

    def to_wire(self, value: object, where: str) -> Any:
        if type(value) is not self.cls:
            raise LocalProtocolError(f"{where}: expected {self.cls.__name__}, got {_kind(value)}")
        return _record_to_wire(value, where)


def wire(spec: Spec) -> Any:
    """Declare a dataclass field's wire schema: `nonce: int = wire(Int(0, UINT64_MAX))`."""
    return dataclasses.field(metadata={_SPEC_KEY: spec})


_RECORD_FIELDS: dict[type, tuple[tuple[str, Spec], ...]] = {}


def record_fields(cls: type) -> tuple[tuple[str, Spec], ...]:
    """`(name, spec)` for each field of a record or message class, in wire order."""
    cached = _RECORD_FIELDS.get(cls)
    if cached is None:
        cached = _RECORD_FIELDS[cls] = _collect_fields(cls)
    return cached


def _collect_fields(cls: type) -> tuple[tuple[str, Spec], ...]:
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise LocalProtocolError(f"{cls.__name__} must be a frozen dataclass")
    specs = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(_SPEC_KEY)
        if not isinstance(spec, Spec) or not field.init:
            raise LocalProtocolError(f"{cls.__name__}.{field.name} needs a wire(...) schema")
        specs.append((field.name, spec))
    return tuple(specs)


def _record_from_wire(cls: type, items: list, where: str) -> Any:
    specs = record_fields(cls)
    if len(items) != len(specs):
        raise RemoteProtocolError(f"{where}: expected {len(specs)} fields, got {len(items)}")
    values = {
        name: spec.from_wire(raw, f"{where}.{name}") for (name, spec), raw in zip(specs, items)
    }
    return cls(**values)


def _record_to_wire(record: object, where: str) -> list:
    specs = record_fields(type(record))
    return [spec.to_wire(getattr(record, name), f"{where}.{name}") for name, spec in specs]


_KIND_NAMES = {
    int: "an integer", bool: "a boolean", type(None): "null",
    str: "text", bytes: "bytes", list: "an array",
}


def _kind(value: object) -> str:
    """A value's type in words, for error reasons."""
    return _KIND_NAMES.get(type(value), type(value).__name__)


# --- the registry -----------------------------------------------------------------------------


class Message:
    """Base of every wire message; each subclass is a frozen dataclass registered by `message`."""

    __slots__ = ()


M = TypeVar("M", bound=type[Message])

_MESSAGE_TYPES: dict[int, type[Message]] = {}
_TYPE_CODES: dict[type, int] = {}
MESSAGE_TYPES = MappingProxyType(_MESSAGE_TYPES)  # type code -> message class, read-only
TYPE_CODE_MAX = 255


def message(type_code: int) -> Callable[[M], M]:
    """Class decorator registering a frozen-dataclass `Message` under `type_code`."""

    def register(cls: M) -> M:
        if not issubclass(cls, Message):
            raise LocalProtocolError(f"{cls.__name__} must derive from Message")
        if not 0 <= type_code <= TYPE_CODE_MAX or type_code in _MESSAGE_TYPES:
            raise LocalProtocolError(f"type code {type_code} of {cls.__name__} is taken or bad")
        record_fields(cls)
        _MESSAGE_TYPES[type_code] = cls
        _TYPE_CODES[cls] = type_code
        return cls

    return register


def type_code_of(cls: type[Message]) -> int:
    """The type code a message class travels under."""
    return _TYPE_CODES[cls]


# --- messages ---------------------------------------------------------------------------------

NODE_ID = Base32Id(raw_bytes=32, what="node id")
MESH_ID = Base32Id(raw_bytes=16, what="mesh id")
PORT = Int(1, 65535)


@message(type_code=1)
@dataclass(frozen=True)
class Hello(Message):
    """First message on every session: who the sender is and what it speaks."""

    protocol_version: int = wire(Int(0, 0xFFFF))  # wire protocol version the sender speaks
    node_id: str = wire(NODE_ID)  # the sender's node id
    mesh_id: str = wire(MESH_ID)  # the mesh the sender wants this session to be about
    features: tuple[str, ...] = wire(  # optional capabilities the sender supports
        TupleOf(Text(FEATURE_BYTES_MAX, 1, FEATURE_ALPHABET), items_max=FEATURES_MAX)
    )
    listen_port: int | None = wire(Nullable(PORT))  # TCP port the sender accepts sessions on


@message(type_code=2)
@dataclass(frozen=True)
class Ping(Message):
    """Liveness probe; the peer answers with a Pong carrying the same nonce."""

    nonce: int = wire(Int(0, UINT64_MAX))  # chosen by the sender, echoed back


@message(type_code=3)
@dataclass(frozen=True)
class Pong(Message):
    """Answer to a Ping."""

    nonce: int = wire(Int(0, UINT64_MAX))  # the nonce of the Ping being answered


@message(type_code=4)
@dataclass(frozen=True)
class Close(Message):
    """Polite end of a session; the sender closes the connection after it."""

    reason: str = wire(Text(CLOSE_REASON_BYTES_MAX))  # one human-readable line for the logs


@message(type_code=5)
@dataclass(frozen=True)
class Revocations(Message):
    """Membership revocations the sender knows of, as signed blobs the state layer verifies."""

    records: tuple[bytes, ...] = wire(  # opaque signed revocation records
        TupleOf(Bytes(REVOCATION_BYTES_MAX, 1), items_max=REVOCATIONS_MAX)
    )


@dataclass(frozen=True)
class PeerAddress:
    """Where one peer was reachable, as seen by the sender."""

    node_id: str = wire(NODE_ID)  # the peer's node id
    host: str = wire(Text(HOST_BYTES_MAX, 1, HOST_ALPHABET))  # IP literal or host name
    port: int = wire(PORT)  # TCP port the peer listens on


@message(type_code=6)
@dataclass(frozen=True)
class PeerAddresses(Message):
    """Peer exchange: addresses of other members, so meshes work where multicast does not."""

    peers: tuple[PeerAddress, ...] = wire(  # known peers, most recently seen first
        TupleOf(Nested(PeerAddress), items_max=PEER_ADDRESSES_MAX)
    )


@message(type_code=7)
@dataclass(frozen=True)
class StateSync(Message):
    """One Automerge sync message for the mesh's shared-state document."""

    message: bytes = wire(Bytes(STATE_SYNC_BYTES_MAX, 1))  # automerge sync message bytes


@message(type_code=8)
@dataclass(frozen=True)
class StateSyncPart(Message):
    """A leading piece of a state sync message too large for one frame; a StateSync ends it."""

    message: bytes = wire(Bytes(STATE_SYNC_BYTES_MAX, 1))  # the next piece, in order


# --- swarming: have/want and chunk transfer ------------------------------------------------------

CID_BYTES_MIN = 36  # binary CIDv1 with a 32-byte digest
CID_BYTES_MAX = 64
CID = Bytes(CID_BYTES_MAX, CID_BYTES_MIN)
RELEASE_CHUNKS_MAX = 1 << 22  # chunks one release may list (bounds every bitfield)
HAVE_INDICES_MAX = 4096
CHUNK_PIECE_BYTES_MAX = 1024 * 1024
CHUNK_BYTES_MAX = 16 * 1024 * 1024


@message(type_code=9)
@dataclass(frozen=True)
class Have(Message):
    """Which chunks of a root (a release, or one file being fetched) the sender holds: a bitfield
    over the root's chunk list."""

    root: bytes = wire(CID)  # the root's CID (binary): a release's DirManifest, a FileManifest, a raw chunk
    count: int = wire(Int(0, RELEASE_CHUNKS_MAX))  # chunks in the list (0: list not known yet)
    bits: bytes = wire(Bytes(RELEASE_CHUNKS_MAX // 8))  # bit i (MSB first) = holds chunk i


@message(type_code=10)
@dataclass(frozen=True)
class HaveUpdate(Message):
    """Chunks of a root the sender verified and stored since its last Have or HaveUpdate."""

    root: bytes = wire(CID)  # the root's CID (binary)
    indices: tuple[int, ...] = wire(TupleOf(Int(0, RELEASE_CHUNKS_MAX - 1), items_max=HAVE_INDICES_MAX))


@message(type_code=11)
@dataclass(frozen=True)
class ChunkRequest(Message):
    """Please send this chunk."""

    cid: bytes = wire(CID)  # binary CID of the chunk (or manifest) wanted


@message(type_code=12)
@dataclass(frozen=True)
class ChunkCancel(Message):
    """Never mind: another peer delivered it."""

    cid: bytes = wire(CID)  # binary CID of a chunk requested earlier


@message(type_code=13)
@dataclass(frozen=True)
class ChunkData(Message):
    """A piece of a requested chunk; pieces arrive in order, the last one completes it."""

    cid: bytes = wire(CID)  # binary CID of the chunk
    offset: int = wire(Int(0, CHUNK_BYTES_MAX))  # where this piece starts
    total: int = wire(Int(0, CHUNK_BYTES_MAX))  # size of the whole chunk
    data: bytes = wire(Bytes(CHUNK_PIECE_BYTES_MAX))  # the piece


@message(type_code=14)
@dataclass(frozen=True)
class ChunkMissing(Message):
    """The sender cannot serve this chunk (does not hold it, or may not share it)."""

    cid: bytes = wire(CID)  # binary CID that was requested


@message(type_code=19)
@dataclass(frozen=True)
class ChunkBusy(Message):
    """Not now: the sender (which holds the whole release) is sending this chunk to another peer,
    which will announce it. The request is dropped and no byte of it was sent: fetch the chunk
    from that peer, or ask again later. Sent only to peers whose Hello lists "chunk-busy/1"."""

    cid: bytes = wire(CID)  # binary CID of a chunk we requested


HAVE_OBJECTS_MAX = 1024  # roots in one HaveObjects message


@message(type_code=20)
@dataclass(frozen=True)
class HaveObjects(Message):
    """Files the sender holds whole (media originals, thumbnails, preview clips), so peers know
    whom to fetch them from. Sent only to peers whose Hello lists "media/1"."""

    roots: tuple[bytes, ...] = wire(TupleOf(CID, items_max=HAVE_OBJECTS_MAX))  # binary CIDs of files


# --- state sync fast path -------------------------------------------------------------------------

HEADS_MAX = 1024
CHANGE_HASH = Bytes(32, 32)


@message(type_code=15)
@dataclass(frozen=True)
class StateHeads(Message):
    """The sender's document heads; a peer that knows them all answers with the changes since."""

    heads: tuple[bytes, ...] = wire(TupleOf(CHANGE_HASH, items_max=HEADS_MAX))  # change hashes


@message(type_code=16)
@dataclass(frozen=True)
class StateChanges(Message):
    """The last piece of a batch of Automerge changes, and the sender's heads after them."""

    data: bytes = wire(Bytes(STATE_SYNC_BYTES_MAX))  # concatenated change chunks (this piece)
    heads: tuple[bytes, ...] = wire(TupleOf(CHANGE_HASH, items_max=HEADS_MAX))  # sender's heads


@message(type_code=17)
@dataclass(frozen=True)
class StateChangesPart(Message):
    """A leading piece of a batch of changes too large for one frame; StateChanges ends it."""

    data: bytes = wire(Bytes(STATE_SYNC_BYTES_MAX, 1))  # the next piece, in order


# --- signals ------------------------------------------------------------------------------------

HEALTH_BYTES_MAX = 16 * 1024


@message(type_code=18)
@dataclass(frozen=True)
class Health(Message):
    """The sender's latest health report (a CBOR map); ephemeral, peers keep only the latest."""

    report: bytes = wire(Bytes(HEALTH_BYTES_MAX, 1))  # canonical CBOR of the report map


LIVE_WINDOW_BYTES_MAX = 8 * 1024


@message(type_code=48)
@dataclass(frozen=True)
class LiveWindow(Message):
    """A live stream's latest window, signed by its ingesting node (mesh.core.live); ephemeral,
    forwarded once, peers keep only the latest per stream. Sent only to peers listing "live/1"."""

    blob: bytes = wire(Bytes(LIVE_WINDOW_BYTES_MAX, 1))  # CBOR [signed body, Ed25519 signature]


# --- the event's TLS key (mesh.core.tls) ---------------------------------------------------------

TLS_FINGERPRINT = Bytes(32, 32)  # SHA-256 of the certificate's DER
TLS_KEY_BYTES_MAX = 16 * 1024


@message(type_code=32)
@dataclass(frozen=True)
class TlsKeyRequest(Message):
    """Please send the private key of the event's certificate with this fingerprint (the sender
    serves HTTPS and lacks it). Sent only to peers whose Hello lists "tls-key/1"."""

    fingerprint: bytes = wire(TLS_FINGERPRINT)  # the certificate in force, as the sender sees it


@message(type_code=33)
@dataclass(frozen=True)
class TlsKey(Message):
    """The private key of the event's certificate, sent over the secure channel only to a member
    the handshake proved an edge, hub or organizer, in answer to its TlsKeyRequest."""

    fingerprint: bytes = wire(TLS_FINGERPRINT)  # the certificate it belongs to
    key: bytes = wire(Bytes(TLS_KEY_BYTES_MAX, 1))  # PKCS#8 DER, unencrypted (the channel is)


# --- state bootstrap from a snapshot (mesh.core.node) ---------------------------------------------

STATE_SNAPSHOT_BYTES_MAX = 2**32 - 1  # what the field admits; a receiver bounds it far lower


@message(type_code=34)
@dataclass(frozen=True)
class StateSnapshotBegin(Message):
    """A saved copy of the sender's whole document follows in StateSnapshotParts, for a peer far
    behind. Sent only to peers whose Hello lists "state-snapshot/1"."""

    total_bytes: int = wire(Int(1, STATE_SNAPSHOT_BYTES_MAX))  # the snapshot's size: all parts together
    heads: tuple[bytes, ...] = wire(TupleOf(CHANGE_HASH, items_max=HEADS_MAX))  # the snapshot's heads


@message(type_code=35)
@dataclass(frozen=True)
class StateSnapshotPart(Message):
    """The next piece of the snapshot a StateSnapshotBegin announced; the piece that brings the
    total to `total_bytes` completes it."""

    data: bytes = wire(Bytes(STATE_SYNC_BYTES_MAX, 1))  # the next piece, in order


@message(type_code=36)
@dataclass(frozen=True)
class StateSize(Message):
    """How many changes the sender's document holds, sent after its StateHeads: a peer that holds
    far more may answer with a snapshot even when the heads are unknown to it (a new node that
    recorded itself). Sent only to peers whose Hello lists "state-snapshot/1"."""

    changes: int = wire(Int(0, UINT64_MAX))  # changes in the sender's document


# --- codec ------------------------------------------------------------------------------------


def encode_message(msg: Message) -> bytes:
    """Canonical CBOR for `msg`; LocalProtocolError if it breaks its own schema."""
    cls = type(msg)
    if cls not in _TYPE_CODES:
        raise LocalProtocolError(f"{cls.__name__} is not a registered message")
    return cbor2.dumps([_TYPE_CODES[cls], *_record_to_wire(msg, cls.__name__)], canonical=True)


def decode_message(body: bytes) -> Message:
    """The message in one frame body; any defect raises RemoteProtocolError, nothing else."""
    try:
        return _decode(body)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # the trust boundary: a peer's bytes must never raise anything else
        raise RemoteProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc


def _decode(body: bytes | memoryview) -> Message:
    if body[:2] == _CHUNK_DATA_START:
        return _decode_chunk_data(body)
    _scan_cbor(body)
    try:
        raw = cbor2.loads(body, tag_hook=_refuse_tag)
    except Exception as exc:
        raise RemoteProtocolError(f"undecodable CBOR: {exc}") from exc
    if type(raw) is not list or not raw:
        raise RemoteProtocolError("a message must be a non-empty CBOR array")
    code = raw[0]
    if type(code) is not int:
        raise RemoteProtocolError(f"message type code must be an integer, got {_kind(code)}")
    cls = _MESSAGE_TYPES.get(code)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {code}")
    return _record_from_wire(cls, raw[1:], cls.__name__)


def _refuse_tag(decoder: object, tag: object) -> object:
    # Unreachable after _scan_cbor; kept so cbor2 alone would still refuse unknown tags.
    raise RemoteProtocolError("CBOR tags are not allowed")


# Shortest-form thresholds: additional info 24..27 carries an argument of 1, 2, 4, 8 bytes and is
# canonical only when the argument could not have fit in the shorter form.
_ARGUMENT_WIDTHS = {24: (1, 24), 25: (2, 0x100), 26: (4, 0x10000), 27: (8, 0x100000000)}
_SIMPLE_VALUES = {20, 21, 22}  # false, true, null


def _scan_cbor(body: bytes) -> None:
    """Check the item structure of `body` against our CBOR subset without building anything."""
    if not body:
        raise RemoteProtocolError("empty message")
    pos, items = 0, 0
    pending = [1]  # items still expected at each open array level (the bottom is the body)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        items += 1
        major, argument, pos = _read_head(body, pos)
        if major in (2, 3):
            pos += argument
            if pos > len(body):
                raise RemoteProtocolError("CBOR string runs past the end of the message")
        elif major == 4:
            if len(pending) > CBOR_DEPTH_MAX:
                raise RemoteProtocolError(f"CBOR nested deeper than {CBOR_DEPTH_MAX}")
            if argument > CBOR_ITEMS_MAX - items:
                raise RemoteProtocolError(f"more than {CBOR_ITEMS_MAX} CBOR items")
            pending.append(argument)
    if pos != len(body):
        raise RemoteProtocolError(f"{len(body) - pos} trailing bytes after the message")


def _read_head(body: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, next position) of the item head at `pos`; refuses our non-subset."""
    if pos >= len(body):
        raise RemoteProtocolError("message ends in the middle of a CBOR item")
    major, info = body[pos] >> 5, body[pos] & 0x1F
    if major == 5:
        raise RemoteProtocolError("CBOR maps are not used in messages")
    if major == 6:
        raise RemoteProtocolError("CBOR tags are not allowed")
    if major == 7:
        if info not in _SIMPLE_VALUES:
            raise RemoteProtocolError("CBOR simple values other than false/true/null are not used")
        return major, info, pos + 1
    if info < 24:
        return major, info, pos + 1
    if info not in _ARGUMENT_WIDTHS:
        raise RemoteProtocolError("indefinite-length or reserved CBOR item")
    width, smallest = _ARGUMENT_WIDTHS[info]
    end = pos + 1 + width
    if end > len(body):
        raise RemoteProtocolError("message ends in the middle of a CBOR item head")
    argument = int.from_bytes(body[pos + 1 : end], "big")
    if argument < smallest:
        raise RemoteProtocolError("CBOR item head is not in shortest form (non-canonical)")
    return major, argument, end


# --- frames of messages -----------------------------------------------------------------------


def encode(msg: Message, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """One complete frame carrying `msg`, ready to write to the stream."""
    return encode_frame(encode_message(msg), frame_bytes_max)


_CHUNK_DATA_CODE = type_code_of(ChunkData)
_CHUNK_DATA_ITEMS = 1 + len(record_fields(ChunkData))  # the type code, then the fields
_CBOR_UINT, _CBOR_BYTES, _CBOR_ARRAY = 0, 2, 4  # major types
CHUNK_DATA_PREFIX_BYTES = 1 + 1 + 2 + CID_BYTES_MAX  # array head, type code, CID head, CID
CHUNK_DATA_HEAD_BYTES_MAX = FRAME_HEADER_BYTES + CHUNK_DATA_PREFIX_BYTES + 9 + 9 + 9  # + offset, total, piece head


_CHUNK_DATA_START = bytes([_CBOR_ARRAY << 5 | _CHUNK_DATA_ITEMS, _CHUNK_DATA_CODE])  # both < 24: one byte each


def _decode_chunk_data(body: bytes | memoryview) -> ChunkData:
    """A ChunkData body, read without building its piece: `data` is a read-only view of `body`
    (a 1 MiB piece is not copied). Held to the same canonical subset and schema as every message."""
    body = memoryview(body)  # slices of it are views, whatever it is
    _, _, pos = _read_head(body, 0)
    _, _, pos = _read_head(body, pos)
    items = []
    for expected in (_CBOR_BYTES, _CBOR_UINT, _CBOR_UINT, _CBOR_BYTES):
        major, argument, pos = _read_head(body, pos)
        if major != expected:
            raise RemoteProtocolError(f"ChunkData: field {len(items) + 1} has CBOR major type {major}")
        if major == _CBOR_BYTES:
            if pos + argument > len(body):
                raise RemoteProtocolError("CBOR string runs past the end of the message")
            items.append(body[pos:pos + argument])
            pos += argument
        else:
            items.append(argument)
    if pos != len(body):
        raise RemoteProtocolError(f"{len(body) - pos} trailing bytes after the message")
    cid, offset, total, data = items
    if len(data) > CHUNK_PIECE_BYTES_MAX:
        raise RemoteProtocolError(f"ChunkData.data: {len(data)} bytes, allowed 0..{CHUNK_PIECE_BYTES_MAX}")
    checked = _record_from_wire(ChunkData, [bytes(cid), offset, total, b""], "ChunkData")
    return ChunkData(checked.cid, checked.offset, checked.total, data.toreadonly())  # type: ignore[arg-type]


def chunk_data_head(cid: bytes, offset: int, total: int, length: int) -> bytes:
    """The frame header and message bytes of `ChunkData(cid, offset, total, piece)` that come
    before the piece itself (`length` bytes): head + piece == encode(ChunkData(...)). A server
    sends the piece from its read buffer behind this head instead of copying it into a frame."""
    if not 0 <= length <= CHUNK_PIECE_BYTES_MAX:
        raise LocalProtocolError(f"ChunkData.data: {length} bytes, allowed 0..{CHUNK_PIECE_BYTES_MAX}")
    empty = encode_message(ChunkData(cid, offset, total, b""))  # checks the schema; ends in b"\x40"
    body = empty[:-1] + _cbor_head(_CBOR_BYTES, length)
    if len(body) + length > FRAME_BYTES_MAX:
        raise LocalProtocolError(f"frame body of {len(body) + length} bytes exceeds {FRAME_BYTES_MAX}")
    return (len(body) + length).to_bytes(FRAME_HEADER_BYTES, "big") + body


def _cbor_head(major: int, argument: int) -> bytes:
    """A canonical (shortest-form) CBOR item head."""
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, (width, smallest) in sorted(_ARGUMENT_WIDTHS.items(), reverse=True):
        if argument >= smallest:
            return bytes([major << 5 | info]) + argument.to_bytes(width, "big")
    raise AssertionError("unreachable")


def arriving_chunk(decoder: MessageDecoder) -> bytes | None:
    """The binary CID of the ChunkData whose frame is arriving in `decoder` (its head is in, the
    frame is not whole yet), or None. A 1 MiB piece takes a while on a slow link; its chunk is
    already on its way, and cancelling its request then would only waste the sender's upload."""
    prefix = decoder.partial_body(CHUNK_DATA_PREFIX_BYTES)
    try:
        major, length, pos = _read_head(prefix, 0)
        code_major, code, pos = _read_head(prefix, pos)
        cid_major, cid_length, pos = _read_head(prefix, pos)
    except RemoteProtocolError:
        return None  # not enough of it yet, or not a message (the whole frame will say why)
    expected = (_CBOR_ARRAY, _CHUNK_DATA_ITEMS, _CBOR_UINT, _CHUNK_DATA_CODE, _CBOR_BYTES)
    if (major, length, code_major, code, cid_major) != expected:
        return None
    cid = prefix[pos : pos + cid_length]
    return cid if len(cid) == cid_length else None


class MessageDecoder:
    """Sans-IO: bytes in with `receive_data`, messages out with `next_message`.

    After the first RemoteProtocolError it stays broken and raises that error again: the session
    must be closed with its reason.
    """

    def __init__(
        self, frame_bytes_max: int = FRAME_BYTES_MAX, buffer_bytes_max: int | None = None
    ) -> None:
        self._frames = FrameDecoder(frame_bytes_max, buffer_bytes_max)
        self._error: RemoteProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as a message."""
        return self._frames.buffered_bytes

    @property
    def receive_bytes_max(self) -> int:
        """How many more bytes `receive_data` accepts right now."""
        return self._frames.receive_bytes_max

    def partial_body(self, bytes_max: int) -> bytes:
        """The start of the frame now arriving (see `FrameDecoder.partial_body`)."""
        return self._frames.partial_body(bytes_max)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer (see `FrameDecoder.receive_data`)."""
        self._frames.receive_data(data)

    def next_message(self) -> Message | None:
        """The next complete message, or None until more data arrives."""
        if self._error is not None:
            raise self._error
        try:
            body = self._frames.next_frame()
            return None if body is None else decode_message(body)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
