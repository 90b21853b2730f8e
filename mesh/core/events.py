"""What goes into a `NodeCore` (events) and what comes out (actions).

Drivers turn the world into events and carry out actions; the core never touches a socket, a
clock or a file. Addresses are (host, port) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.state.membership import Member

Address = tuple[str, int]


# ---- events (driver -> core) -------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    """A connection finished its secure handshake; the peer's credential verified."""

    conn_id: int  # the driver's handle for this connection
    peer: Member  # who the peer proved to be
    chain: bytes  # the peer's credential chain, as presented
    remote: Address | None  # the peer's address as seen by the driver
    outbound: bool  # True if we dialed


@dataclass(frozen=True)
class DataReceived:
    """Bytes arrived on a connection (already decrypted)."""

    conn_id: int  # which connection
    data: bytes  # the bytes, in order


@dataclass(frozen=True)
class Disconnected:
    """A connection is gone (closed by either side, or broken)."""

    conn_id: int  # which connection
    reason: str  # one line for the logs


@dataclass(frozen=True)
class DialFailed:
    """A `Dial` could not produce a session (refused, timed out, handshake failed)."""

    address: Address  # the address that was dialed
    reason: str  # one line for the logs


@dataclass(frozen=True)
class PeerDiscovered:
    """Somebody told us where a member may be reachable."""

    addresses: tuple[Address, ...]  # candidate addresses
    node_id: str | None  # the node there, if the source knows it
    source: str  # "mdns", "static", "hint" or "pex"


@dataclass(frozen=True)
class LocalChanges:
    """Other processes of this node (CLI commands) appended these state changes."""

    data: bytes  # concatenated Automerge change chunks


@dataclass(frozen=True)
class StateReloaded:
    """The driver applied changes that other processes of this node persisted (CLI commands)."""

    heads_before: tuple[bytes, ...]  # the document's heads before they were applied


@dataclass(frozen=True)
class ReleaseInventory:
    """What the local store holds of a release the core asked about (`LoadRelease`)."""

    root: str  # the release's root manifest CID
    manifests: tuple[tuple[str, bytes], ...]  # (CID, bytes) of every manifest of it held here
    present: tuple[str, ...]  # CIDs of its data chunks held here (verified when stored)


@dataclass(frozen=True)
class ObjectsInventory:
    """What the local store holds of the files the core asked about (`LoadObjects`)."""

    objects: tuple[ReleaseInventory, ...]  # per file: its manifest if held (none for a raw chunk), its chunks held


@dataclass(frozen=True)
class LiveWindowSigned:
    """The driver ingests a live stream and signed its next window (mesh.core.live)."""

    blob: bytes  # the signed window


@dataclass(frozen=True)
class FetchRequested:
    """A browser waits for this file (a media original or preview): fetch it now, first of all."""

    cid: str  # the file's CID


@dataclass(frozen=True)
class StoreUsage:
    """How full the local store is (sent after start and whenever it changed noticeably)."""

    used_bytes: int  # bytes of chunks stored
    budget_bytes: int | None  # how much it may hold (`store_budget`); None: no limit


@dataclass(frozen=True)
class ObjectsEvicted:
    """The driver carried out `EvictObjects`: these files are no longer held here."""

    roots: tuple[str, ...]  # file CIDs removed
    freed_bytes: int  # bytes the store freed


@dataclass(frozen=True)
class ObjectsUsed:
    """Browsers read these held files (for least-recently-used eviction)."""

    roots: tuple[str, ...]  # file CIDs


@dataclass(frozen=True)
class ChunkStored:
    """A chunk from `StoreChunk` verified and is now durable in the store."""

    conn_id: int  # the connection it came from
    cid: str  # its CID


@dataclass(frozen=True)
class ChunkRejected:
    """A chunk from `StoreChunk` did not hash to its CID (or could not be stored)."""

    conn_id: int  # the connection it came from
    cid: str  # the CID it claimed
    reason: str  # "hash mismatch", "disk full", ...
    peer_fault: bool  # True if the bytes were wrong (drop and penalise the peer)


@dataclass(frozen=True)
class ChunkServed:
    """The driver finished answering a `ServeChunk` (sent the data, or ChunkMissing)."""

    conn_id: int  # which connection
    cid: str  # which chunk
    sent_bytes: int  # chunk bytes sent (0 if it was missing)


@dataclass(frozen=True)
class Tick:
    """Nothing happened but time passed (a deadline was reached)."""


@dataclass(frozen=True)
class ShutdownRequested:
    """Close every session politely; the driver stops once they are gone."""

    reason: str  # e.g. "SIGTERM"


@dataclass(frozen=True)
class TlsKeyLoaded:
    """The driver's answer to `LoadTlsKey`: the key this home holds for that certificate."""

    fingerprint: str  # the certificate asked about (hex SHA-256)
    key: bytes | None  # PKCS#8 DER of the key held here; None if this home holds none


@dataclass(frozen=True)
class AssetsEvaluated:
    """The driver's answer to `EvaluateAssets`: every well-formed asset of the state as it was
    when asked, and the status (PENDING or WITHDRAWN) of those consent or retention hides."""

    at: float  # the time the evaluation was asked for (retention is judged at it)
    records: tuple  # AssetRecord, sorted by CID
    statuses: dict  # asset CID -> status, for the hidden ones only


