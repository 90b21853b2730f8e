"""Membership credentials, invites and revocations (issue 3, requirements 1, 2 and 4)."""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import CredentialError, UsageError
from mesh.ids import mesh_id_from_authority_key, node_id_from_public_key
from mesh.state import membership as m
from mesh.state.document import MeshState, actor_id
from mesh.state.membership import (
    INVITE_SEEN_SKEW_S,
    Invite,
    InviteLedger,
    Role,
    RevocationList,
    create_first_credential,
    create_invite,
    create_revocation,
    member_since,
    parse_invite,
    public_key_bytes,
    redeem_invite,
    verify_chain,
)

from tests.test_state_document import sync_pair

NOW = 1_700_000_000.0
HOUR_S = 3600.0
DAY_S = 86400.0
HINTS = [("192.168.1.20", 7400), ("fe80::1", 7401)]


@dataclass(frozen=True)
class Mesh:
    """A mesh with its first organizer."""

    authority: Ed25519PrivateKey
    authority_pk: bytes
    organizer: Ed25519PrivateKey
    organizer_chain: bytes


def new_mesh(name: str = "Organizer laptop") -> Mesh:
    authority = Ed25519PrivateKey.generate()
    organizer = Ed25519PrivateKey.generate()
    chain = create_first_credential(authority, organizer, name, NOW)
    return Mesh(authority, public_key_bytes(authority), organizer, chain)


def node_id(key: Ed25519PrivateKey) -> str:
    return node_id_from_public_key(public_key_bytes(key))


def invite(
    mesh: Mesh,
    role: Role = Role.EDGE,
    name: str | None = "door",
    issuer: tuple[Ed25519PrivateKey, bytes] | None = None,
    expires_at: float = NOW + DAY_S,
    now: float = NOW,
) -> str:
    key, chain = issuer or (mesh.organizer, mesh.organizer_chain)
    return create_invite(mesh.authority_pk, key, chain, role, name, expires_at, HINTS, now)


def join(mesh: Mesh, token: str, name: str | None = None, now: float = NOW + 60):
    key = Ed25519PrivateKey.generate()
    return key, redeem_invite(token, key, name, now)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def refused(reason: str, call, *args, **kwargs) -> None:
    with pytest.raises(CredentialError, match=reason):
        call(*args, **kwargs)


# --- chains -------------------------------------------------------------------------------------


def test_first_organizer_verifies() -> None:
    mesh = new_mesh()
    member = verify_chain(mesh.organizer_chain, mesh.authority_pk, NOW + 10)
    assert member.node_id == node_id(mesh.organizer)
    assert member.mesh_id == mesh_id_from_authority_key(mesh.authority_pk)
    assert member.role is Role.ORGANIZER
    assert member.name == "Organizer laptop"
    assert member.expires_at == NOW + 365 * DAY_S
    assert member.invite_id is None and member.issuer_node_id is None


@pytest.mark.parametrize("role", list(Role))
def test_invite_redeem_verify(role: Role) -> None:
    mesh = new_mesh()
    token = invite(mesh, role=role, name="stage")
    offer = parse_invite(token)
    assert offer == Invite(
        mesh.authority_pk, offer.mesh_id, offer.invite_id, role, "stage", NOW + DAY_S, tuple(HINTS),
        key_id=offer.key_id,
    )
    assert offer.uses == 1 and offer.key_id is not None
    key, joined = join(mesh, token)
    assert joined.invite == offer
    own_key = public_key_bytes(key)
    member = verify_chain(
        joined.chain, mesh.authority_pk, NOW + HOUR_S, expected_node_public_key=own_key
    )
    assert member == joined.member
    assert (member.node_id, member.role, member.name) == (node_id(key), role, "stage")
    assert member.invite_id == offer.invite_id
    assert member.issuer_node_id == node_id(mesh.organizer)
    assert member.expires_at == NOW + 365 * DAY_S  # nested inside the organizer's credential


def test_joiner_chooses_name_only_when_invite_names_none() -> None:
    mesh = new_mesh()
    _, joined = join(mesh, invite(mesh, name=None), name="bar counter")
    assert joined.member.name == "bar counter"
    with pytest.raises(UsageError):
        join(mesh, invite(mesh, name=None), name=None)
    refused("name does not match the invite", join, mesh, invite(mesh, name="door"), "stage")


