"""Swarming one release: which chunk to ask which peer for, and when.

Rules:
- A release is a root DirManifest. Its *chunk list* is, for every entry in manifest order, the file's
  chunk CIDs (a single-chunk file is its own chunk), each CID once. Manifests are resolved first:
  the root, then the FileManifest of every multi-chunk file; they are fetched like chunks, from the
  peers known to hold them (those that announced the release, and its publisher; any ready peer
  when none of those is connected). A manifest unanswered for
  `request_latency_target_s` is also asked of another peer (at most `endgame_copies_max` at once):
  manifests are small, and one stalled peer must not hold up the whole list.
- Peers announce a bitfield over the same list (`Have`) and then increments (`HaveUpdate`). A
  bitfield whose length disagrees with ours is a protocol error (the peer and we disagree on the
  release's contents, which a verified root makes impossible for an honest peer).
- Each peer has a pipeline of at most `depth` requests in flight (adaptive: grows by one per chunk
  delivered in time, that is within `request_latency_target_s` of its request; shrinks by one per
  chunk that took longer; halves on a timeout; always within [depth_min, depth_max]). Latency, not
  just delivery, steers it: a peer that many others also ask (a lone seed) answers late, and a deep
  pipeline there would hoard chunks other peers could serve sooner.
- A node-wide budget bounds the bytes in flight over all peers: what this node received in the last
  `rate_window_s`, scaled to `inflight_queue_s` of queue (within [inflight_bytes_min,
  inflight_bytes_max]; `inflight_bytes_start` until a rate is known). Per-peer pipelines alone do
  not bound it: on a shared medium (one Wi-Fi access point) forty peers times two chunks each is
  more than the air carries in a timeout, and requests would time out and be sent again, each
  copy taking more air (congestion collapse). The budget keeps queueing near `inflight_queue_s`.
- Rarest first, chunk by chunk: every chunk we lack and nobody is fetching, fewest holders first
  (ties in an order the injected rng draws once per node, so nodes do not all chase the same chunk),
  goes to the holder with the most room in its pipeline (a slow or busy peer's pipeline has shrunk).
- Seed avoidance: a peer that holds the whole release (a seed) is asked for a chunk only if no other
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
- Endgame: when at most `endgame_missing_max` chunks are missing and all of them are in flight,
  duplicate each request that is late (unanswered for `request_latency_target_s`, or twice the
  queueing the budget expects if that is longer) to another peer that holds the chunk (at most
  `endgame_copies_max` per chunk); the first arrival wins and the others are cancelled. Only late
  ones: a copy of a request about to be answered is pure waste.
- Work is proportional to what changed: `schedule` returns at once unless something that can free
  or create work happened since its last run (a delivery, a timeout, a new holder with room...) or a
  retry time passed; request timeouts are checked when the earliest one is due.
- A request unanswered after `request_timeout_s` returns its chunk to the pool.
- Chunks arrive assembled; the node verifies and stores them and then reports `stored` (we hold
  it) or `rejected` (the peer is dropped by the node, the chunk goes back to the pool). While a
  delivered chunk is being verified it counts as in flight, so it is not requested again.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.content.cid import RAW, Cid
from mesh.content.manifest import DirManifest, FileManifest, decode_manifest
from mesh.errors import RemoteProtocolError


@dataclass(frozen=True)
class SwarmLimits:
    """Bounds of the scheduler."""

    depth_min: int = 1  # requests in flight per peer, at least (a slow peer keeps one)
    depth_start: int = 4  # ... at first
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
    rate_window_s: float = 2.0  # the receive rate is measured over this window
    seed_cancel_s: float = 1.0  # a seed's request this young is cancelled when a non-seed announces it
    seed_busy_retry_s: float = 1.0  # a chunk a peer declined (ChunkBusy) is asked of it again after this


@dataclass
class _Peer:
    """What we know of one peer's holdings and our requests to it."""

    bits: bytearray | None = None  # its bitfield over our chunk list, once both are known
    early: tuple[int, bytes] | None = None  # a Have that came before we knew the list
    early_updates: list[int] = field(default_factory=list)  # HaveUpdates before we knew the list
    inflight: dict[Cid, float] = field(default_factory=dict)  # requested chunk -> sent at
    depth: int = 4  # current pipeline target
    announced: bool = False  # sent a Have for this release
    delivered_bytes: int = 0  # chunk bytes it delivered
    count: int = 0  # chunks its bitfield holds
    stalled: bool = False  # a request to it timed out since it last delivered


