"""`mesh policy`, `mesh consent` and `mesh stats`: consent scopes, retention, decisions, erasure.

The rules live in `mesh.state.consent`; these commands only parse, write through the state file and
print. `consent forget` purges here at once (gc with the new live roots); a running agent's own GC
purges on every other node as the revokes arrive.
"""

from __future__ import annotations

import random
import time

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.cli.node_cmds import parse_duration_s
from mesh.cli.store_cmds import _asset_json, open_store
from mesh.drivers.purge import consent_view, keep_set
from mesh.errors import UsageError
from mesh.state import consent as cs
from mesh.state.membership import Role

pass_context = click.make_pass_decorator(Context)
RETENTION_ARGUMENT = "retention"  # `mesh policy set retention --captured 7d`


def _subject(text: str) -> str:
    """The canonical subject code of user input; UsageError if it is not one."""
    try:
        return cs.parse_subject_code(text)
    except ValueError as exc:
        raise UsageError(f"{text!r}: {exc}") from None


def _policies(ctx: Context, state, now: float) -> cs.Policies:
    return cs.effective_policies(state, ctx.home().info.authority_public_key, now)


# --- policy ---------------------------------------------------------------------------------------


@click.group(name="policy")
def policy() -> None:
    """Consent scopes and retention rules (organizers set them; every node checks the signature)."""


@policy.command(name="set")
@click.argument("scope")
@click.option("--default", "default", type=click.Choice(["grant", "deny"]), default=None,
              help="Consent of an attendee who decided nothing.")
@click.option("--describe", default=None, help="What the scope means, in plain language.")
@click.option("--captured", default=None,
              help="With SCOPE 'retention': keep captured media this long (90s, 30m, 24h, 7d).")
@click.option("--json", "as_json", is_flag=True, help='Print {"id","target"} as JSON.')
@pass_context
def policy_set(ctx: Context, scope: str, default: str | None, describe: str | None,
               captured: str | None, as_json: bool) -> None:
    """Define consent scope SCOPE, or (SCOPE 'retention') the retention of captured media."""
    home = ctx.home()
    if home.info.role != Role.ORGANIZER.value:
        raise UsageError(f"only organizers can set policies: this node is {home.info.role!r}")
    now = time.time()
    if scope == RETENTION_ARGUMENT:
        target, made = _retention_policy(home, default, captured, describe, now)
    else:
        target, made = _scope_policy(home, scope, default, describe, now)
    with ctx.state_file().transaction(ctx.actor()) as state:
        policy_id = cs.set_policy(state, made)
    if as_json:
        output.print_json({"id": policy_id, "target": target})
        return
    output.stdout.print(f"{policy_id}  {target}: set; peers apply it as soon as they sync",
                        markup=False)


def _scope_policy(home, scope: str, default: str | None, describe: str | None,
                  now: float) -> tuple[str, tuple[str, bytes]]:
    if default is None or describe is None:
        raise UsageError("a consent scope needs --default grant|deny and --describe TEXT")
    cs.check_scope(scope)
    made = cs.create_policy(home.info.authority_public_key, home.node_key(), home.info.chain,
                            scope, default, describe, now)
    return f"scope:{scope}", made


def _retention_policy(home, default: str | None, captured: str | None, describe: str | None,
                      now: float) -> tuple[str, tuple[str, bytes]]:
    if default is not None or captured is None:
        raise UsageError("a retention rule is `mesh policy set retention --captured DURATION`")
    made = cs.create_retention_policy(
        home.info.authority_public_key, home.node_key(), home.info.chain, cs.CAPTURED,
        parse_duration_s(captured), now, describe or "",
    )
    return f"retention:{cs.CAPTURED}", made


def _policies_json(policies: cs.Policies) -> dict:
    return {
        "scopes": [
            {"scope": p.scope, "default": "grant" if p.default_grant else "deny",
             "description": p.description, "id": p.id, "at": p.at, "publisher": p.publisher}
            for p in policies.scopes.values()
        ],
        "retention": [
            {"category": r.category, "retention_s": r.retention_s, "id": r.id, "at": r.at,
             "publisher": r.publisher}
            for r in policies.retention.values()
        ],
    }


@policy.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help='Print {"scopes": [...], "retention": [...]}.')
@pass_context
def policy_ls(ctx: Context, as_json: bool) -> None:
    """List the policies in force (valid, organizer-signed, latest per scope)."""
    state = ctx.state_file().load(ctx.actor())
    found = _policies_json(_policies(ctx, state, time.time()))
    if as_json:
        output.print_json(found)
        return
    if not found["scopes"] and not found["retention"]:
        output.stderr.print("no policies: every scope is denied by default")
    for row in found["scopes"]:
        output.stdout.print(f"scope      {row['scope']:<12} default {row['default']:<5}  "
                            f"{row['description']}", markup=False)
    for row in found["retention"]:
        output.stdout.print(f"retention  {row['category']:<12} {row['retention_s']:g} s",
                            markup=False)


