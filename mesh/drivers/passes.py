"""Passes over the shared state on a worker thread: the consent evaluation, the gateway's
catalog, the purge's keep set. Each reads every asset (~0.3 s at 10,000 assets), so none may run
on the trio thread; none needs a copy of the document either.

A pass reads the live document through a `MeshState.reader` (the binding guards the document
with a lock, so a read on another thread is safe, and sees what is committed when it runs). If
the document moved while the pass ran, what it read may mix two versions: it runs again, and
after `READER_TRIES` such runs over a fork (~30 ms at 10,000 assets, holding the GIL: the stall
the reader spares the core loop), which nothing else writes to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from mesh.state.document import MeshState

log = logging.getLogger(__name__)

T = TypeVar("T")
READER_TRIES = 3  # runs over the live document before a pass falls back to a fork


async def state_pass(state: MeshState, run: Callable[..., T], *args: Any,
                     limiter: trio.CapacityLimiter | None = None) -> T:
    """`run(reader, *args)` on a worker thread, as of the state's heads when it started."""
    for _ in range(READER_TRIES):
        reader = state.reader()
        try:
            result = await trio.to_thread.run_sync(run, reader, *args, limiter=limiter)
        except Exception:
            if reader.unmoved():
                raise  # it failed over a settled document: a real error
            continue  # it read a document changing under it: run again
        if reader.unmoved():
            state.adopt_index(reader)
            return result
    log.debug("state.pass_forked run=%s", getattr(run, "__name__", run))
    return await trio.to_thread.run_sync(run, state.fork(), *args, limiter=limiter)
