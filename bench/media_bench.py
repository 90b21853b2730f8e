"""Media benchmark: photos captured on one lab host reach four capped edges; on-demand originals.

    python bench/media_bench.py [--photos 100] [--photo-mb 3] [--cap-mbit 200] [--edges 4] [--json]

Needs root (network namespaces). Nothing networks outside loopback or the lab's own namespaces:
every agent runs with `--no-mdns` and one static `--peer` (the capturer's lab address; the edges
find each other through peer exchange), listening on its lab host's address.

1. Setup, before any agent runs: an organizer home on the "seed" lab host is the capturer (the
   organizer's own tagged photos); it sets the canonical tags `music merch stage`, so every edge
   pins "stage" originals by default. Fresh edge homes join offline. `--on-demand` photos tagged
   "crowd" (not canonical) are added: edges get their thumbnails, never their originals unasked.
2. Agents start (the capturer, then the edges) and meet; the run waits until every edge holds
   every object it wants (the crowd thumbnails), so the clock sees only the new photos.
3. The clock starts and one `mesh add` imports `--photos` JPEGs of about `--photo-mb` MB tagged
   "stage" on the capturer (its agent picks them up from the state log). An edge is done when its
   JSON log has a `media.stored` event for every new original and thumbnail. Reported: from the
   end of the add (the issue's figure: the add itself hashes and makes thumbnails) and from its
   start, both against the floor = bytes of every original and thumbnail / the capturer's upload
   cap; the capturer's upload (its eth0 tx_bytes during the run) in multiples of those bytes; and
   the chunk bytes each edge got from each peer (how much came from other edges).
4. On demand: for each crowd photo, the time to first byte (curl's `time_starttransfer`) of
   `GET /c/CID` on an edge that lacks the original, against the same request on the capturer that
   holds it, both from a client on the edge's lab host; the bytes are compared with the file.

Mbit = 10**6 bits, MB = 10**6 bytes. Every run is bounded by `--timeout-s` and the lab is torn down
even on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.netlab.lab import build_lab, mbit_to_bytes_per_s  # noqa: E402
from bench.swarm_bench import (  # noqa: E402
    AGENT_PORT, AGENT_START_TIMEOUT_S, BYTECODE, POLL_INTERVAL_S, STATUS_SETTLE_S, Agent, BenchError, agent_env,
    code_version, join_edge, mesh_cli, node_id, run_bench, start_agent, stop_agents, tx_bytes, up_argv, wait_meshed,
    wait_seed_ready,
)
from mesh.drivers.agentfiles import read_status  # noqa: E402
from mesh.testing.netns import Lab  # noqa: E402

HTTP_PORT = 8080
CANONICAL = ("music", "merch", "stage")
PINNED_TAG = "stage"  # canonical, so pinned on edges by default
UNPINNED_TAG = "crowd"  # not canonical: thumbnails everywhere, originals on demand
ADD_TIMEOUT_S = 600.0


class MediaAgent(Agent):
    """An agent whose `media.stored` events are kept (cid -> first ts)."""

    def __init__(self, name: str, home: Path, log_path: Path) -> None:
        super().__init__(name, home, log_path)
        self.stored: dict[str, float] = {}

    def read_events(self) -> None:
        offset = self._log_offset
        super().read_events()
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(self._log_offset - offset)
        for line in data.splitlines():
            if b"media.stored" not in line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == "media.stored":
                self.stored.setdefault(doc["cid"], float(doc["ts"]))


# ---- setup ----------------------------------------------------------------------------------------


def write_photos(directory: Path, prefix: str, count: int, photo_mb: float) -> list[Path]:
    """`count` real JPEGs of about `photo_mb` MB (noise, so they do not compress to nothing)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    # Noise at a quarter of the pixels, upscaled: ~0.74 bytes per pixel at quality 90.
    pixels = int(photo_mb * 1e6 / 0.74)
    width = int((pixels * 3 / 2) ** 0.5) // 8 * 8
    height = width * 2 // 3 // 8 * 8
    paths = []
    for index in range(count):
        seed = f"{prefix}-{index}".encode()
        small = (width // 2, height // 2)
        noise = hashlib.shake_256(seed).digest(small[0] * small[1] * 3)
        image = Image.frombytes("RGB", small, noise).resize((width, height))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        path = directory / f"{prefix}-{index:04d}.jpg"
        path.write_bytes(out.getvalue())
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Homes:
    capturer: Path
    edges: list[Path]


def make_homes(directory: Path, edges: int, crowd: list[Path]) -> Homes:
    capturer = directory / "capturer"
    mesh_cli(capturer, "init", "media-bench", "--node-name", "capturer")
    mesh_cli(capturer, "tags", "set", *CANONICAL)
    if crowd:
        mesh_cli(capturer, "add", *map(str, crowd), "--tag", UNPINNED_TAG)
    homes = [directory / f"e{index + 1}" for index in range(edges)]
    for index, home in enumerate(homes):
        join_edge(capturer, home, f"media-e{index + 1}")
    return Homes(capturer, homes)


def records(home: Path) -> dict[str, dict]:
    """name -> `mesh ls --json` record."""
    return {r["name"]: r for r in json.loads(mesh_cli(home, "ls", "--json"))}


def wait_media_settled(agents: list[MediaAgent], deadline: float) -> None:
    """Until every agent's status says it holds every object it wants."""
    while True:
        states = {}
        for agent in agents:
            agent.check_alive()
            media = (read_status(agent.home) or {}).get("media") or {}
            states[agent.name] = (media.get("held"), media.get("wanted"))
        if all(held is not None and held >= wanted for held, wanted in states.values()):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"edges did not settle their media in time (held, wanted): {states}")
        time.sleep(POLL_INTERVAL_S)


