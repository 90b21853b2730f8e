"""The shared state of one mesh: one Automerge document with typed reads and mutations.

Theory of operation:
- Every replica starts from the same genesis change (a fixed actor, timestamp 0, the root maps), so
  the root maps are one object on every replica and never conflict, and heads compare equal.
- An asset's map, with its `tags` and `subjects` maps, is created by a *skeleton* change whose actor
  is derived from the CID and whose only dependency is genesis. Two replicas that add the same CID
  concurrently create the very same change (same hash), so nothing they write into it is lost.
- Scalars are last-writer-wins per field (Automerge's rule). Tags and subjects are map keys: a
  concurrent add and remove of one tag keeps the add; adds of different tags both survive.
- Members, tag descriptions and the current release are whole maps, last-writer-wins as a unit.
- Release publications are one bytes entry each under a unique id, in a `publications` map that a
  deterministic skeleton change creates (like an asset's), so concurrent publications all survive.
- The binding shows only the winner of a conflict, so invite uses are kept as one key per
  (invite, node); readers pick the smallest (at, node_id), the same on every replica.
- Consent policies and decisions are bytes entries under unique ids in late root maps (like
  publications); view counts are one integer entry per (process, tag), written only by that process
  (a grow-only counter). The rules that read them live in `mesh.state.consent`.
- Automerge counters are unusable in this binding: putting a Counter panics inside the write lock
  and poisons the document for good; reading one (written by another implementation) panics too,
  but `_guard` turns that into a skipped entry and the document lives on.
- Reads trust nothing: a member may write anything with another Automerge implementation. An entry
  of the wrong type is skipped, never raised. Signatures are checked by the callers.
- A snapshot (a peer's `save()`, to bootstrap a node far behind) is admitted by `from_snapshot`
  only if it is one document chunk that loads and grew from our genesis; it then merges like any
  changes. Automerge takes a document chunk wherever it takes change chunks (`load`, and the sync
  message `apply_changes` builds), so a snapshot persists as one log record, exactly as it arrived.
- Pure: no I/O, no clock, no randomness. Time and the actor id are passed in.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import automerge.core as am
import blake3
import cbor2

from mesh.errors import LocalProtocolError, NotFoundError, RemoteProtocolError, UsageError
from mesh.ids import public_key_from_node_id
from mesh.state.records import TAGS_PER_ASSET_MAX, AssetRecord, normalize_tag

SCHEMA_VERSION = 1
GENESIS_ACTOR = bytes(16)  # never used for anything but the genesis change
ROOT_MAPS = ("members", "revocations", "invite_uses", "tags", "assets", "releases")
PUBLICATIONS_KEY = "publications"  # a root map created by its own skeleton change, not genesis
CONSENT_POLICIES_KEY = "consent_policies"  # late root map: policy id -> signed policy bytes
CONSENT_DECISIONS_KEY = "consent_decisions"  # late root map: decision key -> decision bytes
TAG_VIEWS_KEY = "tag_views"  # late root map: "node/actor/tag" -> that process's own count
DRILLS_KEY = "drills"  # late root map: drill id -> CBOR {subject, scope, by, at}
NODE_PINS_KEY = "node_pins"  # late root map: "node/tag" -> true (pinned) or false (unpinned)
DROPS_KEY = "drops"  # late root map: limited drops' signed entries (rules in mesh.state.drops)
DRILL_BYTES_MAX = 1024
VIEW_COUNT_MAX = 1 << 53  # an entry above this (or negative) is junk and skipped
ACTOR_SUFFIX_BYTES_MAX = 16
SUBJECTS_PER_ASSET_MAX = 256
CHANGE_HASH_BYTES = 32
ASSETS_READS_KEPT = 4  # asset reads kept per process (a hub's meshes too), one per set of heads, ~1 KB an asset
APPLIED_KEPT = 64  # recent applies remembered for change_hashes_since and changes_since ...
APPLIED_BYTES_MAX = 4 * 1024 * 1024  # ... with at most this many bytes of their chunks
WALKS_REMEMBERED_CHANGES_MAX = 256  # a walk over the history is remembered when it found at most this many
INDEX_CHANGES_MAX = 4096  # more changes than this since the asset index's heads: read every asset again
PAST_HEADS_KEPT = 1024  # recent heads remembered: changes known held (see `_note_chunks`)
_CHUNK_MAGIC = bytes([0x85, 0x6F, 0x4A, 0x83])  # Automerge storage chunk magic
_CHUNK_TYPE_AT = 8  # after the magic and the 4-byte checksum
_DOCUMENT_CHUNK = 0  # chunk type of a saved document (1 and 2 are changes)
_SYNC_MESSAGE_V1 = 0x42  # Automerge sync message type byte, version 1
_SYNC_MESSAGE_V2 = 0x43  # ... and version 2 (the same layout up to the changes)
_INVITE_KEY_SEP = "/"

_S = am.ScalarType
_MAP = am.ObjType.Map
_T = TypeVar("_T")


@dataclass(frozen=True)
class Member:
    """A member entry as written in the document; its chain is verified by the reader."""

    node_id: str  # the member's node id
    chain: bytes  # credential chain (signed bytes), unverified here
    role: str  # "organizer", "hub" or "edge" as claimed by the chain
    name: str  # human name
    joined_at: float  # unix seconds


@dataclass(frozen=True)
class CurrentRelease:
    """The mesh's current-release pointer."""

    id: str  # release id
    set_by: str  # node id that moved the pointer
    at: float  # unix seconds when it was moved


def actor_id(node_id: str, suffix: bytes) -> bytes:
    """The Automerge actor of one process of a node: its public key plus a per-process suffix.

    A node id that is not a public key (tests) is hashed instead. The suffix must be random per
    process, so the agent and short CLI commands of one node never share an actor.
    """
    if not 1 <= len(suffix) <= ACTOR_SUFFIX_BYTES_MAX:
        raise LocalProtocolError(f"an actor suffix has 1 to {ACTOR_SUFFIX_BYTES_MAX} bytes")
    try:
        prefix = public_key_from_node_id(node_id)
    except ValueError:
        prefix = blake3.blake3(b"assetmesh/actor/v1\x00" + node_id.encode()).digest()
    return prefix + suffix


