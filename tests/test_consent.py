"""Consent, retention and analytics (issue 6, requirements 1, 2, 3, 7): the merge rule under
random concurrent histories, organizer-only policies, expiry with skew, grow-only view counters."""

from __future__ import annotations

import base64
import functools
import math
import random
import re

import automerge.core as am
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import CredentialError, UsageError
from mesh.state import consent as c
from mesh.state.document import (
    CONSENT_DECISIONS_KEY,
    CONSENT_POLICIES_KEY,
    TAG_VIEWS_KEY,
    MeshState,
    actor_id,
)
from mesh.state.membership import Role
from mesh.state.records import AssetRecord
from mesh.testing.identities import MemberIdentity, TestMesh

NOW = 1_700_000_000.0
DAY_S = 86400.0
SUBJECTS = ("7KQ2-M9X7", "NFCB-6HG6")  # both valid codes (check character included)
SCOPES = ("photo", "video")
SYNC_METHODS = ("merge", "sync-messages", "changes", "save-load")


@functools.cache
def mesh() -> TestMesh:
    return TestMesh(random.Random(6), NOW - 60.0)


@functools.cache
def edge() -> MemberIdentity:
    return mesh().add_member("door-box", Role.EDGE, NOW - 50.0)


@functools.cache
def policies() -> c.Policies:
    """photo: default deny; video: default grant; captured media kept 7 days. Signed for real."""
    state = replica("policy")
    org = mesh().founder
    policy(state, org, "photo", "deny", "Photos of you may be shown on site")
    policy(state, org, "video", "grant", "Videos of you may be shown on site")
    retention(state, org, 7 * DAY_S)
    return c.effective_policies(state, org.authority_public_key, NOW)


def replica(name: str, suffix: int = 1) -> MeshState:
    return MeshState(actor_id(name, bytes([suffix]) * 8))


def policy(state: MeshState, who: MemberIdentity, scope: str, default: str, text: str,
           at: float = NOW) -> str:
    made = c.create_policy(who.authority_public_key, who.key, who.chain, scope, default, text, at)
    return c.set_policy(state, made)


def retention(state: MeshState, who: MemberIdentity, seconds: float | None, at: float = NOW) -> str:
    made = c.create_retention_policy(who.authority_public_key, who.key, who.chain, c.CAPTURED,
                                     seconds, at)
    return c.set_policy(state, made)


def asset(cid: str = "bafkphoto", subjects=(), media_type: str = "image/jpeg", tags=(),
          added_at: float = NOW, retention_s: float | None = None) -> AssetRecord:
    return AssetRecord(cid=cid, name="shot.jpg", size=10, media_type=media_type, added_at=added_at,
                       added_by="cam", tags=frozenset(tags), subjects=frozenset(subjects),
                       retention_s=retention_s)


def sync_pair(a: MeshState, b: MeshState, rounds_max: int = 50) -> None:
    state_a, state_b = a.new_sync_state(), b.new_sync_state()
    for _ in range(rounds_max):
        to_b = a.generate_sync_message(state_a)
        if to_b is not None:
            b.receive_sync_message(state_b, to_b)
        to_a = b.generate_sync_message(state_b)
        if to_a is not None:
            a.receive_sync_message(state_a, to_a)
        if to_a is None and to_b is None:
            return
    raise AssertionError("sync did not go quiet")


def bring(dst: MeshState, src: MeshState, method: str) -> None:
    """Give `dst` every change of `src` (and, for sync messages, the reverse too)."""
    if method == "merge":
        dst.merge(src)
    elif method == "sync-messages":
        sync_pair(dst, src)
    elif method == "changes":
        dst.apply_changes(src.changes_since(dst.heads()))
    else:
        dst.merge(MeshState.load(src.save(), actor_id("loader", b"load")))


# --- subject codes --------------------------------------------------------------------------------


@given(st.integers(0, 2**64))
def test_subject_code_round_trip_and_spellings(seed: int) -> None:
    code = c.new_subject_code(random.Random(seed))
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", code)
    assert c.parse_subject_code(code) == code
    sloppy = code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert c.parse_subject_code(f"  {sloppy} ") == code
    assert c.parse_subject_code(code.replace("-", "").replace("1", "I")) == code


