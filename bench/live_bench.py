"""Live benchmark: a camera's stream through the ingesting box to 4 capped edges.

    python bench/live_bench.py [--edges 4] [--cap-mbit 200] [--mbit 6] [--seconds 60] [--segment-s 2] [--json]

Needs root (network namespaces; nothing leaves them). The lab's "seed" host runs the organizer's
agent, which ingests (`mesh live start … --listen rtmp://SEED:1935/live/cam`); the test camera
(mesh.testing.livestream: moving pattern, burnt-in clock, tone; H.264 at `--mbit`, remuxed, no
re-encode) pushes to it from the same host, as a camera on the venue LAN would. Edges e1..eN each
run `mesh up --http`, every host's egress capped at `--cap-mbit` with `tc tbf`. A poller inside
each edge's namespace asks its edge's playlist every 100 ms; when a segment first appears it fetches
it and reads the clock burnt into its first frame:

- glass to edge = when the segment was listed at the edge - when its first frame was filmed (this
  includes the segment's own duration: a segment is listed once it is complete);
- glass to phone adds the player's hold: the page's hls.js plays `liveSyncDurationCount` = 2
  segment durations behind the end of the newest listed segment, i.e. one segment before that
  segment's first frame: glass to edge + (2 - 1) segments. The issue's budget: 3 segment
  durations + 1 s;
- edge lag = the ingester's newest segment number - the edge's, sampled every 100 ms.

The ingesting agent's CPU seconds over the stream, per stream-hour, is reported beside the camera
process's own (encoding the test pattern is the camera's work, not the box's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.netlab.lab import build_lab  # noqa: E402
from bench.swarm_bench import Agent, BenchError, agent_env, mesh_cli, start_agent, stop_agents  # noqa: E402

AGENT_PORT, HTTP_PORT, RTMP_PORT = 7450, 8080, 1935
PLAYER_HOLD_SEGMENTS = 2  # hls.js liveSyncDurationCount in the player page (mesh/gateway/static/live_player.js)

POLLER = r"""
import json, re, sys, time, urllib.request
sys.path.insert(0, sys.argv[3])
from mesh.testing.livestream import read_clock
base, seconds = sys.argv[1], float(sys.argv[2])
seen, rows, lags = set(), [], []
deadline = time.time() + seconds
while time.time() < deadline:
    try:
        text = urllib.request.urlopen(base + "/live/cam.m3u8", timeout=2).read().decode()
    except OSError:
        time.sleep(0.1); continue
    numbers = [int(n) for n in re.findall(r"^/live/cam/(\d+)\.ts$", text, re.M)]
    for n in numbers:
        if n in seen:
            continue
        seen.add(n)
        listed = time.time()
        data = urllib.request.urlopen(base + f"/live/cam/{n}.ts", timeout=5).read()
        clock = read_clock(data)
        rows.append([n, listed, clock, len(data)])
    if numbers:
        lags.append([time.time(), numbers[-1]])
    time.sleep(0.1)