Event = Connected | DataReceived | Disconnected | DialFailed | PeerDiscovered | LocalChanges | Tick
Event = Event | StateReloaded | ShutdownRequested | ReleaseInventory | ChunkStored | ChunkRejected
Event = Event | ChunkServed | ObjectsInventory | FetchRequested | StoreUsage | ObjectsEvicted | ObjectsUsed
Event = Event | TlsKeyLoaded | AssetsEvaluated | LiveWindowSigned


# ---- actions (core -> driver) ------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Write these bytes (whole frames) to a connection, in order."""

    conn_id: int  # which connection
    data: bytes  # one or more encoded frames


@dataclass(frozen=True)
class CloseConnection:
    """Close a connection after the bytes already queued for it; then report `Disconnected`."""

    conn_id: int  # which connection
    reason: str  # one line for the logs


@dataclass(frozen=True)
class Dial:
    """Open a secure connection to this address; report `Connected` or `DialFailed`."""

    address: Address  # where to dial
    node_id: str | None  # the node expected there, if known


@dataclass(frozen=True)
class PersistChanges:
    """Append these state changes to the node's durable state log."""

    data: bytes  # concatenated Automerge change chunks


@dataclass(frozen=True)
class AnswerDropAsks:
    """Other boxes asked for drop allowance: answer them from this node's spare units
    (`mesh.state.drops.answer_asks`) in one transaction on the durable state, after every
    PersistChanges queued before this action, so the answer sees this node's latest sales."""

    at: float


@dataclass(frozen=True)
class Emit:
    """A structured event for logs, the dashboard and simulation checks."""

    name: str  # stable dotted name, e.g. "peer.connected"
    fields: tuple[tuple[str, object], ...]  # typed fields, in a stable order

    def as_dict(self) -> dict[str, object]:
        return dict(self.fields)


@dataclass(frozen=True)
class LoadRelease:
    """Report what the store holds of this release (answer with `ReleaseInventory`)."""

    root: str  # root manifest CID


@dataclass(frozen=True)
class LoadObjects:
    """Report what the store holds of these files (answer with one `ObjectsInventory`)."""

    roots: tuple[str, ...]  # file CIDs: FileManifests or raw chunks


@dataclass(frozen=True)
class EvictObjects:
    """Remove these files' chunks from the store, except chunks something kept still needs (a
    release, a file not named here); answer `ObjectsEvicted`."""

    roots: tuple[str, ...]  # file CIDs, least recently used first


@dataclass(frozen=True)
class StoreChunk:
    """Verify these bytes against the CID, store them durably, answer ChunkStored/ChunkRejected."""

    conn_id: int  # the connection they came from
    cid: str  # the CID they claim to be
    data: bytes  # the whole chunk


@dataclass(frozen=True)
class ServeChunk:
    """Send this chunk to the peer (ChunkData pieces, in turn with other frames), re-hashed
    before it leaves; ChunkMissing if the store cannot produce it. Answer `ChunkServed`."""

    conn_id: int  # which connection
    cid: str  # which chunk


@dataclass(frozen=True)
class CancelServe:
    """The peer no longer wants this chunk: skip a `ServeChunk` for it not yet started."""

    conn_id: int  # which connection
    cid: str  # which chunk


@dataclass(frozen=True)
class LoadTlsKey:
    """Say whether this home holds the private key of this certificate (answer `TlsKeyLoaded`)."""

    fingerprint: str  # the certificate in force (hex SHA-256)


@dataclass(frozen=True)
class StoreTlsKey:
    """Keep this private key in the home, readable by this user only (it matches the certificate)."""

    fingerprint: str  # the certificate it belongs to
    key: bytes  # PKCS#8 DER


@dataclass(frozen=True)
class DropTlsKeys:
    """Delete the keys of these certificates from the home: they are no longer in force."""

    fingerprints: tuple[str, ...]  # hex SHA-256 of each


@dataclass(frozen=True)
class ServeTls:
    """What HTTPS should serve now: a chain and its key, or nothing (and why not)."""

    fingerprint: str | None  # the certificate to serve; None: serve no HTTPS
    chain_pem: bytes  # its chain, PEM, leaf first (empty when None)
    key: bytes  # its private key, PKCS#8 DER (empty when None)
    reason: str  # why nothing is served ("" when serving)


@dataclass(frozen=True)
class EvaluateAssets:
    """Read every asset and judge consent and retention at `at`; answer `AssetsEvaluated`. One
    pass over every asset record (~0.3 s at 10,000), so a driver runs it on a fork of the state
    off its event loop; the core keeps serving from the hidden set it has meanwhile."""

    at: float
    authority_public_key: bytes  # whose signed policies count


Action = Send | CloseConnection | Dial | PersistChanges | Emit | LoadRelease | StoreChunk | ServeChunk
Action = Action | CancelServe | LoadObjects | EvictObjects | LoadTlsKey | StoreTlsKey | DropTlsKeys | ServeTls
Action = Action | EvaluateAssets | AnswerDropAsks