@given(st.integers(0, 2**64), st.integers(0, 7), st.integers(1, 31))
def test_subject_code_refuses_any_single_typo(seed: int, position: int, delta: int) -> None:
    chars = list(c.new_subject_code(random.Random(seed)).replace("-", ""))
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    chars[position] = alphabet[(alphabet.index(chars[position]) + delta) % 32]
    with pytest.raises(ValueError, match="check failed"):
        c.parse_subject_code("".join(chars))


@given(st.integers(0, 2**64), st.integers(0, 7), st.integers(0, 7))
def test_subject_code_refuses_any_swap(seed: int, i: int, j: int) -> None:
    chars = list(c.new_subject_code(random.Random(seed)).replace("-", ""))
    if chars[i] == chars[j]:
        return
    chars[i], chars[j] = chars[j], chars[i]
    with pytest.raises(ValueError):
        c.parse_subject_code("".join(chars))


@pytest.mark.parametrize("text, reason", [
    ("7KQ2-M9X", "8 characters"), ("7KQ2-M9X77", "8 characters"), ("7KQ2-M9XU", "cannot contain"),
    ("7KQ2-M9X!", "cannot contain"), ("x" * 40, "looks like"), ("7KQ2-M9XD", "check failed"),
])
def test_subject_code_errors_are_clear(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        c.parse_subject_code(text)


def test_subject_codes_are_spread() -> None:
    rng = random.Random(1)
    assert len({c.new_subject_code(rng) for _ in range(2000)}) == 2000


# --- badge secrets --------------------------------------------------------------------------------

CHEAP_KDF = c.BadgeKdf(n=2**4, r=1, p=1)  # the same derivation at a test's cost
MESH_ID = "BADGETESTMESH"
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@given(st.integers(0, 2**64))
def test_badge_secret_round_trip_and_spellings(seed: int) -> None:
    secret = c.new_badge_secret(random.Random(seed))
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){4}", secret)
    assert c.parse_badge_secret(secret) == secret
    sloppy = secret.lower().replace("-", " ").replace("0", "o").replace("1", "l")
    assert c.parse_badge_secret(f" {sloppy}  ") == secret
    assert c.parse_badge_secret(secret.replace("-", "").replace("1", "I")) == secret


@given(st.integers(0, 2**64), st.integers(0, 19), st.integers(1, 31))
def test_badge_secret_refuses_any_single_typo(seed: int, position: int, delta: int) -> None:
    chars = list(c.new_badge_secret(random.Random(seed)).replace("-", ""))
    chars[position] = ALPHABET[(ALPHABET.index(chars[position]) + delta) % 32]
    with pytest.raises(ValueError, match="check failed"):
        c.parse_badge_secret("".join(chars))


@given(st.integers(0, 2**64), st.integers(0, 19), st.integers(0, 19))
def test_badge_secret_refuses_any_swap(seed: int, i: int, j: int) -> None:
    chars = list(c.new_badge_secret(random.Random(seed)).replace("-", ""))
    if chars[i] == chars[j]:
        return
    chars[i], chars[j] = chars[j], chars[i]
    with pytest.raises(ValueError):
        c.parse_badge_secret("".join(chars))