def test_chain_bound_to_its_node() -> None:
    mesh = new_mesh()
    _, joined = join(mesh, invite(mesh))
    other = public_key_bytes(Ed25519PrivateKey.generate())
    refused(
        "credential belongs to another node",
        verify_chain, joined.chain, mesh.authority_pk, NOW + 60, expected_node_public_key=other,
    )


def test_organizer_joined_node_can_invite_in_turn() -> None:
    mesh = new_mesh()
    second_key, second = join(mesh, invite(mesh, role=Role.ORGANIZER, name="co-organizer"))
    token = invite(mesh, role=Role.HUB, name="co-op hub", issuer=(second_key, second.chain))
    hub_key, hub = join(mesh, token, now=NOW + 120)
    member = verify_chain(hub.chain, mesh.authority_pk, NOW + HOUR_S)
    assert member.role is Role.HUB
    assert member.issuer_node_id == node_id(second_key)


def test_invite_depth_is_bounded() -> None:
    mesh = new_mesh()
    issuer = (mesh.organizer, mesh.organizer_chain)
    for _ in range(m.INVITE_DEPTH_MAX):
        key, joined = join(mesh, invite(mesh, role=Role.ORGANIZER, name="o", issuer=issuer))
        issuer = (key, joined.chain)
    assert verify_chain(issuer[1], mesh.authority_pk, NOW + 60).role is Role.ORGANIZER
    refused("too deep", invite, mesh, issuer=issuer)


def test_edge_cannot_invite() -> None:
    mesh = new_mesh()
    edge_key, edge = join(mesh, invite(mesh, role=Role.EDGE))
    refused("only organizers may invite", invite, mesh, issuer=(edge_key, edge.chain))
    # A hand-made invite signed by the edge is refused by every verifier.
    statements = cbor2.loads(edge.chain)
    forged = _forge_invite(mesh, edge_key, statements, Role.EDGE)
    refused("only organizers may invite", verify_chain, forged, mesh.authority_pk, NOW + 60)


def _forge_invite(mesh: Mesh, signer: Ed25519PrivateKey, statements: list, role: Role) -> bytes:
    """A chain extended by an invite signed by `signer`, redeemed by a fresh node."""
    invite_key, joiner = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    invite_id = bytes(16)
    body = {
        "kind": "invite", "mesh": mesh_id_from_authority_key(mesh.authority_pk),
        "invite_id": invite_id, "role": role.value, "name": None, "issued_at": NOW,
        "expires_at": NOW + DAY_S, "invite_key": public_key_bytes(invite_key),
    }
    credential = m._credential_body(
        mesh.authority_pk, joiner, role, "sneaky", NOW + 1, NOW + 2 * DAY_S, invite_id
    )
    extra = [m._sign(signer, "invite", body), m._sign(invite_key, "credential", credential)]
    return cbor2.dumps(statements + extra, canonical=True)


def test_expired_token_refused_at_redeem() -> None:
    mesh = new_mesh()
    token = invite(mesh, expires_at=NOW + HOUR_S)
    refused("invite expired", join, mesh, token, now=NOW + HOUR_S)
    assert join(mesh, token, now=NOW + HOUR_S - 1)[1].member.role is Role.EDGE


def test_expired_credential_refused_at_verify() -> None:
    mesh = new_mesh()
    key = Ed25519PrivateKey.generate()
    joined = redeem_invite(invite(mesh), key, None, NOW + 60, valid_s=DAY_S)
    assert verify_chain(joined.chain, mesh.authority_pk, NOW + DAY_S).name == "door"
    refused("credential expired", verify_chain, joined.chain, mesh.authority_pk, NOW + 60 + DAY_S)


def test_member_validity_nests_inside_its_organizer() -> None:
    authority, organizer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    chain = create_first_credential(authority, organizer, "short-lived", NOW, valid_s=2 * DAY_S)
    mesh = Mesh(authority, public_key_bytes(authority), organizer, chain)
    offer = parse_invite(invite(mesh, expires_at=NOW + 30 * DAY_S))
    assert offer.expires_at == NOW + 2 * DAY_S  # shortened to the organizer's credential
    _, joined = join(mesh, invite(mesh))
    assert joined.member.expires_at == NOW + 2 * DAY_S
    refused("credential expired", verify_chain, joined.chain, mesh.authority_pk, NOW + 2 * DAY_S)


