"""Gateway benchmark: requests/s, MB/s and p50/p99 latency for a small (20 KiB) and a large
(64 MiB) file served by a real `mesh up --http` node, against `python -m http.server` and nginx
(sendfile on, one worker; skipped if not installed) serving the same bytes in the same run, and,
as the gateway's ceiling, hypercorn's trio worker as the agent runs it (with
mesh.gateway.hypercorn_ext) and a trivial app answering from memory.
Loopback only, bounded load (a few client threads, a fixed duration, fresh connection per request
as http.server closes after each; `--keep-alive`: each client keeps its connection, as a browser
loading a page of thumbnails does, and gets a new one from a server that closed it). Prints a
table and the gateway/baseline ratios.

`--rss`: instead, the agent's memory while 50 keep-alive connections (browsers) download media
from it until 10 GB have moved (or `--rss-seconds` pass): its VmRSS sampled every 50 ms from
/proc/PID/status, the peak and VmHWM reported.

    python bench/gateway_bench.py [--seconds 5] [--clients 4] [--large-mib 64] [--keep-alive] [--json]
    python bench/gateway_bench.py --rss [--rss-gb 10] [--rss-clients 50] [--rss-file-mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from mesh.drivers.tcp import free_port

SMALL_BYTES = 20 * 1024
READ_BYTES = 1024 * 1024
LARGE_SECONDS_MAX = 60.0  # the large-file run stops after this long ...
LARGE_DOWNLOADS = 6  # ... or this many downloads, whichever is first
RSS_SAMPLE_S = 0.05


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


def fetch(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> int:
    """One GET, on a fresh connection or on `conn` (kept open, as a browser keeps its
    connections; http.client opens a new one when the server closed it, as http.server does
    after each response); the bytes read."""
    fresh = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    total = 0
    while True:
        piece = response.read(READ_BYTES)
        if not piece:
            break
        total += len(piece)
    if fresh:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")
    return total


def cpu_s(group: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # fields after the name: state ppid pgrp ... utime(12) stime(13)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def load(port: int, path: str, seconds: float, clients: int, max_requests: int | None = None,
         group: int | None = None, keep_alive: bool = False) -> dict:
    """`clients` threads fetching `path` until `seconds` pass (or max_requests are done), each on
    a fresh connection per request or (`keep_alive`) on one it keeps; with `group`, the server's
    CPU milliseconds per request too."""
    latencies: list[float] = []
    done_bytes = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60) if keep_alive else None
        while time.monotonic() < stop_at:
            with lock:
                if max_requests is not None and len(latencies) >= max_requests:
                    break
            start = time.perf_counter()
            size = fetch(port, path, conn)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                done_bytes[0] += size
        if conn is not None:
            conn.close()

    cpu_before = cpu_s(group) if group is not None else 0.0
    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    cpu = cpu_s(group) - cpu_before if group is not None else float("nan")
    latencies.sort()
    return {"requests": len(latencies), "req_s": len(latencies) / wall, "mb_s": done_bytes[0] / wall / 1e6,
            "cpu_ms": 1000 * cpu / max(1, len(latencies)),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def start_http_server(directory: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(directory)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def start_nginx(directory: Path, port: int) -> subprocess.Popen | None:
    """nginx as a static server with sendfile (off by default in nginx.conf), one worker."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        return None
    prefix = directory.parent
    user = "user root root; " if os.geteuid() == 0 else ""  # workers read the 0700 temp directory
    conf = prefix / "nginx.conf"
    conf.write_text(f"daemon off; {user}worker_processes 1; pid {prefix}/nginx.pid; error_log stderr;"
                    f" events {{}} http {{ access_log off; sendfile on; tcp_nopush on;"
                    f" client_body_temp_path {prefix}/nginx-tmp; server {{ listen 127.0.0.1:{port};"
                    f" root {directory}; }} }}")
    return subprocess.Popen([nginx, "-c", str(conf), "-p", str(prefix)], start_new_session=True)


