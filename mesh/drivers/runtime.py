"""The trio runtime: one task owns the `NodeCore`; everything else feeds it through channels.

Concerns, each in its own task or nursery:
- the listener accepts streams and runs the secure handshake, then a connection task;
- `Dial` actions start dial tasks (transport connect + handshake), then a connection task;
- each connection has a reader (bytes -> `DataReceived`) and a writer (bounded outbox -> stream);
- discovery (mDNS) reports peers; a state poller picks up changes CLI commands wrote; a status
  task refreshes `run/status.json`.
A peer's failure ends that peer's connection task only. SIGINT/SIGTERM ask the core to close every
session, then everything is cancelled; the state is compacted on the way out.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import os
import random
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from mesh.config import AgentConfig
from mesh.content.cid import Cid
from mesh.core.events import (
    Address, AnswerDropAsks, AssetsEvaluated, CancelServe, ChunkRejected, ChunkServed, ChunkStored, CloseConnection, Connected,
    DataReceived, Dial, DialFailed, Disconnected, Emit, EvaluateAssets, Event, EvictObjects, FetchRequested, LoadObjects, LoadRelease, ObjectsEvicted,
    ObjectsInventory, ObjectsUsed, PeerDiscovered, PersistChanges, ReleaseInventory, Send, ServeChunk,
    ShutdownRequested, StateReloaded, StoreChunk, StoreUsage, Tick,
)
from mesh.core.events import DropTlsKeys, LoadTlsKey, ServeTls, StoreTlsKey
from mesh.core.node import CoreIdentity, NodeCore
from mesh.drivers.admission import PreAuthGate, preauth_total_max, raise_fd_limit
from mesh.drivers.agentfiles import write_status
from mesh.drivers.allocator import keep_chunk_buffers
from mesh.drivers.channel import (
    LARGE_RECORD_HEAD_ROOM_BYTES, RECORD_PLAINTEXT_BYTES_MAX_ANY, HandshakeError, LocalIdentity, channel_psk,
    secure_accept_any, secure_connect,
)
from mesh.drivers.filestore import FileStore
from mesh.drivers.home import Home
from mesh.drivers.loopwatch import LoopWatch, Stall
from mesh.drivers.netinfo import wireless_route
from mesh.drivers.passes import state_pass
from mesh.drivers.purge import agent_keep_set
from mesh.drivers.statefile import StateFile
from mesh.drivers.tls import TlsWatch, carry_out
from mesh.errors import CorruptChunkError, CredentialError, MeshError, RemoteProtocolError
from mesh.ports import Transport
from mesh.state.consent import asset_statuses, count_views
from mesh.state.document import actor_id
from mesh.wire import messages as m

log = logging.getLogger("mesh.agent")

DIAL_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
READ_BYTES_MAX = RECORD_PLAINTEXT_BYTES_MAX_ANY  # a whole large record (a chunk piece and its head) per read; the core buffers 4 MiB
PIECE_HEAD_ROOM_BYTES = m.CHUNK_DATA_HEAD_BYTES_MAX  # left before each piece in a serve's read buffer
SHUTDOWN_GRACE_S = 3.0
PERSISTED_WAIT_S = 2.0  # a gateway write waits at most this long for the state log to catch up ...
PERSISTED_POLL_S = 0.01  # ... looking this often
CLOSE_DRAIN_S = 5.0
WRITE_GATHER_BYTES_MAX = 64 * 1024  # queued frames joined into one write, at most
STORE_QUEUE_MAX = 1024  # received chunks waiting to be verified and stored
STORE_BATCH_CHUNKS_MAX = 64  # chunks made durable by one flush
CORE_BATCH_EVENTS_MAX = 64  # events the core takes before its timers and scheduler run
PURGE_FULL_EVERY_ROUNDS = 10  # purge this often even when the state did not change (retention)
VIEW_FLUSH_S = 5.0  # views counted in memory are written to shared state this often
RECENT_EVENTS_MAX = 200  # events kept for the dashboard
RECENT_EVENT_NAMES = frozenset({  # what the crew sees in "recent events"
    "agent.started", "peer.connected", "peer.disconnected", "peer.corrupt_chunk", "peer.revoked",
    "release.current", "release.complete", "release.invalid", "store.purged", "health.failed",
    "health.recovered", "media.evicting", "release.over_quota", "drop.order", "live.started", "live.failed", "live.recorded",
    "live.relay",
})
USAGE_REPORT_BYTES_MIN = 1024 * 1024  # tell the core of a change in the store's size at least this large
REFUSED_LOGGED_PER_S = 20  # strangers' failed handshakes logged a second at most (the rest counted)
REFUSALS_MAX = 16  # addresses whose refusal of our credential status remembers
PENDING_BOXES_MAX = 64  # boxes waiting to be admitted that the Pending list shows at once


@dataclass(frozen=True)
class _ChunkJob:
    """An outbox entry the writer turns into ChunkData pieces when it reaches it."""

    cid: str  # the chunk to send


@dataclass
class _Connection:
    """The driver's side of one live session."""

    conn_id: int  # shared with the core
    outbox: trio.MemorySendChannel  # frames for the writer
    scope: trio.CancelScope  # cancels reader and writer
    node_id: str  # authenticated peer
    cancelled: set[str] = field(default_factory=set)  # queued chunk jobs the peer cancelled
    queued: Counter = field(default_factory=Counter)  # chunk jobs waiting in the outbox, per CID


GIL_SWITCH_S = 0.001  # the interpreter's switch interval in an agent (Python's default: 5 ms), see below


def _shorter_gil_turns() -> None:
    """Hand the GIL over every GIL_SWITCH_S instead of every 5 ms. A pass over every asset runs on
    a worker thread (mesh.drivers.passes); each system call of the event loop (a socket send, a
    file read for the gateway) lets that worker take the GIL, and the loop then waited up to 5 ms
    to get it back: a small-file response made of four system calls took 20-26 ms of wall time
    for 1 ms of CPU while a pass ran. A thread alone holds the GIL as long as it likes either way;
    the interval only bounds the wait of a thread that asks for it."""
    sys.setswitchinterval(GIL_SWITCH_S)


