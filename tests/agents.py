"""Real `mesh up` processes for multi-node tests, on loopback (or inside a private namespace)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

from mesh.drivers.tcp import free_port
from tests.conftest import mesh_env, run_mesh


def http_status(url: str, method: str = "GET", headers: dict | None = None) -> int:
    """The status of one HTTP request to a local node (the body is read and dropped)."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class HttpClient:
    """A tiny HTTP client to a local node that keeps cookies and never follows redirects."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";")[0].strip('"')
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def get(self, path: str, **headers):
        return self.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def post_form(self, path: str, fields: dict, headers: dict | None = None):
        body = urlencode(fields).encode()
        return self.request("POST", path, {"Content-Type": "application/x-www-form-urlencoded",
                                           **(headers or {})}, body)

    def csrf(self, page: str, action: str) -> str:
        html = self.get(page, accept="text/html")[2].decode()
        match = re.search(rf'<form action="{re.escape(action)}" method="post"[^>]*>\s*'
                          r'<input type="hidden" name="csrf" value="([0-9a-f]+)">', html)
        assert match, f"no form for {action} on {page}"
        return match.group(1)


class Node:
    """One home, and the agent process running on it (if started)."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = home.parent / f"{home.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cli(self, *args: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
        result = run_mesh(*args, home=self.home)
        if check:
            assert result.returncode == 0, f"mesh {args} failed: {result.stderr.decode()}"
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    @property
    def node_id(self) -> str:
        return self.json("id")["node_id"]

    def up_argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "mesh", "--home", str(self.home), "up",
                "--listen", self.address, "--log-level", "debug", *extra]

    def start(self, *extra: str, prefix: tuple[str, ...] = ()) -> Node:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*prefix, *self.up_argv(*extra)], stdout=log, stderr=log, env=mesh_env(),
                                     start_new_session=True)
        log.close()
        wait_until(lambda: self._running("--http" in extra), 20, f"{self.home.name} to start")
        return self

    def _running(self, http: bool = False) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.home.name} exited early:\n{self.log()}")
        status = self.json("status")
        return bool(status.get("running")) and "state" in status and (not http or bool(status.get("http_listening")))

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def peers(self) -> set[str]:
        return {p["node_id"] for p in self.json("status").get("peers", [])}

    def tags_of(self, cid: str) -> set[str] | None:
        for record in self.json("ls"):
            if record["cid"] == cid:
                return set(record["tags"])
        return None


def make_mesh(tmp_path: Path, edges: int, ports: list[int] | None = None) -> tuple[Node, list[Node]]:
    """An organizer home and `edges` joined edge homes (joined offline, no agent running)."""
    org = Node(tmp_path / "org", ports[0] if ports else None)
    org.cli("init", "popup-test", "--node-name", "org")
    members = []
    for index in range(edges):
        edge = Node(tmp_path / f"edge{index + 1}", ports[index + 1] if ports else None)
        token = org.cli("invite", "--role", "edge", "--name", f"door-{index + 1}").stdout.decode().strip()
        edge.cli("join", token)
        members.append(edge)
    return org, members


def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        node.stop()


@contextmanager
def agents_in_namespace(runs: list[tuple[Node, tuple[str, ...]]]) -> Iterator[subprocess.Popen]:
    """Run each node's `mesh up` (with its extra arguments, logging to its log file) together in a
    fresh private network namespace whose only link is `lo`, multicast-ready: mDNS works between
    them and nothing leaves the machine. Yields the holder process (its pid names the namespace,
    for `nsenter --net=/proc/PID/ns/net`); every agent is stopped on exit."""
    from mesh.testing.netns import private_lo_namespace_cmd

    script = " & ".join(subprocess.list2cmdline(node.up_argv(*extra)) + f" >>{node.log_path} 2>&1"
                        for node, extra in runs)
    holder = subprocess.Popen(private_lo_namespace_cmd(["sh", "-c", script + " & wait"]), env=mesh_env(),
                              start_new_session=True)
    try:
        yield holder
    finally:
        os.killpg(holder.pid, signal.SIGTERM)
        try:
            holder.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()


class PrivateNet:
    """A private network namespace whose only link is `lo` (multicast-ready), kept alive by a
    holder process; `prefix` runs a command inside it. Nothing sent there leaves the machine."""

    def __init__(self) -> None:
        from mesh.testing.netns import private_lo_namespace_cmd

        self.holder = subprocess.Popen(private_lo_namespace_cmd(["sleep", "600"]), start_new_session=True)
        wait_until(self._ready, 10, "the private namespace")

    def _ready(self) -> bool:
        try:  # unshare execs the setup shell, which execs sleep: one pid throughout
            return os.readlink(f"/proc/{self.holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        except OSError:
            return False

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("nsenter", f"--net=/proc/{self.holder.pid}/ns/net")

    def cap(self, bytes_per_s: int) -> None:
        """Cap everything sent in the namespace (all of it crosses `lo`) with `tc tbf`."""
        from mesh.testing.netns import tbf_qdisc_command

        subprocess.run([*self.prefix, *tbf_qdisc_command("lo", bytes_per_s)], check=True, capture_output=True)

    def close(self) -> None:
        os.killpg(self.holder.pid, signal.SIGKILL)
        self.holder.wait()