def wait_stored(edges: list[MediaAgent], expected: set[str], deadline: float) -> None:
    while True:
        for agent in edges:
            agent.read_events()
            agent.check_alive()
        missing = {a.name: len(expected - a.stored.keys()) for a in edges}
        if not any(missing.values()):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out; objects still missing per edge: {missing}")
        time.sleep(POLL_INTERVAL_S)


# ---- the run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowRun:
    photos: int
    media_bytes: int  # originals + thumbnails of the new photos
    floor_s: float  # media_bytes / the capturer's upload cap
    add_s: float  # the `mesh add` command
    after_add_s: float  # end of the add .. the last edge holds everything
    from_add_s: float  # start of the add .. the same
    per_edge_after_add_s: dict[str, float]
    capturer_upload_multiple: float  # capturer's eth0 tx bytes / media_bytes
    tx_bytes: dict[str, int]
    from_capturer_share: float  # chunk bytes the edges got from the capturer / all chunk bytes they got
    received_from: dict[str, dict[str, int]]
    cpu_s: dict[str, float]


@dataclass(frozen=True)
class OnDemandRun:
    samples: int
    edge_ttfb_s: list[float]  # GET /c/CID on an edge lacking the original
    local_ttfb_s: list[float]  # the same request on the capturer, which holds it
    edge_total_s: list[float]
    local_total_s: list[float]
    median_edge_ttfb_s: float
    median_local_ttfb_s: float
    ttfb_ratio: float  # median edge / median local
    bytes: int  # sum of the originals' sizes


def curl_timing(lab: Lab, host: str, url: str, expect: bytes) -> tuple[float, float]:
    """(time to first byte, total) of one GET from `host`; the body must equal `expect`."""
    argv = ["curl", "--silent", "--show-error", "--fail", "--output", "-", "--write-out",
            "\n%{time_starttransfer} %{time_total}", url]
    result = subprocess.run(lab.command(host, argv), capture_output=True, timeout=120)
    if result.returncode != 0:
        raise BenchError(f"GET {url} from {host} failed: {result.stderr!r}")
    body, _, timing = result.stdout.rpartition(b"\n")
    if body != expect:
        raise BenchError(f"GET {url} from {host}: {len(body)} bytes differ from the file ({len(expect)})")
    first, total = (float(x) for x in timing.split())
    return first, total