def test_clock_skew_tolerance() -> None:
    mesh = new_mesh()
    early = NOW - m.CLOCK_SKEW_S + 1
    assert verify_chain(mesh.organizer_chain, mesh.authority_pk, early).role is Role.ORGANIZER
    late = NOW - 400
    refused("issued in the future", verify_chain, mesh.organizer_chain, mesh.authority_pk, late)
    refused("clock is behind", join, mesh, invite(mesh), now=NOW - 400)


def test_chain_from_another_authority_refused() -> None:
    mesh, other = new_mesh(), new_mesh()
    refused(
        "credential signed by another mesh's authority",
        verify_chain, other.organizer_chain, mesh.authority_pk, NOW,
    )
    # Right mesh id, wrong signer.
    body = m._credential_body(
        mesh.authority_pk, other.organizer, Role.ORGANIZER, "x", NOW, NOW + 9, None
    )
    forged = cbor2.dumps([m._sign(other.authority, "credential", body)], canonical=True)
    refused("bad signature", verify_chain, forged, mesh.authority_pk, NOW)


def test_tampered_body_refused() -> None:
    mesh = new_mesh()
    _, joined = join(mesh, invite(mesh, name="door"))
    at = joined.chain.rindex(b"door")  # the name inside the member's own credential
    tampered = joined.chain[:at] + b"doOr" + joined.chain[at + 4 :]
    refused("bad signature", verify_chain, tampered, mesh.authority_pk, NOW + 60)
    for index in range(0, len(joined.chain), 7):
        flipped = bytearray(joined.chain)
        flipped[index] ^= 0x01
        with pytest.raises(CredentialError):
            verify_chain(bytes(flipped), mesh.authority_pk, NOW + 60)


def test_signature_of_one_kind_is_not_another() -> None:
    mesh = new_mesh()
    body = m._credential_body(
        mesh.authority_pk, mesh.organizer, Role.ORGANIZER, "x", NOW, NOW + 9, None
    )
    body_bytes = cbor2.dumps(body, canonical=True)
    wrong_prefix = mesh.authority.sign(m._PREFIXES["revocation"] + body_bytes)
    chain = cbor2.dumps([[body_bytes, wrong_prefix]], canonical=True)
    refused("bad signature", verify_chain, chain, mesh.authority_pk, NOW)


def test_role_and_name_must_match_the_invite() -> None:
    mesh = new_mesh()
    parsed = m._parse_token(invite(mesh, role=Role.EDGE, name="door"))
    statement = parsed.walk.invites[-1]
    for role, name, reason in [
        (Role.ORGANIZER, "door", "role does not match the invite"),
        (Role.EDGE, "stage", "name does not match the invite"),
    ]:
        joiner = Ed25519PrivateKey.generate()
        body = m._credential_body(
            mesh.authority_pk, joiner, role, name, NOW, NOW + DAY_S, statement.invite_id
        )
        chain = cbor2.dumps(
            parsed.statements + [m._sign(parsed.invite_key, "credential", body)], canonical=True
        )
        refused(reason, verify_chain, chain, mesh.authority_pk, NOW + 60)


def test_credential_made_after_the_invite_expired_refused() -> None:
    mesh = new_mesh()
    parsed = m._parse_token(invite(mesh, expires_at=NOW + HOUR_S))
    joiner = Ed25519PrivateKey.generate()
    late = NOW + 2 * HOUR_S
    body = m._credential_body(
        mesh.authority_pk, joiner, Role.EDGE, "door", late, late + DAY_S,
        parsed.walk.invites[-1].invite_id,
    )
    chain = cbor2.dumps(
            parsed.statements + [m._sign(parsed.invite_key, "credential", body)], canonical=True
        )
    refused("created after the invite expired", verify_chain, chain, mesh.authority_pk, late)


def test_parse_invite_reasons() -> None:
    mesh = new_mesh()
    token = invite(mesh)
    refused("not an AssetMesh invite token", parse_invite, "xyz" + token[3:])
    refused("not URL-safe base64", parse_invite, token + "!")
    refused("too long", parse_invite, "am1" + "A" * m.TOKEN_CHARS_MAX)
    assert parse_invite("  " + token + "\n").invite_id == parse_invite(token).invite_id
    payload = cbor2.loads(base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4)))
    payload[1] = bytes(32)
    bad_key = "am1" + b64(cbor2.dumps(payload, canonical=True))
    refused("does not match its invite", parse_invite, bad_key)


