"""Commands on the local store: add, ls, cat, tag, verify, gc.

Imports stay light at module level (`mesh cat` and `mesh add` pay them on every run); what only
one command needs is imported inside it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.content.cid import Cid
from mesh.drivers.filestore import FileStore, VerifyReport
from mesh.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from mesh.state.records import AssetRecord

pass_context = click.make_pass_decorator(Context)


def _tags(values: tuple[str, ...]) -> list[str]:
    from mesh.state.records import normalize_tag  # not imported by `mesh cat`

    try:
        return sorted({normalize_tag(value) for value in values})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _parse_cid(text: str) -> Cid:
    try:
        return Cid.parse(text)
    except ValueError as exc:
        raise UsageError(f"{text!r} is not a CID ({exc}); copy one from `mesh ls`") from None


def _files_under(paths: tuple[Path, ...]) -> list[Path]:
    """Every regular file named or inside a named directory, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or directory")
        if path.is_dir():
            files.extend(sorted(_walk(path)))
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: not a regular file or directory")
    return files


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
        dirnames.sort()
        for name in filenames:
            candidate = Path(directory) / name
            if candidate.is_file():
                yield candidate


def _raise_walk_error(exc: OSError) -> None:
    raise exc


def _asset_json(record: AssetRecord) -> dict:
    return {
        "cid": record.cid,
        "name": record.name,
        "size": record.size,
        "media_type": record.media_type,
        "tags": sorted(record.tags),
        "added_at": record.added_at,
        "added_by": record.added_by,
        "retention_s": record.retention_s,
        "subjects": sorted(record.subjects),
        "thumbnail": record.thumbnail,
        "preview": record.preview,
    }


def _subjects(values: tuple[str, ...]) -> frozenset[str]:
    """Canonical subject codes of `--subject` values; UsageError naming the bad one."""
    if not values:
        return frozenset()
    # ~75 ms of imports, so only when a subject is given
    from mesh.state.consent import parse_subject_code

    codes = set()
    for value in values:
        try:
            codes.add(parse_subject_code(value))
        except ValueError as exc:
            raise UsageError(f"--subject {value!r}: {exc}") from None
    return frozenset(codes)


def open_store(ctx: Context) -> tuple[FileStore, str]:
    home = ctx.home()
    return FileStore(home.store_path), home.info.node_id


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tag", "tags", multiple=True, help="Tag every added asset (repeatable).")
@click.option("--subject", "subjects", multiple=True,
              help="Subject code (badge) of a person the media shows (repeatable).")
@click.option("--retention", default=None,
              help="Keep the assets this long, then purge them everywhere (90s, 30m, 24h, 7d).")
@click.option("--json", "as_json", is_flag=True, help="Print [{cid, path, size, tags}] as JSON.")
@pass_context
def add(ctx: Context, paths: tuple[Path, ...], tags: tuple[str, ...], subjects: tuple[str, ...],
        retention: str | None, as_json: bool) -> None:
    """Import files or directories into the store (images get a thumbnail, videos a poster and a clip)."""
    from mesh.drivers.importer import import_files  # not imported by `mesh cat`

    tag_list = _tags(tags)
    subject_codes = _subjects(subjects)
    retention_s = _retention_s(retention)
    store, node_id = open_store(ctx)
    files = _files_under(paths)
    total = sum(path.stat().st_size for path in files)
    with output.byte_progress("adding", total, as_json) as advance:
        added = import_files(store, ctx.state_file(), ctx.actor(), node_id, files, tag_list, subject_codes,
                             retention_s, on_bytes=advance)
    if as_json:
        output.print_json([
            {"cid": a.cid, "path": a.path, "size": a.size, "tags": tag_list} for a in added
        ])
        return
    for item in added:
        output.stdout.print(f"{item.cid}  {item.size:>12,}  {item.path}")
    new = sum(item.new_bytes for item in added)
    output.stderr.print(f"added {len(added)} file(s), {total:,} bytes ({new:,} new)")


def _retention_s(text: str | None) -> float | None:
    if text is None:
        return None
    from mesh.cli.node_cmds import parse_duration_s

    return parse_duration_s(text)


@click.command(name="ls")
@click.option("--tag", default=None, help="Only assets with this tag.")
@click.option("--json", "as_json", is_flag=True, help="Print the asset records as JSON.")
@pass_context
def ls(ctx: Context, tag: str | None, as_json: bool) -> None:
    """List the assets this node may show (hidden: lacking consent, or expired)."""
    from mesh.drivers.purge import visible_records

    state = ctx.state_file().load(ctx.actor())
    authority = ctx.home().info.authority_public_key
    records = visible_records(state, authority, time.time(), _tags((tag,))[0] if tag else None)
    if as_json:
        output.print_json([_asset_json(record) for record in records])
        return
    for r in records:
        added = datetime.fromtimestamp(r.added_at, timezone.utc).strftime("%Y-%m-%d %H:%M")
        tags = ",".join(sorted(r.tags)) or "-"
        output.stdout.print(f"{r.cid}  {r.size:>12,}  {added}  {r.name}  [{tags}]", markup=False)


