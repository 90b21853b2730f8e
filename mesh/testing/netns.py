"""Private network namespaces for tests and benchmarks that must not touch the real network.

Two shapes:

- `private_lo_namespace_cmd(argv)`: one throw-away namespace (`unshare -n`) that has only `lo`,
  brought up with multicast on and a 224.0.0.0/4 route, so every process inside it sees the others'
  mDNS and nobody outside sees anything. The namespace dies with its last process.
- `Lab`: named namespaces (`ip netns add`), one per host, each with an `eth0` on a private subnet
  (10.99.0.0/24 by default) plugged into a bridge that lives in its own "switch" namespace. Nothing
  is created in the root namespace: veth pairs are made inside the switch namespace and one end is
  moved straight into its host. Optional per-host egress cap with `tc ... tbf`.

Namespace names carry the pid and a random token so parallel runs never collide. Everything here
needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); `netns_available()` and `lab_available()` say why not.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from types import TracebackType

LO_SETUP_SCRIPT = (
    "set -e; ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo; "
    'exec "$@"'
)
NAMESPACE_PREFIX = "am"
LAB_SUBNET_DEFAULT = "10.99.0.0/24"
SETUP_COMMAND_TIMEOUT_S = 10.0
PROCESS_STOP_TIMEOUT_S = 3.0
TBF_LATENCY_MS = 100
TBF_BURST_BYTES_MIN = 16 * 1024

_lab_serial = itertools.count()


@cache
def netns_available() -> str | None:
    """None if this process can make a private `unshare -n` namespace, else the reason it cannot."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is not installed"
    probe = private_lo_namespace_cmd(["true"])
    result = _run_quiet(probe)
    if result.returncode != 0:
        return f"`unshare -n` failed: {result.stderr.strip() or result.returncode}"
    return None


@cache
def lab_available() -> str | None:
    """None if this process can build a `Lab` (named namespaces, veth, bridge), else why not."""
    reason = netns_available()
    if reason is not None:
        return reason
    try:
        with Lab(["probe"]):
            pass
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot build a namespace lab: {exc}"
    return None


def private_lo_namespace_cmd(inner: Sequence[str]) -> list[str]:
    """An argv that runs `inner` in a new namespace whose only link is `lo`, multicast-ready."""
    return ["unshare", "-n", "sh", "-c", LO_SETUP_SCRIPT, "sh", *inner]


def private_lo_python_cmd(code: str, *args: str) -> list[str]:
    """An argv that runs `python -c code args...` (this interpreter) in a private lo namespace."""
    return private_lo_namespace_cmd([sys.executable, "-c", code, *args])


def netns_inode(pid: int | str = "self") -> int:
    """The inode naming a process's network namespace; differs between namespaces."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def only_loopback_here() -> bool:
    """True when `lo` is this process's only link: nothing it sends can leave the machine."""
    return link_names() == ["lo"]


def link_names() -> list[str]:
    """The network links visible to this process (its namespace, unlike /sys/class/net)."""
    return sorted(name for _, name in socket.if_nameindex())


def namespaces() -> list[str]:
    """Names of every named namespace (`ip netns list`)."""
    result = _run_quiet(["ip", "netns", "list"])
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


@dataclass(frozen=True)
class Host:
    """One lab host: a named namespace with `eth0` on the lab subnet."""

    name: str  # the caller's short name, e.g. "seed"
    netns: str  # the namespace name, unique per run
    address: str  # eth0's IPv4 address, only ever configured inside `netns`
    egress_bytes_per_s: int | None  # tbf cap on eth0's egress; None for uncapped


