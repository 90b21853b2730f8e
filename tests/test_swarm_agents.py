"""Real processes: an organizer and three edges swarm a 64 MiB release found by mDNS alone."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.testing.netns import netns_available
from tests.agents import Node, PrivateNet, free_port, make_mesh, stop_all, wait_until

RELEASE_FILES = 16
FILE_BYTES = 4 * 1024 * 1024
LINK_BYTES_PER_S = 24_000_000  # all nodes share it: ~8 s for three edges to fetch 64 MiB each

FETCH_SCRIPT = """
import hashlib, json, sys, urllib.request
out = {}
for base in sys.argv[2:]:
    for path in json.loads(sys.argv[1]):
        with urllib.request.urlopen(f"{base}/release/current/{path}", timeout=30) as response:
            out[f"{base}/{path}"] = hashlib.sha256(response.read()).hexdigest()
print(json.dumps(out))
"""


def _release_dir(root: Path) -> dict[str, str]:
    root.mkdir()
    digests = {}
    for index in range(RELEASE_FILES):
        data = os.urandom(FILE_BYTES - index * 1000)
        name = f"media/clip-{index:02d}.bin" if index % 2 else f"page-{index:02d}.html"
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def _stored_bytes(node: Node) -> int:
    db = sqlite3.connect(node.home / "store" / "index.sqlite")
    try:
        return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM chunks").fetchone()[0])
    finally:
        db.close()


def _release(node: Node) -> dict:
    return node.json("status").get("release") or {}


def test_release_swarms_to_three_edges_over_mdns_with_a_sigkill_resume(tmp_path: Path) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    ports = [free_port() for _ in range(4)]
    org, edges = make_mesh(tmp_path, 3, ports)
    digests = _release_dir(tmp_path / "site")
    made = org.json("release", "create", "spring", str(tmp_path / "site"))
    org.cli("release", "publish", made["id"])
    http_ports = {edge.home.name: free_port() for edge in edges}
    net = PrivateNet()
    try:
        net.cap(LINK_BYTES_PER_S)  # so that the victim is still fetching when it is killed
        org.start(prefix=net.prefix)
        for edge in edges:
            edge.start("--http", f"127.0.0.1:{http_ports[edge.home.name]}", prefix=net.prefix)
        victim = edges[2]
        wait_until(lambda: _release(victim).get("have_bytes", 0) >= 16 * 1024 * 1024, 120, "victim a quarter done")
        victim.stop(signal.SIGKILL)
        had = _stored_bytes(victim)
        assert had < RELEASE_FILES * FILE_BYTES - 8 * 1024 * 1024, f"the victim had {had} B when killed: not halfway"
        victim.start("--http", f"127.0.0.1:{http_ports[victim.home.name]}", prefix=net.prefix)

        for edge in edges:
            done = edge.cli("wait", "--timeout", "180", "--json")
            assert json.loads(done.stdout)["id"] == made["id"]
        total = _release(victim)["total_bytes"]
        refetched = sum(p["chunk_bytes_received"] for p in victim.json("status")["peers"])
        slack = 8 * 1024 * 1024  # endgame duplicates and chunks in flight at the kill
        assert refetched <= (total - had) + slack, f"refetched {refetched} of {total}, had {had} before restart"

        bases = [f"http://127.0.0.1:{port}" for port in http_ports.values()]
        fetch = subprocess.run([*net.prefix, sys.executable, "-c", FETCH_SCRIPT, json.dumps(sorted(digests)), *bases],
                               capture_output=True, timeout=120)
        assert fetch.returncode == 0, fetch.stderr.decode()
        served = json.loads(fetch.stdout)
        for base in bases:
            for path, digest in digests.items():
                assert served[f"{base}/{path}"] == digest, path
    finally:
        stop_all([org, *edges])
        net.close()
