"""Ingest: what a camera writes into a folder (its card, an FTP drop) becomes an asset, once complete.

Rules:
- Candidates are regular files (never symlinks) at any depth under a rule's folder, except dotfiles,
  anything inside a dot directory or the node's home, names matching an `exclude` glob, and (when
  `include` is given) names matching none of its globs.
- Complete: two stat() calls at least `settle_s` apart (on our monotonic clock, never the file's
  own timestamps: cameras' and servers' clocks are wrong) saw the same size and mtime, and the file
  opens for reading. After its bytes are stored it is stat'd again: a change while reading drops
  that import (its chunks wait for gc) and the file settles again. Partial bytes are never recorded.
- Never twice: a ledger in the home (SQLite, synchronous=FULL) maps each absolute path to the size,
  mtime_ns and CID it was imported with, written only after the state transaction is durable. A
  crash in between imports the same bytes again: the same CID, so the same asset record. A file
  touched with its bytes unchanged is read again and re-recorded as the same asset, its first
  `added_at` kept (its retention clock does not restart).
- A failed import (vanished, unreadable, disk full) is logged and retried after a backoff
  (`RETRY_S_MIN` doubling to `RETRY_S_MAX`); it never ends the loop.
- watchfiles reports changes from a thread; they are hints. A full scan at start (files written
  while nothing ran), rescans every `RESCAN_INTERVAL_S` (`RESCAN_UNWATCHED_S` when the folder
  cannot be watched, e.g. some network filesystems) and a fresh watch when a folder appears or is
  replaced (a card mounted) cover what events miss.
- Events: `ingest.imported path=… cid=… bytes=…`, `ingest.failed path=… error=…` (logger
  "mesh.ingest"), like mesh.drivers.outbox's.

`Ingester` is synchronous and owned by one thread at a time; `run_ingest` drives it from trio
(worker threads), `ingest_once` from a plain caller (`mesh watch --once`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import sqlite3
import stat as stat_mode
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mesh.config import AgentConfig, IngestRule
from mesh.drivers.filestore import FileStore
from mesh.drivers.importer import Imported, record_imports, store_files
from mesh.drivers.statefile import StateFile
from mesh.errors import MeshError, StoreError, UsageError

log = logging.getLogger("mesh.ingest")

LEDGER_FILE = "ingest.sqlite"
LEDGER_ROWS_MAX = 1_000_000  # files remembered; the oldest imports are forgotten past this
PENDING_FILES_MAX = 100_000  # files settling at once; more wait for a later scan
SCAN_FILES_MAX = 200_000  # files looked at per rule per scan
SCAN_DEPTH_MAX = 32  # directory levels below a rule's folder
CHANGES_MAX = 10_000  # changed paths queued between two loop steps; past this, a full scan instead
BATCH_FILES_MAX = 32  # files imported in one store commit and one state transaction
BATCH_BYTES_MAX = 256 * 1024 * 1024  # bytes per batch (a larger file goes alone)
TICK_S = 0.25  # how often the loop takes changes and imports what has settled
RESCAN_INTERVAL_S = 30.0  # full rescan while the folders are watched (events can be missed)
RESCAN_UNWATCHED_S = 5.0  # full rescan while they cannot be watched
ROOT_CHECK_S = 2.0  # how often to look whether a folder appeared, vanished or was replaced
RETRY_S_MIN = 2.0  # first retry delay of a failed import
RETRY_S_MAX = 300.0  # retry delay cap
WATCH_DEBOUNCE_MS = 200  # watchfiles groups changes this long
WATCH_STEP_MS = 50  # ... and notices a stop this fast
ERROR_CHARS_MAX = 200  # kept of an error message in a log event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    cid TEXT NOT NULL,
    imported_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_age ON files (imported_at);
"""


@dataclass(frozen=True)
class Ingested:
    """One file imported by the watcher."""

    cid: str  # the asset's CID
    path: str  # absolute path of the file
    size: int  # bytes
    tags: tuple[str, ...]  # canonical tags given
    subject: str | None  # subject code given (the rule's, or found by its pattern)


