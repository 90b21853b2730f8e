"""Releases: signed statements naming a directory manifest, and signed moves of the current pointer.

Theory of operation:
- A release record {kind "release", mesh, name, seq, root, publisher, created_at} and a publication
  {kind "publish", mesh, release_id, at, publisher} are statements signed like membership's: Ed25519
  over a per-kind prefix (`assetmesh/v1/release\\x00`, `assetmesh/v1/publish\\x00`) followed by the
  canonical CBOR body. A blob is canonical CBOR [publisher's credential chain, [body, signature]],
  so any node checks it offline: the chain must prove the publisher an organizer of this mesh at
  the statement's own time, and the publisher must not have been revoked at or before that time.
- Ids: a release's or publication's id is the first 16 characters of the lower-case base32 of the
  BLAKE3-256 hash of its signed body bytes. The state stores each blob under its id; an entry
  stored under any other key is ignored.
- The current release is the valid publication with the greatest (at, release_id) whose release
  record is present and valid. A pointer whose signature or signer does not verify is ignored, so
  a member who is not an organizer cannot move it. Publications are kept one per id, so replicas
  that merged the same entries pick the same current release.
- The previous release is the one that was current just before the current release was *first*
  published, so repeated rollbacks walk back through history instead of toggling.
- Pure code: time arrives as `now`; stores are passed in. Malformed input of any shape becomes
  CredentialError (statements) or RemoteProtocolError (manifests), with a one-line reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import blake3
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.content.cid import DAG_CBOR, RAW, Cid
from mesh.content.manifest import DirManifest, FileManifest
from mesh.errors import (
    CorruptChunkError,
    CredentialError,
    NotFoundError,
    RemoteProtocolError,
    UsageError,
)
from mesh.ids import b32encode, mesh_id_from_authority_key, node_id_from_public_key
from mesh.ids import public_key_from_node_id
from mesh.state.membership import (
    CHAIN_BYTES_MAX,
    CLOCK_SKEW_S,
    TIME_S_MAX,
    RevocationList,
    Role,
    _cbor_loads,
    _check_authority_key,
    _check_now,
    public_key_bytes,
    verify_chain,
)

RELEASE_ID_CHARS = 16  # base32 characters of BLAKE3(body): 80 bits
RELEASE_NAME_CHARS_MAX = 128
RELEASE_SEQ_MAX = 1 << 53
ROOT_CID_CHARS_MAX = 128
STATEMENT_BYTES_MAX = 1024  # one body; ours are about 250 bytes
BLOB_BYTES_MAX = CHAIN_BYTES_MAX + STATEMENT_BYTES_MAX + 128
RELEASES_READ_MAX = 4096  # entries of the state's release map a reader considers
PUBLICATIONS_READ_MAX = 16384  # ... and of its publication map
PUBLISH_STEP_S = 0.001  # a new publication is dated at least this much after the latest one

_SIGNATURE_BYTES = 64
_PREFIXES = {kind: b"assetmesh/v1/" + kind.encode() + b"\x00" for kind in ("release", "publish", "policy")}
_RELEASE_FIELDS = frozenset({"kind", "mesh", "name", "seq", "root", "publisher", "created_at"})
_PUBLISH_FIELDS = frozenset({"kind", "mesh", "release_id", "at", "publisher"})
_BASE32_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz234567")


@dataclass(frozen=True)
class Release:
    """A verified release record."""

    id: str  # RELEASE_ID_CHARS of base32 BLAKE3 of the signed body
    mesh_id: str  # the mesh it belongs to
    name: str  # human name, e.g. "friday-v2"
    seq: int  # 1 + the greatest seq its publisher saw in the state
    root: str  # text CID of the release's DirManifest
    publisher: str  # node id of the organizer that signed it
    created_at: float  # unix seconds when it was signed


@dataclass(frozen=True)
class Publication:
    """A verified move of the current-release pointer."""

    id: str  # RELEASE_ID_CHARS of base32 BLAKE3 of the signed body
    release_id: str  # the release made current
    at: float  # unix seconds when it was signed; the greatest (at, release_id) wins
    publisher: str  # node id of the organizer that signed it


@dataclass(frozen=True)
class HistoryEntry:
    """One release as `release_history` shows it."""

    release: Release  # the verified record
    current: bool  # it is the current release
    previous: bool  # it is what a rollback without an id would publish
    published_at: float | None  # time of its latest valid publication (it last became current); None if never
    first_published_at: float | None = None  # time of its earliest valid publication; None if never published
    older: bool = False  # listed after the current release (a rollback target); False if none is current


class ReleaseFile(NamedTuple):
    """One file of a release, from its DirManifest."""

    path: str  # relative POSIX path, NFC
    cid: Cid  # the file's CID (a raw chunk, or a FileManifest)
    size: int  # bytes
    media_type: str  # e.g. "text/html"


class BlockReader(Protocol):
    """The part of a ChunkStore the manifest readers need."""

    def get(self, cid: Cid) -> bytes:
        """Verified bytes; NotFoundError if absent."""
        ...


class ReleaseState(Protocol):
    """The part of MeshState the readers need."""

    def release_blobs(self) -> dict[str, bytes]: ...
    def publication_blobs(self) -> dict[str, bytes]: ...
    def revocation_blobs(self) -> dict[str, bytes]: ...


@dataclass(frozen=True)
class _Signed:
    """A blob opened and checked for shape, kind and mesh; signature not yet checked."""

    chain: bytes  # the publisher's credential chain
    body: dict  # the decoded body
    body_bytes: bytes  # the exact signed bytes
    signature: bytes  # 64-byte Ed25519 signature


# --- ids and signing ----------------------------------------------------------------------------


def statement_id(body_bytes: bytes) -> str:
    """The id of a release or publication: base32 BLAKE3-256 of its signed body, truncated."""
    return b32encode(blake3.blake3(body_bytes).digest())[:RELEASE_ID_CHARS]


def _sign_blob(key: Ed25519PrivateKey, chain: bytes, kind: str, body: dict) -> tuple[str, bytes]:
    body_bytes = cbor2.dumps(body, canonical=True)
    statement = [body_bytes, key.sign(_PREFIXES[kind] + body_bytes)]
    blob = cbor2.dumps([bytes(chain), statement], canonical=True)
    return statement_id(body_bytes), blob


def _check_signer(
    authority: bytes, key: Ed25519PrivateKey, chain: bytes, now: float, what: str
) -> str:
    """The signer's node id, if its chain proves it an organizer now; CredentialError otherwise."""
    member = verify_chain(chain, authority, now, expected_node_public_key=public_key_bytes(key))
    if member.role is not Role.ORGANIZER:
        raise CredentialError(f"only organizers may {what}")
    return member.node_id


