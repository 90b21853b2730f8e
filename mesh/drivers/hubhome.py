"""A co-op hub's home: several meshes' memberships on one box, one chunk pool under them.

Layout:
    hub.json               the hub's name and its meshes: {mesh_id: {quota_bytes, host, joined_at}}
    meshes/<mesh_id>/      an ordinary home per mesh (its own node key, credential, store, state)
    pool/XX/CID            hard links to chunk files the meshes' stores hold: a chunk two meshes
                           hold is one inode (see FileStore `pool`)
    run/                   the hub agent's lock and status

Isolation: each mesh's home has its own node identity (a member of mesh A cannot link the hub's
node in A to its node in B), its own store index and its own state; nothing in one home names
another. The pool is used only when a mesh's store already has the bytes in hand (verified bytes
from that mesh's peer, or an `add`), so it saves disk without telling anyone what another mesh
holds. `leave` removes the mesh's home, then the pool entries no store links any more.

Crash safety: hub.json is rewritten atomically; a join is built under `meshes/.joining-*` and
renamed into place before hub.json names it; a directory hub.json does not name is not served
(`orphans` lists it; `hub leave` or `hub adopt` deals with it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mesh.drivers.home import Home, write_atomic
from mesh.errors import HomeError, UsageError

HUB_FILE = "hub.json"
HUB_FORMAT = 1
MESHES_DIR = "meshes"
POOL_DIR = "pool"
HUB_NAME_CHARS_MAX = 64
HUB_MESHES_MAX = 64  # memberships one hub home holds
HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True)
class HubMesh:
    """One membership of the hub, as hub.json records it."""

    mesh_id: str  # the mesh
    quota_bytes: int | None  # how much of the disk this mesh's store may hold; None: no quota
    host: str  # the HTTP host name this mesh's pages answer on
    joined_at: float  # unix seconds
    peers: tuple[tuple[str, int], ...] = ()  # static peers of this mesh only (venues, other hubs)

    def to_json(self) -> dict:
        return {"quota_bytes": self.quota_bytes, "host": self.host, "joined_at": self.joined_at,
                "peers": [[host, port] for host, port in self.peers]}


class HubHome:
    """An initialised hub home."""

    def __init__(self, path: Path, name: str, meshes: dict[str, HubMesh], operator_token: str) -> None:
        self.path = path
        self.name = name
        self.meshes = meshes
        self.operator_token = operator_token  # logs in to the hub page (`/hub`)

    # ---- files ------------------------------------------------------------------------------

    @staticmethod
    def exists(path: Path) -> bool:
        return (path / HUB_FILE).exists()

    @classmethod
    def init(cls, path: Path, name: str) -> HubHome:
        """Make `path` a new, empty hub home."""
        name = name.strip()
        if not name or len(name) > HUB_NAME_CHARS_MAX:
            raise UsageError(f"a hub name needs 1 to {HUB_NAME_CHARS_MAX} characters")
        if cls.exists(path) or Home.exists(path):
            raise HomeError(f"{path} already holds an AssetMesh home; choose another --home")
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
            (path / MESHES_DIR).mkdir(exist_ok=True)
            (path / POOL_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise HomeError(f"cannot create {path}: {exc.strerror}") from None
        hub = cls(path, name, {}, secrets.token_urlsafe(24))
        hub.save()
        return hub

    @classmethod
    def open(cls, path: Path) -> HubHome:
        try:
            doc = json.loads((path / HUB_FILE).read_text())
        except FileNotFoundError:
            raise HomeError(f"{path} is not a hub home: run `mesh --home {path} hub init --name NAME`") from None
        except (OSError, ValueError) as exc:
            raise HomeError(f"{path / HUB_FILE} is unreadable: {exc}") from None
        try:
            meshes = {mesh_id: HubMesh(mesh_id, entry.get("quota_bytes"), str(entry["host"]),
                                       float(entry.get("joined_at", 0)),
                                       tuple((str(h), int(p)) for h, p in entry.get("peers", ())))
                      for mesh_id, entry in doc["meshes"].items()}
            return cls(path, str(doc["name"]), meshes, str(doc["operator_token"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise HomeError(f"{path / HUB_FILE} is damaged or from an incompatible version") from None

    def save(self) -> None:
        doc = {"format": HUB_FORMAT, "name": self.name, "operator_token": self.operator_token,
               "meshes": {mesh_id: entry.to_json() for mesh_id, entry in sorted(self.meshes.items())}}
        try:
            write_atomic(self.path / HUB_FILE, json.dumps(doc, indent=2).encode(), 0o600)
        except OSError as exc:
            raise HomeError(f"cannot write {self.path / HUB_FILE}: {exc.strerror}") from None

    @property
    def pool_path(self) -> Path:
        return self.path / POOL_DIR

    def mesh_path(self, mesh_id: str) -> Path:
        return self.path / MESHES_DIR / mesh_id

    def homes(self) -> list[tuple[HubMesh, Home]]:
        """Every membership with its home, in hub.json's order."""
        return [(entry, Home.open(self.mesh_path(mesh_id))) for mesh_id, entry in sorted(self.meshes.items())]

    def entry(self, mesh_id: str) -> HubMesh:
        """The membership `mesh_id` names (a unique prefix will do)."""
        found = [m for m in self.meshes if m.startswith(mesh_id)] if mesh_id else []
        if len(found) != 1:
            known = ", ".join(m[:12] for m in sorted(self.meshes)) or "none"
            what = "is ambiguous" if found else "is not a mesh of this hub"
            raise UsageError(f"{mesh_id!r} {what} (meshes here: {known}; see `mesh hub ls`)")
        return self.meshes[found[0]]

    def orphans(self) -> list[Path]:
        """Directories under meshes/ that hub.json does not name (an interrupted join or leave)."""
        root = self.path / MESHES_DIR
        return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in self.meshes)

    # ---- memberships --------------------------------------------------------------------------

    def join(self, token: str, quota_bytes: int | None, host: str | None, now: float | None = None,
             peers: tuple[tuple[str, int], ...] = ()) -> Home:
        """Redeem a hub invite into a new mesh home here."""
        from mesh.drivers.enroll import join_home
        from mesh.state.membership import parse_invite

        invite = parse_invite(token)
        if invite.role.value != "hub":
            raise UsageError(f"this invite is for the {invite.role.value} role; a hub joins with "
                             "`mesh invite --role hub` (ask the mesh's organizer)")
        staging = self._staging()
        try:
            home = join_home(staging, token, now=now)
            return self._take(home, staging, quota_bytes, host, now, peers)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def adopt(self, source: Path, quota_bytes: int | None, host: str | None,
              peers: tuple[tuple[str, int], ...] = ()) -> Home:
        """Move an existing single-mesh home in (its store and state come along: nothing is
        fetched again). The source must not be running (its agent lock is free)."""
        from mesh.drivers.agentfiles import agent_running

        home = Home.open(source)
        if agent_running(source):
            raise UsageError(f"an agent is running for {source}: stop it first (Ctrl-C or SIGTERM)")
        if home.info.role == "organizer" and home.authority_key() is not None:
            raise UsageError(f"{source} holds its mesh's authority key: a hub should not; "
                             "join the hub with an invite instead (`mesh invite --role hub`)")
        taken = self._take(home, source, quota_bytes, host, None, peers)
        self.link_into_pool(taken.store_path)
        return taken

    def _take(self, home: Home, source: Path, quota_bytes: int | None, host: str | None,
              now: float | None, peers: tuple[tuple[str, int], ...]) -> Home:
        mesh_id = home.info.mesh_id
        if mesh_id in self.meshes:
            raise UsageError(f"this hub is already a member of mesh {mesh_id[:12]} ({home.info.mesh_name})")
        if len(self.meshes) >= HUB_MESHES_MAX:
            raise UsageError(f"this hub holds {HUB_MESHES_MAX} meshes already; `mesh hub leave` one first")
        host = self._host_for(host)
        target = self.mesh_path(mesh_id)
        if target.exists():
            raise HomeError(f"{target} exists but hub.json does not name it: move it away, or "
                            f"`mesh hub adopt {target}`")
        try:
            os.rename(source, target)
        except OSError as exc:
            raise HomeError(f"cannot move {source} into the hub ({exc.strerror}): it must be on the "
                            "same file system as the hub home") from None
        self.meshes[mesh_id] = HubMesh(mesh_id, quota_bytes, host, time.time() if now is None else now, tuple(peers))
        self.save()
        return Home.open(target)

    def _host_for(self, host: str | None) -> str:
        """A host name of one's choosing, or an unguessable one (`m-XXXXXXXXXX`): a mesh's pages
        on a hub are found by those its organizer tells, never by guessing names."""
        if host is None:
            host = "m-" + secrets.token_hex(6)
        host = host.strip().lower().rstrip(".")
        if not HOST_LABEL.match(host) or len(host) > 253:
            raise UsageError(f"{host!r} is not a host name (letters, digits, hyphens and dots)")
        if any(entry.host == host for entry in self.meshes.values()):
            raise UsageError(f"another mesh of this hub answers on {host!r} already; choose another --host")
        return host

    def _staging(self) -> Path:
        path = self.path / MESHES_DIR / f".joining-{secrets.token_hex(4)}"
        return path

    def set_quota(self, mesh_id: str, quota_bytes: int | None) -> HubMesh:
        entry = self.entry(mesh_id)
        changed = dataclasses.replace(entry, quota_bytes=quota_bytes)
        self.meshes[entry.mesh_id] = changed
        self.save()
        return changed

    def leave(self, mesh_id: str) -> dict:
        """Forget a mesh: hub.json first (it is no longer served), then its home, then the pool
        entries only it linked. Returns {"mesh_id", "bytes_freed"}."""
        from mesh.drivers.agentfiles import agent_running

        entry = self.entry(mesh_id)
        if agent_running(self.path):
            raise UsageError("the hub agent is running: stop it first (Ctrl-C or SIGTERM), then leave")
        home_path = self.mesh_path(entry.mesh_id)
        del self.meshes[entry.mesh_id]
        self.save()
        trash = self.path / MESHES_DIR / f".leaving-{entry.mesh_id}"
        if home_path.exists():
            os.rename(home_path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return {"mesh_id": entry.mesh_id, "bytes_freed": self.sweep_pool()}

    # ---- the pool -----------------------------------------------------------------------------

    def link_into_pool(self, store_path: Path) -> int:
        """Link a store's chunk files into the pool where it lacks them (after `adopt`); the
        pool's existing inode wins for chunks the pool already holds: the store's file is
        replaced by a link to it (the same verified bytes), so the disk holds one copy."""
        linked = 0
        chunks = store_path / "chunks"
        if not chunks.is_dir():
            return 0
        for shard in chunks.iterdir():
            for chunk in shard.iterdir():
                pooled = self.pool_path / shard.name / chunk.name
                if not pooled.exists():
                    pooled.parent.mkdir(exist_ok=True)
                    os.link(chunk, pooled)
                    linked += 1
                elif not os.path.samefile(pooled, chunk) and pooled.stat().st_size == chunk.stat().st_size:
                    tmp = chunk.with_name(chunk.name + ".pool")
                    os.link(pooled, tmp)
                    os.replace(tmp, chunk)
        return linked

    def sweep_pool(self) -> int:
        """Remove pool entries no store links any more (link count 1); the bytes freed."""
        freed = 0
        if not self.pool_path.is_dir():
            return 0
        for shard in self.pool_path.iterdir():
            for pooled in shard.iterdir():
                try:
                    info = pooled.stat()
                    if info.st_nlink == 1:
                        pooled.unlink()
                        freed += info.st_size
                except FileNotFoundError:
                    continue
        return freed

    def disk_bytes(self) -> int:
        """Bytes of chunk data on disk for every mesh here, each inode counted once."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for mesh_id in self.meshes:
            chunks = self.mesh_path(mesh_id) / "store" / "chunks"
            if not chunks.is_dir():
                continue
            for shard in chunks.iterdir():
                for chunk in shard.iterdir():
                    info = chunk.stat()
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        total += info.st_size
        return total

