"""Commands that run or ask the agent: up, status."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.config import DEFAULT_PORT, AgentConfig
from mesh.errors import UsageError

pass_context = click.make_pass_decorator(Context)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        event = getattr(record, "event", None)
        if event:
            doc["event"] = event
            doc.update({k: _plain(v) for k, v in getattr(record, "fields", {}).items()})
        else:
            doc["message"] = record.getMessage()
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _plain(value: object) -> object:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("mesh")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_config(listen: str | None, http: str | None, peers: tuple[str, ...], no_mdns: bool,
                 mdns_interfaces: tuple[str, ...], config_file: Path | None, enroll: str | None = None,
                 https: str | None = None) -> AgentConfig:
    """Flags override the config file, which overrides the defaults (see mesh.drivers.settings)."""
    from mesh.drivers.settings import Flags
    from mesh.drivers.settings import build_config as settings_config

    flags = Flags(listen, http, tuple(peers), no_mdns, tuple(mdns_interfaces), enroll, https=https)
    return settings_config(flags, config_file)


@click.command()
@click.option("--listen", default=None, help=f"HOST:PORT for sessions (default 0.0.0.0:{DEFAULT_PORT}).")
@click.option("--http", default=None, help="HOST:PORT to serve the node's web pages and API.")
@click.option("--https", default=None, help="HOST:PORT to serve them over TLS with the event's certificate "
              "(`mesh tls set`); with --http too, HTTP redirects browsers there.")
@click.option("--peer", "peers", multiple=True, help="Static peer HOST:PORT, always dialed (repeatable).")
@click.option("--no-mdns", is_flag=True, help="Do not announce or browse with mDNS.")
@click.option("--mdns-interface", "mdns_interfaces", multiple=True, help="Use mDNS only on this interface address.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML config file (flags win).")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="text", type=click.Choice(["text", "json"]))
@click.option("--enroll", default=None, help="A fresh box's fleet key, or a file holding it (also: config "
              "`enroll`, MESH_ENROLL, /boot/assetmesh.key).")
@pass_context
def up(ctx: Context, listen, http, peers, no_mdns, mdns_interfaces, config_file, log_level, log_format,
       enroll, https) -> None:
    """Run the agent in the foreground until Ctrl-C (or SIGTERM). A fresh home with a fleet key
    joins its mesh first, with no other step."""
    import trio

    config = build_config(listen, http, peers, no_mdns, mdns_interfaces, config_file, enroll, https)
    setup_logging(log_level, log_format)
    from mesh.drivers.agentfiles import acquire_agent_lock
    from mesh.drivers.hubhome import HubHome

    if HubHome.exists(ctx.home_path):  # a co-op hub: every mesh of the home in this process
        hub = HubHome.open(ctx.home_path)
        paths, main = [hub.path] + [hub.mesh_path(mesh_id) for mesh_id in sorted(hub.meshes)], _run_hub
    else:
        hub = _home_or_enroll(ctx, config)
        paths, main = [hub.path], _run_agent
    locks = []
    try:
        for path in paths:
            locks.append(acquire_agent_lock(path))
        trio.run(main, hub, config)
    except BaseException as exc:  # a port in use is one line, not a nursery's traceback
        problem = _bind_problem(exc, config)
        if problem is None:
            raise
        raise UsageError(problem) from None
    finally:
        for lock in locks:
            lock.close()


def _bind_problem(exc: BaseException, config: AgentConfig) -> str | None:
    """The line to show when the agent could not listen: which address, and what to do."""
    import errno

    found = _find_bind_error(exc)
    if found is None:
        return None
    address, error = found
    if address is None:  # not the session listener: the HTTP side
        address = config.http or ("?", 0)
    where = f"{address[0]}:{address[1]}"
    if error.errno == errno.EADDRINUSE:
        return f"{where} is already in use: stop what listens there (another `mesh up`?) or pick another port"
    if error.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE; use 8080)"
    return f"cannot listen on {where}: {error.strerror or error}"


def _find_bind_error(exc: BaseException) -> tuple[tuple[str, int] | None, OSError] | None:
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return getattr(exc, "mesh_address", None), exc
    for inner in getattr(exc, "exceptions", ()):  # an exception group from a nursery
        found = _find_bind_error(inner)
        if found is not None:
            return found
    return None


def _log_event(log: logging.Logger, level: int, event: str, **fields: object) -> None:
    from mesh.drivers.pairing import log_event

    log_event(log, level, event, **fields)


ENROLL_RETRY_S = 10.0  # a fresh box with no usable key looks for one again this often


def _home_or_enroll(ctx: Context, config: AgentConfig):
    """The home; a fresh one joins with the fleet key it finds (mesh.drivers.enroll). A key that
    cannot be used (expired, malformed, another mesh's file) is one line on the console and in
    the log, and the box keeps looking (a crew can replace /boot/assetmesh.key)."""
    from mesh.drivers.enroll import find_key, join_home, key_offered
    from mesh.drivers.home import Home
    from mesh.errors import CredentialError, UsageError

    if Home.exists(ctx.home_path):
        return ctx.home()
    if not key_offered(config.enroll):
        return _wait_to_be_admitted(ctx, config)
    log = logging.getLogger("mesh.enroll")
    said = None
    while True:
        key = None
        try:
            key = find_key(config.enroll)
            if key is not None:
                home = join_home(ctx.home_path, key.token)
                info = home.info
                _log_event(log, logging.INFO, "enroll.joined", mesh=info.mesh_id, name=info.name, role=info.role,
                           source=key.source)
                output.stderr.print(f"joined {info.mesh_name!r} as {info.name} ({info.role}) with the key from "
                                    f"{key.source}", markup=False)
                return home
            problem = "the fleet key is gone (enroll, MESH_ENROLL, /boot/assetmesh.key)"
        except (CredentialError, UsageError) as exc:
            problem = str(exc) if key is None else f"the key from {key.source}: {exc}"
        if problem != said:
            _log_event(log, logging.WARNING, "enroll.waiting", problem=problem)
            output.stderr.print(f"waiting to join: {problem}; looking again every {ENROLL_RETRY_S:g} s", markup=False)
            said = problem
        time.sleep(ENROLL_RETRY_S)


def _wait_to_be_admitted(ctx: Context, config: AgentConfig):
    """A fresh box with no key: show a pairing code and serve pairing connections only on the
    listen port until an organizer runs `mesh admit CODE` (mesh.drivers.pairing); then join."""
    from functools import partial

    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mesh.drivers.enroll import join_home
    from mesh.drivers.pairing import PENDING_FILE, WaitingBox, format_code, wait_to_be_admitted, write_pending
    from mesh.ids import node_id_from_public_key
    from mesh.state.membership import public_key_bytes

    log = logging.getLogger("mesh.enroll")
    key = Ed25519PrivateKey.generate()
    node_id = node_id_from_public_key(public_key_bytes(key))
    listen = config.listen

    def show(code: str, why: str) -> None:
        write_pending(ctx.home_path, node_id, code)
        shown = format_code(code)
        _log_event(log, logging.WARNING, "enroll.pending", code=shown, why=why, listen=f"{listen[0]}:{listen[1]}")
        output.stderr.print(f"waiting to be admitted — code {shown}" + ("" if why == "new" else f" (new: {why})")
                            + f" (box {node_id[:6]}); an organizer runs `mesh admit {shown}` "
                            f"(or `--addr THIS-BOX:{listen[1]}` where mDNS is blocked)", markup=False)

    async def wait() -> str:
        async with trio.open_nursery() as nursery:
            if config.http is not None:  # its own page says it waits (the code only to its own screen)
                from mesh.gateway.app import serve_http
                from mesh.gateway.pending import pending_app

                app = pending_app(lambda: {"node_id": node_id, "code": format_code(box.code)}, config.http_hosts)
                await nursery.start(serve_http, app, config.http)
            if config.mdns:  # say that we wait (no mesh, no name), so the crew's Pending list shows us
                from mesh.drivers.discovery import run_discovery

                interfaces = list(config.mdns_interfaces) or None
                nursery.start_soon(partial(run_discovery, node_id=node_id, mesh_id=None, port=listen[1],
                                           interfaces=interfaces, found=None))
            token = await wait_to_be_admitted(box, listen)
            nursery.cancel_scope.cancel()
        return token

    box = WaitingBox(node_id, show)
    token = trio.run(wait)
    home = join_home(ctx.home_path, token, node_key=key)
    (ctx.home_path / PENDING_FILE).unlink(missing_ok=True)
    info = home.info
    _log_event(log, logging.INFO, "enroll.joined", mesh=info.mesh_id, name=info.name, role=info.role, source="pairing")
    output.stderr.print(f"admitted: joined {info.mesh_name!r} as {info.name} ({info.role})", markup=False)
    return home


async def _run_agent(home, config: AgentConfig) -> None:
    import trio

    from mesh.drivers.runtime import Agent
    from mesh.drivers.tcp import TcpTransport

    discovery = _discovery_for(home, config) if config.mdns else None
    agent = Agent(home, config, TcpTransport(), discovery)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.serve_signals)
        listen = await nursery.start(_run_then_cancel, agent, nursery.cancel_scope)
        from mesh.drivers.health import health_loop
        from mesh.drivers.ingest import ingest_loop
        from mesh.drivers.outbox import outbox_loop

        nursery.start_soon(health_loop, agent, config)  # agent.core exists once run() started
        nursery.start_soon(outbox_loop, agent, config)  # returns at once without outbox_url
        nursery.start_soon(ingest_loop, agent, config)  # returns at once without [[ingest]] tables
        from mesh.drivers.live import live_loop

        nursery.start_soon(live_loop, agent, config)  # `mesh live start` / `relay` requests
        output.stderr.print(f"node {home.info.node_id} ({home.info.name}) listening on {listen[0]}:{listen[1]}")
        http_app, https_app = await _web_apps(agent, config)
        if https_app is not None:
            from mesh.drivers.tls import serve_https

            nursery.start_soon(serve_https, agent, https_app, config.https)
            output.stderr.print(f"https on https://{config.https[0]}:{config.https[1]}/ with the event's certificate "
                                "(`mesh tls show`)", markup=False)
        if config.http is not None:
            from mesh.gateway.app import serve_http

            await nursery.start(serve_http, http_app, config.http)
            agent.http_listening = config.http  # `mesh status` says so: scripts may wait for it
            output.stderr.print(f"http on http://{config.http[0]}:{config.http[1]}/")
            if sys.stderr.isatty():  # never into a journal or a log file: `mesh crew-token` prints one on request
                from mesh.cli.web_cmds import crew_token_for

                token = crew_token_for(home)
                if token:
                    output.stderr.print(f"crew token (log in at /crew): {token}", markup=False)
        if sys.stderr.isatty():
            nursery.start_soon(_release_progress, agent)


async def _run_hub(hub, config: AgentConfig) -> None:
    """`mesh up` on a hub home: one listener, one HTTP port, every mesh (mesh.drivers.hub)."""
    import trio

    from mesh.drivers.hub import HubRuntime

    if not hub.meshes:
        raise UsageError(f"hub {hub.name!r} holds no mesh yet: `mesh --home {hub.path} hub join TOKEN` first")
    runtime = HubRuntime(hub, config, mdns=config.mdns)
    async with trio.open_nursery() as nursery:
        listen = await nursery.start(runtime.run)
        nursery.start_soon(_hub_signals, runtime, nursery.cancel_scope)
        output.stderr.print(f"hub {hub.name!r}: {len(runtime.agents)} mesh(es) listening on {listen[0]}:{listen[1]}",
                            markup=False)
        if config.http is not None:
            from mesh.gateway.app import serve_http

            await nursery.start(serve_http, await _hub_web_app(runtime, config), config.http)
            runtime.http_listening = config.http
            where = f"{config.http[0]}:{config.http[1]}"
            output.stderr.print(f"http on http://{where}/ (hub page /hub, `mesh hub token`); meshes by host: "
                                + ", ".join(f"{entry.host} ({agent.home.info.mesh_name})"
                                            for entry, agent in zip(runtime.entries, runtime.agents)), markup=False)


async def _hub_signals(runtime, scope) -> None:
    import signal

    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            await runtime.shutdown(signal.Signals(signum).name)
            scope.cancel()
            return


async def _hub_web_app(runtime, config: AgentConfig):
    """The hub's one HTTP app (each mesh's under its host name); returns once every mesh's first
    catalog is built (on a worker)."""
    from mesh.gateway.app import create_app
    from mesh.gateway.hosts import own_names
    from mesh.gateway.hub import HubRouter, hub_app
    from mesh.gateway.view import AgentView

    apps = {}
    for entry, agent in zip(runtime.entries, runtime.agents):
        view = AgentView(agent)
        await view.warm()
        apps[entry.host] = create_app(view)
    names = own_names(config.http_hosts)
    return HubRouter(apps, hub_app(runtime.status, lambda: runtime.hub.operator_token, lambda: names))


async def _web_apps(agent, config: AgentConfig) -> tuple[object | None, object | None]:
    """(HTTP app, HTTPS app): one app for both; while HTTPS runs, the HTTP side redirects browsers
    there (mesh.gateway.redirect). Returns once the first catalog is built (on a worker)."""
    if config.http is None and config.https is None:
        return None, None
    from mesh.gateway.app import create_app
    from mesh.gateway.view import AgentView

    view = AgentView(agent)
    await view.warm()
    app = create_app(view)
    if config.https is None:
        return app, None
    from mesh.gateway.redirect import HttpsRedirect

    return HttpsRedirect(app, agent.https_certificate, config.https[1]), app


async def _release_progress(agent) -> None:
    """On a terminal, a progress bar for the release being fetched (log lines print above it)."""
    import trio
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=output.stderr, transient=True) as progress:
        task = None
        while True:
            release = agent.core.status().get("release") if agent.core is not None else None
            if release and release.get("total_bytes") and not release.get("complete"):
                if task is None:
                    task = progress.add_task(f"release {release['name']}", total=release["total_bytes"])
                progress.update(task, completed=release["have_bytes"], total=release["total_bytes"])
            elif task is not None:
                progress.remove_task(task)
                task = None
            await trio.sleep(0.5)


async def _run_then_cancel(agent, scope, *, task_status) -> None:
    await agent.run(task_status=task_status)
    scope.cancel()


def _discovery_for(home, config: AgentConfig):
    from mesh.drivers.discovery import discovery_for

    return discovery_for(home, config)


def _release_line(release: dict) -> str:
    """`spring (ab12…): complete, 12,582,912 bytes` or `…: 41% (5,242,880 of 12,582,912 bytes)`."""
    name = f"{release.get('name')} ({str(release.get('id'))[:12]})"
    have, total = release.get("have_bytes") or 0, release.get("total_bytes")
    if release.get("complete"):
        return f"{name}: complete, {have:,} bytes"
    if not total:
        return f"{name}: fetching its file list"
    return f"{name}: {100 * have // total}% ({have:,} of {total:,} bytes)"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Show the running agent's peers, state and release progress."""
    from mesh.drivers.agentfiles import read_status
    from mesh.drivers.hubhome import HubHome

    if HubHome.exists(ctx.home_path):
        return _hub_status(HubHome.open(ctx.home_path), as_json)
    home = ctx.home()
    doc = read_status(home.path)
    if doc is None:
        doc = {"node_id": home.info.node_id, "mesh_id": home.info.mesh_id, "running": False,
               "peers": [], "release": None}
    else:
        doc["running"] = True
    if doc.get("outbox") is None:
        from mesh.drivers.outbox import read_stats

        outbox = read_stats(home.path, time.time())
        if outbox is not None:
            doc["outbox"] = outbox
    if as_json:
        output.print_json(doc)
        return
    if not doc["running"]:
        output.stdout.print(f"node {doc['node_id']}: agent not running (start it with `mesh up`)")
        return
    age = time.time() - doc.get("updated_at", time.time())
    output.stdout.print(f"node {doc['node_id']} ({doc.get('name')}, {doc.get('role')}) — {len(doc['peers'])} peer(s), status {age:.0f}s old")
    for peer in doc["peers"]:
        output.stdout.print(f"  {peer['node_id'][:16]}…  {peer.get('name', ''):16} {peer.get('role', ''):10} {peer.get('addr')}")
    release = doc.get("release")
    if release:
        output.stdout.print(f"release: {_release_line(release)}", markup=False)
    health = doc.get("health")
    if health:
        failed = [c["name"] for c in health.get("checks", []) if not c.get("ok")]
        output.stdout.print(f"health: {'ok' if health.get('ok') else 'FAILING: ' + ', '.join(failed)}", markup=False)
    media = doc.get("media")
    if media:
        budget = f" of a {media['budget']:,}-byte budget" if media.get("budget") else ""
        output.stdout.print(f"media: {media['held']} of {media['wanted']} file(s) that belong here, "
                            f"{media['fetching']} arriving; {media['bytes']:,} bytes of media{budget}", markup=False)
    for refusal in doc.get("refused_by") or []:
        output.stdout.print(f"refused by {refusal['addr']}: {refusal['reason']}", markup=False)
    outbox = doc.get("outbox")
    if outbox:
        error = f", last error: {outbox['last_error']}" if outbox.get("last_error") else ""
        output.stdout.print(f"outbox: {outbox['pending']} pending{error}", markup=False)