@pytest.mark.parametrize("text, reason", [
    ("7KQ2-M9X7", "20 characters"), ("x" * 65, "looks like"), ("0000-0000-0000-0000-000U", "cannot contain"),
    ("0000-0000-0000-0000-0001", "check failed"), (None, "looks like"),
])
def test_badge_secret_errors_are_clear(text, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        c.parse_badge_secret(text)


@given(st.integers(0, 2**64))
@settings(max_examples=50)
def test_a_badge_secret_yields_a_valid_code_that_it_proves(seed: int) -> None:
    badge = c.new_badge(random.Random(seed), MESH_ID, CHEAP_KDF)
    assert c.parse_subject_code(badge.code) == badge.code  # a valid code: check character included
    assert c.badge_code(badge.secret.lower(), MESH_ID, CHEAP_KDF) == badge.code  # any spelling
    assert c.badge_holds(badge.code, badge.secret, MESH_ID, CHEAP_KDF)
    assert not c.badge_holds(badge.code, badge.secret, "OTHERMESH", CHEAP_KDF)  # one mesh's badge


@given(st.integers(0, 2**64), st.lists(st.tuples(st.integers(0, 19), st.integers(1, 31)), min_size=1,
                                       max_size=6))
@settings(max_examples=50)
def test_a_mistyped_secret_is_refused_or_proves_nothing(seed: int, typos: list[tuple[int, int]]) -> None:
    badge = c.new_badge(random.Random(seed), MESH_ID, CHEAP_KDF)
    chars = list(badge.secret.replace("-", ""))
    for position, delta in typos:
        chars[position] = ALPHABET[(ALPHABET.index(chars[position]) + delta) % 32]
    typed = "".join(chars)
    if typed == badge.secret.replace("-", ""):
        return  # the typos cancelled out
    try:
        holds = c.badge_holds(badge.code, typed, MESH_ID, CHEAP_KDF)
    except ValueError:
        return  # refused by the check character before any KDF
    assert not holds  # a different secret: a different code (all but 2^-35 of the time)


def _code_bits(code: str) -> int:
    values = [ALPHABET.index(ch) for ch in code.replace("-", "")[:c.SUBJECT_RANDOM_CHARS]]
    return sum(v << (5 * i) for i, v in enumerate(values))


def _neighbour(secret: str, position: int, delta: int) -> str:
    """`secret` with one random character changed and its check character recomputed."""
    values = [ALPHABET.index(ch) for ch in secret.replace("-", "")][:c.BADGE_SECRET_RANDOM_CHARS]
    values[position] = (values[position] + delta) % 32
    return c._format_secret(c._with_check(values))


@given(st.integers(0, 2**64), st.integers(0, 18), st.integers(1, 31))
def test_codes_do_not_reveal_secrets_nearby_secrets_give_unrelated_codes(seed: int, position: int,
                                                                        delta: int) -> None:
    secret = c.new_badge_secret(random.Random(seed))
    other = _neighbour(secret, position, delta)
    assert c.badge_code(secret, MESH_ID, CHEAP_KDF) != c.badge_code(other, MESH_ID, CHEAP_KDF)
    assert c.badge_code(secret, MESH_ID, CHEAP_KDF) != c.badge_code(secret, MESH_ID + "2", CHEAP_KDF)


def test_nearby_secrets_flip_half_the_code_bits() -> None:
    """Avalanche: a one-character change of the secret changes each code bit with probability 1/2,
    so a code says nothing usable about its secret or about the codes of similar secrets."""
    rng = random.Random(19)
    flips = []
    for _ in range(400):
        secret = c.new_badge_secret(rng)
        other = _neighbour(secret, rng.randrange(19), rng.randrange(1, 32))
        a, b = (_code_bits(c.badge_code(s, MESH_ID, CHEAP_KDF)) for s in (secret, other))
        flips.append(bin(a ^ b).count("1"))
    mean = sum(flips) / len(flips)  # 35 bits: 17.5 expected, standard error about 0.15
    assert 16.5 < mean < 18.5, mean
    assert len({c.badge_code(c.new_badge_secret(rng), MESH_ID, CHEAP_KDF) for _ in range(2000)}) >= 1999


def test_the_production_kdf_is_the_deliberately_slow_one() -> None:
    assert (c.BADGE_KDF.n, c.BADGE_KDF.r, c.BADGE_KDF.p) == (2**13, 8, 1)  # 8 MiB, ~16 ms a check
    badge = c.new_badge(random.Random(3), MESH_ID)
    assert c.badge_holds(badge.code, badge.secret, MESH_ID)
    assert c.badge_code(badge.secret, MESH_ID, CHEAP_KDF) != badge.code  # the cost is part of the code


# --- policies -------------------------------------------------------------------------------------


def test_policies_verify_and_latest_wins() -> None:
    state, org = replica("org"), mesh().founder
    policy(state, org, "photo", "deny", "Photos may be shown", at=NOW - 10)
    newest = policy(state, org, "photo", "grant", "Photos are shown unless you say no", at=NOW)
    retention(state, org, 3 * DAY_S, at=NOW - 5)
    found = c.effective_policies(state, org.authority_public_key, NOW)
    assert found.scopes["photo"].id == newest and found.default_grant("photo") is True
    assert found.scopes["photo"].description == "Photos are shown unless you say no"
    assert found.retention_s(c.CAPTURED) == 3 * DAY_S
    assert found.default_grant("stream") is False  # no policy: denied
    assert c.Policies().retention_s(c.CAPTURED) is None


def test_edge_cannot_set_policy() -> None:
    state, door, org = replica("org"), edge(), mesh().founder
    with pytest.raises(CredentialError, match="organizers"):
        c.create_policy(door.authority_public_key, door.key, door.chain, "photo", "grant", "x", NOW)
    policy(state, org, "photo", "deny", "Photos may be shown", at=NOW - 10)
    # An edge signs a later policy by hand (its own key, its real chain) and stores it.
    body = {"kind": "policy", "mesh": door.mesh_id, "publisher": door.node_id, "at": NOW,
            "target": "scope:photo", "default": "grant", "description": "all yours",
            "retention_s": None}
    body_bytes = cbor2.dumps(body, canonical=True)
    signature = door.key.sign(b"assetmesh/v1/policy\x00" + body_bytes)
    blob = cbor2.dumps([door.chain, [body_bytes, signature]], canonical=True)
    state.put_consent_policy(c.statement_id(body_bytes), blob)
    with pytest.raises(CredentialError, match="only organizers"):
        c.verify_policy(blob, door.authority_public_key, NOW)
    found = c.effective_policies(state, org.authority_public_key, NOW)
    assert found.default_grant("photo") is False


def test_tampered_misfiled_and_future_policies_are_ignored() -> None:
    state, org = replica("org"), mesh().founder
    made = c.create_policy(org.authority_public_key, org.key, org.chain, "photo", "grant", "x", NOW)
    state.put_consent_policy("wrongkey", made[1])
    tampered = made[1].replace(b"grant", b"deny!")
    state.put_consent_policy(made[0] + "x", tampered)
    future = c.create_policy(org.authority_public_key, org.key, org.chain, "video", "grant", "v",
                             NOW + 3600)
    c.set_policy(state, future)
    state.put_consent_policy("junk", b"\x00not cbor")
    found = c.effective_policies(state, org.authority_public_key, NOW)
    assert found.scopes == {} and found.retention == {}
    with pytest.raises(CredentialError, match="future"):
        c.verify_policy(future[1], org.authority_public_key, NOW)


def test_policy_inputs_are_checked() -> None:
    org = mesh().founder
    make = functools.partial(c.create_policy, org.authority_public_key, org.key, org.chain)
    for scope, default, text in [("Photo", "deny", "x"), ("photo", "maybe", "x"),
                                 ("photo", "deny", " "), ("a/b", "deny", "x")]:
        with pytest.raises(UsageError):
            make(scope, default, text, NOW)
    with pytest.raises(UsageError):
        c.create_retention_policy(org.authority_public_key, org.key, org.chain, c.CAPTURED, -1, NOW)
    with pytest.raises(UsageError):
        c.create_retention_policy(org.authority_public_key, org.key, org.chain, "forever", 9, NOW)


# --- decisions ------------------------------------------------------------------------------------


def test_defaults_without_decisions() -> None:
    state = replica("a")
    assert c.consent_state(state, SUBJECTS[0], "photo", policies()) is False  # deny
    assert c.consent_state(state, SUBJECTS[0], "video", policies()) is True  # grant
    assert c.consent_state(state, SUBJECTS[0], "stream", policies()) is False  # no policy
    assert c.decisions(state, SUBJECTS[0]) == []


def test_grant_revoke_grant_in_sequence() -> None:
    state, who = replica("door"), SUBJECTS[0]
    c.record_decision(state, who, "photo", True, NOW, "door1")
    assert c.consent_state(state, who, "photo", policies()) is True
    revoke = c.record_decision(state, who, "photo", False, NOW + 1, "door1")
    assert c.consent_state(state, who, "photo", policies()) is False
    regrant = c.record_decision(state, who.lower(), "photo", True, NOW + 2, "door1")
    assert regrant.seen == {revoke.id}
    assert c.consent_state(state, who, "photo", policies()) is True
    assert c.consent_state(state, who, "video", policies()) is True  # other scope untouched
    assert [d.grant for d in c.decisions(state, who)] == [True, False, True]


def test_concurrent_revoke_beats_grant_that_had_not_seen_it() -> None:
    door1, door2, who = replica("door1"), replica("door2"), SUBJECTS[1]
    c.record_decision(door1, who, "photo", True, NOW, "door1")
    door2.merge(door1)
    c.record_decision(door2, who, "photo", False, NOW, "door2")
    c.record_decision(door1, who, "photo", True, NOW + 60, "door1")  # later clock, not seen
    door1.merge(door2)
    door2.merge(door1)
    for state in (door1, door2):
        assert c.consent_state(state, who, "photo", policies()) is False
    c.record_decision(door2, who, "photo", True, NOW - 999, "door2")  # seen: restores
    door1.merge(door2)
    assert c.consent_state(door1, who, "photo", policies()) is True


def test_grants_that_each_missed_a_revoke_do_not_add_up() -> None:
    door1, door2, who = replica("door1"), replica("door2"), SUBJECTS[0]
    c.record_decision(door1, who, "photo", False, NOW, "door1")
    c.record_decision(door2, who, "photo", False, NOW, "door2")
    c.record_decision(door1, who, "photo", True, NOW + 1, "door1")  # saw only door1's revoke
    c.record_decision(door2, who, "photo", True, NOW + 1, "door2")  # saw only door2's revoke
    door1.merge(door2)
    assert c.consent_state(door1, who, "photo", policies()) is False
    c.record_decision(door1, who, "photo", True, NOW + 2, "door1")  # saw both
    assert c.consent_state(door1, who, "photo", policies()) is True


class Model:
    """What each replica has seen, kept by the test independently of the implementation."""

    def __init__(self, count: int) -> None:
        self.known: list[set[str]] = [set() for _ in range(count)]
        self.info: dict[str, tuple[str, str, bool, frozenset[str]]] = {}

    def wrote(self, replica_index: int, decision: c.Decision) -> None:
        known = self.known[replica_index]
        seen = frozenset(i for i in known if self._revoke_of(i, decision.subject, decision.scope))
        self.info[decision.id] = (decision.subject, decision.scope, decision.grant, seen)
        known.add(decision.id)

    def _revoke_of(self, decision_id: str, subject: str, scope: str) -> bool:
        s, sc, grant, _ = self.info[decision_id]
        return (s, sc) == (subject, scope) and not grant

    def expected(self, known: set[str], subject: str, scope: str) -> bool:
        mine = [self.info[i] + (i,) for i in known if self.info[i][:2] == (subject, scope)]
        revokes = {i for *_, grant, _, i in mine if not grant}
        grants_seen = [seen for *_, grant, seen, _ in mine if grant]
        if not mine:
            return policies().default_grant(scope)
        if any(revokes <= seen for seen in grants_seen):
            return True  # a grant written after its replica saw every revoke restores
        assert revokes  # otherwise some grant exists and vacuously saw them all
        return False  # every revoke stands against the grants that had not seen it


def effective_view(state: MeshState) -> dict:
    view = {(s, sc): c.consent_state(state, s, sc, policies()) for s in SUBJECTS for sc in SCOPES}
    view["decisions"] = [c.decisions(state, s) for s in SUBJECTS]
    return view


history_op = st.one_of(
    # Mostly one (subject, scope), so that concurrent revokes and grants of it are common.
    st.tuples(st.just("decide"), st.integers(0, 3), st.booleans(),
              st.sampled_from(SUBJECTS[:1] * 3 + SUBJECTS[1:]),
              st.sampled_from(SCOPES[:1] * 3 + SCOPES[1:]), st.floats(NOW - DAY_S, NOW + DAY_S)),
    st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3), st.sampled_from(SYNC_METHODS)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(3, 4), st.lists(history_op, max_size=40), st.data())
