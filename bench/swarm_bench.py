"""Swarm benchmark: one seed to one and to four edges in a namespace lab, against plain HTTP.

    python bench/swarm_bench.py [--mib 256] [--files 64] [--cap-mbit 200] [--edges 4] [--json]

Needs root (network namespaces). Nothing networks outside loopback or the lab's own namespaces:
every agent runs with `--no-mdns` and one static `--peer` (the seed's lab address; the edges find
each other through peer exchange), listening on its lab host's address.

1. For every swarm run, a fresh organizer home (the seed, its own mesh) imports `--mib` MiB of random
   bytes in `--files` files as a release; fresh edge homes join it offline, before any agent runs.
2. Swarm 1->1 and 1->N: a `Lab` of the seed and N edge hosts, every host's egress capped at
   `--cap-mbit` (tc tbf). Two ways to start, each measured:
   - publish (the headline, what the issue describes: organizers publish, the edges that run
     get it): every agent runs and has met every other (each logged `peer.connected` for all of
     them); then the clock starts and `mesh release publish ID` runs on the seed's home (the
     agent picks the new pointer up from its state log).
   - cold: the release is published before any agent runs; the seed agent starts and reports the
     release complete; then the clock starts and the N edge agents are launched together (so
     process start-up, handshakes and the state sync of brand-new members are in the time).
   An edge is done at the timestamp of its `release.complete` log event (JSON logs, ms precision;
   the status file only refreshes every second). Afterwards each edge's status
   (`run/status.json`, what `mesh status --json` prints) gives the chunk bytes it received from
   each peer, hence the seed's share of the upload; each host's eth0 tx_bytes counter (read inside
   its namespace) gives the same on the wire.
3. HTTP baseline, same lab and caps: `python -m http.server` on the seed serving the release
   directory, one `curl --parallel` per edge fetching every file at once (bytes counted, then discarded);
   time until all exit.
4. Loopback, uncapped: a seed and one edge agent on 127.0.0.1 (no lab), against a raw TCP copy of
   the same files in the same run (`socket.sendfile` to a receiver process that writes to disk).

Floor = release bytes / cap (the seed must upload every byte once; with N edges that also upload,
max(F/u, N*F/((N+1)*u)) = F/u). Mbit = 10**6 bits, MB = 10**6 bytes, MiB = 2**20 bytes. Per-agent
CPU seconds are reported because the machine has 2 cores and every agent encrypts, decrypts and
hashes in Python. Every run is bounded by `--timeout-s` and the lab is torn down even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.netlab.lab import build_lab, mbit_to_bytes_per_s  # noqa: E402
from mesh.drivers.agentfiles import read_status  # noqa: E402
from mesh.drivers.tcp import free_port  # noqa: E402
from mesh.testing.netns import Lab, lab_available  # noqa: E402

AGENT_PORT = 7450
HTTP_PORT = 8000
AGENT_START_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.1
STATUS_SETTLE_S = 1.5  # the status file is rewritten every second
WRITE_BLOCK_BYTES = 1024 * 1024
RECEIVE_BYTES_MAX = 256 * 1024
TIMELINE_EVENTS = ("agent.started", "peer.connected", "release.current", "release.listed", "release.complete")
CURL_PARALLEL_MAX = 300  # curl's own ceiling for --parallel-max


class BenchError(Exception):
    """A run that did not finish (timeout, agent died): the message says which and why."""


# ---- setup: files, homes, release ---------------------------------------------------------------


BYTECODE: dict[str, Path] = {}  # "cache": where children keep compiled modules (set by `run`)


def agent_env() -> dict[str, str]:
    """Children run this checkout's code with their bytecode cached (as after `pip install`): with
    PYTHONDONTWRITEBYTECODE set, as in some shells here, every agent and every `mesh release
    publish` would compile the package first (~0.1 s of CPU each, on the clock for publish)."""
    env = dict(os.environ)
    env.pop("MESH_HOME", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    if "cache" in BYTECODE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(BYTECODE["cache"])
    return env


def mesh_cli(home: Path, *args: str) -> str:
    """Run `python -m mesh --home HOME ARGS...` in this namespace (no networking); its stdout."""
    argv = [sys.executable, "-m", "mesh", "--home", str(home), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=agent_env())
    if result.returncode != 0:
        raise BenchError(f"mesh {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return result.stdout


def write_random_files(directory: Path, total_bytes: int, files: int) -> list[Path]:
    """`files` files of random bytes adding up to `total_bytes`, streamed in 1 MiB blocks."""
    directory.mkdir(parents=True)
    paths = []
    base, extra = divmod(total_bytes, files)
    for index in range(files):
        path = directory / f"asset-{index:04d}.bin"
        remaining = base + (1 if index < extra else 0)
        with open(path, "wb") as handle:
            while remaining:
                block = os.urandom(min(WRITE_BLOCK_BYTES, remaining))
                handle.write(block)
                remaining -= len(block)
        paths.append(path)
    return paths


def make_seed(home: Path, release_dir: Path, publish: bool) -> str:
    """An organizer home holding the release (published or not); the release id."""
    mesh_cli(home, "init", "swarm-bench", "--node-name", "seed")
    created = json.loads(mesh_cli(home, "release", "create", "bench", str(release_dir), "--json"))
    if publish:
        mesh_cli(home, "release", "publish", created["id"])
    return created["id"]


@dataclass(frozen=True)
class Homes:
    """The homes of one run: a seed (its own mesh) and edges joined to it."""

    seed: Path
    release_id: str
    edges: list[Path]


def make_homes(directory: Path, release_dir: Path, edges: int, publish: bool) -> Homes:
    seed = directory / "seed"
    release_id = make_seed(seed, release_dir, publish)
    edge_homes = [directory / f"e{index + 1}" for index in range(edges)]
    for index, home in enumerate(edge_homes):
        join_edge(seed, home, f"{directory.name}-e{index + 1}")
    return Homes(seed, release_id, edge_homes)


def join_edge(seed_home: Path, home: Path, name: str) -> None:
    """A fresh edge home joined offline (no agent runs, so the invite carries no address hints)."""
    token = mesh_cli(seed_home, "invite", "--role", "edge", "--name", name).strip()
    mesh_cli(home, "join", token)


def node_id(home: Path) -> str:
    return json.loads(mesh_cli(home, "id", "--json"))["node_id"]


# ---- agents ---------------------------------------------------------------------------------------


@dataclass
class Agent:
    """One `mesh up` process and where its JSON log goes."""

    name: str  # lab host name or a loopback label
    home: Path  # its home directory
    log_path: Path  # stderr/stdout (JSON lines)
    process: subprocess.Popen | None = None  # the agent, once started
    events: dict[str, float] = field(default_factory=dict)  # first ts of each timeline event
    connected: int = 0  # `peer.connected` events seen
    _log_offset: int = 0

    def read_events(self) -> None:
        """Pick up new timeline events from the log."""
        with open(self.log_path, "rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        for line in complete.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            event = doc.get("event") if isinstance(doc, dict) else None
            self.connected += event == "peer.connected"
            if event in TIMELINE_EVENTS and event not in self.events:
                self.events[event] = float(doc["ts"])

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"agent {self.name} exited with {self.process.returncode}:\n{tail}")

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the agent process so far (None once it is gone)."""
        times = self.cpu_times()
        return None if times is None else sum(times)

    def cpu_times(self) -> tuple[float, float] | None:
        """(user, system) CPU seconds of the agent process so far (None once it is gone)."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def up_argv(home: Path, listen: str, peer: str | None, log_level: str) -> list[str]:
    argv = [sys.executable, "-m", "mesh", "--home", str(home), "up", "--listen", listen, "--no-mdns",
            "--log-format", "json", "--log-level", log_level]
    return argv + (["--peer", peer] if peer else [])


def start_agent(agent: Agent, argv: list[str], lab: Lab | None) -> None:
    log = open(agent.log_path, "ab")
    try:
        if lab is None:
            agent.process = subprocess.Popen(argv, stdout=log, stderr=log, env=agent_env(),
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        else:
            agent.process = lab.run(agent.name, argv, stdout=log, stderr=log, env=agent_env(),
                                    stdin=subprocess.DEVNULL)
    finally:
        log.close()


def stop_agents(agents: list[Agent]) -> None:
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.send_signal(signal.SIGTERM)
    for agent in agents:
        if agent.process is None:
            continue
        try:
            agent.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait()


def wait_seed_ready(seed: Agent, deadline: float, release: bool = True) -> None:
    """Until the seed's status says it runs (and, with `release`, holds its whole release)."""
    while time.monotonic() < deadline:
        seed.check_alive()
        status = read_status(seed.home)
        if status is not None and (not release or (status.get("release") or {}).get("complete")):
            return
        time.sleep(POLL_INTERVAL_S)
    raise BenchError(f"seed agent did not report ready in time:\n{seed.log_path.read_text()[-2000:]}")