def _freeze_startup_objects() -> None:
    """Move what start-up made (modules, the state's records, the core's media tables) out of the
    cyclic garbage collector's view: every full collection otherwise walks all of them (~70 ms
    at 10,000 assets, in whichever task step it lands). Once the core is made, and again after
    the first consent pass (the first full collection came before that pass ended). Only
    the young generations are collected first: a full collection here is itself the stall it
    spares (35 ms on a fresh home, >150 ms on a loaded machine); the little start-up garbage that
    survives in the old generation stays, frozen."""
    gc.collect(1)
    gc.freeze()


class Agent:
    """A running node: `await agent.run()` inside a nursery."""

    def __init__(self, home: Home, config: AgentConfig, transport: Transport,
                 discovery: Callable[..., Any] | None = None, pool=None) -> None:
        self.home = home
        self.config = config
        self.transport = transport
        self.discovery = discovery
        self.statefile = StateFile(home.state_path)
        self.store = FileStore(home.store_path, pool=pool)  # pool: a hub's shared chunk files
        info = home.info
        self.local = LocalIdentity(home.node_key(), info.chain, channel_psk(info.authority_public_key, info.mesh_key))
        self.listen_address: Address | None = None
        self.core: NodeCore | None = None
        self._conn_ids = itertools.count(1)
        self._connections: dict[int, _Connection] = {}
        self._events_send, self._events_recv = trio.open_memory_channel[Event](config.events_max)
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._store_limiter = trio.CapacityLimiter(2)  # verifying and storing run on worker threads
        # Passes over every asset of the state (the core's consent pass, the gateway's catalog, the
        # purge's keep set) run on a worker one at a time: each holds the GIL most of its time, and
        # the event loop competes with every such thread for it.
        self.state_passes = trio.CapacityLimiter(1)
        self._frozen = False  # start-up's objects moved out of the garbage collector's view
        self._serve_limiter = trio.CapacityLimiter(2)  # reads for peers never queue behind fsyncs
        self._store_send, self._store_recv = trio.open_memory_channel[StoreChunk](STORE_QUEUE_MAX)
        self.counters: Counter[str] = Counter()  # bytes_in, bytes_out, chunks_served, views
        self.recent_events: deque[dict] = deque(maxlen=RECENT_EVENTS_MAX)  # for the dashboard
        self._views: Counter[str] = Counter()  # canonical tag -> views not yet in shared state
        self.outbox_status: dict | None = None  # set by the outbox loop when an uplink is configured
        self.http_listening: tuple[str, int] | None = None  # set once the HTTP side accepts requests
        self._mdns_running = False  # the discovery task is up
        self._mdns_seen: set[str] = set()  # node ids discovery reported
        self.pending_boxes: dict[str, dict] = {}  # node id -> {node_id, addr, seen}: boxes waiting to be admitted
        self._stored = trio.Event()  # set, then replaced, after every store batch (streams wait on it)
        self._used: set[str] = set()  # media files browsers read since the last ObjectsUsed
        self.store_budget: int | None = None  # bytes the store may hold (`store_budget`), set by `run`
        self._usage: tuple[int, int] = (0, 0)  # (chunks, bytes) in the store, refreshed by the status loop
        self._usage_reported: int | None = None  # the bytes the core was last told
        self.fd_limit = raise_fd_limit()  # (soft, hard) RLIMIT_NOFILE
        self.acceptor = Acceptor(PreAuthGate(preauth_total_max(self.fd_limit[0])), self._emit_log, self.counters)
        # state changes not yet appended to the log, and transactions to run after them, in order
        self._unpersisted: deque[bytes | AnswerDropAsks] = deque()
        self._persist_wake_send, self._persist_wake = trio.open_memory_channel[None](1)  # see _persist_loop
        self._poll_send, self._poll_due = trio.open_memory_channel[None](1)  # see _state_reader
        self.tls = TlsWatch()  # what HTTPS serves, as the core last said (mesh.drivers.tls)
        self.loopwatch = LoopWatch(on_stall=self._note_stall,  # the trio thread's longest steps
                                   cpu_clock=time.thread_time if os.environ.get("MESH_LOOP_CPU") == "1" else None)
        self.refusals: dict[str, dict] = {}  # address -> why a member refused our credential (latest)
        self.upload_share = None  # a hub's FairShare of the uplink between its meshes; None: all ours

    # ---- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or a shutdown signal; `task_status.started(listen_address)`."""
        keep_chunk_buffers()  # the process's allocator reuses chunk-sized buffers (mesh.drivers.allocator)
        trio.lowlevel.add_instrument(self.loopwatch)
        if os.environ.get("MESH_LOOP_STACKS") == "1":
            self.loopwatch.start_sampling()  # slow steps say where they were (benchmarks)
        try:
            await self._run(task_status)
        finally:
            self.loopwatch.stop_sampling()
            with contextlib.suppress(KeyError):  # trio drops an instrument that raised
                trio.lowlevel.remove_instrument(self.loopwatch)

    async def _run(self, task_status) -> None:
        _shorter_gil_turns()
        state = self.statefile.load(actor_id(self.home.info.node_id, os.urandom(8)))
        self._usage = await trio.to_thread.run_sync(self.store.usage)
        self.store_budget = await trio.to_thread.run_sync(self._budget)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.listen_address = await nursery.start(self.transport.serve, self.config.listen, self._accepted)
            self.core = self._make_core(state)
            _freeze_startup_objects()  # modules and what loading made; the records after the first pass
            nursery.start_soon(self._core_loop)
            nursery.start_soon(self._store_writer)
            nursery.start_soon(self._status_loop)
            nursery.start_soon(self._purge_loop)
            nursery.start_soon(self._views_loop)
            nursery.start_soon(self._persist_loop)
            nursery.start_soon(self._state_reader)
            if self.discovery is not None:
                nursery.start_soon(self._discovery_loop)
            self._emit_log("agent.started", listen=_fmt(self.listen_address), node=self.home.info.node_id,
                           fds=self.fd_limit[0], unproven_max=self.acceptor.gate.total_max)
            task_status.started(self.listen_address)
            await self._stopped.wait()
            nursery.cancel_scope.cancel()
        self._finish()

    def _make_core(self, state) -> NodeCore:
        info = self.home.info
        identity = CoreIdentity(info.node_id, info.mesh_id, info.authority_public_key, info.chain, info.name, info.role)
        core = NodeCore(identity, state, random.Random(), time.time(), self.config.limits,
                        listen_port=self.listen_address[1], pins=tuple(self.config.pin_releases),
                        pin_tags=tuple(self.config.pin_tags), pin_canonical=self.config.pin_canonical,
                        want_tls_key=self.config.https is not None)
        core.declare_shared_medium(self.config.topology.shared_medium(wireless_route()))  # before any Hello
        core.drop_answers_queued = True  # AnswerDropAsks: answered in a state-file transaction (`_answer_drops`)
        core.quota_bytes = self.config.store_quota_bytes  # a hub's per-mesh quota: releases past it wait
        core.offload_assets = True  # consent passes over every asset run on a worker (`_evaluate_assets`)
        core.handle(StoreUsage(self._usage[1], self.store_budget), time.time())
        self._usage_reported = self._usage[1]
        for address in self.config.peers:
            core.learn_address(address, None, "static", time.time())
        for address in info.hints:
            core.learn_address(address, None, "hint", time.time())
        return core

    def _budget(self) -> int:
        """The store budget (see `health.store_budget`)."""
        from mesh.drivers.health import store_budget

        return store_budget(self.config, self._usage[1], self.home.store_path)

    async def shutdown(self, reason: str) -> None:
        """Close sessions politely (bounded by SHUTDOWN_GRACE_S), then stop."""
        await self._events_send.send(ShutdownRequested(reason))
        with trio.move_on_after(SHUTDOWN_GRACE_S):
            while self.core is not None and not self.core.shut_down:
                await trio.sleep(0.05)
        self._stopped.set()

    async def serve_signals(self) -> None:
        """Turn SIGINT/SIGTERM into a graceful shutdown."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                await self.shutdown(signal.Signals(signum).name)
                return

    def _finish(self) -> None:
        if self.core is not None:
            self._flush_views()
            try:
                self.statefile.compact(self.core.state)
            except OSError as exc:
                log.warning("state.compact_failed error=%s", exc)
        self.store.close()
        counters = self.core.counters if self.core is not None else {}  # chunks served, declined...
        self._emit_log("agent.stopped", **{f"count.{name}": counters[name] for name in sorted(counters)})

    # ---- the core's task --------------------------------------------------------------------------

    async def _core_loop(self) -> None:
        next_poll = time.time()
        while True:
            now = time.time()
            wake = min(self.core.next_deadline() or now + 60, next_poll)
            events: list[Event] = []
            with trio.move_on_after(max(0.0, wake - now)):
                events.append(await self._events_recv.receive())
            while len(events) < CORE_BATCH_EVENTS_MAX:  # what else is waiting: one scheduler pass for all
                try:
                    events.append(self._events_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            if time.time() >= next_poll:
                self._poll_state()
                next_poll = time.time() + self.config.state_poll_interval_s
            self._handle_all(events or [Tick()])

    def _handle(self, event: Event) -> None:
        self._handle_all([event])

    def _handle_all(self, events: list[Event]) -> None:
        """Give the core these events, run its timers once, carry out what it asked for."""
        now = time.time()
        for event in events:
            try:
                self.core.take(event, now)
            except Exception:  # a bug in the core: log it, drop the peer involved, keep serving others
                log.exception("core.failed event=%s", type(event).__name__)
                conn_id = getattr(event, "conn_id", None)
                if conn_id is not None:
                    self._close(conn_id, "internal error")
        try:
            self.core.run_timers(now)
        except Exception:
            log.exception("core.failed event=timers")
        for action in self.core.take_actions():
            self._execute(action)

    def _poll_state(self) -> None:
        """Ask `_state_reader` to apply what CLI commands of this node wrote to the state log (the
        file I/O, a lock CLI commands may hold for a second, runs on a worker thread)."""
        self._retry_persist()
        with contextlib.suppress(trio.WouldBlock):
            self._poll_send.send_nowait(None)

    async def _state_reader(self) -> None:
        """Each poll: one stat; if the log changed, read it on a worker, apply it on this thread."""
        async for _ in self._poll_due:
            state = self.core.state
            try:
                if not self.statefile.maybe_new(state):
                    continue
                found = await trio.to_thread.run_sync(self.statefile.fetch_new, state)
            except (OSError, MeshError) as exc:  # e.g. EMFILE: the next poll tries again
                log.warning("state.poll_failed error=%s", exc)
                continue
            heads = state.heads()
            if self.statefile.apply_new(state, found):
                self._handle(StateReloaded(tuple(heads)))

    def _execute(self, action: Any) -> None:
        if isinstance(action, Send):
            self._send(action)
        elif isinstance(action, CloseConnection):
            self._close(action.conn_id, action.reason)
        elif isinstance(action, Dial):
            self._nursery.start_soon(self._dial, action.address, action.node_id)
        elif isinstance(action, (PersistChanges, AnswerDropAsks)):
            self._persist(action.data if isinstance(action, PersistChanges) else action)
        elif isinstance(action, Emit):
            self._emit_log(action.name, **action.as_dict())
        elif isinstance(action, ServeChunk):
            conn = self._connections.get(action.conn_id)
            if conn is not None:
                conn.queued[action.cid] += 1
            self._enqueue(action.conn_id, _ChunkJob(action.cid))
        elif isinstance(action, CancelServe):
            conn = self._connections.get(action.conn_id)
            if conn is not None and conn.queued[action.cid] > 0:  # a job already sent cannot be cancelled
                conn.cancelled.add(action.cid)
        elif isinstance(action, StoreChunk):
            self._queue_store(action)
        elif isinstance(action, LoadRelease):
            self._nursery.start_soon(self._load_release, action.root)
        elif isinstance(action, EvaluateAssets):
            self._nursery.start_soon(self._evaluate_assets, action)
        elif isinstance(action, LoadObjects):
            self._nursery.start_soon(self._load_objects, action.roots)
        elif isinstance(action, EvictObjects):
            self._nursery.start_soon(self._evict, action.roots)
        elif isinstance(action, ServeTls):
            self.tls.update(action)
        elif isinstance(action, (LoadTlsKey, StoreTlsKey, DropTlsKeys)):
            self._nursery.start_soon(carry_out, self, action)

    def _send(self, action: Send) -> None:
        self._enqueue(action.conn_id, action.data)

    def _enqueue(self, conn_id: int, item: bytes | _ChunkJob) -> None:
        conn = self._connections.get(conn_id)
        if conn is None:
            return
        try:
            conn.outbox.send_nowait(item)
        except trio.WouldBlock:
            self._close(conn_id, "peer too slow: outbox full")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    # ---- chunks -------------------------------------------------------------------------------------

    def _queue_store(self, action: StoreChunk) -> None:
        try:
            self._store_send.send_nowait(action)
        except trio.WouldBlock:  # cannot happen while peers respect their pipelines; stay safe
            self._nursery.start_soon(
                self._events_send.send, ChunkRejected(action.conn_id, action.cid, "store queue full", False)
            )

    async def _store_writer(self) -> None:
        """Verify and store received chunks in batches: one flush to disk per batch."""
        async for first in self._store_recv:
            batch = [first]
            while len(batch) < STORE_BATCH_CHUNKS_MAX:
                try:
                    batch.append(self._store_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            items = [(Cid.parse(action.cid), action.data) for action in batch]
            try:
                results = await trio.to_thread.run_sync(self.store.put_many, items, limiter=self._store_limiter)
            except (OSError, MeshError) as exc:  # EMFILE and the like: refused now, fetched again later
                log.warning("store.put_failed error=%s chunks=%d", exc, len(items))
                results = [exc if isinstance(exc, MeshError) else MeshError(_reason(exc))] * len(items)
            for action, error in zip(batch, results):
                if error is None:
                    await self._events_send.send(ChunkStored(action.conn_id, action.cid))
                else:
                    corrupt = isinstance(error, CorruptChunkError)
                    await self._events_send.send(ChunkRejected(action.conn_id, action.cid, _reason(error), corrupt))
            self._stored.set()  # wake the streams waiting for a chunk (see `wait_stored`)
            self._stored = trio.Event()

    async def _load_release(self, root: str) -> None:
        try:
            manifests, present = await trio.to_thread.run_sync(
                self.store.release_inventory, root, limiter=self._store_limiter
            )
        except MeshError as exc:
            log.warning("release.inventory_failed root=%s error=%s", root, exc)
            manifests, present = [], []
        await self._events_send.send(ReleaseInventory(root, tuple(manifests), tuple(present)))

    async def _evaluate_assets(self, action: EvaluateAssets) -> None:
        """Carry out `EvaluateAssets` on a worker thread (`state_pass`: the pass would hold this
        thread ~0.3 s at 10,000 assets)."""
        state = self.core.state
        try:
            records, statuses = await state_pass(state, asset_statuses, action.authority_public_key, action.at,
                                                 limiter=self.state_passes)
        except Exception:  # a bug: evaluate in place rather than leave the core waiting
            log.exception("core.evaluate_failed")
            records, statuses = asset_statuses(state, action.authority_public_key, action.at)
        await self._events_send.send(AssetsEvaluated(action.at, tuple(records), statuses))
        if not self._frozen:
            await trio.sleep(0)  # the core takes the pass first
            self._frozen = True
            _freeze_startup_objects()

    async def _load_objects(self, roots: tuple[str, ...]) -> None:
        def inventory() -> tuple[ReleaseInventory, ...]:
            found = []
            for root in roots:
                try:
                    manifests, present = self.store.release_inventory(root)
                except MeshError:
                    manifests, present = [], []
                found.append(ReleaseInventory(root, tuple(manifests), tuple(present)))
            return tuple(found)

        objects = await trio.to_thread.run_sync(inventory, limiter=self._store_limiter)
        await self._events_send.send(ObjectsInventory(objects))

    async def _evict(self, roots: tuple[str, ...]) -> None:
        """Carry out `EvictObjects`: a purge that keeps everything it keeps now but these files
        (their chunks go unless something kept shares them)."""
        started = time.time()
        try:
            report = await self._purge_now(started, frozenset(roots))
        except MeshError as exc:
            log.warning("store.evict_failed error=%s", exc)
            await self._events_send.send(ObjectsEvicted((), 0))
            return
        await self._events_send.send(ObjectsEvicted(roots, report.bytes_freed))
        self._emit_log("store.evicted", files=len(roots), bytes=report.bytes_freed)

    async def wait_stored(self, timeout_s: float) -> None:
        """Return after the next store batch (or after `timeout_s`)."""
        with trio.move_on_after(timeout_s):
            await self._stored.wait()

    def hand_to_core(self, event: Event) -> None:
        """Give the core an event from a driver on this thread (e.g. a signed live window)."""
        if self.core is not None:
            self._handle(event)

    def emit_log(self, event_name: str, /, **fields: object) -> None:
        """Log a structured event as the agent's own (drivers: live, relay)."""
        self._emit_log(event_name, **fields)

    def request_fetch(self, cid: str) -> None:
        """A browser waits for this media file: the core fetches it first of all."""
        if self.core is not None:
            self._handle(FetchRequested(cid))

    def note_used(self, cid: str) -> None:
        """A browser read this held file (least recently used media is evicted first)."""
        if len(self._used) < RECENT_EVENTS_MAX * 50:
            self._used.add(cid)

    async def _serve_chunk(self, secure, conn_id: int, cid_text: str, pieces: _PieceBuffer | None = None) -> None:
        """Send one chunk as ChunkData pieces, checked against its local checksum just before it
        leaves. Read on this thread when the page cache holds it (no hand-off to a worker and
        back: ~20% of a seed's CPU when every chunk crossed threads), else on a worker thread."""
        cid = _cid_bytes(cid_text)
        pieces = _PieceBuffer() if pieces is None else pieces
        try:
            try:
                size = self.store.read_for_peer_into(cid_text, pieces.lay_out, cached_only=True)
            except BlockingIOError:
                size = await trio.to_thread.run_sync(self.store.read_for_peer_into, cid_text, pieces.lay_out,
                                                     limiter=self._serve_limiter)
        except MeshError:
            await secure.send_all(m.encode(m.ChunkMissing(cid)))
            await self._events_send.send(ChunkServed(conn_id, cid_text, 0))
            return
        if self.upload_share is None:
            await self._send_chunk(secure, cid, pieces)
        else:  # a hub: the meshes share the uplink fairly (mesh.drivers.fairshare)
            async with self.upload_share.slot(self.home.info.mesh_id):
                await self._send_chunk(secure, cid, pieces)
        self.counters["chunks_served"] += 1
        await self._events_send.send(ChunkServed(conn_id, cid_text, size))

    async def _send_chunk(self, secure, cid: bytes, pieces: _PieceBuffer) -> None:
        """Each piece as one write of its ChunkData frame: the head is put in the room left before
        the piece, so a peer of this version gets one record per piece (see `_PieceBuffer`)."""
        for offset, length, message in pieces.messages(cid):
            await secure.send_all(message)
            self.counters["bytes_out"] += length  # the frame heads are counted with messages

    def _close(self, conn_id: int, reason: str) -> None:
        """Let the writer drain what is queued, then end the connection."""
        conn = self._connections.get(conn_id)
        if conn is not None:
            conn.outbox.close()
            conn.scope.deadline = min(conn.scope.deadline, trio.current_time() + CLOSE_DRAIN_S)

    async def persisted(self, timeout_s: float = PERSISTED_WAIT_S) -> None:
        """Return once everything this node's state holds is in its state log (at most
        `timeout_s`): a state-file transaction then sees what the gateway has shown."""
        if self.core is None:
            return
        self.core.persist_now()
        for action in self.core.take_actions():
            self._execute(action)
        with trio.move_on_after(timeout_s):
            while self._unpersisted:
                await trio.sleep(PERSISTED_POLL_S)

    def _persist(self, data: bytes | AnswerDropAsks) -> None:
        """Queue changes for the state log (or a drop answer to decide after them); `_persist_loop`
        appends (and fsyncs) them in order."""
        self._unpersisted.append(data)
        self._retry_persist()

    def _answer_drops(self, action: AnswerDropAsks) -> int:
        """Answer other boxes' requests for drop allowance in one state-file transaction: under the
        lock every reservation a CLI, POS or page made here is in the state the answer is decided on,
        so a unit is never both given away and reserved. Worker thread; the transfers made (the
        next state poll brings them into the core)."""
        from mesh.state.drops import Signer, answer_asks

        info = self.home.info
        signer = Signer(info.authority_public_key, self.home.node_key(), info.chain)
        with self.statefile.transaction(actor_id(info.node_id, os.urandom(8))) as state:
            return len(answer_asks(state, signer, action.at))

    def _retry_persist(self) -> None:
        """Wake `_persist_loop` if changes wait (after a failed append it waits for this)."""
        if self._unpersisted:
            with contextlib.suppress(trio.WouldBlock):
                self._persist_wake_send.send_nowait(None)

    async def _persist_loop(self) -> None:
        """Append queued changes one record at a time, oldest first, each fsynced on a worker
        thread before the next (the log keeps their order; the trio thread never waits on a disk).
        A failed append (disk full, EMFILE) stays first in line; the next state poll retries it."""
        async for _ in self._persist_wake:
            while self._unpersisted:
                item = self._unpersisted[0]
                try:
                    if isinstance(item, AnswerDropAsks):
                        if await trio.to_thread.run_sync(self._answer_drops, item):
                            self._poll_state()
                    else:
                        await trio.to_thread.run_sync(self.statefile.append, item)
                except (OSError, MeshError) as exc:
                    log.error("state.persist_failed error=%s waiting=%d", exc, len(self._unpersisted))
                    break
                self._unpersisted.popleft()

    # ---- connections ------------------------------------------------------------------------------

    def authenticator(self, captured: dict) -> Callable[[bytes, bytes], Any]:
        def authenticate(chain: bytes, node_public_key: bytes):
            member = self.core.authenticate(chain, node_public_key, time.time())
            captured["chain"] = chain
            return member

        return authenticate

    async def _accepted(self, stream: trio.abc.Stream, remote: Address | None) -> None:
        if self.core is None:
            return
        captured: dict = {}
        accepted = await self.acceptor.accept(stream, remote, [(self.local, self.authenticator(captured))])
        if accepted is not None:
            await self.run_accepted(accepted[1], captured["chain"], remote)

    async def run_accepted(self, secure, chain: bytes, remote: Address | None) -> None:
        """Run a session a listener accepted for this mesh (ours, or a hub's shared one)."""
        await self._run_connection(secure, chain, remote, outbound=False)

    async def _dial(self, address: Address, node_id: str | None) -> None:
        captured: dict = {}
        try:
            stream = await self.transport.connect(address, DIAL_TIMEOUT_S)
        except (OSError, trio.TooSlowError) as exc:
            await self._events_send.send(DialFailed(address, _reason(exc)))
            return
        try:
            secure = await secure_connect(stream, self.local, self.authenticator(captured), HANDSHAKE_TIMEOUT_S)
        except (HandshakeError, RemoteProtocolError, CredentialError, trio.BrokenResourceError,
                trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self._emit_log("peer.refused", addr=_fmt(address), reason=_reason(exc))
            self._note_refusal(address, exc)
            await self._events_send.send(DialFailed(address, _reason(exc)))
            return
        try:
            await self._run_connection(secure, captured["chain"], address, outbound=True)
        finally:
            with trio.CancelScope(shield=True):
                await secure.aclose()

    def _note_refusal(self, address: Address, exc: BaseException) -> None:
        """A member that refused our credential said why ("invite already used", "node revoked"):
        kept for `mesh status` and the health checks (at most REFUSALS_MAX addresses)."""
        text = _reason(exc)
        marker = "the peer refused us:"
        if marker not in text:
            return
        text = text[text.index(marker):]
        if len(self.refusals) >= REFUSALS_MAX and _fmt(address) not in self.refusals:
            self.refusals.pop(next(iter(self.refusals)))
        self.refusals[_fmt(address)] = {"addr": _fmt(address), "reason": text.split(":", 1)[1].strip(),
                                        "at": time.time()}

    async def _run_connection(self, secure, chain: bytes, remote: Address | None, outbound: bool) -> None:
        conn_id = next(self._conn_ids)
        outbox_send, outbox_recv = trio.open_memory_channel[bytes | _ChunkJob](self.config.outbox_frames_max)
        ended: list[str] = []  # why the connection ended, first reason wins
        with trio.CancelScope() as scope:
            self._connections[conn_id] = _Connection(conn_id, outbox_send, scope, secure.peer.node_id)
            await self._events_send.send(Connected(conn_id, secure.peer, chain, remote, outbound))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guarded, self._writer(secure, conn_id, outbox_recv), ended, nursery.cancel_scope)
                nursery.start_soon(self._guarded, self._reader(secure, conn_id), ended, nursery.cancel_scope)
        if scope.cancelled_caught and not ended:
            ended.append("closed by us")
        self._connections.pop(conn_id, None)
        with trio.CancelScope(shield=True):
            await self._events_send.send(Disconnected(conn_id, ended[0] if ended else "closed"))

    @staticmethod
    async def _guarded(work, ended: list[str], scope: trio.CancelScope) -> None:
        """Run a reader or writer; a broken stream ends the connection (never the agent)."""
        try:
            await work
            ended.append("closed")
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, OSError) as exc:
            ended.append(_reason(exc))
        scope.cancel()

    async def _reader(self, secure, conn_id: int) -> None:
        while True:
            data = await secure.receive_some(READ_BYTES_MAX)
            if not data:
                return
            self.counters["bytes_in"] += len(data)
            await self._events_send.send(DataReceived(conn_id, bytes(data)))

    async def _writer(self, secure, conn_id: int, outbox: trio.MemoryReceiveChannel) -> None:
        """Send queued frames until the outbox is closed (CloseConnection): all of it goes out."""
        jobs: deque[_ChunkJob] = deque()  # chunks to serve, in order, behind any queued frames
        pieces = _PieceBuffer()  # the connection's read buffer for the chunks it serves
        async with outbox:
            while True:
                frames = _take_queued(outbox, jobs)
                if frames:
                    await self._write(secure, frames)
                if jobs:
                    await self._chunk_job(secure, conn_id, jobs.popleft(), pieces)
                elif not frames:
                    try:
                        item = await outbox.receive()
                    except trio.EndOfChannel:
                        return
                    if isinstance(item, _ChunkJob):
                        jobs.append(item)
                    else:
                        await self._write(secure, item)

    async def _write(self, secure, data: bytes) -> None:
        """Send bytes to the peer and count them."""
        await secure.send_all(data)
        self.counters["bytes_out"] += len(data)

    async def _chunk_job(self, secure, conn_id: int, job: _ChunkJob, pieces: _PieceBuffer) -> None:
        conn = self._connections.get(conn_id)
        if conn is not None:
            conn.queued[job.cid] -= 1
            if conn.queued[job.cid] <= 0:
                del conn.queued[job.cid]
        if conn is not None and job.cid in conn.cancelled:
            conn.cancelled.discard(job.cid)
            await self._events_send.send(ChunkServed(conn_id, job.cid, 0))
            return
        await self._serve_chunk(secure, conn_id, job.cid, pieces)

    # ---- discovery and status ---------------------------------------------------------------------

    async def _discovery_loop(self) -> None:
        found_send, found_recv = trio.open_memory_channel(256)
        lost_send, lost_recv = trio.open_memory_channel(256)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.discovery, found_send, self.listen_address[1], lost_send)
            nursery.start_soon(self._forget_pending, lost_recv)
            self._mdns_running = True
            async for item in found_recv:
                addresses = tuple((host, item.port) for host in item.addresses)
                if item.pending:  # a fresh box waiting to be admitted: the crew's Pending list, not a peer
                    if len(self.pending_boxes) < PENDING_BOXES_MAX or item.node_id in self.pending_boxes:
                        self.pending_boxes[item.node_id] = {"node_id": item.node_id, "addr": _fmt(addresses[0]),
                                                            "seen": time.time()}
                    continue
                self._mdns_seen.add(item.node_id)
                await self._events_send.send(PeerDiscovered(addresses, item.node_id, "mdns"))

    async def _forget_pending(self, lost: trio.MemoryReceiveChannel) -> None:
        async for node_id in lost:
            self.pending_boxes.pop(node_id, None)

    async def _purge_loop(self) -> None:
        """Delete, every `gc_interval_s`, chunks no visible asset or kept release needs: this is
        how a consent revocation or an expiry made on another node empties this store too."""
        last_heads: tuple[bytes, ...] | None = None
        rounds_since_full = 0
        while True:
            await trio.sleep(self.config.gc_interval_s)
            heads = tuple(self.core.state.heads())
            rounds_since_full += 1
            if heads == last_heads and rounds_since_full < PURGE_FULL_EVERY_ROUNDS:
                continue  # nothing changed; retention still gets a pass every few rounds
            started = time.time()
            try:
                async with self.state_passes:  # its keep set is a pass over every asset
                    report = await self._purge_now(started)
            except (OSError, MeshError) as exc:  # EMFILE, a full disk: the next round tries again
                log.warning("store.purge_failed error=%s", exc)
                continue
            last_heads, rounds_since_full = heads, 0
            if report.chunks_removed:
                self._emit_log("store.purged", chunks=report.chunks_removed, bytes=report.bytes_freed)

    async def _purge_now(self, started: float, evicting: frozenset = frozenset()) -> Any:
        """A purge: the keep set is a `state_pass` (what the core wants kept besides the assets is
        copied here, on the trio thread), then the store collects on a worker thread."""
        core = self.core
        keep = await state_pass(core.state, agent_keep_set, self.store, self.home.info.authority_public_key, started,
                                tuple(core.arriving_chunks()), core.withheld, tuple(core.kept_roots()),
                                self.home.info.node_id, evicting, limiter=self._store_limiter)
        return await trio.to_thread.run_sync(self.store.gc, keep.roots, keep.hidden, started,
                                             limiter=self._store_limiter)

    async def _status_loop(self) -> None:
        while True:
            try:
                self._usage = await trio.to_thread.run_sync(self.store.usage, limiter=self._serve_limiter)
            except (OSError, MeshError) as exc:
                log.warning("store.usage_failed error=%s", exc)
            self._report_usage()
            try:
                await trio.to_thread.run_sync(write_status, self.home.path, self.status())
            except OSError as exc:
                log.warning("status.write_failed error=%s", exc)
            await trio.sleep(self.config.status_interval_s)

    def _report_usage(self) -> None:
        """Tell the core how full the store is when that changed noticeably (its budget)."""
        used = self._usage[1]
        if self._usage_reported is None or abs(used - self._usage_reported) >= USAGE_REPORT_BYTES_MIN:
            self._usage_reported = used
            self._handle(StoreUsage(used, self.store_budget))

    def status(self) -> dict:
        """The `mesh status --json` document."""
        doc = self.core.status()
        chunks, stored = self._usage
        doc.update({
            "listen_addresses": [list(a) for a in self.listen_addresses()],
            "http_listening": list(self.http_listening) if self.http_listening else None,
            "store": {"chunks": chunks, "bytes": stored},
            "outbox": self.outbox_status,
            "pending_boxes": sorted(self.pending_boxes.values(), key=lambda box: -box["seen"]),
            "loop": self.loopwatch.summary(),
            "refused_by": sorted(self.refusals.values(), key=lambda r: -r["at"]),
            "live": self.live_rows(doc.get("live") or []),
            "pid": os.getpid(),
            "updated_at": time.time(),
        })
        return doc

    def live_rows(self, rows: list[dict]) -> list[dict]:
        """The core's live streams with this node's viewers (players polling its playlist)."""
        viewers = getattr(self, "live_viewers", None)
        counts = viewers.counts(time.monotonic()) if viewers is not None else {}
        return [{**row, "viewers": counts.get(row["name"], 0)} for row in rows]

    def _note_stall(self, stall: Stall) -> None:
        """A task step held the trio thread for `stall_log_ms` or more (rate-limited by LoopWatch)."""
        fields = {"unlogged": stall.unreported} if stall.unreported else {}
        self._emit_log("loop.stall", task=stall.task, ms=round(stall.ms, 1), **fields)

    def listen_addresses(self) -> list[Address]:
        """Where peers can reach us: the bound address, or every interface address if wildcard."""
        host, port = self.listen_address
        if host not in ("0.0.0.0", "::"):
            return [(host, port)]
        import ifaddr

        found = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                    found.append((ip.ip, port))
        return found or [("127.0.0.1", port)]

    # ---- what the gateway and the health checks call ----------------------------------------------

    def record_view(self, cid: str) -> None:
        """Count one view of the asset `cid` under each of its tags. Counts are batched in memory
        and written to the shared per-tag counters every VIEW_FLUSH_S: nothing per person is kept."""
        record = self.core.state.asset(cid) if self.core is not None else None
        if record is None:
            return
        self.counters["views"] += 1
        for tag in set(record.tags):
            self._views[tag] += 1

    async def _views_loop(self) -> None:
        while True:
            await trio.sleep(VIEW_FLUSH_S)
            self._flush_used()
            self._flush_views()

    def _flush_used(self) -> None:
        if self._used and self.core is not None:
            used, self._used = tuple(sorted(self._used)), set()
            self._handle(ObjectsUsed(used))

    def _flush_views(self) -> None:
        if not self._views:
            return
        views, self._views = dict(self._views), Counter()
        node_id = self.home.info.node_id
        self.core.mutate(lambda state: count_views(state, node_id, views), time.time())
        for action in self.core.take_actions():
            self._execute(action)

    def tls_names(self) -> tuple[str, ...]:
        """The host names (and addresses) of the event's certificate in force, for the Host allow-list."""
        cert = self.core.tls_certificate if self.core is not None else None
        return cert.names if cert is not None else ()

    def https_certificate(self):  # -> mesh.state.tls.TlsCertificate | None
        """The certificate a running HTTPS server uses now (None: no HTTPS at the moment)."""
        cert = self.core.tls_certificate if self.core is not None else None
        serving = self.tls.serving
        return cert if cert is not None and serving is not None and serving.fingerprint == cert.fingerprint else None

    def mdns_state(self) -> dict:
        """For the health check: is discovery running, and how many nodes has it reported."""
        return {"running": self._mdns_running, "discovered": len(self._mdns_seen)}

    def publish_health(self, report: dict) -> None:
        """Make `report` this node's health report and send it to every peer (see NodeCore.set_health)."""
        before = self.core.health
        self.core.set_health(report, time.time())
        for action in self.core.take_actions():
            self._execute(action)
        was_ok = before is None or before.get("ok", True)
        if was_ok != report.get("ok", True):
            failed = [c.get("name") for c in report.get("checks", ()) if not c.get("ok", True)]
            name = "health.recovered" if report.get("ok", True) else "health.failed"
            self._emit_log(name, checks=",".join(str(f) for f in failed))

    def _emit_log(self, event_name: str, /, **fields: object) -> None:
        if event_name in RECENT_EVENT_NAMES:
            self.recent_events.append({"time": time.time(), "event": event_name, **fields})
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        level = logging.DEBUG if _routine(event_name, fields) else logging.INFO
        log.log(level, "%s %s", event_name, text, extra={"event": event_name, "fields": fields})


