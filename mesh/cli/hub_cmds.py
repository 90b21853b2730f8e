"""`mesh hub …`: a co-op hub home that holds several creators' meshes (mesh.drivers.hubhome).
`mesh up` on a hub home serves every mesh in one process (mesh.drivers.hub)."""

from __future__ import annotations

from pathlib import Path

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.errors import UsageError

pass_context = click.make_pass_decorator(Context)


def _quota(text: str | None) -> int | None:
    if text is None or text.lower() == "none":
        return None
    from mesh.drivers.settings import parse_size_bytes

    try:
        return parse_size_bytes(text)
    except ValueError:
        raise UsageError(f"--quota {text!r}: must be a size such as 200G, 50GiB or 512MiB (or none)") from None


def _peers(values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    from mesh.drivers.settings import parse_address

    found = []
    for value in values:
        try:
            found.append(parse_address(value))
        except ValueError as exc:
            raise UsageError(f"--peer {value!r}: {exc}") from None
    return tuple(found)


def _hub(ctx: Context):
    from mesh.drivers.hubhome import HubHome

    return HubHome.open(ctx.home_path)


@click.group()
def hub() -> None:
    """A co-op hub: one box, one process, one port for several creators' meshes."""


@hub.command()
@click.option("--name", required=True, help="The hub's name, shown to its operator.")
@click.option("--json", "as_json", is_flag=True, help="Print the new hub as JSON.")
@pass_context
def init(ctx: Context, name: str, as_json: bool) -> None:
    """Make --home a new, empty hub home."""
    from mesh.drivers.hubhome import HubHome

    made = HubHome.init(ctx.home_path, name)
    if as_json:
        output.print_json({"home": str(made.path), "name": made.name})
        return
    output.stdout.print(f"hub {made.name!r} at {made.path}: add meshes with `mesh --home {made.path} hub join "
                        "TOKEN` (an organizer runs `mesh invite --role hub`)", markup=False)


@hub.command()
@click.argument("token")
@click.option("--quota", default=None, help="Disk this mesh may use here (200G, 50GiB; default: no quota).")
@click.option("--host", default=None, help="Host name its pages answer on (default: an unguessable m-XXXX name).")
@click.option("--peer", "peers", multiple=True, help="A static peer of this mesh only, HOST:PORT (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the membership as JSON.")
@pass_context
def join(ctx: Context, token: str, quota: str | None, host: str | None, peers: tuple[str, ...], as_json: bool) -> None:
    """Join a mesh with a hub invite (`mesh invite --role hub` on its organizer)."""
    quota_bytes = _quota(quota)
    made = _hub(ctx)
    home = made.join(token.strip(), quota_bytes, host, peers=_peers(peers))
    entry = made.meshes[home.info.mesh_id]
    _said_joined(made, home, entry, as_json, "joined")


def _said_joined(made, home, entry, as_json: bool, verb: str) -> None:
    doc = {"mesh_id": entry.mesh_id, "name": home.info.mesh_name, "node_id": home.info.node_id,
           "host": entry.host, "quota": entry.quota_bytes, "peers": [f"{h}:{p}" for h, p in entry.peers]}
    if as_json:
        output.print_json(doc)
        return
    quota = "no quota" if entry.quota_bytes is None else f"quota {entry.quota_bytes:,} bytes"
    output.stdout.print(f"{verb} {home.info.mesh_name!r} (mesh {entry.mesh_id[:12]}) as node {home.info.node_id[:12]}, "
                        f"{quota}; its pages answer on host {entry.host!r}", markup=False)


@hub.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--quota", default=None, help="Disk this mesh may use here (default: no quota).")
@click.option("--host", default=None, help="Host name its pages answer on (default: an unguessable name).")
@click.option("--peer", "peers", multiple=True, help="A static peer of this mesh only, HOST:PORT (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the membership as JSON.")
@pass_context
def adopt(ctx: Context, directory: Path, quota: str | None, host: str | None, peers: tuple[str, ...],
          as_json: bool) -> None:
    """Move an existing single-mesh home into the hub (same file system; nothing is fetched again)."""
    quota_bytes = _quota(quota)
    made = _hub(ctx)
    home = made.adopt(directory, quota_bytes, host, _peers(peers))
    _said_joined(made, home, made.meshes[home.info.mesh_id], as_json, "adopted")


@hub.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print the meshes as JSON.")
@pass_context
def ls(ctx: Context, as_json: bool) -> None:
    """The hub's meshes: members, disk used against quota, release."""
    from mesh.drivers.agentfiles import read_status
    from mesh.drivers.hub import mesh_summary

    made = _hub(ctx)
    rows = [mesh_summary(entry, home, read_status(home.path)) for entry, home in made.homes()]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.stdout.print(f"hub {made.name!r}: no meshes yet (`mesh hub join TOKEN`)", markup=False)
    for row in rows:
        quota = "no quota" if row["quota"] is None else f"of {row['quota']:,}"
        release = (row.get("release") or {}).get("name") or "no release"
        output.stdout.print(f"{row['mesh_id'][:12]}  {row['name']:24} {row['members']:>3} member(s)  "
                            f"{row['used'] or 0:,} bytes {quota}  {release}  host {row['host']}", markup=False)
    for orphan in made.orphans():
        output.stderr.print(f"note: {orphan} is not a membership of this hub (an interrupted join?): "
                            "remove it, or `mesh hub adopt` it", markup=False)


@hub.command()
@click.argument("mesh_id")
@click.option("--quota", required=True, help="The new quota (200G, 50GiB, or none).")
@pass_context
def quota(ctx: Context, mesh_id: str, quota: str) -> None:
    """Change a mesh's disk quota (takes effect at the next `mesh up`)."""
    made = _hub(ctx)
    entry = made.set_quota(mesh_id, _quota(quota))
    shown = "no quota" if entry.quota_bytes is None else f"{entry.quota_bytes:,} bytes"
    output.stdout.print(f"mesh {entry.mesh_id[:12]}: quota {shown}", markup=False)


@hub.command()
@click.argument("mesh_id")
@click.option("--json", "as_json", is_flag=True, help="Print what was freed as JSON.")
@pass_context
def leave(ctx: Context, mesh_id: str, as_json: bool) -> None:
    """Leave a mesh: its membership, state and every chunk only it held are deleted here."""
    made = _hub(ctx)
    report = made.leave(mesh_id)
    if as_json:
        output.print_json(report)
        return
    output.stdout.print(f"left mesh {report['mesh_id'][:12]}: {report['bytes_freed']:,} bytes of chunks only it "
                        "held were deleted; the other meshes are untouched", markup=False)


@hub.command()
@pass_context
def token(ctx: Context) -> None:
    """Print the operator token for the hub page (http://HUB:PORT/hub)."""
    print(_hub(ctx).operator_token)
