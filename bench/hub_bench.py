"""Co-op hub benchmark: one hub process for N meshes against N single-mesh agents, same run.

    python bench/hub_bench.py [--meshes 5] [--edges 2] [--common-mib 16] [--own-mib 2] [--json]

On loopback, no mDNS. Each of N organizers publishes a release of one file every creator shares
(`--common-mib`: the co-op's own jingle, a sponsor reel) and one of its own (`--own-mib`). Phase
"hub": one hub home joined to every mesh runs `mesh up`; each mesh's organizer and edges dial
only the hub. Phase "separate": N single-mesh homes (one per mesh, the hub role) each run their own
`mesh up`, with fresh edges. In each phase the clock runs until every edge holds its release;
reported per phase: the hub side's peak RSS (VmHWM, summed over its processes), its CPU seconds,
and its chunk bytes on disk (each inode once) against the distinct bytes published. The issue's
targets: hub RSS <= 0.5x the separate agents', disk = 1x the distinct bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mesh.drivers.hubhome import HubHome  # noqa: E402
from mesh.drivers.tcp import free_port  # noqa: E402

MIB = 1024 * 1024
DONE_TIMEOUT_S = 300.0


def mesh(home: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mesh", "--home", str(home), *args], capture_output=True,
                            timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"mesh {' '.join(args)} failed: {result.stderr.decode().strip()}")
    return result.stdout.decode()


class Proc:
    def __init__(self, home: Path, *extra: str) -> None:
        self.home, self.port = home, free_port()
        log = open(home.parent / f"{home.name}.log", "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "mesh", "--home", str(home), "up", "--no-mdns",
                                       "--listen", f"127.0.0.1:{self.port}", *extra],
                                      stdout=log, stderr=log, start_new_session=True)
        log.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def proc_figures(self) -> tuple[int, float]:
        """(peak RSS bytes, CPU seconds) of the process so far."""
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM"))
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return hwm, cpu

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def wait_running(homes: list[Path]) -> None:
    deadline = time.monotonic() + 60
    for home in homes:
        while not json.loads(mesh(home, "status", "--json")).get("running"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{home} did not start")
            time.sleep(0.2)


def wait_complete(edges: list[tuple[Path, str]]) -> float:
    started = time.monotonic()
    pending = list(edges)
    while pending:
        if time.monotonic() - started > DONE_TIMEOUT_S:
            raise SystemExit(f"{len(pending)} edge(s) not complete after {DONE_TIMEOUT_S:g}s")
        home, release_id = pending[0]
        release = json.loads(mesh(home, "status", "--json")).get("release") or {}
        if release.get("id") == release_id and release.get("complete"):
            pending.pop(0)
        else:
            time.sleep(0.2)
    return time.monotonic() - started


def store_bytes(homes: list[Path]) -> int:
    seen, total = set(), 0
    for home in homes:
        for chunk in (home / "store" / "chunks").glob("*/*"):
            info = chunk.stat()
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def setup(root: Path, meshes: int, common_mib: int, own_mib: int) -> dict:
    common = os.urandom(common_mib * MIB)
    hub = root / "hub"
    mesh(hub, "hub", "init", "--name", "bench co-op")
    made = {"orgs": [], "releases": [], "hub": hub, "singles": [], "distinct": len(common)}
    for index in range(meshes):
        org = root / f"org{index}"
        mesh(org, "init", f"creator-{index}", "--node-name", f"org{index}")
        folder = root / f"release{index}"
        folder.mkdir()
        (folder / "common.bin").write_bytes(common)
        own = os.urandom(own_mib * MIB)
        (folder / "own.bin").write_bytes(own)
        made["distinct"] += len(own)
        release_id = json.loads(mesh(org, "release", "create", f"r{index}", str(folder), "--json"))["id"]
        mesh(org, "release", "publish", release_id)
        mesh(hub, "hub", "join", mesh(org, "invite", "--role", "hub", "--name", "coop").strip(),
             "--host", f"c{index}.hub.test")
        single = root / f"single{index}"
        mesh(single, "join", mesh(org, "invite", "--role", "hub", "--name", "coop").strip())
        made["orgs"].append(org)
        made["releases"].append(release_id)
        made["singles"].append(single)
    return made


def fresh_edges(root: Path, made: dict, phase: str, edges: int) -> list[list[Path]]:
    per_mesh = []
    for index, org in enumerate(made["orgs"]):
        homes = []
        for number in range(edges):
            home = root / f"{phase}-edge{index}-{number}"
            mesh(home, "join", mesh(org, "invite", "--role", "edge").strip())
            homes.append(home)
        per_mesh.append(homes)
    return per_mesh


def run_phase(root: Path, made: dict, phase: str, edges: int) -> dict:
    edge_homes = fresh_edges(root, made, phase, edges)
    if phase == "hub":
        servers = [Proc(made["hub"])]
        wait_running([made["hub"]])
        targets = [servers[0].address] * len(made["orgs"])
        stores = [made["hub"] / "meshes" / mesh_id for mesh_id in sorted(HubHome.open(made["hub"]).meshes)]
    else:
        servers = [Proc(single) for single in made["singles"]]
        wait_running(made["singles"])
        targets = [server.address for server in servers]
        stores = made["singles"]
    clients = []
    try:
        for org, target in zip(made["orgs"], targets):
            clients.append(Proc(org, "--peer", target))
        wait_running(made["orgs"])
        before = [server.proc_figures()[1] for server in servers]
        for homes, target in zip(edge_homes, targets):
            clients += [Proc(home, "--peer", target) for home in homes]
        wall = wait_complete([(home, release) for homes, release in zip(edge_homes, made["releases"])
                              for home in homes])
        figures = [server.proc_figures() for server in servers]
        return {"phase": phase, "wall_s": round(wall, 2), "processes": len(servers),
                "rss_peak_bytes": sum(rss for rss, _ in figures),
                "cpu_s": round(sum(cpu for _, cpu in figures) - sum(before), 2),
                "disk_bytes": store_bytes(stores)}
    finally:
        for proc in clients + servers:
            proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meshes", type=int, default=5)
    parser.add_argument("--edges", type=int, default=2, help="edges per mesh")
    parser.add_argument("--common-mib", type=int, default=16)
    parser.add_argument("--own-mib", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    try:
        made = setup(root, args.meshes, args.common_mib, args.own_mib)
        phases = [run_phase(root, made, "hub", args.edges), run_phase(root, made, "separate", args.edges)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    hub, separate = phases
    report = {"meshes": args.meshes, "edges_per_mesh": args.edges, "distinct_bytes": made["distinct"],
              "phases": phases,
              "rss_ratio": round(hub["rss_peak_bytes"] / separate["rss_peak_bytes"], 3),
              "cpu_ratio": round(hub["cpu_s"] / separate["cpu_s"], 3) if separate["cpu_s"] else None,
              "hub_disk_ratio": round(hub["disk_bytes"] / made["distinct"], 3),
              "separate_disk_ratio": round(separate["disk_bytes"] / made["distinct"], 3)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for phase in phases:
        print(f"{phase['phase']:9} {phase['processes']} process(es): peak RSS {phase['rss_peak_bytes'] / MIB:.0f} MiB, "
              f"CPU {phase['cpu_s']:.1f} s, disk {phase['disk_bytes'] / MIB:.1f} MiB, all edges done in {phase['wall_s']} s")
    print(f"hub / separate: RSS {report['rss_ratio']}x, CPU {report['cpu_ratio']}x; disk vs distinct bytes: hub "
          f"{report['hub_disk_ratio']}x, separate {report['separate_disk_ratio']}x")


if __name__ == "__main__":
    main()
