"""Bootstrap from a snapshot: a node far behind gets the sender's compressed `save()` instead of
its history, merges it into its own document and persists it as it arrived.

Real NodeCores in the deterministic World (real Automerge, real wire codec). Each test prints its
seed; `MESH_WORLD_SEED=N` replays one. Hostile snapshots are wire messages injected into a real
session, as a misbehaving member would send them.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.content.cid import cid_for_raw
from mesh.core.events import DataReceived
from mesh.core.node import FEATURE_STATE_SNAPSHOT, FEATURES, SNAPSHOT_CHANGES_MIN
from mesh.drivers.statefile import StateFile
from mesh.state.document import MeshState
from mesh.state.records import AssetRecord
from mesh.testing.sim import World
from mesh.wire import messages as m

SEED = int(os.environ.get("MESH_WORLD_SEED", "20261203"))
HISTORY_ASSETS = SNAPSHOT_CHANGES_MIN  # two changes each (skeleton, fields): twice the threshold
OLD_FEATURES = tuple(f for f in FEATURES if f != FEATURE_STATE_SNAPSHOT)


def make_world(seed: int = SEED) -> World:
    print(f"World seed={seed} (replay: MESH_WORLD_SEED={seed})")
    return World(seed)


def asset(world: World, index: int, tags: tuple[str, ...] = ()) -> AssetRecord:
    return AssetRecord(
        cid=str(cid_for_raw(f"asset {index}".encode())), name=f"photo-{index}.jpg", size=1000 + index,
        media_type="image/jpeg", added_at=1.75e9 + index, added_by=world.mesh.founder.node_id,
        tags=frozenset(tags),
    )


def add_assets(world: World, name: str, indices: range, tags: tuple[str, ...] = ("crowd",)) -> None:
    world.mutate(name, lambda s: [s.put_asset(asset(world, i, tags)) for i in indices])


def record_self(world: World, name: str) -> None:
    """What `mesh join` does before the agent first runs: the node's own member entry, a change
    no peer knows (so its heads are unknown to all)."""
    handle = world.nodes[name]
    world.mutate(name, lambda s: s.put_member(handle.node_id, handle.identity.chain, "edge", name, world.now))


def converge(world: World, names: list[str] | None = None, timeout_s: float = 60.0) -> float:
    world.run_until(lambda w: w.all_connected(names), 30, "everyone connected")
    return world.run_until(lambda w: w.converged(names), timeout_s, "documents converged")


def counter(world: World, name: str, key: str) -> int:
    return world.nodes[name].live_core().counters.get(key, 0)


def content(state: MeshState) -> tuple:
    """What a reader of the document sees (heads compared separately)."""
    return (state.assets(), [(x.node_id, x.chain, x.role) for x in state.members()],
            state.tag_descriptions(), state.release_blobs(), state.revocation_blobs())


def org_with_history(world: World, assets: int = HISTORY_ASSETS) -> None:
    world.add_node("org", identity=world.mesh.founder)
    add_assets(world, "org", range(assets))


# ---- the path ----------------------------------------------------------------------------------


def test_a_new_node_gets_one_snapshot_about_the_size_of_save() -> None:
    world = make_world()
    org_with_history(world)
    save_bytes = len(world.nodes["org"].state.save())
    fresh = world.add_node("fresh")
    world.discover("fresh", "org")
    converge(world)
    assert counter(world, "org", "state.snapshots_sent") == 1
    assert counter(world, "fresh", "state.snapshots_received") == 1
    assert counter(world, "fresh", "state.automerge_sync_sessions") == 0
    assert fresh.traffic.messages_in["StateChanges"] <= 1  # nothing replayed (at most an empty batch)
    wire_bytes = fresh.traffic.bytes_in + fresh.traffic.bytes_out
    assert wire_bytes < 1.5 * save_bytes, f"seed={world.seed}: {wire_bytes} vs save {save_bytes}"
    assert content(fresh.state) == content(world.nodes["org"].state)


def test_a_node_that_recorded_itself_keeps_its_change_and_still_gets_a_snapshot() -> None:
    """Its heads are unknown to the peer: the peer judges by the change count (StateSize)."""
    world = make_world()
    org_with_history(world)
    world.add_node("fresh")
    record_self(world, "fresh")
    add_assets(world, "fresh", range(100_000, 100_003), ("mine",))
    world.discover("fresh", "org")
    converge(world)
    assert counter(world, "fresh", "state.snapshots_received") == 1
    assert counter(world, "fresh", "state.automerge_sync_sessions") == 0
    org = world.nodes["org"].state
    assert org.member(world.nodes["fresh"].node_id) is not None
    assert org.asset(asset(world, 100_001).cid) is not None  # its own changes reached the org
    assert content(world.nodes["fresh"].state) == content(org)


def test_peers_without_the_feature_keep_the_old_path() -> None:
    world = make_world()
    org_with_history(world)
    world.add_node("old")
    world.nodes["old"].live_core().features = OLD_FEATURES  # before its first Hello
    world.discover("old", "org")
    converge(world)
    assert counter(world, "org", "state.snapshots_sent") == 0
    assert world.nodes["old"].traffic.messages_in["StateSnapshotPart"] == 0
    assert world.nodes["old"].traffic.messages_in["StateSize"] == 0
    world.nodes["org"].live_core().features = OLD_FEATURES  # an old sender to a new node
    world.add_node("fresh")
    world.discover("fresh", "org")
    converge(world, ["org", "fresh"])
    assert counter(world, "fresh", "state.snapshots_received") == 0
    assert content(world.nodes["fresh"].state) == content(world.nodes["org"].state)


def test_one_change_behind_still_gets_the_change_not_a_snapshot() -> None:
    world = make_world()
    org_with_history(world)
    world.add_node("edge")
    world.discover("edge", "org")
    converge(world)
    world.mutate("org", lambda s: s.tag_asset(asset(world, 7).cid, add=("encore",)))
    converge(world)
    assert counter(world, "org", "state.snapshots_sent") == 1  # the first one only
    assert "encore" in world.nodes["edge"].state.asset(asset(world, 7).cid).tags


def test_a_bootstrapped_node_survives_kill_9() -> None:
    world = make_world()
    org_with_history(world)
    fresh = world.add_node("fresh")
    record_self(world, "fresh")
    world.discover("fresh", "org")
    converge(world)
    world.run_for(1.0)  # past state_flush_s
    heads, seen = fresh.state.heads(), content(fresh.state)
    world.crash("fresh")
    world.crash("org")  # nobody to catch it up again: what it has is what it persisted
    world.restart("fresh")
    assert fresh.state.heads() == heads
    assert content(fresh.state) == seen


def test_a_snapshot_record_loads_from_the_state_file(tmp_path: Path) -> None:
    """The agent persists PersistChanges as a log record: a snapshot among change records loads
    (whole file) and reads back in another process (`read_new`)."""
    source = MeshState(b"\x01" * 16)
    for index in range(50):
        source.put_asset(AssetRecord(str(cid_for_raw(f"a{index}".encode())), f"{index}.jpg", 1, "image/jpeg",
                                     1.0, "x", frozenset({"crowd"})))
    local = MeshState(b"\x02" * 16)
    local.put_asset(AssetRecord(str(cid_for_raw(b"mine")), "mine.jpg", 1, "image/jpeg", 1.0, "y", frozenset()))
    state_file = StateFile(tmp_path / "state")
    state_file.append(local.changes_since([]))
    reader = state_file.load(b"\x03" * 16)
    local.merge_snapshot(MeshState.from_snapshot(source.save()))
    state_file.append(source.save())
    assert state_file.read_new(reader) and sorted(reader.heads()) == sorted(local.heads())
    assert state_file.load(b"\x04" * 16).heads() == local.heads()
    state_file.compact()
    assert state_file.load(b"\x05" * 16).heads() == local.heads()


# ---- hostile snapshots -------------------------------------------------------------------------


def quiet_pair(world: World) -> tuple[int, list[bytes], tuple]:
    """org and edge in step (no snapshot needed); the edge's session with org and its state."""
    world.add_node("org", identity=world.mesh.founder)
    add_assets(world, "org", range(20))
    world.add_node("edge")
    world.discover("edge", "org")
    converge(world)
    world.run_for(1.0)
    edge = world.nodes["edge"]
    conn = next(s.conn_id for s in edge.live_core().peers() if world.name_of(s.node_id) == "org")
    return conn, list(edge.persisted), (edge.state.heads(), content(edge.state))


