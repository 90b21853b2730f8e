"""Real mesh identities for tests and simulations: an authority, a founder, invited members.

Every credential here is made by the production code in `mesh.state.membership` (root credential,
invite, redemption, revocation); nothing is faked. The only thing this module controls is where
the randomness comes from: keys are derived from an injected `random.Random`, and while it calls
`create_invite` the membership module's own random sources (the invite id and the invite's
one-time key) draw from that rng too. So a seed fixes node ids, chains and revocation blobs, and a
simulation replays byte for byte. Never use these keys outside tests.
"""

from __future__ import annotations

import contextlib
import random
import types
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.core.node import CoreIdentity
from mesh.ids import mesh_id_from_authority_key, node_id_from_public_key
from mesh.state import membership
from mesh.state.membership import (
    CREDENTIAL_VALID_S_DEFAULT,
    Role,
    create_first_credential,
    create_invite,
    create_revocation,
    public_key_bytes,
    redeem_invite,
)

PRIVATE_KEY_BYTES = 32
INVITE_VALID_S = 3600.0


def seeded_key(rng: random.Random) -> Ed25519PrivateKey:
    """An Ed25519 key whose 32 secret bytes come from `rng` (tests only)."""
    return Ed25519PrivateKey.from_private_bytes(rng.randbytes(PRIVATE_KEY_BYTES))


@contextlib.contextmanager
def seeded_membership_randomness(rng: random.Random) -> Iterator[None]:
    """Make `mesh.state.membership` draw invite ids and one-time invite keys from `rng`."""

    class _SeededKeys:
        generate = staticmethod(lambda: seeded_key(rng))
        from_private_bytes = staticmethod(Ed25519PrivateKey.from_private_bytes)

    seeded_secrets = types.SimpleNamespace(token_bytes=rng.randbytes)
    with mock.patch.object(membership, "secrets", seeded_secrets), \
            mock.patch.object(membership, "Ed25519PrivateKey", _SeededKeys):
        yield


@dataclass(frozen=True)
class MemberIdentity:
    """One node's identity: its key and the credential chain that proves its membership."""

    name: str  # human name, as signed in the credential
    role: Role  # organizer, hub or edge
    key: Ed25519PrivateKey  # the node's Ed25519 key
    chain: bytes  # its credential chain
    mesh_id: str  # the mesh it belongs to
    authority_public_key: bytes  # the mesh authority's raw public key

    @property
    def public_key(self) -> bytes:
        return public_key_bytes(self.key)

    @property
    def node_id(self) -> str:
        return node_id_from_public_key(self.public_key)

    def core_identity(self) -> CoreIdentity:
        """What a `NodeCore` needs to know about itself."""
        return CoreIdentity(
            node_id=self.node_id, mesh_id=self.mesh_id, authority_public_key=self.authority_public_key,
            chain=self.chain, name=self.name, role=self.role.value,
        )


class TestMesh:
    """A mesh authority and its founder (first organizer); invites members on demand."""

    __test__ = False  # not a pytest test class

    def __init__(self, rng: random.Random, now: float, founder_name: str = "founder",
                 valid_s: float = CREDENTIAL_VALID_S_DEFAULT) -> None:
        self._rng = rng
        self.valid_s = valid_s
        self.authority_key = seeded_key(rng)
        self.authority_public_key = public_key_bytes(self.authority_key)
        self.mesh_id = mesh_id_from_authority_key(self.authority_public_key)
        key = seeded_key(rng)
        chain = create_first_credential(self.authority_key, key, founder_name, now, valid_s)
        self.founder = self._identity(founder_name, Role.ORGANIZER, key, chain)

    def _identity(self, name: str, role: Role, key: Ed25519PrivateKey, chain: bytes) -> MemberIdentity:
        return MemberIdentity(name, role, key, chain, self.mesh_id, self.authority_public_key)

    def add_member(self, name: str, role: Role | str, now: float,
                   inviter: MemberIdentity | None = None) -> MemberIdentity:
        """A new member invited by `inviter` (default: the founder), with a redeemed credential."""
        inviter = inviter or self.founder
        role = Role(role)
        key = seeded_key(self._rng)
        with seeded_membership_randomness(self._rng):
            token = create_invite(
                self.authority_public_key, inviter.key, inviter.chain, role, name,
                now + INVITE_VALID_S, [], now,
            )
            joined = redeem_invite(token, key, name, now, self.valid_s)
        return self._identity(name, role, key, joined.chain)

    def members(self, count: int, now: float, role: Role | str = Role.EDGE,
                prefix: str = "node") -> list[MemberIdentity]:
        """`count` members named prefix-0, prefix-1, ..."""
        return [self.add_member(f"{prefix}-{i}", role, now) for i in range(count)]

    def revocation(self, node_id: str, now: float, by: MemberIdentity | None = None,
                   reason: str = "") -> bytes:
        """A signed revocation of `node_id` by an organizer (default: the founder)."""
        by = by or self.founder
        return create_revocation(self.authority_public_key, by.key, by.chain, node_id, now, reason)

    def authority_revocation(self, node_id: str, now: float, reason: str = "") -> bytes:
        """A revocation signed by the mesh authority key itself."""
        return create_revocation(self.authority_public_key, self.authority_key, None, node_id, now, reason)


__all__ = ["MemberIdentity", "TestMesh", "seeded_key", "seeded_membership_randomness"]
