"""Gateway benchmark: requests/s, MB/s and p50/p99 latency for a small (20 KiB) and a large
(64 MiB) file served by a real `mesh up --http` node, against `python -m http.server` serving the
same bytes in the same run (nginx if installed). Loopback only, bounded load (a few client
threads, a fixed duration). Prints a table and the gateway/baseline ratios.

    python bench/gateway_bench.py [--seconds 5] [--clients 4] [--large-mib 64] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

SMALL_BYTES = 20 * 1024
READ_BYTES = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mesh(home: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mesh", "--home", str(home), *args], check=True,
                         capture_output=True)
    return out.stdout.decode()


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def fetch(port: int, path: str) -> int:
    """One GET on a fresh connection (http.server closes after each); the bytes read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    total = 0
    while True:
        piece = response.read(READ_BYTES)
        if not piece:
            break
        total += len(piece)
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")
    return total


def load(port: int, path: str, seconds: float, clients: int, max_requests: int | None = None) -> dict:
    """`clients` threads fetching `path` until `seconds` pass (or max_requests are done)."""
    latencies: list[float] = []
    done_bytes = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < stop_at:
            with lock:
                if max_requests is not None and len(latencies) >= max_requests:
                    return
            start = time.perf_counter()
            size = fetch(port, path)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                done_bytes[0] += size

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies.sort()
    return {"requests": len(latencies), "req_s": len(latencies) / wall, "mb_s": done_bytes[0] / wall / 1e6,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def start_baseline(directory: Path, port: int) -> tuple[subprocess.Popen, str]:
    nginx = shutil.which("nginx")
    if nginx:
        conf = directory.parent / "nginx.conf"
        conf.write_text(f"daemon off; worker_processes 1; pid {directory.parent}/nginx.pid; error_log stderr;"
                        f"events {{}} http {{ access_log off; server {{ listen 127.0.0.1:{port};"
                        f" root {directory}; }} }}")
        return subprocess.Popen([nginx, "-c", str(conf), "-p", str(directory.parent)], start_new_session=True), "nginx"
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(directory)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, "python -m http.server"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        results = run(Path(tmp), args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"baseline: {results['baseline']}; {args.clients} clients, {args.seconds:g} s per small run")
    print(f"{'file':8} {'server':10} {'req/s':>9} {'MB/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for size in ("small", "large"):
        for server in ("gateway", "baseline"):
            r = results[size][server]
            print(f"{size:8} {server:10} {r['req_s']:9.1f} {r['mb_s']:9.1f} {r['p50_ms']:9.2f} {r['p99_ms']:9.2f}")
        ratio = results[size]["ratio"]
        print(f"{size:8} {'ratio':10} {ratio['req_s']:9.2f} {ratio['mb_s']:9.2f} {ratio['p50_ms']:9.2f} {ratio['p99_ms']:9.2f}")


def run(root: Path, args) -> dict:
    files = root / "files"
    files.mkdir()
    (files / "small.bin").write_bytes(hashlib.shake_256(b"small").digest(SMALL_BYTES))
    with open(files / "large.bin", "wb") as out:
        block = hashlib.shake_256(b"large").digest(READ_BYTES)
        for index in range(args.large_mib):
            out.write(block[:-4] + index.to_bytes(4, "big"))
    home = root / "home"
    mesh(home, "init", "bench")
    added = json.loads(mesh(home, "add", str(files / "small.bin"), str(files / "large.bin"), "--json"))
    cids = {Path(item["path"]).name: item["cid"] for item in added}
    gw_port, base_port = free_port(), free_port()
    node = subprocess.Popen([sys.executable, "-m", "mesh", "--home", str(home), "up", "--no-mdns",
                             "--listen", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{gw_port}",
                             "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    baseline, name = start_baseline(files, base_port)
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        wait_http(f"http://127.0.0.1:{base_port}/small.bin")
        results = {"baseline": name, "clients": args.clients, "seconds": args.seconds}
        for size, file_name, seconds, clients, cap in (
            ("small", "small.bin", args.seconds, args.clients, None),
            ("large", "large.bin", 60.0, 2, 6),
        ):
            fetch(gw_port, f"/c/{cids[file_name]}")  # warm the page cache for both
            gateway = load(gw_port, f"/c/{cids[file_name]}", seconds, clients, cap)
            base = load(base_port, f"/{file_name}", seconds, clients, cap)
            results[size] = {"gateway": gateway, "baseline": base,
                             "ratio": {k: gateway[k] / base[k] for k in ("req_s", "mb_s", "p50_ms", "p99_ms")}}
        return results
    finally:
        stop(node)
        stop(baseline)


if __name__ == "__main__":
    main()
