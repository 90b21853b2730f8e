"""`mesh doctor`: passes on a healthy node, fails on a full disk, a dead static peer, a failing
probe or a rotten chunk; with a running agent it also reports peers, mDNS and clock."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from tests.agents import Node, free_port, make_mesh, stop_all, wait_until


def _doctor(node: Node, *args: str) -> tuple[int, dict]:
    result = node.cli("doctor", "--json", *args, check=False)
    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    return result.returncode, json.loads(result.stdout)


def _checks(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doctor.toml"
    path.write_text(text)
    return path


def _healthy(tmp_path: Path) -> Node:
    node = Node(tmp_path / "org")
    node.cli("init", "popup-test")
    (tmp_path / "poster.txt").write_bytes(b"poster " * 100)
    node.cli("add", str(tmp_path / "poster.txt"))
    return node


def test_passes_with_reachable_peer_and_passing_probes(tmp_path: Path) -> None:
    node = _healthy(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = _config(tmp_path, f"""
mdns = false
peers = ["127.0.0.1:{port}"]
[health]
disk_free_min = "1MiB"
[[health.probe]]
name = "camera"
tcp = "127.0.0.1:{port}"
[[health.probe]]
name = "drive"
path = "{tmp_path}"
[[health.probe]]
name = "ups"
command = ["{sys.executable}", "-c", "print('online')"]
""")
        code, report = _doctor(node, "--config", str(config))
    assert code == 0, report
    checks = _checks(report)
    assert report["ok"] and not report["agent_running"]
    assert {"disk", "store", f"peer 127.0.0.1:{port}", "probe camera", "probe drive", "probe ups", "mdns"} <= set(checks)
    assert checks["store"]["detail"].startswith("1 sampled")


def test_full_disk_fails(tmp_path: Path) -> None:
    node = _healthy(tmp_path)
    config = _config(tmp_path, 'mdns = false\n[health]\ndisk_free_min = "1PiB"\n')
    code, report = _doctor(node, "--config", str(config))
    assert code == 1
    checks = _checks(report)
    assert not checks["disk"]["ok"] and "need" in checks["disk"]["detail"]
    assert checks["store"]["ok"]


def test_dead_static_peer_fails(tmp_path: Path) -> None:
    node = _healthy(tmp_path)
    dead = free_port()  # nothing listens there
    code, report = _doctor(node, "--peer", f"127.0.0.1:{dead}")
    assert code == 1
    check = _checks(report)[f"peer 127.0.0.1:{dead}"]
    assert not check["ok"] and "unreachable" in check["detail"]


def test_failing_probes_fail(tmp_path: Path) -> None:
    node = _healthy(tmp_path)
    config = _config(tmp_path, f"""
[[health.probe]]
name = "bridge"
command = ["{sys.executable}", "-c", "import sys; sys.exit('bridge offline')"]
[[health.probe]]
name = "slow"
command = ["{sys.executable}", "-c", "import time; time.sleep(10)"]
timeout_s = 0.5
[[health.probe]]
name = "usb"
path = "{tmp_path / 'not-mounted'}"
[[health.probe]]
name = "web"
http = "http://127.0.0.1:{free_port()}/status"
timeout_s = 2
""")
    code, report = _doctor(node, "--config", str(config))
    assert code == 1
    checks = _checks(report)
    assert "bridge offline" in checks["probe bridge"]["detail"]
    assert "timed out" in checks["probe slow"]["detail"]
    assert "missing" in checks["probe usb"]["detail"]
    assert "unreachable" in checks["probe web"]["detail"]
    assert not any(checks[f"probe {name}"]["ok"] for name in ("bridge", "slow", "usb", "web"))


def test_rotten_chunk_fails_the_store_sample(tmp_path: Path) -> None:
    node = _healthy(tmp_path)
    chunk = next((node.home / "store" / "chunks").rglob("b*"))
    chunk.write_bytes(b"rotten")
    code, report = _doctor(node)
    assert code == 1
    assert not _checks(report)["store"]["ok"]


def test_with_running_agents_reports_peers_mdns_and_clock(tmp_path: Path) -> None:
    org, (edge,) = make_mesh(tmp_path, 1)
    try:
        org.start("--no-mdns")
        edge.start("--no-mdns", "--peer", org.address)
        wait_until(lambda: org.node_id in edge.peers(), 20, "edge to connect")
        wait_until(lambda: edge.json("status").get("health") is not None, 20, "the first health report")
        config = _config(tmp_path, "mdns = false\n[health]\npeers_min = 1\ndisk_free_min = \"1MiB\"\n")
        code, report = _doctor(edge, "--config", str(config), "--peer", org.address)
        assert code == 0, report
        checks = _checks(report)
        assert report["agent_running"]
        assert checks["peers"]["ok"] and checks["peers"]["detail"].startswith("1 connected")
        assert checks["mdns"]["ok"] and "disabled" in checks["mdns"]["detail"]
        assert checks["clock"]["ok"]
        config.write_text("mdns = false\n[health]\npeers_min = 3\n")
        code, report = _doctor(edge, "--config", str(config))
        assert code == 1 and not _checks(report)["peers"]["ok"]
    finally:
        stop_all([org, edge])


def test_table_output(tmp_path: Path) -> None:
    node = _healthy(tmp_path)
    result = node.cli("doctor", "--peer", f"127.0.0.1:{free_port()}", check=False)
    text = result.stdout.decode()
    assert result.returncode == 1
    assert "FAIL" in text and "disk" in text and "some checks failed" in text
