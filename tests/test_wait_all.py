"""`mesh release publish ID --wait-all`: returns only once every online node holds and verified the
release (one edge is frozen with SIGSTOP to make it the slowest); times out naming the laggard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agents import Node, make_mesh, stop_all, wait_until
from tests.conftest import assert_one_line_error, mesh_env

CONVERGE_S = 30
FROZEN_S = 4.0


def _release(org: Node, tmp_path: Path, name: str, size: int) -> str:
    site = tmp_path / name
    site.mkdir()
    (site / "index.html").write_bytes(f"<h1>{name}</h1>".encode())
    (site / "video.bin").write_bytes(os.urandom(size))
    return org.json("release", "create", name, str(site))["id"]


def _mesh_running(tmp_path: Path) -> tuple[Node, list[Node]]:
    org, edges = make_mesh(tmp_path, 2)
    org.start("--no-mdns")
    for edge in edges:
        edge.start("--no-mdns", "--peer", org.address, "--log-format", "json")
    for node in (org, *edges):
        wait_until(lambda n=node: len(n.peers()) == 2, CONVERGE_S, f"{node.home.name} to see both peers")
    return org, edges


def _publish_wait(org: Node, release_id: str, timeout_s: float) -> subprocess.Popen:
    argv = [sys.executable, "-m", "mesh", "--home", str(org.home), "release", "publish", release_id,
            "--wait-all", "--timeout", str(timeout_s), "--json"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mesh_env())


def _completed_at(node: Node, release_id: str) -> float | None:
    """When the node logged `release.complete` for the release (its JSON log)."""
    for line in node.log().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == "release.complete" and doc.get("id") == release_id:
                return doc["ts"]
    return None


def _release_of(node: Node) -> dict:
    return node.json("status").get("release") or {}


@pytest.mark.slow
def test_returns_only_after_the_slowest_node_verified(tmp_path: Path) -> None:
    org, (fast, slow) = _mesh_running(tmp_path)
    try:
        release_id = _release(org, tmp_path, "big-site", 6 * 1024 * 1024)
        os.killpg(slow.proc.pid, signal.SIGSTOP)  # still connected, receives nothing
        publish = _publish_wait(org, release_id, 90)
        time.sleep(FROZEN_S)
        assert publish.poll() is None, publish.communicate()
        wait_until(lambda: _release_of(fast).get("complete") and _release_of(fast)["id"] == release_id,
                   CONVERGE_S, "the fast edge to finish while the slow one is frozen")
        assert publish.poll() is None  # the fast edge alone is not enough
        resumed_at = time.monotonic()
        os.killpg(slow.proc.pid, signal.SIGCONT)
        out, err = publish.communicate(timeout=90)
        returned_at, returned_wall = time.monotonic(), time.time()
        assert publish.returncode == 0, err.decode()
        assert json.loads(out)["id"] == release_id
        assert returned_at > resumed_at
        for edge in (fast, slow):  # each edge had verified the whole release before it returned
            completed = _completed_at(edge, release_id)
            assert completed is not None and completed <= returned_wall, (edge.home.name, completed, returned_wall)
        for node in (org, fast, slow):  # and says so in its own status (refreshed every second)
            wait_until(lambda n=node: _release_of(n).get("id") == release_id and _release_of(n).get("complete"),
                       5, f"{node.home.name} status to show the release complete")
    finally:
        if slow.proc is not None:
            os.killpg(slow.proc.pid, signal.SIGCONT)
        stop_all([org, fast, slow])


@pytest.mark.slow
def test_times_out_naming_the_nodes_behind(tmp_path: Path) -> None:
    org, (fast, slow) = _mesh_running(tmp_path)
    try:
        release_id = _release(org, tmp_path, "site", 2 * 1024 * 1024)
        os.killpg(slow.proc.pid, signal.SIGSTOP)
        publish = _publish_wait(org, release_id, 3)
        _, err = publish.communicate(timeout=60)
        assert publish.returncode == 1
        text = err.decode()
        assert "timed out after 3s" in text and "door-2" in text and "Traceback" not in text
        assert "door-1 (" not in text or _release_of(fast).get("complete") is not True
    finally:
        os.killpg(slow.proc.pid, signal.SIGCONT)
        stop_all([org, fast, slow])


def test_needs_a_running_agent(tmp_path: Path) -> None:
    org = Node(tmp_path / "org")
    org.cli("init", "popup-test")
    release_id = _release(org, tmp_path, "site", 1000)
    result = org.cli("release", "publish", release_id, "--wait-all", check=False)
    assert_one_line_error(result, "agent running")
    current = [row for row in org.json("release", "ls") if row["current"]]
    assert not current  # refused before publishing
