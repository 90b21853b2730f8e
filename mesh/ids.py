"""Identifiers: node ids, mesh ids and the base32 text form they share.

A node id is the node's Ed25519 public key in unpadded lower-case base32 (52 characters), so it
names the key itself and cannot be claimed by anyone else. A mesh id is derived from the mesh
authority's public key, so a mesh id also cannot be forged.
"""

from __future__ import annotations

import base64
import binascii
from typing import NewType

import blake3

NodeId = NewType("NodeId", str)
MeshId = NewType("MeshId", str)

ED25519_PUBLIC_KEY_BYTES = 32
MESH_ID_BYTES = 16


def b32encode(data: bytes) -> str:
    """Unpadded lower-case RFC 4648 base32."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(text: str) -> bytes:
    """Inverse of `b32encode`; raises ValueError on anything that is not unpadded base32."""
    if not text or text != text.strip() or "=" in text:
        raise ValueError("not unpadded base32")
    padding = "=" * (-len(text) % 8)
    try:
        return base64.b32decode(text.upper() + padding)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base32: {exc}") from None


def node_id_from_public_key(public_key: bytes) -> NodeId:
    """The node id naming a raw 32-byte Ed25519 public key."""
    if len(public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return NodeId(b32encode(public_key))


def public_key_from_node_id(node_id: str) -> bytes:
    """The raw Ed25519 public key a node id names; ValueError if it names none."""
    raw = b32decode(node_id)
    if len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise ValueError("a node id encodes 32 bytes")
    if b32encode(raw) != node_id:  # spare trailing bits set: an alias of another id
        raise ValueError("not a canonical node id")
    return raw


def parse_node_id(text: str) -> NodeId:
    """Validate user or wire input as a node id."""
    public_key_from_node_id(text)
    return NodeId(text)


def mesh_id_from_authority_key(public_key: bytes) -> MeshId:
    """A mesh is named by a hash of its authority's public key."""
    if len(public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise ValueError("an Ed25519 public key has 32 bytes")
    digest = blake3.blake3(b"assetmesh/mesh-id/v1\x00" + public_key).digest()
    return MeshId(b32encode(digest[:MESH_ID_BYTES]))


def short(identifier: str) -> str:
    """The first characters of an id, for humans and log lines."""
    return identifier[:10]
