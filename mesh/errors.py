"""The exception tree. Every error we raise on purpose derives from `MeshError`."""


class MeshError(Exception):
    """Root of every error AssetMesh raises on purpose; its message is one user-facing line."""


class UsageError(MeshError):
    """The user asked for something that cannot be done as asked (bad argument, missing path)."""


class HomeError(MeshError):
    """The node's home directory is missing, not initialised, or unreadable."""


class NotFoundError(MeshError):
    """A CID, asset, member or release that the caller named does not exist here."""


class StoreError(MeshError):
    """The local store cannot complete an operation (disk full, permission denied, I/O error)."""


class CorruptChunkError(StoreError):
    """Stored bytes no longer hash to their CID."""

    def __init__(self, cid: str, message: str | None = None) -> None:
        super().__init__(message or f"chunk {cid} is corrupt")
        self.cid = cid


class CredentialError(MeshError):
    """A membership credential, invite or revocation failed verification."""


class ProtocolError(MeshError):
    """A protocol rule was broken; see the two subclasses for whose fault it was."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (malformed frame, bad signature, oversize); close its session."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids: a bug on our side."""