def wait_meshed(agents: list[Agent], deadline: float) -> None:
    """Until every agent logged a session with every other."""
    while True:
        for agent in agents:
            agent.read_events()
            agent.check_alive()
        if all(agent.connected >= len(agents) - 1 for agent in agents):
            return
        if time.monotonic() > deadline:
            counts = {a.name: a.connected for a in agents}
            raise BenchError(f"agents did not all meet in time; sessions per agent: {counts}")
        time.sleep(POLL_INTERVAL_S)


def wait_edges_complete(edges: list[Agent], deadline: float) -> None:
    pending = list(edges)
    while pending:
        for agent in list(pending):
            agent.read_events()
            agent.check_alive()
            if "release.complete" in agent.events:
                pending.remove(agent)
        if pending and time.monotonic() > deadline:
            progress = {a.name: (read_status(a.home) or {}).get("release") for a in pending}
            raise BenchError(f"timed out; not complete: {progress}")
        time.sleep(POLL_INTERVAL_S)


# ---- scenarios --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwarmRun:
    """One seed -> N edges transfer of the release."""

    edges: int  # N
    start: str  # "publish": agents up and met, clock from `release publish`; "cold": from launching the edges
    seconds: float  # clock start .. last edge's release.complete
    transfer_seconds: float  # the same, from the earliest edge's release.current instead
    per_edge_seconds: dict[str, float]  # edge -> clock start .. its release.complete
    timeline_s: dict[str, dict[str, float]]  # edge -> event -> seconds after the clock started
    received_from: dict[str, dict[str, int]]  # edge -> peer name -> chunk bytes received
    seed_share: float  # chunk bytes the edges got from the seed / all chunk bytes they got
    tx_bytes: dict[str, int]  # host -> bytes its eth0 sent during the run (frames, all protocols)
    seed_wire_share: float  # the seed's tx bytes / every host's tx bytes
    seed_upload_releases: float  # the seed's tx bytes / release bytes (ideal: just over 1)
    cpu_s: dict[str, float]  # agent -> CPU seconds used during the run (user + system)
    cpu_system_s: dict[str, float] = field(default_factory=dict)  # agent -> of which in the kernel