def run(args: argparse.Namespace, workdir: Path) -> dict:
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    BYTECODE["cache"] = workdir / "pycache"
    print("# writing photos ...", file=sys.stderr, flush=True)
    crowd = write_photos(workdir / "crowd", "crowd", args.on_demand, args.photo_mb)
    stage = write_photos(workdir / "stage", "stage", args.photos, args.photo_mb)
    homes = make_homes(workdir, args.edges, crowd)
    names = [f"e{index + 1}" for index in range(args.edges)]
    cap = mbit_to_bytes_per_s(args.cap_mbit)
    with build_lab(args.edges, args.cap_mbit) as lab:
        capturer_addr = f"{lab.address('seed')}:{AGENT_PORT}"

        def http(host: str) -> list[str]:
            return ["--http", f"{lab.address(host)}:{HTTP_PORT}"]

        capturer = MediaAgent("seed", homes.capturer, logs / "capturer.log")
        edges = [MediaAgent(n, h, logs / f"{n}.log") for n, h in zip(names, homes.edges)]
        try:
            start_agent(capturer, up_argv(homes.capturer, capturer_addr, None, args.log_level) + http("seed"), lab)
            wait_seed_ready(capturer, time.monotonic() + AGENT_START_TIMEOUT_S, release=False)
            for edge in edges:
                argv = up_argv(edge.home, f"{lab.address(edge.name)}:{AGENT_PORT}", capturer_addr, args.log_level)
                start_agent(edge, argv + http(edge.name), lab)
            wait_meshed([capturer, *edges], time.monotonic() + AGENT_START_TIMEOUT_S)
            wait_media_settled(edges, time.monotonic() + args.timeout_s)
            cpu0 = {a.name: a.cpu_s() or 0.0 for a in [capturer, *edges]}
            tx0 = {host: tx_bytes(lab, host) for host in lab.hosts}
            print(f"# adding {len(stage)} photos ...", file=sys.stderr, flush=True)
            started = time.time()
            subprocess.run([sys.executable, "-m", "mesh", "--home", str(homes.capturer), "add", *map(str, stage),
                            "--tag", PINNED_TAG, "--json"], check=True, capture_output=True,
                           timeout=ADD_TIMEOUT_S, env=agent_env())
            added = time.time()
            catalogue = records(homes.capturer)
            new = [catalogue[p.name] for p in stage]
            expected = {r["cid"] for r in new} | {r["thumbnail"] for r in new if r.get("thumbnail")}
            sizes = object_sizes(homes.capturer, expected)
            wait_stored(edges, expected, time.monotonic() + args.timeout_s)
            cpu = {a.name: (a.cpu_s() or 0.0) - cpu0[a.name] for a in [capturer, *edges]}
            sent = {host: tx_bytes(lab, host) - tx0[host] for host in lab.hosts}
            time.sleep(STATUS_SETTLE_S)
            statuses = {e.name: read_status(e.home) or {} for e in edges}
            flow = summarize(edges, len(new), expected, (started, added), sizes, cap, sent, statuses,
                             node_id(homes.capturer), cpu)
            print("# on-demand requests ...", file=sys.stderr, flush=True)
            on_demand = run_on_demand(lab, homes.capturer, crowd, names[0])
        finally:
            stop_agents([*edges, capturer])
    return {"photos": args.photos, "photo_mb": args.photo_mb, "cap_mbit": args.cap_mbit, "edges": args.edges,
            "code": code_version(), "flow": asdict(flow), "on_demand": asdict(on_demand) if on_demand else None}


def object_sizes(home: Path, cids: set[str]) -> dict[str, int]:
    """cid -> bytes, read back from the capturer's store (`mesh cat`)."""
    sizes = {}
    for cid in cids:
        argv = [sys.executable, "-m", "mesh", "--home", str(home), "cat", cid]
        result = subprocess.run(argv, capture_output=True, timeout=120, env=agent_env())
        if result.returncode != 0:
            raise BenchError(f"mesh cat {cid} on the capturer failed: {result.stderr.decode().strip()}")
        sizes[cid] = len(result.stdout)
    return sizes


def summarize(edges: list[MediaAgent], photos: int, expected: set[str], add_span: tuple[float, float],
              sizes: dict[str, int], cap: int, sent: dict[str, int], statuses: dict[str, dict], capturer_id: str,
              cpu: dict[str, float]) -> FlowRun:
    started, added = add_span
    done = {e.name: max(e.stored[c] for c in expected) for e in edges}
    media_bytes = sum(sizes.values())
    received: dict[str, dict[str, int]] = {}
    from_capturer = total = 0
    for name, status in statuses.items():
        received[name] = {}
        for peer in status.get("peers", []):
            got = int(peer.get("chunk_bytes_received", 0))
            label = "capturer" if peer["node_id"] == capturer_id else peer.get("name") or peer["node_id"][:8]
            received[name][label] = got
            total += got
            from_capturer += got if peer["node_id"] == capturer_id else 0
    last = max(done.values())
    return FlowRun(
        photos=photos, media_bytes=media_bytes, floor_s=media_bytes / cap,
        add_s=added - started, after_add_s=last - added, from_add_s=last - started,
        per_edge_after_add_s={k: round(v - added, 3) for k, v in done.items()},
        capturer_upload_multiple=sent["seed"] / media_bytes, tx_bytes=sent,
        from_capturer_share=from_capturer / total if total else float("nan"), received_from=received, cpu_s=cpu,
    )