def send_to_edge(world: World, conn: int, *msgs: m.Message) -> None:
    world.inject("edge", DataReceived(conn, b"".join(m.encode(msg) for msg in msgs)))


def snapshot_messages(data: bytes, heads: tuple[bytes, ...], total: int | None = None) -> list[m.Message]:
    parts = [m.StateSnapshotPart(data[i:i + 512 * 1024]) for i in range(0, len(data), 512 * 1024)]
    return [m.StateSnapshotBegin(len(data) if total is None else total, heads), *parts]


def assert_closed_and_unchanged(world: World, persisted: list[bytes], before: tuple, reason: str) -> None:
    edge = world.nodes["edge"]
    assert "org" not in edge.peer_names()
    closing = world.events("peer.closing", node="edge")
    assert closing and reason in closing[-1].fields["reason"], closing[-1:]
    assert edge.live_core().counters.get("state.snapshots_received", 0) == 0
    assert edge.persisted == persisted
    assert (edge.state.heads(), content(edge.state)) == before


def foreign_document(seed: int) -> bytes:
    """The document of another mesh: real members of that mesh, real assets."""
    other = World(seed + 1)
    other.add_node("org", identity=other.mesh.founder)
    other.add_node("edge")
    add_assets(other, "org", range(5))
    other.discover("edge", "org")
    converge(other)
    return other.nodes["org"].state.save()


