"""Data-path cost: CPU seconds per GiB the agents spend moving a release, against nginx + curl.

    python bench/datapath_bench.py [--mib 256] [--files 64] [--edges 4] [--cap-mbit 200] [--json]
    python bench/datapath_bench.py --runs mesh-1,mesh-4 --profile /tmp/prof   # where a byte's time goes
    python bench/datapath_bench.py --runs mesh-4-capped --perf /tmp/perf      # the kernel's share too

Needs root (the namespace lab of bench/swarm_bench.py: one network namespace per host on a private
bridge, loopback-speed veths; nothing leaves the lab). Runs, each with fresh homes and a fresh lab:

- mesh-1, mesh-4: one seed -> 1 and -> `--edges` edges, links uncapped. Every agent runs and has met
  every other; then the clock starts and `mesh release publish` runs on the seed's home, until each
  edge logs `release.complete`. CPU = user + system seconds of every agent during that window.
- mesh-4-capped: the same with every host's egress capped at `--cap-mbit` (tc tbf).
- nginx-1, nginx-4 (and nginx-4-capped): nginx (one worker, sendfile on) on the seed serving the
  release directory, one `curl --parallel` per edge fetching every file into files on disk (as an edge stores them).
  CPU = nginx's worker and master plus every curl.

Each run's homes (and curl's files) live on a fresh ext4 with a journal, made on a loop device for
the run (`--fs fresh`, the default as root; see `bench.netlab.host.fresh_filesystem`): the VM's root
filesystem has no journal, and its inode allocator then scans the inodes a previous run just freed.

Before each run the bench writes and deletes a scratch file as large as the run will write (see
`warm_page_pool`), and for the whole bench it stops the guest kernel's free page reporting to the
hypervisor (`--page-reporting off`, the default where it can; restored at the end): reported pages
come back cold, and in this VM writing 256 MiB into fresh page cache then costs 3-7x the system
time, so four edges on one machine would be charged for the host's memory balloon, which a
bare-metal box has not (see `page_reporting`). "CPU-s per GiB" divides by the bytes delivered (edges x release), so it is the cost of one byte
arriving at one edge, sent and received, on this machine's cores (an ARM box's core is 3-4x
slower). With `--profile DIR`, py-spy samples every agent during the mesh runs (`--gil`: only
samples that hold the GIL, i.e. Python work) and the report lists the functions with the most
samples of their own, per agent role; DIR keeps the raw collapsed stacks (open them with
speedscope or `flamegraph.pl`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import swarm_bench as sb  # noqa: E402
from bench.netlab.host import fresh_filesystem, page_reporting  # noqa: E402
from bench.netlab.lab import build_lab, mbit_to_bytes_per_s  # noqa: E402

GIB = 1024**3
NGINX_PORT = 8080
RUNS = ("mesh-1", "mesh-4", "mesh-4-capped", "nginx-1", "nginx-4", "nginx-4-capped")
DEFAULT_RUNS = ("mesh-1", "mesh-4", "mesh-4-capped", "nginx-1", "nginx-4")
PROFILE_RATE_HZ = 200
TOP_FUNCTIONS = 25
WARM_BLOCK_BYTES = 4 * 1024 * 1024

# curl's CPU: it runs under this wrapper, which reports its children's rusage when they exit
RUSAGE_WRAPPER = textwrap.dedent("""
    import resource, subprocess, sys
    code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(usage.ru_utime + usage.ru_stime, flush=True)
    sys.exit(code)
