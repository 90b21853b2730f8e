"""Deterministic simulation: a network model (`SimNetwork`) and a `World` of real `NodeCore`s.

Theory of operation:
- `SimNetwork` is pure: hosts, per-link latency and loss, per-host upload/download bandwidth,
  partitions. It only answers "when does this many bytes sent now arrive?" and "can a reach b?".
  Connections are reliable ordered streams, so a lost segment is a retransmission: extra delay
  (`retransmit_s` per lost segment), never missing bytes. Each stream delivers in order.
- A host's capped uplink and downlink are queues: bulk writes wait for what is queued before
  them (an unlimited link queues nothing). A
  write of at most `interleave_bytes_max` (a Ping, a ChunkRequest, a HaveUpdate) does not wait
  behind other streams' bulk, as a small segment on an idle TCP connection does not; its bytes still
  count against the link, and it still waits for earlier bytes of its own stream.
- A partition *breaks* the connections that cross it (both ends see `Disconnected` after one
  latency, as after a reset) and dials across it fail after `dial_timeout_s`. We chose breaking
  over holding bytes: a held stream ends in the same place once the core's `peer_timeout_s`
  fires, only later.
- `World` runs `NodeCore`s on virtual time: a heap of (time, seq, item), where an item delivers one
  event to one core (`core.handle(event, now)`) or completes a simulated handshake. After every
  delivery the world carries out the core's actions (Send, CloseConnection, Dial, PersistChanges,
  Emit), schedules a `Tick` for `next_deadline()`, and checks invariants. Dials authenticate with
  the real `core.authenticate` on both sides, as the secure channel does.
- Every node has a `SimStore` (a `MemoryChunkStore` that survives `crash`/`restart`). The World
  carries out the content actions as `mesh.drivers.runtime` does: `LoadRelease` answers with the
  store's inventory of the release, `StoreChunk` verifies and stores then answers `ChunkStored` or
  `ChunkRejected` after a short processing delay. `ServeChunk` joins its connection's serve queue
  (the driver's per-connection writer): one chunk job at a time, frames (Sends) ahead of jobs not
  yet started. A job writes its `ChunkData` pieces (or `ChunkMissing`) when it starts and ends
  once its last byte is through the path's bottleneck (its arrival minus the latency: the
  driver's `send_all` returns when the socket took the bytes, and a full socket buffer holds it
  until the slowest stage, a WAN link or the air, has drained them); then `ChunkServed` and the
  next job. `CancelServe` marks a queued job of that chunk, which then ends with `ChunkServed`
  and 0 bytes sent when its turn comes; a job already started is sent whole.
  Faults: a node may serve corrupt bytes (`corrupt_serving`) or never answer requests
  (`stall_serving`). Every block a store takes is re-hashed by the per-step invariant checks.
- Several meshes, one box: `World.add_mesh` makes another mesh authority (its own members), and
  `add_node(..., host=OTHER)` runs a core on OTHER's host: the same address, links, Wi-Fi and
  site (a co-op hub box running one core per creator's mesh shares its uplink among them). A dial
  to a shared address reaches the core of the dialer's mesh, as the hub's one listener selects the
  mesh by the handshake's first message; a dialer whose mesh the address does not serve fails the
  handshake (`core.authenticate` refuses the foreign chain), as a stranger's does.
- Beyond one host's links (`mesh.testing.netmodel`): a host may be a station of a shared `Medium`
  (an access point whose airtime all its stations share) and may live at a `Site` (a venue behind
  a WAN link with its own latency, loss and capacity; only public hosts are reachable from other
  sites). Without media and sites the model is exactly the one above.
- Chunk stores may share a `ContentPool`: the first verified copy of a block is kept once and later
  copies are compared byte for byte with it instead of re-hashed (a thousand stores of a 512 MB
  release then hold it once in memory). A block that is not that verified object is re-hashed.
- Everything random comes from `random.Random` seeded by the world's seed (identities too, see
  `mesh.testing.identities`), so one seed replays the same run. Every failure names the seed.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.config import DEFAULT_PORT, CoreLimits
from mesh.content.cid import RAW, Cid
from mesh.content.manifest import FileManifest, decode_manifest
from mesh.content.store import MemoryChunkStore
from mesh.core.events import (
    CancelServe, ShutdownRequested, AssetsEvaluated, EvaluateAssets,
    Address, ChunkRejected, ChunkServed, ChunkStored, CloseConnection, Connected, DataReceived, Dial,
    DialFailed, Disconnected, Emit, Event, EvictObjects, LoadObjects, LoadRelease, ObjectsEvicted, ObjectsInventory,
    PeerDiscovered, PersistChanges, ReleaseInventory, Send, ServeChunk, StoreChunk, StoreUsage, Tick,
)
from mesh.core.node import NodeCore
from mesh.core.session import Phase
from mesh.errors import CorruptChunkError, CredentialError, MeshError, RemoteProtocolError, StoreError
from mesh.state.consent import asset_statuses
from mesh.state.document import MeshState, actor_id
from mesh.testing.content import release_inventory
from mesh.testing.identities import MemberIdentity, TestMesh
from mesh.testing.netmodel import Pipe, Site
from mesh.wire import FRAME_HEADER_BYTES
from mesh.wire import messages as m

START_TIME = 1_750_000_000.0  # virtual unix seconds at time zero (credentials need a real date)
LATENCY_S_DEFAULT = 0.005
SEGMENT_BYTES = 1460
RETRANSMIT_S = 0.2
DIAL_TIMEOUT_S = 3.0
HANDSHAKE_RTTS = 2.0  # Noise XX: three messages plus the responder's first record
TICK_RESOLUTION_S = 0.001
ACTIONS_PER_STEP_MAX = 10_000
QUEUE_EVENTS_MAX = 1_000_000
STUCK_TICKS_MAX = 1_000
SUMMARIES_MAX = 4096  # distinct written byte strings whose summary is remembered
STUCK_S_MAX = 10.0  # ... and for this long: a core that spins a while (a bug) is counted, not fatal
EPHEMERAL_PORT_FIRST = 40000
STORE_OVERHEAD_S = 0.0002  # a StoreChunk's fixed cost (a worker thread, a file, an fsync batch)
STORE_BYTES_PER_S = 400e6  # ... plus hashing and writing its bytes
LOAD_RELEASE_S = 0.002  # reading a release's manifests for its inventory
EVALUATE_ASSETS_S = 0.005  # the agent's consent pass over every asset, on a worker thread
SERVE_JOBS_MAX = 256  # chunk jobs queued per connection (the driver's outbox_frames_max)


class SimulationError(MeshError):
    """A simulated run broke an invariant or missed its goal; the message names the seed."""


# ---- the network model ---------------------------------------------------------------------------


@dataclass
class _Host:
    """A host's bandwidth and the time its links are busy until."""

    upload_bytes_per_s: float | None  # None: unlimited
    download_bytes_per_s: float | None  # None: unlimited
    upload_free_at: float = 0.0  # when the uplink finishes what is queued on it
    download_free_at: float = 0.0  # when the downlink finishes what is queued on it
    medium: Pipe | None = None  # the access point whose airtime it shares, if a Wi-Fi station
    site: str | None = None  # its site; None: the default site
    public: bool = True  # reachable from other sites


