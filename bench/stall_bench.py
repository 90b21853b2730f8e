"""Core loop stalls (issue 20): the longest trio task step of a real agent holding 10,000 assets.

    python bench/stall_bench.py [--assets 10000] [--baseline-assets 100] [--phase-s 10] [--json]
                                [--page-reporting off|keep] [--stacks]

A real `mesh up --no-mdns --http` on loopback, `gc_interval_s = 1` (a purge round every second
the state changed), its gateway hit all along by two client threads (`GET /c/CID` of a small
asset, `GET /api/status`; served views flush to the state log every 5 s: the agent's own appends).
Phases, one after the other:
  gateway   nothing else
  tag       `mesh tag CID --add/--remove` every second (the CLI appends to the state log; the
            agent reads it, re-evaluates consent over every asset, purges)
  consent   `mesh consent grant/revoke CODE photo` every second for a subject 1% of the assets name
Baseline in the same run: the same agent and phases on a state of `--baseline-assets` assets.
Figures per phase from the agent's own LoopWatch (run/status.json every second): the longest step
and its task, and the p99 step (histogram bucket bound); with --stacks (MESH_LOOP_STACKS=1 in the
agent) also where the sampler saw the longest steps (`mesh/drivers/loopwatch.py`). Like the data path bench, it stops the VM's
free page reporting for the run where it can (`bench/netlab/host.py`; an edge box has no balloon).
Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.netlab.host import page_reporting  # noqa: E402
from state_bench import asset_record  # noqa: E402

from mesh.drivers.home import Home  # noqa: E402
from mesh.drivers.statefile import StateFile  # noqa: E402
from mesh.drivers.tcp import free_port  # noqa: E402
from mesh.state.consent import new_subject_code  # noqa: E402
from mesh.state.document import actor_id  # noqa: E402

PHASES = ("gateway", "tag", "consent")
SUBJECT_EVERY = 100  # one asset in this many names the subject


def mesh(home: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mesh", "--home", str(home), *args], check=True,
                         capture_output=True)
    return out.stdout.decode()


def make_home(root: Path, assets: int) -> tuple[Path, str, str]:
    """A mesh home with `assets` records (1% name one subject) and one real small file."""
    home = root / f"org{assets}"
    mesh(home, "init", "stall-bench", "--node-name", "org")
    small = root / f"small{assets}.bin"
    small.write_bytes(os.urandom(20 * 1024))
    cid = json.loads(mesh(home, "add", str(small), "--json"))[0]["cid"]
    info = Home.open(home).info
    code = new_subject_code(random.Random(assets))
    with StateFile(Home.open(home).state_path).transaction(actor_id(info.node_id, os.urandom(8))) as state:
        for index in range(assets):
            record = asset_record(index, info.node_id)
            if index % SUBJECT_EVERY == 0:
                record = dataclasses.replace(record, subjects=frozenset({code}))
            state.put_asset(record)
    return home, cid, code


class Load:
    """Client threads hitting the gateway until stopped."""

    def __init__(self, port: int, paths: list[str]) -> None:
        self.port, self.paths = port, paths
        self.stop = threading.Event()
        self.requests = 0
        self.threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in paths]

    def _run(self, path: str) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", path)
                conn.getresponse().read()
                self.requests += 1
            except OSError:
                time.sleep(0.1)
            finally:
                conn.close()
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(35)


def read_loop(home: Path) -> dict | None:
    try:
        return json.loads((home / "run" / "status.json").read_text()).get("loop")
    except (OSError, ValueError):
        return None


def histogram(loop: dict) -> dict:
    return {str(b): c for b, c in loop["since_start"]["histogram_ms"]}


def p99_ms(before: dict, after: dict) -> float:
    bounds = sorted(after, key=lambda b: float(b))
    counts = [after[b] - before.get(b, 0) for b in bounds]
    total, seen = sum(counts), 0
    for bound, count in zip(bounds, counts):
        seen += count
        if seen >= 0.99 * total:
            return float(bound)
    return 0.0


def actions(phase: str, home: Path, cid: str, code: str, count: int) -> None:
    if phase == "tag":
        flag = "--add" if count % 2 == 0 else "--remove"
        mesh(home, "tag", cid, flag, "bench")
    elif phase == "consent":
        mesh(home, "consent", "revoke" if count % 2 == 0 else "grant", code, "photo")


def run_phase(phase: str, home: Path, cid: str, code: str, seconds: float) -> dict:
    slow: dict[tuple, dict] = {}
    before = histogram(read_loop(home))
    started = time.time()
    count = 0
    while time.time() < started + seconds:
        tick = time.time()
        actions(phase, home, cid, code, count)
        count += 1
        for step in read_loop(home)["slow_steps"]:
            if step["at"] >= started:
                slow[(step["at"], step["task"])] = step
        time.sleep(max(0.0, 1.0 - (time.time() - tick)))
    time.sleep(1.5)  # the last action's effects and a status write
    loop = read_loop(home)
    for step in loop["slow_steps"]:
        if step["at"] >= started:
            slow[(step["at"], step["task"])] = step
    by_task: dict[str, float] = {}
    by_task_cpu: dict[str, float] = {}
    by_task_count: dict[str, int] = {}
    for step in slow.values():
        by_task_count[step["task"]] = by_task_count.get(step["task"], 0) + 1
        by_task[step["task"]] = max(by_task.get(step["task"], 0.0), step["ms"])
        by_task_cpu[step["task"]] = max(by_task_cpu.get(step["task"], 0.0), step.get("cpu_ms", 0.0))
    worst = max(slow.values(), key=lambda s: s["ms"], default=None)
    busiest = max(slow.values(), key=lambda s: s.get("cpu_ms", 0.0), default=None)
    return {
        "actions": count,
        "stall_max_ms": worst["ms"] if worst else f"<{loop['slow_step_ms']}",
        "stall_task": worst["task"] if worst else "",
        # the most CPU one step spent on the trio thread (the rest of a long step is waiting: for the
        # GIL a worker holds, or for a CPU when the host is busy)
        "cpu_max_ms": busiest.get("cpu_ms", 0.0) if busiest else f"<{loop['slow_step_ms']}",
        "cpu_task": busiest["task"] if busiest else "",
        "by_task_cpu_max_ms": dict(sorted(by_task_cpu.items(), key=lambda kv: -kv[1])[:5]),
        "stall_p99_ms": p99_ms(before, histogram(loop)),
        "slow_steps": len(slow),
        "by_task_max_ms": dict(sorted(by_task.items(), key=lambda kv: -kv[1])[:5]),
        "by_task_slow_steps": by_task_count,  # steps of at least slow_step_ms (10 ms) per task
        "longest_samples": [{"task": step["task"], "ms": step["ms"], "samples": step["samples"]}
                            for step in sorted(slow.values(), key=lambda s: -s["ms"]) if step.get("samples")][:3],
    }


def run_agent(root: Path, assets: int, phase_s: float, stacks: bool = False) -> dict:
    home, cid, code = make_home(root, assets)
    config = root / f"agent{assets}.toml"
    config.write_text("gc_interval_s = 1\n")
    listen, http_port = free_port(), free_port()
    log = open(root / f"agent{assets}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "--home", str(home), "up", "--no-mdns",
                             "--listen", f"127.0.0.1:{listen}", "--http", f"127.0.0.1:{http_port}",
                             "--config", str(config)], stdout=log, stderr=log, start_new_session=True,
                            env={**os.environ, "MESH_LOOP_CPU": "1",  # slow steps say their CPU time ...
                                 "MESH_LOOP_STACKS": "1" if stacks else "0"})  # ... and where they were
    try:
        deadline = time.monotonic() + 120
        while read_loop(home) is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the agent did not come up: see {log.name}")
            time.sleep(0.2)
        time.sleep(5)  # start-up (loading the state, the first consent pass) is not what we measure
        figures = {"startup_max_ms": read_loop(home)["since_start"]["stall_max_ms"],
                   "startup_task": read_loop(home)["since_start"]["stall_task"]}
        with Load(http_port, [f"/c/{cid}", "/api/status"]) as load:
            for phase in PHASES:
                figures[phase] = run_phase(phase, home, cid, code, phase_s)
        figures["requests"] = load.requests
        return figures
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--baseline-assets", type=int, default=100)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--page-reporting", choices=("off", "keep"), default="off",
                        help="free page reporting to the hypervisor during the bench: on this VM the first "
                        "fork of a 10,000-asset state after start-up faulted in fresh pages for 100-200 ms")
    parser.add_argument("--stacks", action="store_true",
                        help="sample the agent's trio thread during slow steps and print where the longest were")
    args = parser.parse_args()
    with page_reporting(args.page_reporting) as reporting, \
            tempfile.TemporaryDirectory(prefix="stall-bench-") as tmp:
        root = Path(tmp)
        base = run_agent(root, args.baseline_assets, args.phase_s)
        big = run_agent(root, args.assets, args.phase_s, args.stacks)
    result = {"assets": args.assets, "baseline_assets": args.baseline_assets, "page_reporting": reporting,
              "baseline": base, "loaded": big}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"page reporting {reporting}")
    print(f"start-up (not a target): {args.assets} assets {big['startup_max_ms']} ms ({big['startup_task']}), "
          f"{args.baseline_assets} assets {base['startup_max_ms']} ms")
    print(f"{'phase':10} {'max ms':>9} {'base ms':>9} {'ratio':>6} {'p99 ms':>7} {'base p99':>8}  longest task")
    for phase in PHASES:
        b, g = base[phase], big[phase]
        ratio = (f"{g['stall_max_ms'] / b['stall_max_ms']:.1f}" if isinstance(g["stall_max_ms"], float)
                 and isinstance(b["stall_max_ms"], float) else "-")
        print(f"{phase:10} {g['stall_max_ms']!s:>9} {b['stall_max_ms']!s:>9} {ratio:>6} {g['stall_p99_ms']:>7} "
              f"{b['stall_p99_ms']:>8}  {g['stall_task']}")
        for task, ms in g["by_task_max_ms"].items():
            print(f"{'':10} {ms:>9}  {task} ({g['by_task_slow_steps'][task]} slow steps)")
        print(f"{'':10} CPU: longest {g['cpu_max_ms']} ms ({g['cpu_task']}), baseline {b['cpu_max_ms']} ms")
        for step in g["longest_samples"]:
            print(f"{'':10} {step['ms']} ms in {step['task']}:")
            for sample in step["samples"]:
                print(f"{'':12} {sample}")


if __name__ == "__main__":
    main()