""")

NGINX_CONF = """
daemon off;
user root;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen {address}:{port};
        root {root};
    }}
}}
"""


@dataclass(frozen=True)
class Run:
    """One transfer of the release to N edges."""

    name: str  # e.g. "mesh-4-capped"
    edges: int
    cap_mbit: float | None
    seconds: float  # clock start .. the last edge has everything
    cpu_s: dict[str, float]  # process -> CPU seconds in the window
    cpu_system_s: dict[str, float]  # process -> of which in the kernel (mesh agents only)
    cpu_s_per_gib: float  # sum(cpu_s) / (edges x release GiB)
    seed_upload_releases: float | None  # the seed's bytes on the wire / release bytes (mesh only)
    transfer_seconds: float | None = None  # mesh: the first edge's release.current .. the last edge done
    faults: dict[str, int] | None = None  # mesh: agent -> minor page faults in the window (all threads)
    wakeups: dict[str, int] | None = None  # mesh: agent -> voluntary context switches in the window (all threads)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def calibration_s() -> float:
    """CPU seconds of a fixed piece of Python work (arithmetic, dict inserts, 256 MiB of copies),
    measured just before and after each run: the agents' CPU figures move 10-30% between periods
    on a shared machine, and this says whether the core itself was slower then (in session 18 it
    stayed at 0.25-0.28 s while the lab's figures moved: the cause lay elsewhere)."""
    started = time.process_time()
    total, table = 0, {}
    for index in range(3_000_000):
        total += index * index
        table[index & 0xFFFF] = total
    block = bytearray(1 << 20)
    for _ in range(256):
        bytes(block)
    return time.process_time() - started


def warm_page_pool(directory: Path, size: int) -> None:
    """Write and delete `size` bytes, so the run's page cache reuses pages the kernel just freed.

    On the virtual machines these benchmarks run on, the first touch of a guest page costs ~10x a
    reused one (writing 256 MiB into new files: 0.71 s of system time the first time, 0.06 s
    right after deleting them), which would charge whichever run came first with the host's
    memory allocation rather than its own work."""
    block = os.urandom(WARM_BLOCK_BYTES)
    path = directory / "warm.bin"
    with open(path, "wb") as handle:
        for _ in range(-(-size // len(block))):
            handle.write(block)
    path.unlink()


def run_mesh(name: str, release_dir: Path, run_dir: Path, logs: Path, edges: int, cap_mbit: float | None,
             total: int, timeout_s: float, profile: Path | None, perf: Path | None = None) -> Run:
    homes = sb.make_homes(run_dir / name, release_dir, edges, publish=False)
    logs.mkdir(parents=True)  # each run its own logs: edges are done at their first release.complete
    counters = _KernelCounters()
    hooks = [counters]
    if perf is not None or profile is not None:
        hooks.append(_PerfRecorder(perf, name) if perf is not None else _Profiler(profile, name))
    result = sb.run_swarm(homes, "publish", cap_mbit, timeout_s, total, "info", logs, hooks=_Hooks(hooks))
    delivered = edges * total
    return Run(name, edges, cap_mbit, result.seconds, result.cpu_s, result.cpu_system_s,
               sum(result.cpu_s.values()) / (delivered / GIB), result.seed_upload_releases,
               result.transfer_seconds, counters.delta("faults"), counters.delta("wakeups"))


class _Hooks:
    """Several run hooks as one (`sb.run_swarm` takes one)."""

    def __init__(self, hooks: list) -> None:
        self.hooks = hooks

    def started(self, agents: list[sb.Agent]) -> None:
        for hook in self.hooks:
            hook.started(agents)

    def finished(self) -> None:
        for hook in self.hooks:
            hook.finished()


class _KernelCounters:
    """Minor page faults and voluntary context switches (wake-ups after a wait) of every agent
    over the run's window, all threads: counts that CPU time on a shared machine only hints at."""

    def __init__(self) -> None:
        self.agents: dict[str, int] = {}
        self.before: dict[str, dict[str, int]] = {}
        self.after: dict[str, dict[str, int]] = {}

    def started(self, agents: list[sb.Agent]) -> None:
        self.agents = {agent.name: agent.process.pid for agent in agents}
        self.before = {name: _proc_counts(pid) for name, pid in self.agents.items()}

    def finished(self) -> None:
        self.after = {name: _proc_counts(pid) for name, pid in self.agents.items()}

    def delta(self, what: str) -> dict[str, int]:
        return {name: self.after[name][what] - self.before[name][what]
                for name in self.agents if name in self.after and name in self.before}


def _proc_counts(pid: int) -> dict[str, int]:
    """{"faults": minor faults, "wakeups": voluntary context switches} of a process, all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        wakeups = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        wakeups += int(line.split()[1])
        return {"faults": int(fields[7]), "wakeups": wakeups}
    except OSError:
        return {"faults": 0, "wakeups": 0}


class _Profiler:
    """py-spy on every agent of one run, from the clock start to the last edge's completion."""

    def __init__(self, directory: Path, label: str) -> None:
        self.directory = directory
        self.label = label
        self.samplers: list[tuple[str, subprocess.Popen]] = []

    def started(self, agents: list[sb.Agent]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for agent in agents:
            out = self.directory / f"{self.label}-{agent.name}.txt"
            argv = ["py-spy", "record", "--pid", str(agent.process.pid), "--format", "raw", "--gil",
                    "--rate", str(PROFILE_RATE_HZ), "--output", str(out), "--nonblocking"]
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            argv[0] = py_spy
            self.samplers.append((agent.name, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                               stderr=subprocess.DEVNULL)))

    def finished(self) -> None:
        for _, sampler in self.samplers:
            sampler.send_signal(signal.SIGINT)
        for _, sampler in self.samplers:
            try:
                sampler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sampler.kill()


class _PerfRecorder:
    """`perf record` of every agent (all threads, kernel and user) over the same window as
    `_Profiler`: where the system time goes, which py-spy cannot see."""

    def __init__(self, directory: Path, label: str) -> None:
        self.directory = directory
        self.label = label
        self.recorder: subprocess.Popen | None = None
        self.roles: dict[int, str] = {}

    def started(self, agents: list[sb.Agent]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.roles = {agent.process.pid: agent.name for agent in agents}
        argv = ["perf", "record", "--quiet", "-F", str(PROFILE_RATE_HZ), "-g", "-o",
                str(self.directory / f"{self.label}.perf"), "-p", ",".join(map(str, self.roles))]
        self.recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finished(self) -> None:
        if self.recorder is None:
            return
        self.recorder.send_signal(signal.SIGINT)
        try:
            self.recorder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.recorder.kill()
        (self.directory / f"{self.label}-roles.txt").write_text(
            "".join(f"{pid} {role}\n" for pid, role in self.roles.items()))


def summarize_perf(path: Path) -> list[tuple[str, float]]:
    """(symbol, share of samples) over every agent's threads, kernel symbols marked [k]."""
    result = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort", "sym", "--stdio",
                             "-g", "none"], capture_output=True, text=True)
    rows = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1] in ("[k]", "[.]"):
            rows.append((f"{parts[1]} {' '.join(parts[2:])}", float(parts[0].rstrip("%")) / 100))
    return rows[:TOP_FUNCTIONS]


def run_nginx(name: str, release_dir: Path, paths: list[Path], workdir: Path, edges: int,
              cap_mbit: float | None, timeout_s: float) -> Run:
    total = sum(path.stat().st_size for path in paths)
    names = [f"e{index + 1}" for index in range(edges)]
    work = workdir / f"nginx-{name}"
    (work / "tmp").mkdir(parents=True)
    with build_lab(edges, cap_mbit) as lab:
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, address=lab.address("seed"), port=NGINX_PORT,
                                          root=release_dir))
        master = lab.run("seed", ["nginx", "-c", str(conf), "-p", str(work)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        base = f"http://{lab.address('seed')}:{NGINX_PORT}"
        _wait_nginx(lab, names[0], base, paths[0].name, master)
        server_pids = _nginx_pids(master.pid)
        cpu0 = {pid: _proc_cpu_s(pid) for pid in server_pids}
        started = time.monotonic()
        clients = {}
        for edge in names:
            argv = [sys.executable, "-c", RUSAGE_WRAPPER, "curl", "--silent", "--show-error", "--fail",
                    "--parallel", "--parallel-max", str(min(len(paths), sb.CURL_PARALLEL_MAX))]
            sink = work / f"files-{edge}"  # written to disk, as an edge stores what it gets
            sink.mkdir()
            for path in paths:
                argv += ["--output", str(sink / path.name), f"{base}/{path.name}"]
            clients[edge] = lab.run(edge, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finished = sb.wait_clients(clients, started, started + timeout_s)
        cpu = {f"nginx-{index}": _proc_cpu_s(pid) - cpu0[pid] for index, pid in enumerate(server_pids)}
        master.send_signal(signal.SIGQUIT)
    for edge, client in clients.items():
        cpu[f"curl-{edge}"] = float(client.stdout.read().split()[-1])
        got = sum(path.stat().st_size for path in (work / f"files-{edge}").iterdir())
        if got != total:
            raise sb.BenchError(f"curl on {edge} stored {got} of {total} bytes")
        shutil.rmtree(work / f"files-{edge}")
    return Run(name, edges, cap_mbit, max(finished.values()), cpu, {}, sum(cpu.values()) / (edges * total / GIB), None)


def _wait_nginx(lab, client: str, base: str, probe: str, master: subprocess.Popen) -> None:
    deadline = time.monotonic() + sb.AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if master.poll() is not None:
            raise sb.BenchError(f"nginx exited with {master.returncode}")
        result = lab.call(client, ["curl", "--silent", "--fail", "--range", "0-0", "--output", "/dev/null",
                                   f"{base}/{probe}"], timeout_s=10)
        if result.returncode == 0:
            return
        time.sleep(sb.POLL_INTERVAL_S)
    raise sb.BenchError("nginx did not come up")


def _nginx_pids(master_pid: int) -> list[int]:
    """The master (the process `ip netns exec` became) and its workers."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [master_pid, *map(int, children)]


# ---- profiles ------------------------------------------------------------------------------------


def summarize_profile(path: Path) -> list[tuple[str, float]]:
    """(function, share of samples) for the functions with the most samples of their own."""
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        own[_short_frame(leaf)] += int(count)
        total += int(count)
    return [(frame, count / total) for frame, count in own.most_common(TOP_FUNCTIONS)] if total else []


def _short_frame(frame: str) -> str:
    """`send_all (mesh/drivers/channel.py:483)` -> `channel.py:send_all`."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{Path(file).name}:{name}"


# ---- the bench -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> dict:
    total = args.mib * 1024 * 1024
    release_dir = workdir / "release"
    (workdir / "logs").mkdir(parents=True)
    sb.BYTECODE["cache"] = workdir / "pycache"
    paths = sb.write_random_files(release_dir, total, args.files)
    timeout_s = args.timeout_s or 60 + 10 * total / mbit_to_bytes_per_s(args.cap_mbit)
    results: dict = {"mib": args.mib, "files": args.files, "edges": args.edges, "cap_mbit": args.cap_mbit,
                     "code": sb.code_version(), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
                     "page_reporting": getattr(args, "page_reporting_done", args.page_reporting),
                     "runs": {}}
    for name in args.runs:
        kind, count, *capped = name.split("-")
        edges = 1 if count == "1" else args.edges
        cap = args.cap_mbit if capped else None
        print(f"# running {name} ...", file=sys.stderr, flush=True)
        warm_page_pool(workdir, (2 * edges + 1) * total)
        before = calibration_s()
        with fresh_filesystem(args.fs, workdir, (2 * edges + 2) * total) as (run_dir, results["homes_on"]):
            if kind == "mesh":
                result = run_mesh(name, release_dir, run_dir, workdir / "logs" / name, edges, cap, total,
                                  timeout_s, args.profile, args.perf)
            else:
                result = run_nginx(name, release_dir, paths, run_dir, edges, cap, timeout_s)
        results["runs"][name] = asdict(result) | {"calibration_s": (before, calibration_s())}
    results["load_after"] = os.getloadavg()[0]
    if args.profile is not None:
        results["profile"] = {path.stem: summarize_profile(path) for path in sorted(args.profile.glob("*.txt"))}
    if args.perf is not None:
        results["perf"] = {path.stem: summarize_perf(path) for path in sorted(args.perf.glob("*.perf"))}
    results["figures"] = figures(results["runs"])
    return results


def figures(runs: dict) -> dict:
    """The ratios the issue's targets are stated in."""
    out = {}
    for suffix in ("1", "4", "4-capped"):
        mesh, nginx = runs.get(f"mesh-{suffix}"), runs.get(f"nginx-{suffix}")
        if mesh and nginx:
            out[f"speed_vs_nginx_{suffix}"] = nginx["seconds"] / mesh["seconds"]
            out[f"cpu_vs_nginx_{suffix}"] = mesh["cpu_s_per_gib"] / nginx["cpu_s_per_gib"]
    return out


def report(results: dict) -> str:
    lines = [f"# {results['mib']} MiB in {results['files']} files; code {results['code']}; "
             f"load {results['load_before']:.2f} -> {results['load_after']:.2f}; "
             f"page reporting {results['page_reporting']}; homes on {results.get('homes_on', 'the work directory')}",
             "| run | edges | cap Mbit/s | seconds (from release.current) | CPU-s per GiB delivered | seed uploads "
             "| CPU-s by process | k faults / k wake-ups by process | calibration s before / after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, run_ in results["runs"].items():
        cap = "-" if run_["cap_mbit"] is None else f"{run_['cap_mbit']:g}"
        upload = "" if run_["seed_upload_releases"] is None else f"{run_['seed_upload_releases']:.3f} F"
        kernel = run_["cpu_system_s"]
        per = " ".join(f"{k}={v:.2f}" + (f" ({kernel[k]:.2f} sys)" if k in kernel else "")
                       for k, v in sorted(run_["cpu_s"].items()))
        moved = f" ({run_['transfer_seconds']:.2f})" if run_.get("transfer_seconds") is not None else ""
        faults, wakeups = run_.get("faults") or {}, run_.get("wakeups") or {}
        counts = " ".join(f"{k}={faults[k] / 1000:.1f}/{wakeups.get(k, 0) / 1000:.1f}" for k in sorted(faults))
        calibration = "/".join(f"{value:.3f}" for value in run_.get("calibration_s", ()))
        lines.append(f"| {name} | {run_['edges']} | {cap} | {run_['seconds']:.2f}{moved} | "
                     f"{run_['cpu_s_per_gib']:.2f} | {upload} | {per} | {counts} | {calibration} |")
    for key, value in results["figures"].items():
        lines.append(f"{key}: {value:.2f}")
    for label, top in results.get("profile", {}).items():
        lines.append(f"\n## profile {label} (own GIL-holding samples)")
        lines += [f"{share * 100:5.1f}%  {frame}" for frame, share in top]
    for label, top in results.get("perf", {}).items():
        lines.append(f"\n## perf {label} (every agent and thread, own samples, [k] kernel)")
        lines += [f"{share * 100:5.1f}%  {symbol}" for symbol, share in top]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="release size, MiB")
    parser.add_argument("--files", type=int, default=64, help="files in the release")
    parser.add_argument("--edges", type=int, default=4, help="edges in the 1->N runs")
    parser.add_argument("--cap-mbit", type=float, default=200.0, help="egress cap of the *-capped runs, Mbit/s")
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"subset of {','.join(RUNS)}")
    parser.add_argument("--profile", type=Path, default=None, help="sample the agents with py-spy into DIR")
    parser.add_argument("--page-reporting", choices=("off", "keep"), default="off",
                        help="free page reporting to the hypervisor during the bench (see page_reporting)")
    parser.add_argument("--perf", type=Path, default=None,
                        help="perf record every agent (kernel and user, all threads) into DIR")
    parser.add_argument("--fs", choices=("fresh", "workdir"), default="fresh",
                        help="where each run's homes live: a new ext4 per run (default, as root) or the work directory")
    parser.add_argument("--timeout-s", type=float, default=None, help="per run (default 60 + 10 x capped floor)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs; the homes too with --fs workdir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not args.runs or set(args.runs) - set(RUNS):
        parser.error(f"--runs: choose from {','.join(RUNS)}")
    if args.mib <= 0 or args.files <= 0 or args.cap_mbit <= 0 or not 1 <= args.edges <= 16:
        parser.error("--mib, --files and --cap-mbit must be positive, --edges in 1..16")
    if any(r.startswith("nginx") for r in args.runs) and shutil.which("nginx") is None:
        parser.error("the nginx runs need nginx (apt-get install nginx-light), or leave them out with --runs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with page_reporting(args.page_reporting) as done:
        args.page_reporting_done = done
        return sb.run_bench(args, "datapath-bench-", run, report)


if __name__ == "__main__":
    sys.exit(main())
