"""A node's home directory: identity keys, mesh membership, the store and the shared state.

Layout:
    home.json        mesh id, authority public key, this node's id, name, role, credential chain
    node.key         this node's Ed25519 private key (PKCS#8 PEM, mode 0600)
    authority.key    the mesh authority's private key (only on the node that ran `mesh init`)
    store/           chunks and their index (see filestore.py)
    state/           the shared Automerge document (snapshot + change log)

Every file is written to a temporary name, flushed and renamed, so a crash leaves the old or the
new version, never a torn one.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mesh.errors import HomeError, StoreError
from mesh.ids import MeshId, NodeId, b32decode, b32encode, mesh_id_from_authority_key
from mesh.ids import node_id_from_public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography and platformdirs are imported where used: commands such as `mesh cat` open a home
# without touching a key, and their start-up time is part of what they cost (docs/benchmarks.md).

HOME_FORMAT = 1
HOME_FILE = "home.json"
NODE_KEY_FILE = "node.key"
AUTHORITY_KEY_FILE = "authority.key"
NODE_NAME_CHARS_MAX = 64


def default_home() -> Path:
    """`MESH_HOME` if set, else the platform's user data directory."""
    env = os.environ.get("MESH_HOME")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("assetmesh", appauthor=False))


def default_node_name() -> str:
    import socket  # only here: it pulls in selectors, and `mesh cat` never names a node

    return socket.gethostname().split(".")[0][:NODE_NAME_CHARS_MAX] or "node"


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a small file so that a crash leaves the old or the new contents."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _key_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise HomeError(f"{path} is missing: this home is damaged") from None
    except PermissionError:
        raise HomeError(f"permission denied reading {path}") from None
    except ValueError:
        raise HomeError(f"{path} is not a valid key file") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise HomeError(f"{path} does not hold an Ed25519 key")
    return key


@dataclass(frozen=True)
class HomeInfo:
    """What home.json records."""

    mesh_id: MeshId  # derived from the authority key
    mesh_name: str  # the event name; stays on this node, never announced
    authority_public_key: bytes  # raw Ed25519 public key of the mesh authority
    node_id: NodeId  # this node
    name: str  # this node's human name
    role: str  # organizer | hub | edge
    chain: bytes  # this node's credential chain
    hints: tuple[tuple[str, int], ...] = ()  # addresses learned from the invite
    mesh_key: bytes | None = None  # the mesh's secret channel key; None in homes made before it existed

    def to_json(self) -> dict:
        doc = {
            "format": HOME_FORMAT,
            "mesh_id": self.mesh_id,
            "mesh_name": self.mesh_name,
            "authority_public_key": b32encode(self.authority_public_key),
            "node_id": self.node_id,
            "name": self.name,
            "role": self.role,
            "chain": base64.b64encode(self.chain).decode("ascii"),
            "hints": [[host, port] for host, port in self.hints],
        }
        if self.mesh_key is not None:
            doc["mesh_key"] = b32encode(self.mesh_key)
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> HomeInfo:
        return cls(
            mesh_id=MeshId(doc["mesh_id"]),
            mesh_name=str(doc["mesh_name"]),
            authority_public_key=b32decode(doc["authority_public_key"]),
            node_id=NodeId(doc["node_id"]),
            name=str(doc["name"]),
            role=str(doc["role"]),
            chain=base64.b64decode(doc["chain"]),
            hints=tuple((str(h), int(p)) for h, p in doc.get("hints", [])),
            mesh_key=b32decode(doc["mesh_key"]) if doc.get("mesh_key") else None,
        )


class Home:
    """An initialised home directory."""

    def __init__(self, path: Path, info: HomeInfo) -> None:
        self.path = path
        self.info = info

    @staticmethod
    def exists(path: Path) -> bool:
        return (path / HOME_FILE).exists()

    @classmethod
    def open(cls, path: Path) -> Home:
        """Open an initialised home; HomeError with what to do if it is not one."""
        home_file = path / HOME_FILE
        try:
            doc = json.loads(home_file.read_text())
        except FileNotFoundError:
            if (path / "hub.json").exists():
                raise HomeError(f"{path} is a hub home: use `mesh hub ...` and `mesh up` there, or "
                                f"--home {path}/meshes/MESH_ID for one of its meshes (`mesh hub ls`)") from None
            raise HomeError(
                f"{path} is not an AssetMesh home: run `mesh init NAME` or `mesh join TOKEN` first"
            ) from None
        except PermissionError:
            raise HomeError(f"permission denied reading {home_file}") from None
        except (OSError, ValueError) as exc:
            raise HomeError(f"{home_file} is unreadable: {exc}") from None
        try:
            info = HomeInfo.from_json(doc)
        except (KeyError, TypeError, ValueError):
            raise HomeError(f"{home_file} is damaged or from an incompatible version") from None
        return cls(path, info)

    @classmethod
    def prepare(cls, path: Path) -> None:
        """Create an empty directory for a new home; refuse to overwrite an existing one."""
        if cls.exists(path):
            raise HomeError(f"{path} already holds an AssetMesh home; choose another --home")
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc.strerror}") from None

    @classmethod
    def write_new(
        cls,
        path: Path,
        info: HomeInfo,
        node_key: Ed25519PrivateKey,
        authority_key: Ed25519PrivateKey | None = None,
    ) -> Home:
        """Write keys first, home.json last: a home is initialised once home.json exists."""
        try:
            write_atomic(path / NODE_KEY_FILE, _key_pem(node_key), 0o600)
            if authority_key is not None:
                write_atomic(path / AUTHORITY_KEY_FILE, _key_pem(authority_key), 0o600)
            write_atomic(path / HOME_FILE, json.dumps(info.to_json(), indent=2).encode())
        except OSError as exc:
            raise StoreError(f"cannot write the new home in {path}: {exc.strerror}") from None
        return cls(path, info)

    def node_key(self) -> Ed25519PrivateKey:
        return _load_key(self.path / NODE_KEY_FILE)

    def authority_key(self) -> Ed25519PrivateKey | None:
        """The authority key if this node holds it (the node that ran `mesh init`)."""
        if not (self.path / AUTHORITY_KEY_FILE).exists():
            return None
        return _load_key(self.path / AUTHORITY_KEY_FILE)

    @property
    def store_path(self) -> Path:
        return self.path / "store"

    @property
    def state_path(self) -> Path:
        return self.path / "state"


def new_identity_ids(node_key: Ed25519PrivateKey, authority_key: Ed25519PrivateKey) -> tuple[NodeId, MeshId]:
    """The node id and mesh id these keys give."""
    node_id = node_id_from_public_key(public_key_bytes(node_key))
    mesh_id = mesh_id_from_authority_key(public_key_bytes(authority_key))
    return node_id, mesh_id