def test_tokens_carry_the_mesh_key_and_name_and_older_tokens_still_parse() -> None:
    mesh = new_mesh()
    key = bytes(range(32))
    token = create_invite(mesh.authority_pk, mesh.organizer, mesh.organizer_chain, Role.EDGE, "door",
                          NOW + DAY_S, HINTS, NOW, mesh_key=key, mesh_name="Spring pop-up, Berlin")
    parsed = parse_invite(token)
    assert parsed.mesh_key == key and parsed.mesh_name == "Spring pop-up, Berlin"
    older = invite(mesh)  # made without them: four fields, as before mesh keys existed
    assert parse_invite(older).mesh_key is None and parse_invite(older).mesh_name is None
    assert join(mesh, older)[1].member.role is Role.EDGE
    payload = cbor2.loads(base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4)))
    for index, junk in ((4, b"short"), (4, "text"), (5, ""), (5, "x" * 500), (5, "line\nbreak"), (5, 7)):
        spoiled = list(payload)
        spoiled[index] = junk
        refused("malformed invite token", parse_invite, "am1" + b64(cbor2.dumps(spoiled, canonical=True)))
    refused("expected 4 or 6 fields", parse_invite, "am1" + b64(cbor2.dumps(payload[:5], canonical=True)))
    with pytest.raises(UsageError, match="mesh key"):
        create_invite(mesh.authority_pk, mesh.organizer, mesh.organizer_chain, Role.EDGE, "door",
                      NOW + DAY_S, HINTS, NOW, mesh_key=b"too short")


# --- revocations --------------------------------------------------------------------------------


def test_revoked_node_refused_once_revocation_added() -> None:
    mesh = new_mesh()
    key, joined = join(mesh, invite(mesh))
    revocations = RevocationList(mesh.authority_pk)
    assert verify_chain(joined.chain, mesh.authority_pk, NOW + 60, revocations).role is Role.EDGE
    blob = create_revocation(
        mesh.authority_pk, mesh.organizer, mesh.organizer_chain, node_id(key), NOW + 100, "stolen"
    )
    revocation = revocations.add(blob, NOW + 100)
    assert (revocation.node_id, revocation.revoked_by) == (node_id(key), node_id(mesh.organizer))
    assert (revocation.at, revocation.reason) == (NOW + 100, "stolen")
    assert revocations.is_revoked(node_id(key))
    refused("node revoked", verify_chain, joined.chain, mesh.authority_pk, NOW + 200, revocations)


def test_authority_may_revoke_and_lists_converge() -> None:
    mesh = new_mesh()
    keys = [join(mesh, invite(mesh))[0] for _ in range(3)]
    blobs = [
        create_revocation(mesh.authority_pk, mesh.authority, None, node_id(keys[0]), NOW + 5),
        create_revocation(mesh.authority_pk, mesh.authority, b"", node_id(keys[1]), NOW + 6),
        create_revocation(
            mesh.authority_pk, mesh.organizer, mesh.organizer_chain, node_id(keys[1]), NOW + 7
        ),
        create_revocation(
            mesh.authority_pk, mesh.organizer, mesh.organizer_chain, node_id(keys[2]), NOW + 8
        ),
    ]
    forward, backward = RevocationList(mesh.authority_pk), RevocationList(mesh.authority_pk)
    for blob in blobs + blobs:  # idempotent
        forward.add(blob, NOW + 10)
    for blob in reversed(blobs):
        backward.add(blob, NOW + 10)
    assert forward.blobs() == backward.blobs() and len(forward.blobs()) == 3
    assert forward.revocations() == backward.revocations()
    assert forward.revocation_of(node_id(keys[0])).revoked_by is None
    assert forward.revocation_of(node_id(keys[1])).at == NOW + 6  # the earliest wins
    replica = RevocationList(mesh.authority_pk)
    for blob in forward.blobs():
        replica.add(blob, NOW + 20)
    assert replica.revocations() == forward.revocations()


