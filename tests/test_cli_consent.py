"""Consent from the command line: policies, subjects on assets, hiding, erasure, export, stats.

Real `mesh` subprocesses on a temporary organizer home. Retention *expiry* is judged with a 300 s
clock-skew tolerance (mesh.state.consent.RETENTION_SKEW_S), so it cannot be watched from the CLI in
a fast test; tests/test_consent.py covers it through the state functions. Here: the rule is stored,
listed, exported, and a fresh asset is not hidden early.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest

from mesh.content.chunking import CHUNK_BYTES_START
from mesh.drivers.statefile import StateFile
from mesh.state import consent as cs
from mesh.state.document import actor_id
from tests.agents import Node, free_port, http_status, stop_all, wait_until
from tests.conftest import assert_one_line_error, run_mesh

CHUNK = CHUNK_BYTES_START  # the store's chunk size: files sharing a first chunk share a stored chunk


def _ok(result) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _json(*args, home: Path):
    return json.loads(_ok(run_mesh(*args, "--json", home=home)))


def _bytes(seed: bytes, size: int) -> bytes:
    return hashlib.shake_256(seed).digest(size)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _chunk_files(home: Path) -> set[Path]:
    return {p for p in (home / "store" / "chunks").rglob("*") if p.is_file()}


def _listed(home: Path) -> set[str]:
    return {row["cid"] for row in _json("ls", home=home)}


def _new_code(home: Path) -> str:
    return _ok(run_mesh("consent", "new-code", home=home)).split()[0]  # CODE SECRET


def test_new_code_prints_badges_whose_secret_proves_their_code(org_home: Path) -> None:
    mesh_id = _json("id", home=org_home)["mesh_id"]
    lines = _ok(run_mesh("consent", "new-code", "--count", "3", home=org_home)).splitlines()
    badges = [line.split() for line in lines]
    assert len(badges) == 3 and all(len(parts) == 2 for parts in badges)  # CODE SECRET, one a line
    for code, secret in badges:
        assert cs.parse_subject_code(code) == code and cs.parse_badge_secret(secret) == secret
        assert cs.badge_holds(code, secret, mesh_id) and secret not in code
    made = _json("consent", "new-code", "--count", "2", "--url", "http://10.0.0.7:8080/", home=org_home)
    assert [sorted(b) for b in made] == [["code", "secret", "url"]] * 2
    for badge in made:
        assert badge["url"] == f"http://10.0.0.7:8080/consent?code={badge['code']}#secret={badge['secret']}"
        assert cs.badge_holds(badge["code"], badge["secret"], mesh_id)
    code, secret, url = _ok(run_mesh("consent", "new-code", "--url", "https://door.example",
                                     home=org_home)).split()
    assert url == f"https://door.example/consent?code={code}#secret={secret}"
    assert "without" in _ok(run_mesh("consent", "grant", "--help", home=org_home))  # the crew path


def test_door_badge_cards_print_the_code_and_keep_the_secret_in_the_qr(org_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "door.html"
    _ok(run_mesh("door", "http://10.0.0.7:8080/", "--out", out, "--badges", "2", home=org_home))
    html = out.read_text()
    codes = re.findall(r"<figcaption>([0-9A-Z]{4}-[0-9A-Z]{4})</figcaption>", html)
    assert len(codes) == 2 and all(cs.parse_subject_code(code) == code for code in codes)
    assert not re.search(r"[0-9A-Z]{4}(-[0-9A-Z]{4}){4}", html)  # no secret in print


@pytest.fixture
def photo_policy(org_home: Path) -> Path:
    _ok(run_mesh("policy", "set", "photo", "--default", "deny", "--describe",
                 "Photos of you may be shown on site", home=org_home))
    return org_home


def test_policy_set_and_ls(org_home: Path) -> None:
    _ok(run_mesh("policy", "set", "photo", "--default", "deny", "--describe", "Photos of you",
                 home=org_home))
    _ok(run_mesh("policy", "set", "video", "--default", "grant", "--describe", "Stage video",
                 home=org_home))
    _ok(run_mesh("policy", "set", "photo", "--default", "grant", "--describe", "Photos, changed",
                 home=org_home))  # the latest statement per scope is in force
    _ok(run_mesh("policy", "set", "retention", "--captured", "7d", home=org_home))
    listed = _json("policy", "ls", home=org_home)
    scopes = {row["scope"]: (row["default"], row["description"]) for row in listed["scopes"]}
    assert scopes == {"photo": ("grant", "Photos, changed"), "video": ("grant", "Stage video")}
    assert [(r["category"], r["retention_s"]) for r in listed["retention"]] == [("captured", 604800.0)]
    assert "photo" in _ok(run_mesh("policy", "ls", home=org_home))


def test_an_edge_cannot_set_policies(org_home: Path, tmp_path: Path) -> None:
    token = _ok(run_mesh("invite", home=org_home)).strip()
    edge = tmp_path / "edge"
    _ok(run_mesh("join", token, "--name", "door", home=edge))
    assert_one_line_error(run_mesh("policy", "set", "photo", "--default", "grant", "--describe",
                                   "x", home=edge), "only organizers")
    assert_one_line_error(run_mesh("policy", "set", "retention", "--captured", "1d", home=edge),
                          "only organizers")
    assert _json("policy", "ls", home=edge) == {"scopes": [], "retention": []}
    # ...but an edge (a door box) records decisions
    _ok(run_mesh("consent", "grant", _new_code(edge), "photo", home=edge))


ERROR_CASES = [
    (("policy", "set", "photo"), ("--default",)),
    (("policy", "set", "Photo!", "--default", "deny", "--describe", "x"), ("scope name",)),
    (("policy", "set", "photo", "--default", "deny", "--describe", " "), ("description",)),
    (("policy", "set", "retention", "--captured", "soon"), ("duration",)),
    (("policy", "set", "retention"), ("--captured",)),
    (("consent", "grant", "1234-5678", "photo"), ("check failed",)),
    (("consent", "revoke", "ABC", "photo"), ("8 characters",)),
    (("consent", "grant", "7KQ2-M9X7", "Photo!"), ("scope name",)),
    (("consent", "grant", "7KQ2-M9X7", "nosuchscope"), ("not a consent scope", "photo, video")),
    (("consent", "revoke", "7KQ2-M9X7", "phto"), ("not a consent scope", "media, photo")),
    (("consent", "show", "not-a-code!"), ("subject code",)),
    (("consent", "export", "1234-5678"), ("check failed",)),
    (("consent", "forget", "1234-5678"), ("check failed",)),
    (("consent", "new-code", "--url", "box:8080"), ("http://",)),
]


def test_errors_are_one_line(org_home: Path, tmp_path: Path) -> None:
    for args, needles in ERROR_CASES:  # one home for all: each `init` costs a second
        assert_one_line_error(run_mesh(*args, home=org_home), *needles)
    assert _json("policy", "ls", home=org_home) == {"scopes": [], "retention": []}
    photo = _write(tmp_path / "p.jpg", _bytes(b"p", 1000))
    assert_one_line_error(run_mesh("add", photo, "--subject", "1234-5678", home=org_home),
                          "--subject", "check failed")
    assert _chunk_files(org_home) == set()  # refused before importing anything
    assert _json("ls", home=org_home) == []


def test_subject_media_hidden_until_granted_and_again_when_revoked(
    photo_policy: Path, tmp_path: Path
) -> None:
    home = photo_policy
    code = _new_code(home)
    photo = _write(tmp_path / "shot-0412.jpg", _bytes(b"shot", 5000))
    plain = _write(tmp_path / "flyer.pdf", _bytes(b"flyer", 3000))
    added = _json("add", photo, "--subject", code.lower(), "--tag", "stage-a", home=home)
    cid = added[0]["cid"]
    other = _json("add", plain, home=home)[0]["cid"]
    assert _listed(home) == {other}  # default deny: hidden
    _ok(run_mesh("consent", "grant", code, "photo", home=home))
    rows = {row["cid"]: row for row in _json("ls", home=home)}
    assert set(rows) == {cid, other} and rows[cid]["subjects"] == [code]
    assert cid in _ok(run_mesh("ls", "--tag", "stage-a", home=home))
    _ok(run_mesh("consent", "revoke", code, "photo", home=home))
    assert _listed(home) == {other}
    shown = _json("consent", "show", code, home=home)
    assert shown["subject"] == code and shown["assets"] == [cid]
    (row,) = shown["scopes"]
    assert row["scope"] == "photo" and row["granted"] is False and row["default"] == "deny"
    assert [d["grant"] for d in row["decisions"]] == [True, False]
    assert "denied" in _ok(run_mesh("consent", "show", code, home=home))
    # a plain `gc` purges hidden media too
    assert json.loads(_ok(run_mesh("gc", "--json", home=home)))["chunks_removed"] == 1
    assert_one_line_error(run_mesh("cat", cid, home=home), cid)
    assert run_mesh("cat", other, home=home).stdout == plain.read_bytes()


def test_forget_purges_the_subjects_chunks_and_keeps_shared_ones(
    photo_policy: Path, tmp_path: Path
) -> None:
    home = photo_policy
    code = _new_code(home)
    shared = _bytes(b"shared", CHUNK)  # one whole chunk both files begin with
    keep_data = shared + _bytes(b"keep", 1000)
    keep = _json("add", _write(tmp_path / "keep.bin", keep_data), home=home)[0]["cid"]
    before = _chunk_files(home)
    photo_data = shared + _bytes(b"mine", 2 * CHUNK)
    cid = _json("add", _write(tmp_path / "me.jpg", photo_data), "--subject", code,
                home=home)[0]["cid"]
    mine = _chunk_files(home) - before
    assert len(mine) >= 3  # its own chunks and manifest; the shared chunk was stored once
    _ok(run_mesh("consent", "grant", code, "photo", home=home))
    assert run_mesh("cat", cid, home=home).stdout == photo_data

    report = _json("consent", "forget", code, home=home)
    assert report["subject"] == code and report["revoked"] == ["photo"]
    assert report["assets_hidden"] == [cid] and report["assets_linked"] == [cid]
    assert report["chunks_removed"] == len(mine)
    assert not (mine & _chunk_files(home))  # no chunk unique to the subject's media remains
    assert _listed(home) == {keep}
    assert_one_line_error(run_mesh("cat", cid, home=home), cid)
    assert run_mesh("cat", keep, home=home).stdout == keep_data  # the shared chunk stayed
    _ok(run_mesh("verify", home=home))
    # a plain `gc` afterwards keeps the shared chunk too
    _ok(run_mesh("gc", home=home))
    assert run_mesh("cat", keep, home=home).stdout == keep_data


def test_export_holds_decisions_assets_and_policies(photo_policy: Path, tmp_path: Path) -> None:
    home = photo_policy
    code = _new_code(home)
    other = _new_code(home)
    cid = _json("add", _write(tmp_path / "a.jpg", _bytes(b"a", 4000)), "--subject", code,
                "--subject", other, "--tag", "stage-a", home=home)[0]["cid"]
    _json("add", _write(tmp_path / "b.jpg", _bytes(b"b", 4000)), "--subject", other, home=home)
    _ok(run_mesh("consent", "grant", code, "photo", home=home))
    _ok(run_mesh("consent", "revoke", code, "video", home=home))
    _ok(run_mesh("consent", "grant", other, "photo", home=home))
    exported = json.loads(_ok(run_mesh("consent", "export", code, home=home)))
    assert exported["subject"] == code
    assert [(d["scope"], d["grant"]) for d in exported["decisions"]] == [("photo", True),
                                                                        ("video", False)]
    (asset,) = exported["assets"]  # only media naming this subject
    assert asset["cid"] == cid and asset["tags"] == ["stage-a"] and code in asset["subjects"]
    assert asset["visible"] is True and asset["media_type"] == "image/jpeg"
    assert [p["scope"] for p in exported["policies"]["scopes"]] == ["photo"]
    consent = {row["scope"]: row["granted"] for row in exported["consent"]}
    assert consent == {"photo": True, "video": False}
    out = _ok(run_mesh("consent", "forget", code, home=home))  # the text report
    assert "revoked photo, video" in out and f"hidden   {cid}" in out
    assert "removed 1 chunk(s)" in out


@pytest.mark.slow  # sleeps past the stamped expiry
def test_retention_rule_is_stored_exported_and_never_hides_early(
    org_home: Path, tmp_path: Path
) -> None:
    home = org_home
    _ok(run_mesh("policy", "set", "photo", "--default", "grant", "--describe", "Photos",
                 home=home))
    _ok(run_mesh("policy", "set", "retention", "--captured", "1s", home=home))
    code = _new_code(home)
    cid = _json("add", _write(tmp_path / "a.jpg", _bytes(b"a", 4000)), "--subject", code,
                home=home)[0]["cid"]
    plain = _json("add", _write(tmp_path / "b.jpg", _bytes(b"b", 4000)), "--retention", "90s",
                  home=home)[0]["cid"]
    time.sleep(1.2)
    # expired on the stamped time, but within the 300 s skew tolerance: still shown and kept
    assert _listed(home) == {cid, plain}
    (asset,) = json.loads(_ok(run_mesh("consent", "export", code, home=home)))["assets"]
    assert asset["expires_at"] == pytest.approx(asset["added_at"] + 1.0)
    rows = {row["cid"]: row for row in _json("ls", home=home)}
    assert rows[plain]["retention_s"] == 90.0 and rows[cid]["retention_s"] is None
    assert json.loads(_ok(run_mesh("gc", "--json", home=home)))["chunks_removed"] == 0


def test_stats_sums_views_per_tag(org_home: Path) -> None:
    assert _json("stats", home=org_home) == {"tags": {}}
    node_id = _json("id", home=org_home)["node_id"]
    statefile = StateFile(_state_path(org_home))
    for process in range(2):  # two processes (agent runs) of this node, each its own counters
        with statefile.transaction(actor_id(node_id, os.urandom(8))) as state:
            cs.count_views(state, node_id, {"stage-a": 3 + process, "merch": 1})
    assert _json("stats", home=org_home) == {"tags": {"merch": 2, "stage-a": 7}}
    assert "stage-a" in _ok(run_mesh("stats", home=org_home))


def _state_path(home: Path) -> Path:
    from mesh.drivers.home import Home

    return Home.open(home).state_path


@pytest.mark.slow  # starts an agent
def test_http_never_serves_hidden_media(photo_policy: Path, tmp_path: Path) -> None:
    home = photo_policy
    code = _new_code(home)
    cid = _json("add", _write(tmp_path / "a.jpg", _bytes(b"a", 4000)), "--subject", code,
                home=home)[0]["cid"]
    plain = _json("add", _write(tmp_path / "b.txt", b"public"), home=home)[0]["cid"]
    node = Node(home)
    port = free_port()
    node.start("--no-mdns", "--http", f"127.0.0.1:{port}")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(f"{base}/healthz") == 200, 20, "http to come up")
        assert http_status(f"{base}/c/{cid}") in (404, 410)  # default deny: never served
        assert http_status(f"{base}/c/{plain}") == 200
        _ok(run_mesh("consent", "grant", code, "photo", home=home))
        wait_until(lambda: http_status(f"{base}/c/{cid}") == 200, 20, "the grant to apply")
        _ok(run_mesh("consent", "revoke", code, "photo", home=home))
        wait_until(lambda: http_status(f"{base}/c/{cid}") in (404, 410), 20, "the revoke to apply")
        assert http_status(f"{base}/c/{plain}") == 200
    finally:
        stop_all([node])