def _is_binding_error(exc: BaseException) -> bool:
    """The binding raises Exception, and pyo3's PanicException (a BaseException) on todo!()."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _guard(call: Callable[[], _T], default: _T) -> _T:
    """Run a binding read; any binding failure (even a Rust panic) yields `default`."""
    try:
        return call()
    except BaseException as exc:
        if not _is_binding_error(exc):
            raise
        return default


def _uleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uleb128(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise RemoteProtocolError("truncated length in change data")


def split_chunks(data: bytes) -> list[bytes]:
    """Split concatenated Automerge storage chunks (magic, checksum, type, uleb length, body)."""
    chunks = []
    pos = 0
    while pos < len(data):
        if data[pos : pos + 4] != _CHUNK_MAGIC or len(data) < pos + 9:
            raise RemoteProtocolError("change data is not a sequence of Automerge chunks")
        length, body = _read_uleb128(data, pos + 9)
        if body + length > len(data):
            raise RemoteProtocolError("truncated Automerge chunk in change data")
        chunks.append(data[pos : body + length])
        pos = body + length
    return chunks


_CHANGE_CHUNK, _COMPRESSED_CHANGE_CHUNK = 1, 2  # chunk types (0 is a whole document)
_INFLATED_BYTES_MAX = 64 * 1024 * 1024  # a compressed change larger than this is left to the document


def _change_body(chunk: bytes) -> tuple[bytes, bytes] | None:
    """(hash, uncompressed body) of a change chunk, as Automerge's storage format defines them: the
    hash is SHA-256 over the uncompressed chunk's type, length and body (a compressed change is raw
    DEFLATE of that body; the header's checksum is the hash's first 4 bytes). None when the chunk
    is anything else (a document, a checksum mismatch)."""
    if len(chunk) < 10 or chunk[8] not in (_CHANGE_CHUNK, _COMPRESSED_CHANGE_CHUNK):
        return None
    try:
        length, start = _read_uleb128(chunk, 9)
        body = bytes(chunk[start : start + length])
        if chunk[8] == _COMPRESSED_CHANGE_CHUNK:
            inflater = zlib.decompressobj(-15)
            body = inflater.decompress(body, _INFLATED_BYTES_MAX)
            if inflater.unconsumed_tail or not inflater.eof:
                return None
    except (RemoteProtocolError, zlib.error):
        return None
    digest = hashlib.sha256(bytes([_CHANGE_CHUNK]) + _uleb128(len(body)) + body).digest()
    return (digest, body) if digest[:4] == chunk[4:8] else None


def change_chunk_ids(chunks: list[bytes]) -> list[tuple[bytes, tuple[bytes, ...]]] | None:
    """(hash, dependency hashes) of each change chunk (a change body starts with its
    dependencies). None when a chunk is anything else (a document, a checksum mismatch): the
    caller then asks the document itself."""
    found = []
    for chunk in chunks:
        read = _change_body(chunk)
        if read is None:
            return None
        digest, body = read
        try:
            count, pos = _read_uleb128(body, 0)
        except RemoteProtocolError:
            return None
        end = pos + count * CHANGE_HASH_BYTES
        if end > len(body):
            return None
        found.append((digest, tuple(body[i : i + CHANGE_HASH_BYTES] for i in range(pos, end, CHANGE_HASH_BYTES))))
    return found


def change_chunk_actors(chunk: bytes) -> tuple[bytes, ...] | None:
    """The actor table of a change chunk: its author, then every other actor its operations name
    (the creators of the objects they touch among them). Read from the body's header as the storage
    format lays it out: dependencies, actor, seq, start op, time, message, other actors. None when
    the chunk is not a change or its header is cut short."""
    read = _change_body(chunk)
    if read is None:
        return None
    body = read[1]
    try:
        count, pos = _read_uleb128(body, 0)
        actor, pos = _read_bytes(body, pos + count * CHANGE_HASH_BYTES)
        for _ in range(3):  # seq, start op, time (a signed LEB128: the same byte layout)
            _, pos = _read_uleb128(body, pos)
        _, pos = _read_bytes(body, pos)  # message
        count, pos = _read_uleb128(body, pos)
        others = []
        for _ in range(count):
            other, pos = _read_bytes(body, pos)
            others.append(other)
    except RemoteProtocolError:
        return None
    return (actor, *others)


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    """A uleb-length-prefixed byte string at `pos`, and the position after it."""
    length, pos = _read_uleb128(data, pos)
    if pos + length > len(data):
        raise RemoteProtocolError("truncated bytes in change data")
    return data[pos : pos + length], pos + length


def sync_message_changes(message: bytes) -> list[bytes] | None:
    """The chunks a sync message carries, read as Automerge's sync protocol lays a message out
    (type, heads, need, have as (last sync heads, Bloom filter) pairs, changes, then whatever a
    later version appends). None if it is not such a message."""
    if not message or message[0] not in (_SYNC_MESSAGE_V1, _SYNC_MESSAGE_V2):
        return None
    try:
        pos = 1
        for _ in range(2):  # heads, need
            count, pos = _read_uleb128(message, pos)
            pos += count * CHANGE_HASH_BYTES
        count, pos = _read_uleb128(message, pos)
        for _ in range(count):  # have
            heads, pos = _read_uleb128(message, pos)
            _, pos = _read_bytes(message, pos + heads * CHANGE_HASH_BYTES)
        count, pos = _read_uleb128(message, pos)
        chunks = []
        for _ in range(count):  # an entry may hold several chunks end to end (version 2 does)
            entry, pos = _read_bytes(message, pos)
            chunks.extend(split_chunks(entry))
    except RemoteProtocolError:
        return None
    return chunks


def applied_hashes(ids: list[tuple[bytes, tuple[bytes, ...]]], before: Iterable[bytes],
                   after: Iterable[bytes]) -> list[bytes] | None:
    """Which of these changes (`change_chunk_ids`) the document gained as its heads went from
    `before` to `after`: those reachable from the new heads through each other's dependencies, in
    the given order, each once. Every change gained is named, and only changes it holds (one it
    already held may be named too, if it came again with new ones on top). None when the chunks
    cannot vouch for that: a new head is none of them, or one of them depends on a change that is
    neither among them nor an old head (held long before, or one that had waited for a missing
    dependency and was applied now: only the document's history can tell which)."""
    deps = dict(ids)
    before = set(before)
    stack = [h for h in after if h not in before]
    if any(h not in deps for h in stack):
        return None
    held: set[bytes] = set()
    while stack:
        change = stack.pop()
        if change in held:
            continue
        held.add(change)
        for dep in deps[change]:
            if dep in deps:
                if dep not in before:
                    stack.append(dep)
            elif dep not in before:
                return None
    found = []
    for change, _ in ids:  # the same change may come twice (a skeleton two writers both made)
        if change in held:
            found.append(change)
            held.discard(change)
    return found


_ASSETS_READ: dict[tuple[bytes, ...], list[AssetRecord]] = {}  # heads -> every asset record, see `assets`
_ASSETS_READ_LOCK = threading.Lock()
_ASSETS_LATEST: dict[str, AssetRecord] = {}  # cid -> its record in the last read stored: reused when equal


def _keep_read(heads: tuple[bytes, ...], records: list[AssetRecord]) -> None:
    global _ASSETS_LATEST
    with _ASSETS_READ_LOCK:  # readers and forks read on worker threads
        _ASSETS_READ[heads] = records
        _ASSETS_LATEST = {record.cid: record for record in records}
        while len(_ASSETS_READ) > ASSETS_READS_KEPT:
            del _ASSETS_READ[next(iter(_ASSETS_READ))]


class _AssetIndex:
    """Every asset record of one state at `heads`, less the `dirty` ones still to be read again.

    Why a change needs only its actor table to say which assets it can have touched: an Automerge
    change lists the creator of every object its operations name. An asset's map and its `tags`
    and `subjects` maps come from the asset's skeleton change, whose actor is derived from the CID
    (`_skeleton_actor`), so a change whose table lacks that actor touched none of them. Adding,
    removing or replacing an asset are operations on the assets map, which genesis made: a change
    naming the genesis actor has the map's entries compared (`reconcile`). An asset with any map
    that is not its skeleton's (junk, or re-added after a removal) is `irregular`: read again after
    every change. A new assets map (junk at the root) makes a new index."""

    __slots__ = ("heads", "assets_obj", "objs", "records", "order", "by_actor", "irregular", "dirty",
                 "reconcile", "_sorted")

    def __init__(self, heads: frozenset[bytes], assets_obj: bytes | None) -> None:
        self.heads = heads
        self.assets_obj = assets_obj  # the assets map the index reads (the root's entry)
        self.objs: dict[str, bytes | None] = {}  # cid -> its map (None: junk that is not a map)
        self.records: dict[str, AssetRecord] = {}  # cid -> record, well-formed assets only
        self.order: list[str] = []  # the records' CIDs, sorted
        self.by_actor: dict[bytes, str] = {}  # skeleton actor -> cid, for assets that are regular
        self.irregular: set[str] = set()
        self.dirty: set[str] = set()
        self.reconcile = assets_obj is None or GENESIS_ACTOR not in assets_obj
        self._sorted: list[AssetRecord] | None = None

    def saw(self, tables: list[tuple[bytes, ...]], heads: frozenset[bytes]) -> None:
        """Changes with these actor tables took the document to `heads`: mark what they can touch."""
        for table in tables:
            for actor in table:
                cid = self.by_actor.get(actor)
                if cid is not None:
                    self.dirty.add(cid)
                elif actor == GENESIS_ACTOR:
                    self.reconcile = True
        if self.assets_obj is None or GENESIS_ACTOR not in self.assets_obj:
            self.reconcile = True  # a junk assets map: its creator could be anyone
        self.dirty.update(self.irregular)
        self.heads = heads

    def put(self, cid: str, obj: bytes | None, record: AssetRecord | None,
            maps: tuple[bytes | None, ...]) -> None:
        skeleton = _skeleton_actor(cid)
        self.objs[cid] = obj
        if record is None:
            self._forget_record(cid)
        elif self.records.get(cid) is not record:
            if cid not in self.records:
                bisect.insort(self.order, cid)
            self.records[cid] = record
            self._sorted = None
        regular = obj is not None and skeleton in obj and all(m is None or skeleton in m for m in maps)
        if regular:
            self.by_actor[skeleton] = cid
            self.irregular.discard(cid)
        else:
            self.by_actor.pop(skeleton, None)
            self.irregular.add(cid)

    def drop(self, cid: str) -> None:
        self.objs.pop(cid, None)
        self._forget_record(cid)
        self.by_actor.pop(_skeleton_actor(cid), None)
        self.irregular.discard(cid)

    def _forget_record(self, cid: str) -> None:
        if self.records.pop(cid, None) is not None:
            self.order.pop(bisect.bisect_left(self.order, cid))
            self._sorted = None

    def sorted_records(self) -> list[AssetRecord]:
        if self._sorted is None:
            self._sorted = [self.records[cid] for cid in self.order]
        return self._sorted


class _PinnedDocument:
    """The live document, read from a worker thread by a `MeshState.reader`: reads see it as it is
    when they run, `get_heads` answers the heads it had when pinned, and it has no writes."""

    def __init__(self, doc: am.Document, heads: list[bytes]) -> None:
        self._live, self._heads = doc, list(heads)

    def moved(self) -> bool:
        """True once the live document has other heads than the pinned ones."""
        return set(self._live.get_heads()) != set(self._heads)

    def get_heads(self) -> list[bytes]:
        return list(self._heads)

    def get_actor(self) -> bytes:
        return self._live.get_actor()

    def get(self, obj: bytes, prop: str) -> Any:
        return self._live.get(obj, prop)

    def keys(self, obj: bytes) -> list[str]:
        return self._live.keys(obj)

    def values(self, obj: bytes) -> list[Any]:
        return self._live.values(obj)


def _genesis() -> am.Document:
    """The genesis document: identical bytes, hence an identical change hash, everywhere."""
    doc = am.Document(GENESIS_ACTOR)
    with doc.transaction() as tx:
        tx.put(am.ROOT, "schema", _S.Int, SCHEMA_VERSION)
        for key in ROOT_MAPS:
            tx.put_object(am.ROOT, key, _MAP)
    return doc


_GENESIS = _genesis()
GENESIS_HEADS = frozenset(_GENESIS.get_heads())  # the heads of a document with nothing in it
GENESIS_SAVED = _GENESIS.save()  # ... saved: what a log of changes loads on top of when there is no snapshot
GENESIS_ASSETS = _GENESIS.get(am.ROOT, "assets")[1]  # the assets map every skeleton writes into
del _GENESIS


def _skeleton_actor(cid: str) -> bytes:
    return blake3.blake3(b"assetmesh/asset-skeleton/v1\x00" + cid.encode()).digest()[:16]


def _root_skeleton_actor(key: str) -> bytes:
    return blake3.blake3(b"assetmesh/root-skeleton/v1\x00" + key.encode()).digest()[:16]


# Typed scalar readers: each returns the value or None when the stored entry has the wrong type.
def _as_str(value: Any) -> str | None:
    return value[1] if value[0] == _S.Str else None


def _as_int(value: Any) -> int | None:
    return value[1] if value[0] in (_S.Int, _S.Uint) else None


def _as_float(value: Any) -> float | None:
    return float(value[1]) if value[0] in (_S.F64, _S.Int, _S.Uint) else None


def _as_bytes(value: Any) -> bytes | None:
    return bytes(value[1]) if value[0] == _S.Bytes else None


def _as_true(value: Any) -> bool | None:
    return True if value[0] == _S.Boolean and value[1] is True else None


_MISSING = object()


class MeshState:
    """One mesh's shared Automerge document. Not thread-safe; one live instance per actor."""

    def __init__(self, actor: bytes) -> None:
        self._doc = _genesis()
        self._doc.set_actor(actor)

    @classmethod
    def load(cls, data: bytes, actor: bytes) -> MeshState:
        """A state from `save()` output, optionally followed by `changes_since` output."""
        state = cls.__new__(cls)
        try:
            state._doc = am.Document.load(data)
            state._doc.set_actor(actor)
            state._doc.merge(_genesis())
        except BaseException as exc:
            if not _is_binding_error(exc):
                raise
            raise RemoteProtocolError(f"not a loadable Automerge document: {exc}") from None
        return state

    @classmethod
    def from_snapshot(cls, data: bytes) -> MeshState:
        """A peer's snapshot (`save()` output), checked and read-only: one document chunk that
        loads and holds our genesis. RemoteProtocolError otherwise."""
        chunks = split_chunks(data)
        if len(chunks) != 1 or chunks[0][_CHUNK_TYPE_AT] != _DOCUMENT_CHUNK:
            raise RemoteProtocolError("a snapshot is exactly one saved Automerge document")
        state = cls.__new__(cls)
        try:
            state._doc = am.Document.load(bytes(data))
            heads = set(state._doc.get_heads())
            state._doc.merge(_genesis())
        except BaseException as exc:
            if not _is_binding_error(exc):
                raise
            raise RemoteProtocolError(f"not a loadable Automerge document: {exc}") from None
        if set(state._doc.get_heads()) != heads:
            raise RemoteProtocolError("the snapshot did not grow from the shared state's genesis")
        return state

    @property
    def actor(self) -> bytes:
        return self._doc.get_actor()

    # -- low-level reads ------------------------------------------------------------------------

    def _root_map(self, key: str) -> bytes | None:
        """Object id of a root map; None if a member replaced it with junk."""
        return self._child_map(am.ROOT, key)

    def _get(self, obj: bytes, key: str) -> Any:
        """(value, object id) or None, whatever junk is stored there."""
        return _guard(lambda: self._doc.get(obj, key), None)

    def _keys(self, obj: bytes | None) -> list[str]:
        if obj is None:
            return []
        return _guard(lambda: self._doc.keys(obj), [])

    def _child_map(self, obj: bytes | None, key: str) -> bytes | None:
        entry = self._get(obj, key) if obj is not None else None
        return entry[1] if entry is not None and entry[0] == _MAP else None

    def _scalar(self, obj: bytes, key: str, typed: Callable[[Any], _T | None]) -> Any:
        """The typed scalar at obj[key]; `_MISSING` if absent or of another type."""
        entry = self._get(obj, key)
        if entry is None or not isinstance(entry[0], tuple):
            return _MISSING
        value = _guard(lambda: typed(entry[0]), None)
        if value is None and entry[0][0] != _S.Null:
            return _MISSING
        return value

    def _stored_equals(self, obj: bytes, key: str, kind: Any, value: Any) -> bool:
        """True if obj[key] already holds exactly this scalar (so a put would only add noise)."""
        entry = self._get(obj, key)
        return entry is not None and isinstance(entry[0], tuple) and entry[0] == (kind, value)

    def _true_keys(self, obj: bytes | None) -> set[str]:
        return {k for k in self._keys(obj) if self._scalar(obj, k, _as_true) is True}

    # -- low-level writes -----------------------------------------------------------------------

    def _write(self, body: Callable[[am.Transaction], None], assets: Iterable[str] = ()) -> None:
        """One local change; `assets` names every asset whose maps `body` may touch."""
        before = self._doc.get_heads()
        with self._doc.transaction() as tx:
            body(tx)
        self._saw_heads(self._doc.get_heads())
        self._index_wrote(before, assets)

    def _require_root(self, key: str) -> bytes:
        obj = self._root_map(key)
        if obj is None:
            raise RemoteProtocolError(f"the shared state's {key!r} map was overwritten")
        return obj

    # -- assets ---------------------------------------------------------------------------------

    def put_asset(self, record: AssetRecord) -> None:
        """Create or update an asset; adds its tags and subjects, never removes any."""
        _check_asset(record)
        asset = self._ensure_asset_map(record.cid)
        tags_obj = self._child_map(asset, "tags")
        subjects_obj = self._child_map(asset, "subjects")
        have_tags, have_subjects = self._true_keys(tags_obj), self._true_keys(subjects_obj)
        fields = _asset_fields(record)

        def body(tx: am.Transaction) -> None:
            for key, (kind, value) in fields.items():
                if not self._stored_equals(asset, key, kind, value):
                    tx.put(asset, key, kind, value)
            _add_keys(tx, asset, "tags", tags_obj, set(record.tags) - have_tags)
            _add_keys(tx, asset, "subjects", subjects_obj, set(record.subjects) - have_subjects)

        self._write(body, (record.cid,))

    def _ensure_asset_map(self, cid: str) -> bytes:
        """The asset's map, merging in its deterministic skeleton if needed."""
        assets = self._require_root("assets")
        found = self._child_map(assets, cid)
        if found is not None:
            return found
        if assets != GENESIS_ASSETS:  # a member put a map of its own at the root: no skeleton fits it
            raise RemoteProtocolError("the shared state's 'assets' map was overwritten")
        skeleton = _genesis()
        skeleton.set_actor(_skeleton_actor(cid))
        with skeleton.transaction() as tx:
            obj = tx.put_object(assets, cid, _MAP)
            tx.put_object(obj, "tags", _MAP)
            tx.put_object(obj, "subjects", _MAP)
        before = self._doc.get_heads()
        self._doc.merge(skeleton)
        self._index_wrote(before, (cid,))
        found = self._child_map(assets, cid)
        if found is None:  # removed earlier (skeleton already applied) or shadowed by junk
            made: list[bytes] = []
            self._write(lambda tx: made.append(tx.put_object(assets, cid, _MAP)), (cid,))
            found = made[0]
        return found

    def asset(self, cid: str) -> AssetRecord | None:
        """The asset with this CID, or None if absent or malformed: from the asset index when it
        is at the document's heads and no change since its last read can have touched the asset
        (a dict lookup, where a read costs ~30-50 us), else read."""
        index = self.__dict__.get("_index")
        if (index is not None and not index.reconcile and cid not in index.dirty and cid not in index.irregular
                and index.heads == frozenset(self._doc.get_heads())):
            return index.records.get(cid)  # not among the map's entries, or malformed: None
        return self._read_asset(cid, self._child_map(self._root_map("assets"), cid))

    def assets(self, tag: str | None = None) -> list[AssetRecord]:
        """Every well-formed asset (optionally only those with `tag`), sorted by CID.

        A state keeps an index of its assets (`_AssetIndex`): after a change it reads again only
        the assets the change can have touched (~30 us each), where a full read costs ~0.4 s at
        10,000 assets. A `reader` (on a worker thread) has no index: it takes the read its owner
        made at its heads, or reads every asset. Reads are kept per set of heads for every state,
        fork and reader in this process (records are immutable: the heads name the content)."""
        heads = tuple(sorted(self._doc.get_heads()))
        cached = _ASSETS_READ.get(heads)
        if cached is None:
            pinned = isinstance(self._doc, _PinnedDocument)
            index = self._index_every_asset(frozenset(heads)) if pinned else self._asset_index()
            cached = index.sorted_records()
            if pinned:
                if self._doc.moved():  # read while the document changed: good for nothing
                    return []
                self._built_index = index  # for the owner to adopt (`adopt_index`)
            _keep_read(heads, cached)
        return list(cached) if tag is None else [r for r in cached if tag in r.tags]

    def _asset_index(self) -> _AssetIndex:
        """This state's asset index, brought to the document's heads."""
        assets = self._root_map("assets")
        now = frozenset(self._doc.get_heads())
        index = self.__dict__.get("_index")
        if index is not None and index.assets_obj == assets and index.heads != now:
            tables = self._change_actors_since(index.heads)
            if tables is None:
                index = None
            else:
                index.saw(tables, now)
        if index is None or index.assets_obj != assets:
            index = self._index = self._index_every_asset(now)
            return index
        if index.reconcile:
            self._index_reconcile(index, assets)
        for cid in sorted(index.dirty):
            self._index_asset(index, assets, cid)
        index.dirty.clear()
        return index

    def _index_every_asset(self, heads: frozenset[bytes]) -> _AssetIndex:
        """An index built by reading every asset (unchanged records of the last read are reused:
        the reads kept share their objects, so a read adds few long-lived objects and the cyclic
        collector's full passes, ~75 ms at 4 x 10,000 records, stay rare and short)."""
        assets = self._root_map("assets")
        index = _AssetIndex(heads, assets)
        latest = _ASSETS_LATEST
        for cid in self._keys(assets):
            self._index_asset(index, assets, cid, latest.get(cid))
        return index

    def _index_asset(self, index: _AssetIndex, assets: bytes | None, cid: str,
                     known: AssetRecord | None = None) -> None:
        """Read one asset into the index again (or drop it, if it is gone)."""
        entry = self._get(assets, cid) if assets is not None else None
        if entry is None:
            index.drop(cid)
            return
        obj = entry[1] if entry[0] == _MAP else None
        tags = self._child_map(obj, "tags") if obj is not None else None
        subjects = self._child_map(obj, "subjects") if obj is not None else None
        record = self._read_asset(cid, obj, tags, subjects)
        known = known or index.records.get(cid)
        index.put(cid, obj, known if known is not None and known == record else record, (obj, tags, subjects))

    def _index_reconcile(self, index: _AssetIndex, assets: bytes | None) -> None:
        """Compare the assets map's entries with the index's: added, removed and replaced assets
        are marked for reading (~10 ms at 10,000 assets: after a change that names the genesis
        actor, the creator of the assets map)."""
        keys = self._keys(assets)
        values = _guard(lambda: self._doc.values(assets), None) if assets is not None else []
        index.reconcile = False
        if values is None or len(values) != len(keys):
            index.dirty.update(keys, index.objs)
            return
        objs = index.objs
        for cid in objs.keys() - set(keys):
            index.dirty.add(cid)
        for cid, value in zip(keys, values):
            obj = value[1] if value[0] == _MAP else None
            if cid not in objs or objs[cid] != obj:
                index.dirty.add(cid)

    def _change_actors_since(self, heads: frozenset[bytes]) -> list[tuple[bytes, ...]] | None:
        """The actor tables of the changes since `heads`: from remembered applies (no walk), else
        from the history; None if there are too many to be worth it or a chunk is unreadable."""
        remembered = self._remembered_since(list(heads))
        if remembered is not None:
            tables = [change_chunk_actors(chunk) for _, chunk in remembered]
            return None if any(table is None for table in tables) else tables
        changes = self._changes_since(list(heads))
        if len(changes) > INDEX_CHANGES_MAX:
            return None
        return [(change.actor_id, *change.other_actor_ids) for change in changes]

    def _index_saw(self, before: list[bytes], tables: list[tuple[bytes, ...]]) -> None:
        """The document went from `before` to now by changes with these actor tables: if the
        index was at `before`, it follows without asking the history (re-reads wait for `assets`)."""
        index = self.__dict__.get("_index")
        if index is not None and index.heads == frozenset(before):
            index.saw(tables, frozenset(self._doc.get_heads()))

    def _index_wrote(self, before: list[bytes], cids: Iterable[str]) -> None:
        """This process changed the document from `before`, touching no asset but `cids`."""
        index = self.__dict__.get("_index")
        if index is not None and index.heads == frozenset(before):
            index.heads = frozenset(self._doc.get_heads())
            index.dirty.update(cids)
            index.dirty.update(index.irregular)

    def adopt_index(self, reader: MeshState) -> None:
        """Take the asset index a `reader` built on a worker thread, if this state has none yet
        (the first full read stays off this thread); it follows the changes made since."""
        built = reader.__dict__.pop("_built_index", None)
        if built is not None and "_index" not in self.__dict__:
            self._index = built

    def asset_count(self) -> int:
        """About how many entries the assets map holds (well-formed or not), for pacing work
        that grows with it: as of the asset index's last read when there is one (a dict's size,
        where reading the map's keys costs ~2 ms at 10,000), else read now."""
        index = self.__dict__.get("_index")
        if index is not None:
            return len(index.objs)
        return len(self._keys(self._root_map("assets")))

    def _read_asset(self, cid: str, obj: bytes | None, tags_obj: Any = _MISSING,
                    subjects_obj: Any = _MISSING) -> AssetRecord | None:
        if obj is None:
            return None
        if tags_obj is _MISSING:
            tags_obj, subjects_obj = self._child_map(obj, "tags"), self._child_map(obj, "subjects")
        values = {key: self._scalar(obj, key, read) for key, (_, read) in _ASSET_FIELDS.items()}
        for key in _ASSET_OPTIONAL:
            if values[key] is _MISSING and self._get(obj, key) is None:
                values[key] = None  # absent optional field
        if any(v is _MISSING for v in values.values()):
            return None
        if any(values[k] is None for k in _ASSET_REQUIRED) or values["size"] < 0:
            return None
        tags = sorted(t for t in self._true_keys(tags_obj) if _canonical(t))
        subjects = self._true_keys(subjects_obj)
        return AssetRecord(
            cid=cid,
            tags=frozenset(tags[:TAGS_PER_ASSET_MAX]),
            subjects=frozenset(sorted(subjects)[:SUBJECTS_PER_ASSET_MAX]),
            **values,
        )

    def tag_asset(self, cid: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Add and remove canonical tags on an asset; NotFoundError if it is absent."""
        add, remove = set(add), set(remove)
        for tag in add | remove:
            _check_tag(tag)
        asset = self._child_map(self._root_map("assets"), cid)
        if asset is None:
            raise NotFoundError(f"no asset {cid}")
        tags_obj = self._child_map(asset, "tags")
        present = self._true_keys(tags_obj)
        if len(present | add) > TAGS_PER_ASSET_MAX:
            raise UsageError(f"an asset has at most {TAGS_PER_ASSET_MAX} tags")

        def body(tx: am.Transaction) -> None:
            target = _add_keys(tx, asset, "tags", tags_obj, (add - remove) - present)
            for tag in sorted(remove & set(self._keys(tags_obj))):
                tx.delete(target, tag)

        self._write(body, (cid,))

    def remove_asset(self, cid: str) -> None:
        """Forget an asset (its tags and subjects go with it); NotFoundError if absent."""
        assets = self._require_root("assets")
        if self._get(assets, cid) is None:
            raise NotFoundError(f"no asset {cid}")
        self._write(lambda tx: tx.delete(assets, cid), (cid,))

    # -- members, revocations, invites ----------------------------------------------------------

    def put_member(
        self, node_id: str, chain: bytes, role: str, name: str, joined_at: float
    ) -> None:
        """Write (or replace as a whole) a member entry."""
        members = self._require_root("members")

        def body(tx: am.Transaction) -> None:
            obj = tx.put_object(members, node_id, _MAP)
            tx.put(obj, "chain", _S.Bytes, bytes(chain))
            tx.put(obj, "role", _S.Str, role)
            tx.put(obj, "name", _S.Str, name)
            tx.put(obj, "joined_at", _S.F64, float(joined_at))

        self._write(body)

    def members(self) -> list[Member]:
        """Every well-formed member entry, sorted by node id (chains still unverified)."""
        members = self._root_map("members")
        found = []
        for node_id in sorted(self._keys(members)):
            member = self._read_member(node_id, self._child_map(members, node_id))
            if member is not None:
                found.append(member)
        return found

    def member(self, node_id: str) -> Member | None:
        """One member entry by node id (None if absent or malformed): a keyed read, not a scan."""
        return self._read_member(node_id, self._child_map(self._root_map("members"), node_id))

    def _read_member(self, node_id: str, obj: bytes | None) -> Member | None:
        if obj is None:
            return None
        chain = self._scalar(obj, "chain", _as_bytes)
        role = self._scalar(obj, "role", _as_str)
        name = self._scalar(obj, "name", _as_str)
        joined_at = self._scalar(obj, "joined_at", _as_float)
        if any(v is _MISSING or v is None for v in (chain, role, name, joined_at)):
            return None
        return Member(node_id=node_id, chain=chain, role=role, name=name, joined_at=joined_at)

    def put_revocation(self, node_id: str, blob: bytes) -> None:
        """Record a signed revocation of `node_id` (verified by readers)."""
        revocations = self._require_root("revocations")
        self._write(lambda tx: tx.put(revocations, node_id, _S.Bytes, bytes(blob)))

    def revocation_blobs(self) -> dict[str, bytes]:
        """node id -> revocation blob, for every entry that holds bytes."""
        return self._bytes_map("revocations")

    def record_invite_use(self, invite_id: str, node_id: str, at: float) -> None:
        """Record that `node_id` redeemed `invite_id` at `at` (kept once per pair)."""
        if _INVITE_KEY_SEP in invite_id or not invite_id:
            raise LocalProtocolError("an invite id is non-empty and has no '/'")
        uses = self._require_root("invite_uses")
        key = f"{invite_id}{_INVITE_KEY_SEP}{node_id}"
        if self._get(uses, key) is None:
            self._write(lambda tx: tx.put(uses, key, _S.F64, float(at)))

    def invite_uses(self) -> dict[str, str]:
        """invite id -> the node that used it first: smallest (at, node_id), same everywhere."""
        best: dict[str, tuple[float, str]] = {}
        for invite_id, node_id, at in self.invite_use_entries():
            best[invite_id] = min(best.get(invite_id, (at, node_id)), (at, node_id))
        return {invite_id: node_id for invite_id, (_, node_id) in sorted(best.items())}

    def invite_use_entries(self) -> list[tuple[str, str, float]]:
        """Every recorded (invite id, node id, at): a fleet key's users, first ones first."""
        uses = self._root_map("invite_uses")
        found = []
        for key in self._keys(uses):
            invite_id, sep, node_id = key.rpartition(_INVITE_KEY_SEP)
            at = self._scalar(uses, key, _as_float)
            if not sep or not invite_id or not node_id or at is _MISSING or at is None:
                continue
            found.append((invite_id, node_id, at))
        return sorted(found, key=lambda entry: (entry[0], entry[2], entry[1]))

    # -- tags and releases ----------------------------------------------------------------------

    def set_tag_description(self, tag: str, description: str) -> None:
        """Declare a canonical tag of the event with a description."""
        _check_tag(tag)
        tags = self._require_root("tags")

        def body(tx: am.Transaction) -> None:
            obj = tx.put_object(tags, tag, _MAP)
            tx.put(obj, "description", _S.Str, description)

        self._write(body)

    def tag_descriptions(self) -> dict[str, str]:
        """Canonical tag -> description, sorted by tag."""
        tags = self._root_map("tags")
        found = {}
        for tag in sorted(self._keys(tags)):
            obj = self._child_map(tags, tag)
            text = self._scalar(obj, "description", _as_str) if obj is not None else _MISSING
            if _canonical(tag) and isinstance(text, str):
                found[tag] = text
        return found

    def undeclare_tag(self, tag: str) -> None:
        """Take a tag out of the event's canonical set (assets keep it; it is no longer declared)."""
        tags = self._require_root("tags")
        if self._get(tags, tag) is not None:
            self._write(lambda tx: tx.delete(tags, tag))

    def set_node_pin(self, node_id: str, tag: str, pinned: bool) -> None:
        """Pin (or unpin) a tag's originals on one node; last writer wins per (node, tag)."""
        _check_tag(tag)
        if not node_id or _INVITE_KEY_SEP in node_id:
            raise LocalProtocolError("a node id is non-empty and has no '/'")
        pins = self._ensure_late_root_map(NODE_PINS_KEY)
        key = f"{node_id}{_INVITE_KEY_SEP}{tag}"
        if not self._stored_equals(pins, key, _S.Boolean, bool(pinned)):
            self._write(lambda tx: tx.put(pins, key, _S.Boolean, bool(pinned)))

    def node_pins(self, node_id: str) -> frozenset[str]:
        """The canonical tags `node_id` pins (entries of another type read as unpinned)."""
        pins = self._root_map(NODE_PINS_KEY)
        prefix = f"{node_id}{_INVITE_KEY_SEP}"
        tags = (key[len(prefix):] for key in self._true_keys(pins) if key.startswith(prefix))
        return frozenset(tag for tag in tags if _canonical(tag))

    def put_release(self, release_id: str, blob: bytes) -> None:
        """Store a signed release record (verified by readers)."""
        releases = self._require_root("releases")
        self._write(lambda tx: tx.put(releases, release_id, _S.Bytes, bytes(blob)))

    def release_blobs(self) -> dict[str, bytes]:
        """release id -> signed release record bytes."""
        return self._bytes_map("releases")

    def set_current_release(self, release_id: str, set_by: str, at: float) -> None:
        """Move the current-release pointer (last writer wins, as one unit)."""

        def body(tx: am.Transaction) -> None:
            obj = tx.put_object(am.ROOT, "current_release", _MAP)
            tx.put(obj, "id", _S.Str, release_id)
            tx.put(obj, "set_by", _S.Str, set_by)
            tx.put(obj, "at", _S.F64, float(at))

        self._write(body)

    def current_release(self) -> CurrentRelease | None:
        """The current-release pointer, or None if unset or malformed."""
        obj = self._child_map(am.ROOT, "current_release")
        if obj is None:
            return None
        values = [self._scalar(obj, k, r) for k, r in (("id", _as_str), ("set_by", _as_str))]
        at = self._scalar(obj, "at", _as_float)
        if any(v is _MISSING or v is None for v in (*values, at)):
            return None
        return CurrentRelease(id=values[0], set_by=values[1], at=at)

    def put_publication(self, publication_id: str, blob: bytes) -> None:
        """Store a signed publication (a move of the current-release pointer; verified by readers).

        Each publication is its own entry, so concurrent ones never hide each other.
        """
        if not publication_id:
            raise LocalProtocolError("a publication id is not empty")
        publications = self._ensure_late_root_map(PUBLICATIONS_KEY)
        self._write(lambda tx: tx.put(publications, publication_id, _S.Bytes, bytes(blob)))

    def publication_blobs(self) -> dict[str, bytes]:
        """publication id -> signed publication bytes."""
        return self._bytes_map(PUBLICATIONS_KEY)

    # -- consent and analytics (rules in mesh.state.consent) ----------------------------------

    def put_consent_policy(self, policy_id: str, blob: bytes) -> None:
        """Store a signed consent or retention policy under its id (verified by readers)."""
        self._put_late_bytes(CONSENT_POLICIES_KEY, policy_id, blob)

    def consent_policy_blobs(self) -> dict[str, bytes]:
        """policy id -> signed policy bytes."""
        return self._bytes_map(CONSENT_POLICIES_KEY)

    def put_consent_decision(self, key: str, blob: bytes) -> None:
        """Store a consent decision under its unique key; a key already holding it is left alone."""
        obj = self._root_map(CONSENT_DECISIONS_KEY)
        if obj is not None and self._stored_equals(obj, key, _S.Bytes, bytes(blob)):
            return
        self._put_late_bytes(CONSENT_DECISIONS_KEY, key, blob)

    def consent_decision_keys(self) -> list[str]:
        """Every key of the decision map, sorted (values unread)."""
        return sorted(self._keys(self._root_map(CONSENT_DECISIONS_KEY)))

    def consent_decision_blobs(self, keys: Iterable[str]) -> dict[str, bytes]:
        """key -> decision bytes for those of `keys` that hold bytes."""
        obj = self._root_map(CONSENT_DECISIONS_KEY)
        found = {}
        for key in keys:
            blob = self._scalar(obj, key, _as_bytes) if obj is not None else _MISSING
            if isinstance(blob, bytes):
                found[key] = blob
        return found

    def add_view_counts(self, prefix: str, counts: dict[str, int]) -> None:
        """Add `counts` (suffix -> views) to this process's own entries `prefix + suffix`, in one
        change. Each entry has one writer, so its value only grows and no increment is lost."""
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts.values()):
            raise LocalProtocolError("view counts are non-negative integers")
        views = self._ensure_late_root_map(TAG_VIEWS_KEY)
        totals = {}
        for suffix, n in sorted(counts.items()):
            had = self._scalar(views, prefix + suffix, _as_int)
            base = had if isinstance(had, int) and 0 <= had <= VIEW_COUNT_MAX else 0
            if n:
                totals[prefix + suffix] = min(base + n, VIEW_COUNT_MAX)

        def body(tx: am.Transaction) -> None:
            for key, total in totals.items():
                tx.put(views, key, _S.Int, total)

        if totals:
            self._write(body)

    def view_counts(self) -> dict[str, int]:
        """key -> count for every well-formed view-count entry."""
        obj = self._root_map(TAG_VIEWS_KEY)
        found = {}
        for key in sorted(self._keys(obj)):
            count = self._scalar(obj, key, _as_int)
            if isinstance(count, int) and 0 <= count <= VIEW_COUNT_MAX:
                found[key] = count
        return found

    def _put_late_bytes(self, root_key: str, key: str, blob: bytes) -> None:
        if not key:
            raise LocalProtocolError("an entry key is not empty")
        obj = self._ensure_late_root_map(root_key)
        self._write(lambda tx: tx.put(obj, key, _S.Bytes, bytes(blob)))

    # -- limited drops (rules in mesh.state.drops) ---------------------------------------------

    def put_drop_entry(self, key: str, blob: bytes) -> None:
        """Store one signed drop entry under its unique key (entries are never changed)."""
        self._put_late_bytes(DROPS_KEY, key, blob)

    def drop_entries(self) -> dict[str, bytes]:
        """key -> bytes of every drop entry. Keys are listed once per set of heads, and a value is
        read once per key: entries are content-addressed (their key names the hash of what they
        sign), so a reader that finds a value invalid re-reads it with `drop_entry`."""
        heads = tuple(self._doc.get_heads())
        cached = getattr(self, "_drops_read", None)
        if cached is None or cached[0] != heads:
            known = cached[1] if cached is not None else {}
            obj = self._root_map(DROPS_KEY)
            found = {}
            for key in self._keys(obj):
                blob = known.get(key)
                if blob is None:
                    blob = self._scalar(obj, key, _as_bytes)
                if isinstance(blob, bytes):
                    found[key] = blob
            cached = self._drops_read = (heads, found)
        return dict(cached[1])

    def drop_entry(self, key: str) -> bytes | None:
        """The bytes stored under one drop entry's key now (read afresh), or None."""
        obj = self._root_map(DROPS_KEY)
        blob = self._scalar(obj, key, _as_bytes) if obj is not None else _MISSING
        return blob if isinstance(blob, bytes) else None

    # -- drills ---------------------------------------------------------------------------------

    def request_drill(self, drill_id: str, subject: str, scope: str, by: str, at: float) -> None:
        """Ask every node to run its dry-run checks for drill `drill_id` (see `mesh drill`)."""
        if not drill_id or "/" in drill_id:
            raise LocalProtocolError("a drill id is non-empty and has no '/'")
        blob = cbor2.dumps({"subject": subject, "scope": scope, "by": by, "at": float(at)}, canonical=True)
        drills = self._ensure_late_root_map(DRILLS_KEY)
        self._write(lambda tx: tx.put(drills, drill_id, _S.Bytes, blob))

    def drill_requests(self) -> dict[str, dict]:
        """drill id -> {"subject", "scope", "by", "at"} for every well-formed request."""
        found = {}
        for drill_id, blob in self._bytes_map(DRILLS_KEY).items():
            if len(blob) > DRILL_BYTES_MAX:
                continue
            try:
                request = cbor2.loads(blob)
            except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
                continue
            if (isinstance(request, dict) and all(isinstance(request.get(k), str) for k in ("subject", "scope", "by"))
                    and isinstance(request.get("at"), (int, float))):
                found[drill_id] = {k: request[k] for k in ("subject", "scope", "by", "at")}
        return found

    def _ensure_late_root_map(self, key: str) -> bytes:
        """A root map added after genesis, created by a deterministic skeleton change (the same on
        every replica, so it is one object everywhere), or anew if junk replaced it."""
        found = self._root_map(key)
        if found is not None:
            return found
        skeleton = _genesis()
        skeleton.set_actor(_root_skeleton_actor(key))
        with skeleton.transaction() as tx:
            tx.put_object(am.ROOT, key, _MAP)
        self._doc.merge(skeleton)
        found = self._root_map(key)
        if found is None:  # a member overwrote it after the skeleton
            with self._doc.transaction() as tx:
                found = tx.put_object(am.ROOT, key, _MAP)
        return found

    def _bytes_map(self, root_key: str) -> dict[str, bytes]:
        obj = self._root_map(root_key)
        found = {}
        for key in sorted(self._keys(obj)):
            blob = self._scalar(obj, key, _as_bytes)
            if isinstance(blob, bytes):
                found[key] = blob
        return found

    # -- persistence and change exchange --------------------------------------------------------

    def heads(self) -> list[bytes]:
        """The document's heads (32-byte change hashes), sorted."""
        return sorted(self._doc.get_heads())

    def fork(self) -> MeshState:
        """A copy at the current heads that shares nothing mutable with this state (an Automerge
        fork: ~20-40 ms at 10,000 assets, against ~0.4 s for save and load): other threads may read
        it while this one goes on changing the original. Passes that fall back to a fork
        (`mesh.drivers.passes.state_pass`) at the same heads share one: nobody may write to it."""
        heads = tuple(self._doc.get_heads())
        shared = self.__dict__.get("_fork")
        if shared is not None and shared[0] == heads:
            return shared[1]  # nobody writes to a fork: readers at the same heads share one
        copy = MeshState.__new__(MeshState)
        copy._doc = self._doc.fork()
        self._fork = (heads, copy)
        return copy

    def reader(self) -> MeshState:
        """A read-only state for one pass on a worker thread that shares this state's document
        instead of copying it (a fork costs ~30 ms at 10,000 assets, holding the GIL throughout).
        Its reads see the document as it is when they run, so what a pass read holds for the heads
        the reader was made at only if `unmoved()` is still true when the pass is done (run it
        again otherwise). Its asset records are this state's, read here, on the owner's thread."""
        if "_index" in self.__dict__:
            self.assets()
        reader = MeshState.__new__(MeshState)
        reader._doc = _PinnedDocument(self._doc, self._doc.get_heads())
        return reader

    def unmoved(self) -> bool:
        """For a `reader`: True while the document still has the heads it was made at."""
        return not isinstance(self._doc, _PinnedDocument) or not self._doc.moved()

    def save(self) -> bytes:
        """The whole document, compressed."""
        return self._doc.save()

    def changes_since(self, heads: Iterable[bytes]) -> bytes:
        """Concatenated change chunks not covered by `heads` (unknown hashes are ignored)."""
        heads = list(heads)
        remembered = self._remembered_since(heads)
        if remembered is not None:
            return b"".join(chunk for _, chunk in remembered)
        return b"".join(change.bytes for change in self._walk_since(heads))

    def change_hashes_since(self, heads: Iterable[bytes]) -> list[bytes]:
        """Hashes of the changes `changes_since(heads)` would return."""
        heads = list(heads)
        remembered = self._remembered_since(heads)
        if remembered is not None:
            return [change for change, _ in remembered]
        return [change.hash for change in self._walk_since(heads)]

    def _remembered_since(self, heads: list[bytes]) -> list[tuple[bytes, bytes]] | None:
        """(hash, chunk) of the changes since `heads` when a chain of remembered applies (or an
        earlier walk) leads from `heads` to now: no walk over the history. None otherwise."""
        now = frozenset(self._doc.get_heads())
        if now == frozenset(heads):
            return []
        return self._applied_since(frozenset(heads), now)

    def _walk_since(self, heads: list[bytes]) -> list[Any]:
        """The changes since `heads` from the history; a short answer is remembered, so the next
        question about the same range (the log, then the peers, after a local write) is free."""
        changes = self._changes_since(heads)
        if len(changes) <= WALKS_REMEMBERED_CHANGES_MAX:
            self._note_applied(heads, self._doc.get_heads(), [(c.hash, c.bytes) for c in changes])
        return changes

    def _changes_since(self, heads: list[bytes]) -> list[Any]:
        """The changes that are not `heads` or their ancestors, in causal order (hashes the
        document does not hold are ignored).

        The binding's `get_changes(have_deps)` answers a linear history (one head asked about,
        one head now: a local write, the usual case) in ~1 ms at 20,000 changes, but takes
        ~240 ms whenever either side has concurrent heads. Then: list every change (~10 ms) and
        walk it newest first, marking the ancestors of `heads` (~15 ms more)."""
        known = {h for h in heads if isinstance(h, bytes) and len(h) == CHANGE_HASH_BYTES}
        now = self._doc.get_heads()
        if known and known == set(now):
            return []
        if len(known) == 1 and len(now) == 1:
            return self._doc.get_changes(list(known))
        changes = self._doc.get_changes([])
        if not known:
            return changes
        ancestors, since = known, []
        for change in reversed(changes):  # every descendant of a change comes after it
            if change.hash in ancestors:
                ancestors.update(change.deps)
            else:
                since.append(change)
        since.reverse()
        return since

    def apply_changes(self, data: bytes) -> list[bytes]:
        """Apply `changes_since` output (document chunks, such as a persisted snapshot, may be
        among the changes); returns the hashes of changes that were new here (read from the
        chunks, `applied_hashes`: no walk over the history, unless a snapshot or a change that had
        waited is among them; a change held already may be named again alongside new ones).

        Changes whose dependencies are missing wait inside the document until those arrive.
        """
        chunks = split_chunks(data)
        if not chunks:
            return []
        before = self._doc.get_heads()
        # The binding has no apply_changes; a v1 sync message carrying only changes applies them.
        message = bytes([_SYNC_MESSAGE_V1, 0, 0, 0]) + _uleb128(len(chunks))
        message += b"".join(_uleb128(len(chunk)) + chunk for chunk in chunks)
        self._receive(am.SyncState(), message)
        if set(self._doc.get_heads()) == set(before):
            return []
        new = self._note_chunks(before, chunks)
        if new is None:  # a document chunk, or a change that had waited: ask the history
            return self.change_hashes_since(before)
        return new

    def _note_chunks(self, before: list[bytes], chunks: list[bytes]) -> list[bytes] | None:
        """Remember which of these chunks took the heads from `before` to now (`_note_applied`)
        and return their hashes; None if the chunks cannot tell (a document chunk, or a change
        that had waited for a missing dependency was applied too)."""
        after = self._doc.get_heads()
        ids = change_chunk_ids(chunks)
        # A change that was ever a head was held then (a change that waits is no head): what the
        # chunks depend on among those needs no walk of the history to be known held before. So is
        # genesis, which every state holds from its start and which waits for nothing: skeleton
        # changes (a new asset's, a consent subject's) rest on it.
        held = self.__dict__.setdefault("_past_heads", {})
        new = None if ids is None else applied_hashes(ids, held.keys() | before | GENESIS_HEADS, after)
        self._saw_heads(before)
        self._saw_heads(after)
        if new is not None:
            by_hash = {change: chunk for (change, _), chunk in zip(ids, chunks)}
            self._note_applied(before, after, [(change, by_hash[change]) for change in new])
            tables = [change_chunk_actors(by_hash[change]) for change in new]
            if all(table is not None for table in tables):
                self._index_saw(before, tables)
        return new

    def _saw_heads(self, heads: Iterable[bytes]) -> None:
        """Remember these as heads this document had (the last PAST_HEADS_KEPT)."""
        past = self.__dict__.setdefault("_past_heads", {})
        for head in heads:
            past.pop(head, None)
            past[head] = None
        while len(past) > PAST_HEADS_KEPT:
            del past[next(iter(past))]

    def _note_applied(self, before: list[bytes], after: list[bytes], changes: list[tuple[bytes, bytes]]) -> None:
        """Remember that these (hash, chunk) changes took the heads from `before` to `after`, so
        `change_hashes_since(before)` and `changes_since(before)` need no walk over the history
        (the last APPLIED_KEPT applies, their chunks while they total at most APPLIED_BYTES_MAX)."""
        applied = self.__dict__.setdefault("_applied", [])
        if sum(len(chunk) for _, chunk in changes) > APPLIED_BYTES_MAX:
            return  # too big to keep (a bootstrap): no chain passes through it
        applied.append((frozenset(before), frozenset(after), changes))
        del applied[:-APPLIED_KEPT]
        while sum(len(chunk) for entry in applied for _, chunk in entry[2]) > APPLIED_BYTES_MAX:
            del applied[0]

    def _applied_since(self, heads: frozenset[bytes], now: frozenset[bytes]) -> list[tuple[bytes, bytes]] | None:
        """The changes a chain of remembered applies took the document through from `heads` to
        `now` (None if no such chain: something else changed it in between)."""
        applied = self.__dict__.get("_applied") or []
        for start in range(len(applied) - 1, -1, -1):
            if applied[start][0] != heads:
                continue
            changes, at = [], heads
            for before, after, new in applied[start:]:
                if before != at:
                    break
                changes += new
                at = after
                if at == now:
                    return changes
        return None

    def merge(self, other: MeshState) -> bool:
        """Merge every change of `other` into this document; True if anything was new."""
        before = self._doc.get_heads()
        self._doc.merge(other._doc)
        self._saw_heads(before)
        return self._doc.get_heads() != before

    def merge_snapshot(self, snapshot: MeshState) -> bool:
        """Merge a `from_snapshot` state into this one, which keeps its own changes and actor;
        True if anything was new. `snapshot` is used up: our changes are merged into its document,
        which becomes ours, because merging costs what the merged side lacks, and a snapshot goes
        to a node that lacks most of it."""
        before = self._doc.get_heads()
        snapshot._doc.merge(self._doc)
        snapshot._doc.set_actor(self._doc.get_actor())
        self._doc, snapshot._doc = snapshot._doc, _genesis()  # a document is never shared by two states
        return self._doc.get_heads() != before

    # -- sync protocol --------------------------------------------------------------------------

    @staticmethod
    def new_sync_state() -> am.SyncState:
        """Fresh per-peer sync state; use a new one for every connection (see module notes)."""
        return am.SyncState()

    def generate_sync_message(self, sync_state: am.SyncState) -> bytes | None:
        """The next message for the peer, or None when there is nothing to say right now."""
        message = self._doc.generate_sync_message(sync_state)
        return None if message is None else message.encode()

    def receive_sync_message(self, sync_state: am.SyncState, message: bytes) -> bool:
        """Apply a peer's sync message; True if the document changed.

        Raises RemoteProtocolError on a malformed message.
        """
        before = self._doc.get_heads()
        self._receive(sync_state, message)
        if self._doc.get_heads() == before:
            return False
        chunks = sync_message_changes(message)
        if chunks:  # so that persisting and passing on these changes needs no walk of the history
            self._note_chunks(before, chunks)
        return True

    def _receive(self, sync_state: am.SyncState, message: bytes) -> None:
        try:
            decoded = am.Message.decode(bytes(message))
            self._doc.receive_sync_message(sync_state, decoded)
        except BaseException as exc:
            if not _is_binding_error(exc):
                raise
            raise RemoteProtocolError(f"malformed state sync message: {exc}") from None


# -- helpers for writes --------------------------------------------------------------------------

_ASSET_FIELDS: dict[str, tuple[Any, Callable[[Any], Any]]] = {
    "name": (_S.Str, _as_str),
    "size": (_S.Int, _as_int),
    "media_type": (_S.Str, _as_str),
    "added_at": (_S.F64, _as_float),
    "added_by": (_S.Str, _as_str),
    "retention_s": (_S.F64, _as_float),
    "thumbnail": (_S.Str, _as_str),
    "preview": (_S.Str, _as_str),
}  # field -> (scalar type written, reader); ScalarType is unhashable, hence keyed by name
_ASSET_REQUIRED = ("name", "size", "media_type", "added_at", "added_by")
_ASSET_OPTIONAL = ("retention_s", "thumbnail", "preview")  # absent in records older code wrote


def _asset_fields(record: AssetRecord) -> dict[str, tuple[Any, Any]]:
    """field -> (scalar type, value) for an asset record; None is stored as Null."""
    fields: dict[str, tuple[Any, Any]] = {}
    for key, (kind, _) in _ASSET_FIELDS.items():
        value = getattr(record, key)
        if value is None:
            fields[key] = (_S.Null, None)
        else:
            fields[key] = (kind, float(value) if kind == _S.F64 else value)
    return fields


def _add_keys(
    tx: am.Transaction, parent: bytes, key: str, obj: bytes | None, new: set[str]
) -> bytes:
    """Put `new` keys (value true) into parent[key], creating the map if junk replaced it."""
    if obj is None:
        obj = tx.put_object(parent, key, _MAP)
    for item in sorted(new):
        tx.put(obj, item, _S.Boolean, True)
    return obj


def _canonical(tag: str) -> bool:
    try:
        return normalize_tag(tag) == tag
    except ValueError:
        return False


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not _canonical(tag):
        raise UsageError(f"{tag!r} is not a canonical tag (use normalize_tag)")


def _check_asset(record: AssetRecord) -> None:
    for tag in record.tags:
        _check_tag(tag)
    if len(record.tags) > TAGS_PER_ASSET_MAX:
        raise UsageError(f"an asset has at most {TAGS_PER_ASSET_MAX} tags")
    if len(record.subjects) > SUBJECTS_PER_ASSET_MAX:
        raise UsageError(f"an asset has at most {SUBJECTS_PER_ASSET_MAX} subjects")
    if not record.cid or isinstance(record.size, bool) or record.size < 0:
        raise UsageError("an asset needs a CID and a non-negative size")
