"""`mesh release` as a user drives it: create, publish, ls, rollback, gc, and its errors."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import unicodedata
from pathlib import Path

import pytest

from mesh.content.cid import Cid
from mesh.content.manifest import DirManifest
from tests.conftest import assert_one_line_error, run_mesh


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def _write(path: Path, size: int, seed: int) -> bytes:
    data = hashlib.shake_256(seed.to_bytes(8, "big")).digest(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _site(root: Path, seed: int) -> dict[str, bytes]:
    """A small release tree: a page, a multi-chunk video and a file with an NFD (decomposed) name."""
    nfd_name = unicodedata.normalize("NFD", "café.txt")
    return {
        "index.html": _write(root / "index.html", 100, seed),
        "media/clip.mp4": _write(root / "media" / "clip.mp4", 2_500_000, seed + 1),  # 3 chunks of 1 MiB
        "café.txt": _write(root / nfd_name, 10, seed + 2),
    }


def _root_manifest(home: Path, root: str) -> DirManifest | None:
    path = home / "store" / "chunks" / root[-2:] / root
    if not path.exists():
        return None
    data = path.read_bytes()
    assert Cid.parse(root).verify(data)
    return DirManifest.decode(data)


def _history(home: Path) -> list[dict]:
    return _json(run_mesh("release", "ls", "--json", home=home))


def _current(home: Path) -> str | None:
    current = [row["id"] for row in _history(home) if row["current"]]
    assert len(current) <= 1
    return current[0] if current else None


def _create(home: Path, name: str, directory: Path) -> dict:
    return _json(run_mesh("release", "create", name, directory, "--json", home=home))


def test_create_publish_ls_rollback(org_home: Path, tmp_path: Path) -> None:
    originals = _site(tmp_path / "v1", seed=1)
    first = _create(org_home, "friday v1", tmp_path / "v1")
    assert set(first) == {"id", "name", "root"} and first["name"] == "friday v1"
    assert len(first["id"]) == 16

    manifest = _root_manifest(org_home, first["root"])
    assert manifest is not None and str(manifest.cid) == first["root"]
    entries = {entry.path: entry for entry in manifest.entries}
    assert set(entries) == set(originals)  # relative POSIX paths, NFC
    assert entries["index.html"].media_type == "text/html"
    assert entries["media/clip.mp4"].media_type == "video/mp4"
    assert [entries[path].size for path in originals] == [len(data) for data in originals.values()]
    out = run_mesh("cat", *(str(entries[path].cid) for path in originals), home=org_home)
    assert out.returncode == 0 and out.stdout == b"".join(originals.values())
    assert _json(run_mesh("ls", "--json", home=org_home)) == []  # release files are not assets

    [row] = _history(org_home)
    assert row["current"] is False and row["published_at"] is None and row["seq"] == 1
    assert row["total_bytes"] == sum(map(len, originals.values())) and row["file_count"] == 3
    me = _json(run_mesh("id", "--json", home=org_home))["node_id"]
    assert row["publisher"] == me and row["root"] == first["root"] and row["name"] == "friday v1"

    published = _json(run_mesh("release", "publish", first["id"], "--json", home=org_home))
    assert published["id"] == first["id"] and published["root"] == first["root"]

    _site(tmp_path / "v2", seed=10)
    second = _create(org_home, "friday v2", tmp_path / "v2")
    assert second["root"] != first["root"]
    assert _current(org_home) == first["id"]  # created, not yet published
    assert run_mesh("release", "publish", second["id"], home=org_home).returncode == 0
    history = _history(org_home)
    assert [(r["id"], r["seq"], r["current"], r["previous"]) for r in history] == [
        (second["id"], 2, True, False), (first["id"], 1, False, True),
    ]

    rolled = _json(run_mesh("release", "rollback", "--json", home=org_home))
    assert rolled["id"] == first["id"]
    assert _current(org_home) == first["id"]
    again = {r["id"]: r for r in _history(org_home)}[first["id"]]  # first published, then current again
    assert again["first_published_at"] == published["at"] and again["published_at"] == rolled["at"] > published["at"]
    assert_one_line_error(run_mesh("release", "rollback", home=org_home), "no previous release")

    assert run_mesh("release", "rollback", second["id"], home=org_home).returncode == 0
    assert _current(org_home) == second["id"]
    table = run_mesh("release", "ls", home=org_home)
    assert table.returncode == 0 and f"* {second['id']}".encode() in table.stdout


def test_an_edge_cannot_create_or_publish(org_home: Path, tmp_path: Path) -> None:
    token = run_mesh("invite", "--role", "edge", home=org_home).stdout.decode().strip()
    edge_home = tmp_path / "edge"
    joined = run_mesh("join", token, "--name", "door-box", home=edge_home)
    assert joined.returncode == 0, joined.stderr.decode()
    _site(tmp_path / "site", seed=3)
    line = assert_one_line_error(
        run_mesh("release", "create", "v1", tmp_path / "site", home=edge_home), "only organizers"
    )
    assert "edge" in line
    release = _create(org_home, "v1", tmp_path / "site")
    assert_one_line_error(run_mesh("release", "publish", release["id"], home=edge_home), "only organizers")
    assert _history(edge_home) == []


def _unpin(home: Path, release_id: str) -> None:
    """Forget the pins `release create` made, as on a node that fetched the release from peers."""
    with sqlite3.connect(home / "store" / "index.sqlite") as db:
        db.execute("DELETE FROM pins WHERE reason = ?", (f"release:{release_id}",))


@pytest.mark.slow  # about 15 CLI runs
def test_gc_keeps_current_and_previous_releases_and_pinned_ones(org_home: Path, tmp_path: Path) -> None:
    """gc keeps: every asset; every block here of the current and the previous release (root, file
    manifests, chunks); everything pinned (what `release create` imported). It removes the rest."""
    made = []
    for i in range(4):
        _site(tmp_path / f"v{i}", seed=100 * (i + 1))
        made.append(_create(org_home, f"v{i}", tmp_path / f"v{i}"))
    for release in made[:3]:  # v3 stays unpublished, v2 current, v1 previous, v0 older
        assert run_mesh("release", "publish", release["id"], home=org_home).returncode == 0
    for release in made[:3]:
        _unpin(org_home, release["id"])
    files = {r["id"]: [str(e.cid) for e in _root_manifest(org_home, r["root"]).entries] for r in made}

    report = _json(run_mesh("gc", "--json", home=org_home))
    assert report["chunks_removed"] == 1 + 2 + 1 + 3  # v0: root, 2 small files, clip manifest + 3 chunks
    assert _root_manifest(org_home, made[0]["root"]) is None
    assert_one_line_error(run_mesh("cat", files[made[0]["id"]][0], home=org_home), "no file")
    kept = [cid for release in made[1:] for cid in files[release["id"]]]  # previous, current, pinned
    out = run_mesh("cat", *kept, home=org_home)
    assert out.returncode == 0 and len(out.stdout) == 3 * 2_500_110
    sizes = {row["id"]: row["total_bytes"] for row in _history(org_home)}
    assert sizes[made[0]["id"]] is None and sizes[made[1]["id"]] == 2_500_110

    # after a rollback, v1 is current and v0 previous: but v0 is gone, so nothing comes back
    assert run_mesh("release", "rollback", home=org_home).returncode == 0
    assert _current(org_home) == made[1]["id"]
    report = _json(run_mesh("gc", "--json", home=org_home))
    assert report["chunks_removed"] == 7  # v2 is neither current, previous nor pinned now
    assert _root_manifest(org_home, made[2]["root"]) is None


def test_release_errors_are_one_line(org_home: Path, tmp_path: Path) -> None:
    for args, needles in [
        (("create", "v1", "/nonexistent/site"), ("no such directory",)),
        (("publish", "aaaaaaaaaaaaaaaa"), ("no release", "aaaaaaaaaaaaaaaa")),
        (("rollback", "aaaaaaaaaaaaaaaa"), ("no release",)),
        (("rollback",), ("no previous release",)),
        (("create", " ", tmp_path), ("release name",)),
    ]:
        assert_one_line_error(run_mesh("release", *args, home=org_home), *needles)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert_one_line_error(run_mesh("release", "create", "v1", tmp_path / "empty", home=org_home), "no files")
    _write(tmp_path / "file.txt", 5, 1)
    assert_one_line_error(
        run_mesh("release", "create", "v1", tmp_path / "file.txt", home=org_home), "not a directory"
    )
    assert _history(org_home) == []
