"""Deterministic World tests: real NodeCores on a simulated network, in virtual time.

Each test prints its seed first (pytest shows it on failure); `MESH_WORLD_SEED=N` replays one seed,
and every SimulationError names the seed too.
"""

from __future__ import annotations

import os

import pytest

from mesh.config import CoreLimits
from mesh.content.cid import cid_for_raw
from mesh.core.events import DataReceived, Dial, PeerDiscovered
from mesh.state.document import MeshState
from mesh.state.records import AssetRecord
from mesh.testing.sim import SimNetwork, World

SEED = int(os.environ.get("MESH_WORLD_SEED", "20240611"))


def make_world(seed: int = SEED, **options) -> World:
    print(f"World seed={seed} (replay: MESH_WORLD_SEED={seed})")
    return World(seed, **options)


def asset(world: World, index: int, tags: tuple[str, ...] = ()) -> AssetRecord:
    """A realistic asset record: a real CID (incompressible, like the hashes it names)."""
    return AssetRecord(
        cid=str(cid_for_raw(f"asset {index}".encode())), name=f"photo-{index}.jpg", size=1000 + index, media_type="image/jpeg",
        added_at=world.now, added_by=world.mesh.founder.node_id, tags=frozenset(tags),
    )


def trio_world(seed: int = SEED, **options) -> World:
    world = make_world(seed, **options)
    world.add_node("org", identity=world.mesh.founder)
    world.add_node("hub", role="hub")
    world.add_node("edge", role="edge")
    return world


def connect(world: World, names: list[str] | None = None, timeout_s: float = 30.0) -> float:
    return world.run_until(lambda w: w.all_connected(names), timeout_s, "everyone connected")


def sync(world: World, names: list[str] | None = None, timeout_s: float = 60.0) -> float:
    return world.run_until(lambda w: w.converged(names), timeout_s, "documents converged")


def tags_of(world: World, name: str, cid: str) -> set[str]:
    record = world.nodes[name].state.asset(cid)
    assert record is not None, f"seed={world.seed}: {name} lacks asset {cid}"
    return set(record.tags)


# ---- (a) --------------------------------------------------------------------------------------


def test_three_nodes_discover_handshake_and_become_ready() -> None:
    world = trio_world()
    world.discover_all()
    took = connect(world)
    assert took < 5.0, f"seed={world.seed}: took {took} s"
    sync(world)
    for name in world.nodes:
        assert world.nodes[name].peer_names() == set(world.nodes) - {name}, world.describe()
        members = {m.node_id for m in world.nodes[name].state.members()}
        assert members == {h.node_id for h in world.nodes.values()}, world.describe()
    connected = world.events("peer.connected")
    assert len(connected) == 6  # each node once per peer: no duplicate sessions
    assert {(e.node, world.name_of(e.fields["node"])) for e in connected} == {
        (a, b) for a in world.nodes for b in world.nodes if a != b
    }


def test_same_seed_replays_the_same_run() -> None:
    def run(seed: int) -> list[tuple]:
        world = trio_world(seed)
        world.discover_all()
        world.mutate("org", lambda s: s.put_asset(asset(world, 1, ("stage",))))
        world.run_for(30)
        return [(e.time, e.node, e.name, tuple(sorted(e.fields.items()))) for e in world.log] + [
            (name, h.traffic.bytes_in, h.traffic.bytes_out, tuple(h.state.heads())) for name, h in world.nodes.items()
        ]

    assert run(SEED) == run(SEED)
    assert run(SEED) != run(SEED + 1)


def test_static_peers_connect_over_a_lossy_slow_network() -> None:
    network = SimNetwork(seed=7, latency_s=0.04, loss=0.05, bandwidth_bytes_per_s=250_000)
    world = make_world(network=network)
    world.add_node("org", identity=world.mesh.founder)
    world.add_node("hub", role="hub")
    world.add_static_peer("hub", "org")
    connect(world)
    world.mutate("org", lambda s: [s.put_asset(asset(world, i, ("lossy",))) for i in range(20)])
    sync(world)
    assert len(world.nodes["hub"].state.assets(tag="lossy")) == 20