def _hub_status(hub, as_json: bool) -> None:
    """`mesh status` on a hub home: the running hub's document, or each mesh from its files."""
    from mesh.drivers.agentfiles import read_status
    from mesh.drivers.hub import mesh_summary

    doc = read_status(hub.path)
    if doc is None:
        doc = {"hub": hub.name, "running": False,
               "meshes": [mesh_summary(entry, home, None) for entry, home in hub.homes()]}
    else:
        doc["running"] = True
    if as_json:
        output.print_json(doc)
        return
    state = f"running, listening on {doc['listen'][0]}:{doc['listen'][1]}" if doc["running"] else "not running"
    output.stdout.print(f"hub {hub.name!r}: {state}, {len(doc['meshes'])} mesh(es)", markup=False)
    for mesh in doc["meshes"]:
        release = mesh.get("release")
        line = _release_line(release) if release and "have_bytes" in release else (release or {}).get("name", "no release")
        output.stdout.print(f"  {mesh['mesh_id'][:12]} {mesh['name']}: {mesh.get('peers', 0)} peer(s); release {line}",
                            markup=False)


def _release_done(doc: dict | None, release_id: str | None) -> tuple[bool, dict | None]:
    release = (doc or {}).get("release")
    if not release or (release_id and release.get("id") != release_id):
        return False, release
    return bool(release.get("complete")), release


