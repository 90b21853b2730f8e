"""The local CLI as a user drives it: init, id, add, ls, cat, tag, verify, gc, and its errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, mesh_env, run_mesh


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def _write(path: Path, size: int, seed: int) -> bytes:
    data = hashlib.shake_256(seed.to_bytes(8, "big")).digest(size) if size else b""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def test_init_creates_identity_with_private_key_mode_0600(org_home: Path) -> None:
    ident = _json(run_mesh("id", "--json", home=org_home))
    assert ident["role"] == "organizer"
    assert ident["name"] == "laptop"
    assert len(ident["node_id"]) == 52 and len(ident["mesh_id"]) == 26
    for key_file in ("node.key", "authority.key"):
        mode = stat.S_IMODE((org_home / key_file).stat().st_mode)
        assert mode == 0o600, oct(mode)
    again = run_mesh("init", "other", home=org_home)
    assert_one_line_error(again, "already")


def test_add_directory_ls_by_tag_and_cat_byte_identical(org_home: Path, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    originals = {
        "a.txt": _write(assets / "a.txt", 10, 1),
        "sub/b.bin": _write(assets / "sub" / "b.bin", 2_700_000, 2),  # three 1 MiB chunks
        "empty.dat": _write(assets / "empty.dat", 0, 3),
    }
    added = _json(run_mesh("add", assets, "--tag", "Music", "--tag", "merch", "--json", home=org_home))
    assert {Path(item["path"]).relative_to(assets).as_posix() for item in added} == set(originals)
    for item in added:
        assert item["tags"] == ["merch", "music"]
        assert item["cid"].startswith("b")
        rel = Path(item["path"]).relative_to(assets).as_posix()
        assert item["size"] == len(originals[rel])
        out = run_mesh("cat", item["cid"], home=org_home)
        assert out.returncode == 0 and out.stdout == originals[rel]

    other = tmp_path / "other.txt"
    _write(other, 50, 4)
    _json(run_mesh("add", other, "--tag", "stage-a", "--json", home=org_home))
    music = _json(run_mesh("ls", "--tag", "music", "--json", home=org_home))
    assert sorted(r["name"] for r in music) == ["a.txt", "b.bin", "empty.dat"]
    assert [r["name"] for r in _json(run_mesh("ls", "--tag", "stage-a", "--json", home=org_home))] == [
        "other.txt"
    ]
    table = run_mesh("ls", home=org_home)
    assert table.returncode == 0 and b"other.txt" in table.stdout


def test_same_bytes_twice_are_stored_once(org_home: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "one.bin", 600_000, 9)
    (tmp_path / "two.bin").write_bytes(data)
    first = _json(run_mesh("add", tmp_path / "one.bin", "--json", home=org_home))
    before = _store_bytes(org_home)
    second = _json(run_mesh("add", tmp_path / "two.bin", "--json", home=org_home))
    assert first[0]["cid"] == second[0]["cid"]
    assert _store_bytes(org_home) == before


def _store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "store" / "chunks").rglob("*") if p.is_file())


def _chunk_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "store" / "chunks").rglob("*") if p.is_file())


def test_tag_add_and_remove(org_home: Path, tmp_path: Path) -> None:
    _write(tmp_path / "x.jpg", 100, 5)
    cid = _json(run_mesh("add", tmp_path / "x.jpg", "--json", home=org_home))[0]["cid"]
    record = _json(run_mesh("tag", cid, "--add", "stage-a", "--add", "crowd", "--json", home=org_home))
    assert record["tags"] == ["crowd", "stage-a"] and record["media_type"] == "image/jpeg"
    record = _json(run_mesh("tag", cid, "--remove", "crowd", "--json", home=org_home))
    assert record["tags"] == ["stage-a"]


def test_verify_names_and_quarantines_a_flipped_byte(org_home: Path, tmp_path: Path) -> None:
    _write(tmp_path / "v.bin", 2_600_000, 6)  # three 1 MiB chunks and a manifest
    cid = _json(run_mesh("add", tmp_path / "v.bin", "--json", home=org_home))[0]["cid"]
    clean = _json(run_mesh("verify", "--json", home=org_home))
    assert clean["corrupt"] == [] and clean["checked"] >= 3
    victim = _chunk_files(org_home)[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))

    result = run_mesh("verify", home=org_home)
    assert result.returncode == 1
    assert victim.name.encode() in result.stdout and b"corrupt" in result.stdout
    assert not victim.exists() and (org_home / "store" / "quarantine" / victim.name).exists()
    cat = run_mesh("cat", cid, home=org_home)
    assert cat.returncode != 0 and b"Traceback" not in cat.stderr
    assert _json(run_mesh("verify", "--json", home=org_home))["corrupt"] == []


def test_gc_removes_leftovers_but_keeps_assets(org_home: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "keep.bin", 300_000, 7)
    cid = _json(run_mesh("add", tmp_path / "keep.bin", "--json", home=org_home))[0]["cid"]
    stray = org_home / "store" / "chunks" / "zz" / "bafkstray"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"left by a crash")
    (org_home / "store" / "tmp" / "x.123.tmp").write_bytes(b"partial")
    report = _json(run_mesh("gc", "--json", home=org_home))
    assert report["orphans_removed"] == 2
    assert not stray.exists()
    assert run_mesh("cat", cid, home=org_home).stdout == data


@pytest.mark.parametrize(
    "args, needles",
    [
        (("cat", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"), ("no file with cid",)),
        (("cat", "not-a-cid"), ("not a cid",)),
        (("add", "/nonexistent/file.mp4"), ("no such file",)),
        (("tag", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e", "--add", "x"), ("no asset",)),
        (("tag", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"), ("nothing to do",)),
        (("add", ".", "--tag", "bad tag!"), ("tag",)),
        (("frobnicate",), ("no such command",)),
    ],
)
def test_cli_errors_are_one_line(org_home: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    assert_one_line_error(run_mesh(*args, home=org_home), *needles)


@pytest.mark.parametrize("command", [("ls",), ("add", "."), ("verify",), ("gc",), ("id",)])
def test_home_not_initialised(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = run_mesh(*command, home=tmp_path / "nowhere")
    assert_one_line_error(result, "mesh init")


def test_mesh_home_environment_variable(tmp_path: Path) -> None:
    home = tmp_path / "envhome"
    assert run_mesh("init", "ev", env={"MESH_HOME": str(home)}).returncode == 0
    assert (home / "home.json").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_permission_denied_is_one_line(org_home: Path) -> None:
    os.chmod(org_home / "home.json", 0)
    no_caps = ("setpriv", "--inh-caps=-all", "--bounding-set=-all")
    result = run_mesh("ls", home=org_home, prefix=no_caps)
    assert_one_line_error(result, "permission denied")


@pytest.fixture
def tiny_disk(tmp_path: Path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)])


def test_disk_full_is_one_line_and_keeps_the_store_consistent(tiny_disk: Path, tmp_path: Path) -> None:
    home = tiny_disk / "home"
    assert run_mesh("init", "small", home=home).returncode == 0
    small = _write(tmp_path / "small.bin", 1000, 11)
    small_cid = _json(run_mesh("add", tmp_path / "small.bin", "--json", home=home))[0]["cid"]
    _write(tmp_path / "big.bin", 8 * 1024 * 1024, 12)
    assert_one_line_error(run_mesh("add", tmp_path / "big.bin", home=home), "disk full")
    assert run_mesh("cat", small_cid, home=home).stdout == small
    verify = _json(run_mesh("verify", "--json", home=home))
    assert verify["corrupt"] == [] and verify["missing"] == []
    assert [r["name"] for r in _json(run_mesh("ls", "--json", home=home))] == ["small.bin"]


@pytest.mark.parametrize("rehash", [(), ("--rehash",)], ids=["checksum", "rehash"])
def test_cat_stops_at_a_corrupt_chunk_mid_file_with_one_line_naming_it(
    org_home: Path, tmp_path: Path, rehash: tuple[str, ...],
) -> None:
    from mesh.content.chunking import CHUNK_BYTES_START
    from mesh.drivers.filestore import FileStore

    data = _write(tmp_path / "film.bin", 4 * CHUNK_BYTES_START + 9, 13)
    after = _write(tmp_path / "after.txt", 100, 14)
    added = _json(run_mesh("add", tmp_path / "film.bin", tmp_path / "after.txt", "--json", home=org_home))
    store = FileStore(org_home / "store")
    _, chunks = store.object_chunks(added[0]["cid"])
    victim = store._chunk_path(chunks[2])
    store.close()
    raw = bytearray(victim.read_bytes())
    raw[12345] ^= 0x40
    victim.write_bytes(bytes(raw))

    result = run_mesh("cat", *rehash, added[0]["cid"], added[1]["cid"], home=org_home)
    first = assert_one_line_error(result, chunks[2], "corrupt")
    assert result.returncode == 1 and len(result.stderr.decode().strip().splitlines()) == 1, first
    assert result.stdout == data[:2 * CHUNK_BYTES_START]  # verified bytes before it, nothing after
    assert after not in result.stdout


def _index(home: Path, sql: str, *args) -> list[tuple]:
    """Edit the store's index behind the CLI's back, as older code or a damaged disk would."""
    db = sqlite3.connect(home / "store" / "index.sqlite")
    try:
        with db:
            return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _data_chunks(home: Path, cid: str) -> list[str]:
    from mesh.drivers.filestore import FileStore

    store = FileStore(home / "store")
    try:
        return store.object_chunks(cid)[1]
    finally:
        store.close()


def _flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_store_from_older_code_cats_and_verify_fills_in_checksums(org_home: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "old.bin", 2_600_000, 16)  # three 1 MiB chunks and a manifest
    cid = _json(run_mesh("add", tmp_path / "old.bin", "--json", home=org_home))[0]["cid"]
    _index(org_home, "ALTER TABLE chunks DROP COLUMN xxh3")  # the index as older code wrote it
    assert run_mesh("cat", cid, home=org_home).stdout == data  # migrated in place, BLAKE3 checks
    assert _index(org_home, "SELECT COUNT(*) FROM chunks WHERE xxh3 IS NULL") == [(4,)]

    report = _json(run_mesh("verify", "--json", home=org_home))
    assert report["checksums_added"] == 4 and report["corrupt"] == report["checksums_wrong"] == []
    assert _index(org_home, "SELECT COUNT(*) FROM chunks WHERE xxh3 IS NULL") == [(0,)]
    assert _json(run_mesh("verify", "--json", home=org_home))["checksums_added"] == 0
    assert run_mesh("cat", cid, home=org_home).stdout == data


def test_a_store_without_checksums_still_detects_a_flipped_byte(org_home: Path, tmp_path: Path) -> None:
    _write(tmp_path / "old.bin", 2_600_000, 17)
    cid = _json(run_mesh("add", tmp_path / "old.bin", "--json", home=org_home))[0]["cid"]
    _index(org_home, "UPDATE chunks SET xxh3 = NULL")
    victim = next(p for p in _chunk_files(org_home) if p.name == _data_chunks(org_home, cid)[1])
    _flip_middle_byte(victim)
    assert_one_line_error(run_mesh("cat", cid, home=org_home), victim.name, "corrupt")
    result = run_mesh("verify", home=org_home)
    assert result.returncode == 1 and victim.name.encode() in result.stdout


def test_verify_reports_and_rewrites_a_wrong_checksum(org_home: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "w.bin", 2_600_000, 18)
    cid = _json(run_mesh("add", tmp_path / "w.bin", "--json", home=org_home))[0]["cid"]
    victim = _data_chunks(org_home, cid)[2]
    _index(org_home, "UPDATE chunks SET xxh3 = ? WHERE cid = ?", b"\x00" * 16, victim)
    assert_one_line_error(run_mesh("cat", cid, home=org_home), victim, "corrupt")
    assert run_mesh("cat", "--rehash", cid, home=org_home).stdout == data  # the bytes are intact

    result = run_mesh("verify", home=org_home)
    assert result.returncode == 1 and b"checksum" in result.stdout and victim.encode() in result.stdout
    assert (org_home / "store" / "chunks" / victim[-2:] / victim).exists()  # not quarantined
    clean = _json(run_mesh("verify", "--json", home=org_home))
    assert clean["checksums_wrong"] == [] and clean["corrupt"] == []
    assert run_mesh("cat", cid, home=org_home).stdout == data


@pytest.mark.parametrize("command", ["cat", "add"])
def test_cat_and_add_start_without_heavy_imports(org_home: Path, tmp_path: Path, command: str) -> None:
    """`mesh cat` and `mesh add --json` pay their imports on every run (see docs/benchmarks.md)."""
    _write(tmp_path / "x.bin", 1000, 15)
    cid = _json(run_mesh("add", tmp_path / "x.bin", "--json", home=org_home))[0]["cid"]
    args = ("cat", cid) if command == "cat" else ("add", tmp_path / "x.bin", "--json")
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mesh", "--home", str(org_home), *map(str, args)],
        capture_output=True, env=mesh_env(), check=False,
    )
    assert traced.returncode == 0, traced.stderr.decode()[-2000:]
    imported = {line.split("|")[-1].strip() for line in traced.stderr.decode().splitlines() if "|" in line}
    heavy = {"rich", "trio", "zeroconf", "starlette", "mesh.state.consent"}
    if command == "cat":
        heavy.add("automerge")  # `add` records assets in the shared (Automerge) state; `cat` never
    assert not heavy & imported