class Lab:
    """Hosts in named namespaces joined by a bridge; a context manager that always cleans up."""

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        subnet: str = LAB_SUBNET_DEFAULT,
        egress_bytes_per_s: dict[str, int] | None = None,
    ) -> None:
        self._tag = f"{NAMESPACE_PREFIX}{os.getpid()}-{next(_lab_serial)}{secrets.token_hex(2)}"
        self._switch = f"{self._tag}-sw"
        self._created: list[str] = []
        self._processes: list[subprocess.Popen] = []
        self._closed = False
        self.hosts: dict[str, Host] = {}
        atexit.register(self.close)
        try:
            self._build(list(hosts), ipaddress.ip_network(subnet), egress_bytes_per_s or {})
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def namespace_names(self) -> list[str]:
        """Every namespace this lab made (hosts and switch), for leak checks."""
        return list(self._created)

    def address(self, host: str) -> str:
        """The host's eth0 address."""
        return self.hosts[host].address

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside the host's namespace."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def run(self, host: str, argv: Sequence[str], **popen_kwargs: object) -> subprocess.Popen:
        """Start `argv` inside the host; the lab kills it on close if it is still running."""
        full = self.command(host, argv)
        process = subprocess.Popen(full, **popen_kwargs)  # type: ignore[call-overload]
        self._processes.append(process)
        return process

    def call(
        self, host: str, argv: Sequence[str], timeout_s: float = 30.0
    ) -> subprocess.CompletedProcess:
        """Run `argv` inside the host to completion, capturing text output."""
        return subprocess.run(
            self.command(host, argv), capture_output=True, text=True, timeout=timeout_s
        )

    def close(self) -> None:
        """Stop our processes and delete every namespace we made (idempotent, never raises)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for process in self._processes:
            _stop(process)
        for netns in reversed(self._created):
            _kill_namespace_pids(netns)
            _run_quiet(["ip", "netns", "del", netns])
        self._created.clear()

    def _build(self, hosts: list[str], subnet: ipaddress.IPv4Network, caps: dict[str, int]) -> None:
        if len(set(hosts)) != len(hosts):
            raise ValueError("lab host names must be unique")
        addresses = subnet.hosts()
        self._add_namespace(self._switch)
        sw = ["ip", "-n", self._switch]
        _check([*sw, "link", "add", "br0", "type", "bridge"])
        _check([*sw, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0"])
        _check([*sw, "link", "set", "br0", "up"])
        for index, name in enumerate(hosts):
            host = Host(name, f"{self._tag}-{name}", str(next(addresses)), caps.get(name))
            self._add_host(host, index, subnet.prefixlen)
            self.hosts[name] = host

    def _add_host(self, host: Host, index: int, prefixlen: int) -> None:
        self._add_namespace(host.netns)
        sw = ["ip", "-n", self._switch]
        port = f"p{index}"
        veth = ["type", "veth", "peer", "name", "eth0", "netns", host.netns]
        _check([*sw, "link", "add", port, *veth])
        _check([*sw, "link", "set", port, "master", "br0"])
        _check([*sw, "link", "set", port, "up"])
        ns = ["ip", "-n", host.netns]
        _check([*ns, "link", "set", "lo", "up"])
        _check([*ns, "addr", "add", f"{host.address}/{prefixlen}", "dev", "eth0"])
        _check([*ns, "link", "set", "eth0", "multicast", "on"])
        _check([*ns, "link", "set", "eth0", "up"])
        _check([*ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
        if host.egress_bytes_per_s is not None:
            _check(_tbf_command(host.netns, host.egress_bytes_per_s))

    def _add_namespace(self, netns: str) -> None:
        _check(["ip", "netns", "add", netns])
        self._created.append(netns)


def _tbf_command(netns: str, bytes_per_s: int) -> list[str]:
    """A token-bucket egress cap on eth0 of a named namespace."""
    return ["ip", "netns", "exec", netns, *tbf_qdisc_command("eth0", bytes_per_s)]


def tbf_qdisc_command(device: str, bytes_per_s: int) -> list[str]:
    """`tc` argv for a token-bucket egress cap on `device` (tc's "bit" unit; its "bps" would mean
    bytes); run it inside the namespace that owns the device."""
    burst_bytes = max(TBF_BURST_BYTES_MIN, bytes_per_s // 50)
    rate = f"{bytes_per_s * 8}bit"
    qdisc = ["tbf", "rate", rate, "burst", str(burst_bytes), "latency", f"{TBF_LATENCY_MS}ms"]
    return ["tc", "qdisc", "add", "dev", device, "root", *qdisc]


def _check(argv: list[str]) -> None:
    result = _run_quiet(argv)
    if result.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")


def _run_quiet(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=SETUP_COMMAND_TIMEOUT_S, check=False
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=PROCESS_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kill_namespace_pids(netns: str) -> None:
    """Kill stragglers still inside a namespace we made (children of processes we started)."""
    result = _run_quiet(["ip", "netns", "pids", netns])
    for line in result.stdout.split():
        try:
            os.kill(int(line), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            continue
