"""Limited drops in the shared state (mesh.state.drops): signatures, orders, transfers, reclaims,
and Hypothesis over random concurrent histories: every replica, at every moment, has sold plus
reserved <= stock; replicas that merged the same entries in any order agree; without reclaims no
order a box handed out is ever voided."""

from __future__ import annotations

import itertools
import random

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import NotFoundError, UsageError
from mesh.state import drops as dr
from mesh.state.document import MeshState, actor_id
from mesh.testing.identities import TestMesh

NOW = 1_800_000_000.0
MESH = TestMesh(random.Random(24), NOW)
ORG = MESH.founder
EDGES = [MESH.add_member(f"edge-{i}", "edge", NOW) for i in range(3)]
STRANGER = TestMesh(random.Random(99), NOW).founder  # another mesh's organizer


def signer(identity) -> dr.Signer:
    return dr.Signer(MESH.authority_public_key, identity.key, identity.chain)


def fresh(name: str = "r") -> MeshState:
    return MeshState(actor_id(name, random.Random(name).randbytes(8)))


def new_drop(state: MeshState, stock: int, alloc: dict, **extra) -> str:
    fields = {"price": "25EUR", "tag": "merch", "pay_url": "https://pay.example/p/{order}", **extra}
    made = dr.create_drop(MESH.authority_public_key, ORG.key, ORG.chain, "Signed print", stock,
                          fields["price"], fields["tag"], fields["pay_url"], alloc, NOW)
    return dr.put_statement(state, made)


def tally(state: MeshState, drop_id: str, now: float = NOW) -> dr.Tally:
    return dr.DropBook(state, MESH.authority_public_key, now).tally(drop_id)


def test_create_reserve_sell_close() -> None:
    state = fresh()
    drop_id = new_drop(state, 10, {EDGES[0].node_id: 4})
    t = tally(state, drop_id)
    assert (t.drop.stock, t.sold, t.reserved, t.node(EDGES[0].node_id).left, t.node(ORG.node_id).left) == (10, 0, 0, 4, 6)
    rng = random.Random(1)
    order = dr.reserve(state, signer(EDGES[0]), drop_id, NOW, rng)
    assert len(order.code) == dr.ORDER_CODE_CHARS and order.expires == NOW + dr.RESERVATION_TTL_S_DEFAULT
    assert dr.pay_link(t.drop, order.code) == f"https://pay.example/p/{order.code}"
    dr.mark_paid(state, signer(EDGES[0]), drop_id, order.code.lower(), NOW + 1)
    t = tally(state, drop_id)
    assert (t.sold, t.reserved, t.left, t.node(EDGES[0].node_id).left) == (1, 0, 9, 3)
    closed = dr.close(state, signer(ORG), drop_id, NOW + 2)
    assert closed.closed and closed.sold == 1
    with pytest.raises(UsageError, match="closed"):
        dr.reserve(state, signer(EDGES[0]), drop_id, NOW + 3, rng)


def test_selling_past_allowance_is_refused_and_changes_nothing() -> None:
    state = fresh()
    drop_id = new_drop(state, 3, {EDGES[0].node_id: 1})
    dr.reserve(state, signer(EDGES[0]), drop_id, NOW, random.Random(2))
    heads = state.heads()
    with pytest.raises(UsageError, match="allowance is used up.*about 2 left elsewhere"):
        dr.reserve(state, signer(EDGES[0]), drop_id, NOW, random.Random(3))
    assert state.heads() == heads


def test_unknown_order_settled_order_and_foreign_order_are_refused() -> None:
    state = fresh()
    drop_id = new_drop(state, 5, {EDGES[0].node_id: 2, EDGES[1].node_id: 2})
    order = dr.reserve(state, signer(EDGES[0]), drop_id, NOW, random.Random(4))
    with pytest.raises(UsageError, match="no order"):
        dr.mark_paid(state, signer(EDGES[0]), drop_id, "ZZZZZZ", NOW)
    with pytest.raises(UsageError, match="not an order code"):
        dr.mark_paid(state, signer(EDGES[0]), drop_id, "12", NOW)
    with pytest.raises(UsageError, match="another box"):
        dr.mark_paid(state, signer(EDGES[1]), drop_id, order.code, NOW)
    dr.cancel(state, signer(EDGES[0]), drop_id, order.code, NOW)
    with pytest.raises(UsageError, match="is cancelled"):
        dr.mark_paid(state, signer(EDGES[0]), drop_id, order.code, NOW)
    with pytest.raises(NotFoundError):
        tally(state, "a" * 16)


