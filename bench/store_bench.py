"""Store throughput: `mesh add` and `mesh cat` against baselines measured in the same run.

    python bench/store_bench.py [--gib 1.0] [--json]

Baselines: hashing the same bytes with BLAKE3 (the store's hash), `cp` of the files followed by
`sync`, and `cat` of the files to /dev/null. Targets (issue 2): add >= 0.5x the slower of hash and
copy; cat >= 0.5x plain cat. Peak RSS of the add and cat processes is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

MIB = 1024 * 1024


def make_files(root: Path, total_bytes: int) -> list[Path]:
    """Three quarters in 64 MiB files, one quarter in 256 KiB files, all random."""
    root.mkdir(parents=True)
    files: list[Path] = []
    large = (total_bytes * 3 // 4) // (64 * MIB)
    small = (total_bytes - large * 64 * MIB) // (256 * 1024)
    for index in range(large):
        path = root / f"large-{index:03d}.bin"
        with open(path, "wb") as handle:
            for _ in range(64):
                handle.write(os.urandom(MIB))
        files.append(path)
    for index in range(small):
        path = root / "small" / f"s-{index:05d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(256 * 1024))
        files.append(path)
    return files


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


def run_rss(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, bytes]:
    """Run a command; return (its own peak RSS in MB, its stdout if piped)."""
    proc = subprocess.Popen(cmd, stdout=stdout)
    out = proc.stdout.read() if stdout == subprocess.PIPE else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed with exit code {proc.returncode}")
    return usage.ru_maxrss / 1024, out


def memory_figures(work: Path, mesh: list[str], gib: float) -> dict:
    """Peak RSS of `mesh add` and `mesh cat` on one file of this many GiB (target < 200 MB)."""
    big = work / "big" / "one.bin"
    big.parent.mkdir()
    with open(big, "wb") as handle:
        for _ in range(int(gib * 1024)):
            handle.write(os.urandom(MIB))
    home = str(work / "memhome")
    run([*mesh, "--home", home, "init", "mem"], stdout=subprocess.DEVNULL)
    rss_add, out = run_rss([*mesh, "--home", home, "add", str(big), "--json"], stdout=subprocess.PIPE)
    cid = json.loads(out)[0]["cid"]
    rss_cat, _ = run_rss([*mesh, "--home", home, "cat", cid])
    return {"memory_file_gib": gib, "peak_rss_add_mb": round(rss_add, 1), "peak_rss_cat_mb": round(rss_cat, 1)}


def read_in_process(home: Path, cids: list[str]) -> None:
    """The read path without process start-up: what a long-running agent or gateway pays."""
    from mesh.drivers.filestore import FileStore

    store = FileStore(home / "store")
    try:
        for _ in store.iter_objects_parallel(cids):
            pass
    finally:
        store.close()


def hash_files(files: list[Path]) -> None:
    for path in files:
        hasher = blake3.blake3()
        with open(path, "rb") as handle:
            while block := handle.read(4 * MIB):
                hasher.update(block)
        hasher.digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="bytes to import, in GiB")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="size of the one-file RSS probe (0: skip)")
    args = parser.parse_args()
    total = int(args.gib * 1024 * MIB)
    mesh = [sys.executable, "-m", "mesh"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        files = make_files(work / "src", total)
        size = sum(p.stat().st_size for p in files)
        run(["cat", *map(str, files)], stdout=subprocess.DEVNULL)  # same warm cache for everyone

        t_hash = timed(lambda: hash_files(files))
        t_copy = timed(lambda: (shutil.copytree(work / "src", work / "copy"), run(["sync"])))
        t_cat = timed(lambda: run(["cat", *map(str, files)], stdout=subprocess.DEVNULL))
        run([*mesh, "--home", str(work / "home"), "init", "bench"], stdout=subprocess.DEVNULL)
        add_cmd = [*mesh, "--home", str(work / "home"), "add", str(work / "src"), "--json"]
        added: list[dict] = []
        t_add = timed(lambda: added.extend(json.loads(run(add_cmd, capture_output=True).stdout)))
        cat_cmd = [*mesh, "--home", str(work / "home"), "cat", *[item["cid"] for item in added]]
        t_cat_mesh = timed(lambda: run(cat_cmd, stdout=subprocess.DEVNULL))
        t_read_path = timed(lambda: read_in_process(work / "home", [item["cid"] for item in added]))
        memory = memory_figures(work, mesh, args.memory_gib) if args.memory_gib else {}

    mbps = lambda seconds: size / seconds / 1e6  # noqa: E731
    slower_baseline = min(mbps(t_hash), mbps(t_copy))
    figures = {
        "bytes": size,
        "files": len(files),
        "hash_mb_s": round(mbps(t_hash), 1),
        "cp_sync_mb_s": round(mbps(t_copy), 1),
        "cat_mb_s": round(mbps(t_cat), 1),
        "mesh_add_mb_s": round(mbps(t_add), 1),
        "mesh_cat_mb_s": round(mbps(t_cat_mesh), 1),
        "add_ratio_vs_slower_baseline": round(mbps(t_add) / slower_baseline, 2),
        "cat_ratio_vs_cat": round(mbps(t_cat_mesh) / mbps(t_cat), 2),
        "read_path_in_process_mb_s": round(mbps(t_read_path), 1),
        "read_path_ratio_vs_cat": round(mbps(t_read_path) / mbps(t_cat), 2),
        **memory,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print("targets: add ratio >= 0.5, cat ratio >= 0.5")


if __name__ == "__main__":
    main()
