"""`mesh watch DIR`: import what a camera writes into a folder, each file once it is complete.

The same watcher the agent runs for `[[ingest]]` tables (mesh.drivers.ingest), in the foreground.
Its writes go through the state file, so a running agent picks them up by itself.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.errors import MeshError, UsageError

pass_context = click.make_pass_decorator(Context)

STATUS_REFRESH_S = 0.5  # how often the TTY status line is redrawn


def _directory(path: Path) -> Path:
    if not path.exists():
        raise UsageError(f"{path}: no such directory")
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory")
    return Path(path).absolute()


def _rule(directory: Path, tags: tuple[str, ...], subject: str | None, subject_pattern: str | None,
          retention: str | None, settle_s: float):  # -> mesh.config.IngestRule
    from mesh.cli.store_cmds import _retention_s, _subjects, _tags
    from mesh.config import IngestRule
    from mesh.drivers.settings import parse_subject_pattern

    if subject and subject_pattern:
        raise UsageError("give --subject or --subject-pattern, not both")
    if not settle_s >= 0:
        raise UsageError("--settle-s must be 0 or more seconds")
    pattern = None
    if subject_pattern is not None:
        try:
            pattern = parse_subject_pattern(subject_pattern)
        except ValueError as exc:
            raise UsageError(f"--subject-pattern {exc}") from None
    code = next(iter(_subjects((subject,))), None) if subject else None
    return IngestRule(path=_directory(directory), tags=tuple(_tags(tags)), subject=code, subject_pattern=pattern,
                      retention_s=_retention_s(retention), settle_s=settle_s)


class _Printer:
    """One line per imported file (JSON lines with --json); counts for the status line."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.count = 0

    def __call__(self, done) -> None:  # done: list[mesh.drivers.ingest.Ingested]
        for item in done:
            self.count += 1
            if self.as_json:
                doc = {"cid": item.cid, "path": item.path, "size": item.size, "tags": list(item.tags),
                       "subject": item.subject}
                sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
                sys.stdout.flush()
            else:
                output.stdout.print(f"{item.cid}  {item.size:>12,}  {item.path}", markup=False)


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--tag", "tags", multiple=True, help="Tag every imported file (repeatable).")
@click.option("--subject", default=None, help="Subject code (badge) of the person every file shows.")
@click.option("--subject-pattern", default=None,
              help="Regex with a group named subject, searched in each file name, "
                   "e.g. '_(?P<subject>[0-9A-Z]{4}-[0-9A-Z]{4})_'.")
@click.option("--retention", default=None,
              help="Keep the assets this long, then purge them everywhere (90s, 30m, 24h, 7d).")
@click.option("--settle-s", "settle_s", type=float, default=2.0, show_default=True,
              help="A file is complete once its size and mtime have not changed for this many seconds.")
@click.option("--once", is_flag=True, help="Import what is complete now, then exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per imported file: {cid, path, size, tags, subject}.")
@pass_context
def watch(ctx: Context, directory: Path, tags: tuple[str, ...], subject: str | None, subject_pattern: str | None,
          retention: str | None, settle_s: float, once: bool, as_json: bool) -> None:
    """Import files written into DIR (recursively) once each is complete; until Ctrl-C, or --once."""
    from mesh.cli.agent_cmds import setup_logging
    from mesh.drivers.ingest import close_ingester, open_ingester

    rule = _rule(directory, tags, subject, subject_pattern, retention, settle_s)
    home = ctx.home()
    setup_logging("warning", "text")  # failures as log lines on stderr; imports on stdout
    ingester = open_ingester(home, (rule,))
    printer = _Printer(as_json)
    try:
        if once:
            _once(ingester, printer)
        else:
            _forever(ingester, printer, rule.path, as_json)
    finally:
        close_ingester(ingester)


def _once(ingester, printer: _Printer) -> None:
    from mesh.drivers.ingest import ingest_once

    printer(ingest_once(ingester))
    failures = ingester.take_failures()
    if failures:
        path, error = failures[0]
        raise MeshError(f"{len(failures)} file(s) could not be imported, first {path}: {error}")
    if not printer.as_json:
        output.stderr.print(f"imported {printer.count} file(s); {ingester.settling} still being written")


def _forever(ingester, printer: _Printer, root: Path, as_json: bool) -> None:
    import trio

    trio.run(_watch_until_signal, ingester, printer, root, not as_json and sys.stderr.isatty())
    if not as_json:
        output.stderr.print(f"stopped watching {root}: {printer.count} file(s) imported", markup=False)


async def _watch_until_signal(ingester, printer: _Printer, root: Path, tty: bool) -> None:
    """Watch until Ctrl-C or SIGTERM (the import under way finishes first)."""
    import trio

    from mesh.drivers.ingest import run_ingest

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_ingest, ingester, printer)
            if tty:
                nursery.start_soon(_status, ingester, printer, root)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _status(ingester, printer: _Printer, root: Path) -> None:
    """A status line on a terminal (imported lines print above it)."""
    import trio

    with output.stderr.status(f"watching {root}") as status:
        while True:
            status.update(f"watching {root}: {printer.count} imported, {ingester.settling} settling")
            await trio.sleep(STATUS_REFRESH_S)