def create_release(
    authority_public_key: bytes,
    publisher_key: Ed25519PrivateKey,
    publisher_chain: bytes,
    name: str,
    seq: int,
    root: str,
    now: float,
) -> tuple[str, bytes]:
    """(release id, blob) of a release of the DirManifest `root`, signed by an organizer."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    for problem in (_name_problem(name), _seq_problem(seq), _root_problem(root)):
        if problem:
            raise UsageError(problem)
    publisher = _check_signer(authority, publisher_key, publisher_chain, now, "create releases")
    body = {
        "kind": "release",
        "mesh": mesh_id_from_authority_key(authority),
        "name": name,
        "seq": seq,
        "root": root,
        "publisher": publisher,
        "created_at": now,
    }
    return _sign_blob(publisher_key, publisher_chain, "release", body)


def create_publication(
    authority_public_key: bytes,
    publisher_key: Ed25519PrivateKey,
    publisher_chain: bytes,
    release_id: str,
    at: float,
) -> tuple[str, bytes]:
    """(publication id, blob) making `release_id` current as of `at`, signed by an organizer."""
    authority = _check_authority_key(authority_public_key)
    at = _check_now(at)
    problem = _release_id_problem(release_id)
    if problem:
        raise UsageError(problem)
    publisher = _check_signer(authority, publisher_key, publisher_chain, at, "publish releases")
    body = {
        "kind": "publish",
        "mesh": mesh_id_from_authority_key(authority),
        "release_id": release_id,
        "at": at,
        "publisher": publisher,
    }
    return _sign_blob(publisher_key, publisher_chain, "publish", body)


# --- field checks ---------------------------------------------------------------------------------


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not 1 <= len(name) <= RELEASE_NAME_CHARS_MAX:
        return f"a release name has 1 to {RELEASE_NAME_CHARS_MAX} characters"
    if not name.isprintable() or name != name.strip():
        return "a release name is printable, without leading or trailing spaces"
    return None


def check_release_name(name: str) -> str:
    """`name` if it can name a release; UsageError saying why not otherwise."""
    problem = _name_problem(name)
    if problem:
        raise UsageError(problem)
    return name


def _seq_problem(seq: object) -> str | None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= RELEASE_SEQ_MAX:
        return f"a release seq is an integer from 1 to {RELEASE_SEQ_MAX}"
    return None


def _root_problem(root: object) -> str | None:
    if not isinstance(root, str) or len(root) > ROOT_CID_CHARS_MAX:
        return "a release root is the text CID of a directory manifest"
    try:
        parsed = Cid.parse(root)
    except ValueError:
        return "a release root is the text CID of a directory manifest"
    if parsed.codec != DAG_CBOR or str(parsed) != root:
        return "a release root is the canonical text CID of a dag-cbor directory manifest"
    return None


def _release_id_problem(release_id: object) -> str | None:
    ok = (
        isinstance(release_id, str)
        and len(release_id) == RELEASE_ID_CHARS
        and set(release_id) <= _BASE32_CHARS
    )
    return None if ok else f"a release id is {RELEASE_ID_CHARS} base32 characters"


def _node_id_problem(node_id: object) -> str | None:
    try:
        ok = node_id_from_public_key(public_key_from_node_id(node_id)) == node_id
    except (ValueError, TypeError, AttributeError):
        ok = False
    return None if ok else "the publisher is not a node id"


def _time_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "a time is a number"
    if not (math.isfinite(value) and 0 <= value <= TIME_S_MAX):
        return "a time is out of range"
    return None


# --- verification ---------------------------------------------------------------------------------


def _open_blob(blob: object, kind: str, fields: frozenset[str], mesh_id: str) -> _Signed:
    """Decode [chain, [body, signature]] and check the body's shape, kind and mesh."""
    if not isinstance(blob, (bytes, bytearray)):
        raise CredentialError(f"malformed {kind}: expected bytes")
    if len(blob) > BLOB_BYTES_MAX:
        raise CredentialError(f"{kind} too large: at most {BLOB_BYTES_MAX} bytes")
    outer = _cbor_loads(bytes(blob), kind)
    if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)):
        raise CredentialError(f"malformed {kind}: expected [publisher chain, statement]")
    chain, statement = outer
    if not (isinstance(statement, list) and len(statement) == 2):
        raise CredentialError(f"malformed {kind}: a statement is [body, signature]")
    body_bytes, signature = statement
    if not (isinstance(body_bytes, bytes) and isinstance(signature, bytes)):
        raise CredentialError(f"malformed {kind}: a statement is [body, signature]")
    if len(body_bytes) > STATEMENT_BYTES_MAX or len(signature) != _SIGNATURE_BYTES:
        raise CredentialError(f"malformed {kind}: oversized body or bad signature length")
    body = _cbor_loads(body_bytes, kind)
    if not isinstance(body, dict) or body.keys() != fields or body.get("kind") != kind:
        raise CredentialError(f"malformed {kind}: unexpected or missing fields")
    if body["mesh"] != mesh_id:
        raise CredentialError(f"{kind} belongs to another mesh")
    return _Signed(chain, body, body_bytes, signature)


