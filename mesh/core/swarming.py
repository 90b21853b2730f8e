"""Releases and swarming inside `NodeCore`: which releases this node fetches and seeds, the
have/want signals, chunk requests and deliveries, and what consent withholds.

Theory of operation:
- A *track* is one release root this node works on. The current release (the mesh's pointer) and
  every release the node's config pins are *fetch* tracks: their chunks are requested until the
  store holds them all. A Have from a peer naming another verified release of this mesh opens a
  *passive* track (at most PASSIVE_TRACKS_MAX, least recently announced dropped first): we never
  request for it, but we announce what the store holds of it, so a hub that pins an old release can
  fetch it from whoever still has it (any node that holds a chunk seeds it).
- Per track, a `Swarm` schedules requests (rarest first, pipelines, endgame). The current track is
  scheduled first. A chunk stored for one track counts for every track that lists it.
- Consent and retention: assets they hide are re-evaluated after state changes (throttled by the
  size of the asset map) and every WITHHELD_RECHECK_S. Their media (single-chunk files, and chunks
  only hidden files use) is *withheld*: never requested, never served (ChunkMissing). File
  manifests stay shareable: they hold hashes, not media, and every node needs them to build the same
  chunk list (bitfields index into it).
- Settling: a node that was offline may lack a revoke a peer brings. After start, until it met every
  peer it knows of (at most STARTUP_SETTLE_S), and until our state caught up once with each newly
  ready peer (or HEADS_FALLBACK_S passed), we neither serve nor request media chunks; requests
  that arrive meanwhile wait, then consent is re-evaluated before any of them is answered. Release
  manifests (hashes, never withheld) are served and fetched meanwhile, so the chunk list is known
  when settling ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.content.cid import RAW, Cid
from mesh.core.events import (
    AssetsEvaluated, CancelServe, ChunkRejected, ChunkServed, ChunkStored, EvaluateAssets, LoadRelease,
    ReleaseInventory, ServeChunk, StoreChunk,
)
from mesh.core.session import Session
from mesh.core.swarm import Swarm, Transfers
from mesh.errors import RemoteProtocolError
from mesh.state.consent import asset_statuses
from mesh.state.releases import Release, ReleaseBook
from mesh.wire import messages as m

FEATURE_CHUNK_BUSY = "chunk-busy/1"  # a peer listing this in its Hello understands ChunkBusy
FEATURE_SHARED_MEDIUM = "medium-shared/1"  # a peer listing this is a station of a shared medium (Wi-Fi)
SERVE_QUEUE_MAX = 64  # chunk requests a peer may have waiting on us
CORRUPT_BAN_S = 600.0  # a peer that sent a corrupt chunk is refused this long
HEADS_FALLBACK_S = 3.0  # use Automerge sync with a peer whose heads we still do not know by then
STARTUP_SETTLE_S = 5.0  # after start, move no chunk bytes this long: meet peers, catch up on state
WITHHELD_RECHECK_S = 30.0  # re-evaluate consent and retention this often even without changes
WITHHELD_GAP_MIN_S = 0.05  # after a state change, re-evaluate no sooner than this after the last time
WITHHELD_GAP_PER_ASSET_S = 0.001  # ... plus this per asset (a pass reads every asset record)
PASSIVE_TRACKS_MAX = 4  # releases we only announce (never fetch) at once
PEER_HAVES_MAX = 256  # roots whose Have we remember per peer (releases, files being fetched)
PEER_HAVE_BYTES_MAX = 4 * 1024 * 1024  # ... and their bitfields' bytes, per peer (oldest forgotten first)
SERVE_HOLD_S = 1.0  # hold a request for a chunk sent to another peer this recently, this long
SERVE_HOLD_MAX_S = 5.0  # ... and while that copy is still being sent, at most this long
HAVE_OWED_S = 60.0  # a peer not sent a HaveUpdate (it held the chunk) gets a whole Have this soon
HAVE_BATCH_S = 0.1  # a track sends at most one HaveUpdate this often (live and on-demand: no limit)


# Priority classes of what a node wants, scheduled in this order (rarest first within a class).
CLASS_LIVE = -1  # segments of a live stream (mesh.core.live): oldest first, ahead of everything
CLASS_ON_DEMAND = 0  # a browser waits for this file
CLASS_RELEASE = 1  # the current release
CLASS_PINNED_RELEASE = 2  # releases the config pins
CLASS_PREVIEW = 3  # thumbnails and preview clips (every edge and hub shows them)
CLASS_PINNED_MEDIA = 4  # originals of the tags this node pins
CLASS_PASSIVE = 9  # releases we only announce (never fetch)


@dataclass
class Track:
    """One root this node fetches or seeds: a release, or one media file."""

    release: Release | None  # a verified release record with this root; None for a media file
    swarm: Swarm  # its scheduler (chunk list, holdings, requests)
    fetch: bool  # request what we lack (current or pinned); False: only announce what we hold
    klass: int = CLASS_RELEASE  # priority class of a media file (releases: see `_rank`)
    order: float = 0.0  # position within the class (a media file's: random per node)
    inventories_due: int = 0  # LoadRelease actions not yet answered: request nothing until then
    have_updates: list[int] = field(default_factory=list)  # indices to announce (see `_flush_have_updates`)
    have_sent_at: float = float("-inf")  # when the last HaveUpdate went out
    have_owed: set[str] = field(default_factory=set)  # peers not told of chunks they hold: a Have is due
    have_owed_at: float | None = None  # when that Have is sent (at the latest)
    completed: bool = False  # release.complete was announced


def _have_due(track: Track) -> float:
    """When a track's pending HaveUpdate may go out (see `_flush_have_updates`)."""
    return track.have_sent_at + (0.0 if track.klass < CLASS_RELEASE else HAVE_BATCH_S)


