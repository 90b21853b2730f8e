"""Readable sentences for the dashboard's recent events.

Events keep their stable names and typed fields everywhere (logs, `/api/events`, the page's
`data-event` attributes); this only words them for people. One template per known event name,
filled from its fields; an event whose name is unknown, or that lacks a field its template
needs, is shown as its raw `name key=value ...` line instead.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping

NODE_FIELDS = frozenset({"node"})  # fields holding a node id: shown as the member's name when known
SIZE_FIELDS = frozenset({"bytes"})  # fields holding a byte count: shown as "1.2 MB"
VALUE_CHARS_MAX = 120  # a field's text is cut to this many characters in a sentence

SENTENCES: dict[str, str] = {
    "agent.started": "This node started, listening on {listen}.",
    "agent.stopped": "This node stopped cleanly.",
    "loop.stall": "The agent was busy for {ms} ms in {task}: nothing else ran meanwhile.",
    "peer.connected": "{name} ({role}) connected from {addr}.",
    "peer.disconnected": "{node} disconnected: {reason}.",
    "peer.closing": "Closing the session with {node}: {reason}.",
    "peer.closed_by_peer": "{node} closed the session: {reason}.",
    "peer.refused": "A connection with {addr} was refused: {reason}.",
    "peer.shed": "Too many unknown connections at once: the oldest, from {addr}, was closed.",
    "peer.dial_failed": "Could not reach {addr} (trying again): {reason}.",
    "peer.revoked": "{node} was revoked and cut off.",
    "peer.corrupt_chunk": "{node} sent bytes that do not match {cid}: dropped.",
    "enroll.joined": "This box joined the mesh by itself as {name} ({role}).",
    "enroll.waiting": "This box cannot use its fleet key yet: {problem}.",
    "enroll.pending": "This box is waiting to be admitted; it shows the code {code}.",
    "pair.wrong_code": "Someone at {addr} typed a wrong pairing code (try {tries} of {of}).",
    "pair.refused": "A connection from {addr} to this waiting box was refused: {reason}.",
    "revocation.rejected": "A revocation of {node} was ignored: {reason}.",
    "chunk.store_failed": "A verified chunk could not be written to disk: {reason}.",
    "release.current": "Release {name} is now the current release.",
    "release.listed": "Fetching the release: {chunks} chunks, {bytes} in all.",
    "release.complete": "The current release is complete and verified here ({bytes}).",
    "release.invalid": "A release failed its checks: {reason}.",
    "swarm.settling": "Catching up with the peers' state before moving media.",
    "swarm.settled": "Caught up with the peers after {after_s} s: media moves again.",
    "state.snapshot_sent": "Sent {node} a full copy of the state ({bytes}).",
    "state.snapshot_merged": "Merged a full copy of the state from {node} ({bytes}).",
    "state.local_changes_rejected": "A local change to the shared state was refused: {reason}.",
    "consent.hidden": "Consent or retention hid {assets} asset(s) here.",
    "store.purged": "Cleanup deleted {chunks} chunks nothing needs any more ({bytes}).",
    "store.evicted": "Eviction freed {bytes} ({files} files).",
    "media.stored": "A {kind} arrived and was verified ({bytes}).",
    "media.evicting": "The store is near its budget: evicting {files} unpinned originals ({bytes}).",
    "media.evicted": "An unpinned original left this store ({bytes}); it is fetched again on demand.",
    "ingest.imported": "Imported {path} from a watched folder ({bytes}).",
    "ingest.failed": "Could not import {path} (trying again): {error}.",
    "ingest.watching": "Watching the folder {path}.",
    "ingest.waiting": "The folder {path} does not exist yet: looking again.",
    "ingest.watch_failed": "Watching {path} failed ({error}); rescanning it every few seconds instead.",
    "ingest.refused": "The folder {path} cannot be watched: {reason}.",
    "drop.order": "Drop order {order} at {node} is {status}.",
    "drop.entry_refused": "A drop entry that does not verify was ignored ({reason}).",
    "health.failed": "Health is failing: {checks}.",
    "health.recovered": "Every health check passes again.",
    "health.drill": "This node ran drill {id} (passed: {ok}).",
    "outbox.retry": "Sending events to the uplink failed; trying again: {error}.",
    "outbox.failed": "The outbox database failed: {error}.",
    "tls.certificate": "The event's certificate for {names} is in force (until {not_after}).",
    "tls.removed": "The event's certificate was removed.",
    "tls.key_received": "{node} handed this node the certificate's key.",
    "tls.key_sent": "This node handed the certificate's key to {node}.",
    "tls.key_refused": "{node} ({role}) asked for the certificate's key and was refused.",
    "https.serving": "HTTPS is serving on {addr}.",
    "https.stopped": "HTTPS stopped on {addr}.",
    "https.waiting": "HTTPS on {addr} waits: {reason}.",
    "https.failed": "HTTPS could not start on {addr}: {error}.",
}


def raw_line(event: Mapping) -> str:
    """`name key=value ...`: how the log writes it."""
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("time", "event"))
    return f"{event.get('event', '?')} {fields}".strip()


def sentence(event: Mapping, node_names: Mapping[str, str], size: Callable[[int], str]) -> str | None:
    """The event in words, or None when it has no sentence (unknown name or missing field)."""
    template = SENTENCES.get(str(event.get("event", "")))
    if template is None:
        return None
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if not names <= event.keys():
        return None
    return template.format(**{name: _shown(name, event[name], node_names, size) for name in names})


def _shown(name: str, value: object, node_names: Mapping[str, str], size: Callable[[int], str]) -> str:
    if name in NODE_FIELDS and isinstance(value, str):
        return node_names.get(value) or (value[:12] + "…")
    if name in SIZE_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return size(value)
    if isinstance(value, (list, tuple)):
        value = ", ".join(map(str, value))
    text = str(value)
    return text if len(text) <= VALUE_CHARS_MAX else text[:VALUE_CHARS_MAX - 1] + "…"