def _check_publisher(
    signed: _Signed, kind: str, authority: bytes, at: float, revocations: RevocationList | None
) -> None:
    """The chain proves the body's publisher an organizer at `at`, unrevoked then, and it signed."""
    publisher = signed.body["publisher"]
    problem = _node_id_problem(publisher)
    if problem:
        raise CredentialError(f"malformed {kind}: {problem}")
    public_key = public_key_from_node_id(publisher)
    try:
        member = verify_chain(signed.chain, authority, at, expected_node_public_key=public_key)
    except CredentialError as exc:
        raise CredentialError(f"{kind} publisher's credential is invalid: {exc}") from None
    if member.role is not Role.ORGANIZER:
        raise CredentialError(f"only organizers may sign a {kind}")
    revocation = revocations.revocation_of(publisher) if revocations is not None else None
    if revocation is not None and at >= revocation.at:
        raise CredentialError(f"{kind} signed after its publisher was revoked")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signed.signature, _PREFIXES[kind] + signed.body_bytes
        )
    except (InvalidSignature, ValueError):
        raise CredentialError(f"bad signature on {kind}") from None


def _checked_time(body: dict, field: str, kind: str, now: float) -> float:
    problem = _time_problem(body[field])
    if problem:
        raise CredentialError(f"malformed {kind}: {field}: {problem}")
    value = float(body[field])
    if value > now + CLOCK_SKEW_S:
        raise CredentialError(f"{kind} dated in the future")
    return value


