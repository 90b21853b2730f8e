"""`mesh live …`: a camera's stream to every edge (mesh.drivers.live), and optionally the cloud."""

from __future__ import annotations

import time

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.errors import MeshError, UsageError

pass_context = click.make_pass_decorator(Context)

START_WAIT_S = 5.0  # `live start` waits this long for the agent to take the request
STOP_WAIT_S = 120.0  # `live stop` waits this long for the recording


@click.group()
def live() -> None:
    """Live streams: camera -> this box -> every edge's /live/NAME page."""


@live.command()
@click.argument("name")
@click.option("--listen", "listen_url", default=None, help="Wait for a camera's push here (rtmp://0.0.0.0:1935/live).")
@click.option("--input", "input_source", default=None, help="Or pull from a device (/dev/video0), a URL or a file.")
@click.option("--audio", default=None, help="An audio device beside --input (hw:1).")
@click.option("--format", "input_format", default=None, help="The input's format (v4l2, alsa, ...) for devices.")
@click.option("--tag", "tags", multiple=True, help="A tag of the stream and its recording (repeatable).")
@click.option("--subject", default=None, help="The subject code whose consent the stream needs.")
@click.option("--scope", default="live", show_default=True, help="The consent scope it is shown under.")
@click.option("--retention", default=None, help="Keep the recording this long (7d, 12h).")
@click.option("--segment-s", type=float, default=2.0, show_default=True, help="Segment duration in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the request as JSON.")
@pass_context
def start(ctx: Context, name, listen_url, input_source, audio, input_format, tags, subject, scope, retention,
          segment_s, as_json) -> None:
    """Start ingesting stream NAME on this node (the agent runs it; `mesh up` must be running)."""
    from mesh.core.live import check_stream_name
    from mesh.drivers.agentfiles import agent_running
    from mesh.drivers.live import LiveSpec, read_spec, read_status, write_spec
    from mesh.state.consent import check_scope, parse_subject_code
    from mesh.state.records import normalize_tag

    home = ctx.home()
    check_stream_name(name)
    if (listen_url is None) == (input_source is None):
        raise UsageError("give one of --listen rtmp://HOST:PORT/APP (a camera pushes) or --input SOURCE")
    if not 0.5 <= segment_s <= 10:
        raise UsageError("--segment-s must be between 0.5 and 10 seconds")
    known = read_spec(home.path, name)
    if known is not None and not known.stopped:
        raise UsageError(f"stream {name!r} is already running here: `mesh live stop {name}` first")
    retention_s = _duration(retention)
    try:
        tag_list = tuple(sorted({normalize_tag(t) for t in tags}))
        subject_code = parse_subject_code(subject) if subject else None
        scope = check_scope(scope)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    spec = LiveSpec(name, listen_url or input_source, listen=True if listen_url else None, audio=audio,
                    input_format=input_format, segment_s=segment_s, tags=tag_list, subject=subject_code,
                    scope=scope, retention_s=retention_s, started_at=time.time())
    write_spec(home.path, spec)
    running = agent_running(home.path)
    state = None
    if running:
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            status = read_status(home.path, name) or {}
            if status.get("started_at") == spec.started_at:
                state = status
                if status.get("state") == "failed":
                    raise MeshError(f"stream {name!r}: {status.get('error')}")
                break
            time.sleep(0.2)
    if as_json:
        output.print_json({"name": name, "source": spec.source, "agent_running": running,
                           "state": (state or {}).get("state")})
        return
    where = "; it starts when `mesh up` runs here" if not running else ""
    output.stdout.print(f"stream {name!r} from {spec.source}{where}: attendees watch http://EDGE:8080/live/{name}",
                        markup=False)


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    from mesh.cli.node_cmds import parse_duration_s

    return parse_duration_s(text)


@live.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def stop(ctx: Context, name: str, as_json: bool) -> None:
    """Stop stream NAME; its recording becomes an asset (tags, subject, retention)."""
    import dataclasses

    from mesh.drivers.agentfiles import agent_running
    from mesh.drivers.live import read_spec, read_status, write_spec

    home = ctx.home()
    spec = read_spec(home.path, name)
    if spec is None or spec.stopped:
        raise UsageError(f"no stream {name!r} runs here (see `mesh live ls`)")
    write_spec(home.path, dataclasses.replace(spec, stopped=True))
    status = read_status(home.path, name) or {}
    if agent_running(home.path):
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            status = read_status(home.path, name) or {}
            if status.get("started_at") == spec.started_at and status.get("state") in ("stopped", "failed"):
                break
            time.sleep(0.2)
    if as_json:
        output.print_json(status)
        return
    if status.get("recording"):
        output.stdout.print(f"stream {name!r} stopped: {status.get('segments')} segment(s); recording "
                            f"{status['recording']} (an asset: `mesh ls`)", markup=False)
    else:
        output.stdout.print(f"stream {name!r} stopped" + (f": {status['error']}" if status.get("error") else ""),
                            markup=False)


@live.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print the streams as JSON.")
@pass_context
def ls(ctx: Context, as_json: bool) -> None:
    """Every stream this node knows of: [{"name","node","state","latency_s","viewers",...}]."""
    from mesh.drivers.agentfiles import read_status

    home = ctx.home()
    doc = read_status(home.path)
    if doc is None:
        raise MeshError("no agent is running for this home: live streams are known to running agents "
                        "(start `mesh up`)")
    rows = doc.get("live") or []
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.stdout.print("no live stream known here", markup=False)
    for row in rows:
        latency = "?" if row.get("latency_s") is None else f"{row['latency_s']:.1f} s"
        output.stdout.print(f"{row['name']:20} {row['state']:7} from {row['node'][:12]}  latency {latency}  "
                            f"viewers {row.get('viewers', 0)}", markup=False)


@live.command()
@click.argument("name")
@click.argument("url", required=False)
@click.option("--off", is_flag=True, help="Stop relaying NAME.")
@pass_context
def relay(ctx: Context, name: str, url: str | None, off: bool) -> None:
    """Relay stream NAME to an RTMP(S) endpoint from this node (persisted; retried with backoff)."""
    from mesh.core.live import check_stream_name
    from mesh.drivers.live import write_relay

    home = ctx.home()
    check_stream_name(name)
    if off == (url is not None):
        raise UsageError("give the endpoint URL (rtmp://… or rtmps://…), or --off")
    if url is not None and not url.startswith(("rtmp://", "rtmps://")):
        raise UsageError(f"{url!r}: the relay endpoint must be rtmp:// or rtmps://")
    write_relay(home.path, name, url)
    output.stdout.print(f"relay of {name!r} " + ("off" if off else f"to {url} (while this node's agent runs)"),
                        markup=False)
