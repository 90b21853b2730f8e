"""Fresh boxes join with a fleet key and no command typed: real `mesh up` processes, on loopback
and, for discovery by mDNS alone, inside a private network namespace."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from mesh.testing.netns import netns_available
from tests.agents import Node, agents_in_namespace, stop_all, wait_until
from tests.conftest import mesh_env

JOIN_S = 40  # generous for a loaded 2-core machine


def _organizer(tmp_path: Path) -> tuple[Node, str]:
    """An organizer home with a published release; the release id."""
    org = Node(tmp_path / "org")
    org.cli("init", "Spring pop-up", "--node-name", "org")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>Tonight</h1>")
    (site / "map.bin").write_bytes(os.urandom(300_000))
    release = org.json("release", "create", "tonight", str(site))["id"]
    org.cli("release", "publish", release)
    return org, release


def _fresh_box(tmp_path: Path, name: str, key_file: Path, mdns: bool) -> tuple[Node, Path]:
    """A box with an empty home and a config that names the fleet key file."""
    box = Node(tmp_path / name)
    config = tmp_path / f"{name}.toml"
    config.write_text(f'enroll = "{key_file.name}"\nmdns = {"true" if mdns else "false"}\n')
    return box, config


def _launch(box: Node, config: Path, prefix: tuple[str, ...] = ()) -> None:
    """`mesh up --config` on the fresh home, without waiting (it joins first)."""
    log = open(box.log_path, "ab")
    box.proc = subprocess.Popen([*prefix, *box.up_argv("--config", str(config))], stdout=log, stderr=log,
                                env=mesh_env(), start_new_session=True)
    log.close()


def _status(box: Node) -> dict:
    result = box.cli("status", "--json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _release_complete(box: Node, release: str) -> bool:
    found = _status(box).get("release") or {}
    return found.get("id") == release and bool(found.get("complete"))


def test_a_fleet_key_admits_its_uses_then_no_more_and_a_revoked_key_admits_no_new_box(tmp_path: Path) -> None:
    org, release = _organizer(tmp_path)
    boxes: list[Node] = []
    try:
        org.start("--no-mdns")
        key = tmp_path / "fleet.key"  # made while the agent runs: the key carries its address
        key.write_text(org.cli("invite", "--fleet", "--uses", "2", "--expires", "1h").stdout.decode())
        for name in ("box1", "box2", "box3"):
            box, config = _fresh_box(tmp_path, name, key, mdns=False)
            _launch(box, config)
            boxes.append(box)
            wait_until(lambda b=box: (b.home / "home.json").exists(), JOIN_S, f"{name} to join by itself")
            if name != "box3":
                wait_until(lambda b=box: b.node_id in org.peers(), JOIN_S, f"{name} admitted")
        first, second, third = boxes
        for box in (first, second):
            wait_until(lambda b=box: _release_complete(b, release), JOIN_S, f"{box.home.name} to get the release")
            assert first.json("id")["role"] == "edge"
        assert first.json("id")["name"] != second.json("id")["name"], "boxes from one image get distinct names"
        wait_until(lambda: "fleet key used up" in org.log(), JOIN_S, "the third box refused, with the reason")
        wait_until(lambda: "fleet key used up" in third.log(), JOIN_S, "the third box told why")
        assert third.node_id not in org.peers() and third.proc.poll() is None, "refused, and still running"
        assert "Spring pop-up" in (first.home / "home.json").read_text(), "the event's name, for its pages"

        second_key = tmp_path / "second.key"
        second_key.write_text(org.cli("invite", "--fleet", "--uses", "5").stdout.decode())
        early, config = _fresh_box(tmp_path, "early", second_key, mdns=False)
        _launch(early, config)
        boxes.append(early)
        wait_until(lambda: (early.home / "home.json").exists() and early.node_id in org.peers(), JOIN_S, "admitted")
        revoked = org.json("invite", "revoke", str(second_key))
        assert revoked["uses"] == 1
        late, config = _fresh_box(tmp_path, "late", second_key, mdns=False)
        _launch(late, config)
        boxes.append(late)
        wait_until(lambda: "fleet key revoked" in org.log(), JOIN_S, "a box with the revoked key refused")
        wait_until(lambda: "fleet key revoked" in late.log(), JOIN_S, "... and told why")
        assert late.node_id not in org.peers()
        assert early.node_id in org.peers(), "boxes that joined before stay"
    finally:
        stop_all([*boxes, org])


def test_a_bad_key_is_one_line_and_the_box_keeps_waiting(tmp_path: Path) -> None:
    org, _ = _organizer(tmp_path)
    expired = tmp_path / "expired.key"
    expired.write_text(org.cli("invite", "--fleet", "--uses", "3", "--expires", "1s").stdout.decode())
    time.sleep(1.5)
    box, config = _fresh_box(tmp_path, "box", expired, mdns=False)
    try:
        _launch(box, config)
        wait_until(lambda: "waiting to join" in box.log(), JOIN_S, "the box to say why it waits")
        line = next(line for line in box.log().splitlines() if line.startswith("waiting to join"))
        assert "expired" in line and "Traceback" not in box.log()
        assert box.proc.poll() is None, "it keeps waiting for a usable key"
        assert not (box.home / "home.json").exists()
        expired.write_text(org.cli("invite", "--fleet", "--uses", "3").stdout.decode())  # the crew replaces it
        wait_until(lambda: (box.home / "home.json").exists(), JOIN_S, "the box to join with the new key")
    finally:
        stop_all([box])


def test_three_fresh_boxes_find_the_mesh_by_mdns_and_get_the_release(tmp_path: Path) -> None:
    """No address anywhere: the fleet key is made before any agent runs, and the boxes find the
    organizer by mDNS alone, inside a private namespace."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    org, release = _organizer(tmp_path)
    key = tmp_path / "fleet.key"
    key.write_text(org.cli("invite", "--fleet", "--uses", "3").stdout.decode())
    boxes = []
    runs: list[tuple[Node, tuple[str, ...]]] = [(org, ())]
    for index in range(3):
        box, config = _fresh_box(tmp_path, f"box{index + 1}", key, mdns=True)
        boxes.append(box)
        runs.append((box, ("--config", str(config))))
    with agents_in_namespace(runs):
        for box in boxes:
            wait_until(lambda b=box: _release_complete(b, release), 90, f"{box.home.name} to join and get the release")
        ids = {b.node_id for b in boxes}
        wait_until(lambda: ids <= org.peers(), JOIN_S, "every box in the organizer's peers")
