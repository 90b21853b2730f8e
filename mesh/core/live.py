"""Live streams inside `NodeCore`: signed live windows, and live segments ahead of everything.

Theory of operation:
- A stream is ingested on one node (its driver: mesh.drivers.live). Each segment (an MPEG-TS
  file) enters the store as an ordinary file, named by its CID; the node then signs a *window*:
  the stream's name, its own node id, a sequence number, the time, the target segment duration,
  the last LIVE_WINDOW_SEGMENTS segments ([number, CID, milliseconds]), whether the stream ended,
  its tags, and the consent scope and subject it is under. The window is an ephemeral signal,
  never CRDT history: its blob goes to every ready peer speaking FEATURE_LIVE (LiveWindow), each
  node forwards a window it had not seen to its other peers, and keeps only the latest per stream
  name (a higher `seq` from the same node, or a later `at` from another node, which then takes
  the name over). A window not renewed for LIVE_STALE_S is forgotten.
- Trust: a window counts only if the node it names signed it, that node is a member of this
  mesh in the shared state, and it is not revoked. A bad blob from a peer closes its session.
- Fetching: the newest LIVE_FETCH_SEGMENTS segments of a live window are fetch tracks of class
  CLASS_LIVE, scheduled before every other class (oldest first within it, so playback stays in
  order); a segment that falls out of that range while still missing is dropped, not chased: a
  node that fell behind skips to the live edge. Tracks of segments that left the window go (the
  purge reclaims their bytes); the ingesting node keeps its recording (its driver pins it).
- Consent: a window naming a subject is followed while that subject's consent for the window's
  scope holds (`consent_state`); when it is withdrawn every node drops the stream's tracks and
  serves no playlist for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cbor2

from mesh.content.cid import Cid
from mesh.core.events import LiveWindowSigned
from mesh.core.session import Session
from mesh.core.swarm import Swarm
from mesh.core.swarming import CLASS_LIVE, Track
from mesh.errors import CredentialError, RemoteProtocolError, UsageError
from mesh.ids import public_key_from_node_id
from mesh.wire import messages as m

FEATURE_LIVE = "live/1"  # a peer listing this in its Hello takes LiveWindow
LIVE_WINDOW_SEGMENTS = 6  # segments a window lists (the playlist's length)
LIVE_FETCH_SEGMENTS = 3  # ... of which the newest this many are fetched (older ones are skipped)
LIVE_STALE_S = 30.0  # a window not renewed this long is forgotten (the ingester died)
LIVE_STREAMS_MAX = 16  # streams a node follows at once (more are ignored until one goes)
LIVE_SCOPE_DEFAULT = "live"
STREAM_NAME_CHARS_MAX = 64
_PREFIX = b"assetmesh live-window v1\x00"
_FIELDS = frozenset({"kind", "mesh", "stream", "node", "seq", "at", "segment_ms", "segments", "ended", "tags",
                     "scope", "subject"})


@dataclass(frozen=True)
class LiveSegment:
    number: int  # the segment's number in its stream (monotonic)
    cid: str  # the segment file's CID
    duration_ms: int  # its media duration
    discontinuity: bool = False  # a new camera connection starts here (the player resets its decoder)


@dataclass(frozen=True)
class LiveWindow:
    """A verified window (see the module docstring)."""

    stream: str  # the stream's name (`mesh live start NAME`)
    node: str  # the ingesting node
    seq: int  # the window's sequence number from that node
    at: float  # when the ingester signed it (its clock)
    segment_ms: int  # the target segment duration
    segments: tuple[LiveSegment, ...]  # the last LIVE_WINDOW_SEGMENTS segments, oldest first
    ended: bool  # the stream was stopped (the last window)
    tags: tuple[str, ...]  # the stream's tags (its recording's tags)
    scope: str  # the consent scope it is shown under
    subject: str | None  # the subject whose consent it needs, if any
    blob: bytes  # the signed statement, as forwarded


def check_stream_name(name: str) -> str:
    """A stream name: 1-64 letters, digits, '-' or '_' (it is a URL path segment)."""
    if not (isinstance(name, str) and 0 < len(name) <= STREAM_NAME_CHARS_MAX
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)):
        raise UsageError(f"{name!r} is not a stream name: 1-{STREAM_NAME_CHARS_MAX} letters, digits, '-' or '_'")
    return name


def sign_window(key, mesh_id: str, node_id: str, stream: str, seq: int, at: float, segment_ms: int,
                segments: list[LiveSegment], *, ended: bool = False, tags: tuple[str, ...] = (),
                scope: str = LIVE_SCOPE_DEFAULT, subject: str | None = None) -> bytes:
    """The blob of a window signed with the ingesting node's key (an Ed25519PrivateKey)."""
    body = {"kind": "live-window", "mesh": mesh_id, "stream": check_stream_name(stream), "node": node_id,
            "seq": seq, "at": at, "segment_ms": segment_ms, "ended": ended, "tags": list(tags), "scope": scope,
            "subject": subject,
            "segments": [[s.number, s.cid, s.duration_ms, *([1] if s.discontinuity else [])]
                         for s in segments[-LIVE_WINDOW_SEGMENTS:]]}
    body_bytes = cbor2.dumps(body, canonical=True)
    return cbor2.dumps([body_bytes, key.sign(_PREFIX + body_bytes)], canonical=True)