def verify_release(
    blob: bytes,
    authority_public_key: bytes,
    now: float,
    revocations: RevocationList | None = None,
) -> Release:
    """The release a blob proves, or CredentialError (whatever the input)."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    mesh_id = mesh_id_from_authority_key(authority)
    signed = _open_blob(blob, "release", _RELEASE_FIELDS, mesh_id)
    body = signed.body
    problems = (_name_problem(body["name"]), _seq_problem(body["seq"]), _root_problem(body["root"]))
    for problem in problems:
        if problem:
            raise CredentialError(f"malformed release: {problem}")
    created_at = _checked_time(body, "created_at", "release", now)
    _check_publisher(signed, "release", authority, created_at, revocations)
    return Release(
        id=statement_id(signed.body_bytes), mesh_id=mesh_id, name=body["name"], seq=body["seq"],
        root=body["root"], publisher=body["publisher"], created_at=created_at,
    )


def verify_publication(
    blob: bytes,
    authority_public_key: bytes,
    now: float,
    revocations: RevocationList | None = None,
) -> Publication:
    """The publication a blob proves, or CredentialError (whatever the input)."""
    authority = _check_authority_key(authority_public_key)
    now = _check_now(now)
    signed = _open_blob(blob, "publish", _PUBLISH_FIELDS, mesh_id_from_authority_key(authority))
    problem = _release_id_problem(signed.body["release_id"])
    if problem:
        raise CredentialError(f"malformed publish: {problem}")
    at = _checked_time(signed.body, "at", "publish", now)
    _check_publisher(signed, "publish", authority, at, revocations)
    return Publication(
        id=statement_id(signed.body_bytes), release_id=signed.body["release_id"], at=at,
        publisher=signed.body["publisher"],
    )


def _peek_publication(blob: bytes, mesh_id: str) -> tuple[float, str] | None:
    """(at, release_id) as claimed, without checking signatures; None if malformed."""
    try:
        signed = _open_blob(blob, "publish", _PUBLISH_FIELDS, mesh_id)
    except CredentialError:
        return None
    body = signed.body
    if _release_id_problem(body["release_id"]) or _time_problem(body["at"]):
        return None
    return float(body["at"]), body["release_id"]


# --- reading the state ----------------------------------------------------------------------------


def state_revocations(
    state: ReleaseState, authority_public_key: bytes, now: float
) -> RevocationList:
    """The valid revocations recorded in the state (invalid blobs are skipped)."""
    revocations = RevocationList(authority_public_key)
    for blob in state.revocation_blobs().values():
        try:
            revocations.add(blob, now)
        except CredentialError:
            continue
    return revocations


class ReleaseBook:
    """The verified releases and publications of one state at one time (verified lazily, once)."""

    def __init__(self, state: ReleaseState, authority_public_key: bytes, now: float) -> None:
        self.authority_public_key = _check_authority_key(authority_public_key)
        self.now = _check_now(now)
        self.mesh_id = mesh_id_from_authority_key(self.authority_public_key)
        self.revocations = state_revocations(state, self.authority_public_key, self.now)
        blobs = sorted(state.release_blobs().items())[:RELEASES_READ_MAX]
        self._release_blobs = dict(blobs)
        self._releases: dict[str, Release | None] = {}
        self._claimed = self._claimed_publications(state.publication_blobs())
        self._valid: list[Publication] | None = None

    def _claimed_publications(self, blobs: dict[str, bytes]) -> list[tuple[float, str, str, bytes]]:
        """(at, release_id, id, blob) as claimed, newest first: verification then stops early."""
        claimed = []
        for pub_id, blob in sorted(blobs.items())[:PUBLICATIONS_READ_MAX]:
            peeked = _peek_publication(blob, self.mesh_id)
            if peeked is not None:
                claimed.append((*peeked, pub_id, blob))
        return sorted(claimed, key=lambda item: item[:3], reverse=True)

    def release(self, release_id: str) -> Release | None:
        """The valid release stored under `release_id`, or None."""
        if release_id not in self._releases:
            self._releases[release_id] = self._verify_release(release_id)
        return self._releases[release_id]

    def _verify_release(self, release_id: str) -> Release | None:
        blob = self._release_blobs.get(release_id)
        if blob is None:
            return None
        try:
            release = verify_release(blob, self.authority_public_key, self.now, self.revocations)
        except CredentialError:
            return None
        return release if release.id == release_id else None

    def releases(self) -> list[Release]:
        """Every valid release, newest first by (seq, created_at, id)."""
        found = [r for r in map(self.release, self._release_blobs) if r is not None]
        return sorted(found, key=lambda r: (r.seq, r.created_at, r.id), reverse=True)

    def next_seq(self) -> int:
        """The seq a new release takes: 1 + the greatest valid seq here."""
        return min(max((r.seq for r in self.releases()), default=0) + 1, RELEASE_SEQ_MAX)

    def _publication(self, pub_id: str, blob: bytes) -> Publication | None:
        try:
            found = verify_publication(blob, self.authority_public_key, self.now, self.revocations)
        except CredentialError:
            return None
        if found.id != pub_id or self.release(found.release_id) is None:
            return None
        return found

    def publications(self) -> list[Publication]:
        """Valid publications of valid releases, newest first by (at, release_id, id)."""
        if self._valid is None:
            found = (self._publication(pub_id, blob) for _, _, pub_id, blob in self._claimed)
            self._valid = [p for p in found if p is not None]
        return self._valid

    def _latest_publication(self) -> Publication | None:
        if self._valid is not None:
            return self._valid[0] if self._valid else None
        for _, _, pub_id, blob in self._claimed:  # usually the first one is valid
            found = self._publication(pub_id, blob)
            if found is not None:
                return found
        return None

    def current(self) -> Release | None:
        """The current release: that of the valid publication with the greatest (at, release_id)."""
        latest = self._latest_publication()
        return self.release(latest.release_id) if latest else None

    def latest_publication_at(self) -> float | None:
        """When the current pointer was last validly moved; None if never."""
        latest = self._latest_publication()
        return latest.at if latest else None

    def previous(self) -> Release | None:
        """The release current just before the current one was first published; None if none."""
        publications = self.publications()
        if not publications:
            return None
        current_id = publications[0].release_id
        first = max(i for i, p in enumerate(publications) if p.release_id == current_id)
        older = publications[first + 1 :]
        return self.release(older[0].release_id) if older else None

    def history(self) -> list[HistoryEntry]:
        """Every valid release, newest first, marked current, previous and older than the
        current one, with its first and its latest publication time (both read from the
        publications in the state: nothing else records when a release was published)."""
        current, previous = self.current(), self.previous()
        latest: dict[str, float] = {}
        first: dict[str, float] = {}
        for publication in self.publications():  # newest first
            latest.setdefault(publication.release_id, publication.at)
            first[publication.release_id] = publication.at
        entries, past_current = [], False
        for release in self.releases():
            is_current = current is not None and release.id == current.id
            entries.append(HistoryEntry(
                release=release,
                current=is_current,
                previous=previous is not None and release.id == previous.id,
                published_at=latest.get(release.id),
                first_published_at=first.get(release.id),
                older=past_current,
            ))
            past_current = past_current or is_current
        return entries


def current_release(
    state: ReleaseState, authority_public_key: bytes, now: float
) -> Release | None:
    """The mesh's current release as this state proves it, or None."""
    return ReleaseBook(state, authority_public_key, now).current()


