"""Store throughput: `mesh add` and `mesh cat` against baselines measured in the same run.

    python bench/store_bench.py [--gib 1.0] [--memory-gib 2.0] [--json]
    python bench/store_bench.py --chunk-sweep [--gib 0.25]

Baselines: hashing the same bytes with BLAKE3 (the store's hash), `cp` of the files followed by
`sync`, and `cat` of the files to /dev/null. Targets (issue 2): add >= 0.5x the slower of hash and
copy; cat >= 0.5x plain cat. `mesh cat` checks each chunk's size and XXH3-128 checksum; `mesh cat
--rehash` (BLAKE3 against the CID, what `verify` and every read for a peer or HTTP do) is timed too.
Peak RSS of the add and cat processes is reported, and the load average before and after (the
machines are shared: the ratios, measured in one run, are steadier).

`mesh` runs as `sys.executable -m mesh` (so run this with the interpreter of the install you want
to measure: `mesh_package` says which one was used) from the work directory, so that a source tree
in the current directory does not shadow an installed copy, and with its bytecode cached there
(PYTHONPYCACHEPREFIX) as after `pip install`: with PYTHONDONTWRITEBYTECODE set, as in some shells
here, an editable install would compile ~40 ms of our modules on every start.

`--chunk-sweep` imports the same large files in-process at 256 KiB, 1 MiB and 4 MiB chunks and reads
them back (verified), to put a number on per-chunk overhead (docs/content-addressing.md section 3).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import blake3

MIB = 1024 * 1024


def make_files(root: Path, total_bytes: int, small_share: float = 0.25) -> list[Path]:
    """Random files: `small_share` of the bytes in 256 KiB files, the rest in 64 MiB files."""
    root.mkdir(parents=True)
    files: list[Path] = []
    large = int(total_bytes * (1 - small_share)) // (64 * MIB)
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


CHILD = {"env": dict(os.environ), "cwd": None}  # how child processes run; see `isolate_children`


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, env=CHILD["env"], cwd=CHILD["cwd"], **kwargs)


def isolate_children(work: Path) -> None:
    """Run children in the work dir (`python -m` puts the current directory first on the path)
    and let them keep compiled modules there, not in the source tree."""
    CHILD["env"].pop("PYTHONDONTWRITEBYTECODE", None)
    CHILD["env"]["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    CHILD["cwd"] = str(work)


def run_rss(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, bytes]:
    """Run a command; return (its own peak RSS in MB, its stdout if piped)."""
    proc = subprocess.Popen(cmd, stdout=stdout, env=CHILD["env"], cwd=CHILD["cwd"])
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
    """The read path without process start-up (what a long-running agent or gateway pays),
    written to /dev/null as `mesh cat` is in this benchmark."""
    from mesh.drivers.filestore import FileStore

    store = FileStore(home / "store")
    try:
        _read_all(store, cids)
    finally:
        store.close()


def load_average() -> float:
    """The 1-minute load average (2 cores here: above ~1, someone else is computing too)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def chunk_sweep(gib: float) -> dict:
    """Add (durably) and read back (verified) the same 64 MiB files at three chunk sizes, in-process.

    Best of two imports (each into a fresh store) and five reads. Time is modelled as
    a * bytes + b * chunks; b, the per-chunk overhead, is the slope between the smallest and the
    largest chunk size."""
    from mesh.drivers.filestore import FileStore

    figures: dict = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        files = make_files(work / "src", int(gib * 1024 * MIB), small_share=0)
        size = sum(p.stat().st_size for p in files)
        points = []
        for chunk_kib in (256, 1024, 4096):
            stores = [FileStore(work / f"store-{chunk_kib}-{attempt}") for attempt in range(2)]
            t_add = min(timed(partial(_add_all, store, files, chunk_kib * 1024)) for store in stores)
            store = stores[-1]
            cids = [cid for (cid,) in store._db.execute("SELECT cid FROM objects").fetchall()]
            chunks = store.usage()[0] - len(cids)  # data chunks (each file also has a manifest)
            t_cat = min(timed(partial(_read_all, store, cids)) for _ in range(5))
            for store in stores:
                store.close()
            points.append((chunks, t_add, t_cat))
            figures[f"sweep_{chunk_kib}k"] = {
                "chunks": chunks, "add_mb_s": round(size / t_add / 1e6, 1),
                "cat_mb_s": round(size / t_cat / 1e6, 1),
            }
        (n_small, add_small, cat_small), (n_big, add_big, cat_big) = points[0], points[-1]
        figures["sweep_per_chunk_add_us"] = round((add_small - add_big) / (n_small - n_big) * 1e6, 1)
        figures["sweep_per_chunk_cat_us"] = round((cat_small - cat_big) / (n_small - n_big) * 1e6, 1)
        figures["sweep_bytes"] = size
    return figures


