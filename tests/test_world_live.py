"""Live streams in the World: one ingesting box's segments reach every edge ahead of everything,
edges seed each other, a box that fell behind skips to the live edge, consent stops a stream
everywhere, and only a member's signature makes a window. Real NodeCores, the real scheduler."""

from __future__ import annotations

import os
import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.content.cid import Cid
from mesh.core.events import LiveWindowSigned
from mesh.core.live import LIVE_FETCH_SEGMENTS, LiveSegment, open_window, sign_window
from mesh.errors import CredentialError, RemoteProtocolError
from mesh.ids import node_id_from_public_key
from mesh.state import consent as cs
from mesh.state.membership import public_key_bytes
from mesh.testing.content import _add_file
from mesh.testing.sim import World
from tests.test_world_media import media_world
from mesh.wire import messages as m

SEED = int(os.environ.get("MESH_WORLD_SEED", "20261206"))
SEGMENT_S = 2.0
SEGMENT_BYTES = 1_500_000  # 6 Mbit/s x 2 s


class Camera:
    """The ingesting node's driver, as mesh.drivers.live does it: store a segment, sign a window."""

    def __init__(self, world: World, name: str, stream: str = "main-stage", subject: str | None = None) -> None:
        self.world, self.name, self.stream, self.subject = world, name, stream, subject
        self.segments: list[LiveSegment] = []
        self.blocks: dict[int, dict[Cid, bytes]] = {}
        self.seq = 0
        self.rng = random.Random(f"{world.seed}/{stream}")

    def segment(self) -> LiveSegment:
        blocks: dict[Cid, bytes] = {}
        root, _ = _add_file(blocks, self.rng.randbytes(SEGMENT_BYTES))
        handle = self.world.nodes[self.name]
        for cid, data in blocks.items():
            handle.store.put(cid, data)
        number = len(self.segments)
        self.blocks[number] = blocks
        made = LiveSegment(number, str(root), int(SEGMENT_S * 1000))
        self.segments.append(made)
        self.sign()
        return made

    def sign(self, ended: bool = False) -> None:
        handle = self.world.nodes[self.name]
        self.seq += 1
        blob = sign_window(handle.identity.key, handle.identity.mesh_id, handle.node_id, self.stream, self.seq,
                           self.world.now, int(SEGMENT_S * 1000), self.segments, ended=ended, tags=("stage",),
                           subject=self.subject)
        self.world.inject(self.name, LiveWindowSigned(blob))

    def run(self, segments: int) -> None:
        for _ in range(segments):
            self.world.run_for(SEGMENT_S)
            self.segment()

    def held(self, node: str, number: int) -> bool:
        store = self.world.nodes[node].store
        return all(store.has(cid) for cid in self.blocks[number])


def live_world(edges: int, seed: int = SEED) -> World:
    """An organizer, a stage box (the ingester) and `edges` edges, met and settled."""
    world = media_world(edges, seed)
    world.run_for(6)
    return world


def playlist(world: World, node: str, stream: str = "main-stage") -> list[int] | None:
    found = world.nodes[node].live_core().live_playlist(stream)
    return None if found is None else [segment.number for segment in found[1]]


def test_every_edge_plays_near_the_live_edge_and_the_camera_uploads_little_more_than_one_copy() -> None:
    world = live_world(edges=4)
    edges = [f"edge{i}" for i in range(1, 5)]
    camera = Camera(world, "stage")
    lags = []
    for _ in range(15):
        made = camera.segment()
        world.run_for(SEGMENT_S)
        for edge in edges:  # one segment's time after it was made, every edge serves it
            shown = playlist(world, edge)
            assert shown and shown[-1] == made.number, (edge, shown, made.number)
            lags.append(made.number - shown[-1])
    assert all(camera.held(edge, n) for edge in edges for n in range(15))
    from_camera = sum(world.nodes[e].traffic.chunk_bytes_in.get("stage", 0) for e in edges)
    print(f"camera uploaded {from_camera / (15 * SEGMENT_BYTES):.2f}x the stream")
    assert from_camera <= 1.5 * 15 * SEGMENT_BYTES, from_camera / (15 * SEGMENT_BYTES)  # edges seed each other
    # the playlist is the held, consecutive run that ends at the newest: at most a window long
    assert len(playlist(world, "edge1")) >= LIVE_FETCH_SEGMENTS


def test_a_box_that_fell_behind_skips_to_the_live_edge() -> None:
    world = live_world(edges=2)
    camera = Camera(world, "stage")
    camera.run(3)
    world.run_for(SEGMENT_S)
    world.partition(["edge2"], ["org", "stage", "edge1"])
    camera.run(8)  # edge2 misses segments 3..10 (and hears no window)
    world.heal()
    world.run_until(lambda w: (playlist(w, "edge2") or [None])[-1] == camera.segments[-1].number,
                    20, "edge2 back at the live edge")
    skipped = [n for n in range(3, len(camera.segments) - LIVE_FETCH_SEGMENTS) if camera.held("edge2", n)]
    assert skipped == [], f"edge2 fetched old segments {skipped} instead of skipping them"
    assert camera.held("edge2", camera.segments[-1].number)


