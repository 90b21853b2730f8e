"""`mesh drop`: limited drops that never oversell (rules in `mesh.state.drops`).

Every command reads and writes this home's shared state through the state file's lock, so it works
with the agent down and never races the agent or another command of this box; while the agent runs,
its changes reach peers within seconds. `reserve` and `sell` spend only this box's own allowance.
"""

from __future__ import annotations

import random
import re
import time

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.cli.node_cmds import parse_duration_s
from mesh.errors import UsageError
from mesh.state import drops as dr
from mesh.state.membership import Role
from mesh.state.records import normalize_tag

pass_context = click.make_pass_decorator(Context)
_PRICE = re.compile(r"\d{1,9}([.,]\d{1,2})?\s?[A-Z]{3}")


@click.group(name="drop")
def drop() -> None:
    """Limited drops: stock split into per-box allowances, sold offline, never oversold."""


def _signer(ctx: Context) -> dr.Signer:
    home = ctx.home()
    return dr.Signer(home.info.authority_public_key, home.node_key(), home.info.chain)


def _require_organizer(ctx: Context, doing: str) -> None:
    role = ctx.home().info.role
    if role != Role.ORGANIZER.value:
        raise UsageError(f"only organizers can {doing}: this node is {role!r}")


def _find(state, ctx: Context, text: str, now: float) -> tuple[dr.DropBook, dr.Drop]:
    book = dr.DropBook(state, ctx.home().info.authority_public_key, now)
    return book, dr.resolve_drop(book, text)


def _member_id(state, text: str) -> str:
    """A member's node id from its id, a unique prefix of 6+ characters, or its name."""
    members = state.members()
    found = [m for m in members if m.node_id == text] or [m for m in members if m.name == text]
    found = found or [m for m in members if len(text) >= 6 and m.node_id.startswith(text)]
    if not found and _is_node_id(text):  # a box not yet seen here (joined offline): its id will do
        return text
    if len(found) != 1:
        raise UsageError(f"{text!r} names {len(found)} members (give a node id or a member's name)")
    return found[0].node_id


def _is_node_id(text: str) -> bool:
    from mesh.ids import parse_node_id

    try:
        parse_node_id(text)
    except ValueError:
        return False
    return True


def _allocation(state, ctx: Context, stock: int, given: tuple[str, ...]) -> dict[str, int]:
    """--alloc NODE=N entries; without any, the stock split evenly over the edge and hub members."""
    if given:
        alloc: dict[str, int] = {}
        for item in given:
            name, sep, count = item.rpartition("=")
            if not sep or not count.isdigit():
                raise UsageError(f"--alloc {item!r}: write NODE=UNITS, e.g. door-1=20")
            node = _member_id(state, name)
            alloc[node] = alloc.get(node, 0) + int(count)
        return alloc
    me = ctx.home().info.node_id
    boxes = sorted(m.node_id for m in state.members() if m.role in ("edge", "hub") and m.node_id != me)
    if not boxes:
        return {}
    share, extra = divmod(stock, len(boxes))
    return {node: share + (1 if i < extra else 0) for i, node in enumerate(boxes)}


def _price(text: str) -> str:
    compact = text.strip().upper()
    if not _PRICE.fullmatch(compact):
        raise UsageError(f"--price {text!r}: write an amount and a currency, e.g. 25EUR or 12.50 GBP")
    return compact.replace(" ", "")


@drop.command(name="create")
@click.argument("name")
@click.option("--stock", type=int, required=True, help="Units in all (split into per-box allowances).")
@click.option("--price", required=True, help="Shown to buyers, e.g. 25EUR (no payment is processed here).")
@click.option("--tag", default=None, help="The tag it belongs to (sales per tag on the dashboard).")
@click.option("--pay-url", default=None, help='Payment link template; "{order}" becomes the order code.')
@click.option("--alloc", "alloc", multiple=True, help="NODE=UNITS initial allowance (repeat); default: even split "
              "over the edge and hub members; the rest stays with this organizer.")