class ReleaseSwarming:
    """The release and swarm half of `NodeCore` (a mixin: it uses the core's sessions, state,
    `_send`, `_emit`, `_count`, `_close`). Attributes are set up by `_init_swarming`."""

    def _init_swarming(self, now: float, pins: tuple[str, ...]) -> None:
        self.pins = tuple(pins)  # release ids or names to fetch and keep besides the current one
        self.tracks: dict[Cid, Track] = {}  # root -> track
        self.transfers = Transfers(self.swarm_limits)  # requests over every track: pipelines, budget
        self._current: Release | None = None  # the current release record
        self._current_root: Cid | None = None  # ... its root
        self._release_roots: dict[Cid, Release] = {}  # root -> a verified release of this mesh
        self._assembling: dict[tuple[int, Cid], bytearray] = {}  # (conn, cid) -> bytes so far
        self._manifest_bytes: dict[Cid, bytes] = {}  # manifests handed to the store, not yet stored
        self._storing_from: dict[tuple[int, Cid], tuple[str, int]] = {}  # StoreChunk not answered -> (sender, bytes)
        self._serving: dict[int, int] = {}  # conn -> ServeChunk actions not yet answered
        self._banned_until: dict[str, float] = {}  # node -> time its ban ends
        self.hidden_assets: frozenset[str] = frozenset()  # asset CIDs consent or retention hides now
        self.withheld: frozenset[Cid] = frozenset()  # blocks we neither serve nor fetch
        self._withheld_at = now  # when to re-evaluate consent and retention next
        self._withheld_last = now  # when we last did
        self._withheld_dirty = True  # the state changed since consent was last evaluated
        self.offload_assets = False  # the driver evaluates assets (`EvaluateAssets`) off its loop
        self._evaluations_asked = 0  # EvaluateAssets sent (offloaded) ...
        self._evaluations_answered = 0  # ... and answered; one is out at a time
        self._evaluate_again = False  # another was wanted while one was out
        self._release_after: int | None = None  # deferred requests wait for this evaluation's answer
        self._started_at = now  # when this core started (see `_settling`)
        self._deferred_conns: set[int] = set()  # conns with chunk requests waiting for settling to end
        self._met_all = False  # `_met_everyone()` as of the last session and dial timers
        self._was_settling = True  # settling when the last timers ran (its changes are logged)
        self._sending: dict[Cid, int] = {}  # chunk -> the conn its first copy is being sent to
        self._served_recently: dict[Cid, tuple[int, float]] = {}  # chunk -> (conn, when) sent lately
        self._held_at = float("inf")  # when the first held request is due (see `_serve`)
        self._settle_watch: set[int] = set()  # newly ready conns not yet caught up with (see `_settling`)
        self.quota_bytes: int | None = None  # a hard cap on the store (a hub's per-mesh quota); None: none
        self._over_quota: dict[Cid, int] = {}  # release root -> bytes it still needs, refused by the quota

    # ---- what drivers and tests read -----------------------------------------------------------

    @property
    def release(self) -> Release | None:
        """The current release record, or None."""
        return self._current

    @property
    def swarm(self) -> Swarm | None:
        """The current release's scheduler, or None."""
        track = self._current_track()
        return track.swarm if track is not None else None

    def _current_track(self) -> Track | None:
        if self._current_root is None:
            return None
        return self.tracks.get(self._current_root)

    def _ordered_tracks(self) -> list[Track]:
        """Tracks in priority order (see the CLASS_ constants): on-demand files, the current
        release, pinned releases, previews, pinned originals; passive releases last."""
        current = self._current_track()
        if len(self.tracks) == 1 and current is not None:
            return [current]
        return sorted(self.tracks.values(), key=lambda t: self._rank(t, current))

    @staticmethod
    def _rank(track: Track, current: Track | None) -> tuple[int, float]:
        if track.release is None:
            return track.klass, track.order
        if track is current:
            return CLASS_RELEASE, 0.0
        return (CLASS_PINNED_RELEASE if track.fetch else CLASS_PASSIVE), 0.0

    def _release_tracks(self) -> list[Track]:
        return [t for t in self.tracks.values() if t.release is not None]

    def kept_roots(self) -> list[Cid]:
        """Roots of the release fetch tracks (current and pinned): what a purge must keep whole."""
        return [root for root, track in self.tracks.items() if track.fetch and track.release is not None]

    def arriving_chunks(self) -> list[Cid]:
        """Every block of every root being fetched (a purge must not take them from under it)."""
        found: list[Cid] = []
        for root, track in self.tracks.items():
            if track.fetch:
                found.append(root)
                found += track.swarm.chunks or ()
        return found

    # ---- which releases ------------------------------------------------------------------------

    def _refresh_release(self, now: float) -> None:
        """Follow the current-release pointer and the pins (signatures checked by ReleaseBook)."""
        book = ReleaseBook(self.state, self.identity.authority_public_key, now)
        current = book.current()
        releases = book.releases()
        self._release_roots = {}
        for release in releases:
            self._release_roots.setdefault(Cid.parse(release.root), release)
        wanted: dict[Cid, Release] = {}
        if current is not None:
            wanted[Cid.parse(current.root)] = current
        if self.pins:
            for release in releases:
                if release.id in self.pins or release.name in self.pins:
                    wanted.setdefault(Cid.parse(release.root), release)
        switched = current is not None and (self._current is None or current.id != self._current.id)
        self._current = current
        self._current_root = Cid.parse(current.root) if current is not None else None
        if switched:
            self._emit("release.current", id=current.id, name=current.name, root=current.root)
        for root, track in list(self.tracks.items()):
            if root not in wanted and track.fetch and track.release is not None:
                del self.tracks[root]
        for root, release in wanted.items():
            track = self.tracks.get(root)
            if track is None:
                self._start_track(release, fetch=True)
            elif not track.fetch:  # a passive track becomes one we fetch
                track.fetch = True
                if track.swarm.ready:
                    track.completed = False
                    self._check_complete(track)

    def _start_track(self, release: Release, fetch: bool) -> Track:
        swarm = Swarm(Cid.parse(release.root), self.swarm_limits, self._rng, release.publisher, self.transfers)
        track = Track(release, swarm, fetch)
        self.tracks[track.swarm.root] = track
        self._replay_haves(track)
        self._load_inventory(track)
        return track

    def _open_passive(self, root: Cid) -> Track | None:
        """A track for a release a peer announces, if it is a verified release of this mesh."""
        release = self._release_roots.get(root)
        if release is None:
            return None
        passive = [r for r, t in self.tracks.items() if not t.fetch and t.release is not None]
        while len(passive) >= PASSIVE_TRACKS_MAX:
            del self.tracks[passive.pop(0)]
        return self._start_track(release, fetch=False)

    def _load_inventory(self, track: Track) -> None:
        """Ask the store what it holds of the release; nothing is requested until it answers."""
        track.inventories_due += 1
        self._actions.append(LoadRelease(str(track.swarm.root)))

    def _on_inventory(self, event: ReleaseInventory, now: float) -> None:
        track = self.tracks.get(_text_cid(event.root))
        if track is None:
            return
        track.inventories_due = max(0, track.inventories_due - 1)
        track.swarm.mark_dirty()  # it may ask for what the store lacks now
        for cid, data in event.manifests:
            self._add_manifest(track, Cid.parse(cid), data)
        track.swarm.add_present({Cid.parse(cid) for cid in event.present})
        if track.swarm.ready:
            self._on_list_known(track, now)

    def _add_manifest(self, track: Track, cid: Cid, data: bytes) -> None:
        try:
            track.swarm.add_manifest(cid, data)
        except RemoteProtocolError as exc:  # a verified manifest that is not a valid release
            self._emit("release.invalid", root=str(track.swarm.root), reason=str(exc))

    def _on_list_known(self, track: Track, now: float) -> None:
        swarm = track.swarm
        if track.release is not None:  # a media file's list is its manifest: nothing to withhold in it
            self._emit("release.listed", root=str(swarm.root), chunks=len(swarm.chunks), bytes=swarm.total_bytes)
            self._apply_withheld()
        for session in self.peers():
            self._send_have(session, track, now)
        self._check_complete(track)

    def _check_complete(self, track: Track) -> None:
        if track.fetch and track.swarm.complete and not track.completed:
            track.completed = True
            if track.klass == CLASS_LIVE:
                self._emit("live.segment", cid=str(track.swarm.root), bytes=track.swarm.total_bytes)
            elif track.release is None:
                self._object_fetched(track)  # see mesh.core.media
            else:
                self._emit("release.complete", id=track.release.id, bytes=track.swarm.wanted_bytes)

    # ---- have signals --------------------------------------------------------------------------

    def declare_shared_medium(self, shared: bool) -> None:
        """Say whether our link to the mesh is a shared medium (a Wi-Fi station), as the config's
        `[topology]` hint or the driver's look at the interface (Linux: /sys/class/net/IF/wireless)
        tells. Peers learn it from our Hello (call it before sessions start): a wired seed then
        serves us what it is also sending to another station instead of declining, and we ask
        wired peers first (see `Transfers.dear`)."""
        self.transfers.shared_medium = shared
        features = tuple(f for f in self.features if f != FEATURE_SHARED_MEDIUM)
        self.features = features + (FEATURE_SHARED_MEDIUM,) if shared else features

    def _swarming_ready(self, session: Session, now: float) -> None:
        """A new ready session: it joins every track and learns what we hold."""
        self._settle_watch.add(session.conn_id)
        self.transfers.lane(session.node_id).shared_medium = FEATURE_SHARED_MEDIUM in session.features
        for track in self._ordered_tracks():
            track.swarm.add_peer(session.node_id)
            self._send_have(session, track, now)
        self._media_ready(session, now)  # see mesh.core.media

    def _send_have(self, session: Session, track: Track, now: float) -> None:
        count, bits = track.swarm.have_bitfield()
        self._send(session, m.Have(track.swarm.root.to_bytes(), count, bits), now)

    def _on_have(self, session: Session, msg: m.Have, now: float) -> None:
        if len(msg.bits) != (msg.count + 7) // 8:
            raise RemoteProtocolError(f"Have bitfield of {len(msg.bits)} bytes for {msg.count} chunks")
        haves = session.peer_haves
        haves.pop(msg.root, None)
        haves[msg.root] = (msg.count, bytearray(msg.bits))
        held = sum(len(bits) for _, bits in haves.values())
        while len(haves) > PEER_HAVES_MAX or (held > PEER_HAVE_BYTES_MAX and len(haves) > 1):
            held -= len(haves.pop(next(iter(haves)))[1])
        root = _binary_cid(msg.root)
        track = self.tracks.get(root)
        if track is None and not self._settling(now):
            self._open_passive(root)  # replays this Have
        elif track is not None:
            track.swarm.peer_have(session.node_id, msg.count, msg.bits)
        if track is None and msg.count:
            self._media_holder_seen(msg.root)  # a file we may want: someone has some of it (if ours)

    def _on_have_update(self, session: Session, msg: m.HaveUpdate, now: float) -> None:
        known = session.peer_haves.get(msg.root)
        if known is not None:
            count, bits = known
            for index in msg.indices:
                if index >= count:
                    raise RemoteProtocolError(f"HaveUpdate index {index} is past {count} chunks")
                bits[index >> 3] |= 0x80 >> (index & 7)
        track = self.tracks.get(_binary_cid(msg.root))
        if track is not None:
            track.swarm.peer_update(session.node_id, msg.indices)
            for seed, cid in track.swarm.seed_requests_to_cancel(session.node_id, msg.indices, now, self._arriving):
                self._count("chunks.seed_requests_cancelled")
                self._cancel_request(seed, cid, now)

    def _replay_haves(self, track: Track) -> None:
        """Give a new swarm what peers announced before we followed their release."""
        root = track.swarm.root.to_bytes()
        for session in self.peers():
            track.swarm.add_peer(session.node_id)
            known = session.peer_haves.get(root)
            if known is not None:
                track.swarm.peer_have(session.node_id, known[0], bytes(known[1]))

    def _flush_have_updates(self, track: Track, now: float) -> None:
        """Announce new chunks to the peers that lack them, at most once per HAVE_BATCH_S: a chunk
        stored after a quiet spell at once, those that follow it sooner together (a capped edge
        stores a chunk every ~40 ms, and one HaveUpdate per chunk to each peer was most of the
        messages it sent and received, each a record, a wake-up and a core pass at both ends;
        a hub behind a WAN link, a chunk every 0.4 s, announces each at once). A peer that holds
        a chunk does not need it from us, so it is told only by a whole Have within HAVE_OWED_S
        (or when we complete), which keeps its view of our progress honest at a fraction of the
        messages."""
        indices, track.have_updates, track.have_sent_at = tuple(track.have_updates), [], now
        root = track.swarm.root.to_bytes()
        encoded: dict[tuple[int, ...], list[bytes]] = {}  # most peers lack the same: encode once
        for session in self.peers():
            lacking = track.swarm.peer_lacking(session.node_id, indices)
            if len(lacking) < len(indices):
                track.have_owed.add(session.node_id)
            if lacking not in encoded:
                encoded[lacking] = [m.encode(m.HaveUpdate(root, lacking[start:start + m.HAVE_INDICES_MAX]))
                                    for start in range(0, len(lacking), m.HAVE_INDICES_MAX)]
            for data in encoded[lacking]:
                self._send_encoded(session, data, now)
        if track.have_owed and track.have_owed_at is None:
            track.have_owed_at = now + HAVE_OWED_S

    def _send_owed_haves(self, track: Track, now: float) -> None:
        owed, track.have_owed, track.have_owed_at = track.have_owed, set(), None
        for node in sorted(owed):
            conn_id = self._ready.get(node)
            if conn_id is not None:
                self._send_have(self._sessions[conn_id], track, now)

    # ---- serving -------------------------------------------------------------------------------

    def _on_chunk_request(self, session: Session, msg: m.ChunkRequest, now: float) -> None:
        cid = _binary_cid(msg.cid)
        queued = self._serving.get(session.conn_id, 0) + len(session.deferred_requests) + len(session.held_serves)
        if queued >= SERVE_QUEUE_MAX:
            raise RemoteProtocolError(f"more than {SERVE_QUEUE_MAX} chunk requests outstanding")
        if self._settling(now) and not self._is_release_manifest(cid):
            session.deferred_requests.append(msg.cid)
            self._deferred_conns.add(session.conn_id)
            return
        self._serve(session, cid, now)

    def _is_release_manifest(self, cid: Cid) -> bool:
        """A manifest of a root we track (a release's root or file manifests, a media file's
        manifest): hashes, not media, so it is served (and fetched) even while settling; every
        node needs them to know what to fetch."""
        return any(t.swarm.is_manifest(cid) for t in self.tracks.values()) or self._media_manifest(cid) is not None

    def _serve(self, session: Session, cid: Cid, now: float, held: bool = False) -> None:
        if cid in self.withheld:  # consent or retention took it away: never send it again
            self._count("chunks.withheld_refused")
            self._send(session, m.ChunkMissing(cid.to_bytes()), now)
            return
        manifest = self._manifest_data(cid)
        if manifest is not None:  # answered at once, with the other messages queued for this peer
            self._count("chunks.manifests_served")
            self._send(session, m.ChunkData(cid.to_bytes(), 0, len(manifest), manifest), now)
            return
        until = None if held else self._hold_until(session, cid, now)
        if until is not None and FEATURE_CHUNK_BUSY in session.features:
            # We are sending (or just sent) this chunk to another peer, which will announce it:
            # decline, and the asker fetches it from that peer (or asks us again later).
            self._count("chunks.busy_declined")
            self._send(session, m.ChunkBusy(cid.to_bytes()), now)
            return
        if until is not None:  # the same for a peer without ChunkBusy: hold it, for its cancel
            session.held_serves[cid] = until
            self._held_at = min(self._held_at, until)
            return
        if not (FEATURE_SHARED_MEDIUM in session.features and not self.transfers.shared_medium):
            # Only a copy that others can take from makes them wait (`_hold_until`): a wired
            # node's copy to a station is none (a wired asker would cost that air again, and one
            # at another site cannot reach a station behind the venue's NAT at all).
            self._sending.setdefault(cid, session.conn_id)
        self._serving[session.conn_id] = self._serving.get(session.conn_id, 0) + 1
        self._actions.append(ServeChunk(session.conn_id, str(cid)))

    def _hold_until(self, session: Session, cid: Cid, now: float) -> float | None:
        """Until when to hold this peer's request for `cid`; None: serve it now. Held while the
        first copy to another peer is on its way (at most SERVE_HOLD_MAX_S: behind a deep queue
        that takes seconds), then SERVE_HOLD_S more for that peer to verify and announce it.
        Only by a seed (peers ask a seed only for what no one else has, and cancel when someone
        announces it; a non-seed's held request is never cancelled, only delayed: in the swarm
        lab, edges left holding each other's requests were the last second of the run), and only
        while our uplink has other work: idle, a copy costs nothing else. Manifests are never
        held: small, and every peer needs them before it can ask for anything. A peer that
        understands ChunkBusy is told instead (see `_serve`)."""
        recent = self._served_recently
        while recent and next(iter(recent.values()))[1] < now - SERVE_HOLD_S:
            del recent[next(iter(recent))]
        if not any(self._serving.values()) or self._is_release_manifest(cid) or not self._seeding(cid):
            return None  # idle uplink (a copy now costs nothing else), a manifest, or not a seed
        if FEATURE_SHARED_MEDIUM in session.features and not self.transfers.shared_medium:
            return None  # a station's other source is a station: that copy would cross its air twice
        sending = self._sending.get(cid)
        if sending is not None and sending != session.conn_id:
            return now + SERVE_HOLD_MAX_S
        if cid in recent and recent[cid][0] != session.conn_id:
            return recent[cid][1] + SERVE_HOLD_S
        return None

    def _first_copy_done(self, conn_id: int, cid: Cid, sent: bool, now: float) -> None:
        """The first copy of `cid` left (or was cancelled, or its connection is gone): requests held
        for it wait SERVE_HOLD_S more if it went out, none if not."""
        del self._sending[cid]
        if sent:
            self._served_recently.pop(cid, None)
            self._served_recently[cid] = (conn_id, now)
        until = now + SERVE_HOLD_S if sent else now
        for session in self._sessions.values():
            if session.held_serves.get(cid, until) > until:
                session.held_serves[cid] = until
                self._held_at = min(self._held_at, until)

    def _release_held(self, now: float) -> None:
        """Serve held requests whose hold is over (nobody cancelled them)."""
        self._held_at = float("inf")
        for session in list(self._sessions.values()):
            if not session.held_serves:
                continue
            for cid, until in list(session.held_serves.items()):
                if until <= now and session.ready:
                    del session.held_serves[cid]
                    self._count("chunks.held_served")
                    self._serve(session, cid, now, held=True)
                elif session.ready:
                    self._held_at = min(self._held_at, until)

    def _settling(self, now: float) -> bool:
        if now < self._started_at + STARTUP_SETTLE_S and not self._met_all:
            return True
        watch = self._settle_watch  # newly ready sessions we have not caught up with yet
        for conn_id in list(watch):
            session = self._sessions.get(conn_id)
            if (session is None or self._ready.get(session.node_id) != conn_id or session.ready_at is None
                    or now >= session.ready_at + HEADS_FALLBACK_S):
                watch.discard(conn_id)  # gone, or waited long enough
            elif session.peer_heads is not None and self._knows(session.peer_heads):
                watch.discard(conn_id)  # caught up with it
            else:
                return True
        return False

    def _met_everyone(self, next_dial: float | None) -> bool:
        """At least one session is up, no dial is in flight, and no address we know is due for a
        dial (`next_dial`) before the startup window ends: the peers around us are all met (or
        unreachable)."""
        if not self._ready or self._addresses.inflight_count():
            return False
        return next_dial is None or next_dial > self._started_at + STARTUP_SETTLE_S

    def _settle_deadlines(self, session: Session) -> list[float]:
        times = []
        if session.ready_at is not None and self._now < session.ready_at + HEADS_FALLBACK_S:
            times.append(session.ready_at + HEADS_FALLBACK_S)
        if self._now < self._started_at + STARTUP_SETTLE_S:
            times.append(self._started_at + STARTUP_SETTLE_S)
        return times

    def _release_deferred(self, now: float) -> None:
        if not self._deferred_conns:
            return
        sessions = [self._sessions.get(conn_id) for conn_id in sorted(self._deferred_conns)]
        self._deferred_conns = set()
        waiting = [s for s in sessions if s is not None and s.deferred_requests and s.ready]
        if not waiting:
            return
        if self.offload_assets and (self._withheld_dirty or self._release_after is not None):
            if self._release_after is None:  # the answer to an evaluation asked from now on
                self._release_after = self._ask_evaluation(now)
            if self._evaluations_answered < self._release_after:
                self._deferred_conns = {s.conn_id for s in waiting}  # still waiting
                return
            self._release_after = None
        elif self._withheld_dirty:
            self._refresh_withheld(now)
        for session in waiting:
            requests, session.deferred_requests = session.deferred_requests, []
            for raw in requests:
                self._serve(session, _binary_cid(raw), now)

    def _on_chunk_cancel(self, session: Session, msg: m.ChunkCancel, now: float) -> None:
        cid = _binary_cid(msg.cid)
        if session.held_serves.pop(cid, None) is not None:
            self._count("chunks.held_cancelled")  # a byte-for-byte copy we did not send
            return
        self._actions.append(CancelServe(session.conn_id, str(cid)))

    def _on_chunk_served(self, event: ChunkServed, now: float) -> None:
        self._serving[event.conn_id] = max(0, self._serving.get(event.conn_id, 0) - 1)
        self._count("chunks.served" if event.sent_bytes else "chunks.missing_served")
        cid = Cid.parse(event.cid)
        if event.sent_bytes:
            self._note_served(cid, now)  # least recently used media goes first (mesh.core.media)
        if self._sending.get(cid) == event.conn_id:
            self._first_copy_done(event.conn_id, cid, event.sent_bytes > 0, now)

    # ---- fetching ------------------------------------------------------------------------------

    def _on_chunk_missing(self, session: Session, msg: m.ChunkMissing, now: float) -> None:
        cid = _binary_cid(msg.cid)
        self.transfers.lacks(session.node_id, cid, now)
        for track in self.tracks.values():
            track.swarm.peer_lacks(session.node_id, cid)
        self._media_lacked(session, cid)  # see mesh.core.media

    def _manifest_data(self, cid: Cid) -> bytes | None:
        """A manifest of a release we track, if we hold it and it fits one ChunkData piece:
        every peer asks for all of them at once when a release is published; each one as a chunk
        job (a worker-thread read, a write, an event) made listing take ~1 s on a busy seed."""
        for track in self.tracks.values():
            data = track.swarm.manifest_data(cid)
            if data is not None and len(data) <= m.CHUNK_PIECE_BYTES_MAX:
                return data
        data = self._media_manifest(cid)
        return data if data is not None and len(data) <= m.CHUNK_PIECE_BYTES_MAX else None

    def _seeding(self, cid: Cid) -> bool:
        """We hold the whole of a root that has `cid` (peers count us as one of its seeds)."""
        return self._holds_media_chunk(cid) or any(t.swarm.complete and t.swarm.holds(cid) for t in self.tracks.values())

    def _on_chunk_busy(self, session: Session, msg: m.ChunkBusy, now: float) -> None:
        self.transfers.busy(session.node_id, _binary_cid(msg.cid), now)

    def _on_chunk_data(self, session: Session, msg: m.ChunkData, now: float) -> None:
        cid = _binary_cid(msg.cid)
        if not self.transfers.requested_from(session.node_id, cid):
            self._count("chunks.unrequested_pieces")  # cancelled or timed out: drop it
            return
        key = (session.conn_id, cid)
        if msg.offset == 0 and len(msg.data) == msg.total <= m.CHUNK_BYTES_MAX and key not in self._assembling:
            data = msg.data  # the whole chunk in one piece (the usual case): no copies
        else:
            buffer = self._assembling.setdefault(key, bytearray())
            if msg.offset != len(buffer) or msg.total > m.CHUNK_BYTES_MAX or len(buffer) + len(msg.data) > msg.total:
                raise RemoteProtocolError(f"chunk {cid}: piece at {msg.offset} does not follow {len(buffer)} of {msg.total}")
            buffer += msg.data
            if len(buffer) < msg.total:
                return
            data = bytes(self._assembling.pop(key))
        for other_node, other_cid in self.transfers.delivered(session.node_id, cid, len(data), now):
            self._cancel_request(other_node, other_cid, now)
        if any(t.swarm.is_manifest(cid) for t in self.tracks.values()):
            self._manifest_bytes[cid] = bytes(data)  # kept past the frame it arrived in: its own bytes
        self._storing_from[(session.conn_id, cid)] = (session.node_id, len(data))
        self._actions.append(StoreChunk(session.conn_id, str(cid), data))

    def _arriving(self, node: str, cid: Cid) -> bool:
        """Bytes of `cid` from this peer have arrived (and the rest is on its way): earlier
        pieces, or the head of the frame now arriving."""
        conn_id = self._ready.get(node, -1)
        if (conn_id, cid) in self._assembling:
            return True
        session = self._sessions.get(conn_id)
        return session is not None and m.arriving_chunk(session.decoder) == cid.to_bytes()

    def _cancel_request(self, node: str, cid: Cid, now: float) -> None:
        session = self._sessions.get(self._ready.get(node, -1))
        if session is not None:
            self._send(session, m.ChunkCancel(cid.to_bytes()), now)
            self._assembling.pop((session.conn_id, cid), None)  # pieces already here are dropped

    def _on_chunk_stored(self, event: ChunkStored, now: float) -> None:
        self._count("chunks.verified")
        cid = Cid.parse(event.cid)
        self.transfers.stored(cid)
        _, size = self._storing_from.pop((event.conn_id, cid), ("", 0))
        self.store_used += size  # until the driver's next StoreUsage says exactly
        if cid.codec == RAW and cid in self.tracks and size:
            self.tracks[cid].swarm.set_raw_size(size)  # a raw file's size, now that its bytes verified
        manifest = self._manifest_bytes.pop(cid, None)
        for track in list(self.tracks.values()):
            if manifest is not None and track.swarm.is_manifest(cid):
                self._manifest_stored(track, cid, manifest, now)
            elif manifest is None:
                index = track.swarm.mark_have(cid)
                if index is not None:
                    track.have_updates.append(index)
                    self._check_complete(track)

    def _manifest_stored(self, track: Track, cid: Cid, data: bytes, now: float) -> None:
        swarm = track.swarm
        was_ready = swarm.ready
        self._add_manifest(track, cid, data)
        if track.release is None:  # a media file: the store's inventory of it came before
            if swarm.ready and not was_ready:
                self._on_list_known(track, now)
            return
        if cid == swarm.root and not swarm.ready:
            self._load_inventory(track)  # the file manifests and chunks of it we already hold
        if swarm.ready and not was_ready:
            self._on_list_known(track, now)
            self._load_inventory(track)  # what else is here already

    def _on_chunk_rejected(self, event: ChunkRejected, now: float) -> None:
        cid = Cid.parse(event.cid)
        self._manifest_bytes.pop(cid, None)
        sender, _ = self._storing_from.pop((event.conn_id, cid), (None, 0))
        self.transfers.store_failed(cid)  # back to the pool, whoever sent it
        if not event.peer_fault:
            self._emit("chunk.store_failed", cid=event.cid, reason=event.reason)
            return
        self._count("chunks.rejected")
        if sender is None:
            return
        self.transfers.rejected(sender, cid)
        self._banned_until[sender] = now + CORRUPT_BAN_S
        self._emit("peer.corrupt_chunk", node=sender, cid=event.cid)
        for session in list(self._sessions.values()):  # its session may be closing or gone already
            if session.node_id == sender:
                self._close(session, f"sent a corrupt chunk ({event.cid})")

    def _run_swarm(self, now: float, settling: bool) -> None:
        """One scheduling round: every track in priority order against one budget."""
        transfers = self.transfers
        transfers.start_round()
        for node, cid in transfers.expired(now):
            self._count("chunks.timeouts")
            self._assembling.pop((self._ready.get(node, -1), cid), None)  # its late pieces are dropped
        for track in self._ordered_tracks():
            swarm = track.swarm
            if track.have_updates and (now >= _have_due(track) or swarm.complete):
                self._flush_have_updates(track, now)
            if track.have_owed_at is not None and (now >= track.have_owed_at or swarm.complete):
                self._send_owed_haves(track, now)
            if not track.fetch or track.inventories_due or (settling and swarm.ready) or self._refused_by_quota(track):
                swarm.defer_retry()  # settling and inventories wake us by their own deadlines
                if transfers.changed:
                    swarm.mark_dirty()  # what freed room now may let it ask once it runs again
                continue  # the store may hold what we would ask for; a revoke may be on its way
            for node, cid in swarm.schedule(now, list(self._ready)):
                session = self._sessions[self._ready[node]]
                self._send(session, m.ChunkRequest(cid.to_bytes()), now)
        transfers.end_round()

    def _refused_by_quota(self, track: Track) -> bool:
        """A release whose missing bytes would take the store past its quota is not fetched at
        all (what is stored stays; a half-fetched release helps nobody): logged once, and in
        status, until the quota is raised or room is freed."""
        swarm = track.swarm
        if self.quota_bytes is None or track.release is None or not swarm.ready or swarm.complete:
            self._over_quota.pop(swarm.root, None)
            return False
        needs = swarm.wanted_bytes - swarm.wanted_have_bytes
        if self.store_used + needs <= self.quota_bytes:  # chunks in flight count in `needs` only
            if self._over_quota.pop(swarm.root, None) is not None:
                self._emit("release.quota_ok", id=track.release.id, needs=needs, quota=self.quota_bytes)
            return False
        if swarm.root not in self._over_quota:
            self._emit("release.over_quota", id=track.release.id, needs=needs, used=self.store_used,
                       quota=self.quota_bytes)
        self._over_quota[swarm.root] = needs
        return True

    def _swarm_deadline(self) -> float | None:
        times = [t.swarm.next_deadline() for t in self.tracks.values()]
        times += [t.have_owed_at for t in self.tracks.values()]
        times += [_have_due(t) for t in self.tracks.values() if t.have_updates]
        times.append(self.transfers.next_deadline())
        if self._held_at != float("inf"):
            times.append(self._held_at)
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def _forget_transfers(self, session: Session) -> None:
        if session.node_id not in self._ready:  # not a lost duplicate
            for track in self.tracks.values():
                track.swarm.remove_peer(session.node_id)
            self.transfers.remove_peer(session.node_id)
        for key in [k for k in self._assembling if k[0] == session.conn_id]:
            del self._assembling[key]
        self._serving.pop(session.conn_id, None)
        for cid in [c for c, conn_id in self._sending.items() if conn_id == session.conn_id]:
            self._first_copy_done(session.conn_id, cid, False, self._now)
        self._media_session_gone(session)

    # ---- consent and retention: what we neither serve nor fetch -------------------------------

    def _note_state_changed(self) -> None:
        self._withheld_at = min(self._withheld_at, self._withheld_last + self._withheld_gap())
        self._withheld_dirty = True

    def _withheld_gap(self) -> float:
        return WITHHELD_GAP_MIN_S + WITHHELD_GAP_PER_ASSET_S * self.state.asset_count()

    def _refresh_withheld(self, now: float) -> None:
        """Re-evaluate which assets consent and retention hide; withhold their media at once (the
        driver's periodic purge deletes it from the store). Offloaded, the answer comes later as
        `AssetsEvaluated`; until then the hidden set is the last one (as between passes anyway)."""
        self._withheld_last, self._withheld_at = now, now + WITHHELD_RECHECK_S
        self._withheld_dirty = False
        if self.offload_assets:
            self._ask_evaluation(now)
            return
        records, statuses = asset_statuses(self.state, self.identity.authority_public_key, now)
        self._withheld_evaluated(records, statuses, now)

    def _ask_evaluation(self, now: float) -> int:
        """Ask the driver to evaluate the assets from the state as it is now (or, with one out,
        right after it is answered); the number of the evaluation that will cover now."""
        if self._evaluations_asked > self._evaluations_answered:
            self._evaluate_again = True
            return self._evaluations_asked + 1
        self._withheld_dirty = False
        self._evaluations_asked += 1
        self._actions.append(EvaluateAssets(now, self.identity.authority_public_key))
        return self._evaluations_asked

    def _on_assets_evaluated(self, event: AssetsEvaluated, now: float) -> None:
        if self._evaluations_answered >= self._evaluations_asked:
            return  # not asked (a driver bug): ignore rather than count it
        self._evaluations_answered += 1
        if self._evaluate_again:
            self._evaluate_again = False
            self._ask_evaluation(now)
        self._withheld_evaluated(list(event.records), event.statuses, now)

    def _withheld_evaluated(self, records: list, statuses: dict[str, str], now: float) -> None:
        media_changed = self._refresh_media(records, statuses, now)  # see mesh.core.media
        hidden = frozenset(statuses)
        if hidden == self.hidden_assets and not media_changed:
            return
        if hidden != self.hidden_assets:
            self._emit("consent.hidden", assets=len(hidden))
        self.hidden_assets = hidden
        self._apply_withheld()

    def _apply_withheld(self) -> None:
        """Withhold the media of hidden assets: single-chunk files themselves, the manifests of
        files outside every tracked release, and the chunks of each tracked release that only
        hidden files use."""
        files: set[Cid] = set()
        for text in self.hidden_assets:
            try:
                files.add(Cid.parse(text))
            except ValueError:
                continue
        blocks = set(files)  # single-chunk files, and manifests of files outside every release
        blocks |= self._media_withheld()  # hidden assets' previews and chunks, see mesh.core.media
        for track in self._release_tracks():
            if track.swarm.ready:
                only = track.swarm.chunks_only_in(files)
                track.swarm.withhold(only)
                blocks |= only
                blocks -= track.swarm.file_manifests()  # every node needs those for the chunk list
                self._check_complete(track)
        self.withheld = frozenset(blocks)

    # ---- status --------------------------------------------------------------------------------

    def _release_status(self) -> dict | None:
        track = self._current_track()
        if track is None:
            return None
        doc = {"id": self._current.id, "name": self._current.name, **_track_progress(track)}
        needs = self._over_quota.get(track.swarm.root)
        if needs is not None:
            doc["over_quota"] = {"needs_bytes": needs, "used_bytes": self.store_used, "quota_bytes": self.quota_bytes}
        return doc

    def _pinned_status(self) -> list[dict]:
        current = self._current_track()
        return [{"id": t.release.id, "name": t.release.name, **_track_progress(t)}
                for t in self._release_tracks() if t.fetch and t is not current]

    def _peer_release(self, node: str) -> dict | None:
        swarm = self.swarm
        progress = swarm.peer_progress(node) if swarm is not None else None
        if progress is None:
            return None
        have, total = progress
        return {"root": str(swarm.root), "have_chunks": have, "total_chunks": total,
                "complete": total is not None and have == total}


def _track_progress(track: Track) -> dict:
    swarm = track.swarm
    return {
        "root": str(swarm.root),
        "have_bytes": swarm.wanted_have_bytes,
        "total_bytes": swarm.wanted_bytes if swarm.ready else None,
        "complete": swarm.complete,
    }


def _binary_cid(raw: bytes) -> Cid:
    try:
        return Cid.from_bytes(raw)
    except ValueError as exc:
        raise RemoteProtocolError(f"bad CID: {exc}") from None


def _text_cid(text: str) -> Cid | None:
    try:
        return Cid.parse(text)
    except ValueError:
        return None


__all__ = ["CORRUPT_BAN_S", "FEATURE_SHARED_MEDIUM", "HEADS_FALLBACK_S", "ReleaseSwarming", "Track"]