# --- consent --------------------------------------------------------------------------------------


@click.group(name="consent")
def consent() -> None:
    """Attendees' decisions by subject code: grant, revoke, show, export, forget."""


def _decide(ctx: Context, code: str, scope: str, grant: bool) -> cs.Decision:
    subject = _subject(code)
    cs.check_scope(scope)
    node_id = ctx.home().info.node_id
    with ctx.state_file().transaction(ctx.actor()) as state:
        known = _known_scopes(ctx, state)
        if scope not in known:  # a misspelt scope would show on the attendee's page and match nothing
            raise UsageError(f"{scope!r} is not a consent scope here; known scopes: {', '.join(sorted(known))}")
        return cs.record_decision(state, subject, scope, grant, time.time(), node_id)


def _known_scopes(ctx: Context, state) -> set[str]:
    """The media-type scopes, the scopes policies define, and those `scope:NAME` tags name."""
    known = {scope for _, scope in cs.MEDIA_TYPE_SCOPES} | {cs.OTHER_MEDIA_SCOPE}
    known |= set(_policies(ctx, state, time.time()).scopes)
    for asset in state.assets():
        known |= cs.asset_scopes(asset)
    return known


@consent.command(name="grant")
@click.argument("code")
@click.argument("scope")
@pass_context
def grant(ctx: Context, code: str, scope: str) -> None:
    """Record that subject CODE consents to SCOPE (restores consent after earlier revokes).

    The crew desk's path: run on a member node by an operator who has checked the badge in person,
    so it needs no badge secret (the public /consent page does). It is also how badges printed
    without a secret are granted.
    """
    made = _decide(ctx, code, scope, True)
    output.stdout.print(f"{made.subject}: granted {made.scope}", markup=False)


@consent.command(name="revoke")
@click.argument("code")
@click.argument("scope")
@pass_context
def revoke(ctx: Context, code: str, scope: str) -> None:
    """Record that subject CODE withdraws consent to SCOPE; its media hides on every node (anyone
    may withdraw with the code alone, here or on the /consent page)."""
    made = _decide(ctx, code, scope, False)
    output.stdout.print(f"{made.subject}: revoked {made.scope}", markup=False)


def _decision_json(decision: cs.Decision) -> dict:
    return {"id": decision.id, "scope": decision.scope, "grant": decision.grant,
            "at": decision.at, "by": decision.by, "seen": sorted(decision.seen)}


def _consent_rows(state, subject: str, view: cs.ConsentView) -> list[dict]:
    """Per scope that concerns the subject: granted now or not, the default, the decisions."""
    scopes = set(view.policies.scopes) | set(view.subject_scopes(subject))
    for asset in cs.subject_assets(state, subject):
        scopes |= cs.asset_scopes(asset)
    rows = []
    for scope in sorted(scopes):
        made = view.decisions(subject, scope)
        rows.append({
            "scope": scope, "granted": view.granted(subject, scope),
            "default": "grant" if view.policies.default_grant(scope) else "deny",
            "decisions": None if made is None else [_decision_json(d) for d in made],
        })
    return rows


@consent.command(name="show")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True, help="Print the subject's consent as JSON.")
@pass_context
def show(ctx: Context, code: str, as_json: bool) -> None:
    """Show, per scope, whether subject CODE consents now and the decisions behind it."""
    subject = _subject(code)
    now = time.time()
    state = ctx.state_file().load(ctx.actor())
    view = consent_view(state, ctx.home().info.authority_public_key, now)
    rows = _consent_rows(state, subject, view)
    assets = cs.subject_assets(state, subject)
    if as_json:
        output.print_json({"subject": subject, "scopes": rows, "assets": [a.cid for a in assets]})
        return
    for row in rows:
        count = "too many" if row["decisions"] is None else len(row["decisions"])
        state_word = "granted" if row["granted"] else "denied"
        output.stdout.print(f"{row['scope']:<12} {state_word:<8} (default {row['default']}, "
                            f"{count} decision(s))", markup=False)
    output.stdout.print(f"{len(assets)} asset(s) name {subject}", markup=False)


