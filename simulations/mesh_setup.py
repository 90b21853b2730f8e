"""Building simulated meshes: identities, a shared document, placement in the network model.

Nodes start from one shared document that already lists every member and invite use (members
that met before the run), so a scenario measures what it is about (a release, one change, churn)
and not a thousand first meetings. Stores share one `ContentPool`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.config import CoreLimits
from mesh.state.document import MeshState, actor_id
from mesh.state.membership import InviteLedger, verify_chain
from mesh.testing.identities import MemberIdentity, TestMesh
from mesh.testing.sim import ContentPool, SeedDocument, SimNetwork, World

LATENCY_S = 0.002  # one-way latency on a venue LAN
# No peer exchange: the session graph is the discovery graph the scenario chose (see docs).
SIM_LIMITS = CoreLimits(pex_peers_max=0)


@dataclass(frozen=True)
class Placement:
    """Where one node sits in the network model."""

    name: str  # node name ("seed" is the organizer, the mesh founder)
    role: str = "edge"  # organizer, hub or edge
    upload_bytes_per_s: float | None = None  # its own uplink cap (None: unlimited)
    download_bytes_per_s: float | None = None  # its own downlink cap
    medium: str | None = None  # Wi-Fi access point it is a station of
    site: str | None = None  # its site (venue) for WAN scenarios
    public: bool = True  # reachable from other sites
    host: str | None = None  # runs on this (earlier placed) node's machine: a hub's core for another mesh


def new_world(seed: int, latency_s: float = LATENCY_S, limits: CoreLimits = SIM_LIMITS) -> World:
    network = SimNetwork(random.Random(f"{seed}/network"), latency_s=latency_s)
    return World(seed, limits=limits, network=network, pool=ContentPool())


def identities(world: World, placements: list[Placement], mesh: TestMesh | None = None) -> dict[str, MemberIdentity]:
    """The founder for "seed" (or the first organizer), invited members for the rest (of the
    world's mesh, or of `mesh`)."""
    mesh = mesh or world.mesh
    found: dict[str, MemberIdentity] = {}
    for place in placements:
        if place.name == "seed" or (not found and place.role == "organizer"):
            found[place.name] = mesh.founder
        else:
            found[place.name] = mesh.add_member(place.name, place.role, world.now)
    return found


def shared_document(world: World, people: dict[str, MemberIdentity], mesh: TestMesh | None = None) -> SeedDocument:
    """A document listing every member and its invite use, as after everyone met once."""
    mesh = mesh or world.mesh
    state = MeshState(actor_id(mesh.founder.node_id, random.Random(f"{world.seed}/doc").randbytes(8)))
    ledger = InviteLedger()
    authority = mesh.authority_public_key

    def body(s: MeshState) -> None:
        for identity in people.values():
            verify_chain(identity.chain, authority, world.now, invite_ledger=ledger)
            s.put_member(identity.node_id, identity.chain, identity.role.value, identity.name, world.now)
        for invite_id, node_id, _ in ledger.items():
            s.record_invite_use(invite_id, node_id, world.now)

    body(state)
    return SeedDocument.of(state)


def populate(world: World, placements: list[Placement], mesh: TestMesh | None = None) -> None:
    """Add every placed node, all holding the shared document (of the world's mesh, or `mesh`'s)."""
    people = identities(world, placements, mesh)
    document = shared_document(world, people, mesh)
    for place in placements:
        world.add_node(place.name, place.role, identity=people[place.name],
                       upload_bytes_per_s=place.upload_bytes_per_s,
                       download_bytes_per_s=place.download_bytes_per_s,
                       medium=place.medium, site=place.site, public=place.public, document=document,
                       host=place.host)


def discover_edges(world: World, edges: dict[str, list[str]]) -> None:
    for a, targets in edges.items():
        for b in targets:
            world.discover(a, b)


def settle(world: World, done, timeout_s: float, what: str, step_s: float = 0.25) -> float:
    """Run in slices of `step_s` until `done(world)`; virtual seconds taken, SimulationError on timeout.
    (Checking a thousand-node predicate after every event would cost more than the events.)"""
    started = world.now
    while not done(world):
        if world.now - started > timeout_s:
            raise world.fail(f"{what} not reached within {timeout_s} virtual s")
        world.run_for(step_s)
    return world.now - started


def sessions_up(world: World, edges: dict[str, list[str]]) -> bool:
    """Every discovery edge between live nodes has a ready session."""
    for a, targets in edges.items():
        if not world.nodes[a].alive:
            continue
        peers = world.nodes[a].peer_names()
        if any(b not in peers and world.nodes[b].alive for b in targets):
            return False
    return True
