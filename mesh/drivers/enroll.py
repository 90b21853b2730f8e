"""Joining a mesh from a token: `mesh join TOKEN`, and a fresh box's `mesh up` with a fleet key.

A fleet key is an invite token that admits up to N distinct boxes (`mesh invite --fleet`). A box
whose home holds no identity yet finds one in, first to last:
- `--enroll FILE` or `enroll = "..."` in its config file (the key itself, or a path to a file),
- the environment variable MESH_ENROLL (the key itself),
- the file /boot/assetmesh.key (the boot partition of an SD-card image, editable from any laptop).
It then makes its identity and joins offline, exactly as `mesh join` would (the key carries the
mesh's authority, key and name), and the agent starts as a member; it finds its peers by mDNS.
Whether the key is still good everywhere (uses left, not revoked) is for each peer to decide at
the handshake: a refused box keeps running and says so in its log.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from mesh.drivers.filestore import FileStore
from mesh.drivers.home import Home, HomeInfo, default_node_name
from mesh.drivers.statefile import StateFile
from mesh.errors import CredentialError, UsageError
from mesh.state import membership
from mesh.state.document import actor_id

ENROLL_ENV = "MESH_ENROLL"
ENROLL_FILE_DEFAULT = Path("/boot/assetmesh.key")
KEY_FILE_BYTES_MAX = 2 * membership.TOKEN_CHARS_MAX


@dataclass(frozen=True)
class EnrollKey:
    """A token to join with, and where it came from (for messages)."""

    token: str
    source: str  # "the config", "MESH_ENROLL", "/boot/assetmesh.key", a file path


def read_key(value: str, source: str) -> EnrollKey:
    """A token given as text, or as the path of a file holding it; UsageError naming `source`."""
    text = value.strip()
    if not text.startswith(membership.TOKEN_PREFIX):
        path = Path(text).expanduser()
        try:
            if path.stat().st_size > KEY_FILE_BYTES_MAX:
                raise UsageError(f"{source}: {path} is too large to be a fleet key")
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except FileNotFoundError:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise UsageError(f"{source}: {shown!r} is neither a key (those start with "
                             f"{membership.TOKEN_PREFIX!r}) nor a file holding one") from None
        except OSError as exc:
            raise UsageError(f"{source}: cannot read {path}: {exc.strerror}") from None
        source = f"{source} ({path})"
    return EnrollKey(text, source)


def key_offered(configured: str | None, environ: dict[str, str] | None = None,
                default_file: Path = ENROLL_FILE_DEFAULT) -> bool:
    """Whether this box was given an enrollment key at all (good or not)."""
    env = os.environ if environ is None else environ
    return bool(configured) or bool(env.get(ENROLL_ENV, "").strip()) or default_file.is_file()


def find_key(configured: str | None, environ: dict[str, str] | None = None,
             default_file: Path = ENROLL_FILE_DEFAULT) -> EnrollKey | None:
    """The enrollment key from the config (or --enroll), MESH_ENROLL, or the default file; None
    if there is none."""
    env = os.environ if environ is None else environ
    if configured:
        return read_key(configured, "enroll")
    if env.get(ENROLL_ENV, "").strip():
        return read_key(env[ENROLL_ENV], ENROLL_ENV)
    if default_file.is_file():
        return read_key(str(default_file), str(default_file))
    return None


def joiner_name(invite: membership.Invite, name: str | None, node_id: str) -> str:
    """The name a joining node takes: the one asked for, the invite's, or for a fleet key the host
    name with 4 characters of the node id (boxes made from one image share a host name)."""
    if name:
        return name
    if invite.name:
        return invite.name
    base = default_node_name()
    return f"{base[: membership.NAME_CHARS_MAX - 5]}-{node_id[-4:]}" if invite.uses > 1 else base


def join_home(path: Path, token: str, name: str | None = None, now: float | None = None,
              node_key=None) -> Home:
    """Make `path` a new home that is a member of the mesh `token` invites to (offline: the node
    signs its own credential with the token's key), with `node_key` or a new one.
    CredentialError / UsageError say why not."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mesh.ids import node_id_from_public_key

    now = time.time() if now is None else now
    invite = membership.parse_invite(token)
    Home.prepare(path)
    if now >= invite.expires_at:
        raise CredentialError("this invite expired: ask an organizer for a new one")
    node_key = node_key or Ed25519PrivateKey.generate()
    node_id = node_id_from_public_key(membership.public_key_bytes(node_key))
    result = membership.redeem_invite(token, node_key, joiner_name(invite, name, node_id), now)
    member = result.member
    info = HomeInfo(
        mesh_id=member.mesh_id, mesh_name=invite.mesh_name or f"mesh {member.mesh_id[:8]}",
        authority_public_key=invite.authority_public_key, node_id=member.node_id,
        name=member.name, role=member.role.value, chain=result.chain, hints=invite.hints,
        mesh_key=invite.mesh_key,
    )
    home = Home.write_new(path, info, node_key)
    FileStore(home.store_path).close()
    record_self(home, now)
    return home


def record_self(home: Home, now: float) -> None:
    """Put this node into the shared member list, so peers learn of it on first sync."""
    info = home.info
    with StateFile(home.state_path).transaction(actor_id(info.node_id, secrets.token_bytes(8))) as state:
        state.put_member(info.node_id, info.chain, info.role, info.name, now)