def test_bad_drop_fields_are_refused() -> None:
    state = fresh()
    with pytest.raises(UsageError, match="exceeds the stock"):
        new_drop(state, 2, {EDGES[0].node_id: 3})
    with pytest.raises(UsageError, match="pay URL"):
        new_drop(state, 2, {}, pay_url="ftp://x")
    with pytest.raises(UsageError, match="stock"):
        new_drop(state, 0, {})
    with pytest.raises(Exception, match="only organizers"):
        dr.create_drop(MESH.authority_public_key, EDGES[0].key, EDGES[0].chain, "x", 1, "1EUR", None, None, {}, NOW)


def test_expired_reservations_return_to_the_allowance() -> None:
    state = fresh()
    drop_id = new_drop(state, 1, {EDGES[0].node_id: 1})
    first = dr.reserve(state, signer(EDGES[0]), drop_id, NOW, random.Random(5), ttl_s=60)
    second = dr.reserve(state, signer(EDGES[0]), drop_id, NOW + 61, random.Random(6), ttl_s=60)
    t = tally(state, drop_id, NOW + 61)
    assert t.orders[(EDGES[0].node_id, first.code)].status == dr.CANCELLED
    assert t.orders[(EDGES[0].node_id, second.code)].status == dr.RESERVED
    assert (t.reserved, t.left) == (1, 0)


def test_transfers_move_allowance_and_answer_requests() -> None:
    a, b = signer(EDGES[0]), signer(EDGES[1])
    state = fresh()
    drop_id = new_drop(state, 10, {a.node_id: 0, b.node_id: 10})
    with pytest.raises(UsageError, match="used up"):
        dr.reserve(state, a, drop_id, NOW, random.Random(7))
    request = dr.ask(state, a, drop_id, 4, NOW)
    assert [x.id for x in tally(state, drop_id).open_asks()] == [request.id]
    made = dr.answer_asks(state, b, NOW)
    assert [(g.to, g.n, g.ref) for g in made] == [(a.node_id, 4, request.id)]
    t = tally(state, drop_id)
    assert (t.node(a.node_id).left, t.node(b.node_id).left, t.open_asks()) == (4, 6, [])
    assert dr.answer_asks(state, b, NOW) == []  # answered once
    dr.reserve(state, a, drop_id, NOW, random.Random(8))
    with pytest.raises(UsageError, match="units left to give"):
        dr.give(state, a, drop_id, b.node_id, 4, NOW)


def test_a_box_answers_at_most_half_of_what_it_has_left() -> None:
    a, b = signer(EDGES[0]), signer(EDGES[1])
    state = fresh()
    drop_id = new_drop(state, 3, {a.node_id: 0, b.node_id: 3})
    for expected in ([1], [1], []):  # 3 left: gives 1; 2 left: gives 1; 1 left (< ANSWER_SPARE_MIN): none
        dr.ask(state, a, drop_id, 10, NOW)
        assert [g.n for g in dr.answer_asks(state, b, NOW)] == expected
    assert tally(state, drop_id).node(b.node_id).left == 1


def _forged_give(state: MeshState, drop_id: str, victim, thief) -> None:
    """An op claiming to be `victim`'s transfer to `thief`, signed with the thief's key."""
    body = {"kind": "drop-op", "mesh": MESH.mesh_id, "drop": drop_id, "node": victim.node_id, "seq": 1,
            "op": "give", "ref": None, "n": 5, "to": thief.node_id, "expires": None, "at": NOW}
    body_bytes = cbor2.dumps(body, canonical=True)
    blob = cbor2.dumps([body_bytes, thief.key.sign(b"assetmesh/v1/drop-op\x00" + body_bytes)], canonical=True)
    op_id = dr.statement_id(body_bytes)
    state.put_drop_entry(f"o/{drop_id}/{victim.node_id}/1/{op_id}", blob)


