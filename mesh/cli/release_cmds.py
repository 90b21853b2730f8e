"""`mesh release`: create a signed release from a directory, publish it, roll back, list history."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import unicodedata
from pathlib import Path

import click

from mesh.cli import output
from mesh.cli.main import Context
from mesh.content.chunking import CHUNK_BYTES_MAX
from mesh.content.manifest import DirEntry, DirManifest, check_path
from mesh.content.cid import Cid
from mesh.drivers.filestore import FileStore, media_type_for
from mesh.errors import MeshError, NotFoundError, UsageError
from mesh.state import releases as rel
from mesh.state.membership import Role

pass_context = click.make_pass_decorator(Context)


@click.group(name="release")
def release() -> None:
    """Signed releases: a directory tree the whole mesh serves, and which one is current."""


# --- create ---------------------------------------------------------------------------------------


def _require_organizer(home, doing: str) -> None:
    if home.info.role != Role.ORGANIZER.value:
        raise UsageError(f"only organizers can {doing}: this node is {home.info.role!r}")


def _release_path(directory: Path, path: Path) -> str:
    """The manifest path of a file: relative, POSIX, NFC; UsageError if it cannot be one."""
    relative = unicodedata.normalize("NFC", path.relative_to(directory).as_posix())
    try:
        return check_path(relative)
    except ValueError as exc:
        raise UsageError(f"{path}: cannot be part of a release ({exc})") from None


def _release_files(directory: Path) -> list[tuple[str, Path]]:
    """(manifest path, file) for every regular file under `directory`, sorted by manifest path."""
    if not directory.exists():
        raise UsageError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory (a release is made from a directory)")
    found: dict[str, Path] = {}
    for parent, dirnames, filenames in os.walk(directory, onerror=_raise):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(parent) / name
            if not path.is_file():
                continue
            key = _release_path(directory, path)
            if key in found:
                raise UsageError(f"{found[key]} and {path} have the same name after normalisation")
            found[key] = path
    if not found:
        raise UsageError(f"{directory} holds no files: nothing to release")
    return sorted(found.items())


def _raise(exc: OSError) -> None:
    raise exc


def _import_files(store: FileStore, files: list[tuple[str, Path]], quiet: bool) -> list[DirEntry]:
    """Chunk every file into the store (no asset records); the caller holds `store.importing()`."""
    sizes = [path.stat().st_size for _, path in files]
    entries = []
    with output.byte_progress("importing", sum(sizes), quiet) as advance:
        try:
            for rel_path, path in files:
                with open(path, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    cid, _ = store.add_stream(handle, size, advance)
                entries.append(DirEntry(rel_path, Cid.parse(cid), size, media_type_for(path.name)))
            store.commit()
        except BaseException:
            store.discard()
            raise
    return entries


def _store_manifest(store: FileStore, entries: list[DirEntry]) -> DirManifest:
    try:
        manifest = DirManifest.from_entries(entries)
    except ValueError as exc:
        raise UsageError(f"cannot make a release of this directory: {exc}") from None
    encoded = manifest.encode()
    if len(encoded) > CHUNK_BYTES_MAX:
        raise UsageError(f"too many files for one release ({len(entries)}): split the directory")
    store.put(manifest.cid, encoded)
    return manifest


@release.command(name="create")
@click.argument("name")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='Print {"id","name","root"} as JSON.')
@pass_context
def create(ctx: Context, name: str, directory: Path, as_json: bool) -> None:
    """Import every file under DIRECTORY and sign a release of it (it is not yet current)."""
    home = ctx.home()
    _require_organizer(home, "create releases")
    rel.check_release_name(name)
    files = _release_files(directory)
    store = FileStore(home.store_path)
    authority = home.info.authority_public_key
    with store.importing():  # gc waits until the files are pinned
        entries = _import_files(store, files, as_json)
        manifest = _store_manifest(store, entries)
        now = time.time()
        seq = rel.ReleaseBook(ctx.state_file().load(ctx.actor()), authority, now).next_seq()
        root = str(manifest.cid)
        release_id, blob = rel.create_release(
            authority, home.node_key(), home.info.chain, name, seq, root, now
        )
        for cid in dict.fromkeys([root] + [str(entry.cid) for entry in entries]):
            store.pin(cid, f"release:{release_id}")
    with ctx.state_file().transaction(ctx.actor()) as state:
        state.put_release(release_id, blob)
    if as_json:
        output.print_json({"id": release_id, "name": name, "root": root})
        return
    total = sum(entry.size for entry in entries)
    output.stdout.print(f"{release_id}  {name}  {root}", markup=False)
    output.stderr.print(
        f"release {release_id} (seq {seq}): {len(entries)} file(s), {total:,} bytes; "
        f"make it current with `mesh release publish {release_id}`",
        markup=False,
    )


# --- publish and rollback -------------------------------------------------------------------------


def _publish(ctx: Context, release_id: str | None, as_json: bool) -> None:
    """Sign and store a publication of `release_id` (None: the previous release)."""
    home = ctx.home()
    _require_organizer(home, "publish releases")
    authority = home.info.authority_public_key
    with ctx.state_file().transaction(ctx.actor()) as state:
        now = time.time()
        book = rel.ReleaseBook(state, authority, now)
        target = _target(book, release_id)
        at = rel.publication_time(book, now)
        pub_id, blob = rel.create_publication(authority, home.node_key(), home.info.chain,
                                              target.id, at)
        state.put_publication(pub_id, blob)
    if as_json:
        output.print_json({"id": target.id, "name": target.name, "root": target.root, "at": at})
        return
    output.stdout.print(f"{target.id} ({target.name}) is now the current release", markup=False)


def _target(book: rel.ReleaseBook, release_id: str | None) -> rel.Release:
    if release_id is None:
        previous = book.previous()
        if previous is None:
            raise NotFoundError("no previous release to roll back to (see `mesh release ls`)")
        return previous
    release_id = release_id.strip().lower()
    found = book.release(release_id)
    if found is None:
        raise NotFoundError(f"no release {release_id!r} here (see `mesh release ls`)")
    return found


@release.command(name="publish")
@click.argument("release_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help='Print {"id","name","root","at"} as JSON.')
@click.option("--wait-all", is_flag=True,
              help="Then wait until this node and every online peer hold and have verified it (pre-sync).")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="With --wait-all: give up after this many seconds (exit 1, naming the nodes behind).")
@pass_context
def publish(ctx: Context, release_id: str, as_json: bool, wait_all: bool, timeout_s: float) -> None:
    """Make release ID the mesh's current release."""
    from mesh.drivers.agentfiles import read_status

    home = ctx.home()
    if wait_all and read_status(home.path) is None:
        raise MeshError("--wait-all needs the agent running for this home (start `mesh up`)")
    _publish(ctx, release_id, as_json)
    if wait_all:
        rows = _wait_all(home.path, release_id.strip().lower(), timeout_s, as_json)
        if not as_json:
            output.stderr.print(f"release {release_id} held and verified on {len(rows)} node(s): "
                                + ", ".join(r["name"] or r["node_id"][:8] for r in rows), markup=False)