# ---- (b) --------------------------------------------------------------------------------------


def test_concurrent_tag_edits_during_a_partition_merge_on_heal() -> None:
    world = trio_world()
    world.discover_all()
    connect(world)
    cids = []
    for i in range(3):
        record = asset(world, i, ("old-1", "old-2"))
        cids.append(record.cid)
        world.mutate("org", lambda s, r=record: s.put_asset(r))
    sync(world)

    world.partition(["org"], ["hub", "edge"])
    world.run_until(lambda w: not w.nodes["org"].peer_names(), 5, "partition noticed")
    edits = {"org": "from-org", "hub": "from-hub", "edge": "from-edge"}
    for name, tag in edits.items():
        for cid in cids:
            world.mutate(name, lambda s, c=cid, t=tag: s.tag_asset(c, add=[t, "shared"]))
    world.mutate("org", lambda s: s.tag_asset(cids[0], remove=["old-1"]))
    world.mutate("hub", lambda s: s.tag_asset(cids[1], remove=["old-2"]))
    world.run_for(10)
    assert not world.converged(), world.describe()
    assert tags_of(world, "org", cids[2]) == {"old-1", "old-2", "from-org", "shared"}

    world.heal()
    connect(world, timeout_s=120)
    sync(world)
    expected = {
        cids[0]: {"old-2", "from-org", "from-hub", "from-edge", "shared"},
        cids[1]: {"old-1", "from-org", "from-hub", "from-edge", "shared"},
        cids[2]: {"old-1", "old-2", "from-org", "from-hub", "from-edge", "shared"},
    }
    for name in world.nodes:
        for cid, tags in expected.items():
            assert tags_of(world, name, cid) == tags, f"seed={world.seed}: {name} {cid}"


# ---- (c) --------------------------------------------------------------------------------------


HISTORY_ASSETS = 800


