"""Live streams on this node: ingest (camera -> segments -> store -> signed windows), the
recording kept when a stream stops, and the optional relay to a remote RTMP(S) endpoint.

Control is by files, as every CLI-to-agent request here: `mesh live start NAME ...` writes
`HOME/live/NAME.json` (what to ingest), `mesh live stop NAME` marks it stopped, `mesh live relay
NAME URL` writes `HOME/live/NAME.relay.json`. The agent's `live_loop` looks every LIVE_POLL_S and
reports in `HOME/live/NAME.status.json` (state, error, segments, recording, relay state).

Ingest, per stream: the segmenter (mesh.drivers.livesource, PyAV) runs on a worker thread; each
segment is stored as a file in this node's store (its own FileStore handle, pinned as
`live:NAME` until the recording exists), then the trio side signs the next window with this
node's key and hands it to the core (`LiveWindowSigned`), which sends it to every peer. On stop:
a last window marked ended; the segments, concatenated, become one asset (MPEG-TS) with the
stream's tags, subject and retention, recorded in the shared state like `mesh add`; the pins go.

Relay: on whichever node has an uplink; it sends the segments this node holds of a stream it
follows, in order, newest-first when behind (it never holds up the local path: it only reads
what the store has), reconnecting with backoff (mesh.drivers.liverelay).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from mesh.core.events import LiveWindowSigned
from mesh.core.live import LIVE_SCOPE_DEFAULT, LiveSegment, check_stream_name, sign_window
from mesh.drivers.home import write_atomic
from mesh.errors import MeshError, UsageError

log = logging.getLogger("mesh.live")

LIVE_DIR = "live"
LIVE_POLL_S = 1.0  # how often the agent looks at HOME/live
SEGMENT_S_DEFAULT = 2.0
RECORDING_SEGMENTS_MAX = 43_200  # a day of 2 s segments: a longer stream is recorded in parts
RELAY_QUEUE_MAX = 8  # segments waiting for the relay; older ones are dropped (the relay skips ahead)


@dataclass(frozen=True)
class LiveSpec:
    """What `mesh live start` asked for."""

    name: str  # the stream's name
    source: str  # rtmp://HOST:PORT/APP/KEY to listen on or pull, a device, or a file
    listen: bool | None = None  # listen for a push (None: mesh.drivers.livesource decides from the URL)
    audio: str | None = None  # an audio device beside a video device (hw:1)
    input_format: str | None = None  # v4l2, alsa, ... for devices
    segment_s: float = SEGMENT_S_DEFAULT  # target segment duration
    tags: tuple[str, ...] = ()  # the stream's tags (its recording's)
    subject: str | None = None  # whose consent the stream needs
    scope: str = LIVE_SCOPE_DEFAULT  # ... for this scope
    retention_s: float | None = None  # how long the recording is kept
    stopped: bool = False  # `mesh live stop` asked to end it
    started_at: float = 0.0  # when it was asked for


def live_dir(home_path: Path) -> Path:
    return home_path / LIVE_DIR


def write_spec(home_path: Path, spec: LiveSpec) -> None:
    check_stream_name(spec.name)
    folder = live_dir(home_path)
    folder.mkdir(exist_ok=True)
    write_atomic(folder / f"{spec.name}.json", json.dumps(asdict(spec), indent=2).encode())


def read_spec(home_path: Path, name: str) -> LiveSpec | None:
    try:
        doc = json.loads((live_dir(home_path) / f"{name}.json").read_text())
        doc["tags"] = tuple(doc.get("tags", ()))
        return LiveSpec(**doc)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{live_dir(home_path) / (name + '.json')} is damaged ({exc}): remove it") from None


def read_specs(home_path: Path) -> dict[str, LiveSpec]:
    folder = live_dir(home_path)
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.json")):
        if path.name.count(".") == 1:  # NAME.json, not NAME.status.json or NAME.relay.json
            with contextlib.suppress(UsageError):
                spec = read_spec(home_path, path.stem)
                if spec is not None:
                    found[spec.name] = spec
    return found


def read_status(home_path: Path, name: str) -> dict | None:
    try:
        return json.loads((live_dir(home_path) / f"{name}.status.json").read_text())
    except (OSError, ValueError):
        return None


def _write_status(home_path: Path, name: str, doc: dict) -> None:
    """Replace NAME.status.json (advisory, rewritten often: renamed into place, not fsynced)."""
    folder = live_dir(home_path)
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.status.json"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc, indent=2).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def relay_target(home_path: Path, name: str) -> str | None:
    try:
        return json.loads((live_dir(home_path) / f"{name}.relay.json").read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None


def write_relay(home_path: Path, name: str, url: str | None) -> None:
    folder = live_dir(home_path)
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.relay.json"
    if url is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, json.dumps({"url": url}).encode(), 0o600)  # the URL holds the stream key


# ---- ingest -----------------------------------------------------------------------------------


@dataclass
class _Ingest:
    """One stream being ingested here."""

    spec: LiveSpec
    stop: threading.Event = field(default_factory=threading.Event)
    segments: list[LiveSegment] = field(default_factory=list)
    seq: int = 0  # windows signed
    state: str = "waiting"  # waiting | live | stopping | stopped | failed
    error: str | None = None
    recording: str | None = None  # the recording's CID, once made
    bytes: int = 0
    first_number: int = field(default_factory=lambda: int(time.time()))  # a restarted stream numbers on


class LiveIngest:
    """The agent's live streams: ingests, windows, recordings (see the module docstring)."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.home = agent.home
        self.running: dict[str, _Ingest] = {}
        self._key = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                for name, spec in read_specs(self.home.path).items():
                    ingest = self.running.get(name)
                    if ingest is None and not spec.stopped:
                        if (read_status(self.home.path, name) or {}).get("started_at") == spec.started_at:
                            continue  # this request ran (and ended) already
                        ingest = self.running[name] = _Ingest(spec)
                        nursery.start_soon(self._ingest, ingest)
                    elif ingest is not None and spec.stopped and not ingest.stop.is_set():
                        ingest.state = "stopping"
                        ingest.stop.set()
                await trio.sleep(LIVE_POLL_S)

    async def _ingest(self, ingest: _Ingest) -> None:
        from mesh.drivers.filestore import FileStore

        spec = ingest.spec
        self._report(ingest)
        store = FileStore(self.home.store_path, pool=self.agent.store.pool)
        try:
            await trio.to_thread.run_sync(self._segment, ingest, store, trio.lowlevel.current_trio_token(),
                                          abandon_on_cancel=True)
        except MeshError as exc:
            ingest.state, ingest.error = "failed", str(exc)
            self._emit("live.failed", stream=spec.name, error=str(exc))
        finally:
            ingest.stop.set()
        try:
            if ingest.segments:
                self._sign(ingest, ended=True)
                ingest.recording = await trio.to_thread.run_sync(self._record, ingest, store)
                self._emit("live.recorded", stream=spec.name, cid=ingest.recording, segments=len(ingest.segments))
        except (MeshError, OSError) as exc:
            ingest.error = f"the recording failed: {exc}"
            self._emit("live.failed", stream=spec.name, error=ingest.error)
        finally:
            store.close()
            if ingest.state != "failed":
                ingest.state = "stopped"
            self._report(ingest)
            self.running.pop(spec.name, None)

    def _segment(self, ingest: _Ingest, store, token) -> None:
        """On a worker thread: cut, store and announce segments until stopped."""
        from mesh.drivers.livesource import run_segmenter

        spec = ingest.spec

        def on_segment(segment) -> None:
            cid = self._store_segment(store, spec.name, segment.data)
            number = ingest.first_number + len(ingest.segments)
            made = LiveSegment(number, cid, int(round(segment.duration_s * 1000)),
                               bool(getattr(segment, "discontinuity", False)) and bool(ingest.segments))
            trio.from_thread.run_sync(self._segment_stored, ingest, made, len(segment.data), trio_token=token)

        run_segmenter(spec.source, on_segment, ingest.stop, segment_s=spec.segment_s, listen=spec.listen,
                      audio=spec.audio, input_format=spec.input_format)

    @staticmethod
    def _store_segment(store, name: str, data: bytes) -> str:
        import io

        with store.importing():
            try:
                cid, _ = store.add_stream(io.BytesIO(data), len(data))
                store.commit()
            except BaseException:
                store.discard()
                raise
        store.pin(cid, f"live:{name}")
        return cid

    def _segment_stored(self, ingest: _Ingest, segment: LiveSegment, size: int) -> None:
        if len(ingest.segments) >= RECORDING_SEGMENTS_MAX:
            ingest.stop.set()
            return
        ingest.segments.append(segment)
        ingest.bytes += size
        if ingest.state == "waiting":
            ingest.state = "live"
            self._emit("live.started", stream=ingest.spec.name)
        self._sign(ingest)
        self._report(ingest)

    def _sign(self, ingest: _Ingest, ended: bool = False) -> None:
        if self._key is None:
            self._key = self.home.node_key()
        spec, info = ingest.spec, self.home.info
        ingest.seq = max(ingest.seq + 1, int(time.time() * 1000))  # newer than any earlier run's windows
        blob = sign_window(self._key, info.mesh_id, info.node_id, spec.name, ingest.seq, time.time(),
                           int(spec.segment_s * 1000), ingest.segments, ended=ended, tags=spec.tags,
                           scope=spec.scope, subject=spec.subject)
        if self.agent.core is not None:
            self.agent.hand_to_core(LiveWindowSigned(blob))

    def _record(self, ingest: _Ingest, store) -> str:
        """On a worker thread: the segments, in order, as one MPEG-TS asset; then unpin them."""
        from mesh.drivers.importer import record_imports, store_files
        from mesh.drivers.statefile import StateFile
        from mesh.state.document import actor_id

        spec = ingest.spec
        folder = live_dir(self.home.path)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{spec.name}-", suffix=".ts", delete=False) as out:
            path = Path(out.name)
            for view in store.read_objects([s.cid for s in ingest.segments]):
                out.write(view)
        try:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(spec.started_at or time.time()))
            named = path.with_name(f"{spec.name}-{stamp}.ts")
            os.replace(path, named)
            path = named
            imported = store_files(store, self.home.info.node_id, [path], spec.tags,
                                   frozenset({spec.subject}) if spec.subject else frozenset(), spec.retention_s)
            record_imports(StateFile(self.home.state_path), actor_id(self.home.info.node_id, os.urandom(8)), imported)
        finally:
            path.unlink(missing_ok=True)
        store.unpin(f"live:{spec.name}")
        return imported[0].cid

    def _report(self, ingest: _Ingest) -> None:
        spec = ingest.spec
        doc = {"name": spec.name, "state": ingest.state, "error": ingest.error, "segments": len(ingest.segments),
               "bytes": ingest.bytes, "recording": ingest.recording, "started_at": spec.started_at,
               "updated_at": time.time()}
        try:
            _write_status(self.home.path, spec.name, doc)
        except OSError as exc:
            log.warning("live.status_failed stream=%s error=%s", spec.name, exc)

    def _emit(self, name: str, **fields) -> None:
        self.agent.emit_log(name, **fields)