# --- pre-sync: --wait-all ------------------------------------------------------------------------

WAIT_POLL_S = 0.2  # how often --wait-all reads the status file


def _node_progress(status: dict, release_id: str) -> list[dict]:
    """This node and every online peer: {node_id, name, done, have, total} (have/total: fraction
    parts in chunks for peers, bytes here)."""
    ours = status.get("release") or {}
    mine = ours.get("id") == release_id
    rows = [{"node_id": status["node_id"], "name": status.get("name"),
             "done": mine and bool(ours.get("complete")),
             "have": ours.get("have_bytes", 0) if mine else 0, "total": ours.get("total_bytes") if mine else None}]
    for peer in status.get("peers", []):
        progress = peer.get("release") or {}
        same = mine and progress.get("root") == ours.get("root")
        rows.append({"node_id": peer["node_id"], "name": peer.get("name"),
                     "done": same and bool(progress.get("complete")),
                     "have": progress.get("have_chunks", 0) if same else 0,
                     "total": progress.get("total_chunks") if same else None})
    return rows


def _behind_line(rows: list[dict]) -> str:
    behind = [r for r in rows if not r["done"]]
    return ", ".join(f"{r['name'] or r['node_id'][:8]} ({r['have']}/{r['total'] if r['total'] is not None else '?'})"
                     for r in behind)