def _add_all(store, files: list[Path], chunk_bytes: int) -> None:
    with store.importing():
        for path in files:
            with open(path, "rb") as handle:
                store.add_stream(handle, path.stat().st_size, chunk_bytes=chunk_bytes)
        store.commit()


def _read_all(store, cids: list[str]) -> None:
    """Every object, checked, written to /dev/null."""
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        for view in store.read_objects(cids):
            os.write(out, view)
    finally:
        os.close(out)


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
    parser.add_argument("--chunk-sweep", action="store_true", help="compare chunk sizes instead (in-process)")
    args = parser.parse_args()
    if args.chunk_sweep:
        load = load_average()
        report({"load_before": load, **chunk_sweep(args.gib), "load_after": load_average()}, args.json)
        return
    load_before = load_average()
    total = int(args.gib * 1024 * MIB)
    mesh = [sys.executable, "-m", "mesh"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        isolate_children(work)
        package = run([sys.executable, "-c", "import mesh; print(mesh.__file__)"], capture_output=True)
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
        smallest = min(added, key=lambda item: item["size"])["cid"]
        run([*cat_cmd[:6], smallest], stdout=subprocess.DEVNULL)  # modules compiled and cached
        t_cat_mesh = timed(lambda: run(cat_cmd, stdout=subprocess.DEVNULL))
        rehash_cmd = [*cat_cmd[:6], "--rehash", *cat_cmd[6:]]
        t_cat_rehash = timed(lambda: run(rehash_cmd, stdout=subprocess.DEVNULL))
        importlib.import_module("mesh.drivers.filestore")  # untimed: this figure leaves start-up out
        t_read_path = timed(lambda: read_in_process(work / "home", [item["cid"] for item in added]))
        t_start = min(timed(lambda: run([*cat_cmd[:6], smallest], stdout=subprocess.DEVNULL)) for _ in range(3))
        memory = memory_figures(work, mesh, args.memory_gib) if args.memory_gib else {}

    mbps = lambda seconds: size / seconds / 1e6  # noqa: E731
    slower_baseline = min(mbps(t_hash), mbps(t_copy))
    figures = {
        "load_before": load_before,
        "load_after": load_average(),
        "mesh_package": package.stdout.decode().strip(),
        "bytes": size,
        "files": len(files),
        "hash_mb_s": round(mbps(t_hash), 1),
        "cp_sync_mb_s": round(mbps(t_copy), 1),
        "cat_mb_s": round(mbps(t_cat), 1),
        "mesh_add_mb_s": round(mbps(t_add), 1),
        "mesh_cat_mb_s": round(mbps(t_cat_mesh), 1),
        "add_ratio_vs_slower_baseline": round(mbps(t_add) / slower_baseline, 2),
        "cat_ratio_vs_cat": round(mbps(t_cat_mesh) / mbps(t_cat), 2),
        "mesh_cat_rehash_mb_s": round(mbps(t_cat_rehash), 1),
        "cat_rehash_ratio_vs_cat": round(mbps(t_cat_rehash) / mbps(t_cat), 2),
        "read_path_in_process_mb_s": round(mbps(t_read_path), 1),
        "read_path_ratio_vs_cat": round(mbps(t_read_path) / mbps(t_cat), 2),
        "mesh_cat_startup_s": round(t_start, 3),
        **memory,
    }
    report(figures, args.json)
    print("targets: add ratio >= 0.5, cat ratio >= 0.5")


def report(figures: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