class SimNetwork:
    """Latency, bandwidth, loss and partitions between named hosts; pure and seeded."""

    def __init__(self, seed: int | random.Random = 0, latency_s: float = LATENCY_S_DEFAULT,
                 loss: float = 0.0, bandwidth_bytes_per_s: float | None = None,
                 retransmit_s: float = RETRANSMIT_S, segment_bytes: int = SEGMENT_BYTES,
                 interleave_bytes_max: int = SEGMENT_BYTES) -> None:
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.latency_s = latency_s  # default one-way latency
        self.loss = loss  # default probability that a segment is lost (and retransmitted)
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s  # default per-host up and down rate
        self.retransmit_s = retransmit_s
        self.segment_bytes = segment_bytes
        self.interleave_bytes_max = interleave_bytes_max  # writes this small skip other streams' queues
        self._hosts: dict[str, _Host] = {}
        self._links: dict[frozenset[str], tuple[float | None, float | None]] = {}
        self._groups: dict[str, int] = {}  # host -> partition group; absent hosts share group -1
        self._stream_last: dict[object, float] = {}  # stream key -> last arrival (keeps order)
        self.media: dict[str, Pipe] = {}  # access point name -> its airtime
        self.sites: dict[str, Site] = {}  # site name -> its WAN parameters
        self.wan_up: dict[str, Pipe] = {}  # site name -> its WAN uplink
        self.wan_down: dict[str, Pipe] = {}  # site name -> its WAN downlink
        self._plain = True  # no media or sites: the fast original path

    def add_host(self, name: str, upload_bytes_per_s: float | None = None,
                 download_bytes_per_s: float | None = None, *, medium: str | None = None,
                 site: str | None = None, public: bool = True) -> None:
        rate = self.bandwidth_bytes_per_s
        self._hosts[name] = _Host(upload_bytes_per_s or rate, download_bytes_per_s or rate,
                                  medium=self.media[medium] if medium else None, site=site, public=public)
        if site is not None and site not in self.sites:
            raise ValueError(f"unknown site {site}")

    def share_host(self, name: str, host: str) -> None:
        """`name` runs on `host`'s machine: the same links, queues, medium and site."""
        self._hosts[name] = self._hosts[host]

    def add_medium(self, name: str, bytes_per_s: float) -> Pipe:
        """A shared medium (a Wi-Fi access point's airtime) that stations can join."""
        self.media[name] = Pipe(name, bytes_per_s)
        self._plain = False
        return self.media[name]

    def add_site(self, name: str, wan_up_bytes_per_s: float, wan_down_bytes_per_s: float,
                 wan_latency_s: float = 0.02, wan_loss: float = 0.0) -> None:
        """A site behind one WAN link; hosts of different sites talk over both sites' links."""
        self.sites[name] = Site(name, wan_latency_s, wan_loss)
        self.wan_up[name] = Pipe(f"{name}/up", wan_up_bytes_per_s)
        self.wan_down[name] = Pipe(f"{name}/down", wan_down_bytes_per_s)
        self._plain = False

    def host_rates(self, name: str) -> tuple[float | None, float | None]:
        """(upload, download) bytes per second of a host's own links; None is unlimited."""
        host = self._hosts[name]
        return host.upload_bytes_per_s, host.download_bytes_per_s

    def medium_of(self, name: str) -> Pipe | None:
        return self._hosts[name].medium

    def site_of(self, name: str) -> str | None:
        return self._hosts[name].site

    def set_bandwidth(self, name: str, upload_bytes_per_s: float | None,
                      download_bytes_per_s: float | None) -> None:
        host = self._hosts[name]
        host.upload_bytes_per_s, host.download_bytes_per_s = upload_bytes_per_s, download_bytes_per_s

    def set_link(self, a: str, b: str, latency_s: float | None = None, loss: float | None = None) -> None:
        """Override latency and/or loss between two hosts (both directions)."""
        self._links[frozenset((a, b))] = (latency_s, loss)

    def latency(self, a: str, b: str) -> float:
        override = self._links.get(frozenset((a, b)), (None, None))[0] if self._links else None
        if override is not None:
            return override
        return self.latency_s + self._wan(a, b, lambda site: site.wan_latency_s)

    def loss_of(self, a: str, b: str) -> float:
        override = self._links.get(frozenset((a, b)), (None, None))[1] if self._links else None
        if override is not None:
            return override
        return self.loss + self._wan(a, b, lambda site: site.wan_loss)

    def _wan(self, a: str, b: str, part: Callable[[Site], float]) -> float:
        """The WAN's share of a latency or loss between two hosts (0 within a site)."""
        if self._plain:
            return 0.0
        site_a, site_b = self._hosts[a].site, self._hosts[b].site
        if site_a == site_b:
            return 0.0
        return sum(part(self.sites[s]) for s in (site_a, site_b) if s is not None)

    def partition(self, *groups: list[str] | tuple[str, ...] | set[str]) -> None:
        """Split hosts into groups that cannot reach each other; unnamed hosts form one more group."""
        self._groups = {host: index for index, group in enumerate(groups) for host in group}

    def heal(self) -> None:
        self._groups = {}

    def reachable(self, a: str, b: str) -> bool:
        if self._groups.get(a, -1) != self._groups.get(b, -1):
            return False
        if self._plain:
            return True
        host_a, host_b = self._hosts[a], self._hosts[b]
        return host_a.site == host_b.site or (host_a.public and host_b.public)

    def transmit(self, src: str, dst: str, nbytes: int, now: float, stream: object) -> float:
        """When `nbytes` written at `now` on `stream` (src -> dst) have all arrived."""
        up, down = self._hosts[src], self._hosts[dst]
        small = nbytes <= self.interleave_bytes_max
        up_busy = max(now, up.upload_free_at)
        start = now if small else up_busy
        up.upload_free_at = up_busy + _duration(nbytes, up.upload_bytes_per_s)
        first_byte = start + self.latency(src, dst) + self._retransmit_delay(src, dst, nbytes)
        done = first_byte + _duration(nbytes, up.upload_bytes_per_s)
        if down.download_bytes_per_s:  # an unlimited downlink queues nothing (no head-of-line wait)
            down_busy = max(first_byte, down.download_free_at)
            done = max(done, (first_byte if small else down_busy) + _duration(nbytes, down.download_bytes_per_s))
            down.download_free_at = max(done, down_busy + _duration(nbytes, down.download_bytes_per_s))
        if not self._plain:
            done = max(done, self._shared_stages(up, down, nbytes, now, small) + self.latency(src, dst))
        done = max(done, self._stream_last.get(stream, 0.0))
        self._stream_last[stream] = done
        return done

    def _shared_stages(self, up: _Host, down: _Host, nbytes: int, now: float, small: bool) -> float:
        """When the bytes are through the shared pipes on their path (airtime, WAN links)."""
        through = now
        if up.medium is not None and up.medium is down.medium:
            through = up.medium.reserve(now, nbytes, small, crossings=2)  # station -> AP -> station
        else:
            for medium in (up.medium, down.medium):
                if medium is not None:
                    through = max(through, medium.reserve(now, nbytes, small))
        if up.site != down.site:
            for pipe in (self.wan_up.get(up.site), self.wan_down.get(down.site)):
                if pipe is not None:
                    through = max(through, pipe.reserve(now, nbytes, small))
        return through

    def _retransmit_delay(self, src: str, dst: str, nbytes: int) -> float:
        loss = self.loss_of(src, dst)
        if loss <= 0.0:
            return 0.0  # no draw: runs without loss keep their rng sequence
        segments = max(1, math.ceil(nbytes / self.segment_bytes))
        lost = sum(1 for _ in range(segments) if self.rng.random() < loss)
        return lost * self.retransmit_s

    def upload_free_at(self, name: str) -> float:
        """When the host's uplink has sent everything queued on it so far."""
        return self._hosts[name].upload_free_at

    def forget_stream(self, stream: object) -> None:
        self._stream_last.pop(stream, None)


def _duration(nbytes: int, rate: float | None) -> float:
    return 0.0 if not rate else nbytes / rate


# ---- the world -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    """One `Emit` of one core."""

    time: float  # virtual seconds since the world started
    node: str  # the emitting node's name
    name: str  # the event name, e.g. "peer.connected"
    fields: dict  # its fields


def _summary_of(msg: m.Message) -> tuple:
    """(type name, payload bytes or -1, (cid, completes the chunk) for ChunkData)."""
    if isinstance(msg, m.ChunkData):
        return "ChunkData", len(msg.data), (msg.cid, msg.offset + len(msg.data) >= msg.total)
    payload = _state_payload(msg)
    return type(msg).__name__, -1 if payload is None else payload, None


