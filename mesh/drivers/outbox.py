"""Store-and-forward outbox: items meant for a remote service (a hub's uplink webhook) wait in
SQLite in the home until the service takes them.

Rules:
- `put` is durable when it returns (SQLite, synchronous=FULL): a crash (kill -9) loses nothing.
- Delivery is an HTTP POST of one JSON item; any 2xx is success and deletes the item. Anything
  else (refused, timeout, 5xx, 4xx) keeps it and retries after an exponential backoff
  (`backoff_s_min` doubling up to `backoff_s_max`); the error line is kept for status. An item
  the service refuses outright (4xx but 408/429) REFUSED_ATTEMPTS_MAX times is dropped and logged.
- Items go out strictly oldest first, one at a time; every POST carries the item's key
  (`Idempotency-Key`) so the receiver can drop a duplicate after a crash between delivery and delete.
- The queue is bounded (`items_max`): when full, the oldest item is dropped and logged.
- `outbox_loop(agent, config)` feeds the outbox from the agent (health reports when their verdict
  changes or every `HEALTH_EVERY_S`, and notable events) and delivers due items.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mesh.config import AgentConfig
from mesh.errors import StoreError

log = logging.getLogger("mesh.outbox")

OUTBOX_FILE = "outbox.sqlite"
ITEMS_MAX = 10_000  # queued items; the oldest is dropped beyond this
ITEM_BYTES_MAX = 64 * 1024  # one item's JSON body
POST_TIMEOUT_S = 10.0  # one delivery attempt
REFUSED_ATTEMPTS_MAX = 5  # an item the service refuses (4xx) this often is dropped
ERROR_CHARS_MAX = 200  # kept of the last delivery error
LOOP_IDLE_S = 0.5  # how often the loop looks for new events and due items
HEALTH_EVERY_S = 300.0  # a health report goes out at least this often (and on every change of verdict)
FORWARD_EVENTS = frozenset({
    "drop.order",
    "release.complete", "release.current", "release.invalid", "peer.revoked", "peer.corrupt_chunk", "store.purged",
    "health.failed", "health.recovered",
})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT
);
"""


@dataclass(frozen=True)
class Item:
    """One queued item."""

    id: int  # queue order
    key: str  # unique, sent as Idempotency-Key
    kind: str  # "health", "event", ...
    body: dict  # the JSON payload
    created_at: float  # unix seconds when queued
    attempts: int  # failed deliveries so far


def outbox_path(home_path: Path) -> Path:
    return Path(home_path) / OUTBOX_FILE