@click.option("--json", "as_json", is_flag=True, help='Print {"id","name","stock","per_node"}.')
@pass_context
def create(ctx: Context, name: str, stock: int, price: str, tag: str | None, pay_url: str | None,
           alloc: tuple[str, ...], as_json: bool) -> None:
    """Create a drop of NAME (organizers)."""
    _require_organizer(ctx, "create drops")
    home, now = ctx.home(), time.time()
    if tag is not None:
        try:
            tag = normalize_tag(tag)
        except ValueError as exc:
            raise UsageError(f"--tag {tag!r}: {exc}") from None
    with ctx.state_file().transaction(ctx.actor()) as state:
        shares = _allocation(state, ctx, stock, alloc)
        made = dr.create_drop(home.info.authority_public_key, home.node_key(), home.info.chain, name, stock,
                              _price(price), tag, pay_url, shares, now)
        drop_id = dr.put_statement(state, made)
        tally = dr.DropBook(state, home.info.authority_public_key, now).tally(drop_id)
    if as_json:
        output.print_json(tally.as_json())
        return
    output.stdout.print(f"{drop_id}  {name}: {stock} units, " + ", ".join(
        f"{node[:10]} {t.left}" for node, t in sorted(tally.nodes.items())), markup=False)


@drop.command(name="ls")
@click.option("--json", "as_json", is_flag=True,
              help='Print [{"id","name","stock","sold","reserved","left","closed","per_node":{...}}].')
@pass_context
def ls(ctx: Context, as_json: bool) -> None:
    """List the drops with what is sold, reserved and left, per box."""
    state = ctx.state_file().load(ctx.actor())
    now = time.time()
    rows = [t.as_json(now) for t in dr.DropBook(state, ctx.home().info.authority_public_key, now).tallies()]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.stderr.print("no drops (an organizer runs `mesh drop create`)")
    names = {m.node_id: m.name for m in state.members()}
    for row in rows:
        state_word = "closed" if row["closed"] else "open"
        output.stdout.print(f"{row['id']}  {row['name']} ({state_word}): {row['sold']} sold, {row['reserved']} "
                            f"reserved, {row['left']} left of {row['stock']}", markup=False)
        for node, share in row["per_node"].items():
            output.stdout.print(f"    {names.get(node, node[:10]):<16} {share['sold']} sold, {share['reserved']} "
                                f"reserved, {share['left']} left" + (f", {share['void']} void" if share["void"] else ""),
                                markup=False)


@drop.command(name="reserve")
@click.argument("drop_ref", metavar="ID")
@click.option("--hold", default="15m", show_default=True, help="How long the unit is held unpaid (90s, 15m, 2h).")
@click.option("--json", "as_json", is_flag=True, help='Print {"order","expires","pay_url"}.')
@pass_context
def reserve(ctx: Context, drop_ref: str, hold: str, as_json: bool) -> None:
    """Reserve one unit from this box's allowance (what a POS does); prints the order code."""
    hold_s, now = parse_duration_s(hold), time.time()
    with ctx.state_file().transaction(ctx.actor()) as state:
        _, found = _find(state, ctx, drop_ref, now)
        order = dr.reserve(state, _signer(ctx), found.id, now, random.SystemRandom(), ttl_s=hold_s)
    doc = {"order": order.code, "expires": order.expires, "drop": found.id, "pay_url": dr.pay_link(found, order.code)}
    if as_json:
        output.print_json(doc)
        return
    link = f"; pay at {doc['pay_url']}" if doc["pay_url"] else ""
    output.stdout.print(f"order {order.code}: {found.name}, {found.price}, held until "
                        f"{time.strftime('%H:%M:%S', time.localtime(order.expires))}{link}", markup=False)


def _settle(ctx: Context, drop_ref: str, code: str, paid: bool, as_json: bool) -> None:
    now = time.time()
    with ctx.state_file().transaction(ctx.actor()) as state:
        _, found = _find(state, ctx, drop_ref, now)
        do = dr.mark_paid if paid else dr.cancel
        order = do(state, _signer(ctx), found.id, code, now)
    if as_json:
        output.print_json({"order": order.code, "status": order.status, "drop": found.id})
        return
    output.stdout.print(f"order {order.code}: {order.status}", markup=False)