def _wait_all(home_path: Path, release_id: str, timeout_s: float, quiet: bool) -> list[dict]:
    """Poll the status file until every online node holds the release complete; MeshError on timeout."""
    from mesh.drivers.agentfiles import read_status

    deadline = time.monotonic() + timeout_s
    with _nodes_progress(quiet) as show:
        while True:
            status = read_status(home_path)
            if status is None:
                raise MeshError("the agent stopped while waiting for the release")
            rows = _node_progress(status, release_id)
            show(rows)
            if all(r["done"] for r in rows):
                return rows
            if time.monotonic() >= deadline:
                raise MeshError(f"timed out after {timeout_s:g}s; nodes behind: {_behind_line(rows)}")
            time.sleep(WAIT_POLL_S)


@contextlib.contextmanager
def _nodes_progress(quiet: bool):
    """A progress bar per node on a TTY; a no-op elsewhere."""
    if quiet or not sys.stderr.isatty():
        yield lambda rows: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                  console=output.stderr, transient=True) as progress:
        tasks: dict[str, object] = {}

        def show(rows: list[dict]) -> None:
            for row in rows:
                if row["node_id"] not in tasks:
                    tasks[row["node_id"]] = progress.add_task(row["name"] or row["node_id"][:8], total=None)
                total = row["total"] if row["total"] else None
                progress.update(tasks[row["node_id"]], completed=row["total"] if row["done"] and total else row["have"],
                                total=total)

        yield show


@release.command(name="rollback")
@click.argument("release_id", metavar="[ID]", required=False)
@click.option("--json", "as_json", is_flag=True, help='Print {"id","name","root","at"} as JSON.')
@pass_context
def rollback(ctx: Context, release_id: str | None, as_json: bool) -> None:
    """Make release ID current again; without ID, the release current before the current one."""
    _publish(ctx, release_id, as_json)


# --- ls -------------------------------------------------------------------------------------------


def _history_row(entry: rel.HistoryEntry, store: FileStore) -> dict:
    release_ = entry.release
    totals = rel.release_totals(store, release_.root)
    return {
        "id": release_.id, "name": release_.name, "seq": release_.seq, "root": release_.root,
        "publisher": release_.publisher, "created_at": release_.created_at,
        "current": entry.current, "previous": entry.previous, "published_at": entry.published_at,
        "first_published_at": entry.first_published_at,
        "total_bytes": totals[0] if totals else None, "file_count": totals[1] if totals else None,
    }


@release.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print the release history as JSON.")
@pass_context
def ls(ctx: Context, as_json: bool) -> None:
    """List releases, newest first; the current one is marked with '*'."""
    home = ctx.home()
    state = ctx.state_file().load(ctx.actor())
    book = rel.ReleaseBook(state, home.info.authority_public_key, time.time())
    store = FileStore(home.store_path)
    rows = [_history_row(entry, store) for entry in book.history()]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.stderr.print("no releases yet: create one with `mesh release create NAME DIR`")
    for row in rows:
        mark = "*" if row["current"] else ("<" if row["previous"] else " ")
        size = "?" if row["total_bytes"] is None else f"{row['total_bytes']:,}"
        files = "?" if row["file_count"] is None else str(row["file_count"])
        line = f"{mark} {row['id']}  {row['seq']:>4}  {row['name']}  {files} file(s)  {size} bytes"
        output.stdout.print(line, markup=False)
