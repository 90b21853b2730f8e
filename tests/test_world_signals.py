"""Health signals, the members view and drill requests, on real NodeCores in the World."""

from __future__ import annotations

import os
import random

import pytest

from mesh.core.events import DataReceived
from mesh.errors import LocalProtocolError
from mesh.testing.content import build_release, random_files, seed_and_publish
from mesh.testing.sim import World
from mesh.wire import messages as m

SEED = int(os.environ.get("MESH_WORLD_SEED", "20241126"))


def connected_trio() -> World:
    print(f"World seed={SEED} (replay: MESH_WORLD_SEED={SEED})")
    world = World(SEED)
    world.add_node("org", identity=world.mesh.founder)
    world.add_node("hub", role="hub")
    world.add_node("edge", role="edge")
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "everyone connected")
    return world


def peer_row(world: World, on: str, about: str) -> dict:
    rows = world.nodes[on].live_core().status()["peers"]
    return next(row for row in rows if row["node_id"] == world.nodes[about].node_id)


def test_health_report_reaches_every_peer_and_only_the_latest_is_kept() -> None:
    world = connected_trio()
    edge = world.nodes["edge"].live_core()
    edge.set_health({"time": world.now, "ok": True, "checks": [{"name": "disk", "ok": True}]}, world.now)
    world.run_for(1.0)
    assert peer_row(world, "org", "edge")["health"]["ok"] is True
    edge.set_health({"time": world.now, "ok": False, "checks": [{"name": "disk", "ok": False}]}, world.now)
    world.run_for(1.0)
    for name in ("org", "hub"):
        health = peer_row(world, name, "edge")["health"]
        assert health["ok"] is False and health["checks"][0]["name"] == "disk"
    assert edge.status()["health"]["ok"] is False


def test_a_peer_that_connects_later_gets_the_current_report() -> None:
    print(f"World seed={SEED}")
    world = World(SEED)
    world.add_node("org", identity=world.mesh.founder)
    world.add_node("edge", role="edge")
    world.nodes["edge"].live_core().set_health({"ok": True, "time": 1.0}, world.now)
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "connected")
    world.run_for(1.0)
    assert peer_row(world, "org", "edge")["health"] == {"ok": True, "time": 1.0}


def test_report_too_large_for_a_signal_is_refused_locally() -> None:
    world = connected_trio()
    with pytest.raises(LocalProtocolError):
        world.nodes["edge"].live_core().set_health({"blob": "x" * (m.HEALTH_BYTES_MAX + 1)}, world.now)


def test_health_that_is_not_a_map_closes_that_session_only() -> None:
    world = connected_trio()
    hub = world.nodes["hub"]
    conn = next(s.conn_id for s in hub.live_core().peers() if world.name_of(s.node_id) == "edge")
    # A well-formed frame whose report decodes to a list: the peer is misbehaving.
    world.inject("hub", DataReceived(conn, m.encode(m.Health(b"\x82\x01\x02"))))
    assert "edge" not in hub.peer_names()
    assert "org" in hub.peer_names()


def test_members_view_shows_every_member_with_presence_and_last_seen() -> None:
    world = connected_trio()
    world.run_for(2.0)
    world.crash("edge")
    world.run_for(30.0)  # past the peer timeout
    members = {row["name"]: row for row in world.nodes["org"].live_core().status()["members"]}
    assert world.nodes["edge"].node_id in {row["node_id"] for row in members.values()}
    edge_row = next(row for row in members.values() if row["node_id"] == world.nodes["edge"].node_id)
    hub_row = next(row for row in members.values() if row["node_id"] == world.nodes["hub"].node_id)
    assert edge_row["online"] is False and edge_row["last_seen"] is not None
    assert edge_row["last_seen"] < world.now - 5
    assert hub_row["online"] is True and hub_row["role"] == "hub"


def test_drill_request_travels_to_every_node() -> None:
    world = connected_trio()
    world.mutate("org", lambda s: s.request_drill("d1", "7KQ2-M9X7", "photo", "org-node", 12.5))
    world.run_until(lambda w: all("d1" in n.state.drill_requests() for n in w.alive()), 10, "drill everywhere")
    assert world.nodes["edge"].state.drill_requests()["d1"] == {
        "subject": "7KQ2-M9X7", "scope": "photo", "by": "org-node", "at": 12.5}


def test_peer_release_progress_shows_in_status() -> None:
    world = connected_trio()
    assert peer_row(world, "org", "edge")["release"] is None  # no release yet
    rng = random.Random(f"{world.seed}/files")
    content = build_release(random_files(rng, 6, 64 * 1024, 600 * 1024, "file"))
    release_id = seed_and_publish(world, "org", content, "friday")
    world.run_until(lambda w: all(n.core.swarm is not None and n.core.swarm.complete and n.core.release.id == release_id
                                  for n in w.alive()), 120, "release complete")
    world.run_for(1.0)
    row = peer_row(world, "org", "edge")["release"]
    chunks = world.nodes["org"].core.swarm.chunks
    assert row["complete"] is True and row["have_chunks"] == row["total_chunks"] == len(chunks) > 0
