"""Membership from the command line: invite, join, members, revoke, and their errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mesh.drivers.statefile import StateFile
from mesh.ids import b32decode
from mesh.state.membership import RevocationList

from tests.conftest import assert_one_line_error, run_mesh


def _ok(result) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_invite_join_members_and_revoke(org_home: Path, tmp_path: Path) -> None:
    invite = json.loads(_ok(run_mesh("invite", "--role", "hub", "--name", "hub-1", "--hint", "192.0.2.7:7450",
                                     "--json", home=org_home)))
    assert invite["role"] == "hub" and invite["hints"] == ["192.0.2.7:7450"]
    hub = tmp_path / "hub"
    joined = json.loads(_ok(run_mesh("join", invite["token"], "--json", home=hub)))
    assert joined["role"] == "hub" and joined["name"] == "hub-1"
    assert joined["mesh_id"] == json.loads(_ok(run_mesh("id", "--json", home=org_home)))["mesh_id"]
    assert json.loads((hub / "home.json").read_text())["hints"] == [["192.0.2.7", 7450]]
    org_doc, hub_doc = (json.loads((h / "home.json").read_text()) for h in (org_home, hub))
    assert hub_doc["mesh_name"] == org_doc["mesh_name"] == "popup-test", "the event's name, not 'mesh w7gv…'"
    assert hub_doc["mesh_key"] == org_doc["mesh_key"] and len(b32decode(org_doc["mesh_key"])) == 32

    on_hub = json.loads(_ok(run_mesh("members", "--json", home=hub)))
    assert [(m["name"], m["status"], m["self"]) for m in on_hub] == [("hub-1", "valid", True)]

    # The organizer has not synced with the hub yet: it refuses an id it has seen nowhere, unless forced.
    assert_one_line_error(run_mesh("revoke", joined["node_id"], home=org_home), "not a member", "--force")
    assert joined["node_id"] in _ok(run_mesh("revoke", joined["node_id"], "--reason", "lost", "--force",
                                             home=org_home))
    state = StateFile(org_home / "state").load(os.urandom(16))
    revocations = RevocationList(json_authority(org_home))
    revoked = revocations.add(state.revocation_blobs()[joined["node_id"]], time.time())
    assert revoked.node_id == joined["node_id"] and revoked.reason == "lost"


def json_authority(home: Path) -> bytes:
    return b32decode(json.loads((home / "home.json").read_text())["authority_public_key"])


def test_qr_prints_the_token_and_a_code(org_home: Path) -> None:
    out = _ok(run_mesh("invite", "--qr", home=org_home, env={"COLUMNS": "200"}))
    lines = out.splitlines()
    assert lines[0].startswith("am1")
    assert len(lines) > 10 and any("█" in line or "▀" in line or "▄" in line for line in lines[1:])


def test_edges_cannot_invite_or_revoke(org_home: Path, tmp_path: Path) -> None:
    token = _ok(run_mesh("invite", home=org_home)).strip()
    edge = tmp_path / "edge"
    _ok(run_mesh("join", token, "--name", "door", home=edge))
    assert_one_line_error(run_mesh("invite", home=edge), "only organizers")
    org_id = json.loads(_ok(run_mesh("id", "--json", home=org_home)))["node_id"]
    assert_one_line_error(run_mesh("revoke", org_id, home=edge), "only organizers")


def test_join_errors_are_one_line(org_home: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_mesh("join", "am1-not-a-token", home=tmp_path / "a"), "invite")
    token = _ok(run_mesh("invite", "--expires", "1s", home=org_home)).strip()
    time.sleep(1.5)
    assert_one_line_error(run_mesh("join", token, home=tmp_path / "b"), "expired")
    assert not (tmp_path / "b" / "home.json").exists()
    fresh = _ok(run_mesh("invite", home=org_home)).strip()
    assert_one_line_error(run_mesh("join", fresh, home=org_home), "already")
    assert_one_line_error(run_mesh("invite", "--expires", "soon", home=org_home), "duration")
    assert_one_line_error(run_mesh("revoke", "not-a-node", home=org_home), "not a node id")


def test_a_qr_too_wide_for_the_terminal_is_not_printed_and_a_file_is_offered(org_home: Path, tmp_path: Path) -> None:
    narrow = run_mesh("invite", "--qr", home=org_home, env={"COLUMNS": "80"})
    assert narrow.returncode == 0
    lines = narrow.stdout.decode().splitlines()
    assert all(len(line) <= 80 for line in lines[1:]), "a QR wider than the terminal was printed"
    assert b"--qr-file" in narrow.stderr
    png, svg = tmp_path / "invite.png", tmp_path / "invite.svg"
    assert run_mesh("invite", "--qr-file", str(png), home=org_home).returncode == 0
    assert run_mesh("invite", "--qr-file", str(svg), home=org_home).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()
    assert_one_line_error(run_mesh("invite", "--qr-file", str(tmp_path / "x.gif"), home=org_home), ".svg or .png")