def test_merge_rule_holds_on_every_replica_in_any_merge_order(
    count: int, history: list, data: st.DataObject
) -> None:
    states = [replica(f"r{i}", i + 1) for i in range(count)]
    model = Model(count)
    for op in history:
        if op[0] == "decide":
            _, index, grant, subject, scope, at = op
            index %= count
            decision = c.record_decision(states[index], subject, scope, grant, at, f"n{index}")
            model.wrote(index, decision)
            touched = [index]
        else:
            _, dst, src, method = op
            dst, src = dst % count, (dst + 1 + src % (count - 1)) % count  # never itself
            bring(states[dst], states[src], method)
            model.known[dst] |= model.known[src]
            if method == "sync-messages":
                model.known[src] |= model.known[dst]
            touched = [dst, src]
        # The rule holds on every replica at every moment, not only at the end.
        for index in touched:
            for subject in SUBJECTS:
                for scope in SCOPES:
                    got = c.consent_state(states[index], subject, scope, policies())
                    assert got == model.expected(model.known[index], subject, scope)
    order = data.draw(st.permutations(range(count)), label="merge order")
    methods = data.draw(st.lists(st.sampled_from(SYNC_METHODS), min_size=2 * count,
                                 max_size=2 * count), label="merge methods")
    for k in range(count - 1):  # a chain forward, then back: every replica ends with everything
        bring(states[order[k + 1]], states[order[k]], methods[k])
    for k in reversed(range(count - 1)):
        bring(states[order[k]], states[order[k + 1]], methods[count + k])
    everything = set(model.info)
    views = [effective_view(s) for s in states]
    assert all(view == views[0] for view in views)
    for subject in SUBJECTS:
        for scope in SCOPES:
            assert views[0][(subject, scope)] == model.expected(everything, subject, scope)


