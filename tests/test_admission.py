"""The bounds on strangers' connections (mesh.drivers.admission), as properties over random histories."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.drivers.admission import FDS_RESERVED, PREAUTH_TOTAL_MAX, PREAUTH_TOTAL_MIN, PreAuthGate, preauth_total_max

# ("admit", source) opens a connection; ("done", n) ends the n-th still tracked one
steps = st.lists(st.one_of(st.tuples(st.just("admit"), st.integers(0, 5)),
                           st.tuples(st.just("done"), st.integers(0, 40))), max_size=200)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 12), st.integers(1, 5))
def test_bounds_hold_and_a_lone_connection_is_shed_last(history, total_max, per_source_max) -> None:
    gate = PreAuthGate(total_max, per_source_max)
    live: dict[int, int] = {}  # key -> source, oldest first
    for number, (op, arg) in enumerate(history):
        if op == "done":
            if live:
                key = list(live)[arg % len(live)]
                gate.done(key)
                del live[key]
            continue
        shed = gate.admit(number, arg)
        for key in shed:  # in the order the gate shed them
            assert key in live, "only tracked connections are shed"
            assert key == next(k for k, s in live.items() if s == live[key]), "its source's oldest goes first"
            counts = Counter(live.values())
            source = live.pop(key)
            if source != arg:  # shed for the total bound: never from a source holding fewer than another
                assert counts[source] == max(counts.values())
        live[number] = arg
        assert len(gate) == len(live) <= total_max
        assert max(Counter(live.values()).values()) <= per_source_max


def test_a_flood_from_one_address_displaces_only_itself() -> None:
    gate = PreAuthGate(total_max=8, per_source_max=4)
    assert gate.admit("member", "192.168.1.20") == []
    shed = [key for n in range(100) for key in gate.admit(n, "192.168.1.66")]
    assert shed == list(range(96)), "the flood's own oldest connections go, in order"
    assert "member" not in shed


def test_the_descriptor_budget_leaves_the_reserve_free() -> None:
    assert preauth_total_max(1024) == (1024 - FDS_RESERVED) // 4
    assert preauth_total_max(1 << 20) == PREAUTH_TOTAL_MAX
    assert preauth_total_max(64) == PREAUTH_TOTAL_MIN
