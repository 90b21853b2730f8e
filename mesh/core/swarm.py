"""Swarming content roots: which chunk to ask which peer for, and when.

A *root* is what a node wants as a whole: a release (a DirManifest), or one file (a FileManifest,
or a single raw chunk: a photo, a thumbnail, a preview clip). One `Swarm` per root holds its chunk
list and who holds what of it; one `Transfers` per node holds everything about requests, over every
root: one pipeline per peer, one in-flight budget, timeouts, what is being verified. The node
schedules its swarms in priority order against that one budget (see `mesh.core.swarming`), so a
release, a browser waiting on a photo and background media replication share one engine.

Rules:
- A root's *chunk list*: for a release, for every entry in manifest order, the file's chunk CIDs (a
  single-chunk file is its own chunk), each CID once; for a FileManifest root, its chunks; for a raw
  root, the root itself. Manifests are resolved first: the root, then (releases) the FileManifest of
  every multi-chunk file; they are fetched like chunks, from the peers known to hold them (those
  that announced the root, and its publisher; any ready peer when none of those is connected). A
  manifest unanswered for `request_latency_target_s` is also asked of another peer (at most
  `endgame_copies_max` at once): manifests are small, and one stalled peer must not hold up the list.
- Peers announce a bitfield over the same list (`Have`) and then increments (`HaveUpdate`), or that
  they hold the whole root (`peer_has_all`). A bitfield whose length disagrees with ours is a
  protocol error (the peer and we disagree on the root's contents, which a verified root makes
  impossible for an honest peer).
- Each peer has a pipeline of at most `depth` requests in flight over every root (adaptive: grows by
  one per chunk delivered in time, that is within `request_latency_target_s` of its request;
  shrinks by one per chunk that took longer; halves on a timeout; always within [depth_min,
  depth_max]). Latency, not just delivery, steers it: a peer that many others also ask (a lone seed)
  answers late, and a deep pipeline there would hoard chunks other peers could serve sooner. One
  pipeline per peer, not per root: a peer serves at most SERVE_QUEUE_MAX requests of ours at once.
- A node-wide budget bounds the bytes in flight over all peers and roots: what this node received in
  the last `rate_window_s`, scaled to `inflight_queue_s` of queue (within [inflight_bytes_min,
  inflight_bytes_max]; `inflight_bytes_start` until a rate is known). Per-peer pipelines alone do
  not bound it: on a shared medium (one Wi-Fi access point) forty peers times two chunks each is
  more than the air carries in a timeout, and requests would time out and be sent again, each
  copy taking more air (congestion collapse). The budget keeps queueing near `inflight_queue_s`.
  Swarms scheduled earlier in a round take the budget first: priority is the order of the round.
- Rarest first, chunk by chunk: every chunk we lack and nobody is fetching, fewest holders first
  (ties in an order the injected rng draws once per node, so nodes do not all chase the same chunk),
  goes to the holder with the most room in its pipeline (a slow or busy peer's pipeline has shrunk).
- Seed avoidance: a peer that holds the whole root (a seed) is asked for a chunk only if no other
  peer holds it, unless a non-seed peer stalled (timed out since it last delivered). The seed's
  upload is the scarce resource: each byte it sends should be a byte no one else has yet. When a
  non-seed peer announces a chunk we asked a seed for (two peers asked the seed for the same chunk
  at once), the request is younger than `seed_cancel_s` and none of its bytes has arrived, the
  seed's request is cancelled and the chunk asked of that peer (if its pipeline has room). A busy
  seed declines a request for a chunk it is sending, or has just sent, to someone else
  (`ChunkBusy`, `_hold_until` in swarming.py): the asker fetches the chunk from the peer that
  announces it, or asks the seed again after `seed_busy_retry_s`. No byte goes out twice, and no
  cancel races the seed's copy through a busy medium. (Peers without the "chunk-busy/1" feature
  get the older behaviour: the seed holds the request, for their cancel to arrive in time.)
- Shared media: a node that is a station of a shared medium (Wi-Fi: `Transfers.shared_medium`, from
  its `[topology]` hint or its interface) pays its air twice for a chunk from another station (up
  to the access point, down again) and once for one from a wired peer (a peer whose Hello lacks
  "medium-shared/1"). It asks a wired holder first, seed or not, and no station for a chunk a
  wired peer (not stalled) holds: that chunk waits for the wired pipeline's room. Endgame copies
  follow the same preference. A wired seed serves stations instead of declining (swarming.py).
  A switched LAN, where no one says "medium-shared/1", schedules exactly as without this rule.
- Endgame: when at most `endgame_missing_max` chunks of a root are missing and all of them are in
  flight, duplicate each request that is late (unanswered for `request_latency_target_s`, or twice
  the queueing the budget expects if that is longer) to another peer that holds the chunk (at most
  `endgame_copies_max` per chunk); the first arrival wins and the others are cancelled. Only late
  ones: a copy of a request about to be answered is pure waste.
- Work is proportional to what changed: `schedule` returns at once unless something that can free
  or create work happened since its last run (a delivery, a timeout, a new holder with room...) or a
  retry time passed; request timeouts are checked when the earliest one is due.
- A request unanswered after `request_timeout_s` returns its chunk to the pool.
- Chunks arrive assembled; the node verifies and stores them and then reports `stored` (we hold
  it) or `rejected` (the peer is dropped by the node, the chunk goes back to the pool). While a
  delivered chunk is being verified it counts as in flight, so it is not requested again. A chunk
  several roots list is requested once and counts for each of them.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mesh.content.chunking import CHUNK_BYTES_START
from mesh.content.cid import RAW, Cid
from mesh.content.manifest import DirManifest, FileManifest, decode_manifest
from mesh.errors import RemoteProtocolError


@dataclass(frozen=True)
class SwarmLimits:
    """Bounds of the scheduler."""

    depth_min: int = 1  # requests in flight per peer, at least (a slow peer keeps one)
    depth_start: int = 2  # ... at first (one being sent, one waiting: a lone seed shared by N askers
    # holds N*depth_start of them, and at 4 the askers' budgets sat in its queue while other peers idled)
    depth_max: int = 24  # ... at most
    request_timeout_s: float = 20.0  # give a request up after this long
    request_latency_target_s: float = 0.5  # a chunk delivered within this grows the pipeline
    endgame_copies_max: int = 2  # peers asked for one chunk at once, in endgame
    endgame_missing_max: int = 8  # endgame starts only when at most this many chunks are missing
    manifest_requests_max: int = 32  # manifests in flight at once (a few KB each)
    lacked_retry_s: float = 5.0  # ask a peer that said it lacks a manifest again only after this
    inflight_bytes_min: int = 2 * 1024 * 1024  # node-wide bytes in flight, at least
    inflight_bytes_start: int = 8 * 1024 * 1024  # ... until a receive rate is measured
    inflight_bytes_max: int = 256 * 1024 * 1024  # ... at most
    inflight_queue_s: float = 2.0  # the budget is this many seconds of the measured receive rate
    seed_queue_s: float = 2.0  # a request to a seed (for what only it had) unanswered this long waits
    # behind the seed's other askers, not on our downlink: it leaves the in-flight budget
    rate_window_s: float = 2.0  # the receive rate is measured over this window
    seed_cancel_s: float = 1.0  # a seed's request this young is cancelled when a non-seed announces it
    seed_busy_retry_s: float = 1.0  # a chunk a peer declined (ChunkBusy) is asked of it again after this


@dataclass
class Lane:
    """Our requests to one peer, over every root."""

    depth: int  # current pipeline target
    inflight: dict[Cid, float] = field(default_factory=dict)  # requested chunk -> sent at
    delivered_bytes: int = 0  # chunk bytes it delivered
    stalled: bool = False  # a request to it timed out since it last delivered
    shared_medium: bool = False  # it is a station of a shared medium (its Hello says so; see `Transfers.dear`)


class Transfers:
    """The node-wide half of swarming: pipelines, the in-flight budget, manifest requests, what is
    being verified, and which peer may not be asked for which chunk (yet)."""

    def __init__(self, limits: SwarmLimits) -> None:
        self.limits = limits
        self.lanes: dict[str, Lane] = {}
        self.sizes: dict[Cid, int] = {}  # chunk in flight -> its size (for the budget)
        self.storing: set[Cid] = set()  # delivered, not yet reported stored or rejected
        self.manifest_inflight: dict[Cid, dict[str, float]] = {}  # manifest -> {peer: asked at}
        self.rejected_by: dict[Cid, set[str]] = {}  # chunk -> peers whose copy did not verify
        self.busy_until: dict[Cid, dict[str, float]] = {}  # chunk -> {peer: not asked again before}
        self.lacked: dict[Cid, dict[str, float]] = {}  # manifest -> {peer that said it lacks it: ask again from}
        self.at_seed: dict[Cid, str] = {}  # chunk -> the seed it was asked of (may be stale: checked)
        self.expire_at = float("inf")  # no request times out before this
        self.stale_at = float("inf")  # no request to a seed leaves the budget before this (see `_inflight`)
        self.changed = True  # room or budget may have been freed since the last round
        self._received: deque[tuple[float, int]] = deque()  # (when, bytes) of recent deliveries
        self._received_bytes = 0  # ... their sum
        self._busy_since: float | None = None  # when requests last went from none to some in flight
        self.late_s = limits.request_latency_target_s  # a request older than this is late
        self.budget_left = limits.inflight_bytes_start  # bytes the budget has left this round
        self.round_fetching: dict[Cid, int] = {}  # `fetching()` as of this round (swarms add what they ask)
        self._round_open = False  # the budget was computed for the current round
        self.shared_medium = False  # we are a station of a shared medium (Wi-Fi): see `dear`

    # ---- lanes --------------------------------------------------------------------------------

    def lane(self, node: str) -> Lane:
        """The peer's pipeline (made on first use)."""
        lane = self.lanes.get(node)
        if lane is None:
            lane = self.lanes[node] = Lane(depth=self.limits.depth_start)
        return lane

    def room(self, node: str) -> int:
        lane = self.lanes.get(node)
        return 0 if lane is None else lane.depth - len(lane.inflight)

    def dear(self, node: str) -> bool:
        """A chunk from `node` costs our medium twice: both of us are stations of a shared medium
        (it crosses the air up to the access point and down again; from a wired peer, once)."""
        lane = self.lanes.get(node)
        return self.shared_medium and lane is not None and lane.shared_medium

    def has_room(self) -> bool:
        """Some peer's pipeline has room for one more request."""
        return any(len(lane.inflight) < lane.depth for lane in self.lanes.values())

    def ask(self, node: str, cid: Cid, size: int, now: float, budgeted: bool = True) -> None:
        """Record a chunk request to `node` (taken from this round's budget unless an endgame
        copy: the next round counts it among the bytes in flight)."""
        self.lanes[node].inflight[cid] = now
        self.sizes[cid] = size
        if budgeted:
            self.budget_left -= size
        self.expire_at = min(self.expire_at, now + self.limits.request_timeout_s)
        if self.at_seed.get(cid) == node:
            self.stale_at = min(self.stale_at, now + self.limits.seed_queue_s)

    def drop(self, node: str, cid: Cid) -> float | None:
        """Forget our request for `cid` to `node`; when it was sent, or None if there was none."""
        lane = self.lanes.get(node)
        sent = lane.inflight.pop(cid, None) if lane is not None else None
        if sent is not None:
            self.changed = True
            if not any(cid in other.inflight for other in self.lanes.values()):
                self.sizes.pop(cid, None)
        return sent

    def drop_everywhere(self, cid: Cid) -> list[str]:
        """Forget every request for `cid`; the peers it was asked of."""
        asked = [node for node, lane in self.lanes.items() if cid in lane.inflight]
        for node in asked:
            self.drop(node, cid)
        return asked

    def requested_from(self, node: str, cid: Cid) -> bool:
        """True if we asked `node` for `cid` (a chunk or a manifest) and are still waiting."""
        lane = self.lanes.get(node)
        if lane is not None and cid in lane.inflight:
            return True
        return node in self.manifest_inflight.get(cid, ())

    def remove_peer(self, node: str) -> None:
        """The peer is gone: its requests go back to the pool."""
        lane = self.lanes.pop(node, None)
        if lane is None:
            return
        for cid in lane.inflight:
            if not any(cid in other.inflight for other in self.lanes.values()):
                self.sizes.pop(cid, None)
        for cid in list(self.manifest_inflight):
            self.drop_manifest_request(cid, node)
        for table in (self.busy_until, self.lacked, self.rejected_by):  # nothing kept for a peer that left
            _forget_peer(table, node)
        for cid in [c for c, seed in self.at_seed.items() if seed == node]:
            del self.at_seed[cid]
        self.changed = True

    def fetching(self) -> dict[Cid, int]:
        """Chunks requested or being verified -> how many copies (verifying counts as one)."""
        counts: dict[Cid, int] = dict.fromkeys(self.storing, 1)
        for lane in self.lanes.values():
            for cid in lane.inflight:
                counts[cid] = counts.get(cid, 0) + 1
        return counts

    # ---- the budget ---------------------------------------------------------------------------

    def start_round(self) -> None:
        """A new scheduling round: the budget is computed again when a swarm first needs it."""
        self._round_open = False

    def end_round(self) -> None:
        self.changed = False

    def open_round(self, now: float) -> None:
        """Compute this round's budget (once per round, by the first swarm that schedules)."""
        if self._round_open:
            return
        self._round_open = True
        inflight_bytes, counted_bytes, self.stale_at = self._inflight(now)
        if not inflight_bytes and not self.storing:
            self._busy_since = None  # idle until now: the rate is measured afresh
        rate = self._receive_rate(now)
        expected_s = inflight_bytes / rate if rate else self.limits.inflight_queue_s
        self.late_s = max(self.limits.request_latency_target_s, 2 * expected_s)
        self.budget_left = self._budget(rate) - counted_bytes
        self.round_fetching = self.fetching()

    def _inflight(self, now: float) -> tuple[int, int, float]:
        """Bytes in flight; those the budget counts; when the next counted one leaves it. A lone seed
        shared by N askers holds N requests and sends them one after another, so ours may wait
        there for seconds while our downlink idles and peers holding other chunks have nothing of
        ours to send (coop's hubs, behind a seed's WAN link). The budget is there to keep our
        downlink's queue short, so such a request leaves it once it is `seed_queue_s` old: one
        queued on our downlink would have arrived by then. Only requests to seeds
        (for what nobody else had): among stations that share an access point (without the hint)
        every peer is slow for the same reason, and letting their late requests go uncounted
        would flood the air."""
        sizes, at_seed, wait = self.sizes, self.at_seed, self.limits.seed_queue_s
        young = now - wait
        inflight_bytes = counted_bytes = 0
        oldest = float("inf")
        for node, lane in self.lanes.items():
            for cid, sent in lane.inflight.items():
                size = sizes.get(cid, 0)
                inflight_bytes += size
                if at_seed.get(cid) != node:
                    counted_bytes += size
                elif sent > young:
                    counted_bytes += size
                    oldest = min(oldest, sent)
        return inflight_bytes, counted_bytes, oldest + wait

    def note_requests(self, now: float) -> None:
        """Requests went out this round (the receive rate is measured from the first of a busy spell)."""
        if self._busy_since is None:
            self._busy_since = now

    def _receive_rate(self, now: float) -> float | None:
        """Bytes per second delivered over the last `rate_window_s` of fetching; None until a
        window's worth (or half of one, with deliveries) has passed."""
        window = self.limits.rate_window_s
        received = self._received
        while received and received[0][0] < now - window:
            self._received_bytes -= received.popleft()[1]
        if self._busy_since is None:
            return None
        elapsed = min(window, now - self._busy_since)
        if elapsed < window / 2 or (elapsed < window and not received):
            return None
        return self._received_bytes / elapsed

    def _budget(self, rate: float | None) -> int:
        limits = self.limits
        if rate is None:
            return limits.inflight_bytes_start
        return int(min(limits.inflight_bytes_max, max(limits.inflight_bytes_min, rate * limits.inflight_queue_s)))

    # ---- deliveries and failures --------------------------------------------------------------

    def delivered(self, node: str, cid: Cid, size: int, now: float) -> list[tuple[str, Cid]]:
        """A whole chunk of `size` bytes arrived from `node` (not yet verified); returns (peer,
        cid) to cancel."""
        lane = self.lanes.get(node)
        sent = self.drop(node, cid)
        self.at_seed.pop(cid, None)
        if sent is not None:
            self._adapt_depth(lane, now - sent)
            lane.delivered_bytes += size
            lane.stalled = False
            self._received.append((now, size))
            self._received_bytes += size
        others_asked = self.manifest_inflight.pop(cid, {})
        self.storing.add(cid)
        cancels = [(other_node, cid) for other_node in others_asked if other_node != node]
        cancels += [(other_node, cid) for other_node in self.drop_everywhere(cid)]
        self.changed = True
        return cancels

    def _adapt_depth(self, lane: Lane, latency_s: float) -> None:
        if latency_s <= self.limits.request_latency_target_s:
            lane.depth = min(lane.depth + 1, self.limits.depth_max)
        else:
            lane.depth = max(lane.depth - 1, self.limits.depth_min)

    def stored(self, cid: Cid) -> None:
        """The chunk is verified and stored here: nothing about asking for it is kept."""
        self.storing.discard(cid)
        for table in (self.busy_until, self.lacked, self.rejected_by, self.at_seed):
            table.pop(cid, None)

    def rejected(self, node: str, cid: Cid) -> None:
        """The chunk from `node` did not verify: never ask that peer for it again."""
        self.storing.discard(cid)
        self.rejected_by.setdefault(cid, set()).add(node)
        self.changed = True

    def store_failed(self, cid: Cid) -> None:
        """The chunk verified but could not be stored (disk full...): it goes back to the pool."""
        self.storing.discard(cid)
        self.changed = True

    def busy(self, node: str, cid: Cid, now: float) -> None:
        """`node` declined our request for `cid` (ChunkBusy: it is sending the chunk to another
        peer, which will announce it; seeds do this). Fetch it from another peer that holds it, or
        ask `node` again after `seed_busy_retry_s`."""
        if self.drop(node, cid) is None:
            return
        self.at_seed.pop(cid, None)
        self.busy_until.setdefault(cid, {})[node] = now + self.limits.seed_busy_retry_s

    def lacks(self, node: str, cid: Cid, now: float) -> None:
        """The peer said it cannot serve `cid` (ChunkMissing)."""
        self.drop(node, cid)
        if cid in self.manifest_inflight:
            self.lacked.setdefault(cid, {})[node] = now + self.limits.lacked_retry_s
        self.drop_manifest_request(cid, node)
        self.changed = True

    def expired(self, now: float) -> list[tuple[str, Cid]]:
        """Requests past their timeout, now returned to the pool (each peer's depth halves)."""
        if now >= self.stale_at:  # a request to a seed left the budget: room for one elsewhere
            self.changed, self.stale_at = True, float("inf")
        if now < self.expire_at:
            return []
        limit = now - self.limits.request_timeout_s
        gone: list[tuple[str, Cid]] = []
        for node, lane in self.lanes.items():
            late = [cid for cid, sent in lane.inflight.items() if sent <= limit]
            for cid in late:
                self.drop(node, cid)
                gone.append((node, cid))
            if late:
                lane.depth = max(self.limits.depth_min, lane.depth // 2)
                lane.stalled = True
        for cid, asked in list(self.manifest_inflight.items()):
            for node in [n for n, sent in asked.items() if sent <= limit]:
                self.drop_manifest_request(cid, node)
                gone.append((node, cid))
        sent_times = [sent for lane in self.lanes.values() for sent in lane.inflight.values()]
        sent_times += [sent for asked in self.manifest_inflight.values() for sent in asked.values()]
        self.expire_at = min(sent_times) + self.limits.request_timeout_s if sent_times else float("inf")
        if gone:
            self.changed = True
        return gone

    def next_deadline(self) -> float | None:
        deadline = min(self.expire_at, self.stale_at)
        return deadline if deadline != float("inf") else None

    # ---- manifests ----------------------------------------------------------------------------

    def ask_manifest(self, cid: Cid, node: str, now: float) -> tuple[str, Cid]:
        self.manifest_inflight.setdefault(cid, {})[node] = now
        self.expire_at = min(self.expire_at, now + self.limits.request_timeout_s)
        return node, cid

    def drop_manifest_request(self, cid: Cid, node: str) -> None:
        asked = self.manifest_inflight.get(cid)
        if asked is not None:
            asked.pop(node, None)
            if not asked:
                del self.manifest_inflight[cid]

    def peer_rates(self) -> dict[str, int]:
        return {node: lane.delivered_bytes for node, lane in self.lanes.items()}


def _forget_peer(table: dict[Cid, dict[str, float]] | dict[Cid, set[str]], node: str) -> None:
    """Take `node` out of a chunk -> peers table (dropping chunks left with no peer)."""
    for cid in [c for c, peers in table.items() if node in peers]:
        peers = table[cid]
        if isinstance(peers, set):
            peers.discard(node)
        else:
            del peers[node]
        if not peers:
            del table[cid]


@dataclass
class _Peer:
    """What we know of one peer's holdings of one root."""

    lane: Lane  # our requests to it (node-wide)
    bits: bytearray | None = None  # its bitfield over our chunk list, once both are known
    early: tuple[int, bytes] | None = None  # a Have that came before we knew the list
    early_updates: list[int] = field(default_factory=list)  # HaveUpdates before we knew the list
    early_all: bool = False  # it said it holds the whole root before we knew the list
    announced: bool = False  # sent a Have for this root (or said it holds all of it)
    count: int = 0  # chunks its bitfield holds


def _bit(bits: bytearray | bytes, index: int) -> bool:
    return bool(bits[index >> 3] & (0x80 >> (index & 7)))


def _set_bit(bits: bytearray, index: int) -> None:
    bits[index >> 3] |= 0x80 >> (index & 7)


def _all_bits(count: int) -> bytes:
    """A bitfield with the first `count` bits set (the spare bits of the last byte clear)."""
    if not count:
        return b""
    full, rest = divmod(count, 8)
    return b"\xff" * full + (bytes([(0xFF << (8 - rest)) & 0xFF]) if rest else b"")


class Swarm:
    """Scheduler state for one root this node wants (or seeds)."""

    def __init__(self, root: Cid, limits: SwarmLimits, rng: random.Random, publisher: str | None = None,
                 transfers: Transfers | None = None, size_hint: int | None = None) -> None:
        self.root = root
        self.publisher = publisher  # the node that made the root: it holds every manifest
        self.limits = limits
        self.transfers = transfers if transfers is not None else Transfers(limits)
        self._rng = rng
        self._size_hint = size_hint  # a raw root's size, if known (its CID does not say)
        self._manifests: dict[Cid, DirManifest | FileManifest] = {}
        self._manifest_data: dict[Cid, bytes] = {}  # ... as verified bytes, for serving them
        self._file_manifests: frozenset[Cid] = frozenset()  # the root's multi-chunk files, once known
        self._unresolved: dict[Cid, None] = {}  # ... of those, the manifests not yet held, in the root's order
        self.chunks: list[Cid] | None = None  # the chunk list, once every manifest is known
        self._index: dict[Cid, int] = {}
        self._sizes: list[int] = []
        self._have = bytearray()
        self._missing: dict[int, None] = {}  # indices we lack, in list order
        self.have_bytes = 0
        self.total_bytes = 0
        self._availability: list[int] = []
        self._ties: list[int] = []  # chunk index -> its rank among equally rare chunks (random per node)
        self._by_tie: list[int] = []  # ... and back
        # The missing chunks rarest first: per availability, their ties in order; kept as holdings
        # change, so a round walks only as far as it asks (None: rebuilt when a round needs it).
        self._rank: list[list[int]] | None = None
        self._peers: dict[str, _Peer] = {}
        self._present: set[Cid] = set()  # chunks the store reported before the list was known
        self._retry_at: float | None = None  # when a late request (manifest or endgame) gets a copy
        self._withheld: set[int] = set()  # indices of chunks consent or retention took away
        self._dirty = True  # something changed that may allow new requests since `schedule` ran
        self.spare_publisher = False  # among whole copies, ask another holder than the publisher
        self.endgame_enabled = True  # duplicate late requests when only a few chunks are missing
        if root.codec == RAW:
            self._build_list()  # a single raw chunk: nothing to resolve

    # ---- local holdings -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.chunks is not None

    @property
    def complete(self) -> bool:
        return self.chunks is not None and not self._missing

    @property
    def is_release(self) -> bool:
        """The root is a directory (a release), not one file."""
        return isinstance(self._manifests.get(self.root), DirManifest)

    @property
    def wanted_bytes(self) -> int:
        """Bytes of the root this node should hold: everything not withheld."""
        return self.total_bytes - sum(self._sizes[i] for i in self._withheld)

    @property
    def wanted_have_bytes(self) -> int:
        """Bytes held of what this node should hold."""
        return self.have_bytes - sum(self._sizes[i] for i in self._withheld if _bit(self._have, i))

    @property
    def missing_bytes(self) -> int:
        """Bytes still to fetch (the size hint of a raw root, or the whole root while its list is unknown)."""
        if self.chunks is None:
            return self._size_hint or CHUNK_BYTES_START
        return max(0, self.wanted_bytes - self.wanted_have_bytes)

    def file_manifests(self) -> set[Cid]:
        """CIDs of the release's file manifests (files of several chunks)."""
        return set(self._file_manifests)

    def chunks_only_in(self, files: set[Cid]) -> set[Cid]:
        """The data chunks of the release only `files` use (no other file shares them). File
        manifests are not among them: they hold hashes, not media, and every node needs them to
        build the same chunk list. Empty until the chunk list is known, and for a file root."""
        root = self._manifests.get(self.root)
        if self.chunks is None or not isinstance(root, DirManifest):
            return set()
        only: set[Cid] = set()
        shared: set[Cid] = set()
        for entry in root.entries:
            if entry.cid.codec == RAW:
                blocks = {entry.cid}
            else:
                blocks = {cid for cid, _, _ in self._manifests[entry.cid].spans()}
            (only if entry.cid in files else shared).update(blocks)
        return only - shared

    def withhold(self, cids: set[Cid]) -> None:
        """From now on fetch none of `cids` (and fetch again what an earlier call withheld and
        this one does not): their requests are dropped and they no longer count as missing."""
        if self.chunks is None:
            return
        now_withheld = {self._index[cid] for cid in cids if cid in self._index}
        for index in self._withheld - now_withheld:
            if not _bit(self._have, index):
                self._missing[index] = None
        for index in now_withheld - self._withheld:
            self._missing.pop(index, None)
            self.transfers.drop_everywhere(self.chunks[index])
        self._withheld = now_withheld
        self._rank = None
        self._dirty = True

    def add_manifest(self, cid: Cid, data: bytes) -> None:
        """A manifest of this root we hold (verified by the caller); may complete the list."""
        try:
            manifest = self._manifests[cid] = decode_manifest(data)
        except ValueError as exc:
            raise RemoteProtocolError(f"manifest {cid} does not decode: {exc}") from None
        self._manifest_data[cid] = data
        if cid == self.root and isinstance(manifest, DirManifest):
            self._file_manifests = frozenset(e.cid for e in manifest.entries if e.cid.codec != RAW)
            self._unresolved = dict.fromkeys(e.cid for e in manifest.entries
                                             if e.cid.codec != RAW and e.cid not in self._manifests)
        else:
            self._unresolved.pop(cid, None)
        self.transfers.manifest_inflight.pop(cid, None)
        self.transfers.storing.discard(cid)
        self._dirty = True  # the manifests it names may be asked for now
        if self.chunks is None and not self.manifests_missing():
            self._build_list()

    def add_present(self, cids: set[Cid]) -> None:
        """Chunks the store holds (from its inventory)."""
        for cid in cids:
            self.mark_have(cid) if self.ready else self._present.add(cid)

    def manifests_missing(self) -> list[Cid]:
        """Manifests still needed before the chunk list is known, in a stable order."""
        if self.root.codec == RAW:
            return []
        root = self._manifests.get(self.root)
        if root is None:
            return [self.root]
        if not isinstance(root, DirManifest):
            return []
        return list(self._unresolved)  # kept as they arrive: a walk of the root per manifest was quadratic in files

    def _build_list(self) -> None:
        chunks, sizes = self._spans()
        self.chunks, self._sizes = chunks, sizes
        self._ties = list(range(len(chunks)))
        self._rng.shuffle(self._ties)  # this node's random order among equally rare chunks
        self._by_tie = [0] * len(chunks)
        for index, tie in enumerate(self._ties):
            self._by_tie[tie] = index
        self._rank = None
        self._have = bytearray((len(chunks) + 7) // 8)
        self._missing = dict.fromkeys(range(len(chunks)))
        self._availability = [0] * len(chunks)
        for cid in self._present:
            self.mark_have(cid)
        self._present.clear()
        for node, peer in self._peers.items():
            if peer.early is not None:
                self.peer_have(node, *peer.early)
            for index in peer.early_updates:
                self.peer_update(node, (index,))
            if peer.early_all:
                self.peer_has_all(node)
            peer.early, peer.early_updates, peer.early_all = None, [], False
        self._dirty = True

    def _spans(self) -> tuple[list[Cid], list[int]]:
        """(chunk list, sizes) of the root, whose manifests are all known."""
        if self.root.codec == RAW:
            size = self._size_hint if self._size_hint is not None else CHUNK_BYTES_START
            self.total_bytes = size
            self._index[self.root] = 0
            return [self.root], [size]
        root = self._manifests[self.root]
        if isinstance(root, FileManifest):
            entries = [(self.root, root.size)]
        else:
            entries = [(entry.cid, entry.size) for entry in root.entries]
        chunks: list[Cid] = []
        sizes: list[int] = []
        for cid, size in entries:
            self.total_bytes += size
            if cid.codec == RAW:
                spans = [(cid, size)]
            else:
                manifest = self._manifests[cid]
                if not isinstance(manifest, FileManifest) or manifest.size != size:
                    raise RemoteProtocolError(f"file manifest {cid} does not match its entry")
                spans = [(chunk, length) for chunk, _, length in manifest.spans()]
            for chunk, length in spans:
                if chunk not in self._index:
                    self._index[chunk] = len(chunks)
                    chunks.append(chunk)
                    sizes.append(length)
        return chunks, sizes

    def set_raw_size(self, size: int) -> None:
        """A raw root's real size, learnt when its bytes arrived (the hint may have been a guess)."""
        if self.root.codec != RAW or not self._sizes or self._sizes[0] == size:
            return
        held = _bit(self._have, 0)
        self.total_bytes += size - self._sizes[0]
        if held:
            self.have_bytes += size - self._sizes[0]
        self._sizes[0] = size

    def mark_have(self, cid: Cid) -> int | None:
        """We now hold this chunk; its index if it is in the list and was new."""
        self.transfers.storing.discard(cid)
        index = self._index.get(cid)
        if index is None or _bit(self._have, index):
            return None
        _set_bit(self._have, index)
        if index in self._missing:
            self._unrank(index)
            del self._missing[index]
        self.have_bytes += self._sizes[index]
        return index

    def have_bitfield(self) -> tuple[int, bytes]:
        """(count, bits) for a Have message; (0, b"") until the list is known."""
        if self.chunks is None:
            return 0, b""
        return len(self.chunks), bytes(self._have)

    def holds(self, cid: Cid) -> bool:
        index = self._index.get(cid)
        return index is not None and _bit(self._have, index)

    def lists(self, cid: Cid) -> bool:
        """`cid` is in the chunk list."""
        return cid in self._index

    def manifest_data(self, cid: Cid) -> bytes | None:
        """The verified bytes of one of this root's manifests we hold, else None."""
        return self._manifest_data.get(cid)

    def is_manifest(self, cid: Cid) -> bool:
        return (cid == self.root and cid.codec != RAW) or cid in self._file_manifests

    def chunk_size(self, cid: Cid) -> int | None:
        index = self._index.get(cid)
        return None if index is None else self._sizes[index]

    # ---- peers --------------------------------------------------------------------------------

    def add_peer(self, node: str) -> None:
        peer = self._peers.get(node)
        if peer is None:
            self._peers[node] = _Peer(lane=self.transfers.lane(node))
        else:
            peer.lane = self.transfers.lane(node)  # a new session's pipeline, if it came back
        self._dirty = True

    def remove_peer(self, node: str) -> None:
        """The peer is gone: forget its holdings (its requests are the node's `Transfers`')."""
        peer = self._peers.pop(node, None)
        if peer is None:
            return
        self._dirty = True
        if peer.bits is not None:
            self._rank = None
            for index in range(len(self._availability)):
                if _bit(peer.bits, index):
                    self._availability[index] -= 1

    def peer_have(self, node: str, count: int, bits: bytes) -> None:
        peer = self._peers.get(node)
        if peer is None:
            return
        if self.chunks is None:
            if count > 0:
                self._peer_knows_list(node, peer)
            peer.early = (count, bytes(bits))
            return
        peer.announced = peer.announced or count > 0  # it knows the list, so it holds the manifests
        if count != len(self.chunks) or len(bits) != (count + 7) // 8:
            if count == 0:  # the peer does not know the list yet
                return
            raise RemoteProtocolError(f"Have lists {count} chunks, the root has {len(self.chunks)}")
        if peer.bits is None:
            self._rank = None  # a whole bitfield: ranked afresh when a round needs it
        old = peer.bits if peer.bits is not None else bytes(len(bits))
        for at, (before, after) in enumerate(zip(old, bits)):
            if before == after:
                continue  # a Have mostly repeats what we knew: touch only the bytes that differ
            for bit in range(8):
                mask = 0x80 >> bit
                if (before ^ after) & mask:
                    self._count_holder(at * 8 + bit, 1 if after & mask else -1)
        peer.bits = bytearray(bits)
        peer.count = int.from_bytes(bits, "big").bit_count()
        self._dirty = True

    def peer_has_all(self, node: str) -> None:
        """The peer holds the whole root (it announced the object as held)."""
        peer = self._peers.get(node)
        if peer is None:
            return
        peer.announced = True
        if self.chunks is None:
            peer.early_all = True
            return
        self.peer_have(node, len(self.chunks), _all_bits(len(self.chunks)))

    def peer_progress(self, node: str) -> tuple[int, int | None] | None:
        """(chunks the peer holds, chunks in the root or None while the list is unknown), or
        None if the peer has not announced anything for this root."""
        peer = self._peers.get(node)
        if peer is None or not peer.announced and peer.bits is None:
            return None
        if self.chunks is None or peer.bits is None:
            return 0, None if self.chunks is None else len(self.chunks)
        return peer.count, len(self.chunks)

    def peer_update(self, node: str, indices: tuple[int, ...]) -> None:
        """The peer now holds these chunks."""
        peer = self._peers.get(node)
        if peer is None:
            return
        if self.chunks is None:
            if indices:
                self._peer_knows_list(node, peer)
            peer.early_updates.extend(indices[: len(indices)])
            del peer.early_updates[1 << 20:]
            return
        if peer.bits is None:
            peer.bits = bytearray(len(self._have))
        lane = peer.lane
        for index in indices:
            if index >= len(self.chunks):
                raise RemoteProtocolError(f"HaveUpdate index {index} is past the chunk list")
            if not _bit(peer.bits, index):
                _set_bit(peer.bits, index)
                self._count_holder(index, 1)
                peer.count += 1
                if index in self._missing and len(lane.inflight) < lane.depth and self.transfers.budget_left > 0:
                    self._dirty = True  # a chunk we lack at a peer with room, budget to spare

    def _peer_knows_list(self, node: str, peer: _Peer) -> None:
        """The peer announced chunks while we still resolve the list: it holds every manifest
        (it built the list from them), whatever it said before. Ask it now: a hub that answered
        its venue ChunkMissing for a manifest just before it fetched it was not asked again for
        `lacked_retry_s` (5 s of an idle venue in the coop simulation)."""
        peer.announced = True
        lacked = self.transfers.lacked
        for cid in self.manifests_missing():
            until = lacked.get(cid)
            if until and until.pop(node, None) is not None:
                if not until:
                    del lacked[cid]
                self._dirty = True

    def seed_requests_to_cancel(self, node: str, indices: tuple[int, ...], now: float,
                                arriving: Callable[[str, Cid], bool]) -> list[tuple[str, Cid]]:
        """(seed, cid) requests to cancel now that `node` announced `indices`: chunks we asked a
        seed for that this non-seed peer can serve instead. Only a young seed request whose bytes
        have not started to arrive (`arriving(seed, cid)`): it waits in the seed's queue, or is held
        there while the seed sends the chunk to someone else. Not an older one: on a shared medium
        it is probably in the air already, and cancelling it would cost the bytes twice (without
        this limit the venue simulation delivered 3x the duplicates)."""
        announcer = self._peers.get(node)
        transfers = self.transfers
        if announcer is None or self.chunks is None or announcer.count >= len(self.chunks):
            return []  # a seed announced
        if not transfers.at_seed or len(announcer.lane.inflight) >= announcer.lane.depth:
            return []  # no seed requests, or the announcer is busy with ours
        cancels = []
        for index in indices:
            cid = self.chunks[index]
            seed = transfers.at_seed.pop(cid, None)
            lane = transfers.lanes.get(seed) if seed is not None else None
            if (lane is not None and cid in lane.inflight and cid not in transfers.storing
                    and not arriving(seed, cid) and lane.inflight[cid] > now - self.limits.seed_cancel_s):
                transfers.drop(seed, cid)
                cancels.append((seed, cid))
                self._dirty = True
        return cancels

    def peer_lacking(self, node: str, indices: tuple[int, ...]) -> tuple[int, ...]:
        """Those of `indices` the peer's bitfield lacks (all of them while it is unknown)."""
        peer = self._peers.get(node)
        bits = peer.bits if peer is not None else None
        if bits is None:
            return indices
        return tuple(i for i in indices if not bits[i >> 3] & (0x80 >> (i & 7)))

    def peer_lacks(self, node: str, cid: Cid) -> None:
        """The peer said it cannot serve `cid` (ChunkMissing): its bitfield no longer has it."""
        peer = self._peers.get(node)
        if peer is None:
            return
        index = self._index.get(cid)
        if index is not None and peer.bits is not None and _bit(peer.bits, index):
            peer.bits[index >> 3] &= ~(0x80 >> (index & 7)) & 0xFF
            self._count_holder(index, -1)
            peer.count -= 1
        self._dirty = True

    # ---- rarest first ---------------------------------------------------------------------------

    def _count_holder(self, index: int, change: int) -> None:
        """One more (or one fewer) peer holds chunk `index`: a missing one moves to its new rank."""
        rank = self._rank
        if rank is None or index not in self._missing:
            self._availability[index] += change
            return
        self._unrank(index)
        self._availability[index] += change
        bucket = self._availability[index]
        while len(rank) <= bucket:
            rank.append([])
        bisect.insort(rank[bucket], self._ties[index])

    def _unrank(self, index: int) -> None:
        """Missing chunk `index` leaves its rank (it is held now, or its availability changes)."""
        if self._rank is not None:
            bucket, tie = self._rank[self._availability[index]], self._ties[index]
            del bucket[bisect.bisect_left(bucket, tie)]

    def _ranked(self) -> list[list[int]]:
        """The missing chunks' ties per availability, each list in order (built when stale)."""
        if self._rank is None:
            availability, ties = self._availability, self._ties
            rank: list[list[int]] = [[] for _ in range(max(availability, default=0) + 1)]
            for index in self._missing:
                rank[availability[index]].append(ties[index])
            for bucket in rank:
                bucket.sort()
            self._rank = rank
        return self._rank

    def _wanted(self, held_bits: bytes, declined: set | tuple, taken: set) -> Iterator[int]:
        """Missing chunks, rarest first (ties in this node's random order), that a peer with room
        holds or a peer declined, and that are not in flight: as many as the round takes. A
        round used to filter and sort every missing chunk, so a release of N chunks cost N^2."""
        by_tie = self._by_tie
        for bucket in self._ranked():
            for tie in bucket:
                index = by_tie[tie]
                if (held_bits[index >> 3] & (0x80 >> (index & 7)) or index in declined) and index not in taken:
                    yield index

    # ---- scheduling ---------------------------------------------------------------------------

    def schedule(self, now: float, nodes: list[str]) -> list[tuple[str, Cid]]:
        """Requests to send now: manifests first, then rarest-first chunks, then endgame copies."""
        transfers = self.transfers
        if self.complete or not (self._dirty or transfers.changed) and (self._retry_at is None or now < self._retry_at):
            return []  # nothing changed that could allow a request (this runs after every event)
        if self.chunks is None:
            self._dirty, self._retry_at = False, None
            return self._schedule_manifests(now, nodes)
        if not transfers.has_room():  # every pipeline is full: nothing could go out (room sets `changed`)
            self._retry_at = None
            return []
        self._dirty, self._retry_at = False, None
        transfers.open_round(now)
        fetching = transfers.round_fetching
        order = list(nodes)
        self._rng.shuffle(order)
        requests = self._assign(now, order, fetching)
        if self.endgame_enabled:
            requests += self._endgame(now, order, fetching)
        if requests:
            transfers.note_requests(now)
        return requests

    def _assign(self, now: float, order: list[str], fetching: dict[Cid, int]) -> list[tuple[str, Cid]]:
        """Chunk by chunk, rarest first: each goes to a holder with room (see `_choose`), while the
        node-wide budget lasts. Chunks chosen here join `fetching`."""
        chunks, total = self.chunks, len(self.chunks)
        transfers = self.transfers
        room: dict[str, int] = {}
        seeds = 0
        stalled = False
        wired: set[str] = set()  # on a shared medium: peers a chunk crosses our air once from (not stalled)
        for node in order:
            peer = self._peers.get(node)
            if peer is None or peer.bits is None:
                continue
            lane = peer.lane
            seeds += peer.count == total
            stalled = stalled or (lane.stalled and peer.count < total)
            if transfers.shared_medium and not lane.shared_medium and not lane.stalled:
                wired.add(node)
            if len(lane.inflight) < lane.depth:
                room[node] = lane.depth - len(lane.inflight)
        if wired and any(self._peers[n].count == total for n in wired):
            room = {n: r for n, r in room.items() if n in wired}  # a wired seed holds it all: no station is asked
        if not room or transfers.budget_left <= 0:
            return []
        peers, rejected_by, busy_until = self._peers, transfers.rejected_by, transfers.busy_until
        # Only chunks a peer with room holds can be asked for this round; the loop below passes over
        # the others without a trace, except those a peer declined, whose retry time it notes.
        held = 0
        for node in room:
            held |= int.from_bytes(peers[node].bits, "big")
        held_bits = held.to_bytes(len(peers[next(iter(room))].bits), "big")
        index_of = self._index
        taken = set(map(index_of.get, fetching))  # a few: what is in flight (None: another swarm's)
        declined = set(map(index_of.get, busy_until)) if busy_until else ()
        requests = []
        for index in self._wanted(held_bits, declined, taken):
            cid = chunks[index]
            byte, mask = index >> 3, 0x80 >> (index & 7)
            refused = rejected_by.get(cid, ())
            holders = [n for n in room if peers[n].bits[byte] & mask and n not in refused]
            if busy_until and cid in busy_until:
                holders = self._excluding(busy_until, cid, holders, now)
            if not holders:
                continue
            node = self._choose(index, holders, room, seeds, stalled, wired)
            if node is None:
                continue
            transfers.ask(node, cid, self._sizes[index], now)
            fetching[cid] = 1
            requests.append((node, cid))
            room[node] -= 1
            if not room[node]:
                del room[node]
            if not room or transfers.budget_left <= 0:
                break
        return requests

    def _choose(self, index: int, holders: list[str], room: dict[str, int], seeds: int, stalled: bool,
                wired: set[str]) -> str | None:
        """The holder with room to ask for chunk `index`, or None to leave it for later. On a
        shared medium a wired holder first, seed or not, and none other while a wired peer holds it
        (its pipeline will have room: a station's copy would cross the air twice). Else a non-seed
        (the least loaded: pipelines shrink when slow); a seed only for what no one else has."""
        peers, total = self._peers, len(self.chunks)
        if wired:
            cheap = [n for n in holders if n in wired]
            if cheap:
                return max(cheap, key=room.__getitem__)
            if any(_bit(peers[n].bits, index) for n in wired):
                return None
        others = [n for n in holders if peers[n].count < total]
        if others:
            return max(others, key=room.__getitem__)
        if self._availability[index] > seeds and not stalled:
            return None  # a non-seed peer holds it: leave the seed's upload for what only it has
        spared = [n for n in holders if n != self.publisher] if self.spare_publisher else ()
        node = max(spared, key=room.__getitem__) if spared else holders[0]
        self.transfers.at_seed[self.chunks[index]] = node  # cancelled if a non-seed peer announces it first
        return node

    def _schedule_manifests(self, now: float, nodes: list[str]) -> list[tuple[str, Cid]]:
        """New manifest requests, round-robin over the peers known to hold every manifest (those
        that announced the root, and its publisher), or over any peer when none of those can be
        asked (peers that learned of the root when we did would only say they lack it); then
        a second copy of each request unanswered for `request_latency_target_s`, to a peer not
        yet asked."""
        ordered = sorted(nodes, key=lambda n: (not self._peers[n].announced, self._rng.random()))
        if not ordered:
            return []
        transfers = self.transfers
        holders = [n for n in ordered if self._peers[n].announced or n == self.publisher]
        missing = [c for c in self.manifests_missing() if c not in transfers.storing]
        room = self.limits.manifest_requests_max - len(transfers.manifest_inflight)
        requests = []
        for cid in missing:
            asked = transfers.manifest_inflight.get(cid)
            candidates = self._not_lacking(cid, holders, now) or self._not_lacking(cid, ordered, now)
            if not candidates:
                continue
            if asked is None and room > 0:
                room -= 1
                requests.append(transfers.ask_manifest(cid, candidates[len(requests) % len(candidates)], now))
            elif asked and len(asked) < self.limits.endgame_copies_max:
                requests += self._manifest_copy(cid, asked, candidates, now)
        return requests

    def _not_lacking(self, cid: Cid, nodes: list[str], now: float) -> list[str]:
        """`nodes` except those that said they lack `cid` within `lacked_retry_s`."""
        return self._excluding(self.transfers.lacked, cid, nodes, now)

    def _excluding(self, table: dict[Cid, dict[str, float]], cid: Cid, nodes: list[str], now: float) -> list[str]:
        """`nodes` except those `table` keeps from being asked for `cid` until a later time (and
        the earliest of those times as a retry time); expired entries are dropped."""
        until = table.get(cid)
        if not until:
            return nodes
        for node, at in list(until.items()):
            if at <= now:
                del until[node]
            else:
                self._retry_at = at if self._retry_at is None else min(self._retry_at, at)
        if not until:
            del table[cid]
            return nodes
        return [n for n in nodes if n not in until]

    def _manifest_copy(self, cid: Cid, asked: dict[str, float], candidates: list[str],
                       now: float) -> list[tuple[str, Cid]]:
        """Ask one more peer for a manifest whose request is late (or say when it will be late)."""
        others = [n for n in candidates if n not in asked and n not in self.transfers.rejected_by.get(cid, ())]
        if not others:
            return []
        if not self._late(min(asked.values()), now):
            return []
        return [self.transfers.ask_manifest(cid, others[0], now)]

    def _late(self, sent: float, now: float) -> bool:
        """True if a request sent at `sent` is late; if not, remember to look again when it is."""
        due = sent + self.transfers.late_s
        if due <= now:
            return True
        self._retry_at = due if self._retry_at is None else min(self._retry_at, due)
        return False

    def _endgame(self, now: float, nodes: list[str], fetching: dict[Cid, int]) -> list[tuple[str, Cid]]:
        transfers = self.transfers
        storing = transfers.storing
        if len(self._missing) > self.limits.endgame_missing_max + len(storing):
            return []
        missing = [i for i in self._missing if self.chunks[i] not in storing]
        if len(missing) > self.limits.endgame_missing_max or any(self.chunks[i] not in fetching for i in missing):
            return []  # not endgame yet: too much left, or some missing chunk is not in flight
        requests = []
        for index in missing:
            cid = self.chunks[index]
            sent = [lane.inflight[cid] for lane in transfers.lanes.values() if cid in lane.inflight]
            if fetching.get(cid, 0) >= self.limits.endgame_copies_max or not sent or not self._late(min(sent), now):
                continue
            for node in self._endgame_candidates(index, nodes):
                if fetching.get(cid, 0) >= self.limits.endgame_copies_max:
                    break
                peer = self._peers.get(node)
                if (peer is not None and peer.bits is not None and _bit(peer.bits, index)
                        and cid not in peer.lane.inflight and len(peer.lane.inflight) < peer.lane.depth
                        and node not in transfers.rejected_by.get(cid, ())):
                    transfers.ask(node, cid, self._sizes[index], now, budgeted=False)
                    fetching[cid] = fetching.get(cid, 0) + 1
                    requests.append((node, cid))
        return requests

    def _endgame_candidates(self, index: int, nodes: list[str]) -> list[str]:
        """Peers to copy a late request of chunk `index` to: on a shared medium, stations only
        when no wired peer holds it (a station's copy would cross the air twice)."""
        transfers = self.transfers
        if not transfers.shared_medium:
            return nodes
        wired = [n for n in nodes if not transfers.dear(n)]
        if any(n in self._peers and self._peers[n].bits is not None and _bit(self._peers[n].bits, index) for n in wired):
            return wired
        return nodes

    def mark_dirty(self) -> None:
        """Something outside the swarm (a delivery, a timeout) may allow new requests."""
        self._dirty = True

    def defer_retry(self) -> None:
        """Scheduling is paused (settling, inventory due, or a root we only seed): forget the
        pending retry time so it does not ask for a wake-up now; the next `schedule` sets it."""
        self._retry_at = None

    def next_deadline(self) -> float | None:
        if self._retry_at is not None and not self.complete:
            return self._retry_at
        return None

    def peer_rates(self) -> dict[str, int]:
        return self.transfers.peer_rates()
