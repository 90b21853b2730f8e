"""Commands about this node and its mesh: init, id (membership commands join them later)."""

from __future__ import annotations

import time

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.cli import output
from mesh.cli.main import Context
from mesh.drivers.filestore import FileStore
from mesh.drivers.home import Home, HomeInfo, default_node_name, new_identity_ids, public_key_bytes
from mesh.errors import UsageError
from mesh.state import membership

pass_context = click.make_pass_decorator(Context)
MESH_NAME_CHARS_MAX = 128


def _check_name(name: str, what: str, limit: int) -> str:
    name = name.strip()
    if not name:
        raise UsageError(f"the {what} cannot be empty")
    if len(name) > limit:
        raise UsageError(f"the {what} has at most {limit} characters")
    return name


@click.command()
@click.argument("name")
@click.option("--node-name", default=None, help="This node's human name (default: host name).")
@click.option("--json", "as_json", is_flag=True, help="Print {node_id, mesh_id, role, name}.")
@pass_context
def init(ctx: Context, name: str, node_name: str | None, as_json: bool) -> None:
    """Create a new mesh; this node becomes its first organizer."""
    mesh_name = _check_name(name, "mesh name", MESH_NAME_CHARS_MAX)
    node_name = _check_name(node_name or default_node_name(), "node name", 64)
    Home.prepare(ctx.home_path)
    authority_key = Ed25519PrivateKey.generate()
    node_key = Ed25519PrivateKey.generate()
    node_id, mesh_id = new_identity_ids(node_key, authority_key)
    chain = membership.create_first_credential(authority_key, node_key, node_name, time.time())
    info = HomeInfo(
        mesh_id=mesh_id, mesh_name=mesh_name, authority_public_key=public_key_bytes(authority_key),
        node_id=node_id, name=node_name, role=membership.Role.ORGANIZER.value, chain=chain,
    )
    home = Home.write_new(ctx.home_path, info, node_key, authority_key)
    FileStore(home.store_path).close()
    if as_json:
        output.print_json(_id_json(home))
        return
    output.stdout.print(f"created mesh {mesh_name!r} ({mesh_id}) in {ctx.home_path}")
    output.stdout.print(f"this node: {node_id} ({node_name}, organizer)")


def _id_json(home: Home) -> dict:
    info = home.info
    return {"node_id": info.node_id, "mesh_id": info.mesh_id, "role": info.role, "name": info.name}


@click.command(name="id")
@click.option("--json", "as_json", is_flag=True, help="Print {node_id, mesh_id, role, name}.")
@pass_context
def id_(ctx: Context, as_json: bool) -> None:
    """Show this node's identity."""
    home = ctx.home()
    if as_json:
        output.print_json(_id_json(home))
        return
    info = home.info
    output.stdout.print(f"node   {info.node_id}")
    output.stdout.print(f"name   {info.name} ({info.role})")
    output.stdout.print(f"mesh   {info.mesh_id} ({info.mesh_name})")


