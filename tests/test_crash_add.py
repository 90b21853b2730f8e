"""Fault injection: `kill -9` at different moments of a large `mesh add`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import mesh_env, run_mesh

BIG_BYTES = 48 * 1024 * 1024
SMALL_FILES = 300


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("payload")
    with open(root / "big.bin", "wb") as handle:
        for block in range(BIG_BYTES // (1 << 20)):
            handle.write(hashlib.shake_256(block.to_bytes(4, "big")).digest(1 << 20))
    for index in range(SMALL_FILES):
        (root / f"small-{index:04d}.txt").write_bytes(f"small file {index}\n".encode() * 20)
    return root


# The real CLI with batches of 8 chunks, so a kill lands among many background batch flushes.
SMALL_BATCHES = "import sys, mesh.drivers.filestore as s; s.BATCH_CHUNKS_MAX = 8; " \
    "from mesh.cli.main import main; main(sys.argv[1:])"


def _start_add(home: Path, payload: Path, small_batches: bool = False) -> subprocess.Popen:
    launcher = ["-c", SMALL_BATCHES] if small_batches else ["-m", "mesh"]
    cmd = [sys.executable, *launcher, "--home", str(home), "add", str(payload), "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=mesh_env())


def _wait_for_progress(home: Path, proc: subprocess.Popen, chunk_files_min: int) -> None:
    """Block until the add has written at least this many chunk files (staged or final)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        written = sum(1 for _ in (home / "store").rglob("*.tmp"))
        written += sum(1 for p in (home / "store" / "chunks").rglob("*") if p.is_file())
        if written >= chunk_files_min:
            return
        time.sleep(0.005)


def _index_consistent(home: Path) -> None:
    """Every indexed chunk exists on disk with the right size."""
    db = sqlite3.connect(home / "store" / "index.sqlite")
    try:
        rows = db.execute("SELECT cid, size FROM chunks").fetchall()
    finally:
        db.close()
    for cid, size in rows:
        path = home / "store" / "chunks" / cid[-2:] / cid
        assert path.exists(), f"index row for {cid} but no file"
        assert path.stat().st_size == size


@pytest.mark.parametrize(("chunk_files_min", "small_batches"), [
    (1, False), (100, False), (300, False), (40, True), (200, True),
])
def test_sigkill_during_add_leaves_a_clean_store(
    tmp_path: Path, payload: Path, chunk_files_min: int, small_batches: bool
) -> None:
    home = tmp_path / "home"
    assert run_mesh("init", "crash", home=home).returncode == 0
    proc = _start_add(home, payload, small_batches)
    _wait_for_progress(home, proc, chunk_files_min)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    _index_consistent(home)
    verify = run_mesh("verify", "--json", home=home)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for record in json.loads(run_mesh("ls", "--json", home=home).stdout):
        out = run_mesh("cat", record["cid"], home=home)
        assert out.returncode == 0  # anything visible is complete

    again = run_mesh("add", payload, "--json", home=home)
    assert again.returncode == 0, again.stderr.decode()
    big = next(item for item in json.loads(again.stdout) if item["path"].endswith("big.bin"))
    out = run_mesh("cat", big["cid"], home=home)
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256((payload / "big.bin").read_bytes()).digest()
    assert run_mesh("gc", "--json", home=home).returncode == 0
    assert run_mesh("verify", home=home).returncode == 0
    assert not list((home / "store" / "tmp").iterdir())
