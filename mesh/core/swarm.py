"""Swarming one release: which chunk to ask which peer for, and when.

Rules:
- A release is a root DirManifest. Its *chunk list* is, for every entry in manifest order, the file's
  chunk CIDs (a single-chunk file is its own chunk), each CID once. Manifests are resolved first:
  the root, then the FileManifest of every multi-chunk file; they are fetched like chunks from any
  ready peer, preferring peers that announced the release. A manifest unanswered for
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
- Rarest first: among chunks we lack, that this peer has and nobody is fetching, pick the ones held
  by the fewest peers (random tie-break from the injected rng).
- Endgame: when at most `endgame_missing_max` chunks are missing and all of them are in flight,
  duplicate each request that is late (unanswered for `request_latency_target_s`) to another peer
  that holds the chunk (at most `endgame_copies_max` per chunk); the first arrival wins and the
  others are cancelled. Only late ones: a copy of a request about to be answered is pure waste.
- A request unanswered after `request_timeout_s` returns its chunk to the pool.
- Chunks arrive assembled; the node verifies and stores them and then reports `stored` (we hold
  it) or `rejected` (the peer is dropped by the node, the chunk goes back to the pool). While a
  delivered chunk is being verified it counts as in flight, so it is not requested again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mesh.content.cid import RAW, Cid
from mesh.content.manifest import DirManifest, FileManifest, decode_manifest
from mesh.errors import RemoteProtocolError


@dataclass(frozen=True)
class SwarmLimits:
    """Bounds of the scheduler."""

    depth_min: int = 2  # requests in flight per peer, at least
    depth_start: int = 4  # ... at first
    depth_max: int = 24  # ... at most
    request_timeout_s: float = 20.0  # give a request up after this long
    request_latency_target_s: float = 1.0  # a chunk delivered within this grows the pipeline
    endgame_copies_max: int = 2  # peers asked for one chunk at once, in endgame
    endgame_missing_max: int = 8  # endgame starts only when at most this many chunks are missing
    manifest_requests_max: int = 8  # manifests in flight at once
    lacked_retry_s: float = 5.0  # ask a peer that said it lacks a manifest again only after this


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


def _bit(bits: bytearray | bytes, index: int) -> bool:
    return bool(bits[index >> 3] & (0x80 >> (index & 7)))


def _set_bit(bits: bytearray, index: int) -> None:
    bits[index >> 3] |= 0x80 >> (index & 7)


class Swarm:
    """Scheduler state for the release this node wants now."""

    def __init__(self, root: Cid, limits: SwarmLimits, rng: random.Random) -> None:
        self.root = root
        self.limits = limits
        self._rng = rng
        self._manifests: dict[Cid, DirManifest | FileManifest] = {}
        self.chunks: list[Cid] | None = None  # the chunk list, once every manifest is known
        self._index: dict[Cid, int] = {}
        self._sizes: list[int] = []
        self._have = bytearray()
        self._missing: dict[int, None] = {}  # indices we lack, in list order
        self.have_bytes = 0
        self.total_bytes = 0
        self._availability: list[int] = []
        self._peers: dict[str, _Peer] = {}
        self._present: set[Cid] = set()  # chunks the store reported before the list was known
        self._manifest_inflight: dict[Cid, dict[str, float]] = {}  # manifest -> {peer: asked at}
        self._retry_at: float | None = None  # when a late request (manifest or endgame) gets a copy
        self._rejected_by: dict[Cid, set[str]] = {}
        self._storing: set[Cid] = set()  # delivered, not yet reported stored or rejected
        self._withheld: set[int] = set()  # indices of chunks consent or retention took away
        self._lacked: dict[Cid, dict[str, float]] = {}  # manifest -> {peer: when it said it lacks it}

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
        return self._wanted_manifest_set()

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

    def add_manifest(self, cid: Cid, data: bytes) -> None:
        """A manifest of this release we hold (verified by the caller); may complete the list."""
        try:
            self._manifests[cid] = decode_manifest(data)
        except ValueError as exc:
            raise RemoteProtocolError(f"manifest {cid} does not decode: {exc}") from None
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

    def is_manifest(self, cid: Cid) -> bool:
        return cid == self.root or (cid.codec != RAW and cid in self._wanted_manifest_set())

    def _wanted_manifest_set(self) -> set[Cid]:
        root = self._manifests.get(self.root)
        if not isinstance(root, DirManifest):
            return set()
        return {entry.cid for entry in root.entries if entry.cid.codec != RAW}

    def chunk_size(self, cid: Cid) -> int | None:
        index = self._index.get(cid)
        return None if index is None else self._sizes[index]

    # ---- peers --------------------------------------------------------------------------------

    def add_peer(self, node: str) -> None:
        self._peers.setdefault(node, _Peer(depth=self.limits.depth_start))

    def remove_peer(self, node: str) -> None:
        """The peer is gone: forget its holdings; its requests go back to the pool."""
        peer = self._peers.pop(node, None)
        if peer is None:
            return
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
        peer.announced = True
        if self.chunks is None:
            peer.early = (count, bytes(bits))
            return
        if count != len(self.chunks) or len(bits) != (count + 7) // 8:
            if count == 0:  # the peer does not know the list yet
                return
            raise RemoteProtocolError(f"Have lists {count} chunks, the release has {len(self.chunks)}")
        if peer.bits is not None:
            for index in range(count):
                if _bit(peer.bits, index):
                    self._availability[index] -= 1
        peer.bits = bytearray(bits)
        for index in range(count):
            if _bit(peer.bits, index):
                self._availability[index] += 1

    def peer_progress(self, node: str) -> tuple[int, int | None] | None:
        """(chunks the peer holds, chunks in the release or None while the list is unknown), or
        None if the peer has not announced anything for this release."""
        peer = self._peers.get(node)
        if peer is None or not peer.announced and peer.bits is None:
            return None
        if self.chunks is None or peer.bits is None:
            return 0, None if self.chunks is None else len(self.chunks)
        return int.from_bytes(peer.bits, "big").bit_count(), len(self.chunks)

    def peer_update(self, node: str, indices: tuple[int, ...]) -> None:
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

    def peer_lacks(self, node: str, cid: Cid, now: float) -> None:
        """The peer said it cannot serve `cid` (ChunkMissing)."""
        peer = self._peers.get(node)
        if peer is None:
            return
        peer.inflight.pop(cid, None)
        if cid in self._manifest_inflight:
            self._lacked.setdefault(cid, {})[node] = now
        self._drop_manifest_request(cid, node)
        index = self._index.get(cid)
        if index is not None and peer.bits is not None and _bit(peer.bits, index):
            peer.bits[index >> 3] &= ~(0x80 >> (index & 7)) & 0xFF
            self._availability[index] -= 1

    # ---- scheduling ---------------------------------------------------------------------------

    def schedule(self, now: float, nodes: list[str]) -> list[tuple[str, Cid]]:
        """Requests to send now: manifests first, then rarest-first chunks, then endgame copies."""
        self._retry_at = None
        if self.chunks is None:
            return self._schedule_manifests(now, nodes)
        if self.complete or not self._any_room(nodes):
            return []  # nothing can be sent: skip the scan (it runs after every event)
        requests: list[tuple[str, Cid]] = []
        order = list(nodes)
        self._rng.shuffle(order)
        fetching = self._fetching()
        wanted = [i for i in self._missing if self.chunks[i] not in fetching]
        # Rarest first, ties at random: one order for this round; each peer walks it and takes
        # what it holds until its pipeline is full (chunks taken join `fetching`).
        draws = {i: self._rng.random() for i in wanted}
        wanted.sort(key=lambda i: (self._availability[i], draws[i]))
        for node in order:
            requests += self._fill_pipeline(node, now, wanted, fetching)
        requests += self._endgame(now, order, fetching)
        return requests

    def _any_room(self, nodes: list[str]) -> bool:
        for node in nodes:
            peer = self._peers.get(node)
            if peer is not None and peer.bits is not None and len(peer.inflight) < peer.depth:
                return True
        return False

    def _schedule_manifests(self, now: float, nodes: list[str]) -> list[tuple[str, Cid]]:
        """New manifest requests, round-robin over peers (announced first); then a second copy of
        each request unanswered for `request_latency_target_s`, to a peer not yet asked."""
        ordered = sorted(nodes, key=lambda n: (not self._peers[n].announced, self._rng.random()))
        if not ordered:
            return []
        missing = [c for c in self.manifests_missing() if c not in self._storing]
        room = self.limits.manifest_requests_max - len(self._manifest_inflight)
        requests = []
        for cid in missing:
            asked = self._manifest_inflight.get(cid)
            candidates = self._not_lacking(cid, ordered, now)
            if not candidates:
                continue
            if asked is None and room > 0:
                room -= 1
                requests.append(self._ask_manifest(cid, candidates[len(requests) % len(candidates)], now))
            elif asked and len(asked) < self.limits.endgame_copies_max:
                requests += self._manifest_copy(cid, asked, candidates, now)
        return requests

    def _not_lacking(self, cid: Cid, nodes: list[str], now: float) -> list[str]:
        """`nodes` except those that said they lack `cid` within `lacked_retry_s` (and when the
        first of those may be asked again, as a retry time)."""
        lacked = self._lacked.get(cid)
        if not lacked:
            return nodes
        fresh = {n: at for n, at in lacked.items() if at + self.limits.lacked_retry_s > now}
        self._lacked[cid] = fresh
        if fresh:
            due = min(fresh.values()) + self.limits.lacked_retry_s
            self._retry_at = due if self._retry_at is None else min(self._retry_at, due)
        return [n for n in nodes if n not in fresh]

    def _ask_manifest(self, cid: Cid, node: str, now: float) -> tuple[str, Cid]:
        self._manifest_inflight.setdefault(cid, {})[node] = now
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
        due = sent + self.limits.request_latency_target_s
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

    def _fill_pipeline(self, node: str, now: float, wanted: list[int],
                       fetching: dict[Cid, int]) -> list[tuple[str, Cid]]:
        """Fill `node`'s pipeline from `wanted` (indices we lack and nobody was fetching when this
        round began); chunks chosen here join `fetching`."""
        peer = self._peers.get(node)
        if peer is None or peer.bits is None:
            return []
        room = peer.depth - len(peer.inflight)
        if room <= 0:
            return []
        chosen = []
        bits, chunks, rejected_by = peer.bits, self.chunks, self._rejected_by
        for index in wanted:
            if bits[index >> 3] & (0x80 >> (index & 7)):
                cid = chunks[index]
                if cid not in fetching and node not in rejected_by.get(cid, ()):
                    chosen.append(cid)
                    fetching[cid] = 1
                    if len(chosen) >= room:
                        break
        for cid in chosen:
            peer.inflight[cid] = now
            fetching[cid] = 1
        return [(node, cid) for cid in chosen]

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
        if sent is not None:
            self._adapt_depth(peer, now - sent)
            peer.delivered_bytes += self.chunk_size(cid) or 0
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

    def store_failed(self, cid: Cid) -> None:
        """The chunk verified but could not be stored (disk full...): it goes back to the pool."""
        self._storing.discard(cid)

    def expired(self, now: float) -> list[tuple[str, Cid]]:
        """Requests past their timeout, now returned to the pool (each peer's depth halves)."""
        limit = now - self.limits.request_timeout_s
        gone: list[tuple[str, Cid]] = []
        for node, peer in self._peers.items():
            late = [cid for cid, sent in peer.inflight.items() if sent <= limit]
            for cid in late:
                del peer.inflight[cid]
                gone.append((node, cid))
            if late:
                peer.depth = max(self.limits.depth_min, peer.depth // 2)
        for cid, asked in list(self._manifest_inflight.items()):
            for node in [n for n, sent in asked.items() if sent <= limit]:
                self._drop_manifest_request(cid, node)
                gone.append((node, cid))
        return gone

    def defer_retry(self) -> None:
        """Scheduling is paused (settling, inventory due, or a track we only seed): forget the
        pending retry time so it does not ask for a wake-up now; the next `schedule` sets it."""
        self._retry_at = None

    def next_deadline(self) -> float | None:
        times = [sent for peer in self._peers.values() for sent in peer.inflight.values()]
        times += [sent for asked in self._manifest_inflight.values() for sent in asked.values()]
        deadline = min(times) + self.limits.request_timeout_s if times else None
        if self._retry_at is not None and not self.complete:
            deadline = self._retry_at if deadline is None else min(deadline, self._retry_at)
        return deadline

    def peer_rates(self) -> dict[str, int]:
        return {node: peer.delivered_bytes for node, peer in self._peers.items()}
