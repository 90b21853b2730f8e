"""configs/*.toml load and validate; bad files are refused with one line naming the key."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from mesh.config import AgentConfig
from mesh.drivers.settings import Flags, build_config, config_from_dict, load_config, parse_size_bytes
from mesh.errors import UsageError
from tests.agents import Node, free_port, wait_until
from tests.conftest import REPO, assert_one_line_error

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", ["organizer.toml", "edge-node.toml", "coop-hub.toml"])
def test_each_shipped_config_loads(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert isinstance(config, AgentConfig)
    assert config.listen[1] == 7450 and config.http is not None
    assert config.health.interval_s > 0 and config.health.disk_free_bytes_min > 0


def test_roles_differ_where_they_should() -> None:
    organizer, edge, hub = (load_config(CONFIGS / f"{n}.toml") for n in ("organizer", "edge-node", "coop-hub"))
    assert organizer.http[0] == "127.0.0.1" and organizer.mdns and not organizer.peers
    assert edge.peers and edge.health.peers_min == 1
    assert {p.kind for p in edge.health.probes} == {"tcp", "path"}
    assert not hub.mdns and hub.pin_releases == ("season-2024", "sponsors")
    assert hub.outbox_url and hub.outbox_url.startswith("https://")
    assert hub.peers[0] == ("hub-north.example.org", 7450)
    assert {p.kind for p in hub.health.probes} == {"command", "http"}


def test_every_key_is_documented_by_a_comment() -> None:
    for path in CONFIGS.glob("*.toml"):
        lines = path.read_text().splitlines()
        in_probe = False  # [[health.probe]] blocks are documented as a block
        for index, line in enumerate(lines):
            if line.startswith("["):
                in_probe = line.startswith("[[")
            elif "=" in line and not line.lstrip().startswith("#") and not in_probe:
                key = line.split("=")[0].strip()
                assert lines[index - 1].lstrip().startswith("#"), f"{path.name}: {key} has no comment"


def test_systemd_unit_has_the_hardening_options() -> None:
    unit = (CONFIGS / "assetmesh.service").read_text()
    for option in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "ReadWritePaths=/var/lib/assetmesh", "mesh up --config", "LimitNOFILE="):
        assert option in unit
    assert (CONFIGS / "README.md").exists()


@pytest.mark.parametrize("doc, needle", [
    ({"lisen": "0.0.0.0:1"}, "lisen is not a known key"),
    ({"health": {"intervall_s": 3}}, "health.intervall_s is not a known key"),
    ({"health": {"interval_s": "soon"}}, "health.interval_s must be a positive number"),
    ({"health": {"interval_s": -1}}, "health.interval_s must be a positive number"),
    ({"health": {"peers_min": 1.5}}, "health.peers_min must be a whole number"),
    ({"health": {"disk_free_min": "lots"}}, "health.disk_free_min must be a size"),
    ({"mdns": "yes"}, "mdns must be true or false"),
    ({"peers": "10.0.0.1:7450"}, "peers must be a list of strings"),
    ({"peers": ["10.0.0.1"]}, "is not HOST:PORT"),
    ({"peers": ["10.0.0.1:99999"]}, "is not HOST:PORT"),
    ({"peers": ["bad host!:7450"]}, "neither an IP address nor a host name"),
    ({"listen": "0.0.0.0"}, "listen"),
    ({"mdns_interfaces": ["eth0"]}, "not an interface IP address"),
    ({"outbox": {"url": "ftp://x"}}, "outbox.url"),
    ({"outbox": {"backoff_s_min": 10, "backoff_s_max": 1}}, "must not exceed"),
    ({"health": {"probe": [{"name": "x"}]}}, "needs exactly one of"),
    ({"health": {"probe": [{"tcp": "a:1", "path": "/x"}]}}, "needs exactly one of"),
    ({"health": {"probe": [{"tcp": "camera"}]}}, "health.probe[0] "),
    ({"health": {"probe": [{"http": "camera"}]}}, "not an http"),
    ({"health": {"probe": [{"path": "/x", "colour": 1}]}}, "health.probe[0].colour is not a known key"),
    ({"health": []}, "health must be a table"),
    ({"enroll": 7}, "enroll must be a fleet key"),
    ({"enroll": "  "}, "enroll must be a fleet key"),
])
def test_bad_values_are_one_clear_line(doc: dict, needle: str) -> None:
    with pytest.raises(UsageError) as caught:
        config_from_dict(doc, Path("edge.toml"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("edge.toml: ")
    assert needle in message


def test_enroll_names_a_key_or_a_file_beside_the_config(tmp_path: Path) -> None:
    assert config_from_dict({"enroll": "fleet.key"}, tmp_path / "edge.toml").enroll == str(tmp_path / "fleet.key")
    assert config_from_dict({"enroll": "am1abc"}, tmp_path / "edge.toml").enroll == "am1abc"
    assert build_config(Flags(enroll="/boot/x.key"), None).enroll == "/boot/x.key"


def test_sizes_and_flags() -> None:
    assert parse_size_bytes("512MiB") == 512 * 2**20
    assert parse_size_bytes("2GB") == 2 * 10**9
    assert parse_size_bytes(1000) == 1000
    config = build_config(Flags(listen="127.0.0.1:9", peers=("[::1]:7450",), no_mdns=True), CONFIGS / "edge-node.toml")
    assert config.listen == ("127.0.0.1", 9) and config.peers == (("::1", 7450),) and not config.mdns
    assert config.health.peers_min == 1  # the rest comes from the file


def test_mesh_up_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    node = Node(tmp_path / "org")
    node.cli("init", "popup-test")
    bad = tmp_path / "bad.toml"
    bad.write_text('peers = ["192.0.2.1"]\n')
    assert_one_line_error(node.cli("up", "--config", str(bad), check=False), "bad.toml", "peers", "HOST:PORT")
    bad.write_text("[health\n")
    assert_one_line_error(node.cli("up", "--config", str(bad), check=False), "not valid TOML")
    assert_one_line_error(node.cli("up", "--config", str(tmp_path / "none.toml"), check=False), "does not exist")


def test_mesh_up_runs_with_the_organizer_config(tmp_path: Path) -> None:
    node = Node(tmp_path / "org")
    node.cli("init", "popup-test")
    http_port = free_port()
    try:  # flags keep everything on loopback and mDNS off; the rest comes from the file
        node.start("--config", str(CONFIGS / "organizer.toml"), "--no-mdns", "--http", f"127.0.0.1:{http_port}")
        health = wait_until(lambda: node.json("status").get("health"), 20, "the first health report")
        assert {"disk", "store", "peers", "mdns", "clock"} <= {c["name"] for c in health["checks"]}
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as response:
            assert response.status == 200
    finally:
        node.stop()


def test_every_event_name_is_documented() -> None:
    """Structured event names are a stable interface: each one emitted is in docs/operations.md."""
    import re

    doc = (REPO / "docs" / "operations.md").read_text()
    pattern = re.compile(r'(?:_emit(?:_log)?\(\s*|"event":\s*)"([a-z_]+\.[a-z_.]+)"')
    emitted = {name for path in (REPO / "mesh").rglob("*.py") for name in pattern.findall(path.read_text())}
    assert {"peer.connected", "release.complete", "health.drill"} <= emitted
    missing = sorted(name for name in emitted if f"`{name}`" not in doc)
    assert not missing, f"undocumented events: {missing}"
