"""Limited drops: sales per second at one box, time until a sale is visible on every box, and how
long a box that runs dry waits for allowance from the others.

    python bench/drops_bench.py [--sales 200] [--json]

1. Sales at one box: each sale is what `mesh drop reserve` then `mesh drop sell` do, minus process
   start-up: a state-file transaction (lock, read the log, sign, append with fsync) reserving one
   unit, and one marking it paid, on a real home in a temporary directory. Baseline in the same run:
   twice as many consent grants (`mesh consent grant`'s transaction), on another fresh home.
2. Visibility and rebalancing: real NodeCores in the deterministic World (an organizer and three
   boxes on a LAN, default latency), virtual seconds: a sale at box-0 until every node's tally shows
   it, against a consent grant at box-0 until every node holds it; box-0 selling out its allowance
   until the other boxes' answers to its automatic request let it sell again.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mesh.drivers.home import Home
from mesh.drivers.statefile import StateFile
from mesh.state import consent as cs
from mesh.state import drops as dr
from mesh.state.document import actor_id
from mesh.testing.sim import World


def _actor(home: Home) -> bytes:
    return actor_id(home.info.node_id, random.randbytes(8))


def _fresh_home(tmp: str, name: str) -> tuple[Home, StateFile]:
    path = Path(tmp) / name
    subprocess.run([sys.executable, "-m", "mesh", "--home", str(path), "init", "bench"], check=True,
                   capture_output=True)
    home = Home.open(path)
    return home, StateFile(home.state_path)


def sales_at_one_box(sales: int) -> dict:
    """Each in a fresh home, so both start from the same log: a sale is two transactions (reserve,
    sell), the baseline two consent grants."""
    with tempfile.TemporaryDirectory() as tmp:
        home, statefile = _fresh_home(tmp, "grants")
        codes = [cs.new_subject_code(random.Random(i)) for i in range(2 * sales)]
        started = time.perf_counter()
        for code in codes:
            with statefile.transaction(_actor(home)) as state:
                cs.record_decision(state, code, "photo", True, time.time(), home.info.node_id)
        grants_s = time.perf_counter() - started

        home, statefile = _fresh_home(tmp, "box")
        signer = dr.Signer(home.info.authority_public_key, home.node_key(), home.info.chain)
        with statefile.transaction(_actor(home)) as state:
            made = dr.create_drop(home.info.authority_public_key, home.node_key(), home.info.chain, "bench", sales,
                                  "1EUR", None, None, {}, time.time())
            drop_id = dr.put_statement(state, made)
        rng = random.Random(1)
        started = time.perf_counter()
        for _ in range(sales):
            with statefile.transaction(_actor(home)) as state:
                order = dr.reserve(state, signer, drop_id, time.time(), rng)
            with statefile.transaction(_actor(home)) as state:
                dr.mark_paid(state, signer, drop_id, order.code, time.time())
        sales_s = time.perf_counter() - started
        state = statefile.load(_actor(home))
        started = time.perf_counter()
        tally = dr.DropBook(state, home.info.authority_public_key, time.time()).tally(drop_id)
        tally_ms = (time.perf_counter() - started) * 1000
    assert tally.sold == sales
    return {"sales": sales, "sales_per_s": sales / sales_s, "grant_pairs_per_s": sales / grants_s,
            "ratio_vs_grant_pairs": grants_s / sales_s, "tally_ms_at_end": tally_ms}


def _world() -> tuple[World, str]:
    world = World(7)
    world.add_node("org", identity=world.mesh.founder)
    for name in ("box-0", "box-1", "box-2"):
        world.add_node(name)
        identity = world.node(name).identity
        world.node(name).live_core().drop_signer = dr.Signer(world.mesh.authority_public_key, identity.key)
    world.discover_all()
    world.run_until(lambda w: w.all_connected(), 30, "connected")
    founder = world.mesh.founder
    shares = {world.node(n).node_id: 4 for n in ("box-0", "box-1", "box-2")}
    made = dr.create_drop(world.mesh.authority_public_key, founder.key, founder.chain, "bench", 12, "1EUR", None,
                          None, shares, world.now)
    drop_id = world.mutate("org", lambda s: dr.put_statement(s, made))
    world.run_until(lambda w: w.converged(), 30, "drop everywhere")
    return world, drop_id


def _tally(world: World, name: str, drop_id: str) -> dr.Tally:
    return dr.DropBook(world.node(name).state, world.mesh.authority_public_key, world.now).tally(drop_id)


def visibility() -> dict:
    world, drop_id = _world()
    names = list(world.nodes)
    box = world.node("box-0")
    signer = dr.Signer(world.mesh.authority_public_key, box.identity.key)
    world.run_for(5.0)
    order = world.mutate("box-0", lambda s: dr.reserve(s, signer, drop_id, world.now, random.Random(1)))
    world.mutate("box-0", lambda s: dr.mark_paid(s, signer, drop_id, order.code, world.now))
    sale_s = world.run_until(lambda w: all(_tally(w, n, drop_id).sold == 1 for n in names), 30, "sale everywhere")
    world.run_for(5.0)
    code = cs.new_subject_code(random.Random(2))
    world.mutate("box-0", lambda s: cs.record_decision(s, code, "photo", True, world.now, box.node_id))
    grant_s = world.run_until(lambda w: all(any(k.startswith(code) for k in w.node(n).state.consent_decision_keys())
                                            for n in names), 30, "grant everywhere")
    world.run_for(5.0)
    for _ in range(3):  # box-0 sells out its 4 (it asks by itself when 1 is left)
        world.mutate("box-0", lambda s: dr.reserve(s, signer, drop_id, world.now, random.Random()))
    assert _tally(world, "box-0", drop_id).node(box.node_id).left == 0
    refill_s = world.run_until(lambda w: _tally(w, "box-0", drop_id).node(box.node_id).left > 0, 30,
                               "box-0 refilled")
    return {"sale_visible_everywhere_s": sale_s, "grant_visible_everywhere_s": grant_s,
            "ratio_vs_grant": sale_s / grant_s, "refill_after_running_dry_s": refill_s,
            "refilled_units": _tally(world, "box-0", drop_id).node(box.node_id).left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"one_box": sales_at_one_box(args.sales), "world": visibility()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    one, w = result["one_box"], result["world"]
    print(f"sales at one box ({one['sales']} reserve+sell): {one['sales_per_s']:.1f}/s; pairs of consent grants "
          f"{one['grant_pairs_per_s']:.1f}/s; ratio {one['ratio_vs_grant_pairs']:.2f}; tally of the drop at the end "
          f"(fresh read, cold book) {one['tally_ms_at_end']:.1f} ms")
    print(f"a sale visible on all 4 nodes after {w['sale_visible_everywhere_s']:.3f} virtual s; a grant after "
          f"{w['grant_visible_everywhere_s']:.3f} s (ratio {w['ratio_vs_grant']:.2f})")
    print(f"box-0 ran dry, allowance back after {w['refill_after_running_dry_s']:.3f} virtual s "
          f"({w['refilled_units']} units)")


if __name__ == "__main__":
    main()