def test_revocation_by_non_organizer_refused() -> None:
    mesh = new_mesh()
    edge_key, edge = join(mesh, invite(mesh, role=Role.EDGE))
    victim = node_id(mesh.organizer)
    refused(
        "only organizers may revoke",
        create_revocation, mesh.authority_pk, edge_key, edge.chain, victim, NOW + 60,
    )
    body = {
        "kind": "revocation", "mesh": mesh_id_from_authority_key(mesh.authority_pk),
        "node_key": public_key_bytes(mesh.organizer), "at": NOW + 60, "reason": "",
    }
    blob = cbor2.dumps([edge.chain, m._sign(edge_key, "revocation", body)], canonical=True)
    refused("only organizers may revoke", RevocationList(mesh.authority_pk).add, blob, NOW + 60)
    no_chain = cbor2.dumps([None, m._sign(edge_key, "revocation", body)], canonical=True)
    refused("bad signature", RevocationList(mesh.authority_pk).add, no_chain, NOW + 60)
    refused(
        "only the mesh authority",
        create_revocation, mesh.authority_pk, edge_key, None, victim, NOW + 60,
    )


def test_revocation_from_another_mesh_refused() -> None:
    mesh, other = new_mesh(), new_mesh()
    blob = create_revocation(
        other.authority_pk, other.authority, None, node_id(mesh.organizer), NOW
    )
    refused("another mesh", RevocationList(mesh.authority_pk).add, blob, NOW)


def test_revoked_organizer_keeps_its_members_but_admits_no_one() -> None:
    mesh = new_mesh()
    second_key, second = join(mesh, invite(mesh, role=Role.ORGANIZER, name="co-organizer"))
    issuer = (second_key, second.chain)
    _, early = join(mesh, invite(mesh, issuer=issuer, now=NOW + 100), now=NOW + 200)
    late_token = invite(mesh, issuer=issuer, now=NOW + 300)
    # The organizer revokes itself (allowed), signed at NOW + 400.
    revocations = RevocationList(mesh.authority_pk)
    revocations.add(
        create_revocation(
            mesh.authority_pk, second_key, second.chain, node_id(second_key), NOW + 400
        ),
        NOW + 400,
    )
    refused("node revoked", verify_chain, second.chain, mesh.authority_pk, NOW + 500, revocations)
    assert verify_chain(early.chain, mesh.authority_pk, NOW + 500, revocations).name == "door"
    _, late = join(mesh, late_token, now=NOW + 500)
    refused(
        "after that organizer was revoked",
        verify_chain, late.chain, mesh.authority_pk, NOW + 500, revocations,
    )
    # A revocation stays valid after its issuer was revoked: order does not matter.
    again = RevocationList(mesh.authority_pk)
    for blob in reversed(revocations.blobs()):
        again.add(blob, NOW + 600)
    assert again.blobs() == revocations.blobs()


def test_revocation_dated_in_the_future_refused() -> None:
    mesh = new_mesh()
    target = node_id(mesh.organizer)
    blob = create_revocation(mesh.authority_pk, mesh.authority, None, target, NOW + DAY_S)
    refused("dated in the future", RevocationList(mesh.authority_pk).add, blob, NOW)


# --- single use ---------------------------------------------------------------------------------


def test_an_expired_invite_is_judged_by_the_members_clock_not_the_joiners() -> None:
    """A joiner whose clock is set back signs a credential "before" the invite's expiry; a member
    that has been one since before the expiry and first sees that use later refuses it."""
    mesh = new_mesh()
    token = invite(mesh, expires_at=NOW + HOUR_S)
    _, late = join(mesh, token, now=NOW + HOUR_S - 1)  # its clock says it is still in time
    since = member_since(mesh.organizer_chain, mesh.authority_pk)
    assert since == NOW
    late_seen = NOW + HOUR_S + INVITE_SEEN_SKEW_S + 1
    refused("invite expired before any member saw it used", verify_chain, late.chain, mesh.authority_pk,
            late_seen, invite_ledger=InviteLedger(), member_since=since)
    # within the allowance for clocks, or once a member recorded the use in time, it is accepted
    assert verify_chain(late.chain, mesh.authority_pk, late_seen - 2, invite_ledger=InviteLedger(), member_since=since)
    ledger = InviteLedger([(late.member.invite_id, late.member.node_id, NOW + HOUR_S - 1)])
    assert verify_chain(late.chain, mesh.authority_pk, late_seen + DAY_S, invite_ledger=ledger, member_since=since)
    # a node that joined after the invite expired cannot judge (it has not seen the mesh's uses yet)
    assert verify_chain(late.chain, mesh.authority_pk, late_seen, invite_ledger=InviteLedger(),
                        member_since=NOW + HOUR_S + 1)


