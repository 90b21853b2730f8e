"""The lower bounds the simulations are judged against: a bound that cannot be reached would
make a good scheduler look slow, and one that can be beaten would hide a slow one."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulations.measure import parts_bound_s


def fewest_part_times(clients: int, parts: int) -> int:
    """By exhaustive search: the fewest steps in which a seed holding `parts` equal parts and
    `clients` empty peers give every client every part, when each node uploads one whole part per
    step (to one peer) and a part can be forwarded only from the step after it arrived."""
    full = (1 << parts) - 1
    frontier, steps = {(0,) * clients}, 0
    while not any(all(held == full for held in state) for state in frontier):
        following = set()
        for state in frontier:
            choices = [[None] + [(part, to) for part in range(parts) if held >> part & 1
                                 for to in range(clients) if not state[to] >> part & 1]
                       for held in (full, *state)]
            for sends in itertools.product(*choices):
                after = list(state)
                for send in sends:
                    if send is not None:
                        after[send[1]] |= 1 << send[0]
                following.add(tuple(sorted(after)))  # clients are alike: their order does not matter
        frontier, steps = following, steps + 1
    return steps


@pytest.mark.parametrize(("clients", "parts"), [(1, 1), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2)])
def test_the_parts_bound_is_the_least_time_of_every_small_swarm(clients: int, parts: int) -> None:
    part, rate = 1000, 250.0  # four seconds a part
    least = fewest_part_times(clients, parts) * part / rate
    assert parts_bound_s(parts * part, part, clients, rate) == pytest.approx(least)


@given(st.integers(1, 10_000), st.integers(1, 64), st.integers(1, 10**9), st.integers(1, 512))
def test_the_parts_bound_is_never_below_the_fluid_bound_nor_far_above_it(
        part: int, parts: int, rate: int, clients: int) -> None:
    file_bytes = part * parts
    bound = parts_bound_s(file_bytes, part, clients, rate)
    assert file_bytes / rate <= bound <= (file_bytes + clients.bit_length() * part) / rate
    if clients == 1:
        assert bound == file_bytes / rate  # one client: the seed sends each part once, nothing to forward