def test_forged_transfers_and_statements_are_ignored() -> None:
    state = fresh()
    drop_id = new_drop(state, 5, {EDGES[0].node_id: 5})
    _forged_give(state, drop_id, EDGES[0], EDGES[1])
    state.put_drop_entry(f"o/{drop_id}/{EDGES[0].node_id}/2/junk", b"\xff junk")
    made = dr.create_drop(STRANGER.authority_public_key, STRANGER.key, STRANGER.chain, "fake", 5, "1EUR", None,
                          None, {}, NOW)
    dr.put_statement(state, made)  # another mesh's organizer: not a drop here
    book = dr.DropBook(state, MESH.authority_public_key, NOW)
    assert [d.id for d in book.drops()] == [drop_id]
    t = book.tally(drop_id)
    assert (t.node(EDGES[0].node_id).left, t.node(EDGES[1].node_id).left) == (5, 0)
    with pytest.raises(UsageError, match="used up"):
        dr.reserve(state, signer(EDGES[1]), drop_id, NOW, random.Random(9))


def test_reclaim_of_a_dead_box_never_double_spends() -> None:
    org, a = signer(ORG), signer(EDGES[0])
    home = fresh("org")
    drop_id = new_drop(home, 6, {a.node_id: 4})
    box = fresh("box")
    box.merge(home)
    sold_before = dr.reserve(box, a, drop_id, NOW, random.Random(10))
    home.merge(box)  # the organizer saw one reservation, then the box went dark
    cut_off = [dr.reserve(box, a, drop_id, NOW + i, random.Random(20 + i)) for i in range(3)]
    taken = dr.reclaim(home, org, drop_id, a.node_id, NOW + 10)
    assert (taken.amount, taken.upto) == (3, 1)
    for i in range(5):  # the organizer sells what it took back, and its own 2
        dr.reserve(home, org, drop_id, NOW + 11 + i, random.Random(40 + i))
    home.merge(box)
    box.merge(home)
    for state in (home, box):
        t = tally(state, drop_id)
        assert t.sold + t.reserved == 6
        assert t.orders[(a.node_id, sold_before.code)].status == dr.RESERVED
        assert {t.orders[(a.node_id, o.code)].status for o in cut_off} == {dr.VOID}
        assert t.node(a.node_id).void == 3
    with pytest.raises(UsageError, match="used up"):
        dr.reserve(box, a, drop_id, NOW + 20, random.Random(50))


def test_a_box_that_got_more_than_the_organizer_saw_keeps_those_sales() -> None:
    org, a, b = signer(ORG), signer(EDGES[0]), signer(EDGES[1])
    home = fresh("org")
    drop_id = new_drop(home, 6, {a.node_id: 2, b.node_id: 4})
    box_a, box_b = fresh("a"), fresh("b")
    box_a.merge(home)
    box_b.merge(home)
    dr.give(box_b, b, drop_id, a.node_id, 2, NOW)  # only a learns of this transfer
    box_a.merge(box_b)
    dr.reclaim(home, org, drop_id, a.node_id, NOW + 1)  # the organizer saw a holding 2
    kept = [dr.reserve(box_a, a, drop_id, NOW + 2 + i, random.Random(60 + i)) for i in range(4)]
    for state in (box_a, box_b):
        home.merge(state)
    t = tally(home, drop_id)
    statuses = [t.orders[(a.node_id, o.code)].status for o in kept]
    assert statuses.count(dr.RESERVED) == 2 and statuses.count(dr.VOID) == 2
    assert t.sold + t.reserved + t.left == 6 and t.node(org.node_id).left == 2


# --- random concurrent histories ------------------------------------------------------------------

ACTORS = [ORG] + EDGES
ACTION = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 3)),
    st.tuples(st.just("pay"), st.integers(0, 3), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 3), st.integers(0, 50)),
    st.tuples(st.just("give"), st.integers(0, 3), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("ask"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("answer"), st.integers(0, 3)),
    st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("reclaim"), st.integers(1, 3)),
    st.tuples(st.just("forge"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("close"),),
)