def run_swarm(homes: Homes, start: str, cap_mbit: float | None, timeout_s: float, total_bytes: int,
              log_level: str, logs: Path, hooks=None) -> SwarmRun:
    """`hooks` (optional): `.started(agents)` just before the clock starts,
    `.finished()` when the last edge is complete (bench/datapath_bench.py's profiler)."""
    names = [f"e{index + 1}" for index in range(len(homes.edges))]
    label = f"{start}{len(names)}"
    with build_lab(len(homes.edges), cap_mbit) as lab:
        seed_addr = f"{lab.address('seed')}:{AGENT_PORT}"
        seed = Agent("seed", homes.seed, logs / f"{label}-seed.log")
        edges = [Agent(n, h, logs / f"{label}-{n}.log") for n, h in zip(names, homes.edges)]
        try:
            start_agent(seed, up_argv(homes.seed, seed_addr, None, log_level), lab)
            wait_seed_ready(seed, time.monotonic() + AGENT_START_TIMEOUT_S, release=start == "cold")
            argvs = [up_argv(e.home, f"{lab.address(e.name)}:{AGENT_PORT}", seed_addr, log_level) for e in edges]
            if start == "publish":
                for edge, argv in zip(edges, argvs):
                    start_agent(edge, argv, lab)
                wait_meshed([seed, *edges], time.monotonic() + AGENT_START_TIMEOUT_S)
            if hooks is not None:
                hooks.started([seed, *edges])
            cpu0 = {a.name: a.cpu_s() or 0.0 for a in [seed, *edges]}
            sys0 = {a.name: (a.cpu_times() or (0.0, 0.0))[1] for a in [seed, *edges]}
            tx0 = {host: tx_bytes(lab, host) for host in lab.hosts}
            started = time.time()
            if start == "publish":
                mesh_cli(homes.seed, "release", "publish", homes.release_id)
            else:
                for edge, argv in zip(edges, argvs):
                    start_agent(edge, argv, lab)
            wait_edges_complete(edges, time.monotonic() + timeout_s)
            cpu = {a.name: (a.cpu_s() or 0.0) - cpu0[a.name] for a in [seed, *edges]}
            cpu_sys = {a.name: (a.cpu_times() or (0.0, 0.0))[1] - sys0[a.name] for a in [seed, *edges]}
            if hooks is not None:
                hooks.finished()
            sent = {host: tx_bytes(lab, host) - tx0[host] for host in lab.hosts}
            time.sleep(STATUS_SETTLE_S)
            statuses = {e.name: read_status(e.home) or {} for e in edges}
        finally:
            stop_agents([*edges, seed])
    return summarize_swarm(edges, start, started, statuses, node_id(homes.seed), cpu, sent, total_bytes, cpu_sys)


