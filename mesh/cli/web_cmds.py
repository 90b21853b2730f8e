"""Commands for the web side: `mesh crew-token`, `mesh export-static DIR`, `mesh door`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.errors import UsageError

pass_context = click.make_pass_decorator(Context)


def crew_token_for(home, valid_s: float | None = None) -> str | None:
    """A fresh crew token signed by this node, or None if it is not an organizer (for `mesh up`)."""
    from mesh.gateway.crew_token import CREW_VALID_S_DEFAULT, create_crew_token
    from mesh.state.membership import Role

    if home.info.role != Role.ORGANIZER.value:
        return None
    return create_crew_token(home.info.authority_public_key, home.node_key(), home.info.chain, time.time(),
                             valid_s or CREW_VALID_S_DEFAULT)


@click.command(name="crew-token")
@click.option("--valid", "valid", default="8h", show_default=True,
              help="How long the token works (90m, 8h; at most 24h). Renew it on an organizer node "
                   "(dashboard, or POST /api/crew/renew).")
@pass_context
def crew_token(ctx: Context, valid: str) -> None:
    """Print a crew token (log in at http://NODE/crew on any node of the mesh)."""
    from mesh.cli.node_cmds import parse_duration_s

    home = ctx.home()
    token = crew_token_for(home, parse_duration_s(valid))
    if token is None:
        raise UsageError(f"only organizers can issue crew tokens: this node is {home.info.role!r}")
    print(token)


@click.command(name="export-static")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--assets/--no-assets", default=True, show_default=True,
              help="Also copy the visible assets held here (not only the current release).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@pass_context
def export_static(ctx: Context, directory: Path, assets: bool, as_json: bool) -> None:
    """Write the current release, a search page and a consent page as a static site in DIRECTORY."""
    from mesh.drivers.filestore import FileStore
    from mesh.gateway.export import export_site

    home = ctx.home()
    state = ctx.state_file().load(ctx.actor())
    store = FileStore(home.store_path)
    try:
        report = export_site(directory, state, store, home.info, time.time(), include_assets=assets)
    finally:
        store.close()
    if as_json:
        output.print_json(report)
        return
    output.stdout.print(f"wrote {report['files']} file(s), {report['assets']} asset(s), "
                        f"{report['bytes']:,} bytes to {directory}; open {directory / 'index.html'}",
                        markup=False)


@click.command(name="door")
@click.argument("url")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a printable HTML page here (default: print the QR on the terminal).")
@click.option("--badges", default=0, type=click.IntRange(0, 1000),
              help="Also print this many badge cards, each with a fresh code and its consent QR "
                   "(which alone carries the badge secret that allowing on /consent needs).")
@pass_context
def door(ctx: Context, url: str, out: Path | None, badges: int) -> None:
    """A QR code pointing attendees to URL (the node's address, e.g. http://192.168.1.20:8080/)."""
    if not url.startswith(("http://", "https://")):
        raise UsageError("URL starts with http:// or https://")
    if out is None:
        import segno

        segno.make(url, error="m").terminal(compact=True)
        print(url)
        return
    from mesh.gateway.export import door_page

    info = ctx.home().info
    out.write_text(door_page(info.mesh_name, url, badges, info.mesh_id), encoding="utf-8")
    output.stderr.print(f"wrote {out}: print it and put it by the door", markup=False)