def _apply(replicas: list[MeshState], drop_id: str, action: tuple, step: int, handed: list) -> None:
    kind, now, rng = action[0], NOW + step, random.Random(step)
    try:
        if kind == "reserve":
            order = dr.reserve(replicas[action[1]], signer(ACTORS[action[1]]), drop_id, now, rng, ttl_s=30)
            handed.append((ACTORS[action[1]].node_id, order.code))
        elif kind in ("pay", "cancel"):
            t = tally(replicas[action[1]], drop_id, now)
            mine = [c for (n, c) in sorted(t.orders) if n == ACTORS[action[1]].node_id]
            if mine:
                do = dr.mark_paid if kind == "pay" else dr.cancel
                do(replicas[action[1]], signer(ACTORS[action[1]]), drop_id, mine[action[2] % len(mine)], now)
        elif kind == "give":
            if action[1] != action[2]:
                dr.give(replicas[action[1]], signer(ACTORS[action[1]]), drop_id, ACTORS[action[2]].node_id,
                        action[3], now)
        elif kind == "ask":
            dr.ask(replicas[action[1]], signer(ACTORS[action[1]]), drop_id, action[2], now)
        elif kind == "answer":
            dr.answer_asks(replicas[action[1]], signer(ACTORS[action[1]]), now)
        elif kind == "sync":
            if action[1] != action[2]:
                replicas[action[1]].merge(replicas[action[2]])
        elif kind == "reclaim":
            dr.reclaim(replicas[0], signer(ORG), drop_id, ACTORS[action[1]].node_id, now)
        elif kind == "forge":
            _forged_give(replicas[action[1]], drop_id, ACTORS[action[1]], ACTORS[action[2]])
        elif kind == "close":
            dr.close(replicas[0], signer(ORG), drop_id, now)
    except UsageError:
        pass  # refused locally: nothing written


def _check(state: MeshState, drop_id: str, stock: int) -> dr.Tally:
    t = tally(state, drop_id, NOW + 1000)
    assert t.sold + t.reserved <= stock
    assert all(n.left >= 0 for n in t.nodes.values())
    return t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stock=st.integers(1, 12), split=st.lists(st.integers(0, 4), min_size=3, max_size=3),
       history=st.lists(ACTION, min_size=1, max_size=40), order_seed=st.integers(0, 1000))
def test_random_histories_never_oversell_and_merge_to_one_tally(stock, split, history, order_seed) -> None:
    alloc = {}
    for edge, units in zip(EDGES, split):
        if sum(alloc.values()) + units <= stock:
            alloc[edge.node_id] = units
    genesis = fresh("genesis")
    drop_id = new_drop(genesis, stock, alloc)
    replicas = []
    for i in range(4):
        replicas.append(fresh(f"n{i}"))
        replicas[-1].merge(genesis)
    handed: list = []
    for step, action in enumerate(history):
        _apply(replicas, drop_id, action, step, handed)
        for state in replicas:
            _check(state, drop_id, stock)
    orders = [list(range(4)), list(reversed(range(4)))]
    orders.append(random.Random(order_seed).sample(range(4), 4))
    results = []
    for order in orders:
        merged = fresh(f"m{order}")
        for i in order:
            merged.merge(replicas[i])
        results.append(_check(merged, drop_id, stock).as_json())
    assert results[0] == results[1] == results[2]
    reclaimed = any(a[0] == "reclaim" for a in history)
    if not reclaimed:  # no reclaim: no order a box handed out was ever voided by what it learned later
        final = tally(merged, drop_id, NOW + 1000)
        assert all(final.orders[key].status != dr.VOID for key in handed)


def test_merge_is_order_independent_for_a_busy_history() -> None:
    """A fixed, busier history than Hypothesis draws: 4 replicas, 200 steps."""
    rng = random.Random(2024)
    genesis = fresh("g")
    drop_id = new_drop(genesis, 20, {EDGES[0].node_id: 5, EDGES[1].node_id: 5, EDGES[2].node_id: 5})
    replicas = [fresh(f"x{i}") for i in range(4)]
    for state in replicas:
        state.merge(genesis)
    kinds = ["reserve"] * 5 + ["pay"] * 2 + ["cancel", "give", "ask", "answer", "sync", "sync", "reclaim"]
    for step in range(200):
        kind = rng.choice(kinds)
        args = {"reserve": (rng.randrange(4),), "pay": (rng.randrange(4), rng.randrange(50)),
                "cancel": (rng.randrange(4), rng.randrange(50)),
                "give": (rng.randrange(4), rng.randrange(4), rng.randint(1, 3)),
                "ask": (rng.randrange(4), rng.randint(1, 3)), "answer": (rng.randrange(4),),
                "sync": (rng.randrange(4), rng.randrange(4)), "reclaim": (rng.randrange(1, 4),)}[kind]
        _apply(replicas, drop_id, (kind, *args), step, [])
        for state in replicas:
            _check(state, drop_id, 20)
    tallies = set()
    for order in itertools.permutations(range(4)):
        merged = fresh("p")
        for i in order:
            merged.merge(replicas[i])
        tallies.add(repr(sorted(_check(merged, drop_id, 20).as_json().items())))
    assert len(tallies) == 1
