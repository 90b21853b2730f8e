"""Simulations: the production `NodeCore` on hundreds of simulated nodes (`python -m simulations`).

Every scenario builds a deterministic `mesh.testing.sim.World` over a `SimNetwork` (with the shared
Wi-Fi, WAN sites and churn of `mesh.testing.netmodel`), runs real cores in virtual time, checks
invariants after every step, and returns plain figures (JSON-ready, same seed -> same bytes).
"""