@drop.command(name="sell")
@click.argument("drop_ref", metavar="ID")
@click.option("--order", "code", required=True, help="The order code the buyer shows.")
@click.option("--json", "as_json", is_flag=True, help='Print {"order","status","drop"}.')
@pass_context
def sell(ctx: Context, drop_ref: str, code: str, as_json: bool) -> None:
    """Mark an order reserved at this box paid (the POS or the crew, after payment)."""
    _settle(ctx, drop_ref, code, True, as_json)


@drop.command(name="cancel")
@click.argument("drop_ref", metavar="ID")
@click.option("--order", "code", required=True, help="The order code.")
@click.option("--json", "as_json", is_flag=True, help='Print {"order","status","drop"}.')
@pass_context
def cancel(ctx: Context, drop_ref: str, code: str, as_json: bool) -> None:
    """Cancel an order reserved at this box: its unit returns to this box's allowance."""
    _settle(ctx, drop_ref, code, False, as_json)


@drop.command(name="give")
@click.argument("drop_ref", metavar="ID")
@click.argument("node")
@click.argument("units", type=int)
@pass_context
def give(ctx: Context, drop_ref: str, node: str, units: int) -> None:
    """Move UNITS of this box's allowance to NODE (a member's id or name), signed by this box."""
    now = time.time()
    with ctx.state_file().transaction(ctx.actor()) as state:
        _, found = _find(state, ctx, drop_ref, now)
        target = _member_id(state, node)
        dr.give(state, _signer(ctx), found.id, target, units, now)
    output.stdout.print(f"gave {units} of {found.name} to {target[:10]}", markup=False)


@drop.command(name="ask")
@click.argument("drop_ref", metavar="ID")
@click.option("--units", type=int, default=dr.ASK_AMOUNT_DEFAULT, show_default=True)
@pass_context
def ask(ctx: Context, drop_ref: str, units: int) -> None:
    """Ask the other boxes for more allowance (their agents answer from what they have spare)."""
    now = time.time()
    with ctx.state_file().transaction(ctx.actor()) as state:
        _, found = _find(state, ctx, drop_ref, now)
        dr.ask(state, _signer(ctx), found.id, units, now)
    output.stdout.print(f"asked for {units} of {found.name}; boxes with spare units answer as they sync",
                        markup=False)


@drop.command(name="reclaim")
@click.argument("drop_ref", metavar="ID")
@click.argument("node")
@pass_context
def reclaim(ctx: Context, drop_ref: str, node: str) -> None:
    """Take back what a dead box has left (organizers). Its sales after what this node has seen
    count only against units it receives later: nothing is ever sold twice."""
    _require_organizer(ctx, "reclaim allowances")
    now = time.time()
    with ctx.state_file().transaction(ctx.actor()) as state:
        _, found = _find(state, ctx, drop_ref, now)
        taken = dr.reclaim(state, _signer(ctx), found.id, _member_id(state, node), now)
    output.stdout.print(f"reclaimed {taken.amount} of {found.name} from {taken.node[:10]} (its sales up to #{taken.upto} "
                        "stand)", markup=False)


@drop.command(name="close")
@click.argument("drop_ref", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the final tally (the `drop ls --json` row).")
@pass_context
def close(ctx: Context, drop_ref: str, as_json: bool) -> None:
    """Close a drop (organizers): no new reservations anywhere; unsold units return."""
    _require_organizer(ctx, "close drops")
    now = time.time()
    with ctx.state_file().transaction(ctx.actor()) as state:
        _, found = _find(state, ctx, drop_ref, now)
        tally = dr.close(state, _signer(ctx), found.id, now)
    if as_json:
        output.print_json(tally.as_json(now))
        return
    output.stdout.print(f"{found.id}  {found.name}: closed; {tally.sold} sold, {tally.reserved} reserved (may still "
                        f"be settled), {tally.left} unsold of {found.stock}", markup=False)
