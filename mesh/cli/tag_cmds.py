"""`mesh tags` and `mesh pin`/`unpin`: the event's canonical tag set, and the tags a box keeps.

The rules live in `mesh.state.media`; these commands parse, write through the state file and
print. A running agent picks the change up within its state poll and syncs it to every node.
"""

from __future__ import annotations

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.errors import UsageError

pass_context = click.make_pass_decorator(Context)


def _tag(text: str) -> str:
    from mesh.state.records import normalize_tag

    try:
        return normalize_tag(text)
    except ValueError as exc:
        raise UsageError(f"{text!r}: {exc}") from None


def _descriptions(values: tuple[str, ...]) -> dict[str, str]:
    """`--describe TAG=TEXT` values -> {tag: text}."""
    found = {}
    for value in values:
        tag, sep, text = value.partition("=")
        if not sep or not tag.strip():
            raise UsageError(f"--describe {value!r}: write TAG=\"what it means\", e.g. stage=\"Live from the main stage\"")
        if len(text) > 500 or not text.isprintable():
            raise UsageError(f"--describe {tag.strip()}: a description is printable text of at most 500 characters")
        found[_tag(tag)] = text.strip()
    return found


def _tag_rows(state) -> list[dict]:
    descriptions = state.tag_descriptions()
    counts = {tag: 0 for tag in descriptions}
    for record in state.assets():
        for tag in record.tags & counts.keys():
            counts[tag] += 1
    return [{"tag": tag, "description": text, "assets": counts[tag]} for tag, text in descriptions.items()]


@click.group(name="tags")
def tags() -> None:
    """The event's canonical tag set (3-6 tags: what attendees browse by; edges keep their media)."""


@tags.command(name="set")
@click.argument("names", nargs=-1, required=True)
@click.option("--describe", "describe", multiple=True, help='TAG="plain-language description" (repeatable).')
@click.option("--json", "as_json", is_flag=True, help='Print [{"tag","description","assets"}] as JSON.')
@pass_context
def tags_set(ctx: Context, names: tuple[str, ...], describe: tuple[str, ...], as_json: bool) -> None:
    """Make NAMES the canonical tags (others are undeclared; assets keep their tags)."""
    from mesh.state.media import canonical_set_advice, set_canonical_tags
    from mesh.state.membership import Role

    home = ctx.home()
    if home.info.role != Role.ORGANIZER.value:
        raise UsageError(f"only an organizer sets the canonical tags (this node is an {home.info.role}); "
                         "run it on the organizer's laptop")
    wanted = {_tag(name): None for name in names}
    for tag, text in _descriptions(describe).items():
        if tag not in wanted:
            raise UsageError(f"--describe {tag}: {tag!r} is not among the tags being set")
        wanted[tag] = text
    with ctx.state_file().transaction(ctx.actor()) as state:
        set_canonical_tags(state, wanted)
        rows = _tag_rows(state)
    advice = canonical_set_advice(list(wanted))
    if advice:
        output.stderr.print(f"warning: {advice}", markup=False)
    _print_tags(rows, as_json)


@tags.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help='Print [{"tag","description","assets"}] as JSON.')
@pass_context
def tags_ls(ctx: Context, as_json: bool) -> None:
    """List the canonical tags with their descriptions and how many assets carry each."""
    _print_tags(_tag_rows(ctx.state_file().load(ctx.actor())), as_json)


def _print_tags(rows: list[dict], as_json: bool) -> None:
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.stdout.print("no canonical tags yet (an organizer runs `mesh tags set music merch stage`)")
    for row in rows:
        text = f"  {row['description']}" if row["description"] else ""
        output.stdout.print(f"{row['tag']:<16} {row['assets']:>5} asset(s){text}", markup=False)


def _pin_report(ctx: Context, state) -> dict:
    from mesh.state.media import pinned_tags

    home = ctx.home()
    own = sorted(state.node_pins(home.info.node_id))
    pinned = pinned_tags(state, home.info.node_id, home.info.role)
    kept = [r for r in state.assets() if not pinned.isdisjoint(r.tags)]
    return {"node_pins": own, "canonical": home.info.role == "edge", "pinned": sorted(pinned),
            "assets": len(kept), "bytes": sum(r.size for r in kept)}


def _change_pins(ctx: Context, values: tuple[str, ...], pinned: bool, as_json: bool) -> None:
    if not values:
        raise UsageError("name the tags: --tag TAG (repeatable)")
    home = ctx.home()
    with ctx.state_file().transaction(ctx.actor()) as state:
        for tag in sorted({_tag(value) for value in values}):
            state.set_node_pin(home.info.node_id, tag, pinned)
        report = _pin_report(ctx, state)
    _print_pins(report, as_json)


def _print_pins(report: dict, as_json: bool) -> None:
    if as_json:
        output.print_json(report)
        return
    canonical = " (and the canonical tags: this is an edge)" if report["canonical"] else ""
    shown = ", ".join(report["pinned"]) or "none"
    output.stdout.print(f"this node keeps the originals of: {shown}{canonical}", markup=False)
    output.stdout.print(f"{report['assets']} asset(s), {report['bytes']:,} bytes in the mesh now "
                        "(config pin_tags may add more)", markup=False)


@click.command(name="pin")
@click.option("--tag", "values", multiple=True, help="Keep this tag's originals on this box (repeatable).")
@click.option("--json", "as_json", is_flag=True, help='Print {"node_pins","pinned","assets","bytes"} as JSON.')
@pass_context
def pin(ctx: Context, values: tuple[str, ...], as_json: bool) -> None:
    """Keep every original of these tags on this box (without --tag: list what it keeps)."""
    if not values:
        _print_pins(_pin_report(ctx, ctx.state_file().load(ctx.actor())), as_json)
        return
    _change_pins(ctx, values, True, as_json)


@click.command(name="unpin")
@click.option("--tag", "values", multiple=True, help="Stop keeping this tag's originals here (repeatable).")
@click.option("--json", "as_json", is_flag=True, help='Print {"node_pins","pinned","assets","bytes"} as JSON.')
@pass_context
def unpin(ctx: Context, values: tuple[str, ...], as_json: bool) -> None:
    """Stop keeping these tags' originals here (they may be evicted when space runs short)."""
    _change_pins(ctx, values, False, as_json)


__all__ = ["pin", "tags", "unpin"]