def test_second_node_using_a_token_is_refused() -> None:
    mesh = new_mesh()
    token = invite(mesh)
    first_key, first = join(mesh, token)
    second_key, second = join(mesh, token, now=NOW + 90)  # redeeming is offline: it cannot know
    ledger = InviteLedger()
    member = verify_chain(first.chain, mesh.authority_pk, NOW + 100, invite_ledger=ledger)
    assert member.name == "door"
    refused(
        f"invite already used by {node_id(first_key)[:10]}",
        verify_chain, second.chain, mesh.authority_pk, NOW + 100, invite_ledger=ledger,
    )
    assert verify_chain(first.chain, mesh.authority_pk, NOW + 200, invite_ledger=ledger)
    assert ledger.used_by(first.member.invite_id) == node_id(first_key)
    assert ledger.items() == [(first.member.invite_id, node_id(first_key), NOW + 100)]
    restored = InviteLedger(ledger.items())
    refused(
        "already used", verify_chain, second.chain, mesh.authority_pk, NOW, invite_ledger=restored
    )
    assert not restored.record(first.member.invite_id, node_id(second_key))
    assert restored.record(first.member.invite_id, node_id(first_key))


def test_ledger_records_every_invite_in_the_chain() -> None:
    mesh = new_mesh()
    second_key, second = join(mesh, invite(mesh, role=Role.ORGANIZER, name="co"))
    _, hub = join(mesh, invite(mesh, role=Role.HUB, issuer=(second_key, second.chain)))
    ledger = InviteLedger()
    verify_chain(hub.chain, mesh.authority_pk, NOW + 60, invite_ledger=ledger)
    assert ledger.used_by(second.member.invite_id) == node_id(second_key)
    assert len(ledger.items()) == 2


# --- hostile input ------------------------------------------------------------------------------


@functools.cache
def samples() -> tuple[Mesh, str, bytes, bytes]:
    mesh = new_mesh()
    token = invite(mesh, role=Role.ORGANIZER)
    key, joined = join(mesh, token)
    target = node_id(mesh.organizer)
    blob = create_revocation(mesh.authority_pk, key, joined.chain, target, NOW + 60)
    return mesh, token, joined.chain, blob


def only_credential_errors(call, *args) -> None:
    try:
        call(*args)
    except CredentialError:
        pass


def check_all(data: bytes) -> None:
    mesh, _, _, _ = samples()
    only_credential_errors(verify_chain, data, mesh.authority_pk, NOW + 60)
    only_credential_errors(RevocationList(mesh.authority_pk).add, data, NOW + 60)
    only_credential_errors(parse_invite, "am1" + b64(data))


fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_credential_error(data: bytes) -> None:
    check_all(data)


@fast
@given(st.text(max_size=300))
def test_random_text_tokens_only_raise_credential_error(text: str) -> None:
    only_credential_errors(parse_invite, text)
    only_credential_errors(parse_invite, "am1" + text)


def mutate(data: bytes, draw) -> bytes:
    at = draw(st.integers(0, len(data) - 1))
    action = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
    if action == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if action == "cut":
        return data[:at]
    if action == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data[:at] + data[at + draw(st.integers(1, 8)) :]


@fast
@given(st.data())
def test_mutated_chains_tokens_and_revocations_only_raise_credential_error(data) -> None:
    mesh, token, chain, blob = samples()
    check_all(mutate(chain, data.draw))
    only_credential_errors(RevocationList(mesh.authority_pk).add, mutate(blob, data.draw), NOW + 60)
    text = mutate(token.encode(), data.draw).decode("latin-1")
    only_credential_errors(parse_invite, text)
    only_credential_errors(redeem_invite, text, Ed25519PrivateKey.generate(), "n", NOW + 60)
    raw = base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4))
    only_credential_errors(
        parse_invite, "am1" + b64(mutate(raw, data.draw))
    )


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=4,
)
any_field = st.sampled_from(
    sorted(m._CREDENTIAL_FIELDS | m._INVITE_FIELDS | m._REVOCATION_FIELDS | {"extra"})
)


