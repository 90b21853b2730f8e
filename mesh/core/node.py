"""The sans-IO protocol engine of one node.

Theory of operation:
- Drivers feed events with `handle(event, now)` and carry out what `take_actions()` returns; they
  call `handle(Tick(), now)` no later than `next_deadline()`. Time and randomness come from outside.
- Sessions follow `mesh.core.session`. At most one ready session per peer: when two exist (both
  dialed), the one dialed by the smaller node id wins, on both sides.
- The shared state is one `MeshState`. On a new session we send our revocations first (they must
  win every race), then peer addresses, then Automerge sync. Any change to the document is
  persisted (`PersistChanges`) and offered to every ready peer.
- A peer far behind us (lacking at least `snapshot_changes_min` of our changes and a quarter of
  them) gets a snapshot, our compressed `save()`, instead of the changes, once per session, if
  its Hello lists "state-snapshot/1". We judge that by our arrival numbers when we know its heads,
  else by the change count its StateSize tells (a new node has recorded itself: heads unknown to
  all); the node far behind then waits HEADS_FALLBACK_S, not HEADS_WAIT_S, before Automerge sync.
  A received snapshot is checked (size announced and bounded before any part, one document, our
  genesis, the heads it announced, a member credential of this mesh in it), merged into ours (our
  own changes stay) and persisted exactly as it arrived; the heads fast path then carries on.
- Membership is re-checked whenever the document changes: a revoked node's sessions are closed
  and it is never dialed or accepted again.
- A peer's bad input (malformed frame, wrong Hello, bad sync message) closes that session with a
  reason; it never raises out of `handle`.
"""

from __future__ import annotations

import random

import cbor2
from collections.abc import Callable
from dataclasses import dataclass

from mesh.config import CoreLimits
from mesh.core.events import (
    Action, Address, AnswerDropAsks, AssetsEvaluated, ChunkRejected, ChunkServed, ChunkStored, CloseConnection,
    Connected, DataReceived, Dial, DialFailed, Disconnected, Emit, Event, FetchRequested, LiveWindowSigned, LocalChanges, ObjectsEvicted,
    ObjectsInventory, ObjectsUsed, PeerDiscovered, PersistChanges, ReleaseInventory, Send, ShutdownRequested,
    StateReloaded, StoreUsage, Tick, TlsKeyLoaded,
)
from mesh.core.live import FEATURE_LIVE, LiveStreams
from mesh.core.media import FEATURE_MEDIA, MediaSwarming
from mesh.core.peers import AddressBook
from mesh.core.session import Phase, Session, Trigger
from mesh.core.swarm import SwarmLimits
from mesh.core.swarming import FEATURE_CHUNK_BUSY, HEADS_FALLBACK_S, STARTUP_SETTLE_S, ReleaseSwarming
from mesh.core.tls import FEATURE_TLS_KEY, TlsKeys
from mesh.errors import CredentialError, LocalProtocolError, RemoteProtocolError
from mesh.ids import short
from mesh.state.document import GENESIS_HEADS, MeshState
from mesh.state.drops import DropWatch, Signer, answer_asks
from mesh.state.membership import InviteLedger, Member, RevocationList, member_since, verify_chain
from mesh.wire import messages as m

FEATURE_STATE_SNAPSHOT = "state-snapshot/1"  # a peer listing this in its Hello takes StateSnapshot*
FEATURES = ("state-sync/1", "swarm/1", FEATURE_CHUNK_BUSY, FEATURE_MEDIA, FEATURE_TLS_KEY, FEATURE_STATE_SNAPSHOT,
            FEATURE_LIVE)
STATE_SYNC_PART_BYTES = 512 * 1024
REVOCATIONS_MESSAGE_BYTES = 1024 * 1024
KNOWN_CHANGES_MAX = 1 << 16  # change hashes remembered for the heads fast path
PEX_SHARE_MAX = 8  # peers told about a new peer
PING_EARLY = 0.25  # sessions whose Ping is due within this fraction of the interval are pinged together
HEADS_WAIT_S = 0.25  # unknown heads from a peer: wait this long for its changes, then use Automerge sync
SNAPSHOT_CHANGES_MIN = 1024  # a peer lacking fewer of our changes gets them, never a snapshot
SNAPSHOT_LACKING_FRACTION_MIN = 0.25  # ... and one lacking a smaller share of them (a save is ~12x smaller)
SNAPSHOT_MEMBER_CHECKS_MAX = 16  # member credentials tried to prove a snapshot is of this mesh


@dataclass
class _SnapshotAssembly:
    """A snapshot arriving on one session: announced by StateSnapshotBegin, filled by parts."""

    total_bytes: int  # announced size (checked against state_sync_bytes_max before any part)
    heads: tuple[bytes, ...]  # announced heads
    parts: list[bytes]  # pieces so far
    received_bytes: int = 0  # their total size


@dataclass(frozen=True)
class CoreIdentity:
    """Who this node is."""

    node_id: str  # our node id
    mesh_id: str  # our mesh
    authority_public_key: bytes  # the mesh authority's raw Ed25519 public key
    chain: bytes  # our credential chain
    name: str  # our human name
    role: str  # our role


