"""Commands about this node and its mesh: init, id, invite, join, members, revoke."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.cli import output
from mesh.cli.main import Context
from mesh.drivers.filestore import FileStore
from mesh.drivers.home import Home, HomeInfo, default_node_name, new_identity_ids, public_key_bytes
from mesh.errors import CredentialError, UsageError
from mesh.state import membership

pass_context = click.make_pass_decorator(Context)


def _check_name(name: str, what: str, limit: int) -> str:
    name = name.strip()
    if not name:
        raise UsageError(f"the {what} cannot be empty")
    if len(name) > limit:
        raise UsageError(f"the {what} has at most {limit} characters")
    if not name.isprintable():
        raise UsageError(f"the {what} is printable text (no tabs or line breaks)")
    return name


@click.command()
@click.argument("name")
@click.option("--node-name", default=None, help="This node's human name (default: host name).")
@click.option("--json", "as_json", is_flag=True, help="Print {node_id, mesh_id, role, name}.")
@pass_context
def init(ctx: Context, name: str, node_name: str | None, as_json: bool) -> None:
    """Create a new mesh; this node becomes its first organizer."""
    mesh_name = _check_name(name, "mesh name", membership.MESH_NAME_CHARS_MAX)
    node_name = _check_name(node_name or default_node_name(), "node name", 64)
    Home.prepare(ctx.home_path)
    authority_key = Ed25519PrivateKey.generate()
    node_key = Ed25519PrivateKey.generate()
    node_id, mesh_id = new_identity_ids(node_key, authority_key)
    chain = membership.create_first_credential(authority_key, node_key, node_name, time.time())
    info = HomeInfo(
        mesh_id=mesh_id, mesh_name=mesh_name, authority_public_key=public_key_bytes(authority_key),
        node_id=node_id, name=node_name, role=membership.Role.ORGANIZER.value, chain=chain,
        mesh_key=secrets.token_bytes(membership.MESH_KEY_BYTES),
    )
    home = _create_home(ctx, info, node_key, authority_key)
    if as_json:
        output.print_json(_id_json(home))
        return
    output.stdout.print(f"created mesh {mesh_name!r} ({mesh_id}) in {ctx.home_path}")
    output.stdout.print(f"this node: {node_id} ({node_name}, organizer)")


def _id_json(home: Home) -> dict:
    info = home.info
    return {"node_id": info.node_id, "mesh_id": info.mesh_id, "role": info.role, "name": info.name}


@click.command(name="id")
@click.option("--json", "as_json", is_flag=True, help='Print {node_id, mesh_id, role, name} ({node_id, "state": '
              '"pending", code} on a box waiting to be admitted).')
@pass_context
def id_(ctx: Context, as_json: bool) -> None:
    """Show this node's identity (or, on a box waiting to be admitted, the code it shows)."""
    from mesh.drivers.pairing import read_pending

    pending = None if Home.exists(ctx.home_path) else read_pending(ctx.home_path)
    if pending is not None:
        if as_json:
            output.print_json(pending)
            return
        output.stdout.print(f"node   {pending['node_id']} (waiting to be admitted)")
        output.stdout.print(f"code   {pending['code']}   an organizer runs `mesh admit {pending['code']} --addr THIS-BOX:PORT`")
        return
    home = ctx.home()
    if as_json:
        output.print_json(_id_json(home))
        return
    info = home.info
    output.stdout.print(f"node   {info.node_id}")
    output.stdout.print(f"name   {info.name} ({info.role})")
    output.stdout.print(f"mesh   {info.mesh_id} ({info.mesh_name})")




def _create_home(ctx: Context, info: HomeInfo, node_key, authority_key=None) -> Home:
    """Write the keys and home.json, create the store, and enter this node in the member list."""
    from mesh.drivers.enroll import record_self

    home = Home.write_new(ctx.home_path, info, node_key, authority_key)
    FileStore(home.store_path).close()
    record_self(home, time.time())
    return home