def test_flood_of_decisions_reads_as_denied() -> None:
    state, who = replica("flood"), SUBJECTS[0]
    for i in range(c.DECISIONS_PER_SCOPE_MAX):
        c.record_decision(state, who, "video", i % 2 == 0, NOW + i, "door")
    assert c.consent_state(state, who, "video", policies()) is False  # last one was a revoke
    c.record_decision(state, who, "video", False, NOW, "door")  # a revoke is always recorded
    with pytest.raises(UsageError, match="too many"):
        c.record_decision(state, who, "video", True, NOW, "door")
    assert c.consent_state(state, who, "video", policies()) is False


def test_decision_inputs_are_checked() -> None:
    state = replica("a")
    with pytest.raises(UsageError, match="check failed"):
        c.record_decision(state, "7KQ2-M9XD", "photo", True, NOW, "door")
    with pytest.raises(UsageError):
        c.record_decision(state, SUBJECTS[0], "Photo!", True, NOW, "door")
    with pytest.raises(UsageError):
        c.record_decision(state, SUBJECTS[0], "photo", True, math.nan, "door")
    with pytest.raises(UsageError):
        c.record_decision(state, SUBJECTS[0], "photo", True, NOW, "")


# --- junk -----------------------------------------------------------------------------------------

# A document made by the JavaScript implementation (@automerge/automerge 3) on top of our genesis
# and late-root skeletons: Automerge Counter values under a decision, a policy and a view key.
# This binding panics when it reads a Counter; the readers must skip them and stay usable.
COUNTER_JUNK_DOC = base64.b64decode(
    "hW9Kg/cheyEAqQMFEAAAAAAAAAAAAAAAAAAAAAAQRvBR6xR272RYgZFXt6RMIxBx6vdI7OrlQ3j+E9RG3yseEHpeGJSy"
    "OMaGyt59XJDeq00Q1nGaQKZsokuth1/C7w0bVAGu11/6Sq9XpeqwwqU/gW7O42MS2RcU2UYnSIu0qfOmXAcBBgMEEwcj"
    "CEAGQwZWAgoBBgIEFacBIQsjDjQBQghWClcFgAECewAEAwECfwEEAH4HAQIAfwMEAH/6g5/YBn8AAwF/AwMAfQN+AQUH"
    "AAp9AQMEAAoDCHMGYXNzZXRzEWNvbnNlbnRfZGVjaXNpb25zEGNvbnNlbnRfcG9saWNpZXMLaW52aXRlX3VzZXMHbWVt"
    "YmVycwhyZWxlYXNlcwtyZXZvY2F0aW9ucwZzY2hlbWEJdGFnX3ZpZXdzBHRhZ3MKbi8wMC9zdGFnZSA3S1EyLU05WDcv"
    "cGhvdG8vYWFhYWFhYWFhYWFhYWFhYRBhYWFhYWFhYWFhYWFhYWFhfQADBAUAfgEAAwJzBgIAfH4FfH4HfQZ+AQ0HAH8B"
    "AgADAQcAfxQCAH8oAhgB6AcBAg0ABA=="
)