def tx_bytes(lab: Lab, host: str) -> int:
    """Bytes the host's eth0 has sent (its namespace's sysfs counter)."""
    result = lab.call(host, ["cat", "/sys/class/net/eth0/statistics/tx_bytes"], timeout_s=10)
    if result.returncode != 0:
        raise BenchError(f"cannot read {host}'s tx_bytes: {result.stderr.strip()}")
    return int(result.stdout)


def summarize_swarm(edges: list[Agent], start: str, started: float, statuses: dict[str, dict], seed_id: str,
                    cpu: dict[str, float], sent: dict[str, int], total_bytes: int,
                    cpu_sys: dict[str, float] | None = None) -> SwarmRun:
    done = {e.name: e.events["release.complete"] - started for e in edges}
    timeline = {e.name: {k: round(v - started, 3) for k, v in e.events.items()} for e in edges}
    first_current = min(e.events.get("release.current", started) for e in edges)
    received: dict[str, dict[str, int]] = {}
    from_seed = total = 0
    for name, status in statuses.items():
        received[name] = {}
        for peer in status.get("peers", []):
            got = int(peer.get("chunk_bytes_received", 0))
            label = "seed" if peer["node_id"] == seed_id else peer.get("name") or peer["node_id"][:8]
            received[name][label] = got
            total += got
            from_seed += got if peer["node_id"] == seed_id else 0
    return SwarmRun(
        edges=len(edges), start=start, seconds=max(done.values()),
        transfer_seconds=max(e.events["release.complete"] for e in edges) - first_current,
        per_edge_seconds=done, timeline_s=timeline, received_from=received,
        seed_share=from_seed / total if total else float("nan"), tx_bytes=sent,
        seed_wire_share=sent["seed"] / sum(sent.values()),
        seed_upload_releases=sent["seed"] / total_bytes if total_bytes else float("nan"), cpu_s=cpu,
        cpu_system_s=cpu_sys or {},
    )


@dataclass(frozen=True)
class HttpRun:
    """One HTTP server -> N curl clients, every file fetched in parallel."""

    edges: int  # N
    seconds: float  # launch of the clients .. the last one exits
    per_edge_seconds: dict[str, float]  # client -> its own time
    bytes_per_edge: int  # bytes each client received (counted by curl, written to /dev/null)


