"""The gateway's read-only view of a running agent: files by CID and in the current release."""

from __future__ import annotations

import time

from mesh.content.cid import Cid
from mesh.content.manifest import DirEntry, DirManifest, decode_manifest
from mesh.drivers.runtime import Agent
from mesh.errors import MeshError
from mesh.gateway.app import FileRef
from mesh.state.consent import effective_policies, visible

DEFAULT_MEDIA_TYPE = "application/octet-stream"


class AgentView:
    """Implements `GatewayView` over an `Agent` (its store and its core's shared state)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._release_cache: tuple[str, dict[str, DirEntry]] | None = None

    def status(self) -> dict:
        return self.agent.status()

    def file_by_cid(self, cid: str) -> FileRef | None:
        """A file held completely here and not hidden; None otherwise (never partial bytes, never
        an asset lacking consent or past its retention)."""
        if self._hidden(cid):
            return None
        store = self.agent.store
        try:
            size, _ = store.object_chunks(cid)
            if store.missing_chunks(cid):
                return None
        except MeshError:
            return None
        return FileRef(cid, size, self._media_type(cid))

    def _hidden(self, cid: str) -> bool:
        """The CID's asset record exists and is not visible (consent or retention)."""
        core = self.agent.core
        record = core.state.asset(cid) if core is not None else None
        if record is None:
            return False
        if not record.subjects and record.retention_s is None:
            return False  # always visible: skip verifying the policies
        now = time.time()
        policies = effective_policies(core.state, self.agent.home.info.authority_public_key, now)
        return not visible(record, core.state, policies, now)

    def _media_type(self, cid: str) -> str:
        record = self.agent.core.state.asset(cid) if self.agent.core is not None else None
        if record is not None:
            return record.media_type
        for entry in self._release_entries().values():
            if str(entry.cid) == cid:
                return entry.media_type
        return DEFAULT_MEDIA_TYPE

    def file_in_current_release(self, path: str) -> FileRef | None:
        entry = self._release_entries().get(path)
        if entry is None:
            return None
        ref = self.file_by_cid(str(entry.cid))
        return None if ref is None else FileRef(ref.cid, ref.size, entry.media_type)

    def _release_entries(self) -> dict[str, DirEntry]:
        core = self.agent.core
        if core is None or core.swarm is None:
            return {}
        root = str(core.swarm.root)
        if self._release_cache is None or self._release_cache[0] != root:
            try:
                manifest = decode_manifest(self.agent.store.read_chunk(Cid.parse(root)))
            except (MeshError, ValueError):
                return {}
            if not isinstance(manifest, DirManifest):
                return {}
            self._release_cache = (root, {entry.path: entry for entry in manifest.entries})
        return self._release_cache[1]

    def chunk_spans(self, cid: str) -> list[tuple[str, int]]:
        store = self.agent.store
        _, chunks = store.object_chunks(cid)
        return [(chunk, store.size(Cid.parse(chunk))) for chunk in chunks]

    def read_chunk(self, cid: str) -> bytes:
        return self.agent.store.read_chunk(Cid.parse(cid), verify=True)
