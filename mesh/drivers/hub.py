"""A co-op hub's runtime: one `Agent` (one `NodeCore`) per mesh of a hub home, in one trio runtime.

- One listener: a stranger's connection is handshaken once (`secure_accept_any`); message 1's
  pre-shared key selects the mesh, every mesh's key being tried, so a stranger or a node of a mesh
  not served here learns nothing of which meshes are (mesh.drivers.channel). The selected mesh's
  agent then runs the session; it never sees another mesh's peers, state or store.
- One pre-authentication gate for all meshes: unproven connections cost the same file
  descriptors whichever mesh they claim.
- Each agent keeps its own home (node identity, state, store index, quota, `run/status.json`) and
  dials out for its own mesh; mDNS announces each mesh's node on the one port, as today.
- One uplink, shared fairly: chunk sends take slots of one `FairShare`, so under contention each
  mesh gets an equal share whatever its number of edges (mesh.drivers.fairshare). Connection
  slots: strangers share one pre-authentication gate; a member's sessions count against its own
  mesh's `sessions_max` only.
- One chunk pool (mesh.drivers.hubhome): the meshes' stores link chunk files they both hold; the
  pool is swept of files no store links every POOL_SWEEP_S.
- One HTTP port: `mesh.gateway.hub` routes by Host to each mesh's app, and answers every other
  host with the hub's own page (which names no mesh) and the operator's `/hub`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from typing import Any

import trio

from mesh.config import AgentConfig
from mesh.core.events import Address
from mesh.drivers.admission import PreAuthGate, preauth_total_max, raise_fd_limit
from mesh.drivers.discovery import discovery_for
from mesh.drivers.fairshare import FairShare
from mesh.drivers.hubhome import HubHome, HubMesh
from mesh.drivers.runtime import Acceptor, Agent, _routine

log = logging.getLogger("mesh.hub")

POOL_SWEEP_S = 600.0  # remove pool files no store links this often
DISK_REFRESH_S = 30.0  # count the chunk data on disk (each inode once) this often


class HubTransport:
    """An agent's `Transport` on a hub: it dials with TCP as usual; its `serve` does not listen
    (the hub's listener hands it its sessions) but reports the hub's listen address."""

    def __init__(self, tcp, address: Address) -> None:
        self._tcp = tcp
        self._address = address

    async def connect(self, address: Address, timeout_s: float) -> trio.abc.Stream:
        return await self._tcp.connect(address, timeout_s)

    async def serve(self, address: Address, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self._address)
        await trio.sleep_forever()


class HubListener:
    """The shared listener's handler: handshake for every running mesh, then the chosen agent."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.agents: list[Agent] = []

    async def accepted(self, stream: trio.abc.Stream, remote: Address | None) -> None:
        live = [agent for agent in self.agents if agent.core is not None]
        if not live:
            return
        captured: list[dict] = [{} for _ in live]
        candidates = [(agent.local, agent.authenticator(seen)) for agent, seen in zip(live, captured)]
        accepted = await self.acceptor.accept(stream, remote, candidates)
        if accepted is not None:
            index, secure = accepted
            await live[index].run_accepted(secure, captured[index]["chain"], remote)


@dataclasses.dataclass
class HubRuntime:
    """What `mesh up` runs on a hub home."""

    hub: HubHome
    config: AgentConfig
    mdns: bool = True
    agents: list[Agent] = dataclasses.field(default_factory=list)
    entries: list[HubMesh] = dataclasses.field(default_factory=list)
    counters: Counter = dataclasses.field(default_factory=Counter)
    listen_address: Address | None = None
    http_listening: Address | None = None  # set once the hub's HTTP side accepts requests
    started_at: float = dataclasses.field(default_factory=time.time)
    _stopped: set = dataclasses.field(default_factory=set)  # agents whose run() returned
    disk_bytes: int | None = None  # chunk data on disk, every inode once (refreshed by `_disk_loop`)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve every mesh until cancelled; `task_status.started(listen_address)`."""
        from mesh.drivers.tcp import TcpTransport

        tcp = TcpTransport()
        acceptor = Acceptor(PreAuthGate(preauth_total_max(raise_fd_limit()[0])), _emit, self.counters)
        listener = HubListener(acceptor)
        share = FairShare()
        async with trio.open_nursery() as nursery:
            self.listen_address = await nursery.start(tcp.serve, self.config.listen, listener.accepted)
            for entry, home in self.hub.homes():
                agent = self._agent(entry, home, tcp)
                agent.upload_share = share
                await nursery.start(self._run_agent, agent)
                listener.agents.append(agent)
                self.agents.append(agent)
                self.entries.append(entry)
                nursery.start_soon(_health, agent)
            nursery.start_soon(self._sweep_loop)
            nursery.start_soon(self._disk_loop)
            nursery.start_soon(self._status_loop)
            _emit("hub.started", listen=f"{self.listen_address[0]}:{self.listen_address[1]}",
                  meshes=len(self.agents))
            task_status.started(self.listen_address)

    def _agent(self, entry: HubMesh, home, tcp) -> Agent:
        config = mesh_config(self.config, entry)
        discovery = discovery_for(home, config) if self.mdns and config.mdns else None
        return Agent(home, config, HubTransport(tcp, self.listen_address), discovery, pool=self.hub.pool_path)

    async def _run_agent(self, agent: Agent, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await agent.run(task_status=task_status)
        self._stopped.add(id(agent))  # its state is compacted and its store closed

    async def shutdown(self, reason: str) -> None:
        """Every mesh closes its sessions politely, at once; returns once each agent finished."""
        async with trio.open_nursery() as nursery:
            for agent in self.agents:
                nursery.start_soon(agent.shutdown, reason)
        while len(self._stopped) < len(self.agents):
            await trio.sleep(0.02)

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(POOL_SWEEP_S)
            try:
                freed = await trio.to_thread.run_sync(self.hub.sweep_pool)
            except OSError as exc:
                log.warning("hub.sweep_failed error=%s", exc)
                continue
            if freed:
                _emit("hub.pool_swept", bytes=freed)

    async def _disk_loop(self) -> None:
        while True:
            try:
                self.disk_bytes = await trio.to_thread.run_sync(self.hub.disk_bytes)
            except OSError as exc:
                log.warning("hub.disk_failed error=%s", exc)
            await trio.sleep(DISK_REFRESH_S)

    async def _status_loop(self) -> None:
        """`run/status.json` of the hub home (what `mesh status` there shows)."""
        from mesh.drivers.agentfiles import write_status

        while True:
            try:
                await trio.to_thread.run_sync(write_status, self.hub.path, self.status())
            except OSError as exc:
                log.warning("status.write_failed error=%s", exc)
            await trio.sleep(self.config.status_interval_s)

    def status(self) -> dict:
        """The hub operator's view: every mesh with its quota, store, peers and health."""
        meshes = []
        for entry, agent in zip(self.entries, self.agents):
            meshes.append(mesh_summary(entry, agent.home, agent.status() if agent.core is not None else None))
        return {"hub": self.hub.name, "name": self.hub.name, "listen": list(self.listen_address or ()),
                "http_listening": list(self.http_listening) if self.http_listening else None,
                "meshes": meshes, "pid": os.getpid(), "updated_at": time.time(),
                "disk_bytes": self.disk_bytes, "started_at": self.started_at, "counters": dict(self.counters)}


def mesh_config(config: AgentConfig, entry: HubMesh) -> AgentConfig:
    """The agent configuration of one mesh on the hub: its quota is its store budget and a hard
    cap on releases; its pages answer on its host name; it dials its own static peers (and the
    config's, which every mesh dials)."""
    budget = entry.quota_bytes if entry.quota_bytes is not None else config.store_budget_bytes
    return dataclasses.replace(config, store_budget_bytes=budget, store_quota_bytes=entry.quota_bytes,
                               http_hosts=(*config.http_hosts, entry.host), peers=(*config.peers, *entry.peers))


def mesh_summary(entry: HubMesh, home, status: dict | None) -> dict:
    """One row of `mesh hub ls` and the /hub page: from the running agent's status, or (agent
    down) from the home's files."""
    doc: dict[str, Any] = {"mesh_id": entry.mesh_id, "name": home.info.mesh_name, "node_id": home.info.node_id,
                           "host": entry.host, "quota": entry.quota_bytes, "running": status is not None}
    if status is not None:
        doc.update({"members": len(status.get("members") or ()), "used": (status.get("store") or {}).get("bytes"),
                    "release": status.get("release"), "peers": len(status.get("peers") or ()),
                    "health": (status.get("health") or {}).get("ok")})
        return doc
    from mesh.drivers.filestore import FileStore
    from mesh.drivers.statefile import StateFile
    from mesh.state.document import actor_id
    from mesh.state.releases import ReleaseBook

    state = StateFile(home.state_path).load(actor_id(home.info.node_id, b"\0" * 8))
    current = ReleaseBook(state, home.info.authority_public_key, time.time()).current()
    store = FileStore(home.store_path)
    try:
        used = store.usage()[1]
    finally:
        store.close()
    others = [m for m in state.members() if m.node_id != home.info.node_id]
    doc.update({"members": len(others), "used": used, "peers": 0, "health": None,
                "release": None if current is None else {"id": current.id, "name": current.name}})
    return doc


async def _health(agent: Agent) -> None:
    from mesh.drivers.health import health_loop

    await health_loop(agent, agent.config)


def _emit(event_name: str, /, **fields: object) -> None:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    level = logging.DEBUG if _routine(event_name, fields) else logging.INFO
    log.log(level, "%s %s", event_name, text, extra={"event": event_name, "fields": fields})
