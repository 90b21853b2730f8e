"""The interfaces drivers provide to the runtime: byte-stream transport, discovery, chunk store.

`Transport` hides whether peers are reached over TCP or an in-process memory network; every
implementation passes `tests/transport_conformance.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from mesh.content.store import ChunkStore
from mesh.core.events import Address

StreamHandler = Callable[[trio.abc.Stream, Address | None], Awaitable[None]]


class Transport(Protocol):
    """Reliable ordered byte streams between addresses."""

    async def connect(self, address: Address, timeout_s: float) -> trio.abc.Stream:
        """Open a stream to `address`; OSError (or trio.TooSlowError) if nobody answers."""
        ...

    async def serve(
        self, address: Address, handler: StreamHandler, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept streams on `address` until cancelled; `task_status.started(bound_address)`.
        Each accepted stream runs `handler(stream, remote_address)` in its own task; a handler's
        exception is logged and never stops the listener."""
        ...


class Discovery(Protocol):
    """Announces this node and reports others of the same mesh."""

    async def run(self, found: trio.MemorySendChannel, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        ...


__all__ = ["Address", "ChunkStore", "Discovery", "StreamHandler", "Transport"]