def put_raw(state: MeshState, root_key: str, key: str, kind, value) -> None:
    """Write anything, as a member using another Automerge implementation could."""
    doc = state._doc
    root = doc.get(am.ROOT, root_key)[1]
    with doc.transaction() as tx:
        if kind == "map":
            tx.put_object(root, key, am.ObjType.Map)
        else:
            tx.put(root, key, kind, value)


def test_junk_entries_are_skipped() -> None:
    state = MeshState.load(COUNTER_JUNK_DOC, actor_id("j", b"j"))
    org, who = mesh().founder, SUBJECTS[0]
    policy(state, org, "photo", "deny", "Photos may be shown")
    good = c.record_decision(state, who, "photo", True, NOW, "door")
    c.count_view(state, "n", ["stage"], views=3)
    valid_blob = state.consent_decision_blobs([f"{who}/photo/{good.id}"])[f"{who}/photo/{good.id}"]
    revoke_body = {"kind": "consent", "subject": who, "scope": "photo", "grant": False, "at": NOW,
                   "by": "evil", "seen": []}
    revoke_blob = cbor2.dumps(revoke_body, canonical=True)
    S = am.ScalarType
    junk = [
        (CONSENT_DECISIONS_KEY, f"{who}/photo/aaaaaaaaaaaaaaab", S.Str, "revoke"),
        (CONSENT_DECISIONS_KEY, f"{who}/photo/aaaaaaaaaaaaaaac", "map", None),
        (CONSENT_DECISIONS_KEY, f"{who}/photo/aaaaaaaaaaaaaaad", S.Bytes, b"\xff\x00"),
        (CONSENT_DECISIONS_KEY, f"{who}/photo/notitsid00000000", S.Bytes, revoke_blob),  # misfiled
        (CONSENT_DECISIONS_KEY, f"{SUBJECTS[1]}/photo/{good.id}", S.Bytes, valid_blob),  # misfiled
        (CONSENT_DECISIONS_KEY, "no-separators", S.Bytes, revoke_blob),
        (CONSENT_POLICIES_KEY, "zzzz", S.Int, 5),
        (TAG_VIEWS_KEY, f"n/{'00' * 4}/stage", S.Int, -5),
        (TAG_VIEWS_KEY, f"n/{'00' * 5}/stage", S.Str, "9"),
        (TAG_VIEWS_KEY, f"n/{'00' * 6}/stage", S.Boolean, True),
        (TAG_VIEWS_KEY, f"n/{'00' * 7}/Not A Tag", S.Int, 7),
        (TAG_VIEWS_KEY, "stage", S.Int, 7),
    ]
    for root_key, key, kind, value in junk:
        put_raw(state, root_key, key, kind, value)
    found = c.effective_policies(state, org.authority_public_key, NOW)
    assert list(found.scopes) == ["photo"]
    assert c.consent_state(state, who, "photo", found) is True
    assert c.decisions(state, who) == [good]
    assert c.decisions(state, SUBJECTS[1]) == []
    assert c.tag_views(state) == {"stage": 3}
    c.count_view(state, "n", ["stage"])  # the document is still writable
    assert c.tag_views(state) == {"stage": 4}