def test_node_offline_for_long_catches_up_with_a_small_sync() -> None:
    """200 missed changes cost about 170 bytes each in sync (change chunks carry a 40-byte actor
    and 32-byte dependency hashes), while save() compresses the whole history of 800 realistic
    assets; a new node needs the whole history, and gets it as a snapshot (about one save())."""
    world = trio_world()
    world.discover_all()
    connect(world)
    for batch in range(HISTORY_ASSETS // 100):  # history everyone has before the edge goes away
        first = batch * 100
        world.mutate("org" if batch % 2 else "hub", lambda s, first=first: [
            s.put_asset(asset(world, i, ("popup", f"day-{i % 7}"))) for i in range(first, first + 100)
        ])
        world.run_for(1)
    sync(world)

    world.crash("edge")
    world.run_until(lambda w: "edge" not in w.nodes["org"].peer_names(), 5, "crash noticed")
    for i in range(200):  # 200 changes while it is away
        writer = "org" if i % 2 else "hub"
        world.mutate(writer, lambda s, i=i: s.tag_asset(asset(world, i).cid, add=[f"late-{i % 5}"]))
        if i % 20 == 0:
            world.run_for(30)  # a long absence: hours in total would only repeat pings
    sync(world, ["org", "hub"])
    save_bytes = len(world.nodes["org"].state.save())

    before = world.nodes["edge"].traffic.state_sync_bytes_in
    world.restart("edge")
    assert len(world.nodes["edge"].state.assets()) == HISTORY_ASSETS  # from its own persisted log
    connect(world)
    sync(world)
    caught_up_bytes = world.nodes["edge"].traffic.state_sync_bytes_in - before
    assert tags_of(world, "edge", asset(world, 199).cid) >= {"late-4"}

    newcomer = world.add_node("newcomer")
    world.discover("newcomer", "org")
    sync(world)
    fresh_bytes = newcomer.traffic.state_sync_bytes_in
    print(f"caught up with {caught_up_bytes} B; save() is {save_bytes} B; a new node got {fresh_bytes} B")
    assert caught_up_bytes < 0.5 * save_bytes, f"seed={world.seed}: {caught_up_bytes} vs save {save_bytes}"
    assert caught_up_bytes < 0.5 * fresh_bytes, f"seed={world.seed}: {caught_up_bytes} vs new node {fresh_bytes}"
    assert fresh_bytes < 1.5 * save_bytes, f"seed={world.seed}: new node {fresh_bytes} vs save {save_bytes}"


def test_restart_without_persisted_changes_loses_nothing_it_acknowledged() -> None:
    world = trio_world()
    world.discover_all()
    connect(world)
    world.mutate("edge", lambda s: s.put_asset(asset(world, 1, ("mine",))))
    world.crash("edge")  # before anything was sent: only its persisted log has the change
    world.restart("edge")
    assert world.nodes["edge"].state.asset(asset(world, 1).cid) is not None
    connect(world)
    sync(world)
    assert tags_of(world, "org", asset(world, 1).cid) == {"mine"}


# ---- (d) --------------------------------------------------------------------------------------


def test_revoked_node_is_cut_off_everywhere() -> None:
    world = trio_world()
    world.add_node("edge-2")
    world.discover_all()
    connect(world)
    target = world.nodes["edge"]
    blob = world.mesh.revocation(target.node_id, world.now, reason="lost device")
    revoked_at = world.now
    world.mutate("org", lambda s: s.put_revocation(target.node_id, blob))
    others = ["org", "hub", "edge-2"]

    def cut_off(w: World) -> bool:
        return all("edge" not in w.nodes[n].peer_names() for n in others) and not target.peer_names()

    took = world.run_until(cut_off, 5, "revoked node cut off")
    assert took < 5
    world.run_for(120)  # it keeps re-dialing (mDNS-discovered and learned addresses)
    assert cut_off(world), world.describe()
    assert world.all_connected(others), world.describe()
    refused = [e for e in world.events("peer.dial_failed", node="edge") if "revoked" in e.fields["reason"]]
    assert refused, f"seed={world.seed}: the revoked node never tried again"
    late_sessions = [e for e in world.events("peer.connected") if e.time > revoked_at - world.start_time + 5
                     and "edge" in (e.node, world.name_of(e.fields["node"]))]
    assert not late_sessions, f"seed={world.seed}: {late_sessions}"
    for name in others:
        assert world.nodes[name].live_core().revocations.is_revoked(target.node_id)


# ---- (e) --------------------------------------------------------------------------------------


def test_one_session_per_pair_when_both_dial_at_once() -> None:
    world = make_world()
    world.add_node("left", identity=world.mesh.founder)
    world.add_node("right")
    world.add_static_peer("left", "right")  # no node id known: no grace delay, both dial at once
    world.add_static_peer("right", "left")
    connect(world)
    world.run_for(30)
    for name, other in (("left", "right"), ("right", "left")):
        peers = world.nodes[name].live_core().peers()
        assert [world.name_of(s.node_id) for s in peers] == [other], world.describe()
    kept_left = world.nodes["left"].live_core().peers()[0].conn_id
    kept_right = world.nodes["right"].live_core().peers()[0].conn_id
    assert world.endpoints[kept_left].peer_conn_id == kept_right, "both sides kept the same connection"
    assert [e.node for e in world.events("peer.closing") if e.fields["reason"] == "duplicate session"]
    assert len(world.connections("left")) == 1 and len(world.connections("right")) == 1
    opened = [e for e in world.endpoints.values() if e.node == "left"]
    assert sorted(e.outbound for e in opened) == [False, True], "both sides did dial"


# ---- (f) --------------------------------------------------------------------------------------


def test_a_session_refused_before_hello_is_a_clean_close_not_a_protocol_error() -> None:
    """A node at its session limit (or shutting down, or banning the peer) answers a new session
    with Close before any Hello; the other side takes that as the peer's word, not as bad input."""
    world = make_world(limits=CoreLimits(sessions_max=1))
    world.add_node("org", identity=world.mesh.founder)
    world.add_node("edge-1")
    world.add_node("edge-2")
    world.add_static_peer("edge-1", "org")
    world.run_until(lambda w: w.nodes["org"].peer_names() == {"edge-1"}, 10, "org full")
    world.add_static_peer("edge-2", "org")
    world.run_until(lambda w: bool(w.events("peer.closed_by_peer", node="edge-2")), 10, "edge-2 refused")
    refused = world.events("peer.closed_by_peer", node="edge-2")[0]
    assert refused.fields["reason"] == "too many sessions"
    assert world.nodes["edge-2"].live_core().counters.get("sessions.protocol_errors", 0) == 0


def test_peer_sending_garbage_is_dropped_and_others_are_served() -> None:
    world = trio_world()
    world.discover_all()
    connect(world)
    hub = world.nodes["hub"]
    conn_to_edge = next(s.conn_id for s in hub.live_core().peers() if world.name_of(s.node_id) == "edge")
    world.inject("hub", DataReceived(conn_to_edge, b"\x00\x00\x00\x05\xff\xfe\xfd\xfc\xfb" * 3))
    assert "edge" not in hub.peer_names()
    closing = world.events("peer.closing", node="hub")
    assert closing and "protocol error" in closing[-1].fields["reason"], closing
    assert hub.live_core().counters.get("sessions.protocol_errors") == 1
    world.mutate("org", lambda s: s.put_asset(asset(world, 7, ("after-junk",))))
    world.run_until(lambda w: w.nodes["hub"].state.asset(asset(w, 7).cid) is not None, 5, "hub still syncs")
    assert "org" in hub.peer_names()
    connect(world)  # the edge comes back with a fresh session
    sync(world)


def test_oversized_frame_header_is_refused_before_buffering() -> None:
    world = trio_world()
    world.discover_all()
    connect(world)
    org = world.nodes["org"]
    conn = org.live_core().peers()[0].conn_id
    world.inject("org", DataReceived(conn, (2**31).to_bytes(4, "big") + b"x" * 100))
    assert len(org.peer_names()) == 1


# ---- (g) --------------------------------------------------------------------------------------


def test_peer_exchange_connects_nodes_that_never_met() -> None:
    world = trio_world()
    world.add_static_peer("org", "hub")  # org knows only hub
    world.add_static_peer("hub", "edge")  # hub knows edge
    connect(world, timeout_s=30)
    assert "edge" in world.nodes["org"].peer_names()
    learned = [e for e in world.events("peer.connected", node="org") if world.name_of(e.fields["node"]) == "edge"]
    assert learned, world.describe()


# ---- the World itself ---------------------------------------------------------------------------


def test_partition_breaks_cross_links_and_dials_fail_until_heal() -> None:
    world = trio_world()
    world.discover_all()
    connect(world)
    world.partition(["org"], ["hub", "edge"])
    world.run_for(0.1)
    assert world.nodes["org"].peer_names() == set()
    assert world.nodes["hub"].peer_names() == {"edge"}
    world.run_for(20)
    failures = world.events("peer.dial_failed", node="org")
    assert failures and all("timed out" in e.fields["reason"] for e in failures)
    world.heal()
    connect(world, timeout_s=120)


def test_a_violated_invariant_names_the_seed() -> None:
    world = trio_world()
    world.discover_all()

    def no_sessions_allowed(w: World) -> None:
        if w.nodes["org"].peer_names():
            raise w.fail("org has a session")

    world.invariants.append(no_sessions_allowed)
    with pytest.raises(Exception, match=f"seed={world.seed}"):
        world.run_for(10)


def test_bandwidth_limits_the_initial_sync_time() -> None:
    network = SimNetwork(seed=3, latency_s=0.01, bandwidth_bytes_per_s=20_000)
    world = make_world(network=network)
    world.add_node("org", identity=world.mesh.founder)
    for i in range(300):
        world.mutate("org", lambda s, i=i: s.put_asset(asset(world, i)))
    world.add_node("hub", role="hub")
    world.discover("hub", "org")
    took = sync(world)
    received = world.nodes["hub"].traffic.bytes_in
    assert took >= received / 20_000, (took, received)


def test_unknown_addresses_are_refused() -> None:
    world = make_world()
    world.add_node("org", identity=world.mesh.founder)
    world.inject("org", PeerDiscovered((("10.9.9.9", 7450),), None, "static"))
    world.run_for(5)
    failures = world.events("peer.dial_failed", node="org")
    assert failures and failures[0].fields["reason"] == "connection refused"
    assert isinstance(Dial(("10.9.9.9", 7450), None), Dial)
    assert isinstance(world.nodes["org"].state, MeshState)


# ---- the heads fast path and its fallback ---------------------------------------------------------


def test_one_change_behind_costs_a_few_hundred_bytes() -> None:
    world = make_world()
    world.add_node("org", role="organizer")
    world.add_node("edge")
    world.discover_all()
    connect(world)
    world.mutate("org", lambda s: [s.put_asset(asset(world, i)) for i in range(200)])
    sync(world)
    world.run_for(1.0)
    before = world.nodes["edge"].traffic.state_sync_bytes_in
    world.mutate("org", lambda s: s.tag_asset(asset(world, 3).cid, add=("encore",)))
    sync(world)
    received = world.nodes["edge"].traffic.state_sync_bytes_in - before
    assert tags_of(world, "edge", asset(world, 3).cid) == {"encore"}
    assert received < 2000, f"seed={world.seed}: one tag change cost {received} B of state"
    assert "StateChanges" in world.nodes["edge"].traffic.messages_in


def test_a_document_with_more_heads_than_a_message_holds_still_syncs() -> None:
    """A node killed right after receiving a large state, before it persisted all of it, comes
    back with thousands of concurrent heads; it must fall back to Automerge sync, not fail."""
    world = make_world()
    world.add_node("org", role="organizer")
    world.add_node("edge")
    # Both change the document before they meet: neither knows the other's heads, so the state
    # travels by Automerge sync, whose received changes are persisted at the next flush.
    world.mutate("org", lambda s: [s.put_asset(asset(world, i)) for i in range(1500)])
    world.mutate("edge", lambda s: s.put_asset(asset(world, 9999)))
    # A node offering snapshots would get one and persist it at once; one without takes this path.
    edge_core = world.nodes["edge"].live_core()
    edge_core.features = tuple(f for f in edge_core.features if f != "state-snapshot/1")
    world.discover_all()
    connect(world)
    sync(world)
    world.crash("edge")  # at once: the last received changes were never persisted
    world.restart("edge")
    heads = len(world.nodes["edge"].state.heads())
    assert heads > 1024, f"seed={world.seed}: only {heads} heads; the scenario did not arise"
    connect(world)
    sync(world, timeout_s=120)
    assert world.nodes["edge"].state.heads() == world.nodes["org"].state.heads()


def test_heads_that_arrived_under_later_changes_are_known() -> None:
    """A peer's heads are often changes we hold without ever having had them as our heads (they
    came in one batch with later changes on top). Two such nodes must take the heads fast path at
    once, not treat each other as diverged and fall back to Automerge sync."""
    world = make_world()
    for name in ("org", "b", "c"):
        world.add_node(name, role="organizer" if name == "org" else "edge")
    world.discover_all()
    world.partition(["org", "b"], ["c"])
    connect(world, ["org", "b"])
    world.mutate("org", lambda s: s.put_asset(asset(world, 1)))  # X: b gets it alone
    sync(world, ["org", "b"])
    world.partition(["org", "c"], ["b"])
    world.mutate("org", lambda s: s.put_asset(asset(world, 2)))  # Y, on top of X
    connect(world, ["org", "c"])
    sync(world, ["org", "c"])  # c gets X and Y together: X is never one of c's heads
    before = {n: world.nodes[n].live_core().counters.get("state.automerge_sync_sessions", 0) for n in ("b", "c")}
    world.partition(["b", "c"], ["org"])
    connect(world, ["b", "c"])
    took = sync(world, ["b", "c"])
    after = {n: world.nodes[n].live_core().counters.get("state.automerge_sync_sessions", 0) for n in ("b", "c")}
    assert after == before, f"seed={world.seed}: Automerge sync sessions {before} -> {after}"
    assert took < 1.0, f"seed={world.seed}: b and c took {took:.2f} s to converge"
    assert asset(world, 2).cid in {a.cid for a in world.nodes["b"].state.assets()}