_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration_s(text: str) -> float:
    """'90s', '30m', '24h', '7d', '2w' (or a bare number of seconds) -> seconds."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS_S else "s"
    number = raw[:-1] if raw[-1:] in _DURATION_UNITS_S else raw
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"{text!r} is not a duration: use e.g. 90s, 30m, 24h or 7d") from None
    if not value > 0:
        raise UsageError(f"{text!r}: a duration must be positive")
    return value * _DURATION_UNITS_S[unit]


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{text!r} is not HOST:PORT (for example 192.0.2.10:7450)")
    return host, int(port)


def _agent_hints(home: Home) -> list[tuple[str, int]]:
    """Addresses a running agent listens on (from its status file), loopback last."""
    from mesh.drivers.agentfiles import read_status

    status = read_status(home.path)
    if status is None:
        return []
    hints = [tuple(a) for a in status.get("listen_addresses", [])]
    return sorted(hints, key=lambda a: a[0].startswith("127.") or a[0] == "::1")


FLEET_USES_DEFAULT = 20  # boxes a fleet key admits when --fleet is given without --uses


@click.group(invoke_without_command=True)
@click.option("--role", type=click.Choice([r.value for r in membership.Role]), default="edge",
              show_default=True, help="Role of the invited node.")
@click.option("--name", default=None, help="Name the invited node must use (default: its choice).")
@click.option("--expires", "expires", default="24h", show_default=True,
              help="How long the token stays valid (90s, 30m, 24h, 7d).")
@click.option("--fleet", is_flag=True, help=f"A fleet key: one key for many boxes (--uses, default {FLEET_USES_DEFAULT}).")
@click.option("--uses", type=click.IntRange(1, membership.FLEET_USES_MAX), default=None,
              help="How many distinct boxes the key admits (more than 1: a fleet key).")
@click.option("--hint", "hints", multiple=True, help="Extra HOST:PORT where this mesh is reachable.")
@click.option("--qr", is_flag=True, help="Also draw the token as a QR code in the terminal (if it fits).")
@click.option("--qr-file", "qr_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the token's QR code to FILE (.svg or .png) to show or print it.")
@click.option("--json", "as_json", is_flag=True, help="Print {token, role, name, uses, expires_at, hints, key_id}.")
@pass_context
def invite(ctx: Context, role: str, name: str | None, expires: str, fleet: bool, uses: int | None,
           hints: tuple[str, ...], qr: bool, qr_file: Path | None, as_json: bool) -> None:
    """Print an expiring invite token: for one new node, or with --fleet a key for many boxes
    (bake it into their config as `enroll`; they join by themselves). `mesh invite revoke KEY`
    stops a fleet key."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    home = ctx.home()
    if home.info.role != membership.Role.ORGANIZER.value:
        raise UsageError("only organizers can invite: ask an organizer of this mesh")
    uses = uses if uses is not None else (FLEET_USES_DEFAULT if fleet else 1)
    if fleet and uses == 1:
        raise UsageError("a fleet key admits more than one box: give --uses 2 or more")
    now = time.time()
    all_hints = [parse_address(h) for h in hints] + _agent_hints(home)
    token = membership.create_invite(
        home.info.authority_public_key, home.node_key(), home.info.chain, membership.Role(role),
        name, now + parse_duration_s(expires), all_hints[: membership.HINTS_MAX], now,
        mesh_key=home.info.mesh_key, mesh_name=home.info.mesh_name, uses=uses,
    )
    parsed = membership.parse_invite(token)
    if as_json:
        output.print_json({"token": token, "role": role, "name": name, "uses": parsed.uses,
                           "expires_at": parsed.expires_at, "hints": [f"{h}:{p}" for h, p in parsed.hints],
                           "key_id": parsed.key_id})
        return
    print(token)
    if qr_file is not None:
        _qr_to_file(token, qr_file)
    if qr:
        _qr_to_terminal(token)


def _qr_to_file(token: str, path: Path) -> None:
    import segno

    kind = path.suffix.lower()
    if kind not in (".svg", ".png"):
        raise UsageError(f"--qr-file {path}: give a .svg or .png file name")
    try:
        segno.make(token, error="L").save(str(path), scale=8 if kind == ".png" else 4, border=4)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    output.stderr.print(f"QR code of the invite written to {path}", markup=False)


def _qr_to_terminal(token: str) -> None:
    """The QR in half blocks (one column a module) when the terminal is wide enough; otherwise
    a line saying what to do instead, never a wrapped code no camera can read."""
    import shutil

    import segno

    code = segno.make(token, error="L")
    width = code.symbol_size(border=4)[0]
    columns = shutil.get_terminal_size((80, 24)).columns
    if width > columns:
        output.stderr.print(f"note: the invite's QR code needs {width} columns and this terminal has {columns}: "
                            "write it to a file with `--qr-file invite.png`, or let the box show a pairing code "
                            "(`mesh up` on a fresh box, then `mesh admit CODE`)", markup=False)
        return
    code.terminal(compact=True)