# --- assets: scopes, consent, retention -----------------------------------------------------------


def test_asset_scopes_from_media_type_and_scope_tags() -> None:
    assert c.asset_scopes(asset(media_type="image/png")) == {"photo"}
    assert c.asset_scopes(asset(media_type="video/mp4", tags=["scope:stream", "stage"])) == {
        "video", "stream"}
    assert c.asset_scopes(asset(media_type="application/pdf")) == {"media"}


def test_visibility_follows_every_subject_and_scope() -> None:
    state, (a, b) = replica("v"), SUBJECTS
    photo = asset("bafkphoto", subjects=[a, b.lower()])
    state.put_asset(photo)
    state.put_asset(asset("bafkother", subjects=[b]))
    assert c.visible(asset("bafkplain"), state, policies(), NOW) is True  # no subject
    assert c.visible(photo, state, policies(), NOW) is False  # photo defaults to deny
    c.record_decision(state, a, "photo", True, NOW, "door")
    assert c.visible(photo, state, policies(), NOW) is False  # b has not granted
    c.record_decision(state, b, "photo", True, NOW, "door")
    assert c.visible(photo, state, policies(), NOW) is True
    streamed = asset("bafkstream", subjects=[a], tags=["scope:stream"])
    assert c.visible(streamed, state, policies(), NOW) is False  # stream has no grant
    video = asset("bafkvideo", subjects=[a], media_type="video/mp4")
    assert c.visible(video, state, policies(), NOW) is True  # video defaults to grant
    c.record_decision(state, a, "video", False, NOW, "door")
    assert c.visible(video, state, policies(), NOW) is False
    assert c.visible(asset(subjects=["not-a-code"]), state, policies(), NOW) is False
    assert [x.cid for x in c.subject_assets(state, b)] == ["bafkother", "bafkphoto"]
    assert [x.cid for x in c.visible_assets(state, policies(), NOW)] == ["bafkother", "bafkphoto"]