@consent.command(name="export")
@click.argument("code")
@pass_context
def export(ctx: Context, code: str) -> None:
    """Print as JSON everything the mesh links to subject CODE (access request)."""
    subject = _subject(code)
    now = time.time()
    state = ctx.state_file().load(ctx.actor())
    view = consent_view(state, ctx.home().info.authority_public_key, now)
    assets = [
        {**_asset_json(a), "visible": view.visible(a, now),
         "expires_at": cs.expires_at(a, view.policies)}
        for a in cs.subject_assets(state, subject)
    ]
    output.print_json({
        "subject": subject,
        "exported_at": now,
        "exported_by": ctx.home().info.node_id,
        "decisions": [_decision_json(d) for d in cs.decisions(state, subject)],
        "consent": [{k: v for k, v in row.items() if k != "decisions"}
                    for row in _consent_rows(state, subject, view)],
        "assets": assets,
        "policies": _policies_json(view.policies),
    })


@consent.command(name="forget")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True, help="Print what was revoked and removed as JSON.")
@pass_context
def forget(ctx: Context, code: str, as_json: bool) -> None:
    """Revoke every scope of subject CODE and purge its media from this store now (erasure)."""
    subject = _subject(code)
    home = ctx.home()
    authority = home.info.authority_public_key
    now = time.time()
    with ctx.state_file().transaction(ctx.actor()) as state:
        before = consent_view(state, authority, now)
        linked = cs.subject_assets(state, subject)
        shown = {a.cid for a in linked if before.visible(a, now)}
        revokes = cs.revoke_all(state, subject, before.policies, now, home.info.node_id)
    store, _ = open_store(ctx)
    state = ctx.state_file().load(ctx.actor())
    keep = keep_set(state, store, authority, time.time(), home.info.node_id)
    report = store.gc(keep.roots, keep.hidden)
    after = consent_view(state, authority, time.time())
    result = {
        "subject": subject,
        "revoked": sorted({d.scope for d in revokes}),
        "assets_hidden": sorted(cid for cid in shown if not after.visible(state.asset(cid), now)),
        "assets_linked": [a.cid for a in linked],
        "chunks_removed": report.chunks_removed,
        "bytes_freed": report.bytes_freed,
    }
    if as_json:
        output.print_json(result)
        return
    output.stdout.print(f"{subject}: revoked {', '.join(result['revoked']) or 'nothing'}",
                        markup=False)
    for cid in result["assets_hidden"]:
        output.stdout.print(f"hidden   {cid}", markup=False)
    output.stdout.print(
        f"removed {report.chunks_removed} chunk(s), {report.bytes_freed:,} bytes from this store; "
        "other nodes purge as soon as they sync", markup=False,
    )


@consent.command(name="new-code")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 10_000),
              help="How many badges to make (about 50 a second).")
@click.option("--url", "base_url", default=None, metavar="URL",
              help="Also print each badge's consent link for its QR code, "
                   "URL/consent?code=CODE#secret=SECRET (URL: a node's address, http://BOX:8080).")
@click.option("--json", "as_json", is_flag=True, help='Print [{"code","secret","url"}] as JSON.')
@pass_context
def new_code(ctx: Context, count: int, base_url: str | None, as_json: bool) -> None:
    """Print fresh badges for this mesh, one a line: CODE SECRET [URL].

    Print CODE on the badge; put SECRET only in the badge's QR code (with --url, the link to
    encode). Anyone who reads CODE can withdraw its consent; allowing on the /consent page needs
    SECRET, which CODE does not reveal. Nothing is stored: a decision names CODE, never SECRET.
    """
    from mesh.gateway.pages import badge_url

    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise UsageError("--url is a node's address: http://BOX:8080 or https://...")
    mesh_id = ctx.home().info.mesh_id
    rng = random.SystemRandom()
    made = []
    for _ in range(count):
        badge = cs.new_badge(rng, mesh_id)
        url = badge_url(base_url, badge) if base_url is not None else None
        if as_json:
            made.append({"code": badge.code, "secret": badge.secret, "url": url})
        else:
            print(" ".join(part for part in (badge.code, badge.secret, url) if part), flush=True)
    if as_json:
        output.print_json(made)


# --- stats ----------------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"tags": {TAG: views}} as JSON.')
@pass_context
def stats(ctx: Context, as_json: bool) -> None:
    """Views per tag, summed over every node (nothing is counted per person)."""
    counts = cs.tag_views(ctx.state_file().load(ctx.actor()))
    if as_json:
        output.print_json({"tags": counts})
        return
    if not counts:
        output.stderr.print("no views counted yet")
    for tag, views in counts.items():
        output.stdout.print(f"{views:>10,}  {tag}", markup=False)
