"""Field operations: `mesh doctor` (health checks here), `mesh drill` (a dry run across the mesh),
`mesh demo` (three nodes on loopback with sample assets)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.errors import MeshError

pass_context = click.make_pass_decorator(Context)
DRILL_POLL_S = 0.3  # how often `mesh drill` reads the status file


def _fail_exit() -> None:
    raise SystemExit(1)


# --- doctor ---------------------------------------------------------------------------------------


def _checks_table(checks: list[dict], title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in checks:
        verdict = "[bold red]FAIL[/]" if not check["ok"] else "[yellow]warn[/]" if check.get("warn") else "[green]ok[/]"
        table.add_row(check["name"], verdict, check.get("detail", ""))
    return table


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML config (thresholds, static peers, probes), as for `mesh up --config`.")
@click.option("--peer", "peers", multiple=True, help="Static peer HOST:PORT to check (repeatable; overrides the file).")
@click.option("--json", "as_json", is_flag=True, help='Print {"ok","agent_running","checks"} as JSON.')
@pass_context
def doctor(ctx: Context, config_file: Path | None, peers: tuple[str, ...], as_json: bool) -> None:
    """Check this node: disk, a sample of stored chunks, static peers, probes, and (with a running
    agent) peers, mDNS and clock skew. Exit 1 if any check fails."""
    from mesh.drivers.agentfiles import read_status
    from mesh.drivers.filestore import FileStore
    from mesh.drivers.health import doctor_checks
    from mesh.drivers.settings import Flags, build_config

    home = ctx.home()
    config = build_config(Flags(peers=tuple(peers)), config_file)
    status = read_status(home.path)
    store = FileStore(home.store_path)
    try:
        checks = doctor_checks(home.path, store, config, status, ctx.state_file().load(ctx.actor()), home.info)
    finally:
        store.close()
    ok = all(c["ok"] for c in checks)
    if as_json:
        output.print_json({"ok": ok, "agent_running": status is not None, "checks": checks})
    else:
        running = "agent running" if status is not None else "agent not running"
        output.stdout.print(_checks_table(checks, f"mesh doctor — {home.info.name} ({running})"))
        output.stdout.print("[green]all checks passed[/]" if ok else "[bold red]some checks failed[/]")
    if not ok:
        _fail_exit()


# --- drill ----------------------------------------------------------------------------------------


def _start_drill(ctx: Context) -> tuple[str, str, str]:
    """Grant then revoke consent for a fresh subject, then ask every node for a drill."""
    from mesh.drivers.health import DRILL_SCOPE
    from mesh.state import consent as cs

    home = ctx.home()
    node_id = home.info.node_id
    subject = cs.new_subject_code(random.SystemRandom())
    for grant in (True, False):
        with ctx.state_file().transaction(ctx.actor()) as state:
            cs.record_decision(state, subject, DRILL_SCOPE, grant, time.time(), node_id)
    drill_id = os.urandom(8).hex()
    with ctx.state_file().transaction(ctx.actor()) as state:
        state.request_drill(drill_id, subject, DRILL_SCOPE, node_id, time.time())
    return drill_id, subject, DRILL_SCOPE


def _online_nodes(status: dict) -> dict[str, dict]:
    """node id -> {"name","role","report"} for this node and every connected peer."""
    nodes = {status["node_id"]: {"name": status.get("name"), "role": status.get("role"),
                                 "report": status.get("health")}}
    for peer in status.get("peers", []):
        nodes[peer["node_id"]] = {"name": peer.get("name"), "role": peer.get("role"), "report": peer.get("health")}
    for member in status.get("members") or []:
        if member.get("online") and member["node_id"] not in nodes:
            nodes[member["node_id"]] = {"name": member.get("name"), "role": member.get("role"), "report": None}
    return nodes


def _drill_row(node_id: str, node: dict, drill_id: str) -> dict:
    """One node's line of the drill table; `done` once its report carries this drill."""
    report = node.get("report") or {}
    drill = report.get("drill") or {}
    row = {"node_id": node_id, "name": node.get("name"), "role": node.get("role"), "done": False,
           "ok": False, "failed_checks": [], "release_verified": None, "consent": None}
    if drill.get("id") != drill_id:
        return row
    row.update(done=True, ok=bool(drill.get("ok")), release_verified=bool(drill.get("release_verified")),
               consent=drill.get("consent"), release_detail=drill.get("release_detail", ""),
               failed_checks=[c["name"] for c in report.get("checks", []) if not c.get("ok")])
    return row