def open_window(blob: bytes, mesh_id: str) -> LiveWindow:
    """Decode and check a window's shape and signature; CredentialError says why not. (Whether
    its node is a member, unrevoked, is the core's to check.)"""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        body_bytes, signature = cbor2.loads(blob)
        body = cbor2.loads(body_bytes)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
        raise CredentialError("malformed live window") from None
    if not (isinstance(body, dict) and body.keys() == _FIELDS and body["kind"] == "live-window"):
        raise CredentialError("malformed live window: unexpected fields")
    if body["mesh"] != mesh_id:
        raise CredentialError("live window of another mesh")
    window = _window_from(body, blob)
    try:
        Ed25519PublicKey.from_public_bytes(public_key_from_node_id(window.node)).verify(
            signature, _PREFIX + body_bytes)
    except (InvalidSignature, ValueError, TypeError):
        raise CredentialError("bad signature on live window") from None
    return window


def _window_from(body: dict, blob: bytes) -> LiveWindow:
    try:
        segments = tuple(LiveSegment(int(n), str(Cid.parse(c)), int(ms), bool(rest and rest[0]))
                         for n, c, ms, *rest in body["segments"])
        window = LiveWindow(check_stream_name(body["stream"]), str(body["node"]), int(body["seq"]), float(body["at"]),
                            int(body["segment_ms"]), segments, bool(body["ended"]),
                            tuple(str(t) for t in body["tags"]), str(body["scope"]),
                            None if body["subject"] is None else str(body["subject"]), blob)
    except (TypeError, ValueError, UsageError) as exc:
        raise CredentialError(f"malformed live window: {exc}") from None
    if len(segments) > LIVE_WINDOW_SEGMENTS or any(s.duration_ms < 0 for s in segments):
        raise CredentialError("malformed live window: too many segments")
    return window


@dataclass
class _Followed:
    window: LiveWindow  # the latest
    seen_at: float  # when it arrived (our clock)
    allowed: bool = True  # consent holds
    roots: set[Cid] = field(default_factory=set)  # segment roots we track for it


