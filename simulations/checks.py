"""Invariant checks the scenarios add to the World's own (verified blocks, bounded queues).

- `ConsentLedger`: every consent decision a scenario makes is recorded with the revokes its writer
  had actually seen (from the simulator's own books, not from the decision's bytes). After every
  step, on every replica whose heads moved: if a (subject, scope) reads as granted, some grant
  present there must have seen every revoke present there. A failure names the seed.
- `MeshIsolation`: several meshes in one world (hub boxes serving each). Every delivery is checked
  against the mesh of its sender and of its receiver (the simulator's own record of who is who,
  not what the bytes claim): the first byte to cross meshes fails the run. At the end every
  connection joined two nodes of one mesh, every store holds only blocks of its own mesh's
  release (and received bytes of no other chunk), and every replica's members and releases are
  its own mesh's.
- `require_converged`: after a heal, every live replica has identical Automerge heads.
- `require_ratio`: a run whose distribution time exceeds `ratio_max` times its lower bound fails
  (a scheduler that never asks peers misses the bound by about the number of nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.state import consent
from mesh.testing.sim import SimulationError, World


@dataclass
class ConsentLedger:
    """Decisions made during a run and what their writers had seen."""

    seen_by: dict[str, frozenset[str]] = field(default_factory=dict)  # grant id -> revoke ids seen
    pairs: set[tuple[str, str]] = field(default_factory=set)  # (subject, scope) decided on
    _heads: dict[str, tuple] = field(default_factory=dict)  # node -> heads at its last check

    def install(self, world: World) -> None:
        world.invariants.append(self.check)

    def decide(self, world: World, node: str, subject: str, scope: str, grant: bool) -> str:
        """Make a decision on `node` (as the CLI would) and book it; its id."""
        state = world.nodes[node].state
        revokes = frozenset(d.id for d in consent.decisions(state, subject) if d.scope == scope and not d.grant)
        made = world.mutate(node, lambda s: consent.record_decision(s, subject, scope, grant, world.now,
                                                                     world.nodes[node].node_id))
        if grant:
            self.seen_by[made.id] = revokes
        self.pairs.add((made.subject, scope))
        return made.id

    def check(self, world: World) -> None:
        if not self.pairs:
            return
        for handle in world.alive():
            heads = tuple(handle.core.state.heads())
            if self._heads.get(handle.name) == heads:
                continue
            self._heads[handle.name] = heads
            for subject, scope in self.pairs:
                self._check_pair(world, handle.name, subject, scope)

    def _check_pair(self, world: World, node: str, subject: str, scope: str) -> None:
        state = world.nodes[node].state
        found = [d for d in consent.decisions(state, subject) if d.scope == scope]
        revokes = {d.id for d in found if not d.grant}
        if not revokes or not consent.consent_state(state, subject, scope, consent.Policies()):
            return
        honest = [d for d in found if d.grant and revokes <= self.seen_by.get(d.id, frozenset())]
        if not honest:
            raise world.fail(f"consent revoke undone on {node}: {subject}/{scope} reads granted, but no "
                             f"grant there had seen revokes {sorted(revokes)}")


@dataclass
class MeshIsolation:
    """What reached each node of a multi-mesh world, by the sender's mesh."""

    crossed: list[str] = field(default_factory=list)  # "sender -> receiver (kinds)" across meshes
    delivered: dict[str, int] = field(default_factory=dict)  # receiver -> bytes delivered to it
    chunks_in: dict[str, set[bytes]] = field(default_factory=dict)  # receiver -> chunk CIDs it got bytes of

    @classmethod
    def install(cls, world: World) -> MeshIsolation:
        isolation = cls()
        world.observers.append(isolation.observe)
        return isolation

    def observe(self, world: World, handle, event, summary: tuple) -> None:
        sender = world.nodes[world.endpoints[world.endpoints[event.conn_id].peer_conn_id].node]
        if sender.identity.mesh_id != handle.identity.mesh_id:  # fail at once, naming the seed
            kinds = ",".join(kind for kind, _, _ in summary)
            self.crossed.append(f"{sender.name} -> {handle.name} ({kinds})")
            raise world.fail(f"bytes crossed meshes: {self.crossed[-1]}")
        self.delivered[handle.name] = self.delivered.get(handle.name, 0) + len(event.data)
        chunks = [chunk[0] for kind, _, chunk in summary if kind == "ChunkData"]
        if chunks:
            self.chunks_in.setdefault(handle.name, set()).update(chunks)

    def require(self, world: World, blocks: dict[str, set], releases: dict[str, str]) -> None:
        """Fail unless nothing crossed meshes; `blocks` and `releases` by mesh name, whose
        `World.meshes` entry says its id."""
        by_id = {world.meshes[name].mesh_id: name for name in blocks}
        if self.crossed:
            raise world.fail(f"{len(self.crossed)} deliveries crossed meshes, e.g. {self.crossed[:3]}")
        for endpoint in world.endpoints.values():
            a, b = world.nodes[endpoint.node], world.nodes[world.endpoints[endpoint.peer_conn_id].node]
            if a.identity.mesh_id != b.identity.mesh_id:
                raise world.fail(f"a connection joined {a.name} and {b.name} of different meshes")
        for handle in world.nodes.values():
            self._require_own(world, handle, by_id[handle.identity.mesh_id], blocks, releases, by_id)

    def _require_own(self, world: World, handle, mesh: str, blocks: dict[str, set], releases: dict[str, str],
                     by_id: dict[str, str]) -> None:
        own = blocks[mesh]
        foreign = [str(cid) for cid in handle.store.cids() if cid not in own]
        if foreign:
            raise world.fail(f"{handle.name} (mesh {mesh}) stores {len(foreign)} blocks of another mesh")
        own_raw = {cid.to_bytes() for cid in own}
        got = self.chunks_in.get(handle.name, set()) - own_raw
        if got:
            raise world.fail(f"{handle.name} (mesh {mesh}) received bytes of {len(got)} chunks of another mesh")
        state = handle.state
        members = {m.node_id for m in state.members()}
        strangers = [world.name_of(n) for n in members if n in world._by_node_id
                     and world.nodes[world.name_of(n)].identity.mesh_id != handle.identity.mesh_id]
        if strangers:
            raise world.fail(f"{handle.name}'s state lists members of another mesh: {strangers[:3]}")
        others = {releases[name] for name in releases if name != mesh}
        if others & set(state.release_blobs()):
            raise world.fail(f"{handle.name}'s state holds another mesh's release")

    def figures(self) -> dict:
        return {"cross_mesh_deliveries": len(self.crossed), "nodes_checked": len(self.delivered),
                "bytes_checked": sum(self.delivered.values())}


def require_converged(world: World, names: list[str] | None = None) -> None:
    chosen = names or [h.name for h in world.alive()]
    heads = {n: tuple(world.nodes[n].state.heads()) for n in chosen}
    if len(set(heads.values())) > 1:
        groups: dict[tuple, list[str]] = {}
        for name, h in heads.items():
            groups.setdefault(h, []).append(name)
        raise world.fail(f"replicas differ after heal: {len(groups)} distinct head sets "
                         f"(sizes {sorted(len(g) for g in groups.values())})")


def require_ratio(world: World, ratio: float, ratio_max: float | None, what: str) -> None:
    if ratio_max is not None and ratio > ratio_max:
        raise SimulationError(f"seed={world.seed}: {what} took {ratio:.2f}x its lower bound "
                              f"(allowed {ratio_max:.2f}x); replay with --seed {world.seed}")