def test_withdrawn_consent_stops_the_stream_everywhere() -> None:
    world = live_world(edges=2)
    subject = "7KQ2-M9X7"
    world.mutate("org", lambda state: cs.set_policy(state, cs.create_policy(
        world.mesh.founder.authority_public_key, world.mesh.founder.key, world.mesh.founder.chain, "live", "grant",
        "Live stream of the stage", world.now)))
    camera = Camera(world, "stage", subject=subject)
    camera.run(3)
    world.run_for(SEGMENT_S)
    assert playlist(world, "edge1")
    world.mutate("org", lambda state: cs.record_decision(state, subject, "live", False, world.now, "org"))
    camera.run(2)
    world.run_for(SEGMENT_S)
    for node in ("edge1", "edge2"):
        assert playlist(world, node) is None
        assert not any(camera.held(node, n) for n in (3, 4)), "fetched after consent was withdrawn"


def test_a_window_from_a_stranger_or_a_tampered_one_is_refused() -> None:
    world = live_world(edges=1)
    handle = world.nodes["stage"]
    segment = LiveSegment(0, str(_add_file({}, b"x" * 1000)[0]), 2000)
    stranger = Ed25519PrivateKey.generate()
    stranger_id = node_id_from_public_key(public_key_bytes(stranger))
    forged = sign_window(stranger, handle.identity.mesh_id, handle.node_id, "s", 1, world.now, 2000, [segment])
    try:
        open_window(forged, handle.identity.mesh_id)
        raise AssertionError("a window signed by another key than its node's was accepted")
    except CredentialError:
        pass
    not_member = sign_window(stranger, handle.identity.mesh_id, stranger_id, "s", 1, world.now, 2000, [segment])
    world.inject("stage", LiveWindowSigned(not_member))  # not signed by this node: refused locally
    world.run_for(2)
    assert world.nodes["edge1"].live_core().live_playlist("s") is None
    assert any(e.name == "live.bad_window" for e in world.events(node="stage"))
    # relayed by a peer: a valid signature of a key that is no member is dropped, not followed
    core = world.nodes["edge1"].live_core()
    session = next(s for s in core.peers() if s.node_id == handle.node_id)
    core._on_live_window(session, m.LiveWindow(not_member), world.now)
    assert core.live_playlist("s") is None and core.counters.get("live.refused_windows") == 1
    try:  # a tampered blob from a peer is its protocol error: its session closes
        core._on_live_window(session, m.LiveWindow(not_member[:-1] + bytes([not_member[-1] ^ 1])), world.now)
        raise AssertionError("a tampered window was not the peer's fault")
    except RemoteProtocolError:
        pass


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=64),
       st.integers(0, 2**40), st.lists(st.integers(0, 10_000), max_size=6), st.booleans(),
       st.integers(0, 200), st.lists(st.booleans(), min_size=6, max_size=6))
def test_windows_round_trip_and_any_changed_byte_is_refused(stream, seq, durations, ended, flip, cuts) -> None:
    key = Ed25519PrivateKey.generate()
    node = node_id_from_public_key(public_key_bytes(key))
    segments = [LiveSegment(i, str(_add_file({}, bytes([i]) * 100)[0]), ms, cuts[i]) for i, ms in enumerate(durations)]
    blob = sign_window(key, "mesh-x", node, stream, seq, 1.5, 2000, segments, ended=ended, tags=("a",))
    window = open_window(blob, "mesh-x")
    assert (window.stream, window.node, window.seq, window.segments, window.ended) == (
        stream, node, seq, tuple(segments), ended)
    damaged = bytearray(blob)
    damaged[flip % len(damaged)] ^= 0x01
    try:
        again = open_window(bytes(damaged), "mesh-x")
    except CredentialError:
        return
    assert again == window  # only a flip CBOR ignores could pass (none should, but never a changed window)


def test_the_playlist_marks_a_new_camera_connection_and_the_end() -> None:
    from mesh.gateway.hls import playlist_text

    key = Ed25519PrivateKey.generate()
    node = node_id_from_public_key(public_key_bytes(key))
    cids = [str(_add_file({}, bytes([i]) * 100)[0]) for i in range(3)]
    segments = [LiveSegment(10, cids[0], 2000), LiveSegment(11, cids[1], 2000, True), LiveSegment(12, cids[2], 1500)]
    window = open_window(sign_window(key, "m", node, "cam", 1, 1.0, 2000, segments, ended=True), "m")
    text = playlist_text("cam", window, list(window.segments))
    assert text.splitlines() == [
        "#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:10",
        "#EXTINF:2.000,", "/live/cam/10.ts", "#EXT-X-DISCONTINUITY", "#EXTINF:2.000,", "/live/cam/11.ts",
        "#EXTINF:1.500,", "/live/cam/12.ts", "#EXT-X-ENDLIST"]
