"""Enrollment benchmark: fresh boxes with a fleet key, from process start to serving the release.

    python bench/enroll_bench.py [--boxes 5] [--mib 64] [--cap-mbit 200] [--json]

Needs root (network namespaces). Every agent runs with mDNS on, inside the lab's own namespaces
(a seed host and one host per box on a private bridge); nothing is sent anywhere else.

1. An organizer home (on the lab's "seed" host) publishes a release of `--mib` MiB of random bytes
   in 16 files, and makes a fleet key (`mesh invite --fleet --uses BOXES`) before any agent runs,
   so the key carries no address: the boxes must find the mesh by mDNS.
2. The organizer's agent starts and reports its release complete. Then the clock starts and
   `mesh up --config box.toml` (`enroll = "fleet.key"`, mDNS on) is launched on every box host at
   once, each with an empty home.
3. A box is done when its log has `release.complete`. Reported per box: when it joined (its
   `enroll.joined` event), first met a peer (`peer.connected`), listed the release and had all of
   it, against the transfer floor (BOXES x release bytes / the seed's upload would be one seed
   alone; the swarm's floor is release bytes / one host's upload cap). The issue's target: at most
   30 s for 5 boxes plus the release's transfer time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.netlab.lab import build_lab, mbit_to_bytes_per_s  # noqa: E402
from bench.swarm_bench import (  # noqa: E402
    AGENT_PORT, AGENT_START_TIMEOUT_S, BYTECODE, POLL_INTERVAL_S, Agent, BenchError, code_version, mesh_cli,
    run_bench, start_agent, stop_agents, wait_seed_ready, write_random_files,
)

EVENTS = ("enroll.joined", "agent.started", "peer.connected", "release.listed", "release.complete")


class BoxAgent(Agent):
    """An agent whose first ts of each enrollment event is kept."""

    def read_events(self) -> None:
        offset = self._log_offset
        super().read_events()
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(self._log_offset - offset)
        for line in data.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            event = doc.get("event") if isinstance(doc, dict) else None
            if event in EVENTS and event not in self.events:
                self.events[event] = float(doc["ts"])


def up_argv(home: Path, listen: str, config: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "mesh", "--home", str(home), "up", "--listen", listen, "--log-format", "json",
            "--log-level", "info"]
    return argv + (["--config", str(config)] if config is not None else [])


def run(args: argparse.Namespace, workdir: Path) -> dict:
    BYTECODE["cache"] = workdir / "pycache"
    total = args.mib * 1024 * 1024
    release_dir = workdir / "release"
    write_random_files(release_dir, total, 16)
    org_home = workdir / "org"
    mesh_cli(org_home, "init", "enroll-bench", "--node-name", "org")
    created = json.loads(mesh_cli(org_home, "release", "create", "bench", str(release_dir), "--json"))
    mesh_cli(org_home, "release", "publish", created["id"])
    key = workdir / "fleet.key"
    key.write_text(mesh_cli(org_home, "invite", "--fleet", "--uses", str(args.boxes), "--expires", "2h"))
    config = workdir / "box.toml"
    config.write_text(f'enroll = "{key}"\nmdns = true\n')
    logs = workdir / "logs"
    logs.mkdir()
    names = [f"e{index + 1}" for index in range(args.boxes)]
    floor_s = total / mbit_to_bytes_per_s(args.cap_mbit)
    with build_lab(args.boxes, args.cap_mbit) as lab:
        org = BoxAgent("seed", org_home, logs / "org.log")
        boxes = [BoxAgent(n, workdir / f"box-{n}", logs / f"{n}.log") for n in names]
        try:
            start_agent(org, up_argv(org_home, f"{lab.address('seed')}:{AGENT_PORT}", None), lab)
            wait_seed_ready(org, time.monotonic() + AGENT_START_TIMEOUT_S)
            started = time.time()
            for box in boxes:
                start_agent(box, up_argv(box.home, f"{lab.address(box.name)}:{AGENT_PORT}", config), lab)
            deadline = time.monotonic() + args.timeout_s
            pending = list(boxes)
            while pending:
                for box in list(pending):
                    box.read_events()
                    box.check_alive()
                    if "release.complete" in box.events:
                        pending.remove(box)
                if pending and time.monotonic() > deadline:
                    raise BenchError(f"timed out; boxes not done: {[b.name for b in pending]}; "
                                     f"events: {[(b.name, sorted(b.events)) for b in pending]}")
                time.sleep(POLL_INTERVAL_S)
        finally:
            stop_agents([*boxes, org])
    per_box = {b.name: {event: round(ts - started, 3) for event, ts in sorted(b.events.items(), key=lambda x: x[1])}
               for b in boxes}
    done = max(b.events["release.complete"] for b in boxes) - started
    joined = max(b.events["enroll.joined"] for b in boxes) - started
    met = max(b.events["peer.connected"] for b in boxes) - started
    return {"boxes": args.boxes, "mib": args.mib, "cap_mbit": args.cap_mbit, "code": code_version(),
            "floor_s": floor_s, "all_done_s": done, "all_joined_s": joined, "all_met_s": met,
            "overhead_s": done - floor_s, "per_box": per_box}


def report(results: dict) -> str:
    lines = [
        f"enroll bench: {results['boxes']} fresh boxes with a fleet key, mDNS only, release {results['mib']} MiB, "
        f"every host capped at {results['cap_mbit']:g} Mbit/s; code {results['code']}",
        f"all joined (enroll.joined)        {results['all_joined_s']:7.2f} s after launch",
        f"all met a peer (peer.connected)   {results['all_met_s']:7.2f} s",
        f"all serve the release             {results['all_done_s']:7.2f} s  (transfer floor {results['floor_s']:.2f} s; "
        f"the rest {results['overhead_s']:.2f} s: target <= 30)",
    ]
    for name, events in results["per_box"].items():
        lines.append(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in events.items()))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=5, help="fresh boxes launched at once")
    parser.add_argument("--mib", type=int, default=64, help="release size, MiB")
    parser.add_argument("--cap-mbit", type=float, default=200.0, help="egress cap of every lab host, Mbit/s")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="bound on the run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (homes, logs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.boxes <= 16 or args.mib <= 0 or args.cap_mbit <= 0:
        parser.error("--boxes in 1..16, --mib and --cap-mbit positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(sys.argv[1:] if argv is None else argv), "enroll-bench-", run, report)


if __name__ == "__main__":
    sys.exit(main())