def _state_payload(msg: m.Message) -> int | None:
    """Bytes of shared-state payload a message carries, or None if it carries none."""
    if isinstance(msg, (m.StateSync, m.StateSyncPart)):
        return len(msg.message)
    if isinstance(msg, (m.StateChanges, m.StateChangesPart, m.StateSnapshotPart)):
        return len(msg.data)
    if isinstance(msg, m.StateSnapshotBegin):
        return 32 * len(msg.heads)
    if isinstance(msg, m.StateHeads):
        return 32 * len(msg.heads)
    return None


@dataclass
class Traffic:
    """Byte and message counters of one node (cumulative over restarts)."""

    bytes_out: int = 0  # bytes written to connections
    bytes_in: int = 0  # bytes delivered from connections
    state_sync_bytes_in: int = 0  # state payload bytes delivered (sync messages, changes, heads)
    state_sync_bytes_out: int = 0  # state payload bytes written
    messages_in: Counter = field(default_factory=Counter)  # message type name -> count delivered
    messages_out: Counter = field(default_factory=Counter)  # message type name -> count written
    chunk_bytes_in: Counter = field(default_factory=Counter)  # sender name -> ChunkData bytes delivered
    chunk_bytes_out: Counter = field(default_factory=Counter)  # receiver name -> ChunkData bytes written


@dataclass
class Endpoint:
    """One side of a simulated connection, as that side's driver sees it."""

    conn_id: int  # the handle given to this side's core
    node: str  # whose side this is
    incarnation: int  # the node's incarnation when the connection opened
    peer_conn_id: int  # the other side's handle
    remote: Address  # what this side's driver reports as the remote address
    outbound: bool  # this side dialed
    open: bool = True  # bytes may still be written and delivered
    disconnected: bool = False  # Disconnected was delivered (or is due) to this side
    bytes_out: int = 0  # bytes this side wrote
    bytes_in: int = 0  # bytes delivered to this side
    serve_jobs: deque[_ServeJob] = field(default_factory=deque)  # chunk jobs not yet started, in order
    serving: bool = False  # a chunk job is being sent (its `_ServeDone` is due)


class ContentPool:
    """Verified blocks shared by the stores of one world: each kept once, hashed once."""

    def __init__(self) -> None:
        self.verified: dict[Cid, bytes] = {}  # cid -> the one verified copy
        self.hashed_bytes = 0  # bytes hashed to verify (the rest were compared)

    def verified_copy(self, cid: Cid, data: bytes) -> bytes | None:
        """The pool's verified object if `data` is exactly those bytes; None if unknown or not."""
        known = self.verified.get(cid)
        if known is not None and (known is data or known == data):
            return known
        return None

    def verify(self, cid: Cid, data: bytes) -> bytes | None:
        """`data` as the pool's verified object, or None if it does not hash to `cid`."""
        known = self.verified_copy(cid, data)
        if known is not None:
            return known
        self.hashed_bytes += len(data)
        if not cid.verify(data):
            return None
        data = bytes(data)
        self.verified.setdefault(cid, data)
        return data

    def holds(self, cid: Cid, data: bytes) -> bool:
        """`data` is the very object this pool verified for `cid`."""
        return self.verified.get(cid) is data


class SimStore(MemoryChunkStore):
    """A node's chunk store; remembers which blocks arrived since the invariant checks last ran."""

    def __init__(self, pool: ContentPool | None = None) -> None:
        super().__init__()
        self.pool = pool  # shared verified blocks, or None to hash every put and get
        self.unchecked: list[Cid] = []  # blocks stored since the last check, to re-hash once

    def put(self, cid: Cid, data: bytes) -> bool:
        if self.pool is None:
            new = super().put(cid, data)
        else:
            new = self._put_pooled(cid, data)
        if new:
            self.unchecked.append(cid)
        return new

    def _put_pooled(self, cid: Cid, data: bytes) -> bool:
        """`MemoryChunkStore.put`, verifying through the pool (same checks, same errors)."""
        if len(data) > self.chunk_bytes_max:
            raise StoreError(f"chunk of {len(data)} bytes exceeds chunk_bytes_max={self.chunk_bytes_max}")
        verified = self.pool.verify(cid, data)
        if verified is None:
            raise CorruptChunkError(str(cid), f"data does not match CID {cid}")
        if cid in self._blocks:
            return False
        if self.bytes_stored + len(data) > self.bytes_max:
            raise StoreError(f"memory store full ({self.bytes_stored} of {self.bytes_max} bytes)")
        self._blocks[cid] = verified
        self.bytes_stored += len(verified)
        return True

    def get(self, cid: Cid) -> bytes:
        data = self._blocks.get(cid)
        if data is not None and self.pool is not None and self.pool.holds(cid, data):
            return data  # the pool's verified, immutable object
        return super().get(cid)

    def stored_bytes(self, cid: Cid) -> bytes:
        """The bytes as stored, without verifying them (for the invariant checks)."""
        return self._blocks[cid]

    def intact(self, cid: Cid) -> bool:
        """The stored bytes still hash to `cid` (the pool's own verified object needs no hash)."""
        data = self._blocks[cid]
        return (self.pool is not None and self.pool.holds(cid, data)) or cid.verify(data)


class NodeHandle:
    """One simulated node: identity, address, the live core, what it persisted, its store."""

    def __init__(self, world: World, name: str, identity: MemberIdentity, host: str, port: int) -> None:
        self.world = world
        self.name = name
        self.identity = identity
        self.address: Address = (host, port)
        self.core: NodeCore | None = None  # None while crashed
        self.checked_shape: tuple[int, int] | None = None  # (ready, sessions) at the last full check
        self.incarnation = 0  # bumped on every crash; events for older incarnations are dropped
        self.persisted: list[bytes] = []  # PersistChanges payloads, in order (the durable log)
        self.learned: list[PeerDiscovered] = []  # addresses given at start-up, replayed on restart
        self.traffic = Traffic()
        self.tick_at: float | None = None  # when the next Tick is scheduled
        self.stuck_ticks = 0  # Ticks in a row that left a deadline in the past
        self.stuck_since = 0.0  # when the first of them ran
        self.store = SimStore(world.pool)  # its chunk store; survives crashes (see `World.wipe_store`)
        self.corrupts_served = False  # fault: every chunk it serves has a flipped byte
        self.serving_stalled = False  # fault: it never sends chunk data (ServeChunk or its own)
        self.pins: tuple[str, ...] = ()  # release ids or names its config pins
        self.pin_tags: tuple[str, ...] = ()  # tags whose originals its config pins
        self.budget_bytes: int | None = None  # its store budget (`store_budget`); None: no limit
        self.shared_medium = False  # it declares itself a Wi-Fi station (its [topology] hint, or /sys)

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def alive(self) -> bool:
        return self.core is not None

    @property
    def state(self) -> MeshState:
        return self.live_core().state

    def live_core(self) -> NodeCore:
        if self.core is None:
            raise SimulationError(f"seed={self.world.seed}: node {self.name} is down")
        return self.core

    def peer_names(self) -> set[str]:
        """Names of the nodes this one has a ready session with."""
        if self.core is None:
            return set()
        return {self.world.name_of(s.node_id) for s in self.core.peers()}

    def __repr__(self) -> str:
        return f"<node {self.name} {self.node_id[:10]} {'up' if self.alive else 'down'}>"


@dataclass(frozen=True)
class _Delivery:
    """Deliver `event` to a node's core (if that incarnation is still up)."""

    node: str
    incarnation: int
    event: Event
    summary: tuple = ()  # for DataReceived: what the bytes carry (see `World.summarize`)


@dataclass(frozen=True)
class SeedDocument:
    """A shared-state document every node starts from (nodes that met before the run)."""

    saved: bytes  # MeshState.save() output
    changes: bytes  # the same history as changes (the first entry of each node's durable log)

    @classmethod
    def of(cls, state: MeshState) -> SeedDocument:
        return cls(state.save(), state.changes_since([]))