def test_retention_expiry_with_skew() -> None:
    state, skew = replica("r"), 300.0
    week = 7 * DAY_S
    captured = asset(subjects=[SUBJECTS[0]], media_type="video/mp4")  # video: granted by default
    plain = asset("bafkplain")
    own = asset("bafkown", retention_s=3600.0)
    shorter = asset("bafkshort", subjects=[SUBJECTS[0]], media_type="video/mp4", retention_s=60.0)
    longer = asset("bafklong", subjects=[SUBJECTS[0]], media_type="video/mp4", retention_s=9 * week)
    assert c.expires_at(captured, policies()) == NOW + week
    assert c.visible(captured, state, policies(), NOW + week + skew - 1, skew) is True
    assert c.visible(captured, state, policies(), NOW + week + skew + 1, skew) is False
    assert c.visible(plain, state, policies(), NOW + 100 * week, skew) is True  # no rule applies
    assert c.visible(own, state, policies(), NOW + 3600 + skew + 1, skew) is False
    assert c.expires_at(shorter, policies()) == NOW + 60  # the shorter limit wins
    assert c.expires_at(longer, policies()) == NOW + week
    junk = asset("bafkjunk", retention_s=math.nan)
    assert c.expired(junk, policies(), NOW) is True
    assert c.expires_at(captured, c.Policies()) is None


def test_revoke_all_covers_policies_decisions_and_assets() -> None:
    state, who = replica("f"), SUBJECTS[0]
    state.put_asset(asset("bafkcam", subjects=[who], tags=["scope:stream"]))
    c.record_decision(state, who, "audio", True, NOW, "door")
    made = c.revoke_all(state, who, policies(), NOW + 1, "org")
    assert sorted(d.scope for d in made) == ["audio", "photo", "stream", "video"]
    for scope in ("audio", "photo", "stream", "video"):
        assert c.consent_state(state, who, scope, policies()) is False


# --- analytics ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["stage", "door", "vip"]),
                          st.integers(1, 5), st.integers(0, 3)), max_size=30),
       st.permutations(range(4)))
def test_view_counters_from_concurrent_nodes_add_up_exactly(events: list, order: list) -> None:
    # Nodes 0 and 1 are two processes of the same node (say, the agent and a restarted agent).
    states = [MeshState(actor_id(f"n{min(i, 1)}", bytes([i + 1]) * 8)) for i in range(4)]
    expected: dict[str, int] = {}
    for index, tag, views, peer in events:
        c.count_view(states[index], f"n{min(index, 1)}", [tag, tag], views)  # a tag counts once
        expected[tag] = expected.get(tag, 0) + views
        if peer != index:
            states[peer].merge(states[index])  # partial, one-way gossip while counting goes on
    for k in range(3):
        states[order[k + 1]].merge(states[order[k]])
    for k in reversed(range(3)):
        states[order[k]].merge(states[order[k + 1]])
    for state in states:
        assert c.tag_views(state) == dict(sorted(expected.items()))


def test_view_counts_hold_nothing_per_person() -> None:
    state = replica("gw")
    c.count_views(state, "n", {"stage": 2, "door": 0})
    assert c.tag_views(state) == {"stage": 2}
    assert all(key.startswith("n/") and key.count("/") == 2 for key in state.view_counts())
    with pytest.raises(UsageError):
        c.count_view(state, "n", ["Not Canonical"])
    with pytest.raises(UsageError):
        c.count_view(state, "a/b", ["stage"])
