"""A thin command line around `mesh.testing.netns.Lab`: build a lab, keep it up, tear it down.

    python -m bench.netlab.lab up N [--cap-mbit 200] [--subnet 10.99.0.0/24] [--state FILE] [--foreground]
    python -m bench.netlab.lab exec HOST -- COMMAND...   # run a command inside a lab host
    python -m bench.netlab.lab down [--state FILE]

`up` builds one "seed" host and N edge hosts ("e1".."eN") in named network namespaces on a bridge
that lives in its own namespace (nothing is added to the root namespace); every host's egress is
capped with `tc tbf` when `--cap-mbit` is given. A holder process owns the lab: it writes the state
file (hosts, addresses, namespaces, its pid) once the lab is built and deletes every namespace when
it gets SIGTERM/SIGINT/SIGHUP or exits for any reason. `up` returns once the state file is written
(or holds the lab itself with `--foreground`, until Ctrl-C). `down` stops the holder and, as a
fallback, deletes any namespace the state file lists that is still there. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mesh.testing.netns import LAB_SUBNET_DEFAULT, Lab, lab_available, namespaces

STATE_FILE_DEFAULT = Path("/tmp/assetmesh-netlab.json")
HOLDER_READY_TIMEOUT_S = 30.0
HOLDER_STOP_TIMEOUT_S = 10.0
HOSTS_MAX = 32  # lab hosts at most (edges + seed): each one is a namespace and a veth pair


def host_names(edges: int) -> list[str]:
    """The seed followed by `edges` edge hosts."""
    return ["seed", *(f"e{index + 1}" for index in range(edges))]


def mbit_to_bytes_per_s(mbit: float) -> int:
    """Megabits (10**6 bits) per second as bytes per second, the unit `Lab` takes."""
    return int(mbit * 1_000_000 / 8)


def lab_state(lab: Lab, cap_mbit: float | None) -> dict:
    """What the state file records about a live lab."""
    return {
        "pid": os.getpid(),
        "cap_mbit": cap_mbit,
        "hosts": {name: {"netns": h.netns, "address": h.address, "egress_bytes_per_s": h.egress_bytes_per_s}
                  for name, h in lab.hosts.items()},
        "namespaces": lab.namespace_names,
    }


def build_lab(edges: int, cap_mbit: float | None, subnet: str = LAB_SUBNET_DEFAULT) -> Lab:
    """A seed and `edges` edge hosts, each host's egress capped at `cap_mbit` (None: uncapped)."""
    if not 0 <= edges < HOSTS_MAX:
        raise SystemExit(f"error: between 0 and {HOSTS_MAX - 1} edge hosts, not {edges}")
    names = host_names(edges)
    caps = {} if cap_mbit is None else {name: mbit_to_bytes_per_s(cap_mbit) for name in names}
    return Lab(names, subnet=subnet, egress_bytes_per_s=caps)


def _write_atomic(path: Path, doc: dict) -> None:
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps(doc, indent=2))
    os.replace(temp, path)


def hold(edges: int, cap_mbit: float | None, subnet: str, state_path: Path, announce: bool = False) -> None:
    """Build the lab, record it, and keep it until a signal; always tear it down."""
    stop = {"requested": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["requested"] = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    with build_lab(edges, cap_mbit, subnet) as lab:
        try:
            _write_atomic(state_path, lab_state(lab, cap_mbit))
            if announce:
                print_hosts(json.loads(state_path.read_text()), state_path)
            while not stop["requested"]:
                time.sleep(0.2)
        finally:
            state_path.unlink(missing_ok=True)


def up(args: argparse.Namespace) -> int:
    reason = lab_available()
    if reason is not None:
        print(f"error: no namespace lab here: {reason}", file=sys.stderr)
        return 1
    if args.state.exists():
        print(f"error: {args.state} exists: a lab is up (run `down` first)", file=sys.stderr)
        return 1
    if args.foreground:
        hold(args.edges, args.cap_mbit, args.subnet, args.state, announce=True)
        return 0
    argv = [sys.executable, "-m", "bench.netlab.lab", "_hold", str(args.edges), "--subnet", args.subnet,
            "--state", str(args.state)]
    if args.cap_mbit is not None:
        argv += ["--cap-mbit", str(args.cap_mbit)]
    holder = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    return print_hosts_when_ready(args.state, holder)


def print_hosts_when_ready(state_path: Path, holder: subprocess.Popen) -> int:
    """Wait for the holder's state file, then print the hosts."""
    deadline = time.monotonic() + HOLDER_READY_TIMEOUT_S
    while not state_path.exists():
        if holder.poll() is not None:
            print(f"error: the lab holder exited ({holder.returncode}) before the lab was up", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            _stop_pid(holder.pid)
            print("error: the lab did not come up in time", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print_hosts(json.loads(state_path.read_text()), state_path)
    return 0


def print_hosts(doc: dict, state_path: Path) -> None:
    for name, host in doc["hosts"].items():
        print(f"{name:6} {host['address']:15} ip netns exec {host['netns']} ...")
    print(f"lab up (holder pid {doc['pid']}, cap {doc['cap_mbit']} Mbit/s); state in {state_path}", flush=True)


def _stop_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + HOLDER_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def down(args: argparse.Namespace) -> int:
    if not args.state.exists():
        print(f"no lab recorded in {args.state}; nothing to do")
        return 0
    doc = json.loads(args.state.read_text())
    _stop_pid(int(doc["pid"]))
    leftover = [ns for ns in doc["namespaces"] if ns in set(namespaces())]
    for netns in reversed(leftover):  # the holder died without cleaning up: do it here
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                continue
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    args.state.unlink(missing_ok=True)
    print(f"lab down ({len(doc['namespaces'])} namespaces removed)")
    return 0


def exec_in(args: argparse.Namespace) -> int:
    doc = json.loads(args.state.read_text())
    host = doc["hosts"].get(args.host)
    if host is None:
        print(f"error: no host {args.host!r}; hosts: {', '.join(doc['hosts'])}", file=sys.stderr)
        return 1
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return subprocess.call(["ip", "netns", "exec", host["netns"], *command])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.netlab.lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("up", "_hold"):
        cmd = sub.add_parser(verb, help="build a lab of a seed and N edge hosts" if verb == "up" else argparse.SUPPRESS)
        cmd.add_argument("edges", type=int, help="edge hosts besides the seed")
        cmd.add_argument("--cap-mbit", type=float, default=None, help="egress cap of every host, Mbit/s")
        cmd.add_argument("--subnet", default=LAB_SUBNET_DEFAULT, help="private lab subnet")
        cmd.add_argument("--state", type=Path, default=STATE_FILE_DEFAULT, help="state file")
        cmd.add_argument("--foreground", action="store_true", help="hold the lab here until Ctrl-C")
    cmd = sub.add_parser("exec", help="run a command inside a lab host")
    cmd.add_argument("host")
    cmd.add_argument("command", nargs=argparse.REMAINDER)
    cmd.add_argument("--state", type=Path, default=STATE_FILE_DEFAULT)
    cmd = sub.add_parser("down", help="tear the lab down")
    cmd.add_argument("--state", type=Path, default=STATE_FILE_DEFAULT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.verb == "_hold":
        hold(args.edges, args.cap_mbit, args.subnet, args.state)
        return 0
    return {"up": up, "down": down, "exec": exec_in}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