# One message of a write: (type name, state payload bytes or -1, (cid, last piece?) for ChunkData)
MessageSummary = tuple[str, int, tuple[bytes, bool] | None]


@dataclass(frozen=True)
class _Handshake:
    """A dial whose secure handshake finishes now."""

    dialer: str
    dialer_incarnation: int
    acceptor: str
    acceptor_incarnation: int
    address: Address


@dataclass(frozen=True)
class _Exit:
    """A node that shut down cleanly ends its process."""

    node: str
    incarnation: int


@dataclass
class _ServeJob:
    """A `ServeChunk` waiting in its connection's serve queue."""

    cid: str  # which chunk
    cancelled: bool = False  # a `CancelServe` came first: answer `ChunkServed` with 0 bytes


@dataclass(frozen=True)
class _ServeDone:
    """A chunk job's last byte is through its path's bottleneck: `ChunkServed`, then the next job."""

    conn_id: int  # which connection
    cid: str  # which chunk
    sent_bytes: int  # chunk bytes sent (0: ChunkMissing)


@dataclass(frozen=True)
class _PeerClosed:
    """The other side's close (or crash) reaches this endpoint."""

    conn_id: int
    reason: str


class World:
    """Several real `NodeCore`s on a `SimNetwork`, in virtual time, from one seed."""

    def __init__(self, seed: int, *, limits: CoreLimits = CoreLimits(), network: SimNetwork | None = None,
                 latency_s: float = LATENCY_S_DEFAULT, dial_timeout_s: float = DIAL_TIMEOUT_S,
                 actions_per_step_max: int = ACTIONS_PER_STEP_MAX,
                 queue_events_max: int = QUEUE_EVENTS_MAX, pool: ContentPool | None = None) -> None:
        self.seed = seed
        self.pool = pool  # verified blocks shared by every store, or None (each store hashes)
        self.limits = limits
        self.net = network or SimNetwork(random.Random(f"{seed}/network"), latency_s=latency_s)
        self.dial_timeout_s = dial_timeout_s
        self.actions_per_step_max = actions_per_step_max
        self.queue_events_max = queue_events_max
        self.start_time = START_TIME
        self.now = START_TIME
        self.mesh = TestMesh(random.Random(f"{seed}/identities"), START_TIME)
        self.meshes: dict[str, TestMesh] = {}  # further meshes by name (see `add_mesh`)
        self.nodes: dict[str, NodeHandle] = {}
        self.log: list[LogEntry] = []
        self.endpoints: dict[int, Endpoint] = {}
        self.steps = 0
        self.busy_ticks = 0  # Ticks after which a core's next deadline was still in the past
        self.invariants: list[Callable[[World], None]] = []  # called after every step
        # called after a DataReceived reached a core: (world, node, event, summary of its messages)
        self.observers: list[Callable[[World, NodeHandle, DataReceived, tuple], None]] = []
        # called when a node writes bytes: (world, node, its side's connection, summary of their messages)
        self.write_observers: list[Callable[[World, NodeHandle, int, tuple], None]] = []
        self.action_handlers: dict[type, Callable[[World, NodeHandle, object], None]] = {}  # other actions
        # Stations of a medium know it of themselves (as a box sees its interface is wireless) and
        # declare it to their cores; False: no node knows (nor is told) what its link is.
        self.media_declared = True
        self._by_node_id: dict[str, str] = {}
        self._listeners: dict[Address, list[str]] = {}  # address -> the nodes listening there (a hub's cores)
        self._queue: list[tuple[float, int, object]] = []
        self._seq = itertools.count()
        self._conn_ids = itertools.count(1)
        self._ports = itertools.count(EPHEMERAL_PORT_FIRST)
        self._touched: set[str] = set()  # nodes whose core ran since the last invariant check
        self._session_touched: set[tuple[str, int]] = set()  # (node, conn) given bytes since then
        self._conns_touched: dict[str, list[int]] = {}  # node -> conns given bytes this step
        self._summaries: dict[bytes, tuple] = {}  # written bytes -> what they carry (see `summarize`)
        self.action_handlers.update({LoadRelease: _load_release, StoreChunk: _store_chunk, ServeChunk: _serve_chunk,
                                     LoadObjects: _load_objects, EvictObjects: _evict_objects,
                                     EvaluateAssets: _evaluate_assets, CancelServe: _cancel_serve})

    # ---- building -----------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the world started."""
        return self.now - self.start_time

    def add_mesh(self, name: str) -> TestMesh:
        """Another mesh (its own authority and founder); give its identities to `add_node`."""
        if name in self.meshes:
            raise SimulationError(f"seed={self.seed}: mesh {name} exists")
        self.meshes[name] = TestMesh(random.Random(f"{self.seed}/identities/{name}"), START_TIME, f"{name}-founder")
        return self.meshes[name]

    def add_node(self, name: str, role: str = "edge", *, identity: MemberIdentity | None = None,
                 upload_bytes_per_s: float | None = None,
                 download_bytes_per_s: float | None = None, medium: str | None = None,
                 site: str | None = None, public: bool = True,
                 document: SeedDocument | None = None, pins: tuple[str, ...] = (),
                 host: str | None = None) -> NodeHandle:
        """A new member node (real credentials, invited by the mesh founder), started now.

        `medium`, `site` and `public` place it in the network model (see `SimNetwork.add_host`);
        `document` is shared state it already holds (and has persisted); `pins` are the release
        ids or names its config pins (a hub's). With `host`, it runs on that node's machine (its
        address and links; the placement arguments are ignored): a hub's core for another mesh."""
        if name in self.nodes:
            raise SimulationError(f"seed={self.seed}: node {name} exists")
        identity = identity or self.mesh.add_member(name, role, self.now)
        if host is not None:
            ip = self.nodes[host].address[0]
        else:
            index = len(self.nodes)
            ip = f"10.{index // 62500}.{index // 250 % 250}.{index % 250 + 1}"
        handle = NodeHandle(self, name, identity, ip, DEFAULT_PORT)
        handle.pins = tuple(pins)
        handle.shared_medium = self.nodes[host].shared_medium if host else medium is not None and self.media_declared
        self.nodes[name] = handle
        self._by_node_id[identity.node_id] = name
        self._listeners.setdefault(handle.address, []).append(name)
        if host is not None:
            self.net.share_host(name, host)
        else:
            self.net.add_host(name, upload_bytes_per_s, download_bytes_per_s, medium=medium, site=site, public=public)
        if document is None:
            self._start(handle, MeshState(self._actor(handle)))
        else:
            handle.persisted.append(document.changes)
            self._start(handle, MeshState.load(document.saved, self._actor(handle)))
        return handle

    def node(self, name: str) -> NodeHandle:
        return self.nodes[name]

    def name_of(self, node_id: str) -> str:
        return self._by_node_id.get(node_id, node_id[:10])

    def _actor(self, handle: NodeHandle) -> bytes:
        suffix = random.Random(f"{self.seed}/{handle.name}/actor/{handle.incarnation}").randbytes(8)
        return actor_id(handle.node_id, suffix)

    def _start(self, handle: NodeHandle, state: MeshState) -> None:
        rng = random.Random(f"{self.seed}/{handle.name}/core/{handle.incarnation}")
        handle.core = NodeCore(handle.identity.core_identity(), state, rng, self.now, self.limits,
                               listen_port=handle.address[1], pins=handle.pins, pin_tags=handle.pin_tags)
        handle.core.offload_assets = True  # as the agent runs it (see `_evaluate_assets`)
        if handle.shared_medium:
            handle.core.declare_shared_medium(True)  # only its own link: never who else shares it
        handle.tick_at = None
        self._process(handle)
        if handle.budget_bytes is not None:
            self.report_usage(handle)
        for event in handle.learned:
            self._deliver_now(handle, event)

    def discover(self, a: str, b: str, source: str = "mdns", node_id_known: bool = True) -> None:
        """Tell node `a` where node `b` listens (and remember it across restarts of `a`)."""
        target = self.nodes[b]
        event = PeerDiscovered((target.address,), target.node_id if node_id_known else None, source)
        self.nodes[a].learned.append(event)
        if self.nodes[a].alive:
            self._deliver_now(self.nodes[a], event)

    def add_static_peer(self, a: str, b: str) -> None:
        """`b` is in `a`'s static peer list (`--peer`): dialed and retried forever."""
        self.discover(a, b, source="static", node_id_known=False)

    def discover_all(self, source: str = "mdns") -> None:
        """Every node discovers every other (a LAN where mDNS works)."""
        for a in self.nodes:
            for b in self.nodes:
                if a != b:
                    self.discover(a, b, source)

    # ---- driving ------------------------------------------------------------------------------

    def mutate(self, name: str, change: Callable[[MeshState], object]) -> object:
        """Run a local mutation on a node (like a CLI command in the agent); returns its result."""
        handle = self.nodes[name]
        result: list[object] = []
        handle.live_core().mutate(lambda state: result.append(change(state)), self.now)
        self._process(handle)
        return result[0] if result else None

    def inject(self, name: str, event: Event) -> None:
        """Deliver an arbitrary event to a node now (e.g. junk `DataReceived`)."""
        self._deliver_now(self.nodes[name], event)

    def step(self) -> bool:
        """Deliver the next queued item; False if the queue is empty."""
        if not self._queue:
            return False
        at, _, item = heapq.heappop(self._queue)
        self.now = max(self.now, at)
        self.steps += 1
        if isinstance(item, _Delivery):
            self._on_delivery(item)
        elif isinstance(item, _Handshake):
            self._on_handshake(item)
        elif isinstance(item, _Exit):
            if self.nodes[item.node].incarnation == item.incarnation and self.nodes[item.node].alive:
                self.crash(item.node)
        self._check_invariants()
        return True

    def run_until(self, predicate: Callable[[World], bool], timeout_s: float, what: str = "") -> float:
        """Step until `predicate(world)` holds; the virtual seconds it took. SimulationError on timeout."""
        started = self.now
        deadline = self.now + timeout_s
        while not predicate(self):
            if not self._queue or self._queue[0][0] > deadline:
                self.now = max(self.now, deadline)
                raise SimulationError(
                    f"seed={self.seed}: {what or getattr(predicate, '__name__', 'condition')} not reached "
                    f"within {timeout_s} virtual s (t={self.elapsed:.3f}); {self.describe()}"
                )
            self.step()
        return self.now - started

    def run_for(self, seconds: float) -> None:
        """Step through everything due in the next `seconds` virtual seconds."""
        deadline = self.now + seconds
        while self._queue and self._queue[0][0] <= deadline:
            self.step()
        self.now = max(self.now, deadline)

    # ---- faults -------------------------------------------------------------------------------

    def partition(self, *groups: list[str]) -> None:
        """Split the nodes; connections across the split break now (see the module notes)."""
        self.net.partition(*groups)
        for endpoint in list(self.endpoints.values()):
            peer = self.endpoints.get(endpoint.peer_conn_id)
            if endpoint.open and peer is not None and not self.net.reachable(endpoint.node, peer.node):
                self._break(endpoint, "network partition")

    def heal(self) -> None:
        self.net.heal()

    def set_budget(self, name: str, budget_bytes: int | None) -> None:
        """Give a node a store budget (as `store_budget` in its config does)."""
        handle = self.nodes[name]
        handle.budget_bytes = budget_bytes
        if handle.alive:
            self.report_usage(handle)

    def report_usage(self, handle: NodeHandle) -> None:
        """Tell the node how full its store is (the runtime does after store batches)."""
        self._deliver_now(handle, StoreUsage(handle.store.bytes_stored, handle.budget_bytes))

    def purge(self, name: str) -> int:
        """Run the agent's periodic purge on a node (`mesh.drivers.purge.agent_keep_set`): delete
        every block nothing it keeps needs; how many blocks went."""
        from mesh.drivers.purge import agent_keep_set

        handle = self.nodes[name]
        core, store = handle.live_core(), handle.store
        keep = agent_keep_set(core.state, store, core.identity.authority_public_key, self.now,
                              core.arriving_chunks(), core.withheld, core.kept_roots(), handle.node_id)
        live: set[Cid] = set()
        for text in keep.roots:
            try:
                root = Cid.parse(text)
            except ValueError:
                continue
            live.add(root)
            if root.codec != RAW and store.has(root):  # a file's manifest: its chunks too (a release lists its own)
                manifest = decode_manifest(store.get(root))
                live.update(manifest.chunks if isinstance(manifest, FileManifest) else ())
        dead = [cid for cid in store.cids() if cid not in live]
        for cid in dead:
            store.delete(cid)
        return len(dead)

    def wipe_store(self, name: str) -> None:
        """Lose a node's chunk store (a new disk); do it while the node is down."""
        self.nodes[name].store = SimStore(self.pool)

    def corrupt_serving(self, name: str, on: bool = True) -> None:
        """Fault: every chunk the node serves from now on carries a flipped byte."""
        self.nodes[name].corrupts_served = on

    def stall_serving(self, name: str, on: bool = True) -> None:
        """Fault: the node takes chunk requests but never sends anything back for them."""
        self.nodes[name].serving_stalled = on

    def crash(self, name: str) -> None:
        """kill -9: the core is gone; its peers see their connections close."""
        handle = self.nodes[name]
        handle.core = None
        handle.incarnation += 1
        for endpoint in list(self.endpoints.values()):
            if endpoint.node == name:
                self._break(endpoint, "peer crashed")

    def leave(self, name: str, grace_s: float = 1.0) -> None:
        """A clean exit: the core is asked to shut down, then the process ends `grace_s` later."""
        handle = self.nodes[name]
        self._deliver_now(handle, ShutdownRequested("leaving"))
        incarnation = handle.incarnation
        self._push(self.now + grace_s, _Exit(name, incarnation))

    def restart(self, name: str) -> NodeHandle:
        """Start a crashed node again from its persisted changes (a new process: a new actor)."""
        handle = self.nodes[name]
        if handle.alive:
            raise SimulationError(f"seed={self.seed}: node {name} is running")
        state = MeshState(self._actor(handle))
        state.apply_changes(b"".join(handle.persisted))
        self._start(handle, state)
        return handle

    def _break(self, endpoint: Endpoint, reason: str) -> None:
        """Both ends of a connection learn it is gone (after one latency for the far end)."""
        peer = self.endpoints.get(endpoint.peer_conn_id)
        if endpoint.open:
            self._close_local(endpoint, reason)
        if peer is not None and peer.open:
            self._close_local(peer, reason, at=self.now + self.net.latency(endpoint.node, peer.node))

    # ---- queries ------------------------------------------------------------------------------

    def alive(self) -> list[NodeHandle]:
        return [h for h in self.nodes.values() if h.alive]

    def all_connected(self, names: list[str] | None = None) -> bool:
        """Every listed (default: live) node has a ready session with every other listed one."""
        chosen = names or [h.name for h in self.alive()]
        return all(set(chosen) - {a} <= self.nodes[a].peer_names() for a in chosen)

    def converged(self, names: list[str] | None = None) -> bool:
        """The listed (default: live) nodes have identical document heads."""
        chosen = names or [h.name for h in self.alive()]
        heads = [self.nodes[n].state.heads() for n in chosen]
        return all(h == heads[0] for h in heads)

    def events(self, name: str | None = None, node: str | None = None) -> list[LogEntry]:
        return [e for e in self.log if (name is None or e.name == name) and (node is None or e.node == node)]

    def connections(self, name: str) -> list[Endpoint]:
        """Open endpoints of a node."""
        return [e for e in self.endpoints.values() if e.node == name and e.open]

    def describe(self) -> str:
        parts = []
        for h in self.nodes.values():
            peers = ",".join(sorted(h.peer_names())) if h.alive else "-"
            parts.append(f"{h.name}[{'up' if h.alive else 'down'} peers={peers}]")
        return f"replay with World(seed={self.seed}); " + " ".join(parts)

    def fail(self, message: str) -> SimulationError:
        return SimulationError(f"seed={self.seed} t={self.elapsed:.3f}: {message}; {self.describe()}")

    # ---- the event loop -----------------------------------------------------------------------

    def _push(self, at: float, item: object) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), item))

    def _deliver_at(self, at: float, handle: NodeHandle, event: Event) -> None:
        self._push(at, _Delivery(handle.name, handle.incarnation, event))

    def _deliver_now(self, handle: NodeHandle, event: Event) -> None:
        core = handle.live_core()
        core.handle(event, self.now)
        self._process(handle)

    def _on_delivery(self, item: _Delivery) -> None:
        handle = self.nodes[item.node]
        if handle.core is None or handle.incarnation != item.incarnation:
            return  # sent to a process that has since crashed
        event = item.event
        if isinstance(event, Tick):
            handle.tick_at = None
        elif isinstance(event, DataReceived):
            endpoint = self.endpoints.get(event.conn_id)
            if endpoint is None or not endpoint.open:
                return  # the connection closed before these bytes arrived
            endpoint.bytes_in += len(event.data)
            handle.traffic.bytes_in += len(event.data)
            peer = self.endpoints[endpoint.peer_conn_id].node
            self._count(item.summary, handle.traffic, inbound=True, peer=peer)
            self._session_touched.add((handle.name, event.conn_id))
        elif isinstance(event, _PeerClosed):
            return self._on_peer_closed(handle, event)
        elif isinstance(event, _ServeDone):
            return self._on_serve_done(handle, event)
        handle.core.handle(event, self.now)
        self._process(handle, after_tick=isinstance(event, Tick))
        if self.observers and isinstance(event, DataReceived):
            for observer in self.observers:
                observer(self, handle, event, item.summary)

    def _process(self, handle: NodeHandle, after_tick: bool = False) -> None:
        """Carry out the core's actions, then make sure a Tick comes by its next deadline."""
        core = handle.live_core()
        self._touched.add(handle.name)
        actions = core.take_actions()
        if len(actions) > self.actions_per_step_max:
            raise self.fail(f"{handle.name} produced {len(actions)} actions in one step")
        for action in actions:
            if isinstance(action, Send):
                self._on_send(handle, action)
            elif isinstance(action, CloseConnection):
                self._on_close(handle, action)
            elif isinstance(action, Dial):
                self._on_dial(handle, action)
            elif isinstance(action, PersistChanges):
                handle.persisted.append(action.data)
            elif isinstance(action, Emit):
                self.log.append(LogEntry(self.elapsed, handle.name, action.name, action.as_dict()))
            elif type(action) in self.action_handlers:
                self.action_handlers[type(action)](self, handle, action)
            else:
                raise self.fail(f"{handle.name} asked for {type(action).__name__}: register a World.action_handlers entry")
        self._schedule_tick(handle, after_tick)

    def _schedule_tick(self, handle: NodeHandle, after_tick: bool) -> None:
        deadline = handle.live_core().next_deadline()
        if deadline is None:
            return
        if after_tick and deadline <= self.now:
            handle.stuck_ticks += 1
            self.busy_ticks += 1
            if handle.stuck_ticks == 1:
                handle.stuck_since = self.now
            if handle.stuck_ticks > STUCK_TICKS_MAX and self.now - handle.stuck_since > STUCK_S_MAX:
                raise self.fail(f"{handle.name}'s next_deadline stays in the past ({deadline - self.start_time:.3f})")
        elif after_tick:
            handle.stuck_ticks = 0
        at = max(deadline, self.now + TICK_RESOLUTION_S)
        if handle.tick_at is None or at < handle.tick_at:
            handle.tick_at = at
            self._deliver_at(at, handle, Tick())

    # ---- actions ------------------------------------------------------------------------------

    def _on_send(self, handle: NodeHandle, action: Send) -> None:
        data = action.data
        if (handle.serving_stalled or handle.corrupts_served) and self.summarize(data)[0][0] == "ChunkData":
            # The faults cover chunk data a core sends itself (manifests it holds in memory) too.
            if handle.serving_stalled:
                return
            msg = m.decode_message(data[FRAME_HEADER_BYTES:])
            data = m.encode(dataclasses.replace(msg, data=_flip_byte(msg.data)))
        self.write(handle, action.conn_id, data)

    def write(self, handle: NodeHandle, conn_id: int, data: bytes, summary: tuple | None = None) -> bool:
        """Queue bytes on a connection now (bandwidth, latency, order); False if it is closed.

        `summary` is what the bytes carry, if the writer knows (else they are decoded once)."""
        return self.write_arriving(handle, conn_id, data, summary) is not None

    def write_arriving(self, handle: NodeHandle, conn_id: int, data: bytes,
                       summary: tuple | None = None) -> float | None:
        """`write`, answering when the bytes arrive (None: the connection is closed)."""
        endpoint = self.endpoint_of(handle, conn_id)
        peer = self.endpoints[endpoint.peer_conn_id]
        if not endpoint.open or not peer.open:
            return None  # writing to a closed connection: the driver drops it
        endpoint.bytes_out += len(data)
        handle.traffic.bytes_out += len(data)
        if summary is None:
            summary = self.summarize(data)
        self._count(summary, handle.traffic, inbound=False, peer=peer.node)
        for observer in self.write_observers:
            observer(self, handle, conn_id, summary)
        at = self.net.transmit(handle.name, peer.node, len(data), self.now, endpoint.conn_id)
        receiver = self.nodes[peer.node]
        self._push(at, _Delivery(receiver.name, receiver.incarnation, DataReceived(peer.conn_id, data), summary))
        return at

    def endpoint_of(self, handle: NodeHandle, conn_id: int) -> Endpoint:
        """The node's side of a connection; SimulationError if the core named one it never had."""
        endpoint = self.endpoints.get(conn_id)
        if endpoint is None or endpoint.node != handle.name:
            raise self.fail(f"{handle.name} used unknown connection {conn_id}")
        return endpoint

    def deliver_later(self, handle: NodeHandle, delay_s: float, event: Event) -> None:
        """Deliver `event` to the node's current incarnation after `delay_s` (dropped if it crashes)."""
        self._deliver_at(self.now + delay_s, handle, event)

    def _on_close(self, handle: NodeHandle, action: CloseConnection) -> None:
        endpoint = self.endpoints.get(action.conn_id)
        if endpoint is None or endpoint.node != handle.name:
            raise self.fail(f"{handle.name} closed unknown connection {action.conn_id}")
        if not endpoint.open:
            return
        self._close_local(endpoint, action.reason)
        peer = self.endpoints[endpoint.peer_conn_id]
        if peer.open:  # the FIN follows the bytes already written
            at = self.net.transmit(handle.name, peer.node, 0, self.now, endpoint.conn_id)
            self._push(at, _Delivery(peer.node, peer.incarnation, _PeerClosed(peer.conn_id, "closed by peer")))

    def _close_local(self, endpoint: Endpoint, reason: str, at: float | None = None) -> None:
        """Stop this endpoint's traffic and tell its core `Disconnected` (now or at `at`)."""
        if at is not None:
            self._push(at, _Delivery(endpoint.node, endpoint.incarnation, _PeerClosed(endpoint.conn_id, reason)))
            return
        endpoint.open = False
        self.net.forget_stream(endpoint.conn_id)
        if not endpoint.disconnected:
            endpoint.disconnected = True
            self._push(self.now, _Delivery(endpoint.node, endpoint.incarnation, Disconnected(endpoint.conn_id, reason)))

    def queue_serve(self, handle: NodeHandle, conn_id: int, cid: str) -> None:
        """A `ServeChunk` joins its connection's serve queue (started now if the queue is idle)."""
        endpoint = self.endpoint_of(handle, conn_id)
        if not endpoint.open:
            return  # the connection is gone, and so is its outbox
        if len(endpoint.serve_jobs) >= SERVE_JOBS_MAX:
            raise self.fail(f"{handle.name} queued more than {SERVE_JOBS_MAX} chunk jobs on connection {conn_id}")
        endpoint.serve_jobs.append(_ServeJob(cid))
        if not endpoint.serving:
            self._next_serve(handle, endpoint)

    def cancel_serve(self, handle: NodeHandle, conn_id: int, cid: str) -> None:
        """Mark a queued (not started) job of `cid`; a job being sent goes out whole."""
        endpoint = self.endpoint_of(handle, conn_id)
        for job in endpoint.serve_jobs:
            if job.cid == cid and not job.cancelled:
                job.cancelled = True
                return

    def _next_serve(self, handle: NodeHandle, endpoint: Endpoint) -> None:
        """Start the connection's next chunk job; cancelled ones are answered at their turn."""
        while endpoint.serve_jobs and endpoint.open:
            job = endpoint.serve_jobs.popleft()
            if job.cancelled:
                self._deliver_now(handle, ChunkServed(endpoint.conn_id, job.cid, 0))
                if endpoint.serving:
                    return  # the core's answer queued (and so started) another job
                continue
            if handle.serving_stalled:
                continue  # a stalled server takes requests and never answers them
            arrival, sent = _send_chunk(self, handle, endpoint.conn_id, job.cid)
            if arrival is None:
                return  # the connection closed under the write
            peer = self.endpoints[endpoint.peer_conn_id].node
            through = max(self.now, arrival - self.net.latency(handle.name, peer))
            endpoint.serving = True
            self._push(through, _Delivery(handle.name, handle.incarnation, _ServeDone(endpoint.conn_id, job.cid, sent)))
            return

    def _on_serve_done(self, handle: NodeHandle, event: _ServeDone) -> None:
        endpoint = self.endpoints.get(event.conn_id)
        if endpoint is None or not endpoint.open:
            return  # the connection closed: its core forgot what it was serving there
        endpoint.serving = False
        self._deliver_now(handle, ChunkServed(event.conn_id, event.cid, event.sent_bytes))
        if not endpoint.serving:  # (the core may have queued, and so started, another meanwhile)
            self._next_serve(handle, endpoint)

    def _on_peer_closed(self, handle: NodeHandle, event: _PeerClosed) -> None:
        endpoint = self.endpoints.get(event.conn_id)
        if endpoint is not None and endpoint.open:
            self._close_local(endpoint, event.reason)

    def _listener_for(self, dialer: NodeHandle, address: Address) -> NodeHandle | None:
        """The live core at `address` the dialer's handshake selects: its own mesh's, else any
        (whose authentication then refuses the dialer, as a hub's listener refuses a stranger)."""
        live = [self.nodes[n] for n in self._listeners.get(address, ()) if self.nodes[n].alive]
        mine = [h for h in live if h.identity.mesh_id == dialer.identity.mesh_id]
        return (mine or live or [None])[0]

    def _on_dial(self, handle: NodeHandle, action: Dial) -> None:
        acceptor = self._listener_for(handle, action.address)
        if acceptor is None or not acceptor.alive:
            rtt = 2 * self.net.latency_s
            return self._deliver_at(self.now + rtt, handle, DialFailed(action.address, "connection refused"))
        if not self.net.reachable(handle.name, acceptor.name):
            return self._deliver_at(self.now + self.dial_timeout_s, handle, DialFailed(action.address, "timed out"))
        rtt = 2 * self.net.latency(handle.name, acceptor.name)
        self._push(self.now + HANDSHAKE_RTTS * rtt, _Handshake(
            handle.name, handle.incarnation, acceptor.name, acceptor.incarnation, action.address))

    def _on_handshake(self, item: _Handshake) -> None:
        dialer, acceptor = self.nodes[item.dialer], self.nodes[item.acceptor]
        if dialer.incarnation != item.dialer_incarnation or not dialer.alive:
            return
        failure = self._handshake_failure(item, dialer, acceptor)
        if failure is not None:
            return self._deliver_now(dialer, DialFailed(item.address, failure))
        try:  # the initiator checks the responder first (message 2), then the responder (message 3)
            acceptor_member = dialer.live_core().authenticate(acceptor.identity.chain, acceptor.identity.public_key, self.now)
            dialer_member = acceptor.live_core().authenticate(dialer.identity.chain, dialer.identity.public_key, self.now)
        except CredentialError as exc:
            return self._deliver_now(dialer, DialFailed(item.address, f"handshake failed: {exc}"))
        self._open_connection(dialer, acceptor, item.address, dialer_member, acceptor_member)

    def _handshake_failure(self, item: _Handshake, dialer: NodeHandle, acceptor: NodeHandle) -> str | None:
        if acceptor.incarnation != item.acceptor_incarnation or not acceptor.alive:
            return "connection reset during the handshake"
        if not self.net.reachable(dialer.name, acceptor.name):
            return "timed out during the handshake"
        return None

    def _open_connection(self, dialer: NodeHandle, acceptor: NodeHandle, address: Address,
                         dialer_member, acceptor_member) -> None:
        dial_id, accept_id = next(self._conn_ids), next(self._conn_ids)
        ephemeral = (dialer.address[0], next(self._ports))
        self.endpoints[dial_id] = Endpoint(dial_id, dialer.name, dialer.incarnation, accept_id, address, True)
        self.endpoints[accept_id] = Endpoint(accept_id, acceptor.name, acceptor.incarnation, dial_id, ephemeral, False)
        self._deliver_at(self.now, acceptor, Connected(accept_id, dialer_member, dialer.identity.chain, ephemeral, False))
        self._deliver_at(self.now, dialer, Connected(dial_id, acceptor_member, acceptor.identity.chain, address, True))

    # ---- accounting and invariants ------------------------------------------------------------

    def summarize(self, data: bytes) -> tuple[MessageSummary, ...]:
        """What written bytes carry, decoded once for both ends' counters and the observers (and
        once only for the same bytes sent to many peers: a HaveUpdate goes to dozens)."""
        summary = self._summaries.get(data)
        if summary is None:
            if len(self._summaries) >= SUMMARIES_MAX:
                self._summaries.clear()
            summary = self._summaries[data] = self._decode_summary(data)
        return summary

    @staticmethod
    def _decode_summary(data: bytes) -> tuple[MessageSummary, ...]:
        decoder = m.MessageDecoder()
        found: list[MessageSummary] = []
        try:
            decoder.receive_data(data)
            while (msg := decoder.next_message()) is not None:
                found.append(_summary_of(msg))
        except (RemoteProtocolError, MeshError):
            found.append(("<undecodable>", -1, None))
        return tuple(found)

    @staticmethod
    def _count(summary: tuple, traffic: Traffic, inbound: bool, peer: str) -> None:
        messages = traffic.messages_in if inbound else traffic.messages_out
        for kind, payload, _ in summary:
            messages[kind] += 1
            if kind == "ChunkData":
                (traffic.chunk_bytes_in if inbound else traffic.chunk_bytes_out)[peer] += payload
            elif payload >= 0:
                if inbound:
                    traffic.state_sync_bytes_in += payload
                else:
                    traffic.state_sync_bytes_out += payload

    def check_stores(self) -> None:
        """Re-hash every block of every store (the per-step check only re-hashes new ones)."""
        for handle in self.nodes.values():
            bad = [str(cid) for cid in handle.store.cids() if not handle.store.intact(cid)]
            if bad:
                raise self.fail(f"{handle.name}'s store holds corrupt blocks: {bad[:3]}")

    def _check_new_blocks(self, handle: NodeHandle) -> None:
        store = handle.store
        fresh, store.unchecked = store.unchecked, []
        for cid in fresh:
            if store.has(cid) and not store.intact(cid):
                raise self.fail(f"{handle.name} stored {cid}, whose bytes do not hash to it")

    def _check_invariants(self) -> None:
        if len(self._queue) > self.queue_events_max:
            raise self.fail(f"{len(self._queue)} queued events (more than {self.queue_events_max})")
        touched, self._touched = self._touched, set()
        self._conns_touched = {}
        for node, conn in self._session_touched:
            self._conns_touched.setdefault(node, []).append(conn)
        for name in sorted(touched):  # a core changes only when it runs, its store only then too
            handle = self.nodes[name]
            if handle.store.unchecked:
                self._check_new_blocks(handle)
            if handle.core is not None:
                self._check_core(handle, handle.core)
        self._session_touched.clear()
        for invariant in self.invariants:
            invariant(self)

    def _check_core(self, handle: NodeHandle, core: NodeCore) -> None:
        """Every bound of the core holds (buffers only of sessions that took bytes this step)."""
        limits = core.limits
        problems = []
        if len(core._sessions) > limits.sessions_max:
            live = [s for s in core._sessions.values() if s.phase is not Phase.CLOSING]
            if len(live) > limits.sessions_max:
                problems.append(f"{len(live)} live sessions > sessions_max")
        if len(core._addresses) > limits.addresses_max:
            problems.append(f"{len(core._addresses)} addresses > addresses_max")
        for conn_id in self._session_conns(handle.name):
            s = core._sessions.get(conn_id)
            if s is None:
                continue
            if s.decoder.buffered_bytes > limits.receive_buffer_bytes_max:
                problems.append(f"session {s.conn_id} buffers {s.decoder.buffered_bytes} bytes")
            if s.sync_parts_bytes > limits.state_sync_bytes_max:
                problems.append(f"session {s.conn_id} holds {s.sync_parts_bytes} sync bytes")
        sessions = core._sessions
        shape = (len(core._ready), len(sessions))
        if handle.checked_shape == shape:  # no session came or went: check the ones that moved
            ready = []
            for conn_id in self._session_conns(handle.name):
                session = sessions.get(conn_id)
                node_id = session.peer.node_id if session is not None else None
                if node_id is not None and core._ready.get(node_id) == conn_id:
                    ready.append((node_id, conn_id))
        else:
            handle.checked_shape = shape
            ready = list(core._ready.items())
        for node_id, conn_id in ready:
            session = sessions.get(conn_id)
            if session is None or session.phase is not Phase.READY or session.peer.node_id != node_id:
                problems.append(f"ready entry for {self.name_of(node_id)} is not a ready session")
        if core._actions:
            problems.append(f"{len(core._actions)} actions left untaken")
        if problems:
            raise self.fail(f"invariant broken on {handle.name}: " + "; ".join(problems))

    def _session_conns(self, name: str) -> list[int]:
        return self._conns_touched.get(name, [])