@functools.cache
def valid_bodies() -> dict[str, dict]:
    """Bodies that verify in place, for the hostile-body test to spoil one field at a time."""
    mesh, _, _, _ = samples()
    mesh_id = mesh_id_from_authority_key(mesh.authority_pk)
    return {
        "root": m._credential_body(
            mesh.authority_pk, mesh.organizer, Role.ORGANIZER, "o", NOW, NOW + DAY_S, None
        ),
        "invite": {
            "kind": "invite", "mesh": mesh_id, "invite_id": bytes(16), "role": "edge",
            "name": None, "issued_at": NOW, "expires_at": NOW + HOUR_S,
            "invite_key": public_key_bytes(INVITE_KEY),
        },
        "member": m._credential_body(
            mesh.authority_pk, INVITE_KEY, Role.EDGE, "e", NOW, NOW + HOUR_S, bytes(16)
        ),
        "revocation": {
            "kind": "revocation", "mesh": mesh_id, "node_key": bytes(32), "at": NOW, "reason": "",
        },
    }


INVITE_KEY = Ed25519PrivateKey.generate()


def hostile_input(target: str, body: dict) -> tuple:
    """(function, args) that feeds `body`, correctly signed, to the verifier at `target`."""
    mesh, _, _, _ = samples()
    good = valid_bodies()
    if target == "revocation":
        blob = cbor2.dumps([None, m._sign(mesh.authority, "revocation", body)], canonical=True)
        return RevocationList(mesh.authority_pk).add, blob, NOW
    statements = [m._sign(mesh.authority, "credential", body if target == "root" else good["root"])]
    if target != "root":
        invite_body = body if target == "invite" else good["invite"]
        member_body = body if target == "member" else good["member"]
        statements += [
            m._sign(mesh.organizer, "invite", invite_body),
            m._sign(INVITE_KEY, "credential", member_body),
        ]
    return verify_chain, cbor2.dumps(statements, canonical=True), mesh.authority_pk, NOW


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["root", "invite", "member", "revocation"]),
    st.dictionaries(any_field, plain, max_size=3),
    st.lists(any_field, max_size=2),
)
def test_correctly_signed_hostile_bodies_only_raise_credential_error(
    target: str, spoil: dict, drop: list
) -> None:
    body = {**valid_bodies()[target], **spoil}
    for field in drop:
        body.pop(field, None)
    call, *args = hostile_input(target, body)
    only_credential_errors(call, *args)


def test_hostile_body_harness_accepts_the_unspoiled_bodies() -> None:
    for target in ["root", "invite", "member", "revocation"]:
        call, *args = hostile_input(target, valid_bodies()[target])
        call(*args)  # raises if the harness itself were broken


def test_oversize_inputs_refused() -> None:
    mesh, _, chain, _ = samples()
    refused("too large", verify_chain, chain + bytes(m.CHAIN_BYTES_MAX), mesh.authority_pk, NOW)
    refused("not canonical", verify_chain, chain + b"\x00", mesh.authority_pk, NOW + 60)
    tagged = cbor2.dumps(cbor2.CBORTag(2, b"\x01" * 50))
    refused("not valid CBOR", verify_chain, tagged, mesh.authority_pk, NOW)
    refused("32 bytes", verify_chain, chain, b"short", NOW)


# --- fleet keys -----------------------------------------------------------------------------------


def fleet(mesh: Mesh, uses: int) -> str:
    return create_invite(mesh.authority_pk, mesh.organizer, mesh.organizer_chain, Role.EDGE, None,
                         NOW + DAY_S, HINTS, NOW, uses=uses)