class LiveStreams:
    """The live half of NodeCore (a mixin: uses its sessions, tracks, state and actions)."""

    def _init_live(self) -> None:
        self.live: dict[str, _Followed] = {}  # stream name -> what we follow
        self.live_local: set[str] = set()  # streams this node ingests (their recordings are pinned)
        self._live_checked_at = 0.0  # consent for followed streams was checked then

    # ---- windows in and out ---------------------------------------------------------------------

    def _on_live_signed(self, event: LiveWindowSigned, now: float) -> None:
        """Our driver signed a new window of a stream this node ingests: follow it, send it."""
        try:
            window = open_window(event.blob, self.identity.mesh_id)
        except CredentialError as exc:
            self._emit("live.bad_window", reason=str(exc))
            return
        if window.node != self.identity.node_id:
            self._emit("live.bad_window", reason="signed by another node")
            return
        self.live_local.add(window.stream)
        self._take_window(window, None, now)

    def _on_live_window(self, session: Session, msg: m.LiveWindow, now: float) -> None:
        try:
            window = open_window(msg.blob, self.identity.mesh_id)
        except CredentialError as exc:
            raise RemoteProtocolError(str(exc)) from None
        if self.state.member(window.node) is None or self.revocations.is_revoked(window.node):
            self._count("live.refused_windows")
            return
        self._take_window(window, session, now)

    def _take_window(self, window: LiveWindow, sender: Session | None, now: float) -> None:
        followed = self.live.get(window.stream)
        if followed is not None and not _newer(window, followed.window):
            return
        if followed is None and len(self.live) >= LIVE_STREAMS_MAX:
            self._count("live.streams_ignored")
            return
        if followed is None:
            followed = self.live[window.stream] = _Followed(window, now)
            followed.allowed = self._live_allowed(window, now)
            self._emit("live.followed", stream=window.stream, node=window.node)
        followed.window, followed.seen_at = window, now
        for session in self.peers():
            if session is not sender and FEATURE_LIVE in session.features:
                self._send(session, m.LiveWindow(window.blob), now)
        self._follow_segments(followed, now)
        if window.ended:
            self._emit("live.ended", stream=window.stream, node=window.node)

    def _live_ready(self, session: Session, now: float) -> None:
        """A new peer gets the windows we follow."""
        if FEATURE_LIVE not in session.features:
            return
        for followed in self.live.values():
            self._send(session, m.LiveWindow(followed.window.blob), now)

    # ---- tracks -------------------------------------------------------------------------------

    def _follow_segments(self, followed: _Followed, now: float) -> None:
        """Fetch the newest segments; keep held ones while listed; drop skipped and old ones."""
        window = followed.window
        listed = _listed(window) if followed.allowed else set()
        fetch = set()
        if followed.allowed and not window.ended:
            fetch = {Cid.parse(s.cid) for s in window.segments[-LIVE_FETCH_SEGMENTS:]}
        for root in list(followed.roots):
            track = self.tracks.get(root)
            if root in fetch or (root in listed and track is not None and track.swarm.complete):
                continue
            followed.roots.discard(root)
            if track is not None and track.klass == CLASS_LIVE:
                self._drop_object_track(root)
        for segment in window.segments:
            root = Cid.parse(segment.cid)
            if root in fetch and root not in self.tracks:
                self._start_live_track(root, segment.number, now)
                followed.roots.add(root)

    def _start_live_track(self, root: Cid, number: int, now: float) -> None:
        swarm = Swarm(root, self.swarm_limits, self._rng, None, self.transfers)
        swarm.endgame_enabled = True  # a late segment is worth a duplicate request
        track = Track(None, swarm, True, klass=CLASS_LIVE, order=float(number))
        self.tracks[root] = track
        self._replay_haves(track)
        self._load_inventory(track)

    def _live_step(self, now: float) -> None:
        """Forget stale streams; re-check consent now and then."""
        for name, followed in list(self.live.items()):
            if now - followed.seen_at > LIVE_STALE_S:
                for root in followed.roots:
                    if root in self.tracks and self.tracks[root].klass == CLASS_LIVE:
                        self._drop_object_track(root)
                del self.live[name]
                self.live_local.discard(name)
                self._emit("live.gone", stream=name)
        if now - self._live_checked_at >= 1.0 and self.live:
            self._live_checked_at = now
            for followed in self.live.values():
                allowed = self._live_allowed(followed.window, now)
                if allowed != followed.allowed:
                    followed.allowed = allowed
                    self._emit("live.consent", stream=followed.window.stream, allowed=allowed)
                    self._follow_segments(followed, now)

    def _live_allowed(self, window: LiveWindow, now: float) -> bool:
        if window.subject is None:
            return True
        from mesh.state.consent import consent_state, effective_policies

        policies = effective_policies(self.state, self.identity.authority_public_key, now)
        return consent_state(self.state, window.subject, window.scope, policies)

    # ---- what the gateway and status read ---------------------------------------------------------

    def live_playlist(self, stream: str) -> tuple[LiveWindow, list[LiveSegment]] | None:
        """(the window, the segments this node holds that a player should get: the longest run
        of consecutive held segments ending at the newest held one), or None if the stream is
        unknown or its consent is withdrawn."""
        followed = self.live.get(stream)
        if followed is None or not followed.allowed:
            return None
        run: list[LiveSegment] = []
        for segment in reversed(followed.window.segments):
            track = self.tracks.get(Cid.parse(segment.cid))
            held = track is not None and track.swarm.complete
            if held and (not run or run[0].number == segment.number + 1):
                run.insert(0, segment)
            elif run:
                break
        return followed.window, run

    def live_segment(self, stream: str, number: int) -> str | None:
        """The CID of segment `number` of a followed, allowed stream, if it is in its window."""
        found = self.live_playlist(stream)
        if found is None:
            return None
        for segment in found[0].segments:
            if segment.number == number:
                return segment.cid
        return None

    def live_status(self) -> list[dict]:
        """The streams this node follows, as `mesh status` and `/api/live` show them."""
        return self._live_status(self._now)

    def _live_status(self, now: float) -> list[dict]:
        rows = []
        for name, followed in sorted(self.live.items()):
            window = followed.window
            playlist = self.live_playlist(name)
            held = playlist[1] if playlist else []
            newest = window.segments[-1].number if window.segments else None
            rows.append({
                "name": name, "node": window.node, "state": "ended" if window.ended else "live",
                "allowed": followed.allowed, "segment_s": window.segment_ms / 1000, "newest": newest,
                "held_newest": held[-1].number if held else None,
                "lag_segments": (newest - held[-1].number) if held and newest is not None else None,
                "window_age_s": round(now - followed.seen_at, 3), "tags": list(window.tags),
                "latency_s": _latency(now, followed, held, newest),
                "ingesting": name in self.live_local,
            })
        return rows


def _latency(now: float, followed: _Followed, held: list[LiveSegment], newest: int | None) -> float | None:
    """How far behind the ingester this node serves: the newest window's age when it arrived,
    plus the segments it still lacks (an estimate; the benchmark measures glass to phone)."""
    if not held or newest is None:
        return None
    behind = sum(s.duration_ms for s in followed.window.segments if s.number > held[-1].number) / 1000
    return round(now - followed.seen_at + followed.window.segment_ms / 1000 + behind, 3)


def _newer(window: LiveWindow, known: LiveWindow) -> bool:
    if window.node == known.node:
        return window.seq > known.seq
    return window.at > known.at


def _listed(window: LiveWindow) -> set[Cid]:
    return {Cid.parse(s.cid) for s in window.segments}