@dataclass(frozen=True)
class _Stat:
    """What completion compares."""

    size: int  # bytes
    mtime_ns: int  # modification time


def ledger_path(home_path: Path) -> Path:
    return Path(home_path) / LEDGER_FILE


def _event(level: int, name: str, **fields) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    log.log(level, "%s %s", name, text, extra={"event": name, "fields": fields})


def _error_text(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:ERROR_CHARS_MAX]


# --- the ledger -----------------------------------------------------------------------------------


class Ledger:
    """Which files were imported, as what (SQLite in the home; every write durable on return)."""

    def __init__(self, path: Path, rows_max: int = LEDGER_ROWS_MAX) -> None:
        self.path = Path(path)
        self.rows_max = rows_max
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the ingest ledger {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def imported(self, path: str, seen: _Stat) -> str | None:
        """The CID this file was imported as, if it was, with this size and mtime."""
        row = self._db.execute("SELECT size, mtime_ns, cid FROM files WHERE path = ?", (path,)).fetchone()
        if row is None or (row[0], row[1]) != (seen.size, seen.mtime_ns):
            return None
        return row[2]

    def record(self, entries: list[tuple[str, _Stat, str]], now: float) -> None:
        """Remember (path, stat, cid) entries in one transaction."""
        rows = [(path, seen.size, seen.mtime_ns, cid, now) for path, seen, cid in entries]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot write the ingest ledger: {exc}") from None
        self._forget_oldest()

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _forget_oldest(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM files").fetchone()
        if count > self.rows_max:
            self._db.execute("DELETE FROM files WHERE path IN (SELECT path FROM files ORDER BY imported_at LIMIT ?)",
                             (count - self.rows_max,))


# --- which files ----------------------------------------------------------------------------------


class _Rule:
    """An `IngestRule` ready to match names."""

    def __init__(self, rule: IngestRule, home_path: Path) -> None:
        self.rule = rule
        self.root = Path(os.path.abspath(rule.path))
        self.home = Path(os.path.realpath(home_path))
        real_root = Path(os.path.realpath(self.root))
        if self.home == real_root or self.home in real_root.parents:
            raise UsageError(f"{self.root}: inside the node's home ({self.home}); watch another folder")
        self.pattern = re.compile(rule.subject_pattern) if rule.subject_pattern else None

    def wants(self, name: str) -> bool:
        """Globs match names regardless of case (cameras write DSC_0001.JPG)."""
        lower = name.lower()
        if name.startswith(".") or any(fnmatch.fnmatchcase(lower, glob.lower()) for glob in self.rule.exclude):
            return False
        return not self.rule.include or any(fnmatch.fnmatchcase(lower, glob.lower()) for glob in self.rule.include)

    def prunes(self, directory: Path, name: str) -> bool:
        """Directories never entered: dot directories and the home."""
        return name.startswith(".") or Path(os.path.realpath(directory)) == self.home

    def subject_of(self, name: str) -> str | None:
        """The rule's subject, or the one its pattern finds in the name (None if none or invalid)."""
        if self.pattern is None:
            return self.rule.subject
        match = self.pattern.search(name)
        if match is None or not match.group("subject"):
            return None
        from mesh.state.consent import parse_subject_code

        try:
            return parse_subject_code(match.group("subject"))
        except ValueError:
            return None

    def holds(self, path: Path) -> bool:
        return self.root in path.parents


def _stat_of(path: Path) -> _Stat | None:
    """Size and mtime of a regular file (not a symlink), or None."""
    try:
        info = os.lstat(path)
    except (OSError, ValueError):
        return None
    if not stat_mode.S_ISREG(info.st_mode):
        return None
    return _Stat(info.st_size, info.st_mtime_ns)


def _walk(rule: _Rule, top: Path, depth: int = 0) -> Iterator[Path]:
    """Candidate files under `top` (bounded depth; unreadable directories are skipped)."""
    if depth > SCAN_DEPTH_MAX:
        return
    try:
        entries = sorted(os.scandir(top), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        path = Path(entry.path)
        if is_dir:
            if not rule.prunes(path, entry.name):
                yield from _walk(rule, path, depth + 1)
        elif rule.wants(entry.name):
            yield path


# --- settling -------------------------------------------------------------------------------------


@dataclass
class _Settling:
    """A candidate file not imported yet."""

    rule: int  # index of its rule
    seen: _Stat  # what stat() said since `since_s`
    since_s: float  # monotonic time of the first stat() that saw `seen`
    retry_at_s: float = 0.0  # after a failure, not before this
    failures: int = 0  # failed imports in a row


class _Tracker:
    """The files settling: when each was first seen as it is now (bounded: PENDING_FILES_MAX)."""

    def __init__(self, files_max: int = PENDING_FILES_MAX) -> None:
        self.files: dict[Path, _Settling] = {}
        self.files_max = files_max

    def observe(self, path: Path, rule: int, seen: _Stat, now: float) -> None:
        known = self.files.get(path)
        if known is not None and known.seen == seen:
            return
        if known is None and len(self.files) >= self.files_max:
            return  # found again by a later scan
        failures = known.failures if known is not None else 0
        retry_at = known.retry_at_s if known is not None else 0.0
        self.files[path] = _Settling(rule, seen, now, retry_at, failures)

    def forget(self, path: Path) -> None:
        self.files.pop(path, None)

    def due(self, now: float, settle_s: Callable[[int], float]) -> list[Path]:
        return sorted(path for path, item in self.files.items()
                      if now - item.since_s >= settle_s(item.rule) and now >= item.retry_at_s)

    def failed(self, path: Path, now: float) -> None:
        item = self.files.get(path)
        if item is not None:
            item.failures += 1
            item.retry_at_s = now + min(RETRY_S_MAX, RETRY_S_MIN * 2 ** min(item.failures - 1, 16))


# --- the ingester ---------------------------------------------------------------------------------


class Ingester:
    """Finds complete files under the rules' folders and imports them (one thread at a time)."""

    def __init__(self, rules: tuple[IngestRule, ...], home_path: Path, node_id: str, store: FileStore,
                 statefile: StateFile, actor: bytes, ledger: Ledger) -> None:
        self.rules = [_Rule(rule, home_path) for rule in rules]
        self.node_id, self.store, self.statefile, self.actor, self.ledger = node_id, store, statefile, actor, ledger
        self.tracker = _Tracker()
        self.failures: list[tuple[str, str]] = []  # (path, error) of failed imports, for the caller to take

    @property
    def roots(self) -> list[Path]:
        return [rule.root for rule in self.rules]

    @property
    def settling(self) -> int:
        return len(self.tracker.files)

    def step(self, changed: set[str] | None, now: float, batches_max: int | None = 1) -> list[Ingested]:
        """Look at changed paths (None: scan everything), then import what has settled (at most
        `batches_max` batches: a loop that stops waits for no more than that)."""
        if changed is None:
            self.scan(now)
        else:
            self.look_at(changed, now)
        return self.import_due(now, batches_max)

    def scan(self, now: float) -> None:
        """Stat every candidate; forget settling files that are gone."""
        found: set[Path] = set()
        for index, rule in enumerate(self.rules):
            for count, path in enumerate(_walk(rule, rule.root)):
                if count >= SCAN_FILES_MAX:
                    break
                found.add(path)
                self._observe(index, path, now)
        for path in [p for p in self.tracker.files if p not in found]:
            self.tracker.forget(path)

    def look_at(self, changed: set[str], now: float) -> None:
        """Stat the paths watchfiles reported (a directory: everything under it)."""
        for text in sorted(changed):
            path = Path(text)
            index = self._rule_of(path)
            if index is None:
                continue
            rule = self.rules[index]
            if any(rule.prunes(parent, parent.name) for parent in path.parents if rule.holds(parent)):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                if not rule.prunes(path, path.name):
                    for found in _walk(rule, path):
                        self._observe(index, found, now)
            elif rule.wants(path.name):
                self._observe(index, path, now)

    def _rule_of(self, path: Path) -> int | None:
        for index, rule in enumerate(self.rules):
            if rule.holds(path):
                return index
        return None

    def _observe(self, index: int, path: Path, now: float) -> None:
        seen = _stat_of(path)
        if seen is None:
            self.tracker.forget(path)
            return
        known = self.tracker.files.get(path)
        if known is None and self.ledger.imported(str(path), seen) is not None:
            return  # imported as it is now
        self.tracker.observe(path, index, seen, now)

    # --- importing ---

    def import_due(self, now: float, batches_max: int | None = None) -> list[Ingested]:
        """Import settled files, `batches_max` batches of them (None: all); each is stat'd first
        and a change starts its settling again."""
        done: list[Ingested] = []
        for count, (index, subject, batch) in enumerate(self._due_batches(now)):
            if batches_max is not None and count >= batches_max:
                break
            done.extend(self._import_batch(index, subject, batch, now))
        return done

    def _due_batches(self, now: float) -> Iterator[tuple[int, str | None, list[tuple[Path, _Stat]]]]:
        """(rule index, subject, files) for the settled files, grouped: one subject per batch."""
        ready: dict[tuple[int, str | None], list[tuple[Path, _Stat]]] = {}
        for path in self.tracker.due(now, lambda index: self.rules[index].rule.settle_s):
            item = self.tracker.files[path]
            seen = _stat_of(path)
            if seen is None:
                self.tracker.forget(path)
            elif seen != item.seen:
                self.tracker.observe(path, item.rule, seen, now)
            else:
                key = (item.rule, self.rules[item.rule].subject_of(path.name))
                ready.setdefault(key, []).append((path, seen))
        for (index, subject), files in ready.items():
            for batch in _batches(files):
                yield index, subject, batch

    def _import_batch(self, index: int, subject: str | None, batch: list[tuple[Path, _Stat]],
                      now: float) -> list[Ingested]:
        rule = self.rules[index].rule
        subjects = frozenset({subject}) if subject else frozenset()
        try:
            imported = store_files(self.store, self.node_id, [path for path, _ in batch], rule.tags,
                                   subjects, rule.retention_s)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the loop
            if len(batch) > 1:  # find which file it was: each alone
                return [item for one in batch for item in self._import_batch(index, subject, [one], now)]
            self._failed(batch[0][0], exc, now)
            return []
        return self._record(index, subject, batch, imported, now)

    def _record(self, index: int, subject: str | None, batch: list[tuple[Path, _Stat]],
                imported: list[Imported], now: float) -> list[Ingested]:
        """Record the imports whose file did not change while it was read; ledger them after."""
        kept = []
        for (path, seen), item in zip(batch, imported):
            after = _stat_of(path)
            if after == seen:
                kept.append((path, seen, item))
            elif after is None:
                self.tracker.forget(path)
            else:
                self.tracker.observe(path, index, after, now)  # written to while read: settle again
        if not kept:
            return []
        try:
            record_imports(self.statefile, self.actor, [item for _, _, item in kept], keep_added_at=True)
            self.ledger.record([(str(path), seen, item.cid) for path, seen, item in kept], time.time())
        except Exception as exc:  # noqa: BLE001 - the state or ledger disk: retry later
            for path, _, _ in kept:
                self._failed(path, exc, now)
            return []
        return [self._imported(index, subject, path, item) for path, _, item in kept]

    def _imported(self, index: int, subject: str | None, path: Path, item: Imported) -> Ingested:
        self.tracker.forget(path)
        _event(logging.INFO, "ingest.imported", path=str(path), cid=item.cid, bytes=item.size)
        return Ingested(item.cid, str(path), item.size, tuple(sorted(item.record.tags)), subject)

    def _failed(self, path: Path, exc: BaseException, now: float) -> None:
        error = _error_text(exc)
        self.tracker.failed(path, now)
        self.failures.append((str(path), error))
        del self.failures[:-64]  # bounded: the caller may never take them
        _event(logging.WARNING, "ingest.failed", path=str(path), error=error)

    def take_failures(self) -> list[tuple[str, str]]:
        failures, self.failures = self.failures, []
        return failures


def _batches(files: list[tuple[Path, _Stat]]) -> Iterator[list[tuple[Path, _Stat]]]:
    batch: list[tuple[Path, _Stat]] = []
    batch_bytes = 0
    for path, seen in files:
        if batch and (len(batch) >= BATCH_FILES_MAX or batch_bytes + seen.size > BATCH_BYTES_MAX):
            yield batch
            batch, batch_bytes = [], 0
        batch.append((path, seen))
        batch_bytes += seen.size
    if batch:
        yield batch


# --- running it -----------------------------------------------------------------------------------


def ingest_once(ingester: Ingester, sleep: Callable[[float], None] = time.sleep) -> list[Ingested]:
    """Import what is complete now: scan, wait out the settle time if anything is new, scan, import."""
    ingester.scan(time.monotonic())
    if ingester.settling:
        sleep(max(rule.rule.settle_s for rule in ingester.rules))
    return ingester.step(None, time.monotonic(), batches_max=None)


class _Changes:
    """Paths watchfiles reported, handed from its thread to the loop (past CHANGES_MAX: a full scan)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._overflow = False
        self.watching = False  # a watch is running (else rescans come every RESCAN_UNWATCHED_S)

    def put(self, paths: set[str]) -> None:
        with self._lock:
            if len(self._paths) + len(paths) > CHANGES_MAX:
                self._overflow = True
                self._paths.clear()
            elif not self._overflow:
                self._paths.update(paths)

    def rescan(self) -> None:
        with self._lock:
            self._overflow = True
            self._paths.clear()

    def take(self) -> set[str] | None:
        """The changed paths since the last call, or None when a full scan is due instead."""
        with self._lock:
            paths, overflow = self._paths, self._overflow
            self._paths, self._overflow = set(), False
        return None if overflow else paths


def _watch_blocking(roots: list[Path], changes: _Changes, stop: threading.Event) -> bool:
    """Feed `changes` from watchfiles until `stop` is set (in a worker thread); True when a folder
    itself changed (deleted, moved, replaced: its watch is dead and must start afresh)."""
    import watchfiles

    changes.watching = True
    texts = {str(root) for root in roots}
    first = True
    try:
        for batch in watchfiles.watch(*roots, watch_filter=None, debounce=WATCH_DEBOUNCE_MS, step=WATCH_STEP_MS,
                                      stop_event=stop, rust_timeout=1_000, yield_on_timeout=True,
                                      raise_interrupt=False, ignore_permission_denied=True):
            paths = {path for _, path in batch}
            if first or paths & texts:  # the watch is up, or a folder changed: scan it all
                changes.rescan()
                first = False
                if paths & texts:
                    return True
            elif paths:
                changes.put(paths)
    except Exception as exc:  # noqa: BLE001 - e.g. the inotify watch limit: rescans carry on
        _event(logging.WARNING, "ingest.watch_failed", error=_error_text(exc))
    finally:
        changes.watching = False
    return False


async def _set_on_cancel(stop: threading.Event) -> None:
    import trio

    try:
        await trio.sleep_forever()
    finally:
        stop.set()


async def _watch(roots: list[Path], changes: _Changes, rewatch) -> None:
    """watchfiles over `roots` in a worker thread until cancelled; `rewatch` (a CancelScope) is
    cancelled when a folder itself changed."""
    import trio

    stop = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_set_on_cancel, stop)
        try:
            dead = await trio.to_thread.run_sync(_watch_blocking, roots, changes, stop,
                                                 limiter=trio.CapacityLimiter(1))
        finally:
            nursery.cancel_scope.cancel()
    if dead:
        rewatch.cancel()


def _identities(roots: list[Path]) -> dict[Path, tuple[int, int]]:
    """(device, inode) of each folder that exists now."""
    found = {}
    for root in roots:
        try:
            info = os.stat(root)
        except OSError:
            continue
        if stat_mode.S_ISDIR(info.st_mode):
            found[root] = (info.st_dev, info.st_ino)
    return found


async def _watch_roots(roots: list[Path], changes: _Changes) -> None:
    """Watch the folders that exist; watch afresh (and rescan) when one appears, vanishes or is
    replaced (a card mounted; a folder deleted and made again, even with its old inode number)."""
    import trio

    async def identities() -> dict[Path, tuple[int, int]]:  # a stat can hang on a dead network mount
        return await trio.to_thread.run_sync(_identities, roots, abandon_on_cancel=True)

    while True:
        present = await identities()
        for root in roots:
            if root not in present:
                _event(logging.INFO, "ingest.waiting", path=str(root))
        async with trio.open_nursery() as nursery:
            if present:
                nursery.start_soon(_watch, sorted(present), changes, nursery.cancel_scope)
            while await identities() == present:
                await trio.sleep(ROOT_CHECK_S)
            nursery.cancel_scope.cancel()
        changes.rescan()
        await trio.sleep(ROOT_CHECK_S if present else 0)  # a folder that keeps changing: not in a loop


async def run_ingest(ingester: Ingester, on_imported: Callable[[list[Ingested]], None] | None = None) -> None:
    """Watch and import until cancelled: a full scan first, then changes, with periodic rescans."""
    import trio

    changes = _Changes()
    limiter = trio.CapacityLimiter(1)  # the ingester is one thread's at a time
    for root in ingester.roots:
        _event(logging.INFO, "ingest.watching", path=str(root))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_roots, ingester.roots, changes)
        last_scan = -float("inf")
        while True:
            now = time.monotonic()
            changed = changes.take()
            rescan_s = RESCAN_INTERVAL_S if changes.watching else RESCAN_UNWATCHED_S
            if changed is None or now - last_scan >= rescan_s:
                changed, last_scan = None, now
            elif not changed and not ingester.settling:
                await trio.sleep(TICK_S)
                continue
            done = await trio.to_thread.run_sync(_step_safely, ingester, changed, now, limiter=limiter)
            if done and on_imported is not None:
                on_imported(done)
            await trio.sleep(TICK_S)


def _step_safely(ingester: Ingester, changed: set[str] | None, now: float) -> list[Ingested]:
    try:
        return ingester.step(changed, now)
    except Exception as exc:  # noqa: BLE001 - a scan failing (the ledger's disk): try again next tick
        _event(logging.WARNING, "ingest.failed", path="-", error=_error_text(exc))
        return []


# --- in the agent ---------------------------------------------------------------------------------


def open_ingester(home, rules: tuple[IngestRule, ...]) -> Ingester:
    """An ingester for a home (mesh.drivers.home.Home) with a store handle, a state file and an
    actor of its own (never shared with the agent's threads), and the home's ledger."""
    from mesh.state.document import actor_id

    node_id = home.info.node_id
    with contextlib.ExitStack() as undo:  # closes what was opened if a later step fails
        store = FileStore(home.store_path)
        undo.callback(store.close)
        ledger = Ledger(ledger_path(home.path))
        undo.callback(ledger.close)
        ingester = Ingester(rules, home.path, node_id, store, StateFile(home.state_path),
                            actor_id(node_id, os.urandom(8)), ledger)
        undo.pop_all()
    return ingester


def close_ingester(ingester: Ingester) -> None:
    ingester.ledger.close()
    ingester.store.close()


def _usable_rules(rules: tuple[IngestRule, ...], home_path: Path) -> tuple[IngestRule, ...]:
    usable = []
    for rule in rules:
        try:
            _Rule(rule, home_path)
        except UsageError as exc:
            _event(logging.ERROR, "ingest.refused", path=str(rule.path), reason=str(exc))
            continue
        usable.append(rule)
    return tuple(usable)


async def ingest_loop(agent, config: AgentConfig) -> None:
    """Import complete files from `config.ingest` folders; returns at once when there are none.
    The agent's state poll picks the new records up."""
    import trio

    if not config.ingest:
        return
    rules = _usable_rules(config.ingest, agent.home.path)
    if not rules:
        return
    try:
        ingester = await trio.to_thread.run_sync(open_ingester, agent.home, rules)
    except (MeshError, OSError) as exc:  # the ledger cannot open: serve on without ingest
        _event(logging.ERROR, "ingest.failed", path=str(ledger_path(agent.home.path)), error=_error_text(exc))
        return
    try:
        await run_ingest(ingester)
    finally:
        close_ingester(ingester)