def _routine(event_name: str, fields: dict) -> bool:
    """Lines every healthy connection makes, logged at debug: two nodes that dial each other at
    once keep one session ("duplicate session"), and the other dial's handshake ends when its
    peer hangs up on it (a stranger that connects and leaves reads the same; it is counted)."""
    reason = str(fields.get("reason", ""))
    if event_name in ("peer.closing", "peer.disconnected") and reason == "duplicate session":
        return True
    return event_name == "peer.refused" and reason.endswith("the peer closed the connection")


class Acceptor:
    """The strangers' side of a listener: the pre-authentication gate, the responder's handshake
    (for one mesh, or several on a hub: message 1 selects), and refusal lines that a flood
    cannot turn into a flood of the journal."""

    def __init__(self, gate: PreAuthGate, emit: Callable[..., None], counters: Counter[str]) -> None:
        self.gate = gate  # caps unproven connections (mesh.drivers.admission)
        self._emit = emit  # log an event: emit(name, **fields)
        self._counters = counters  # preauth_shed
        self._shed_logged_at = -1.0  # monotonic time of the last peer.shed line
        self._refused_second, self._refused_logged, self._refused_unlogged = 0, 0, 0  # strangers' refusals

    async def accept(self, stream: trio.abc.Stream, remote: Address | None,
                     candidates: list[tuple[LocalIdentity, Callable[[bytes, bytes], Any]]]):
        """(the selected candidate's index, its secure stream), or None if the handshake failed."""
        accepted = None
        with trio.CancelScope() as scope:
            for shed in self.gate.admit(scope, remote[0] if remote else "-"):
                shed.cancel()  # the oldest unproven connection(s) make room (mesh.drivers.admission)
                self._counters["preauth_shed"] += 1
            try:
                accepted = await secure_accept_any(stream, candidates, HANDSHAKE_TIMEOUT_S)
            except CredentialError as exc:  # it held a mesh key: always worth a line
                self._emit("peer.refused", addr=_fmt(remote), reason=_reason(exc))
            except (HandshakeError, RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.TooSlowError, OSError) as exc:
                self._note_refused(remote, exc)
            finally:
                self.gate.done(scope)
        if scope.cancelled_caught:
            self._note_shed(remote)
        return accepted

    def _note_refused(self, remote: Address | None, exc: BaseException) -> None:
        """A stranger's failed handshake: a line each, but at most REFUSED_LOGGED_PER_S a second
        (the next line says how many were left out)."""
        second = int(time.monotonic())
        if second != self._refused_second:
            self._refused_second, self._refused_logged = second, 0
        if self._refused_logged >= REFUSED_LOGGED_PER_S:
            self._refused_unlogged += 1
            return
        self._refused_logged += 1
        fields = {"unlogged": self._refused_unlogged} if self._refused_unlogged else {}
        self._refused_unlogged = 0
        self._emit("peer.refused", addr=_fmt(remote), reason=_reason(exc), **fields)

    def _note_shed(self, remote: Address | None) -> None:
        """Log shedding at most once a second."""
        now = time.monotonic()
        if now - self._shed_logged_at >= 1.0:
            self._shed_logged_at = now
            self._emit("peer.shed", addr=_fmt(remote), reason="too many unproven connections",
                       total=self._counters["preauth_shed"])