@invite.command(name="revoke")
@click.argument("key")
@click.option("--reason", default="", help="Why (kept with the signed revocation).")
@click.option("--json", "as_json", is_flag=True, help='Print {"key_id","invite_id","uses"}.')
@pass_context
def invite_revoke(ctx: Context, key: str, reason: str, as_json: bool) -> None:
    """Stop an invite or fleet key (KEY: the key itself, or its file): no box joins with it any
    more; boxes that joined with it before stay (revoke those with `mesh revoke NODE_ID`)."""
    from mesh.drivers.enroll import read_key

    home = ctx.home()
    if home.info.role != membership.Role.ORGANIZER.value:
        raise UsageError("only organizers can revoke invites")
    parsed = membership.parse_invite(read_key(key, "KEY").token)
    if parsed.mesh_id != home.info.mesh_id:
        raise UsageError("that key belongs to another mesh")
    now = time.time()
    blob = membership.create_revocation(home.info.authority_public_key, home.node_key(), home.info.chain,
                                        parsed.key_id, now, reason or "invite revoked")
    with ctx.state_file().transaction(ctx.actor()) as state:
        state.put_revocation(parsed.key_id, blob)
        used = sum(1 for invite_id, _, _ in state.invite_use_entries() if invite_id == parsed.invite_id)
    if as_json:
        output.print_json({"key_id": parsed.key_id, "invite_id": parsed.invite_id, "uses": used})
        return
    output.stdout.print(f"revoked invite {parsed.invite_id} ({used} of {parsed.uses} use(s) seen so far); "
                        "peers refuse new boxes with it as soon as they sync", markup=False)


def _pending_boxes(home: Home) -> list[dict]:
    """Boxes waiting to be admitted that this node's agent hears on mDNS (its status file)."""
    from mesh.drivers.agentfiles import read_status

    status = read_status(home.path)
    if status is None:
        raise UsageError("the agent is not running here: start it (`mesh up`); it lists the boxes it hears "
                         "waiting on mDNS")
    return list(status.get("pending_boxes") or [])


@click.command()
@click.option("--json", "as_json", is_flag=True, help='Print [{"node_id","addr","seen"}].')
@pass_context
def pending(ctx: Context, as_json: bool) -> None:
    """Boxes waiting to be admitted on the LAN (heard on mDNS by this node's agent)."""
    boxes = _pending_boxes(ctx.home())
    if as_json:
        output.print_json(boxes)
        return
    if not boxes:
        output.stdout.print("no box is waiting (a fresh box with no key shows a code at `mesh up`)")
    for box in boxes:
        ago = max(0, int(time.time() - box["seen"]))
        output.stdout.print(f"{box['node_id'][:6]}  {box['addr']:<22} seen {ago}s ago   mesh admit CODE "
                            f"--node {box['node_id'][:6]}", markup=False)


def _choose_box(home: Home, node_prefix: str | None) -> tuple[str, int]:
    boxes = _pending_boxes(home)
    if node_prefix:
        boxes = [b for b in boxes if b["node_id"].startswith(node_prefix.strip().lower())]
    if len(boxes) == 1:
        return parse_address(boxes[0]["addr"])
    if not boxes:
        raise UsageError("no waiting box heard on mDNS" + (f" with node id {node_prefix}..." if node_prefix else "")
                         + ": give its address with --addr BOX:PORT (the box prints its port)")
    raise UsageError(f"{len(boxes)} boxes are waiting: say which with --node (the 6 characters after 'box' on its "
                     "console) or --addr; `mesh pending` lists them")


@click.command()
@click.argument("code")
@click.option("--addr", "address", default=None, help="HOST:PORT of the waiting box (default: the one heard on mDNS).")
@click.option("--node", "node_prefix", default=None, help="The waiting box's node id (its first characters).")
@click.option("--role", type=click.Choice([r.value for r in membership.Role]), default="edge", show_default=True,
              help="Role the box gets.")
@click.option("--name", default=None, help="Name the box gets (default: its own choice).")
@click.option("--json", "as_json", is_flag=True, help='Print {"node_id","name","role"}.')
@pass_context
def admit(ctx: Context, code: str, address: str | None, node_prefix: str | None, role: str, name: str | None,
          as_json: bool) -> None:
    """Admit a fresh box by the code it shows: the exchange is authenticated by the code alone
    (SPAKE2), and the box gets a single-use invite it joins with, with no restart."""
    import trio

    from mesh.drivers.pairing import admission_token, admit_at, normalize_code

    home = ctx.home()
    if home.info.role != membership.Role.ORGANIZER.value:
        raise UsageError("only organizers can admit boxes: ask an organizer of this mesh")
    secret = normalize_code(code)
    target = parse_address(address) if address else _choose_box(home, node_prefix)
    node_id = trio.run(admit_at, target, secret,
                       lambda: admission_token(home, role, name, _agent_hints(home), time.time()))
    if as_json:
        output.print_json({"node_id": node_id, "name": name, "role": role})
        return
    output.stdout.print(f"admitted {node_id} as {name or 'the name it picks'} ({role}); it joins the mesh now")