async def live_loop(agent, config) -> None:
    """Run `mesh live start` requests and relays for this node (mesh.drivers.liverelay)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(LiveIngest(agent).run)
        nursery.start_soon(RelayLoop(agent).run)


# ---- relay ------------------------------------------------------------------------------------


class RelayLoop:
    """Relays of streams this node follows, as `HOME/live/NAME.relay.json` asks."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.running: dict[str, tuple[str, threading.Event]] = {}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                wanted = {}
                folder = live_dir(self.agent.home.path)
                if folder.is_dir():
                    for path in folder.glob("*.relay.json"):
                        name = path.name[: -len(".relay.json")]
                        url = relay_target(self.agent.home.path, name)
                        if url:
                            wanted[name] = url
                for name, (url, stop) in list(self.running.items()):
                    if wanted.get(name) != url:
                        stop.set()
                        del self.running[name]
                for name, url in wanted.items():
                    if name not in self.running:
                        stop = threading.Event()
                        self.running[name] = (url, stop)
                        nursery.start_soon(self._relay, name, url, stop)
                await trio.sleep(LIVE_POLL_S)

    async def _relay(self, name: str, url: str, stop: threading.Event) -> None:
        from mesh.drivers.livesource import Segment
        from mesh.drivers.liverelay import run_relay

        queue: deque = deque(maxlen=RELAY_QUEUE_MAX)
        ready = threading.Condition()
        state = {"state": "connecting", "error": None, "sent": 0}

        def segments(timeout_s: float):
            with ready:
                if not queue:
                    ready.wait(timeout_s)
                return queue.popleft() if queue else None

        def on_state(text: str, error: str | None) -> None:
            state["state"], state["error"] = text, error
            self.agent.emit_log("live.relay", stream=name, state=text, error=error or "")

        async def feed() -> None:
            sent = -1
            while not stop.is_set():
                core = self.agent.core
                found = core.live_playlist(name) if core is not None else None
                for segment in (found[1] if found else []):
                    if segment.number <= sent:
                        continue
                    data = await trio.to_thread.run_sync(self._read, segment.cid)
                    if data is not None:
                        with ready:
                            queue.append(Segment(segment.number, data, segment.duration_ms / 1000, 0.0))
                            ready.notify()
                        sent = segment.number
                _write_status(self.agent.home.path, f"{name}.relay", {"url": url, **state, "sent_upto": sent})
                await trio.sleep(0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            await trio.to_thread.run_sync(lambda: run_relay(url, segments, stop, on_state=on_state),
                                          abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    def _read(self, cid: str) -> bytes | None:
        try:
            return b"".join(bytes(v) for v in self.agent.store.read_objects([cid]))
        except MeshError:
            return None
