"""Invariant checks the scenarios add to the World's own (verified blocks, bounded queues).

- `ConsentLedger`: every consent decision a scenario makes is recorded with the revokes its writer
  had actually seen (from the simulator's own books, not from the decision's bytes). After every
  step, on every replica whose heads moved: if a (subject, scope) reads as granted, some grant
  present there must have seen every revoke present there. A failure names the seed.
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
