"""`mesh tls`: the event's HTTPS certificate. `set` and `rm` on an organizer; `show` anywhere."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.errors import UsageError

pass_context = click.make_pass_decorator(Context)

WINDOW_DEFAULT = "7d"


@click.group(name="tls")
def tls() -> None:
    """The event's TLS certificate: edges and hubs serve HTTPS with it (`mesh up --https`)."""


def _require_organizer(home, doing: str) -> None:
    from mesh.state.membership import Role

    if home.info.role != Role.ORGANIZER.value:
        raise UsageError(f"only organizers can {doing}: this node is {home.info.role!r}")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {path}: a directory, not a PEM file") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _describe(cert, home) -> dict:
    from mesh.drivers.tls import holds_key

    return {"fingerprint": cert.fingerprint, "names": list(cert.names), "not_before": cert.not_before,
            "not_after": cert.not_after, "id": cert.id, "publisher": cert.publisher, "at": cert.at,
            "key_held": holds_key(home.path, cert)}


@tls.command(name="set")
@click.option("--cert", "cert_file", required=True, type=click.Path(path_type=Path),
              help="The certificate chain, PEM: the leaf first, then its intermediates (fullchain.pem).")
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path),
              help="The leaf's private key, PEM, unencrypted (privkey.pem). It never enters the shared state.")
@click.option("--window", default=WINDOW_DEFAULT, show_default=True,
              help="How long the event lasts from now (90m, 3d): warn if the certificate expires before.")
@click.option("--json", "as_json", is_flag=True, help="Print the certificate as JSON.")
@pass_context
def set_(ctx: Context, cert_file: Path, key_file: Path, window: str, as_json: bool) -> None:
    """Make this the event's certificate on every node (replaces the one in force). Its key goes
    only to members that serve HTTPS, over their secure channel."""
    from mesh.cli.node_cmds import parse_duration_s
    from mesh.drivers.tls import drop_keys, write_key
    from mesh.state import tls as st

    home = ctx.home()
    _require_organizer(home, "set the event's TLS certificate")
    window_s = parse_duration_s(window)
    certs = st.load_pem_chain(_read(cert_file, "--cert"))
    key = st.load_pem_key(_read(key_file, "--key"))
    warnings = st.check_certificate(certs, key, time.time(), window_s)
    authority, chain = home.info.authority_public_key, home.info.chain
    fingerprint = st.chain_fingerprint(certs)
    write_key(home.path, fingerprint, st.key_der(key))  # before the statement: the agent looks for it then
    with ctx.state_file().transaction(ctx.actor()) as state:
        at = st.TlsBook(state, authority, time.time()).next_at(time.time())
        st.put_tls_statement(state, st.create_tls_statement(authority, home.node_key(), chain, certs, at))
        book = st.TlsBook(state, authority, time.time())
        cert = book.current
    drop_keys(home.path, tuple(sorted(book.fingerprints() - {cert.fingerprint})))  # the agents drop theirs
    for line in warnings:
        output.stderr.print(f"warning: {line}", markup=False)
    if as_json:
        output.print_json({**_describe(cert, home), "warnings": warnings})
        return
    output.stdout.print(f"the event's certificate is now {_short(cert.fingerprint)} for {', '.join(cert.names)} "
                        f"(until {_date(cert.not_after)}); edges serving HTTPS fetch its key from this node",
                        markup=False)


@tls.command(name="rm")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@pass_context
def rm(ctx: Context, as_json: bool) -> None:
    """Remove the event's certificate: HTTPS stops everywhere and every node deletes its key."""
    from mesh.drivers.tls import drop_keys
    from mesh.state import tls as st

    home = ctx.home()
    _require_organizer(home, "remove the event's TLS certificate")
    authority, chain = home.info.authority_public_key, home.info.chain
    with ctx.state_file().transaction(ctx.actor()) as state:
        book = st.TlsBook(state, authority, time.time())
        current = book.current
        if current is None:
            raise UsageError("the mesh has no TLS certificate to remove")
        at = book.next_at(time.time())
        st.put_tls_statement(state, st.create_tls_removal(authority, home.node_key(), chain, current.fingerprint, at))
        named = book.fingerprints()
    drop_keys(home.path, tuple(sorted(named)))
    if as_json:
        output.print_json({"removed": current.fingerprint, "names": list(current.names)})
        return
    output.stdout.print(f"removed the event's certificate {_short(current.fingerprint)}: nodes stop serving HTTPS "
                        "and delete its key", markup=False)


@tls.command(name="show")
@click.option("--json", "as_json", is_flag=True, help='{"fingerprint","names","not_before","not_after",'
              '"id","publisher","at","key_held"} or null.')
@pass_context
def show(ctx: Context, as_json: bool) -> None:
    """The event's certificate: names, fingerprint, expiry, and whether this node holds its key."""
    from mesh.state.tls import current_certificate

    home = ctx.home()
    state = ctx.state_file().load(ctx.actor())
    cert = current_certificate(state, home.info.authority_public_key, time.time())
    doc = _describe(cert, home) if cert is not None else None
    if as_json:
        output.print_json(doc)
        return
    if doc is None:
        output.stdout.print("no TLS certificate: pages are served over HTTP only (an organizer runs `mesh tls set`)")
        return
    expired = " (EXPIRED)" if cert.not_after <= time.time() else ""
    for label, value in (("names", ", ".join(cert.names)), ("fingerprint", f"sha256 {cert.fingerprint}"),
                         ("expires", _date(cert.not_after) + expired),
                         ("key", "held here" if doc["key_held"] else "not held here")):
        output.stdout.print(f"{label:12} {value}", markup=False)


def _short(fingerprint: str) -> str:
    return fingerprint[:16]


def _date(at: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