def previous_release(
    state: ReleaseState, authority_public_key: bytes, now: float
) -> Release | None:
    """The release current before the current one was first published (a rollback's target)."""
    return ReleaseBook(state, authority_public_key, now).previous()


def release_history(
    state: ReleaseState, authority_public_key: bytes, now: float
) -> list[HistoryEntry]:
    """Every valid release, newest first, with which one is current and which previous."""
    return ReleaseBook(state, authority_public_key, now).history()


def publication_time(book: ReleaseBook, now: float) -> float:
    """When a new publication should be dated: now, or just after the latest one if this clock is
    behind it (so the new one wins); UsageError if that is beyond the allowed clock skew."""
    latest = book.latest_publication_at()
    at = now if latest is None else max(now, latest + PUBLISH_STEP_S)
    if at > now + CLOCK_SKEW_S:
        raise UsageError("this device's clock is behind the latest publication's: fix it and retry")
    return at


# --- release contents -----------------------------------------------------------------------------


def _as_cid(value: Cid | str) -> Cid:
    if isinstance(value, Cid):
        return value
    try:
        return Cid.parse(value)
    except ValueError as exc:
        raise UsageError(f"{value!r} is not a CID: {exc}") from None


def read_root(store: BlockReader, root_cid: Cid | str) -> DirManifest:
    """A release's DirManifest from `store`; NotFoundError if absent, RemoteProtocolError if it is
    not a directory manifest."""
    root = _as_cid(root_cid)
    data = store.get(root)
    try:
        return DirManifest.decode(data)
    except ValueError as exc:
        problem = f"release root {root} is not a directory manifest: {exc}"
        raise RemoteProtocolError(problem) from None