def run_http(release_dir: Path, paths: list[Path], edges: int, cap_mbit: float | None,
             timeout_s: float) -> HttpRun:
    names = [f"e{index + 1}" for index in range(edges)]
    with build_lab(edges, cap_mbit) as lab:
        base = f"http://{lab.address('seed')}:{HTTP_PORT}"
        server_argv = [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", lab.address("seed"),
                       "--directory", str(release_dir)]
        lab.run("seed", server_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http_ready(lab, names[0], base)
        clients = {}
        started = time.monotonic()
        for name in names:  # bytes are counted, then dropped: a disk stall is not the network
            argv = ["curl", "--silent", "--show-error", "--fail", "--parallel", "--write-out", "%{size_download}\\n",
                    "--parallel-max", str(min(len(paths), CURL_PARALLEL_MAX))]
            for path in paths:
                argv += ["--output", "/dev/null", f"{base}/{path.name}"]
            clients[name] = lab.run(name, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finished = wait_clients(clients, started, started + timeout_s)
    sizes = {n: sum(int(x) for x in c.stdout.read().split()) for n, c in clients.items()}
    expected = sum(p.stat().st_size for p in paths)
    if any(size != expected for size in sizes.values()):
        raise BenchError(f"HTTP clients got {sizes}, expected {expected} bytes each")
    return HttpRun(edges, max(finished.values()), finished, expected)


def wait_http_ready(lab: Lab, client: str, base: str) -> None:
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        probe = lab.call(client, ["curl", "--silent", "--fail", "--output", "/dev/null", f"{base}/"], timeout_s=10)
        if probe.returncode == 0:
            return
        time.sleep(POLL_INTERVAL_S)
    raise BenchError("the HTTP server did not come up")


def wait_clients(clients: dict[str, subprocess.Popen], started: float, deadline: float) -> dict[str, float]:
    finished: dict[str, float] = {}
    while len(finished) < len(clients):
        for name, process in clients.items():
            if name not in finished and process.poll() is not None:
                if process.returncode != 0:
                    raise BenchError(f"curl on {name} failed ({process.returncode}): {process.stderr.read()!r}")
                finished[name] = time.monotonic() - started
        if len(finished) < len(clients) and time.monotonic() > deadline:
            raise BenchError(f"HTTP clients timed out; finished: {sorted(finished)}")
        time.sleep(POLL_INTERVAL_S / 5)
    return finished


@dataclass(frozen=True)
class LoopbackRun:
    """One seed agent -> one edge agent on 127.0.0.1 against a raw TCP copy of the same bytes."""

    bytes: int  # release bytes
    mesh_seconds: float  # edge launch .. release.complete
    mesh_transfer_seconds: float  # edge's release.current .. release.complete
    raw_seconds: float  # first byte sent .. receiver's ack after the last byte was written
    mesh_mb_s: float  # bytes / mesh_seconds / 1e6
    mesh_transfer_mb_s: float  # bytes / mesh_transfer_seconds / 1e6
    raw_mb_s: float  # bytes / raw_seconds / 1e6
    ratio: float  # mesh_mb_s / raw_mb_s
    transfer_ratio: float  # mesh_transfer_mb_s / raw_mb_s
    cpu_s: dict[str, float]  # agent -> CPU seconds during the mesh run


def run_loopback_mesh(seed_home: Path, edge_home: Path, timeout_s: float, log_level: str,
                      logs: Path) -> tuple[float, float, dict[str, float]]:
    seed_addr, edge_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    seed = Agent("seed", seed_home, logs / "loopback-seed.log")
    edge = Agent("edge", edge_home, logs / "loopback-edge.log")
    try:
        start_agent(seed, up_argv(seed_home, seed_addr, None, log_level), None)
        wait_seed_ready(seed, time.monotonic() + AGENT_START_TIMEOUT_S)
        seed_cpu0 = seed.cpu_s() or 0.0
        argv = up_argv(edge_home, edge_addr, seed_addr, log_level)
        started = time.time()
        start_agent(edge, argv, None)
        wait_edges_complete([edge], time.monotonic() + timeout_s)
        cpu = {"edge": edge.cpu_s() or 0.0, "seed": (seed.cpu_s() or 0.0) - seed_cpu0}
    finally:
        stop_agents([edge, seed])
    done = edge.events["release.complete"]
    return done - started, done - edge.events["release.current"], cpu


RAW_RECEIVER = r"""
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
buffer = bytearray(int(sys.argv[2]))
view = memoryview(buffer)
total = 0
with open(sys.argv[1], "wb") as out:
    while True:
        n = conn.recv_into(view)
        if n == 0:
            break
        out.write(view[:n])
        total += n
conn.sendall(total.to_bytes(8, "big"))
conn.close()
"""


def run_raw_tcp(paths: list[Path], sink: Path, timeout_s: float) -> tuple[float, int]:
    """Send every file over one loopback TCP connection with sendfile; (seconds, bytes acked)."""
    receiver = subprocess.Popen([sys.executable, "-c", RAW_RECEIVER, str(sink), str(RECEIVE_BYTES_MAX)],
                                stdout=subprocess.PIPE, text=True)
    try:
        port = int(receiver.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            started = time.monotonic()
            for path in paths:
                with open(path, "rb") as handle:
                    sock.sendfile(handle)
            sock.shutdown(socket.SHUT_WR)
            acked = int.from_bytes(_receive_exactly(sock, 8), "big")
            seconds = time.monotonic() - started
        receiver.wait(timeout=timeout_s)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        sink.unlink(missing_ok=True)
    return seconds, acked


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise BenchError("raw TCP receiver closed before acknowledging")
        data += more
    return data


def run_loopback(seed_home: Path, edge_home: Path, paths: list[Path], total: int, timeout_s: float,
                 log_level: str, workdir: Path) -> LoopbackRun:
    mesh_s, transfer_s, cpu = run_loopback_mesh(seed_home, edge_home, timeout_s, log_level, workdir / "logs")
    raw_s, acked = run_raw_tcp(paths, workdir / "raw-sink.bin", timeout_s)
    if acked != total:
        raise BenchError(f"raw TCP receiver got {acked} of {total} bytes")
    mesh_mb_s, transfer_mb_s, raw_mb_s = total / mesh_s / 1e6, total / transfer_s / 1e6, total / raw_s / 1e6
    return LoopbackRun(total, mesh_s, transfer_s, raw_s, mesh_mb_s, transfer_mb_s, raw_mb_s,
                       mesh_mb_s / raw_mb_s, transfer_mb_s / raw_mb_s, cpu)


# ---- the whole benchmark ------------------------------------------------------------------------------


SCENARIOS = ("swarm", "cold", "http", "loopback")


def code_version() -> str:
    """The commit under test, and whether `mesh/` differs from it (read-only git)."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        return result.stdout.strip() if result.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes in mesh/" if git("status", "--porcelain", "--", "mesh") else "")


def run(args: argparse.Namespace, workdir: Path) -> dict:
    total = args.mib * 1024 * 1024
    release_dir = workdir / "release"
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    BYTECODE["cache"] = workdir / "pycache"
    paths = write_random_files(release_dir, total, args.files)
    floor_s = total / mbit_to_bytes_per_s(args.cap_mbit)
    timeout_s = args.timeout_s or 60 + 10 * floor_s
    print(f"# release: {total:,} bytes in {args.files} files; floor {floor_s:.2f} s at "
          f"{args.cap_mbit:g} Mbit/s; timeout {timeout_s:.0f} s per run", file=sys.stderr, flush=True)

    def swarm(start: str, edges: int) -> SwarmRun:
        homes = make_homes(workdir / f"{start}{edges}", release_dir, edges, publish=start == "cold")
        return run_swarm(homes, start, args.cap_mbit, timeout_s, total, args.log_level, logs)

    def loopback() -> LoopbackRun:
        homes = make_homes(workdir / "loop", release_dir, 1, publish=True)
        return run_loopback(homes.seed, homes.edges[0], paths, total, timeout_s, args.log_level, workdir)

    results: dict = {"mib": args.mib, "files": args.files, "cap_mbit": args.cap_mbit, "edges": args.edges,
                     "bytes": total, "floor_s": floor_s, "code": code_version(), "cpus": os.cpu_count(),
                     "discovery": "static --peer to the seed + peer exchange, --no-mdns"}
    n = args.edges
    steps = {
        "swarm_1": lambda: swarm("publish", 1),
        f"swarm_{n}": lambda: swarm("publish", n),
        "cold_1": lambda: swarm("cold", 1),
        f"cold_{n}": lambda: swarm("cold", n),
        "http_1": lambda: run_http(release_dir, paths, 1, args.cap_mbit, timeout_s),
        f"http_{n}": lambda: run_http(release_dir, paths, n, args.cap_mbit, timeout_s),
        "loopback": loopback,
    }
    for key, step in steps.items():
        if key.split("_")[0] not in args.scenarios:
            continue
        print(f"# running {key} ...", file=sys.stderr, flush=True)
        results[key] = asdict(step())
    results["figures"] = figures(results, n)
    return results


def figures(results: dict, n: int) -> dict:
    """The headline ratios, for whichever scenarios ran."""
    floor, out = results["floor_s"], {}
    one, many = results.get("swarm_1"), results.get(f"swarm_{n}")
    http_one, http_many = results.get("http_1"), results.get(f"http_{n}")
    if one and many:
        out.update({"swarm_1_s": one["seconds"], f"swarm_{n}_s": many["seconds"],
                    f"ratio_{n}_over_1": many["seconds"] / one["seconds"],
                    f"transfer_ratio_{n}_over_1": many["transfer_seconds"] / one["transfer_seconds"],
                    "swarm_1_over_floor": one["seconds"] / floor,
                    f"swarm_{n}_over_floor": many["seconds"] / floor,
                    f"swarm_{n}_transfer_over_floor": many["transfer_seconds"] / floor,
                    f"seed_share_{n}": many["seed_share"], f"seed_wire_share_{n}": many["seed_wire_share"],
                    f"seed_upload_releases_{n}": many["seed_upload_releases"]})
    cold_one, cold_many = results.get("cold_1"), results.get(f"cold_{n}")
    if cold_one and cold_many:
        out.update({f"cold_ratio_{n}_over_1": cold_many["seconds"] / cold_one["seconds"],
                    "cold_1_over_floor": cold_one["seconds"] / floor,
                    f"cold_{n}_over_floor": cold_many["seconds"] / floor})
    if http_one and http_many:
        out.update({"http_1_over_floor": http_one["seconds"] / floor,
                    f"http_{n}_over_floor": http_many["seconds"] / floor})
    if "loopback" in results:
        loop = results["loopback"]
        out.update({"loopback_mesh_mb_s": loop["mesh_mb_s"], "loopback_raw_mb_s": loop["raw_mb_s"],
                    "loopback_ratio": loop["ratio"], "loopback_transfer_ratio": loop["transfer_ratio"]})
    return out


def _per(times: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in sorted(times.items()))


def report(results: dict) -> str:
    """The human-readable summary."""
    f, floor, n = results["figures"], results["floor_s"], results["edges"]
    lines = [
        f"swarm bench: {results['mib']} MiB in {results['files']} files, every lab host's egress capped at "
        f"{results['cap_mbit']:g} Mbit/s; floor F/u = {floor:.2f} s",
        f"code {results['code']}; {results['cpus']} CPUs; discovery: {results['discovery']}",
        "",
        f"{'run':<26}{'seconds':>9}{'/ floor':>9}   notes",
    ]
    for key, label in (("swarm_1", "mesh 1->1"), (f"swarm_{n}", f"mesh 1->{n}"),
                       ("cold_1", "cold start 1->1"), (f"cold_{n}", f"cold start 1->{n}")):
        if key in results:
            run_ = results[key]
            lines.append(f"{label:<26}{run_['seconds']:>9.2f}"
                         f"{run_['seconds'] / floor:>9.2f}   per edge: {_per(run_['per_edge_seconds'])}")
            lines.append(f"{'  from release.current':<26}{run_['transfer_seconds']:>9.2f}"
                         f"{run_['transfer_seconds'] / floor:>9.2f}   seed share {run_['seed_share']:.1%}")
    for key in ("http_1", f"http_{n}"):
        if key in results:
            run_ = results[key]
            lines.append(f"{'http 1->' + str(run_['edges']):<26}{run_['seconds']:>9.2f}"
                         f"{run_['seconds'] / floor:>9.2f}   per client: {_per(run_['per_edge_seconds'])}")
    lines += ["", "mesh: every agent up and met, clock from `mesh release publish`; cold start: release "
              "published first, clock from launching the edge agents", ""]
    if f"ratio_{n}_over_1" in f:
        many = results[f"swarm_{n}"]
        lines += [
            f"ratio mesh 1->{n} / 1->1      {f[f'ratio_{n}_over_1']:6.2f}   (target <= 1.15; from release.current "
            f"{f[f'transfer_ratio_{n}_over_1']:.2f})",
            f"mesh 1->{n} / floor           {f[f'swarm_{n}_over_floor']:6.2f}   (target <= 1.2; from release.current "
            f"{f[f'swarm_{n}_transfer_over_floor']:.2f})",
            f"seed share of upload, 1->{n} {f[f'seed_share_{n}']:6.1%}   (ideal {1 / n:.0%}: each byte leaves the "
            f"seed once; from the edges' per-peer chunk_bytes_received)",
            f"seed upload on the wire      {many['seed_upload_releases']:6.2f}x the release; {many['seed_wire_share']:.1%} "
            f"of all bytes sent (eth0 tx_bytes: " + ", ".join(f"{h} {b / 2**20:.0f}" for h, b in
                                                             sorted(many["tx_bytes"].items())) + " MiB)",
            f"MiB received, 1->{n}: " + "; ".join(
                f"{edge} <- " + ", ".join(f"{p} {b / 2**20:.1f}" for p, b in sorted(peers.items()))
                for edge, peers in sorted(many["received_from"].items())),
            f"agent CPU s, 1->{n}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(many["cpu_s"].items()))
            + f" (sum {sum(many['cpu_s'].values()):.1f} in {many['seconds']:.1f} s wall on {results['cpus']} CPUs: "
            f"at least {sum(many['cpu_s'].values()) / results['cpus']:.1f} s even if perfectly parallel)",
        ]
    if f"cold_ratio_{n}_over_1" in f:
        lines.append(f"cold start 1->{n} / 1->1     {f[f'cold_ratio_{n}_over_1']:6.2f};  1->{n} / floor "
                     f"{f[f'cold_{n}_over_floor']:.2f}")
    if f"http_{n}_over_floor" in f:
        lines.append(f"http 1->{n} / floor           {f[f'http_{n}_over_floor']:6.2f}   (expected ~{n})")
    if "loopback" in results:
        loop = results["loopback"]
        lines += [
            "",
            f"loopback 1->1, uncapped ({loop['bytes']:,} bytes):",
            f"  mesh  {loop['mesh_mb_s']:8.1f} MB/s  ({loop['mesh_seconds']:.2f} s from launch; "
            f"{loop['mesh_transfer_mb_s']:.1f} MB/s in {loop['mesh_transfer_seconds']:.2f} s from release.current)",
            f"  raw   {loop['raw_mb_s']:8.1f} MB/s  ({loop['raw_seconds']:.2f} s, sendfile -> recv_into + write)",
            f"  ratio {loop['ratio']:8.3f}       (from release.current {loop['transfer_ratio']:.3f}); agent CPU s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(loop["cpu_s"].items())),
        ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="release size, MiB")
    parser.add_argument("--files", type=int, default=64, help="files in the release")
    parser.add_argument("--cap-mbit", type=float, default=200.0, help="egress cap of every lab host, Mbit/s")
    parser.add_argument("--edges", type=int, default=4, help="edges in the 1->N runs")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    parser.add_argument("--timeout-s", type=float, default=None, help="per run (default 60 + 10 x floor)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info"], help="agents' log level")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (homes, logs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.mib <= 0 or args.files <= 0 or args.cap_mbit <= 0 or not 1 <= args.edges <= 16:
        parser.error("--mib, --files and --cap-mbit must be positive, --edges in 1..16")
    args.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if not args.scenarios or args.scenarios - set(SCENARIOS):
        parser.error(f"--scenarios: choose from {','.join(SCENARIOS)}")
    return args


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_bench(args: argparse.Namespace, prefix: str, run_in: Callable[[argparse.Namespace, Path], dict],
              report_of: Callable[[dict], str], needs_lab: bool = True) -> int:
    """What every lab bench's `main` does: unwind on SIGTERM/SIGHUP (stop agents, delete the lab),
    refuse without a namespace lab, run in a fresh work directory (kept with --keep or on failure),
    print the report or, with --json, the results. The exit status."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    reason = lab_available() if needs_lab else None
    if reason is not None:
        print(f"error: this benchmark needs a namespace lab: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        results = run_in(args, workdir)
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"error: {exc}\n(work directory kept: {workdir})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2) if args.json else report_of(results))
    if args.keep:
        print(f"# work directory kept: {workdir}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_bench(args, "swarm-bench-", run, report, needs_lab=bool(args.scenarios & {"swarm", "cold", "http"}))


if __name__ == "__main__":
    sys.exit(main())