def _wait_drill(home_path: Path, drill_id: str, timeout_s: float) -> tuple[list[dict], bool]:
    """Poll the status file until every node online at the start reported the drill."""
    from mesh.drivers.agentfiles import read_status

    deadline = time.monotonic() + timeout_s
    expected: dict[str, dict] = {}
    rows: dict[str, dict] = {}
    while True:
        status = read_status(home_path)
        if status is None:
            raise MeshError("the agent stopped during the drill")
        online = _online_nodes(status)
        for node_id, node in online.items():
            expected.setdefault(node_id, node)
            rows[node_id] = _drill_row(node_id, node, drill_id)
        for node_id in expected.keys() - online.keys():
            rows[node_id] = {**rows.get(node_id, _drill_row(node_id, expected[node_id], drill_id)), "offline": True}
        if all(row["done"] for row in rows.values()):
            return list(rows.values()), False
        if time.monotonic() >= deadline:
            return list(rows.values()), True
        time.sleep(DRILL_POLL_S)


def _drill_table(rows: list[dict], drill_id: str):
    from rich.table import Table

    table = Table(title=f"mesh drill {drill_id}", title_justify="left")
    for column in ("node", "role", "checks", "release", "consent", "result"):
        table.add_column(column)
    for row in rows:
        table.add_row(*_drill_cells(row))
    return table


def _drill_cells(row: dict) -> tuple[str, ...]:
    name = f"{row.get('name') or '?'} {row['node_id'][:8]}"
    if not row["done"]:
        state = "offline" if row.get("offline") else "no report"
        return name, row.get("role") or "", "-", "-", "-", f"[bold red]FAIL[/] ({state})"
    checks = "ok" if not row["failed_checks"] else "failed: " + ", ".join(row["failed_checks"])
    release = "verified" if row["release_verified"] else f"NOT verified ({row.get('release_detail', '')})"
    consent = row.get("consent") or {}
    round_trip = "ok" if consent.get("ok") else f"FAIL ({consent.get('grants', 0)} grant, {consent.get('revokes', 0)} revoke)"
    verdict = "[green]pass[/]" if row["ok"] else "[bold red]FAIL[/]"
    return name, row.get("role") or "", checks, release, round_trip, verdict


@click.command()
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every online node's report.")
@click.option("--json", "as_json", is_flag=True, help='Print {"id","ok","timed_out","nodes"} as JSON.')
@pass_context
def drill(ctx: Context, timeout_s: float, as_json: bool) -> None:
    """Dry run across the mesh: every check on every online node, the current release re-hashed
    everywhere, and a consent grant/revoke round trip. Exit 1 on any failure or timeout."""
    from mesh.drivers.agentfiles import read_status

    home = ctx.home()
    if read_status(home.path) is None:
        raise MeshError("mesh drill needs the agent running for this home (start `mesh up`)")
    drill_id, _, _ = _start_drill(ctx)
    if not as_json:
        output.stderr.print(f"drill {drill_id}: waiting for every online node (up to {timeout_s:g}s)…")
    rows, timed_out = _wait_drill(home.path, drill_id, timeout_s)
    ok = not timed_out and all(row["ok"] for row in rows)
    if as_json:
        output.print_json({"id": drill_id, "ok": ok, "timed_out": timed_out, "nodes": rows})
    else:
        output.stdout.print(_drill_table(rows, drill_id))
        if timed_out:
            output.stdout.print(f"[bold red]timed out after {timeout_s:g}s[/] waiting for "
                                + ", ".join(r.get("name") or r["node_id"][:8] for r in rows if not r["done"]))
        output.stdout.print("[green]drill passed[/]" if ok else "[bold red]drill failed[/]")
    if not ok:
        _fail_exit()


# --- demo -----------------------------------------------------------------------------------------


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the three homes here (default: a temporary directory removed on exit).")
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the edges to hold the release.")
def demo(directory: Path | None, timeout_s: float) -> None:
    """Three nodes (an organizer and two edges) on loopback with sample assets and a published
    release; prints each node's URLs and runs until Ctrl-C."""
    from mesh.demo.run import run_demo

    run_demo(directory, timeout_s)