def test_a_huge_claimed_snapshot_closes_the_session_before_any_part() -> None:
    world = make_world()
    conn, persisted, before = quiet_pair(world)
    send_to_edge(world, conn, m.StateSnapshotBegin(m.STATE_SNAPSHOT_BYTES_MAX, ()))
    assert_closed_and_unchanged(world, persisted, before, "exceeds state_sync_bytes_max")


def test_garbage_snapshots_close_the_session_and_change_nothing() -> None:
    cases = [
        ("not a sequence of Automerge chunks", lambda w: snapshot_messages(b"\x00junk" * 1000, ())),
        ("exactly one saved Automerge document", lambda w: snapshot_messages(
            w.nodes["org"].state.changes_since([]), tuple(w.nodes["org"].state.heads()))),
        ("not a loadable Automerge document", lambda w: snapshot_messages(_flip(w.nodes["org"].state.save()), ())),
        ("heads are not the ones announced", lambda w: snapshot_messages(w.nodes["org"].state.save(), ())),
        ("parts exceed the size announced", lambda w: snapshot_messages(b"x" * 100, (), total=10)),
        ("part without StateSnapshotBegin", lambda w: snapshot_messages(b"x" * 10, ())[1:]),
        ("before the last one ended", lambda w: snapshot_messages(b"x" * 10, (), total=20)[:1] * 2),
        ("did not grow from the shared state's genesis", lambda w: snapshot_messages(*_alien(w))),
    ]
    for reason, messages in cases:
        world = make_world()
        conn, persisted, before = quiet_pair(world)
        send_to_edge(world, conn, *messages(world))
        assert_closed_and_unchanged(world, persisted, before, reason)


def test_another_meshs_document_closes_the_session_and_changes_nothing() -> None:
    world = make_world()
    conn, persisted, before = quiet_pair(world)
    data = foreign_document(world.seed)
    heads = tuple(MeshState.from_snapshot(data).heads())
    send_to_edge(world, conn, *snapshot_messages(data, heads))
    assert_closed_and_unchanged(world, persisted, before, "no member credential of this mesh")


def test_a_snapshot_to_a_node_that_did_not_offer_it_closes_the_session() -> None:
    world = make_world()
    conn, persisted, before = quiet_pair(world)
    world.nodes["edge"].live_core().features = OLD_FEATURES
    send_to_edge(world, conn, *snapshot_messages(world.nodes["org"].state.save(), ()))
    assert_closed_and_unchanged(world, persisted, before, "did not offer state-snapshot/1")


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def _alien(world: World) -> tuple[bytes, tuple[bytes, ...]]:
    """A valid Automerge document that never saw our genesis."""
    import automerge.core as am

    doc = am.Document(b"\x07" * 16)
    with doc.transaction() as tx:
        tx.put(am.ROOT, "schema", am.ScalarType.Int, 1)
    return doc.save(), tuple(sorted(doc.get_heads()))


# ---- property: a snapshot ends where the old path ends ------------------------------------------