class _PieceBuffer:
    """A chunk read for a peer, laid out as its ChunkData frames will travel: before each piece
    (of at most CHUNK_PIECE_BYTES_MAX) room for its frame and message head, which `messages`
    writes there. A frame is then one contiguous write (one record of the secure channel, whose
    head room takes the few bytes past a 1 MiB piece), not a head and a piece in two records
    the receiver reads, wakes for and hands to its core separately, then joins."""

    def __init__(self) -> None:
        self.size = 0
        self._buffer = memoryview(b"")
        self._kept: bytearray | None = None  # reused for chunks of one piece (a fresh 1 MiB costs its zeroing and page faults)

    def lay_out(self, size: int) -> list[memoryview]:
        """Room for a chunk of `size` bytes; the views its pieces are read into, in order. One
        buffer of one piece's size is kept for the next chunk; larger ones are made each time."""
        piece, room = m.CHUNK_PIECE_BYTES_MAX, PIECE_HEAD_ROOM_BYTES
        count = max(1, -(-size // piece))
        self.size = size
        if count > 1:
            self._buffer = memoryview(bytearray(size + count * room))
        else:
            if self._kept is None:
                self._kept = bytearray(room + piece)
            self._buffer = memoryview(self._kept)
        return [self._buffer[index * (room + piece) + room:][:min(piece, size - index * piece)]
                for index in range(count)]

    def messages(self, cid: bytes):  # -> Iterator[tuple[int, int, memoryview]]
        """(offset, piece length, the whole ChunkData frame) per piece, heads written in place."""
        piece, room = m.CHUNK_PIECE_BYTES_MAX, PIECE_HEAD_ROOM_BYTES
        for index in range(max(1, -(-self.size // piece))):
            offset = index * piece
            length = min(piece, self.size - offset)
            head = m.chunk_data_head(cid, offset, self.size, length)
            end = index * (room + piece) + room
            self._buffer[end - len(head):end] = head
            yield offset, length, self._buffer[end - len(head):end + length]


assert PIECE_HEAD_ROOM_BYTES <= LARGE_RECORD_HEAD_ROOM_BYTES  # a head and a whole piece fit one record


def _take_queued(outbox: trio.MemoryReceiveChannel, jobs: deque[_ChunkJob]) -> bytes:
    """Take what the outbox holds now: chunk jobs join `jobs`, frames (up to
    WRITE_GATHER_BYTES_MAX) are returned joined as one write. Frames go ahead of queued chunks:
    a ChunkBusy, a request or a HaveUpdate must not wait seconds behind a seed's MiBs of data
    (they are independent messages, so only each kind's own order matters). Many small
    messages then also cost one write here and one read at the peer."""
    frames: list[bytes] = []
    size = 0
    while size < WRITE_GATHER_BYTES_MAX:
        try:
            item = outbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        if isinstance(item, _ChunkJob):
            jobs.append(item)
        else:
            frames.append(item)
            size += len(item)
    return frames[0] if len(frames) == 1 else b"".join(frames)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


@functools.lru_cache(maxsize=4096)
def _cid_bytes(text: str) -> bytes:
    """A chunk's binary CID (parsing base32 text is slow in pure Python; chunks are served many times)."""
    return Cid.parse(text).to_bytes()


def _fmt(address: Address | None) -> str:
    if address is None:
        return "-"
    return f"{address[0]}:{address[1]}"