class NodeCore(ReleaseSwarming, MediaSwarming, TlsKeys, LiveStreams):
    """One node's protocol state machine. Not thread-safe; one owner task."""

    def __init__(
        self,
        identity: CoreIdentity,
        state: MeshState,
        rng: random.Random,
        now: float,
        limits: CoreLimits = CoreLimits(),
        listen_port: int | None = None,
        pins: tuple[str, ...] = (),
        pin_tags: tuple[str, ...] = (),
        pin_canonical: bool | None = None,
        want_tls_key: bool = False,
    ) -> None:
        self.identity = identity
        self.state = state
        self.limits = limits
        self.listen_port = listen_port
        self._rng = rng
        self._actions: list[Action] = []
        self._sessions: dict[int, Session] = {}
        self._ready: dict[str, int] = {}  # node id -> conn id of its ready session
        self._sync_states: dict[str, object] = {}  # node id -> automerge SyncState
        self._addresses = AddressBook(limits, rng)
        self.revocations = RevocationList(identity.authority_public_key)
        self.invites = InviteLedger()
        self._member_since: float | None = None  # when our own credential was issued (parsed on first use)
        self._revocations_seen: set[bytes] = set()
        self._shutting_down = False
        self.counters: dict[str, int] = {}
        self.swarm_limits = SwarmLimits()
        self._init_swarming(now, pins)
        self._init_media(pin_tags, pin_canonical)
        self._init_tls(want_tls_key)
        self._init_live()
        self._invites_in_state: set[tuple[str, str]] = set()  # (invite id, node id) uses the document records
        self._now = now  # time of the event being handled
        self._unpersisted_since: list[bytes] | None = None  # heads before the first unpersisted change
        self._known_changes: dict[bytes, int] = {}  # hash -> arrival number (the latest KNOWN_CHANGES_MAX)
        self._changes_noted = 0  # changes this core has seen in its document (the next arrival number)
        self._flushed_heads: tuple[bytes, ...] = ()  # our heads at the last flush
        self._note_changes([])
        self._sync_due: set[str] = set()  # peers to offer state to at the next flush
        self._flush_at: float | None = None  # when to persist and sync next
        self.features = FEATURES  # what our Hello offers (tests drop some to play older peers)
        self.snapshot_changes_min = SNAPSHOT_CHANGES_MIN  # (tests lower it to snapshot small histories)
        self._snapshot_cache: tuple[tuple[bytes, ...], bytes] | None = None  # (heads, save()) last sent
        self._snapshots_in: dict[int, _SnapshotAssembly] = {}  # conn id -> snapshot arriving there
        self._snapshot_sent_to: set[int] = set()  # conn ids that got a snapshot (one per session)
        self._peer_changes: dict[int, int] = {}  # conn id -> change count its StateSize told
        self.health: dict | None = None  # our latest health report
        self._health_blob: bytes | None = None  # ... as sent to peers
        self.peer_health: dict[str, tuple[float, dict]] = {}  # node -> (received at, its latest report)
        self.last_seen: dict[str, float] = {}  # node -> when it last sent us anything
        self._timers_at = now  # no session timer or dial is due before this (see `_wake_timers`)
        self._handler_table = self._handlers()  # event type -> handler (built once: looked up per event)
        self._message_table = self._message_handlers()  # ... and per message of a ready session
        self.drop_signer: Signer | None = None  # answers drop requests in this state (an in-memory node)
        self.drop_answers_queued = False  # or: ask the driver (AnswerDropAsks) to answer under its log's lock
        self._drops = DropWatch(identity.node_id)  # drop entries seen (orders, refused entries: events)
        self._drops.changed(state, identity.authority_public_key, now)  # what the state held: no events
        self._answering_drops = False
        self._refresh_membership(now)

    # ---- the driver's interface ------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> None:
        """Take one event; then run timers that are due."""
        self.take(event, now)
        self._on_timers(now)

    def take(self, event: Event, now: float) -> None:
        """Take one event without running timers: a driver with several events waiting takes
        each, then calls `run_timers` once (the scheduler then runs once per batch, not per
        event). Equivalent to `handle` per event: timers only look at state, never at the event."""
        self._now = now
        handler = self._handler_table.get(type(event))
        if handler is not None:
            handler(event, now)

    def run_timers(self, now: float) -> None:
        """Run what is due: timers, dials, flushes, the scheduler (see `take`)."""
        self._now = now
        self._on_timers(now)

    def persist_now(self) -> None:
        """Persist what this state holds beyond its log at once (a PersistChanges action), not at
        the next flush: a writer about to open a state-file transaction wants it there."""
        self._persist_now()

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """The latest time by which the driver must call `handle(Tick(), now)`."""
        swarm_at = None if self._shutting_down else self._swarm_deadline()  # no swarming once stopping
        media_at = None if self._shutting_down else self._media_deadline()
        times = [t for t in (swarm_at, media_at, self._flush_at, self._withheld_at, self._tls_deadline())
                 if t is not None]
        if self._timers_at != float("inf"):
            times.append(self._timers_at)
        return min(times) if times else None

    def authenticate(self, chain: bytes, node_public_key: bytes, now: float) -> Member:
        """Check a peer's credential chain during the handshake; CredentialError if refused."""
        if self._member_since is None:
            self._member_since = member_since(self.identity.chain, self.identity.authority_public_key)
        member = verify_chain(
            chain, self.identity.authority_public_key, now, revocations=self.revocations,
            invite_ledger=self.invites, expected_node_public_key=node_public_key, member_since=self._member_since,
        )
        if member.node_id == self.identity.node_id:
            raise CredentialError("that is this node's own identity")
        if self._banned_until.get(member.node_id, 0.0) > now:
            raise CredentialError("banned for sending corrupt data")
        return member

    @property
    def shut_down(self) -> bool:
        """True once a requested shutdown has closed every session."""
        return self._shutting_down and not self._sessions

    def peers(self) -> list[Session]:
        """Ready sessions, by node id."""
        return [self._sessions[c] for _, c in sorted(self._ready.items())]

    def learn_address(self, address: Address, node_id: str | None, source: str, now: float) -> None:
        """Static peers and invite hints, given at start-up."""
        self.handle(PeerDiscovered((address,), node_id, source), now)

    def mutate(self, change: Callable[[MeshState], object], now: float) -> None:
        """Apply a local mutation made by this process, persist it and offer it to peers."""
        heads = self.state.heads()
        change(self.state)
        self._after_state_change(heads, now, persist=True)
        self._persist_now()  # a local write is acknowledged once it is durable

    # ---- events ----------------------------------------------------------------------------------

    def _handlers(self) -> dict[type, Callable]:
        return {
            Connected: self._on_connected,
            DataReceived: self._on_data,
            Disconnected: self._on_disconnected,
            DialFailed: self._on_dial_failed,
            PeerDiscovered: self._on_discovered,
            LocalChanges: self._on_local_changes,
            StateReloaded: self._on_state_reloaded,
            ReleaseInventory: self._on_inventory,
            ChunkStored: self._on_chunk_stored,
            ChunkRejected: self._on_chunk_rejected,
            ChunkServed: self._on_chunk_served,
            ObjectsInventory: self._on_objects_inventory,
            FetchRequested: self._on_fetch_requested,
            LiveWindowSigned: self._on_live_signed,
            StoreUsage: self._on_store_usage,
            ObjectsEvicted: self._on_objects_evicted,
            ObjectsUsed: self._on_objects_used,
            TlsKeyLoaded: self._on_tls_key_loaded,
            AssetsEvaluated: self._on_assets_evaluated,
            Tick: lambda event, now: None,
            ShutdownRequested: self._on_shutdown,
        }

    def _message_handlers(self) -> dict[type, Callable]:
        return {
            m.Ping: self._on_ping,
            m.Pong: self._on_pong,
            m.Close: self._on_close,
            m.Revocations: self._on_revocations,
            m.PeerAddresses: self._on_peer_addresses,
            m.StateSync: self._on_state_sync,
            m.StateSyncPart: self._on_state_sync_part,
            m.StateHeads: self._on_state_heads,
            m.StateChanges: self._on_state_changes,
            m.StateChangesPart: self._on_state_changes_part,
            m.StateSnapshotBegin: self._on_state_snapshot_begin,
            m.StateSnapshotPart: self._on_state_snapshot_part,
            m.StateSize: self._on_state_size,
            m.Have: self._on_have,
            m.HaveUpdate: self._on_have_update,
            m.ChunkRequest: self._on_chunk_request,
            m.ChunkCancel: self._on_chunk_cancel,
            m.ChunkData: self._on_chunk_data,
            m.ChunkMissing: self._on_chunk_missing,
            m.ChunkBusy: self._on_chunk_busy,
            m.HaveObjects: self._on_have_objects,
            m.Health: self._on_health,
            m.LiveWindow: self._on_live_window,
            m.TlsKeyRequest: self._on_tls_key_request,
            m.TlsKey: self._on_tls_key,
        }

    def _on_connected(self, event: Connected, now: float) -> None:
        self._wake_timers()
        session = Session(
            conn_id=event.conn_id, peer=event.peer, chain=event.chain, remote=event.remote,
            outbound=event.outbound, opened_at=now, last_rx=now, last_tx=now,
            decoder=m.MessageDecoder(buffer_bytes_max=self.limits.receive_buffer_bytes_max),
        )
        self._sessions[event.conn_id] = session
        if event.outbound:
            self._addresses.dial_finished(event.remote, event.peer.node_id, now)
        if self._shutting_down:
            return self._close(session, "shutting down")
        if len(self._sessions) > self.limits.sessions_max:
            return self._close(session, "too many sessions")
        if self.revocations.is_revoked(event.peer.node_id):
            return self._close(session, "node revoked")
        if self._banned_until.get(event.peer.node_id, 0.0) > now:
            return self._close(session, "banned for sending corrupt data")
        hello = m.Hello(m.PROTOCOL_VERSION, self.identity.node_id, self.identity.mesh_id, self.features,
                        self.listen_port)
        self._send(session, hello, now)

    def _on_data(self, event: DataReceived, now: float) -> None:
        session = self._sessions.get(event.conn_id)
        if session is None or session.phase is Phase.CLOSING:
            return
        session.last_rx = now
        session.bytes_in += len(event.data)
        try:
            session.decoder.receive_data(event.data)
            while session.phase is not Phase.CLOSING and (msg := session.decoder.next_message()) is not None:
                self._on_message(session, msg, now)
        except RemoteProtocolError as exc:
            self._count("sessions.protocol_errors")
            self._close(session, f"protocol error: {exc}")

    def _on_disconnected(self, event: Disconnected, now: float) -> None:
        self._wake_timers()
        session = self._sessions.pop(event.conn_id, None)
        self._forget_snapshots(event.conn_id)
        if session is None:
            return
        if self._drop_ready(session):
            self._emit("peer.disconnected", node=session.node_id, reason=event.reason)
        self._forget_transfers(session)
        if session.outbound:
            self._addresses.dial_finished(session.remote, session.node_id, now)

    def _on_dial_failed(self, event: DialFailed, now: float) -> None:
        self._wake_timers()
        self._addresses.dial_failed(event.address, now)
        self._emit("peer.dial_failed", addr=_fmt(event.address), reason=event.reason)

    def _on_discovered(self, event: PeerDiscovered, now: float) -> None:
        node = event.node_id
        if node is not None and (node == self.identity.node_id or self.revocations.is_revoked(node)):
            return
        # When both sides discover each other, the smaller node id dials first.
        self._wake_timers()
        delay = self.limits.dial_grace_s if node is not None and node < self.identity.node_id else 0.0
        for address in event.addresses:
            self._addresses.learn(address, node, event.source, now, delay)

    def _on_local_changes(self, event: LocalChanges, now: float) -> None:
        heads = self.state.heads()
        try:
            self.state.apply_changes(event.data)
        except RemoteProtocolError as exc:
            self._emit("state.local_changes_rejected", reason=str(exc))
            return
        self._after_state_change(heads, now, persist=False)

    def _on_state_reloaded(self, event: StateReloaded, now: float) -> None:
        self._after_state_change(list(event.heads_before), now, persist=False)

    def _on_shutdown(self, event: ShutdownRequested, now: float) -> None:
        self._shutting_down = True
        self._wake_timers()
        for session in list(self._sessions.values()):
            self._close(session, f"shutting down ({event.reason})")

    # ---- messages --------------------------------------------------------------------------------

    def _on_message(self, session: Session, msg: m.Message, now: float) -> None:
        self.last_seen[session.node_id] = now
        if session.phase is Phase.HELLO:
            if isinstance(msg, m.Close):  # it refused the session (shutting down, too many, ...)
                return self._on_close(session, msg, now)
            if not isinstance(msg, m.Hello):
                raise RemoteProtocolError(f"expected Hello, got {type(msg).__name__}")
            return self._on_hello(session, msg, now)
        handler = self._message_table.get(type(msg))
        if handler is None:
            raise RemoteProtocolError(f"unexpected {type(msg).__name__} in a ready session")
        handler(session, msg, now)

    def _on_hello(self, session: Session, hello: m.Hello, now: float) -> None:
        if hello.protocol_version != m.PROTOCOL_VERSION:
            raise RemoteProtocolError(f"protocol version {hello.protocol_version} is not {m.PROTOCOL_VERSION}")
        if hello.node_id != session.node_id:
            raise RemoteProtocolError("Hello names another node than the handshake proved")
        if hello.mesh_id != self.identity.mesh_id:
            raise RemoteProtocolError("Hello names another mesh")
        session.listen_port = hello.listen_port
        session.features = frozenset(hello.features)
        session.advance(Trigger.HELLO_OK)
        if not self._keep_one_session(session):
            return
        self._on_ready(session, now)

    def _keep_one_session(self, session: Session) -> bool:
        """Resolve two sessions with one peer; True if `session` is the one kept."""
        other_id = self._ready.get(session.node_id)
        if other_id is None:
            self._ready[session.node_id] = session.conn_id
            return True
        other = self._sessions[other_id]
        winner_dialer = min(self.identity.node_id, session.node_id)
        keep_new = session.dialer(self.identity.node_id) == winner_dialer or (
            other.dialer(self.identity.node_id) != winner_dialer
        )
        loser = other if keep_new else session
        if keep_new:
            self._ready[session.node_id] = session.conn_id
        self._close(loser, "duplicate session")
        return keep_new

    def _on_ready(self, session: Session, now: float) -> None:
        peer = session.peer
        session.ready_at = now
        self._wake_timers()  # its settle and fallback deadlines; a dial it makes unnecessary
        self._emit("peer.connected", node=peer.node_id, name=peer.name, role=peer.role.value,
                   addr=_fmt(session.remote), outbound=session.outbound)
        listen = session.listen_address()
        if listen is not None:
            self._addresses.learn(listen, peer.node_id, "session", now)
        self._send_revocations(session, now)
        self._send_peer_addresses(session, now)
        self._share_new_peer(session, now)
        heads = tuple(self.state.heads())
        if len(heads) > m.HEADS_MAX:  # a very divergent document: only Automerge sync copes
            self._use_automerge_sync(session, now)
        else:
            self._send_heads(session, heads, now)
            session.fallback_at = now + HEADS_FALLBACK_S
            if FEATURE_STATE_SNAPSHOT in session.features and FEATURE_STATE_SNAPSHOT in self.features:
                self._send(session, m.StateSize(self._changes_noted), now)
        # After our heads went out: both sides record each other at once, and heads sent before
        # those changes let the one that is ahead send the difference at once (the changes follow
        # with it), where heads sent after them would be unknown on both sides until the fallback.
        self._record_member(session, now)
        self._swarming_ready(session, now)
        self._tls_ready(session, now)
        self._live_ready(session, now)
        if self._health_blob is not None:
            self._send(session, m.Health(self._health_blob), now)

    def _send_revocations(self, session: Session, now: float) -> None:
        """All revocations we know, in messages that each fit a frame."""
        batch: list[bytes] = []
        batch_bytes = 0
        for blob in self.revocations.blobs():
            if batch and (batch_bytes + len(blob) > REVOCATIONS_MESSAGE_BYTES or len(batch) >= m.REVOCATIONS_MAX):
                self._send(session, m.Revocations(tuple(batch)), now)
                batch, batch_bytes = [], 0
            batch.append(blob)
            batch_bytes += len(blob)
        if batch:
            self._send(session, m.Revocations(tuple(batch)), now)

    def _record_member(self, session: Session, now: float) -> None:
        """Put a newly seen member (and its invite use) into the shared state."""
        known = self.state.member(session.node_id) is not None  # a keyed read, not a scan
        new_uses = [(i, n) for i, n, _ in self.invites.items() if (i, n) not in self._invites_in_state]
        if known and not new_uses:
            return

        def change(state: MeshState) -> None:
            peer = session.peer
            if not known:
                state.put_member(peer.node_id, session.chain, peer.role.value, peer.name, now)
            for invite_id, node_id in new_uses:
                state.record_invite_use(invite_id, node_id, now)

        self.mutate(change, now)

    # ---- health signals ---------------------------------------------------------------------------

    def set_health(self, report: dict, now: float) -> None:
        """Make `report` our health report and send it to every ready peer (ephemeral: peers keep
        only the latest). LocalProtocolError if it does not fit a Health message."""
        blob = cbor2.dumps(report, canonical=True)
        if not 0 < len(blob) <= m.HEALTH_BYTES_MAX:
            raise LocalProtocolError(f"health report is {len(blob)} bytes, at most {m.HEALTH_BYTES_MAX}")
        self.health, self._health_blob = report, blob
        for conn_id in self._ready.values():
            self._send(self._sessions[conn_id], m.Health(blob), now)

    def _on_health(self, session: Session, msg: m.Health, now: float) -> None:
        try:
            report = cbor2.loads(msg.report)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise RemoteProtocolError(f"bad health report: {exc}") from None
        if not isinstance(report, dict):
            raise RemoteProtocolError("health report is not a map")
        self.peer_health[session.node_id] = (now, report)

    def _on_ping(self, session: Session, ping: m.Ping, now: float) -> None:
        self._send(session, m.Pong(ping.nonce), now)

    def _on_pong(self, session: Session, pong: m.Pong, now: float) -> None:
        if pong.nonce == session.ping_nonce:
            session.ping_nonce = None

    def _on_close(self, session: Session, close: m.Close, now: float) -> None:
        self._emit("peer.closed_by_peer", node=session.node_id, reason=close.reason[:200])
        session.advance(Trigger.CLOSE)
        if self._drop_ready(session):  # a closing session is nobody's peer any more
            self._emit("peer.disconnected", node=session.node_id, reason="closed by peer")
        self._actions.append(CloseConnection(session.conn_id, f"peer closed: {close.reason[:200]}"))

    def _on_revocations(self, session: Session, msg: m.Revocations, now: float) -> None:
        fresh = [blob for blob in msg.records if blob not in self._revocations_seen]
        if not fresh:
            return
        accepted: list[tuple[str, bytes]] = []
        for blob in fresh:
            try:
                revocation = self.revocations.add(blob, now)
            except CredentialError as exc:
                self._emit("revocation.rejected", node=session.node_id, reason=str(exc))
                continue
            self._revocations_seen.add(blob)
            accepted.append((revocation.node_id, blob))
        known = self.state.revocation_blobs()
        missing = [(node, blob) for node, blob in accepted if node not in known]
        if missing:
            self.mutate(lambda state: [state.put_revocation(n, b) for n, b in missing], now)
        self._enforce_revocations(now)

    def _on_peer_addresses(self, session: Session, msg: m.PeerAddresses, now: float) -> None:
        for peer in msg.peers[: self.limits.pex_peers_max]:
            self._on_discovered(PeerDiscovered(((peer.host, peer.port),), peer.node_id, "pex"), now)

    def _on_state_sync_part(self, session: Session, msg: m.StateSyncPart, now: float) -> None:
        session.sync_parts.append(msg.message)
        session.sync_parts_bytes += len(msg.message)
        if session.sync_parts_bytes > self.limits.state_sync_bytes_max:
            raise RemoteProtocolError("state sync message exceeds state_sync_bytes_max")

    def _on_state_sync(self, session: Session, msg: m.StateSync, now: float) -> None:
        self._on_state_sync_part(session, m.StateSyncPart(msg.message), now)
        whole = b"".join(session.sync_parts)
        session.sync_parts, session.sync_parts_bytes = [], 0
        session.state_bytes_in += len(whole)
        if not session.automerge_sync:
            self._use_automerge_sync(session)
        sync_state = self._sync_states[session.node_id]
        heads = self.state.heads()
        self.state.receive_sync_message(sync_state, whole)
        self._after_state_change(heads, now, persist=True, also_reply_to=session)

    # ---- state ------------------------------------------------------------------------------------

    def _after_state_change(self, heads_before: list[bytes], now: float, persist: bool,
                            also_reply_to: Session | None = None) -> None:
        """Note a change; persisting it and offering it to peers happen in `_flush_state`, at most
        every `state_flush_s`, because both cost time that grows with the document's history."""
        changed = self.state.heads() != heads_before
        if changed:
            self._note_changes(heads_before)
            if persist and self._unpersisted_since is None:
                self._unpersisted_since = heads_before
            self._count("state.changes_applied")
            self._refresh_membership(now)
            self._sync_due.update(self._ready)
            self._note_state_changed()
            self._drops_changed(now)
        elif also_reply_to is not None:
            self._sync_due.add(also_reply_to.node_id)
        if (changed or also_reply_to is not None) and self._flush_at is None:
            self._flush_at = now + self.limits.state_flush_s

    def _drops_changed(self, now: float) -> None:
        """Log new drop orders and refused drop entries; answer other boxes' requests for more
        from our spare allowance (mesh.state.drops), once per change (its own change re-enters)."""
        if self._answering_drops:
            return
        rows = self._drops.changed(self.state, self.identity.authority_public_key, now)
        for name, fields in rows or ():
            self._emit(name, **fields)
        if rows is None or not self._drops.asks_from_others:
            return
        if self.drop_answers_queued:  # decided on the durable state, which holds sales this state lacks
            self._persist_now()  # ... including the requests themselves
            self._actions.append(AnswerDropAsks(now))
        elif self.drop_signer is not None:
            self._answering_drops = True
            try:
                self.mutate(lambda state: answer_asks(state, self.drop_signer, now), now)
            finally:
                self._answering_drops = False

    def _persist_now(self) -> None:
        if self._unpersisted_since is not None:
            self._actions.append(PersistChanges(self.state.changes_since(self._unpersisted_since)))
            self._unpersisted_since = None

    def _flush_state(self, now: float) -> None:
        if self._flush_at is None or now < self._flush_at:
            return
        self._flush_at = None
        self._persist_now()
        due, self._sync_due = self._sync_due, set()
        batch: dict[str, bytes] = {}  # the changes since the last flush, computed at most once
        for node in sorted(due):
            conn_id = self._ready.get(node)
            if conn_id is None:
                continue
            session = self._sessions[conn_id]
            if session.automerge_sync:
                self._sync_to(session, now)
            else:
                self._send_changes(session, now, batch)
        self._flushed_heads = tuple(self.state.heads())

    # The heads fast path: peers in step exchange only their heads and the changes since, which
    # costs one `changes_since` per flush; the Automerge sync protocol (whose message generation
    # grows with the whole history in this binding) is the fallback when heads are unknown.

    def _note_changes(self, heads_before: list[bytes]) -> None:
        """Remember the hashes of the changes since `heads_before`: every one, not only our heads,
        since a peer's heads may be changes that arrived here with later ones on top of them."""
        known = self._known_changes
        hashes = self.state.change_hashes_since(heads_before)
        first = self._changes_noted + max(0, len(hashes) - KNOWN_CHANGES_MAX)
        for number, change in enumerate(hashes[-KNOWN_CHANGES_MAX:], start=first):
            known[change] = number
        self._changes_noted += len(hashes)
        while len(known) > KNOWN_CHANGES_MAX:
            del known[next(iter(known))]

    def _knows(self, heads: tuple[bytes, ...]) -> bool:
        """We hold these changes (as far as KNOWN_CHANGES_MAX recent ones tell)."""
        return all(head in self._known_changes or head in GENESIS_HEADS for head in heads)

    def _send_heads(self, session: Session, heads: tuple[bytes, ...], now: float) -> None:
        self._send(session, m.StateHeads(heads), now)
        session.heads_sent = heads

    def _on_state_heads(self, session: Session, msg: m.StateHeads, now: float) -> None:
        session.peer_heads = msg.heads
        if self._knows(msg.heads):
            session.automerge_sync = False  # back to (or on) the fast path
            session.fallback_at = None
            self._send_changes(session, now, {})
        elif not session.automerge_sync:
            # The peer is ahead of us (our heads reached it as its reached us, so its changes
            # follow within a round trip) or we diverged: each made changes the other lacks, as two
            # nodes that meet usually have. Then neither sends anything, and Automerge sync must
            # settle it: start it after HEADS_WAIT_S rather than HEADS_FALLBACK_S, so a node that
            # meets its peers is not kept settling (no chunks moving) for seconds.
            wait_until = now + HEADS_WAIT_S
            if session.fallback_at is None or session.fallback_at > wait_until:
                session.fallback_at = wait_until
                self._wake_timers()
            self._snapshot_by_size(session, now)
        # else: an Automerge sync already running settles it

    def _send_changes(self, session: Session, now: float, batch: dict[str, bytes]) -> None:
        """Send the peer what it lacks, if we know its heads; else fall back to Automerge sync."""
        peer_heads = session.peer_heads
        if peer_heads is None:
            return  # its StateHeads is on the way
        if not self._knows(peer_heads):
            return self._use_automerge_sync(session, now)
        if self._snapshot_due(session, peer_heads):
            return self._send_snapshot(session, now)
        if set(peer_heads) == set(self._flushed_heads) and self.state.heads() != list(self._flushed_heads):
            if "delta" not in batch:
                batch["delta"] = self.state.changes_since(self._flushed_heads)
            delta = batch["delta"]
        else:
            delta = self.state.changes_since(peer_heads)
        heads = tuple(self.state.heads())
        if not delta or set(heads) == set(peer_heads):
            return
        if len(delta) > self.limits.state_sync_bytes_max or len(heads) > m.HEADS_MAX:
            return self._use_automerge_sync(session, now)
        tail = self._send_leading_parts(session, delta, m.StateChangesPart, now)
        self._send(session, m.StateChanges(tail, heads), now)
        session.peer_heads = heads

    def _on_state_changes_part(self, session: Session, msg: m.StateChangesPart, now: float) -> None:
        session.change_parts.append(msg.data)
        session.change_parts_bytes += len(msg.data)
        if session.change_parts_bytes > self.limits.state_sync_bytes_max:
            raise RemoteProtocolError("state changes exceed state_sync_bytes_max")

    def _on_state_changes(self, session: Session, msg: m.StateChanges, now: float) -> None:
        if msg.data:
            self._on_state_changes_part(session, m.StateChangesPart(msg.data), now)
        whole = b"".join(session.change_parts)
        session.change_parts, session.change_parts_bytes = [], 0
        session.state_bytes_in += len(whole)
        session.peer_heads = msg.heads
        heads = self.state.heads()
        if whole:
            self.state.apply_changes(whole)
        if self.state.heads() != heads:
            self._actions.append(PersistChanges(whole))  # exactly what arrived: no history scan
        self._after_state_change(heads, now, persist=False)
        if self._knows(msg.heads):
            session.fallback_at = None
        elif not session.automerge_sync:  # their changes depend on ones we lack: we diverged
            self._use_automerge_sync(session, now)

    # ---- bootstrap from a snapshot ----------------------------------------------------------------

    def _snapshot_due(self, session: Session, peer_heads: tuple[bytes, ...]) -> bool:
        """Whether the peer, whose heads we know, lacks so much that our whole document is the
        cheaper thing to send; the changes after its newest head in our arrival order tell
        (computing the changes it lacks, or their size, would cost a scan of the history)."""
        newest = max((self._known_changes.get(head, -1) for head in peer_heads), default=-1)
        return self._snapshot_pays(session, self._changes_noted - 1 - newest)

    def _snapshot_pays(self, session: Session, lacking: int) -> bool:
        """Whether a peer lacking `lacking` of our changes should get a snapshot instead."""
        if lacking < self.snapshot_changes_min or lacking < self._changes_noted * SNAPSHOT_LACKING_FRACTION_MIN:
            return False
        if session.conn_id in self._snapshot_sent_to or len(self.state.heads()) > m.HEADS_MAX:
            return False
        if FEATURE_STATE_SNAPSHOT not in session.features or FEATURE_STATE_SNAPSHOT not in self.features:
            return False
        return len(self._snapshot()) <= self.limits.state_sync_bytes_max

    def _on_state_size(self, session: Session, msg: m.StateSize, now: float) -> None:
        self._peer_changes[session.conn_id] = msg.changes
        if session.peer_heads is not None and not self._knows(session.peer_heads):
            self._snapshot_by_size(session, now)

    def _snapshot_by_size(self, session: Session, now: float) -> None:
        """The peer's heads are unknown to us: if its change count says it lacks much of ours (a
        document of n changes lacks at least ours minus n), send it a snapshot; if it says we lack
        much of its, wait longer for its snapshot before falling back to Automerge sync."""
        theirs = self._peer_changes.get(session.conn_id)
        if theirs is None or session.automerge_sync:
            return
        if self._snapshot_pays(session, self._changes_noted - theirs):
            return self._send_snapshot(session, now)
        lacking = theirs - self._changes_noted
        if lacking >= self.snapshot_changes_min and lacking >= theirs * SNAPSHOT_LACKING_FRACTION_MIN:
            session.fallback_at = max(session.fallback_at or now, now + HEADS_FALLBACK_S)

    def _snapshot(self) -> bytes:
        """Our document's `save()`, computed once per heads (several fresh peers share it)."""
        heads = tuple(self.state.heads())
        if self._snapshot_cache is None or self._snapshot_cache[0] != heads:
            self._snapshot_cache = (heads, self.state.save())
        return self._snapshot_cache[1]

    def _send_snapshot(self, session: Session, now: float) -> None:
        snapshot = self._snapshot()
        heads = tuple(self.state.heads())
        self._snapshot_sent_to.add(session.conn_id)
        session.state_bytes_out += len(snapshot)
        self._send(session, m.StateSnapshotBegin(len(snapshot), heads), now)
        for start in range(0, len(snapshot), STATE_SYNC_PART_BYTES):
            self._send(session, m.StateSnapshotPart(snapshot[start:start + STATE_SYNC_PART_BYTES]), now)
        session.peer_heads = heads
        self._count("state.snapshots_sent")
        self._emit("state.snapshot_sent", node=session.node_id, bytes=len(snapshot))

    def _on_state_snapshot_begin(self, session: Session, msg: m.StateSnapshotBegin, now: float) -> None:
        if FEATURE_STATE_SNAPSHOT not in self.features:
            raise RemoteProtocolError(f"a state snapshot, but our Hello did not offer {FEATURE_STATE_SNAPSHOT}")
        if session.conn_id in self._snapshots_in:
            raise RemoteProtocolError("a state snapshot began before the last one ended")
        if msg.total_bytes > self.limits.state_sync_bytes_max:
            raise RemoteProtocolError(
                f"a state snapshot of {msg.total_bytes} bytes exceeds state_sync_bytes_max")
        self._snapshots_in[session.conn_id] = _SnapshotAssembly(msg.total_bytes, msg.heads, [])
        self._defer_fallback(session, now)

    @staticmethod
    def _defer_fallback(session: Session, now: float) -> None:
        """A snapshot is arriving (as long as parts keep coming): no Automerge sync meanwhile."""
        if session.fallback_at is not None:
            session.fallback_at = max(session.fallback_at, now + HEADS_FALLBACK_S)

    def _on_state_snapshot_part(self, session: Session, msg: m.StateSnapshotPart, now: float) -> None:
        assembly = self._snapshots_in.get(session.conn_id)
        if assembly is None:
            raise RemoteProtocolError("a state snapshot part without StateSnapshotBegin")
        if assembly.received_bytes + len(msg.data) > assembly.total_bytes:
            raise RemoteProtocolError("state snapshot parts exceed the size announced")
        assembly.parts.append(msg.data)
        assembly.received_bytes += len(msg.data)
        if assembly.received_bytes < assembly.total_bytes:
            return self._defer_fallback(session, now)
        del self._snapshots_in[session.conn_id]
        self._merge_snapshot(session, b"".join(assembly.parts), assembly.heads, now)

    def _merge_snapshot(self, session: Session, data: bytes, heads: tuple[bytes, ...], now: float) -> None:
        """Check a whole snapshot, merge it into our document and persist it as it arrived."""
        session.state_bytes_in += len(data)
        try:
            snapshot = MeshState.from_snapshot(data)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"bad state snapshot: {exc}") from None
        if set(snapshot.heads()) != set(heads):
            raise RemoteProtocolError("bad state snapshot: its heads are not the ones announced")
        if not self._of_this_mesh(snapshot, session):
            raise RemoteProtocolError("bad state snapshot: no member credential of this mesh in it")
        before = self.state.heads()
        self.state.merge_snapshot(snapshot)
        if self.state.heads() != before:
            self._actions.append(PersistChanges(data))  # exactly what arrived: one log record
        self._count("state.snapshots_received")
        self._emit("state.snapshot_merged", node=session.node_id, bytes=len(data))
        session.peer_heads = heads
        self._after_state_change(before, now, persist=False)
        if self._knows(heads):
            session.fallback_at = None

    def _of_this_mesh(self, snapshot: MeshState, session: Session) -> bool:
        """Whether a member entry in `snapshot` holds a chain our authority signed (every replica
        shares one genesis, so only signed records tell one mesh's document from another's):
        ours and the sender's first, then a few others."""
        entries = [snapshot.member(self.identity.node_id), snapshot.member(session.node_id)]
        entries += snapshot.members()[:SNAPSHOT_MEMBER_CHECKS_MAX]
        for entry in entries:
            if entry is None:
                continue
            try:
                member_since(entry.chain, self.identity.authority_public_key)
            except CredentialError:
                continue
            return True
        return False

    def _forget_snapshots(self, conn_id: int) -> None:
        self._snapshots_in.pop(conn_id, None)
        self._snapshot_sent_to.discard(conn_id)
        self._peer_changes.pop(conn_id, None)

    def _use_automerge_sync(self, session: Session, now: float | None = None) -> None:
        """Switch this session to the Automerge sync protocol (bloom filters, any divergence)."""
        session.automerge_sync = True
        session.fallback_at = None
        self._sync_states[session.node_id] = self.state.new_sync_state()
        self._count("state.automerge_sync_sessions")
        if now is not None:
            self._sync_to(session, now)

    def _sync_to(self, session: Session, now: float) -> None:
        sync_state = self._sync_states.get(session.node_id)
        if sync_state is None:
            return
        message = self.state.generate_sync_message(sync_state)
        if message is None:  # nothing more to say: offer our heads, so both can return to the fast path
            heads = tuple(self.state.heads())
            if heads != session.heads_sent and len(heads) <= m.HEADS_MAX:
                self._send_heads(session, heads, now)
            return
        tail = self._send_leading_parts(session, message, m.StateSyncPart, now)
        self._send(session, m.StateSync(tail), now)

    def _send_leading_parts(self, session: Session, payload: bytes, part: type, now: float) -> bytes:
        """Send all but the last STATE_SYNC_PART_BYTES-sized piece of a state payload as `part`
        messages; return the last piece, for the message that completes it."""
        session.state_bytes_out += len(payload)
        last = len(payload) - (len(payload) - 1) % STATE_SYNC_PART_BYTES - 1 if payload else 0
        for start in range(0, last, STATE_SYNC_PART_BYTES):
            self._send(session, part(payload[start:start + STATE_SYNC_PART_BYTES]), now)
        return payload[last:]

    def _refresh_membership(self, now: float) -> None:
        """Pick up revocations and invite uses that arrived in the shared state."""
        for node_id, blob in self.state.revocation_blobs().items():
            if blob in self._revocations_seen:
                continue
            self._revocations_seen.add(blob)
            try:
                self.revocations.add(blob, now)
            except CredentialError as exc:
                self._emit("revocation.rejected", node=node_id, reason=str(exc))
        for invite_id, node_id, at in self.state.invite_use_entries():
            if (invite_id, node_id) not in self._invites_in_state:
                self.invites.record(invite_id, node_id, at)
                self._invites_in_state.add((invite_id, node_id))
        self._enforce_revocations(now)
        self._refresh_release(now)
        self._refresh_tls(now)

    def _enforce_revocations(self, now: float) -> None:
        for session in list(self._sessions.values()):
            if session.phase is not Phase.CLOSING and self.revocations.is_revoked(session.node_id):
                self._emit("peer.revoked", node=session.node_id)
                self._close(session, "node revoked")
        for revocation in self.revocations.revocations():
            self._addresses.forget_node(revocation.node_id)

    # ---- peer exchange ----------------------------------------------------------------------------

    def _peer_address_records(self, exclude: str) -> list[m.PeerAddress]:
        records = []
        for session in self.peers():
            listen = session.listen_address()
            if session.node_id != exclude and listen is not None:
                records.append(m.PeerAddress(session.node_id, listen[0], listen[1]))
        return records[: self.limits.pex_peers_max]

    def _send_peer_addresses(self, session: Session, now: float) -> None:
        records = self._peer_address_records(exclude=session.node_id)
        if records:
            self._send(session, m.PeerAddresses(tuple(records)), now)

    def _share_new_peer(self, new: Session, now: float) -> None:
        """Tell a few other peers (at most PEX_SHARE_MAX, at random) about a new one. The newcomer
        already got our whole list and dials it; telling every peer would cost N^3 records when a
        whole venue starts at once."""
        listen = new.listen_address()
        if listen is None:
            return
        record = m.PeerAddresses((m.PeerAddress(new.node_id, listen[0], listen[1]),))
        others = [session for session in self.peers() if session.conn_id != new.conn_id]
        if len(others) > PEX_SHARE_MAX:
            others = self._rng.sample(others, PEX_SHARE_MAX)
        for session in others:
            self._send(session, record, now)

    # ---- timers -----------------------------------------------------------------------------------

    def _session_deadlines(self, session: Session) -> list[float]:
        if session.phase is Phase.CLOSING:
            return []
        if session.phase is Phase.HELLO:
            return [session.opened_at + self.limits.hello_timeout_s]
        quiet = max(session.last_rx, session.ping_at)
        times = [quiet + self.limits.ping_interval_s, session.last_rx + self.limits.peer_timeout_s]
        times += self._settle_deadlines(session)
        return times + ([session.fallback_at] if session.fallback_at is not None else [])

    def _wake_timers(self) -> None:
        """Something may have moved a session timer or a dial earlier: look at them all after this
        event. (Deadlines that only move later, like a ping after traffic, need no wake-up.)"""
        self._timers_at = self._now

    def _on_timers(self, now: float) -> None:
        self._flush_state(now)
        if now >= self._withheld_at:
            self._refresh_withheld(now)
        if now >= self._timers_at:
            self._session_and_dial_timers(now)
        settling = self._settling(now)
        if settling != self._was_settling:
            self._was_settling = settling
            self._emit("swarm.settling" if settling else "swarm.settled", after_s=round(now - self._started_at, 3))
        if not settling:
            self._release_deferred(now)
        if now >= self._held_at:
            self._release_held(now)
        if not self._shutting_down:
            self._live_step(now)
            self._media_step(now)
            self._run_swarm(now, settling)
            self._tls_step(now)

    def _session_and_dial_timers(self, now: float) -> None:
        """Every session's timers and due dials; then when to look again (O(sessions + addresses),
        so it runs when something is due or changed, not after every event)."""
        for session in list(self._sessions.values()):
            self._session_timers(session, now)
        skip = self._skip_nodes()
        if not self._shutting_down:
            self._dial_due(now, skip)
        times = [t for s in self._sessions.values() for t in self._session_deadlines(s)]
        dial_at = None
        if not self._shutting_down and self._addresses.inflight_count() < self.limits.dials_inflight_max:
            dial_at = self._addresses.next_deadline(skip)
            if dial_at is not None:
                times.append(dial_at)
        self._timers_at = min(times) if times else float("inf")
        if now < self._started_at + STARTUP_SETTLE_S:
            self._met_all = self._met_everyone(dial_at)

    def _session_timers(self, session: Session, now: float) -> None:
        if session.phase is Phase.HELLO and now >= session.opened_at + self.limits.hello_timeout_s:
            return self._close(session, "no Hello in time")
        if session.phase is not Phase.READY:
            return
        if now >= session.last_rx + self.limits.peer_timeout_s:
            return self._close(session, "peer timed out")
        if session.fallback_at is not None and now >= session.fallback_at:
            if session.peer_heads is None or not self._knows(session.peer_heads):
                self._use_automerge_sync(session, now)
            session.fallback_at = None
        # Ping a peer we have not heard from (what we send does not count: traffic can be one-way,
        # e.g. HaveUpdates go only to peers that lack a chunk). Sessions due within the next quarter
        # interval are pinged too: one wake-up serves them all, not one per session.
        if now >= max(session.last_rx, session.ping_at) + self.limits.ping_interval_s * (1 - PING_EARLY):
            session.ping_at = now
            session.ping_nonce = self._rng.getrandbits(63)
            self._send(session, m.Ping(session.ping_nonce), now)

    def _skip_nodes(self) -> set[str]:
        connected = {s.node_id for s in self._sessions.values() if s.phase is not Phase.CLOSING}
        banned = {node for node, until in self._banned_until.items() if until > self._now}
        return connected | banned | {self.identity.node_id}

    def _dial_due(self, now: float, skip: set[str]) -> None:
        slots = self.limits.dials_inflight_max - self._addresses.inflight_count()
        if slots <= 0:
            return
        for candidate in self._addresses.due(now, skip, slots):
            self._actions.append(Dial(candidate.address, candidate.node_id))

    # ---- helpers ----------------------------------------------------------------------------------

    def _send(self, session: Session, msg: m.Message, now: float) -> None:
        self._send_encoded(session, m.encode(msg), now)

    def _send_encoded(self, session: Session, data: bytes, now: float) -> None:
        """Send a message already encoded (one message to many peers is encoded once)."""
        session.last_tx = now
        session.bytes_out += len(data)
        self._actions.append(Send(session.conn_id, data))

    def _close(self, session: Session, reason: str) -> None:
        if session.phase is Phase.CLOSING:
            return
        self._wake_timers()  # its node may be dialled again
        self._actions.append(Send(session.conn_id, m.encode(m.Close(reason[: m.CLOSE_REASON_BYTES_MAX]))))
        session.advance(Trigger.CLOSE)
        self._forget_snapshots(session.conn_id)
        self._drop_ready(session)
        self._emit("peer.closing", node=session.node_id, reason=reason)
        self._actions.append(CloseConnection(session.conn_id, reason))

    def _drop_ready(self, session: Session) -> bool:
        """Forget `session` as its node's ready session, and the sync state that went with it."""
        if self._ready.get(session.node_id) != session.conn_id:
            return False
        del self._ready[session.node_id]
        self._sync_states.pop(session.node_id, None)
        return True

    def _emit(self, event_name: str, /, **fields: object) -> None:
        self._actions.append(Emit(event_name, tuple(fields.items())))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ---- status -----------------------------------------------------------------------------------

    def status(self) -> dict:
        """The `mesh status --json` document (peers and state), as plain data."""
        return {
            "node_id": self.identity.node_id,
            "mesh_id": self.identity.mesh_id,
            "name": self.identity.name,
            "role": self.identity.role,
            "peers": [self._peer_status(s) for s in self.peers()],
            "state": {"heads": [h.hex() for h in self.state.heads()]},
            "release": self._release_status(),
            "pinned": self._pinned_status(),
            "media": self._media_status(),
            "members": self._members_status(),
            "health": self.health,
            "tls": self._tls_status(),
            "live": self._live_status(self._now),
        }

    def _peer_status(self, session: Session) -> dict:
        doc = _peer_status(session)
        rates = self.transfers.peer_rates()
        doc["chunk_bytes_received"] = rates.get(session.node_id, 0)
        health = self.peer_health.get(session.node_id)
        doc["health"] = health[1] if health is not None else None
        doc["release"] = self._peer_release(session.node_id)
        return doc

    def _members_status(self) -> list[dict]:
        """Every member in the shared state, with whether it is connected now and when we last
        heard from it."""
        rows = []
        for member in self.state.members():
            if member.node_id == self.identity.node_id:
                continue
            rows.append({
                "node_id": member.node_id,
                "name": member.name,
                "role": member.role,
                "online": member.node_id in self._ready,
                "last_seen": self.last_seen.get(member.node_id),
                "revoked": self.revocations.is_revoked(member.node_id),
            })
        return rows


def _peer_status(session: Session) -> dict:
    return {
        "node_id": session.node_id,
        "name": session.peer.name,
        "role": session.peer.role.value,
        "addr": _fmt(session.remote),
        "outbound": session.outbound,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
    }


def _fmt(address: Address | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["CoreIdentity", "NodeCore", "short"]
