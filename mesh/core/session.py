"""One session per connection: hello -> ready -> closing.

Rules:
- A session starts in HELLO once the secure handshake authenticated the peer. Both sides send a
  Hello at once; the peer's Hello must name the node the handshake proved and our mesh, in a
  protocol version we speak, before `hello_timeout_s`. Anything else closes the session.
- In READY, every message kind is allowed except Hello. Any message refreshes liveness.
- CLOSING is terminal: nothing more is read or sent except what is already queued; the driver's
  `Disconnected` removes the session.
Transitions live in `TRANSITIONS`; `advance` refuses anything not listed there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.core.events import Address
from mesh.errors import LocalProtocolError
from mesh.state.membership import Member
from mesh.wire.messages import MessageDecoder

if TYPE_CHECKING:
    from mesh.content.cid import Cid


class Phase(enum.Enum):
    HELLO = "hello"
    READY = "ready"
    CLOSING = "closing"


class Trigger(enum.Enum):
    HELLO_OK = "hello_ok"  # the peer's Hello checked out
    CLOSE = "close"  # either side ends the session


TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (Phase.HELLO, Trigger.HELLO_OK): Phase.READY,
    (Phase.HELLO, Trigger.CLOSE): Phase.CLOSING,
    (Phase.READY, Trigger.CLOSE): Phase.CLOSING,
}


@dataclass
class Session:
    """What the core knows about one connection."""

    conn_id: int  # the driver's handle
    peer: Member  # authenticated peer
    chain: bytes  # the peer's credential chain
    remote: Address | None  # peer address as the driver saw it
    outbound: bool  # we dialed
    opened_at: float  # when the handshake completed
    decoder: MessageDecoder  # bytes -> messages for this connection
    phase: Phase = Phase.HELLO  # where in the lifecycle
    last_rx: float = 0.0  # when the peer last sent anything
    last_tx: float = 0.0  # when we last sent anything
    listen_port: int | None = None  # where the peer accepts sessions (from its Hello)
    features: frozenset[str] = frozenset()  # optional capabilities the peer's Hello lists
    ping_nonce: int | None = None  # outstanding Ping
    ping_at: float = float("-inf")  # when we last sent a Ping
    sync_parts: list[bytes] = field(default_factory=list)  # pieces of a state sync message
    sync_parts_bytes: int = 0  # their total size
    peer_haves: dict[bytes, tuple[int, bytearray]] = field(default_factory=dict)  # release root ->
    # its latest (count, bits), kept even for releases we do not follow, so a later track can use it
    held_objects: set[bytes] = field(default_factory=set)  # media files it announced as held (binary CIDs)
    automerge_sync: bool = False  # using the Automerge sync protocol (else the heads fast path)
    peer_heads: tuple[bytes, ...] | None = None  # heads we believe the peer has
    heads_sent: tuple[bytes, ...] = ()  # our heads in the last StateHeads we sent
    fallback_at: float | None = None  # switch to Automerge sync then if heads still unknown
    ready_at: float | None = None  # when the session became ready
    held_serves: dict[Cid, float] = field(default_factory=dict)  # chunk -> until when a request for it is held
    deferred_requests: list[bytes] = field(default_factory=list)  # chunk requests held until
    # our state has caught up with every peer's (a revoke we lack must not let bytes out)
    change_parts: list[bytes] = field(default_factory=list)  # pieces of a StateChanges batch
    change_parts_bytes: int = 0  # their total size
    bytes_in: int = 0  # bytes received
    bytes_out: int = 0  # bytes sent
    state_bytes_in: int = 0  # state-sync payload bytes received
    state_bytes_out: int = 0  # state-sync payload bytes sent
    tls_key_sent: str | None = None  # the certificate whose key we sent it (mesh.core.tls)

    @property
    def node_id(self) -> str:
        return self.peer.node_id

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def advance(self, trigger: Trigger) -> None:
        """Move along the transition table; LocalProtocolError on a transition it lacks."""
        target = TRANSITIONS.get((self.phase, trigger))
        if target is None:
            raise LocalProtocolError(f"session {self.conn_id}: no transition {self.phase.value} -{trigger.value}->")
        self.phase = target

    def dialer(self, local_node_id: str) -> str:
        """The node that opened this connection."""
        return local_node_id if self.outbound else self.peer.node_id

    def listen_address(self) -> Address | None:
        """Where this peer accepts sessions, if it told us and we know its host."""
        if self.remote is None or self.listen_port is None:
            return None
        return (self.remote[0], self.listen_port)