@click.command()
@click.argument("cids", nargs=-1, required=True)
@click.option("--rehash", is_flag=True,
              help="Re-hash every chunk with BLAKE3 against its CID instead of its stored checksum.")
@pass_context
def cat(ctx: Context, cids: tuple[str, ...], rehash: bool) -> None:
    """Write files' bytes to stdout, one after another (every chunk checked)."""
    for cid in cids:
        _parse_cid(cid)  # canonical text, so the store can take it as it is
    store, _ = open_store(ctx)
    views = store.read_objects(cids, rehash=rehash)  # fails before writing anything if one is unknown
    write = _raw_writer(sys.stdout)
    for view in views:
        write(view)


def _raw_writer(stream) -> Callable[[memoryview], None]:
    """Large writes straight to the file descriptor under `stream` (or to `stream` itself)."""
    stream.flush()
    try:
        fd = stream.buffer.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (io.UnsupportedOperation too)
        buffer = getattr(stream, "buffer", stream)
        return lambda view: (buffer.write(view), buffer.flush())
    return lambda view: _write_all(fd, view)


def _write_all(fd: int, view: memoryview) -> None:
    while view.nbytes:
        view = view[os.write(fd, view):]


@click.command()
@click.argument("cid")
@click.option("--add", "to_add", multiple=True, help="Tag to add (repeatable).")
@click.option("--remove", "to_remove", multiple=True, help="Tag to remove (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the updated asset as JSON.")
@pass_context
def tag(ctx: Context, cid: str, to_add: tuple[str, ...], to_remove: tuple[str, ...], as_json: bool) -> None:
    """Add or remove tags on an asset."""
    _parse_cid(cid)
    if not to_add and not to_remove:
        raise UsageError("nothing to do: give --add TAG and/or --remove TAG")
    with ctx.state_file().transaction(ctx.actor()) as state:
        if state.asset(cid) is None:
            raise NotFoundError(f"no asset with CID {cid} (see `mesh ls`)")
        state.tag_asset(cid, _tags(to_add), _tags(to_remove))
        record = state.asset(cid)
    if as_json:
        output.print_json(_asset_json(record))
    else:
        output.stdout.print(f"{record.cid}  tags: {', '.join(sorted(record.tags)) or '(none)'}")


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print {checked, corrupt, missing, checksums_added, checksums_wrong} as JSON.")
@pass_context
def verify(ctx: Context, as_json: bool) -> None:
    """Re-hash every stored chunk with BLAKE3; exit 1 and quarantine any that is corrupt."""
    store, _ = open_store(ctx)
    _, total = store.usage()
    with output.byte_progress("verifying", total, as_json) as advance:
        report = store.verify(on_chunk=advance)
    if as_json:
        output.print_json({
            "checked": report.checked, "corrupt": list(report.corrupt), "missing": list(report.missing),
            "checksums_added": report.checksums_added, "checksums_wrong": list(report.checksums_wrong),
        })
    else:
        _print_verify_report(report)
    if report.corrupt or report.missing or report.checksums_wrong:
        raise SystemExit(1)


def _print_verify_report(report: VerifyReport) -> None:
    for cid in report.corrupt:
        output.stdout.print(f"corrupt  {cid}  (quarantined)")
    for cid in report.missing:
        output.stdout.print(f"missing  {cid}")
    for cid in report.checksums_wrong:
        output.stdout.print(f"checksum {cid}  (bytes intact, the index had a wrong checksum: rewritten)")
    bad = len(report.corrupt) + len(report.missing) + len(report.checksums_wrong)
    added = f"; recorded {report.checksums_added} missing checksum(s)" if report.checksums_added else ""
    output.stderr.print(f"checked {report.checked} chunk(s): {bad or 'none'} bad{added}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@pass_context
def gc(ctx: Context, as_json: bool) -> None:
    """Delete chunks no asset or release needs, and leftovers of interrupted imports."""
    from mesh.drivers.purge import keep_set

    store, _ = open_store(ctx)
    state = ctx.state_file().load(ctx.actor())
    home = ctx.home()
    keep = keep_set(state, store, home.info.authority_public_key, node_id=home.info.node_id)
    report = store.gc(keep.roots, keep.hidden)
    if as_json:
        output.print_json({
            "chunks_removed": report.chunks_removed, "bytes_freed": report.bytes_freed,
            "orphans_removed": report.orphans_removed,
        })
    else:
        output.stdout.print(
            f"removed {report.chunks_removed} chunk(s), {report.bytes_freed:,} bytes; "
            f"{report.orphans_removed} leftover file(s)"
        )


