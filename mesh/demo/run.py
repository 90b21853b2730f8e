"""`mesh demo`: an organizer and two edges on 127.0.0.1, no mDNS, static peers.

Set-up goes through the same CLI commands a user types (run in this process); each agent is a real
`mesh up` subprocess in its own session (so Ctrl-C reaches only this process, which then stops the
agents with SIGTERM and waits for them). Homes live in a temporary directory unless `--dir`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mesh.cli import output
from mesh.drivers.tcp import free_port
from mesh.errors import MeshError, UsageError

HOST = "127.0.0.1"
MESH_NAME = "demo-popup"
EDGES = ("door", "stage")
EVENT_TAGS = {  # the canonical tag set: shown first on every node, originals kept on every edge
    "poster": "Tonight's posters", "stage-a": "Live from the main stage", "workshop": "Zine workshop",
    "merch": "Prints & tees",
}
START_TIMEOUT_S = 30.0  # for each agent's first status file
STOP_TIMEOUT_S = 15.0  # per agent after SIGTERM, then SIGKILL
POLL_S = 0.2


class _Stop(Exception):
    """SIGTERM (or SIGINT) asked the demo to stop."""


@dataclass
class DemoNode:
    """One home and its agent process."""

    name: str  # human node name
    home: Path  # its home directory
    port: int  # session port on loopback
    http_port: int  # web pages and API
    proc: subprocess.Popen | None = None  # the `mesh up` process
    log_path: Path = field(default=Path())  # where its log goes

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}/"


def _mesh(home: Path, *args: str) -> str:
    """Run one `mesh` command in this process, as a user would type it; its stdout."""
    from mesh.cli.main import cli

    captured, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(errors):
        try:
            cli.main(args=["--home", str(home), *args], prog_name="mesh", standalone_mode=False)
        except MeshError as exc:
            raise MeshError(f"demo set-up: `mesh {' '.join(args[:2])}` failed: {exc}") from None
    return captured.getvalue()


def _set_up(nodes: list[DemoNode], base: Path) -> str:
    """Create the mesh, join the edges, add the samples, publish a release; the release id."""
    from mesh.demo.samples import write_samples

    org = nodes[0]
    _mesh(org.home, "init", MESH_NAME, "--node-name", org.name)
    for edge in nodes[1:]:
        token = _mesh(org.home, "invite", "--role", "edge", "--name", edge.name,
                      "--hint", f"{HOST}:{org.port}").strip()
        _mesh(edge.home, "join", token)
    describe = [arg for tag, text in EVENT_TAGS.items() for arg in ("--describe", f"{tag}={text}")]
    _mesh(org.home, "tags", "set", *EVENT_TAGS, *describe)
    site = base / "site"
    for path, tags in write_samples(site):
        _mesh(org.home, "add", str(path), *[a for tag in tags for a in ("--tag", tag)], "--json")
    created = json.loads(_mesh(org.home, "release", "create", "demo-site", str(site), "--json"))
    _mesh(org.home, "release", "publish", created["id"], "--json")
    return created["id"]


def _start(node: DemoNode, peers: list[DemoNode]) -> None:
    argv = [sys.executable, "-m", "mesh", "--home", str(node.home), "up", "--no-mdns",
            "--listen", f"{HOST}:{node.port}", "--http", f"{HOST}:{node.http_port}", "--log-format", "json"]
    for peer in peers:
        argv += ["--peer", f"{HOST}:{peer.port}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MESH_HOME", None)
    with open(node.log_path, "ab") as log:
        node.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                     start_new_session=True)


def _wait_for(predicate, timeout_s: float, what: str, nodes: list[DemoNode]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for node in nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise MeshError(f"the {node.name} agent exited (code {node.proc.returncode}); see {node.log_path}")
        if time.monotonic() >= deadline:
            raise MeshError(f"demo: timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(POLL_S)


def _status(node: DemoNode) -> dict | None:
    from mesh.drivers.agentfiles import read_status

    return read_status(node.home)


def _has_release(node: DemoNode, release_id: str) -> bool:
    release = (_status(node) or {}).get("release") or {}
    return release.get("id") == release_id and bool(release.get("complete"))


def _stop(nodes: list[DemoNode]) -> None:
    """SIGTERM every agent, then wait (SIGKILL after STOP_TIMEOUT_S)."""
    running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    for node in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGTERM)
    for node in running:
        try:
            node.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()


def _print_urls(nodes: list[DemoNode], release_id: str) -> None:
    output.stdout.print(f"AssetMesh demo: 3 nodes on {HOST}, release {release_id}", markup=False)
    for node in nodes:
        output.stdout.print(f"  {node.name:<10} {node.url}  search: {node.url}search  consent: {node.url}consent"
                            f"  release: {node.url}release/current/index.html  crew: {node.url}crew", markup=False)
    from mesh.cli.web_cmds import crew_token_for
    from mesh.drivers.home import Home

    home = Home.open(nodes[0].home)
    token = crew_token_for(home)
    if token:
        output.stdout.print(f"crew token (log in at any node's /crew): {token}", markup=False)
    _print_badge(nodes[0].url, home.info.mesh_id)
    output.stdout.print("demo ready: press Ctrl-C to stop", markup=False)
    sys.stdout.flush()


def _print_badge(url: str, mesh_id: str) -> None:
    """One sample badge: the code printed on it, and the link its QR code would carry (secret inside)."""
    import random

    from mesh.gateway.pages import badge_url
    from mesh.state.consent import new_badge

    badge = new_badge(random.SystemRandom(), mesh_id)
    output.stdout.print(f"a badge to try: code {badge.code}, its QR link {badge_url(url, badge)}", markup=False)


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def _watch(nodes: list[DemoNode]) -> None:
    """Block until a signal, or until an agent dies (MeshError)."""
    while True:
        for node in nodes:
            if node.proc.poll() is not None:
                raise MeshError(f"the {node.name} agent exited (code {node.proc.returncode}); see {node.log_path}")
        time.sleep(0.5)


def _nodes(base: Path) -> list[DemoNode]:
    names = ("organizer", *EDGES)
    nodes = [DemoNode(name, base / name, free_port(HOST), free_port(HOST)) for name in names]
    for node in nodes:
        node.log_path = base / f"{node.name}.log"
    return nodes


def run_demo(directory: Path | None, timeout_s: float = 60.0) -> None:
    """Run the demo until Ctrl-C or SIGTERM; the agents are always stopped on the way out."""
    if directory is not None and (directory / "organizer").exists():
        raise UsageError(f"{directory} already holds a demo: pick an empty --dir")
    base = Path(tempfile.mkdtemp(prefix="assetmesh-demo-")) if directory is None else directory
    base.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    nodes = _nodes(base)
    try:
        output.stderr.print(f"demo: homes and logs in {base}", markup=False)
        release_id = _set_up(nodes, base)
        _start(nodes[0], [])
        for edge in nodes[1:]:
            _start(edge, [nodes[0]])
        _wait_for(lambda: all(_status(n) is not None for n in nodes), START_TIMEOUT_S, "the agents to start", nodes)
        _wait_for(lambda: all(_has_release(n, release_id) for n in nodes), timeout_s, "the edges to hold the release", nodes)
        _print_urls(nodes, release_id)
        _watch(nodes)
    except (_Stop, KeyboardInterrupt):
        output.stderr.print("demo: stopping the agents…", markup=False)
    finally:
        _stop(nodes)
        signal.signal(signal.SIGTERM, previous)
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
    output.stderr.print("demo: stopped", markup=False)