# ---- content actions, carried out as `mesh.drivers.runtime` does ---------------------------------


def _load_release(world: World, handle: NodeHandle, action: LoadRelease) -> None:
    manifests, present = release_inventory(handle.store, action.root)
    world.deliver_later(handle, LOAD_RELEASE_S, ReleaseInventory(action.root, tuple(manifests), tuple(present)))


def _load_objects(world: World, handle: NodeHandle, action: LoadObjects) -> None:
    found = []
    for root in action.roots:
        manifests, present = release_inventory(handle.store, root)
        found.append(ReleaseInventory(root, tuple(manifests), tuple(present)))
    world.deliver_later(handle, LOAD_RELEASE_S, ObjectsInventory(tuple(found)))


def _evaluate_assets(world: World, handle: NodeHandle, action: EvaluateAssets) -> None:
    """What the agent does on a worker thread: read a fork of the state, answer a moment later."""
    records, statuses = asset_statuses(handle.live_core().state.fork(), action.authority_public_key, action.at)
    world.deliver_later(handle, EVALUATE_ASSETS_S, AssetsEvaluated(action.at, tuple(records), statuses))


def _evict_objects(world: World, handle: NodeHandle, action: EvictObjects) -> None:
    """Delete the files' blocks except those a release track or another held file still lists."""
    core = handle.live_core()
    evicted = {Cid.parse(root) for root in action.roots}
    kept = {cid for obj in core.media.values() if obj.held and obj.root not in evicted
            for cid in (obj.root, *(obj.chunks or ()))}
    freed = 0
    for root in sorted(evicted, key=str):
        manifests, present = release_inventory(handle.store, str(root))
        for text in [cid for cid, _ in manifests] + list(present):
            cid = Cid.parse(text)
            if cid in kept or any(t.swarm.lists(cid) or t.swarm.root == cid for t in core.tracks.values()):
                continue
            if handle.store.has(cid):
                freed += handle.store.size(cid)
                handle.store.delete(cid)
    world.deliver_later(handle, LOAD_RELEASE_S, ObjectsEvicted(tuple(action.roots), freed))
    world.deliver_later(handle, LOAD_RELEASE_S, StoreUsage(handle.store.bytes_stored, handle.budget_bytes))