def run_on_demand(lab: Lab, capturer: Path, crowd: list[Path], edge: str) -> OnDemandRun | None:
    if not crowd:
        return None
    catalogue = records(capturer)
    edge_url = f"http://{lab.address(edge)}:{HTTP_PORT}"
    local_url = f"http://{lab.address('seed')}:{HTTP_PORT}"
    for base in (edge_url, local_url):  # warm both gateways (first-request costs are not on-demand costs)
        subprocess.run(lab.command(edge, ["curl", "--silent", "--output", "/dev/null", f"{base}/"]), timeout=60)
    edge_t, local_t = [], []
    for path in crowd:
        body = path.read_bytes()
        cid = catalogue[path.name]["cid"]
        local_t.append(curl_timing(lab, edge, f"{local_url}/c/{cid}", body))
        edge_t.append(curl_timing(lab, edge, f"{edge_url}/c/{cid}", body))
    median_edge = statistics.median(t[0] for t in edge_t)
    median_local = statistics.median(t[0] for t in local_t)
    return OnDemandRun(
        samples=len(crowd), edge_ttfb_s=[t[0] for t in edge_t], local_ttfb_s=[t[0] for t in local_t],
        edge_total_s=[t[1] for t in edge_t], local_total_s=[t[1] for t in local_t],
        median_edge_ttfb_s=median_edge, median_local_ttfb_s=median_local, ttfb_ratio=median_edge / median_local,
        bytes=sum(p.stat().st_size for p in crowd),
    )


def report(results: dict) -> str:
    flow, od = results["flow"], results["on_demand"]
    lines = [
        f"media bench: {flow['photos']} photos ({flow['media_bytes'] / 1e6:.1f} MB with thumbnails) added on the "
        f"capturer, {results['edges']} edges, every lab host's egress capped at {results['cap_mbit']:g} Mbit/s",
        f"code {results['code']}",
        "",
        f"floor (media bytes / capturer upload)   {flow['floor_s']:7.2f} s",
        f"mesh add (hash, thumbnails)            {flow['add_s']:7.2f} s",
        f"every edge holds everything, after add {flow['after_add_s']:7.2f} s  = {flow['after_add_s'] / flow['floor_s']:.2f}x floor"
        f"   per edge: " + " ".join(f"{k}={v:.2f}" for k, v in sorted(flow["per_edge_after_add_s"].items())),
        f"  from the start of the add            {flow['from_add_s']:7.2f} s  = {flow['from_add_s'] / flow['floor_s']:.2f}x floor",
        f"capturer upload                        {flow['capturer_upload_multiple']:7.2f}x the media (target <= 1.2)",
        f"edges' chunk bytes from the capturer   {flow['from_capturer_share']:7.1%}  (the rest from other edges)",
        "MB received: " + "; ".join(f"{e} <- " + ", ".join(f"{p} {b / 1e6:.1f}" for p, b in sorted(peers.items()))
                                    for e, peers in sorted(flow["received_from"].items())),
        "agent CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(flow["cpu_s"].items())),
    ]
    if od:
        lines += [
            "",
            f"on demand, {od['samples']} originals ({od['bytes'] / od['samples'] / 1e6:.1f} MB each), GET /c/CID from e1:",
            f"  edge lacking it    TTFB median {od['median_edge_ttfb_s'] * 1000:7.1f} ms  "
            f"(all: {', '.join(f'{t * 1000:.0f}' for t in od['edge_ttfb_s'])} ms; total median "
            f"{statistics.median(od['edge_total_s']) * 1000:.0f} ms)",
            f"  capturer (holds)   TTFB median {od['median_local_ttfb_s'] * 1000:7.1f} ms  "
            f"(all: {', '.join(f'{t * 1000:.0f}' for t in od['local_ttfb_s'])} ms; total median "
            f"{statistics.median(od['local_total_s']) * 1000:.0f} ms)",
            f"  ratio              {od['ttfb_ratio']:7.2f}x",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=100, help="photos added during the run")
    parser.add_argument("--photo-mb", type=float, default=3.0, help="approximate size of each photo, MB")
    parser.add_argument("--on-demand", type=int, default=8, help="unpinned photos for the on-demand requests")
    parser.add_argument("--cap-mbit", type=float, default=200.0, help="egress cap of every lab host, Mbit/s")
    parser.add_argument("--edges", type=int, default=4, help="edge hosts")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="bound on each wait")
    parser.add_argument("--log-level", default="info", choices=["debug", "info"], help="agents' log level")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (homes, logs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.photos <= 0 or args.photo_mb <= 0 or args.on_demand < 0 or args.cap_mbit <= 0 \
            or not 1 <= args.edges <= 16:
        parser.error("--photos, --photo-mb and --cap-mbit must be positive, --on-demand >= 0, --edges in 1..16")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(sys.argv[1:] if argv is None else argv), "media-bench-", run, report)


if __name__ == "__main__":
    sys.exit(main())