op = st.tuples(
    st.integers(0, 2),  # which source node writes (modulo how many there are)
    st.sampled_from(["put", "tag", "untag", "remove", "run"]),
    st.integers(0, 15),  # which asset
    st.sampled_from(["crowd", "stage-a", "encore"]),
)


def _apply(world: World, name: str, kind: str, index: int, tag: str) -> None:
    cid = asset(world, index).cid
    if kind == "run":
        world.run_for(0.3)
    elif kind == "put":
        add_assets(world, name, range(index, index + 1), (tag,))
    elif world.nodes[name].state.asset(cid) is not None:
        if kind == "remove":
            world.mutate(name, lambda s: s.remove_asset(cid))
        else:
            world.mutate(name, lambda s: s.tag_asset(cid, **{"add" if kind == "tag" else "remove": (tag,)}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sources=st.integers(2, 3), ops=st.lists(op, min_size=1, max_size=30), partitioned=st.booleans(),
       local=st.booleans(), seed=st.integers(0, 2**16))
def test_property_snapshot_bootstrap_ends_with_the_document_the_old_path_ends_with(
        sources: int, ops: list, partitioned: bool, local: bool, seed: int) -> None:
    world = make_world(seed)
    names = ["org"] + [f"src-{i}" for i in range(1, sources)]
    world.add_node("org", identity=world.mesh.founder)
    for name in names[1:]:
        world.add_node(name)
    world.discover_all()
    converge(world)
    if partitioned:  # concurrent histories, merged before the newcomers come
        world.partition(*[[name] for name in names])
    for who, kind, index, tag in ops:
        _apply(world, names[who % sources], kind, index, tag)
    world.heal()
    converge(world)
    for name in names:
        world.nodes[name].live_core().snapshot_changes_min = 1  # snapshot even a small history
    newcomers = {"by-snapshot": FEATURES, "by-changes": OLD_FEATURES}
    for newcomer, features in newcomers.items():
        world.add_node(newcomer)
        world.nodes[newcomer].live_core().features = features
        if local:
            record_self(world, newcomer)
    for newcomer in newcomers:
        world.discover(newcomer, names[-1])
    converge(world)
    assert counter(world, "by-snapshot", "state.snapshots_received") >= 1, world.describe()
    assert counter(world, "by-changes", "state.snapshots_received") == 0
    expected = content(world.nodes["by-changes"].state)
    for name in world.nodes:
        assert world.nodes[name].state.heads() == world.nodes["by-changes"].state.heads()
        assert content(world.nodes[name].state) == expected, f"seed={seed}: {name} differs"


# ---- real processes ----------------------------------------------------------------------------


def test_a_joined_agent_bootstraps_from_a_snapshot_and_keeps_it_after_kill_9(tmp_path: Path) -> None:
    """Two `mesh up` processes on loopback: the edge joined offline (it recorded itself), the
    organizer's state holds a history past the snapshot threshold."""
    import secrets
    import signal

    from mesh.drivers.home import Home
    from mesh.state.document import actor_id
    from tests.agents import make_mesh, stop_all, wait_until

    org, (edge,) = make_mesh(tmp_path, 1)
    home = Home.open(org.home)
    with StateFile(home.state_path).transaction(actor_id(home.info.node_id, secrets.token_bytes(8))) as state:
        for index in range(HISTORY_ASSETS):
            state.put_asset(AssetRecord(str(cid_for_raw(f"real {index}".encode())), f"{index}.jpg", 1000 + index,
                                        "image/jpeg", 1.75e9, home.info.node_id, frozenset({"crowd"})))

    def heads(node) -> tuple:
        return tuple(node.json("status")["state"]["heads"])

    try:
        org.start("--no-mdns")
        edge.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: heads(edge) == heads(org), 30, "identical heads")
        assert "state.snapshot_merged" in edge.log(), edge.log()[-2000:]
        assert "state.snapshot_sent" in org.log()
        expected = heads(org)
        edge.stop(signal.SIGKILL)
        org.stop()
        on_disk = StateFile(Home.open(edge.home).state_path).load(b"\x09" * 16).heads()
        assert tuple(h.hex() for h in on_disk) == expected  # what it persisted
        assert len(edge.json("ls")) == HISTORY_ASSETS
    finally:
        stop_all([org, edge])