def _store_chunk(world: World, handle: NodeHandle, action: StoreChunk) -> None:
    """Verify and store (`put` hashes first); the answer comes after the work would take."""
    try:
        handle.store.put(Cid.parse(action.cid), action.data)
    except CorruptChunkError:
        event: Event = ChunkRejected(action.conn_id, action.cid, "hash mismatch", True)
    except MeshError as exc:
        event = ChunkRejected(action.conn_id, action.cid, str(exc), False)
    else:
        event = ChunkStored(action.conn_id, action.cid)
    delay = STORE_OVERHEAD_S + len(action.data) / STORE_BYTES_PER_S
    world.deliver_later(handle, delay, event)
    if handle.budget_bytes is not None:
        world.deliver_later(handle, delay, StoreUsage(handle.store.bytes_stored, handle.budget_bytes))


def _serve_chunk(world: World, handle: NodeHandle, action: ServeChunk) -> None:
    """Queue the chunk job on its connection (see `World.queue_serve`)."""
    world.queue_serve(handle, action.conn_id, action.cid)


def _cancel_serve(world: World, handle: NodeHandle, action: CancelServe) -> None:
    if action.conn_id in world.endpoints:
        world.cancel_serve(handle, action.conn_id, action.cid)


def _send_chunk(world: World, handle: NodeHandle, conn_id: int, cid_text: str) -> tuple[float | None, int]:
    """Write one chunk job's pieces (or ChunkMissing): (arrival of its last byte, chunk bytes sent)."""
    cid = Cid.parse(cid_text)
    try:
        data = handle.store.get(cid)  # re-hashed before it leaves
    except MeshError:
        return world.write_arriving(handle, conn_id, m.encode(m.ChunkMissing(cid.to_bytes()))), 0
    return _write_pieces(world, handle, conn_id, cid, _flip_byte(data) if handle.corrupts_served else data)


def _write_pieces(world: World, handle: NodeHandle, conn_id: int, cid: Cid, data: bytes) -> tuple[float | None, int]:
    piece = m.CHUNK_PIECE_BYTES_MAX
    arrival = None
    for offset in range(0, max(len(data), 1), piece):
        raw = cid.to_bytes()
        body = data[offset:offset + piece]
        frame = m.ChunkData(raw, offset, len(data), body)
        summary = (("ChunkData", len(body), (raw, offset + len(body) >= len(data))),)
        arrival = world.write_arriving(handle, conn_id, m.encode(frame), summary)
        if arrival is None:
            return None, 0
    return arrival, len(data)


def _flip_byte(data: bytes) -> bytes:
    """The same length with one byte changed (an empty chunk gains one)."""
    if not data:
        return b"\x00"
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    return bytes(flipped)


__all__ = ["Endpoint", "LogEntry", "NodeHandle", "SimNetwork", "SimStore", "SimulationError", "Traffic", "World"]