@click.command()
@click.option("--release", "release_id", default=None, help="Wait for this release (default: the current one).")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Give up after this many seconds (exit 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the release status when done.")
@pass_context
def wait(ctx: Context, release_id: str | None, timeout_s: float | None, as_json: bool) -> None:
    """Block until the release is complete and verified here (needs a running agent)."""
    from mesh.drivers.agentfiles import read_status

    home = ctx.home()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with output.byte_progress("release", 0, as_json) as advance:
        shown = 0
        while True:
            doc = read_status(home.path)
            done, release = _release_done(doc, release_id)
            if release and release.get("have_bytes", 0) > shown:
                advance(release["have_bytes"] - shown)
                shown = release["have_bytes"]
            if done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise _wait_timeout(doc, release, timeout_s)
            time.sleep(0.2)
    if as_json:
        output.print_json(release)
    else:
        output.stdout.print(f"release {release['id']} ({release.get('name')}) complete: {release['total_bytes']:,} bytes")


def _wait_timeout(doc: dict | None, release: dict | None, timeout_s: float) -> Exception:
    from mesh.errors import MeshError

    if doc is None:
        return MeshError(f"timed out after {timeout_s:g}s: no agent is running for this home (start `mesh up`)")
    if release is None:
        return MeshError(f"timed out after {timeout_s:g}s: no current release known here yet")
    have, total = release.get("have_bytes", 0), release.get("total_bytes")
    return MeshError(f"timed out after {timeout_s:g}s: {have:,} of {total if total is not None else '?'} bytes here")