def test_a_fleet_key_admits_its_uses_each_box_once_and_names_none() -> None:
    mesh = new_mesh()
    token = fleet(mesh, 3)
    assert parse_invite(token).uses == 3 and parse_invite(token).name is None
    boxes = [join(mesh, token, name=f"box-{i}") for i in range(4)]
    ledger = InviteLedger()
    for at, (_, joined) in enumerate(boxes[:3]):
        verify_chain(joined.chain, mesh.authority_pk, NOW + 100 + at, invite_ledger=ledger)
    refused("fleet key used up", verify_chain, boxes[3][1].chain, mesh.authority_pk, NOW + 200, invite_ledger=ledger)
    assert verify_chain(boxes[0][1].chain, mesh.authority_pk, NOW + 300, invite_ledger=ledger), "again: still in"
    with pytest.raises(UsageError, match="cannot name one"):
        create_invite(mesh.authority_pk, mesh.organizer, mesh.organizer_chain, Role.EDGE, "door", NOW + DAY_S,
                      HINTS, NOW, uses=3)


def test_a_revoked_fleet_key_admits_no_new_box_and_keeps_the_ones_it_admitted() -> None:
    mesh = new_mesh()
    token = fleet(mesh, 5)
    (_, first), (_, second) = join(mesh, token, name="a"), join(mesh, token, name="b")
    ledger, revocations = InviteLedger(), RevocationList(mesh.authority_pk)
    verify_chain(first.chain, mesh.authority_pk, NOW + 100, revocations, ledger)
    revocations.add(create_revocation(mesh.authority_pk, mesh.organizer, mesh.organizer_chain,
                                      parse_invite(token).key_id, NOW + 150, "lost"), NOW + 150)
    refused("fleet key revoked", verify_chain, second.chain, mesh.authority_pk, NOW + 200, revocations, ledger)
    assert verify_chain(first.chain, mesh.authority_pk, NOW + 200, revocations, ledger).name == "a"
    single = invite(mesh)  # a single-use token revoked before anyone used it
    revocations.add(create_revocation(mesh.authority_pk, mesh.organizer, mesh.organizer_chain,
                                      parse_invite(single).key_id, NOW + 250, "leaked"), NOW + 250)
    refused("invite revoked", verify_chain, join(mesh, single)[1].chain, mesh.authority_pk, NOW + 300, revocations,
            ledger)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uses=st.integers(1, 4),
       steps=st.lists(st.one_of(st.tuples(st.just("admit"), st.integers(0, 2), st.integers(0, 5)),
                                st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2))), max_size=30))
def test_concurrent_admits_on_partitioned_verifiers_end_with_the_same_first_uses(uses, steps) -> None:
    """Three verifiers admit boxes with one key while partitioned (a box may try several); each
    records its uses in its replica of the shared state. Once they have synced, every verifier,
    reading only the state, admits exactly the same boxes: the first `uses` by (time recorded, node
    id), never more, and refuses the rest."""
    mesh = new_mesh()
    token = invite(mesh, name=None) if uses == 1 else fleet(mesh, uses)
    boxes = [join(mesh, token, name=f"box-{i}") for i in range(6)]
    replicas = [MeshState(actor_id(f"verifier-{i}", bytes([i + 1]) * 8)) for i in range(3)]
    ledgers = [InviteLedger() for _ in range(3)]
    for step, (kind, i, j) in enumerate(steps):
        at = NOW + 100 + step
        if kind == "admit":
            ledger = ledgers[i]
            for invite_id, node, when in replicas[i].invite_use_entries():
                ledger.record(invite_id, node, when)
            try:
                member = verify_chain(boxes[j][1].chain, mesh.authority_pk, at, invite_ledger=ledger)
            except CredentialError:
                continue
            replicas[i].record_invite_use(member.invite_id, member.node_id, at)
        elif i != j:
            sync_pair(replicas[i], replicas[j])
    for i, j in ((0, 1), (1, 2), (0, 2)):
        sync_pair(replicas[i], replicas[j])
    recorded = {node for _, node, _ in replicas[0].invite_use_entries()}
    admitted = []
    for replica in replicas:  # each recorded box, checked against a ledger read from the state alone
        admitted.append({box.member.node_id for _, box in boxes if box.member.node_id in recorded
                         and _admits(InviteLedger(replica.invite_use_entries()), mesh, box.chain)})
    assert admitted[0] == admitted[1] == admitted[2], "every verifier agrees"
    assert len(admitted[0]) == min(uses, len(recorded)), "exactly the first uses, never more"


def _admits(ledger: InviteLedger, mesh: Mesh, chain: bytes) -> bool:
    try:
        verify_chain(chain, mesh.authority_pk, NOW + 10_000, invite_ledger=ledger)
    except CredentialError:
        return False
    return True