class Outbox:
    """The persisted queue. Not thread-safe: one owner thread at a time (the loop hands it to
    worker threads one call at a time)."""

    def __init__(self, path: Path, items_max: int = ITEMS_MAX) -> None:
        self.path = Path(path)
        self.items_max = items_max
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the outbox {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def put(self, kind: str, body: dict, now: float) -> str:
        """Queue an item (durable on return); its key."""
        text = json.dumps(body, sort_keys=True, default=str)
        if len(text) > ITEM_BYTES_MAX:
            raise StoreError(f"outbox item of {len(text)} bytes exceeds {ITEM_BYTES_MAX}")
        key = f"{int(now * 1000):x}-{os.urandom(6).hex()}"
        self._db.execute("INSERT INTO items (key, kind, body, created_at, next_at) VALUES (?, ?, ?, ?, ?)",
                         (key, kind, text, now, now))
        self._drop_overflow()
        return key

    def _drop_overflow(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM items").fetchone()
        if count > self.items_max:
            extra = count - self.items_max
            self._db.execute("DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT ?)", (extra,))
            log.warning("outbox.dropped items=%d", extra, extra={"event": "outbox.dropped", "fields": {"items": extra}})

    def next_due(self, now: float) -> Item | None:
        """The oldest item, if its retry time has come (strict order: the receiver sees items as
        they happened)."""
        row = self._db.execute(
            "SELECT id, key, kind, body, created_at, attempts, next_at FROM items ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None or row[6] > now:
            return None
        return Item(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])

    def delivered(self, item: Item) -> None:
        self._db.execute("DELETE FROM items WHERE id = ?", (item.id,))

    def failed(self, item: Item, error: str, now: float, backoff_s_min: float, backoff_s_max: float) -> float:
        """Record a failed delivery; when to try again."""
        delay = min(backoff_s_max, backoff_s_min * 2 ** min(item.attempts, 32))
        self._db.execute("UPDATE items SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE id = ?",
                         (now + delay, error[:ERROR_CHARS_MAX], item.id))
        return now + delay

    def next_at(self) -> float | None:
        """When the oldest item is due (the others wait behind it), or None if the queue is empty."""
        row = self._db.execute("SELECT next_at FROM items ORDER BY id LIMIT 1").fetchone()
        return None if row is None else row[0]

    def keys(self) -> list[str]:
        """Keys of every queued item, oldest first."""
        return [key for (key,) in self._db.execute("SELECT key FROM items ORDER BY id").fetchall()]

    def stats(self, now: float) -> dict:
        """`{"pending", "oldest_s", "last_error"}` for the status document."""
        count, oldest = self._db.execute("SELECT COUNT(*), MIN(created_at) FROM items").fetchone()
        row = self._db.execute(
            "SELECT last_error FROM items WHERE last_error IS NOT NULL ORDER BY next_at DESC LIMIT 1"
        ).fetchone()
        return {"pending": int(count), "oldest_s": None if oldest is None else round(max(0.0, now - oldest), 1),
                "last_error": row[0] if row else None}


def read_stats(home_path: Path, now: float) -> dict | None:
    """The outbox stats of a home, or None if it has no outbox (read-only use, e.g. `mesh status`)."""
    path = outbox_path(home_path)
    if not path.exists():
        return None
    try:
        outbox = Outbox(path)
    except StoreError:
        return None
    try:
        return outbox.stats(now)
    except sqlite3.Error:
        return None
    finally:
        outbox.close()


def post_item(url: str, item: Item, node_id: str, timeout_s: float = POST_TIMEOUT_S) -> str | None:
    """POST one item; None on a 2xx answer, otherwise the reason it failed."""
    payload = json.dumps({"key": item.key, "kind": item.kind, "node_id": node_id,
                          "created_at": item.created_at, "body": item.body}).encode()
    request = urllib.request.Request(url, data=payload, method="POST", headers={
        "Content-Type": "application/json", "Idempotency-Key": item.key, "User-Agent": "assetmesh-outbox",
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {getattr(exc, 'reason', exc)}"


def _permanent(error: str) -> bool:
    """A 4xx answer other than timeout / too many requests: the service refuses the item itself."""
    return error.startswith("HTTP 4") and error not in ("HTTP 408", "HTTP 429")


def deliver_one(outbox: Outbox, url: str, node_id: str, now: float, backoff_s_min: float,
                backoff_s_max: float) -> bool | None:
    """Try the oldest due item: True delivered, False failed (rescheduled), None nothing due."""
    item = outbox.next_due(now)
    if item is None:
        return None
    error = post_item(url, item, node_id)
    if error is None:
        outbox.delivered(item)
        return True
    if _permanent(error) and item.attempts + 1 >= REFUSED_ATTEMPTS_MAX:
        outbox.delivered(item)  # the service keeps refusing this item: do not block the rest behind it
        log.warning("outbox.dropped key=%s error=%s", item.key, error,
                    extra={"event": "outbox.dropped", "fields": {"key": item.key, "error": error}})
        return False
    outbox.failed(item, error, time.time(), backoff_s_min, backoff_s_max)
    return False


# --- the agent's loop -----------------------------------------------------------------------------


class _Feed:
    """What the loop has already queued: the last event seen, the last health verdict."""

    def __init__(self) -> None:
        self.last_event: object | None = None
        self.health_ok: bool | None = None
        self.health_sent_at = 0.0
        self.health_time: float | None = None

    def new_events(self, events) -> list[dict]:
        """Events appended to the agent's `recent_events` since the last call (by identity)."""
        items = list(events)
        start = 0
        for index in range(len(items) - 1, -1, -1):
            if items[index] is self.last_event:
                start = index + 1
                break
        if items:
            self.last_event = items[-1]
        return [e for e in items[start:] if e.get("event") in FORWARD_EVENTS]

    def health_due(self, report: dict | None, now: float) -> bool:
        if not report or report.get("time") == self.health_time:
            return False
        due = report.get("ok") != self.health_ok or now - self.health_sent_at >= HEALTH_EVERY_S
        if due:
            self.health_ok, self.health_sent_at = report.get("ok"), now
        self.health_time = report.get("time")
        return due


def _collect(feed: _Feed, agent, now: float) -> list[tuple[str, dict]]:
    """New items from the agent (runs in the trio thread, which owns the agent's data)."""
    items = [("event", event) for event in feed.new_events(getattr(agent, "recent_events", ()))]
    report = agent.core.health if agent.core is not None else None
    if feed.health_due(report, now):
        items.append(("health", report))
    return items


def _put_all(outbox: Outbox, items: list[tuple[str, dict]], now: float) -> None:
    for kind, body in items:
        outbox.put(kind, body, now)


async def outbox_loop(agent, config: AgentConfig) -> None:
    """Queue the agent's notable events and health verdicts, deliver them to `config.outbox_url`,
    and keep `agent.outbox_status` current. Returns at once when no URL is configured."""
    import trio

    if not config.outbox_url:
        return
    outbox = Outbox(outbox_path(agent.home.path))
    limiter = trio.CapacityLimiter(1)
    feed = _Feed()
    try:
        while True:
            try:
                delivered = await _round(outbox, feed, agent, config, limiter)
            except (sqlite3.Error, StoreError) as exc:  # the disk, not the network: keep serving
                log.warning("outbox.failed error=%s", exc, extra={"event": "outbox.failed", "fields": {"error": str(exc)}})
                delivered = None
            if not delivered:
                await trio.sleep(LOOP_IDLE_S)
    finally:
        outbox.close()


async def _round(outbox: Outbox, feed: _Feed, agent, config: AgentConfig, limiter) -> bool | None:
    """Queue what is new, try the oldest due item; True if one was delivered."""
    import trio

    now = time.time()
    items = _collect(feed, agent, now)
    if items:
        await trio.to_thread.run_sync(_put_all, outbox, items, now, limiter=limiter)
    delivered = await trio.to_thread.run_sync(
        deliver_one, outbox, config.outbox_url, agent.home.info.node_id, now,
        config.outbox_backoff_s_min, config.outbox_backoff_s_max, limiter=limiter,
    )
    agent.outbox_status = await trio.to_thread.run_sync(outbox.stats, time.time(), limiter=limiter)
    if delivered is False:
        log.info("outbox.retry error=%s", agent.outbox_status["last_error"],
                 extra={"event": "outbox.retry", "fields": {"error": agent.outbox_status["last_error"]}})
    return delivered