def _read_file_manifest(store: BlockReader, cid: Cid, size: int) -> FileManifest:
    data = store.get(cid)
    try:
        manifest = FileManifest.decode(data)
    except ValueError as exc:
        raise RemoteProtocolError(f"file manifest {cid} does not decode: {exc}") from None
    if manifest.size != size:
        raise RemoteProtocolError(f"file manifest {cid} does not match its entry's size")
    return manifest


def release_files(store: BlockReader, root_cid: Cid | str) -> list[ReleaseFile]:
    """(path, file CID, size, media type) of every file of a release, sorted by path."""
    manifest = read_root(store, root_cid)
    return [ReleaseFile(e.path, e.cid, e.size, e.media_type) for e in manifest.entries]


def release_chunks(store: BlockReader, root_cid: Cid | str, partial: bool = False,
                   skip: frozenset[str] | set[str] = frozenset()) -> list[Cid]:
    """Every block of a release, each once: the root, then per file in path order its chunk (a
    single-chunk file) or its FileManifest followed by that manifest's chunks. Files whose CID is
    in `skip` (hidden by consent or retention) contribute only their FileManifest (hashes, no
    media: every node needs it to build the release's chunk list); their chunks appear only if
    another file uses them too.

    NotFoundError if a manifest is absent, RemoteProtocolError if one is malformed. With `partial`
    (what is known so far), such a manifest contributes only its own CID.
    """
    root = _as_cid(root_cid)
    try:
        manifest = read_root(store, root)
    except (NotFoundError, RemoteProtocolError):
        if partial:
            return [root]
        raise
    blocks: dict[Cid, None] = {root: None}
    for entry in manifest.entries:
        hidden = str(entry.cid) in skip
        if hidden and entry.cid.codec == RAW:
            continue
        blocks[entry.cid] = None
        if entry.cid.codec == RAW or hidden:
            continue
        try:
            blocks.update(dict.fromkeys(_read_file_manifest(store, entry.cid, entry.size).chunks))
        except (NotFoundError, RemoteProtocolError):
            if not partial:
                raise
    return list(blocks)


def release_totals(store: BlockReader, root_cid: Cid | str) -> tuple[int, int] | None:
    """(total bytes, file count) of a release whose root manifest is here; None otherwise."""
    try:
        manifest = read_root(store, root_cid)
    except (NotFoundError, CorruptChunkError, RemoteProtocolError):
        return None
    return sum(entry.size for entry in manifest.entries), len(manifest.entries)