print(json.dumps({"rows": rows, "lags": lags}))
"""


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=4)
    parser.add_argument("--cap-mbit", type=float, default=200)
    parser.add_argument("--mbit", type=float, default=6, help="the camera's video bit rate")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"stream {report['stream_mbit']:.1f} Mbit/s, {args.segment_s:g} s segments, {args.edges} edges capped at "
          f"{args.cap_mbit:g} Mbit/s, {report['segments']} segments")
    print(f"glass to edge   p50 {report['glass_to_edge_s']['p50']:.2f} s  p99 {report['glass_to_edge_s']['p99']:.2f} s")
    print(f"glass to phone  p50 {report['glass_to_phone_s']['p50']:.2f} s  p99 {report['glass_to_phone_s']['p99']:.2f} s"
          f"  (budget {report['budget_s']:.1f} s)")
    print(f"edge lag        p50 {report['edge_lag_segments']['p50']} p99 {report['edge_lag_segments']['p99']} segment(s)")
    print(f"ingesting agent {report['agent_cpu_s_per_stream_hour']:.0f} CPU-s per stream-hour; "
          f"camera process {report['camera_cpu_s_per_stream_hour']:.0f}")


def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="live-bench-"))
    org_home = root / "org"
    mesh_cli(org_home, "init", "live-bench", "--node-name", "org")
    edge_homes = []
    for index in range(args.edges):
        home = root / f"e{index + 1}"
        mesh_cli(home, "join", mesh_cli(org_home, "invite", "--role", "edge").strip())
        edge_homes.append(home)
    with build_lab(args.edges, args.cap_mbit) as lab:
        seed = lab.address("seed")
        org = Agent("seed", org_home, root / "seed.log")
        edges = [Agent(f"e{i + 1}", h, root / f"e{i + 1}.log") for i, h in enumerate(edge_homes)]
        pollers, camera = {}, None
        try:
            start_agent(org, [sys.executable, "-m", "mesh", "--home", str(org_home), "up", "--listen",
                              f"{seed}:{AGENT_PORT}", "--no-mdns", "--log-format", "json"], lab)
            for edge in edges:
                address = lab.address(edge.name)
                start_agent(edge, [sys.executable, "-m", "mesh", "--home", str(edge.home), "up", "--listen",
                                   f"{address}:{AGENT_PORT}", "--http", f"{address}:{HTTP_PORT}", "--no-mdns",
                                   "--peer", f"{seed}:{AGENT_PORT}", "--log-format", "json"], lab)
            time.sleep(8)  # met and settled
            rtmp = f"rtmp://{seed}:{RTMP_PORT}/live/cam"
            mesh_cli(org_home, "live", "start", "cam", "--listen", rtmp, "--segment-s", str(args.segment_s))
            options = {"url": rtmp, "seconds": args.seconds, "size": [640, 360], "fps": 25,
                       "bit_rate": int(args.mbit * 1_000_000), "keyframe_interval_s": args.segment_s,
                       "constant_rate": True}
            camera = lab.run("seed", [sys.executable, "-m", "mesh.testing.livestream", json.dumps(options)],
                             env=agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cpu0 = org.cpu_s() or 0.0
            started = time.time()
            for edge in edges:
                base = f"http://{lab.address(edge.name)}:{HTTP_PORT}"
                pollers[edge.name] = lab.run(edge.name, [sys.executable, "-c", POLLER, base, str(args.seconds + 10),
                                                         str(REPO)], env=agent_env(), stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
            camera.wait(timeout=args.seconds + 60)
            wall = time.time() - started
            camera_cpu = _child_cpu(camera)
            agent_cpu = (org.cpu_s() or 0.0) - cpu0
            results = {name: json.loads(p.communicate(timeout=60)[0] or "{}") for name, p in pollers.items()}
        finally:
            for poller in pollers.values():
                if poller.poll() is None:
                    poller.kill()
            if camera is not None and camera.poll() is None:
                camera.kill()
            stop_agents([org, *edges])
    return summarize(args, results, wall, agent_cpu, camera_cpu)


def _child_cpu(process) -> float:
    """A finished child's CPU is gone from /proc; the lab runs it under `ip netns exec`: read our
    children's rusage instead (the camera is the only other child that ended)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def summarize(args, results: dict, wall: float, agent_cpu: float, camera_cpu: float) -> dict:
    glass, lags, sizes = [], [], []
    newest_by_time: list[tuple[float, int]] = []
    for doc in results.values():
        for number, listed, clock, size in doc.get("rows", []):
            if clock is not None:
                glass.append(listed - clock)
            sizes.append(size)
        newest_by_time += [(t, n) for t, n in doc.get("lags", [])]
    if not glass:
        raise BenchError("no segment with a readable clock reached an edge")
    for doc in results.values():
        for t, n in doc.get("lags", []):
            ahead = max((m for u, m in newest_by_time if u <= t), default=n)
            lags.append(ahead - n)
    hold = (PLAYER_HOLD_SEGMENTS - 1) * args.segment_s
    return {
        "segments": len(sizes) // max(1, len(results)),
        "stream_mbit": 8 * statistics.mean(sizes) / args.segment_s / 1e6 if sizes else 0.0,
        "glass_to_edge_s": {"p50": percentile(glass, 0.5), "p99": percentile(glass, 0.99)},
        "glass_to_phone_s": {"p50": percentile(glass, 0.5) + hold, "p99": percentile(glass, 0.99) + hold},
        "budget_s": 3 * args.segment_s + 1,
        "edge_lag_segments": {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99)},
        "agent_cpu_s_per_stream_hour": agent_cpu / wall * 3600,
        "camera_cpu_s_per_stream_hour": camera_cpu / wall * 3600,
        "wall_s": wall,
    }


if __name__ == "__main__":
    main()