def _bit(bits: bytearray | bytes, index: int) -> bool:
    return bool(bits[index >> 3] & (0x80 >> (index & 7)))


def _set_bit(bits: bytearray, index: int) -> None:
    bits[index >> 3] |= 0x80 >> (index & 7)


class Swarm:
    """Scheduler state for the release this node wants now."""

    def __init__(self, root: Cid, limits: SwarmLimits, rng: random.Random, publisher: str | None = None) -> None:
        self.root = root
        self.publisher = publisher  # the node that made the release: it holds every manifest
        self.limits = limits
        self._rng = rng
        self._manifests: dict[Cid, DirManifest | FileManifest] = {}
        self._manifest_data: dict[Cid, bytes] = {}  # ... as verified bytes, for serving them
        self._file_manifests: frozenset[Cid] = frozenset()  # the root's multi-chunk files, once known
        self.chunks: list[Cid] | None = None  # the chunk list, once every manifest is known
        self._index: dict[Cid, int] = {}
        self._sizes: list[int] = []
        self._have = bytearray()
        self._missing: dict[int, None] = {}  # indices we lack, in list order
        self.have_bytes = 0
        self.total_bytes = 0
        self._availability: list[int] = []
        self._ties: list[int] = []  # chunk index -> its rank among equally rare chunks (random per node)
        self._at_seed: dict[Cid, str] = {}  # chunk -> the seed it was asked of (may be stale: checked)
        self._busy_until: dict[Cid, dict[str, float]] = {}  # chunk -> {peer: not asked again before}
        self._peers: dict[str, _Peer] = {}
        self._present: set[Cid] = set()  # chunks the store reported before the list was known
        self._manifest_inflight: dict[Cid, dict[str, float]] = {}  # manifest -> {peer: asked at}
        self._retry_at: float | None = None  # when a late request (manifest or endgame) gets a copy
        self._rejected_by: dict[Cid, set[str]] = {}
        self._storing: set[Cid] = set()  # delivered, not yet reported stored or rejected
        self._withheld: set[int] = set()  # indices of chunks consent or retention took away
        self._lacked: dict[Cid, dict[str, float]] = {}  # manifest -> {peer that said it lacks it: ask again from}
        self._dirty = True  # something changed that may allow new requests since `schedule` ran
        self._expire_at = float("inf")  # no request times out before this
        self._received: deque[tuple[float, int]] = deque()  # (when, bytes) of recent deliveries
        self._busy_since: float | None = None  # when requests last went from none to some in flight
        self._late_s = limits.request_latency_target_s  # a request older than this is late
        self._budget_left = limits.inflight_bytes_start  # bytes the budget had left after `schedule`

    # ---- local holdings -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.chunks is not None

    @property
    def complete(self) -> bool:
        return self.chunks is not None and not self._missing

    @property
    def wanted_bytes(self) -> int:
        """Bytes of the release this node should hold: everything not withheld."""
        return self.total_bytes - sum(self._sizes[i] for i in self._withheld)

    @property
    def wanted_have_bytes(self) -> int:
        """Bytes held of what this node should hold."""
        return self.have_bytes - sum(self._sizes[i] for i in self._withheld if _bit(self._have, i))

    def file_manifests(self) -> set[Cid]:
        """CIDs of the release's file manifests (files of several chunks)."""
        return set(self._file_manifests)

    def chunks_only_in(self, files: set[Cid]) -> set[Cid]:
        """The data chunks of the release only `files` use (no other file shares them). File
        manifests are not among them: they hold hashes, not media, and every node needs them to
        build the same chunk list. Empty until the chunk list is known."""
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
            cid = self.chunks[index]
            for peer in self._peers.values():
                peer.inflight.pop(cid, None)
        self._withheld = now_withheld
        self._dirty = True

    def add_manifest(self, cid: Cid, data: bytes) -> None:
        """A manifest of this release we hold (verified by the caller); may complete the list."""
        try:
            manifest = self._manifests[cid] = decode_manifest(data)
        except ValueError as exc:
            raise RemoteProtocolError(f"manifest {cid} does not decode: {exc}") from None
        self._manifest_data[cid] = data
        if cid == self.root and isinstance(manifest, DirManifest):
            self._file_manifests = frozenset(e.cid for e in manifest.entries if e.cid.codec != RAW)
        self._manifest_inflight.pop(cid, None)
        self._storing.discard(cid)
        if self.chunks is None and not self.manifests_missing():
            self._build_list()

    def add_present(self, cids: set[Cid]) -> None:
        """Chunks the store holds (from its inventory)."""
        for cid in cids:
            self.mark_have(cid) if self.ready else self._present.add(cid)

    def manifests_missing(self) -> list[Cid]:
        """Manifests still needed before the chunk list is known, in a stable order."""
        root = self._manifests.get(self.root)
        if root is None:
            return [self.root]
        if not isinstance(root, DirManifest):
            return []
        needed = []
        for entry in root.entries:
            if entry.cid.codec != RAW and entry.cid not in self._manifests:
                needed.append(entry.cid)
        return list(dict.fromkeys(needed))

    def _build_list(self) -> None:
        root = self._manifests[self.root]
        if not isinstance(root, DirManifest):
            raise RemoteProtocolError(f"release root {self.root} is not a directory manifest")
        chunks: list[Cid] = []
        sizes: list[int] = []
        for entry in root.entries:
            self.total_bytes += entry.size
            if entry.cid.codec == RAW:
                spans = [(entry.cid, entry.size)]
            else:
                manifest = self._manifests[entry.cid]
                if not isinstance(manifest, FileManifest) or manifest.size != entry.size:
                    raise RemoteProtocolError(f"file manifest {entry.cid} does not match its entry")
                spans = [(cid, length) for cid, _, length in manifest.spans()]
            for cid, length in spans:
                if cid not in self._index:
                    self._index[cid] = len(chunks)
                    chunks.append(cid)
                    sizes.append(length)
        self.chunks, self._sizes = chunks, sizes
        self._ties = list(range(len(chunks)))
        self._rng.shuffle(self._ties)  # this node's random order among equally rare chunks
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
            peer.early, peer.early_updates = None, []
        self._dirty = True

    def mark_have(self, cid: Cid) -> int | None:
        """We now hold this chunk; its index if it is in the list and was new."""
        self._storing.discard(cid)
        index = self._index.get(cid)
        if index is None or _bit(self._have, index):
            return None
        _set_bit(self._have, index)
        self._missing.pop(index, None)
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

    def manifest_data(self, cid: Cid) -> bytes | None:
        """The verified bytes of one of this release's manifests we hold, else None."""
        return self._manifest_data.get(cid)

    def is_manifest(self, cid: Cid) -> bool:
        return cid == self.root or cid in self._file_manifests

    def chunk_size(self, cid: Cid) -> int | None:
        index = self._index.get(cid)
        return None if index is None else self._sizes[index]

    # ---- peers --------------------------------------------------------------------------------

    def add_peer(self, node: str) -> None:
        self._peers.setdefault(node, _Peer(depth=self.limits.depth_start))
        self._dirty = True

    def remove_peer(self, node: str) -> None:
        """The peer is gone: forget its holdings; its requests go back to the pool."""
        peer = self._peers.pop(node, None)
        if peer is None:
            return
        self._dirty = True
        if peer.bits is not None:
            for index in range(len(self._availability)):
                if _bit(peer.bits, index):
                    self._availability[index] -= 1
        for cid in list(self._manifest_inflight):
            self._drop_manifest_request(cid, node)

    def peer_have(self, node: str, count: int, bits: bytes) -> None:
        peer = self._peers.get(node)
        if peer is None:
            return
        peer.announced = peer.announced or count > 0  # it knows the list, so it holds the manifests
        if self.chunks is None:
            peer.early = (count, bytes(bits))
            return
        if count != len(self.chunks) or len(bits) != (count + 7) // 8:
            if count == 0:  # the peer does not know the list yet
                return
            raise RemoteProtocolError(f"Have lists {count} chunks, the release has {len(self.chunks)}")
        old = peer.bits if peer.bits is not None else bytes(len(bits))
        availability = self._availability
        for at, (before, after) in enumerate(zip(old, bits)):
            if before == after:
                continue  # a Have mostly repeats what we knew: touch only the bytes that differ
            for bit in range(8):
                mask = 0x80 >> bit
                if (before ^ after) & mask:
                    availability[at * 8 + bit] += 1 if after & mask else -1
        peer.bits = bytearray(bits)
        peer.count = int.from_bytes(bits, "big").bit_count()
        self._dirty = True

    def peer_progress(self, node: str) -> tuple[int, int | None] | None:
        """(chunks the peer holds, chunks in the release or None while the list is unknown), or
        None if the peer has not announced anything for this release."""
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
            peer.early_updates.extend(indices[: len(indices)])
            del peer.early_updates[1 << 20:]
            return
        if peer.bits is None:
            peer.bits = bytearray(len(self._have))
        for index in indices:
            if index >= len(self.chunks):
                raise RemoteProtocolError(f"HaveUpdate index {index} is past the chunk list")
            if not _bit(peer.bits, index):
                _set_bit(peer.bits, index)
                self._availability[index] += 1
                peer.count += 1
                if index in self._missing and len(peer.inflight) < peer.depth and self._budget_left > 0:
                    self._dirty = True  # a chunk we lack at a peer with room, budget to spare

    def seed_requests_to_cancel(self, node: str, indices: tuple[int, ...], now: float,
                                arriving: Callable[[str, Cid], bool]) -> list[tuple[str, Cid]]:
        """(seed, cid) requests to cancel now that `node` announced `indices`: chunks we asked a
        seed for that this non-seed peer can serve instead. Only a young seed request whose bytes
        have not started to arrive (`arriving(seed, cid)`): it waits in the seed's queue, or is held
        there while the seed sends the chunk to someone else. Not an older one: on a shared medium
        it is probably in the air already, and cancelling it would cost the bytes twice (without
        this limit the venue simulation delivered 3x the duplicates)."""
        announcer = self._peers.get(node)
        if announcer is None or self.chunks is None or announcer.count >= len(self.chunks):
            return []  # a seed announced
        if not self._at_seed or len(announcer.inflight) >= announcer.depth:
            return []  # no seed requests, or the announcer is busy with ours
        cancels = []
        for index in indices:
            cid = self.chunks[index]
            seed = self._at_seed.pop(cid, None)
            peer = self._peers.get(seed) if seed is not None else None
            if (peer is not None and cid in peer.inflight and cid not in self._storing and not arriving(seed, cid)
                    and peer.inflight[cid] > now - self.limits.seed_cancel_s):
                del peer.inflight[cid]
                cancels.append((seed, cid))
                self._dirty = True
        return cancels

    def peer_busy(self, node: str, cid: Cid, now: float) -> None:
        """`node` declined our request for `cid` (ChunkBusy: it is sending the chunk to another
        peer, which will announce it; seeds do this). Fetch it from another peer that holds it, or
        ask `node` again after `seed_busy_retry_s`."""
        peer = self._peers.get(node)
        if peer is None or peer.inflight.pop(cid, None) is None:
            return
        self._at_seed.pop(cid, None)
        self._busy_until.setdefault(cid, {})[node] = now + self.limits.seed_busy_retry_s
        self._dirty = True

    def peer_lacking(self, node: str, indices: tuple[int, ...]) -> tuple[int, ...]:
        """Those of `indices` the peer's bitfield lacks (all of them while it is unknown)."""
        peer = self._peers.get(node)
        bits = peer.bits if peer is not None else None
        if bits is None:
            return indices
        return tuple(i for i in indices if not bits[i >> 3] & (0x80 >> (i & 7)))

    def peer_lacks(self, node: str, cid: Cid, now: float) -> None:
        """The peer said it cannot serve `cid` (ChunkMissing)."""
        peer = self._peers.get(node)
        if peer is None:
            return
        peer.inflight.pop(cid, None)
        if cid in self._manifest_inflight:
            self._lacked.setdefault(cid, {})[node] = now + self.limits.lacked_retry_s
        self._drop_manifest_request(cid, node)
        index = self._index.get(cid)
        if index is not None and peer.bits is not None and _bit(peer.bits, index):
            peer.bits[index >> 3] &= ~(0x80 >> (index & 7)) & 0xFF
            self._availability[index] -= 1
            peer.count -= 1
        self._dirty = True

    # ---- scheduling ---------------------------------------------------------------------------

    def schedule(self, now: float, nodes: list[str]) -> list[tuple[str, Cid]]:
        """Requests to send now: manifests first, then rarest-first chunks, then endgame copies."""
        if self.chunks is None:
            self._retry_at = None
            return self._schedule_manifests(now, nodes)
        if self.complete or not self._dirty and (self._retry_at is None or now < self._retry_at):
            return []  # nothing changed that could allow a request (this runs after every event)
        self._dirty, self._retry_at = False, None
        fetching = self._fetching()
        order = list(nodes)
        self._rng.shuffle(order)
        inflight_bytes = self._inflight_bytes()
        if not inflight_bytes and not self._storing:
            self._busy_since = None  # idle until now: the rate is measured afresh
        rate = self._receive_rate(now)
        budget = self._budget(rate)
        expected_s = inflight_bytes / rate if rate else self.limits.inflight_queue_s
        self._late_s = max(self.limits.request_latency_target_s, 2 * expected_s)
        self._budget_left = budget - inflight_bytes
        requests = self._assign(now, order, fetching)
        requests += self._endgame(now, order, fetching)
        if requests and self._busy_since is None:
            self._busy_since = now
        return requests

    def _inflight_bytes(self) -> int:
        sizes, index = self._sizes, self._index
        return sum(sizes[index[cid]] for peer in self._peers.values() for cid in peer.inflight if cid in index)

    def _receive_rate(self, now: float) -> float | None:
        """Bytes per second delivered over the last `rate_window_s` of fetching; None until a
        window's worth (or half of one, with deliveries) has passed."""
        window = self.limits.rate_window_s
        received = self._received
        while received and received[0][0] < now - window:
            received.popleft()
        if self._busy_since is None:
            return None
        elapsed = min(window, now - self._busy_since)
        if elapsed < window / 2 or (elapsed < window and not received):
            return None
        return sum(size for _, size in received) / elapsed

    def _budget(self, rate: float | None) -> int:
        limits = self.limits
        if rate is None:
            return limits.inflight_bytes_start
        return int(min(limits.inflight_bytes_max, max(limits.inflight_bytes_min, rate * limits.inflight_queue_s)))

    def _assign(self, now: float, order: list[str], fetching: dict[Cid, int]) -> list[tuple[str, Cid]]:
        """Chunk by chunk, rarest first: each goes to a holder with room (a non-seed if any holds
        it), while the node-wide budget lasts. Chunks chosen here join `fetching`."""
        chunks, total = self.chunks, len(self.chunks)
        room: dict[str, int] = {}
        seeds = 0
        stalled = False
        for node in order:
            peer = self._peers.get(node)
            if peer is None or peer.bits is None:
                continue
            seeds += peer.count == total
            stalled = stalled or (peer.stalled and peer.count < total)
            if len(peer.inflight) < peer.depth:
                room[node] = peer.depth - len(peer.inflight)
        if not room or self._budget_left <= 0:
            return []
        wanted = [i for i in self._missing if chunks[i] not in fetching]
        availability, ties = self._availability, self._ties
        wanted.sort(key=lambda i: availability[i] * total + ties[i])
        peers, rejected_by, busy_until = self._peers, self._rejected_by, self._busy_until
        requests = []
        for index in wanted:
            cid = chunks[index]
            byte, mask = index >> 3, 0x80 >> (index & 7)
            refused = rejected_by.get(cid, ())
            holders = [n for n in room if peers[n].bits[byte] & mask and n not in refused]
            if busy_until and cid in busy_until:
                holders = self._excluding(busy_until, cid, holders, now)
            if not holders:
                continue
            others = [n for n in holders if peers[n].count < total]
            if others:
                node = max(others, key=room.__getitem__)  # the least loaded (pipelines shrink when slow)
            elif availability[index] > seeds and not stalled:
                continue  # a non-seed peer holds it: leave the seed's upload for what only it has
            else:
                node = holders[0]
                self._at_seed[cid] = node  # cancelled if a non-seed peer announces it first
            peers[node].inflight[cid] = now
            fetching[cid] = 1
            requests.append((node, cid))
            self._budget_left -= self._sizes[index]
            room[node] -= 1
            if not room[node]:
                del room[node]
            if not room or self._budget_left <= 0:
                break
        if requests:
            self._expire_at = min(self._expire_at, now + self.limits.request_timeout_s)
        return requests

    def _schedule_manifests(self, now: float, nodes: list[str]) -> list[tuple[str, Cid]]:
        """New manifest requests, round-robin over the peers known to hold every manifest (those
        that announced the release, and its publisher), or over any peer when none of those can be
        asked (peers that learned of the release when we did would only say they lack it); then
        a second copy of each request unanswered for `request_latency_target_s`, to a peer not
        yet asked."""
        ordered = sorted(nodes, key=lambda n: (not self._peers[n].announced, self._rng.random()))
        if not ordered:
            return []
        holders = [n for n in ordered if self._peers[n].announced or n == self.publisher]
        missing = [c for c in self.manifests_missing() if c not in self._storing]
        room = self.limits.manifest_requests_max - len(self._manifest_inflight)
        requests = []
        for cid in missing:
            asked = self._manifest_inflight.get(cid)
            candidates = self._not_lacking(cid, holders, now) or self._not_lacking(cid, ordered, now)
            if not candidates:
                continue
            if asked is None and room > 0:
                room -= 1
                requests.append(self._ask_manifest(cid, candidates[len(requests) % len(candidates)], now))
            elif asked and len(asked) < self.limits.endgame_copies_max:
                requests += self._manifest_copy(cid, asked, candidates, now)
        return requests

    def _not_lacking(self, cid: Cid, nodes: list[str], now: float) -> list[str]:
        """`nodes` except those that said they lack `cid` within `lacked_retry_s`."""
        return self._excluding(self._lacked, cid, nodes, now)

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

    def _ask_manifest(self, cid: Cid, node: str, now: float) -> tuple[str, Cid]:
        self._manifest_inflight.setdefault(cid, {})[node] = now
        self._expire_at = min(self._expire_at, now + self.limits.request_timeout_s)
        return node, cid

    def _manifest_copy(self, cid: Cid, asked: dict[str, float], candidates: list[str],
                       now: float) -> list[tuple[str, Cid]]:
        """Ask one more peer for a manifest whose request is late (or say when it will be late)."""
        others = [n for n in candidates if n not in asked and n not in self._rejected_by.get(cid, ())]
        if not others:
            return []
        if not self._late(min(asked.values()), now):
            return []
        return [self._ask_manifest(cid, others[0], now)]

    def _late(self, sent: float, now: float) -> bool:
        """True if a request sent at `sent` is late; if not, remember to look again when it is."""
        due = sent + self._late_s
        if due <= now:
            return True
        self._retry_at = due if self._retry_at is None else min(self._retry_at, due)
        return False

    def _drop_manifest_request(self, cid: Cid, node: str) -> None:
        asked = self._manifest_inflight.get(cid)
        if asked is not None:
            asked.pop(node, None)
            if not asked:
                del self._manifest_inflight[cid]

    def _fetching(self) -> dict[Cid, int]:
        """Chunks requested or being verified -> how many copies (verifying counts as one)."""
        counts: dict[Cid, int] = dict.fromkeys(self._storing, 1)
        for peer in self._peers.values():
            for cid in peer.inflight:
                counts[cid] = counts.get(cid, 0) + 1
        return counts

    def _endgame(self, now: float, nodes: list[str], fetching: dict[Cid, int]) -> list[tuple[str, Cid]]:
        if len(self._missing) > self.limits.endgame_missing_max + len(self._storing):
            return []
        missing = [i for i in self._missing if self.chunks[i] not in self._storing]
        if len(missing) > self.limits.endgame_missing_max or any(self.chunks[i] not in fetching for i in missing):
            return []  # not endgame yet: too much left, or some missing chunk is not in flight
        requests = []
        for index in missing:
            cid = self.chunks[index]
            sent = [p.inflight[cid] for p in self._peers.values() if cid in p.inflight]
            if fetching.get(cid, 0) >= self.limits.endgame_copies_max or not sent or not self._late(min(sent), now):
                continue
            for node in nodes:
                if fetching.get(cid, 0) >= self.limits.endgame_copies_max:
                    break
                peer = self._peers.get(node)
                if (peer is not None and peer.bits is not None and _bit(peer.bits, index) and cid not in peer.inflight
                        and len(peer.inflight) < peer.depth and node not in self._rejected_by.get(cid, ())):
                    peer.inflight[cid] = now
                    fetching[cid] = fetching.get(cid, 0) + 1
                    requests.append((node, cid))
        if requests:
            self._expire_at = min(self._expire_at, now + self.limits.request_timeout_s)
        return requests

    def requested_from(self, node: str, cid: Cid) -> bool:
        """True if we asked `node` for `cid` and are still waiting."""
        peer = self._peers.get(node)
        if peer is not None and cid in peer.inflight:
            return True
        return node in self._manifest_inflight.get(cid, ())

    def delivered(self, node: str, cid: Cid, now: float) -> list[tuple[str, Cid]]:
        """A whole chunk arrived from `node` (not yet verified); returns (peer, cid) to cancel."""
        peer = self._peers.get(node)
        sent = peer.inflight.pop(cid, None) if peer is not None else None
        self._at_seed.pop(cid, None)
        self._dirty = True
        if sent is not None:
            self._adapt_depth(peer, now - sent)
            size = self.chunk_size(cid) or 0
            peer.delivered_bytes += size
            peer.stalled = False
            self._received.append((now, size))
        others_asked = self._manifest_inflight.pop(cid, {})
        self._storing.add(cid)
        cancels = [(other_node, cid) for other_node in others_asked if other_node != node]
        for other_node, other in self._peers.items():
            if cid in other.inflight:
                del other.inflight[cid]
                cancels.append((other_node, cid))
        return cancels

    def _adapt_depth(self, peer: _Peer, latency_s: float) -> None:
        if latency_s <= self.limits.request_latency_target_s:
            peer.depth = min(peer.depth + 1, self.limits.depth_max)
        else:
            peer.depth = max(peer.depth - 1, self.limits.depth_min)

    def rejected(self, node: str, cid: Cid) -> None:
        """The chunk from `node` did not verify: never ask that peer for it again."""
        self._storing.discard(cid)
        self._rejected_by.setdefault(cid, set()).add(node)
        self._dirty = True

    def store_failed(self, cid: Cid) -> None:
        """The chunk verified but could not be stored (disk full...): it goes back to the pool."""
        self._storing.discard(cid)
        self._dirty = True

    def expired(self, now: float) -> list[tuple[str, Cid]]:
        """Requests past their timeout, now returned to the pool (each peer's depth halves)."""
        if now < self._expire_at:
            return []
        limit = now - self.limits.request_timeout_s
        gone: list[tuple[str, Cid]] = []
        for node, peer in self._peers.items():
            late = [cid for cid, sent in peer.inflight.items() if sent <= limit]
            for cid in late:
                del peer.inflight[cid]
                gone.append((node, cid))
            if late:
                peer.depth = max(self.limits.depth_min, peer.depth // 2)
                peer.stalled = True
        for cid, asked in list(self._manifest_inflight.items()):
            for node in [n for n, sent in asked.items() if sent <= limit]:
                self._drop_manifest_request(cid, node)
                gone.append((node, cid))
        sent_times = [sent for peer in self._peers.values() for sent in peer.inflight.values()]
        sent_times += [sent for asked in self._manifest_inflight.values() for sent in asked.values()]
        self._expire_at = min(sent_times) + self.limits.request_timeout_s if sent_times else float("inf")
        if gone:
            self._dirty = True
        return gone

    def defer_retry(self) -> None:
        """Scheduling is paused (settling, inventory due, or a track we only seed): forget the
        pending retry time so it does not ask for a wake-up now; the next `schedule` sets it."""
        self._retry_at = None

    def next_deadline(self) -> float | None:
        deadline = self._expire_at if self._expire_at != float("inf") else None
        if self._retry_at is not None and not self.complete:
            deadline = self._retry_at if deadline is None else min(deadline, self._retry_at)
        return deadline

    def peer_rates(self) -> dict[str, int]:
        return {node: peer.delivered_bytes for node, peer in self._peers.items()}