BARE_HYPERCORN = """
import sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve
from mesh.gateway import hypercorn_ext
hypercorn_ext.install()  # the server as the agent runs it
files = sys.argv[2]
bodies = {}
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    name = scope["path"].lstrip("/")
    if name not in bodies:
        bodies[name] = open(f"{files}/{name}", "rb").read()
    body = bodies[name]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
config = Config()
config.bind, config.accesslog, config.errorlog = [f"127.0.0.1:{sys.argv[1]}"], None, None
trio.run(serve, app, config)
"""


def start_bare_hypercorn(directory: Path, port: int) -> subprocess.Popen:
    """The ceiling for the gateway: hypercorn's trio worker, with what the agent adds to it
    (mesh.gateway.hypercorn_ext), and a five-line app answering from memory."""
    return subprocess.Popen([sys.executable, "-c", BARE_HYPERCORN, str(port), str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
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
    parser.add_argument("--keep-alive", action="store_true",
                        help="each client keeps its connection, as browsers do (servers that close it get a new one)")
    parser.add_argument("--rss", action="store_true", help="measure the agent's memory under media load instead")
    parser.add_argument("--rss-gb", type=float, default=10.0, help="bytes to move in the --rss run (GB)")
    parser.add_argument("--rss-clients", type=int, default=50, help="concurrent keep-alive connections")
    parser.add_argument("--rss-file-mib", type=int, default=256, help="size of the media file they download")
    parser.add_argument("--rss-seconds", type=float, default=300.0, help="stop the --rss run after this long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        results = run_rss(Path(tmp), args) if args.rss else run(Path(tmp), args)
    if args.json:
        print(json.dumps(results, indent=2))
    elif args.rss:
        print_rss(results)
    else:
        print_table(results, args)


def print_table(results: dict, args) -> None:
    print(f"{args.clients} clients, {args.seconds:g} s per small run; "
          f"2 clients, {LARGE_DOWNLOADS} downloads per large run; "
          + ("connections kept (keep-alive)" if args.keep_alive else "a fresh connection per request"))
    print(f"{'file':6} {'server':44} {'req/s':>8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10}")
    for size in ("small", "large"):
        for server, r in results[size].items():
            if server != "ratio":
                print(f"{size:6} {server:44} {r['req_s']:8.1f} {r['mb_s']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
                      f" {r['cpu_ms']:10.3f}")
        for base, ratio in results[size]["ratio"].items():
            print(f"{size:6} {'ratio vs ' + base:44} {ratio['req_s']:8.2f} {ratio['mb_s']:8.2f}"
                  f" {ratio['p50_ms']:8.2f} {ratio['p99_ms']:8.2f} {ratio['cpu_ms']:10.2f}")


def make_files(files: Path, large_mib: int, names: tuple[str, ...] = ("small.bin", "large.bin")) -> None:
    files.mkdir()
    if "small.bin" in names:
        (files / "small.bin").write_bytes(hashlib.shake_256(b"small").digest(SMALL_BYTES))
    with open(files / names[-1], "wb") as out:
        block = hashlib.shake_256(b"large").digest(READ_BYTES)
        for index in range(large_mib):
            out.write(block[:-4] + index.to_bytes(4, "big"))


def start_node(home: Path, paths: list[Path]) -> tuple[subprocess.Popen, int, dict[str, str]]:
    """A fresh home holding `paths`, up with HTTP on loopback (no mDNS); (process, port, name -> CID)."""
    mesh(home, "init", "bench")
    added = json.loads(mesh(home, "add", *map(str, paths), "--json"))
    cids = {Path(item["path"]).name: item["cid"] for item in added}
    port = free_port()
    node = subprocess.Popen([sys.executable, "-m", "mesh", "--home", str(home), "up", "--no-mdns",
                             "--listen", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{port}",
                             "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return node, port, cids


def run(root: Path, args) -> dict:
    files = root / "files"
    make_files(files, args.large_mib)
    node, gw_port, cids = start_node(root / "home", [files / "small.bin", files / "large.bin"])
    servers = {"gateway": (node, gw_port, "/c/{cid}")}
    port = free_port()
    servers["python -m http.server"] = (start_http_server(files, port), port, "/{name}")
    port = free_port()
    servers["agent's hypercorn, bytes in memory"] = (start_bare_hypercorn(files, port), port, "/{name}")
    port = free_port()
    nginx = start_nginx(files, port)
    if nginx is not None:
        servers["nginx"] = (nginx, port, "/{name}")
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        for name, (_, port, _) in servers.items():
            if name != "gateway":
                wait_http(f"http://127.0.0.1:{port}/small.bin")
        results: dict = {"clients": args.clients, "seconds": args.seconds}
        for size, file_name, seconds, clients, cap in (
            ("small", "small.bin", args.seconds, args.clients, None),
            ("large", "large.bin", LARGE_SECONDS_MAX, 2, LARGE_DOWNLOADS),
        ):
            fetch(gw_port, f"/c/{cids[file_name]}")  # warm the page cache for all
            rows = {}
            for name, (proc, port, pattern) in servers.items():
                path = pattern.format(cid=cids[file_name], name=file_name)
                rows[name] = load(port, path, seconds, clients, cap, proc.pid, args.keep_alive)
            gateway = rows["gateway"]
            rows["ratio"] = {name: {k: gateway[k] / r[k] for k in ("req_s", "mb_s", "p50_ms", "p99_ms", "cpu_ms")}
                             for name, r in rows.items() if name != "gateway"}
            results[size] = rows
        return results
    finally:
        for proc, _, _ in servers.values():
            stop(proc)


# ---- --rss: memory while serving media to many browsers ---------------------------------------------


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found


def browser(port: int, path: str, budget: list[int], lock: threading.Lock, stop_at: float, done: list[int]) -> None:
    """One keep-alive connection downloading `path` again and again while the shared budget lasts."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    buffer = memoryview(bytearray(READ_BYTES))
    try:
        while time.monotonic() < stop_at:
            with lock:
                if budget[0] <= 0:
                    return
            conn.request("GET", path)
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status}")
            while got := response.readinto(buffer):
                with lock:
                    budget[0] -= got
                    done[0] += got
                if budget[0] <= 0 or time.monotonic() >= stop_at:
                    return  # mid-response: the connection closes, as a browser tab would
    finally:
        conn.close()


def run_rss(root: Path, args) -> dict:
    files = root / "files"
    make_files(files, args.rss_file_mib, ("media.mp4",))
    node, port, cids = start_node(root / "home", [files / "media.mp4"])
    path = f"/c/{cids['media.mp4']}"
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        fetch(port, path)  # warm the page cache
        idle = read_status(node.pid)["VmRSS"]
        budget, done, lock = [int(args.rss_gb * 1e9)], [0], threading.Lock()
        began = time.monotonic()
        stop_at = began + args.rss_seconds
        threads = [threading.Thread(target=browser, args=(port, path, budget, lock, stop_at, done))
                   for _ in range(args.rss_clients)]
        for thread in threads:
            thread.start()
        peak = idle
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, read_status(node.pid)["VmRSS"])
            time.sleep(RSS_SAMPLE_S)
        wall = time.monotonic() - began
        end = read_status(node.pid)
        return {"clients": args.rss_clients, "file_mib": args.rss_file_mib, "bytes": done[0], "wall_s": wall,
                "mb_s": done[0] / wall / 1e6, "rss_idle_mb": idle / 1e6, "rss_peak_mb": max(peak, end["VmRSS"]) / 1e6,
                "rss_end_mb": end["VmRSS"] / 1e6, "hwm_mb": end["VmHWM"] / 1e6}
    finally:
        stop(node)


def print_rss(r: dict) -> None:
    print(f"{r['clients']} keep-alive connections, {r['file_mib']} MiB media file: {r['bytes'] / 1e9:.2f} GB"
          f" in {r['wall_s']:.1f} s ({r['mb_s']:.0f} MB/s)")
    print(f"agent VmRSS: idle {r['rss_idle_mb']:.1f} MB, peak {r['rss_peak_mb']:.1f} MB, end {r['rss_end_mb']:.1f} MB;"
          f" VmHWM {r['hwm_mb']:.1f} MB")


if __name__ == "__main__":
    main()