@click.command()
@click.argument("token")
@click.option("--name", default=None, help="This node's name (if the invite leaves it open).")
@click.option("--json", "as_json", is_flag=True, help="Print {node_id, mesh_id, role, name}.")
@pass_context
def join(ctx: Context, token: str, name: str | None, as_json: bool) -> None:
    """Make a fresh home a member of the mesh that issued TOKEN (works offline). TOKEN may be a
    fleet key, or a file holding one."""
    from mesh.drivers.enroll import join_home, read_key

    home = join_home(ctx.home_path, read_key(token, "TOKEN").token, name)
    info = home.info
    if as_json:
        output.print_json(_id_json(home))
        return
    output.stdout.print(f"joined mesh {info.mesh_id} ({info.mesh_name}) as {info.name} ({info.role})")
    output.stdout.print(f"this node: {info.node_id}")


def _member_rows(home: Home, state, now: float) -> list[dict]:
    """Every member in the shared state, its chain checked here (entries prove nothing)."""
    from mesh.ids import public_key_from_node_id

    authority = home.info.authority_public_key
    revocations = membership.RevocationList(authority)
    for blob in state.revocation_blobs().values():
        try:
            revocations.add(blob, now)
        except CredentialError:
            continue
    rows = []
    for entry in state.members():
        row = {"node_id": entry.node_id, "name": entry.name, "role": entry.role, "expires_at": None,
               "joined_at": entry.joined_at, "self": entry.node_id == home.info.node_id}
        try:
            member = membership.verify_chain(
                entry.chain, authority, now, expected_node_public_key=public_key_from_node_id(entry.node_id)
            )
        except (CredentialError, ValueError) as exc:
            row["status"] = f"invalid: {exc}"
        else:
            row.update(name=member.name, role=member.role.value, expires_at=member.expires_at,
                       status="revoked" if revocations.is_revoked(member.node_id) else "valid")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["role"], r["name"], r["node_id"]))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the member list as JSON.")
@pass_context
def members(ctx: Context, as_json: bool) -> None:
    """List the members this node knows of, with their status."""
    home = ctx.home()
    rows = _member_rows(home, ctx.state_file().load(ctx.actor()), time.time())
    if as_json:
        output.print_json(rows)
        return
    for row in rows:
        marker = "*" if row["self"] else " "
        output.stdout.print(f"{marker} {row['node_id']}  {row['role']:9}  {row['status']:8}  {row['name']}", markup=False)


@click.command()
@click.argument("node_id")
@click.option("--reason", default="", help="Why (kept with the signed revocation).")
@click.option("--force", is_flag=True, help="Revoke an id that is not (yet) a member this node knows of.")
@pass_context
def revoke(ctx: Context, node_id: str, reason: str, force: bool) -> None:
    """Revoke a member: every peer drops it within seconds of learning of it."""
    from mesh.ids import parse_node_id

    home = ctx.home()
    try:
        target = parse_node_id(node_id.strip())
    except ValueError:
        raise UsageError(f"{node_id!r} is not a node id: copy one from `mesh members`") from None
    if target == home.info.node_id:
        raise UsageError("a node cannot revoke itself here; ask another organizer")
    if home.info.role != membership.Role.ORGANIZER.value:
        raise UsageError("only organizers can revoke members")
    state = ctx.state_file().load(ctx.actor())
    known = {str(entry.node_id) for entry in state.members()} | set(map(str, state.invite_uses().values()))
    if str(target) not in known and not force:
        raise UsageError(f"{target} is not a member this node knows of (see `mesh members`); "
                         "add --force to revoke it anyway")
    now = time.time()
    blob = membership.create_revocation(
        home.info.authority_public_key, home.node_key(), home.info.chain, target, now, reason
    )
    with ctx.state_file().transaction(ctx.actor()) as state:
        state.put_revocation(target, blob)
    output.stdout.print(f"revoked {target}; peers drop it as soon as they sync")
