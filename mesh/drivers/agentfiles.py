"""Files a running agent keeps in its home, so CLI commands can find it.

    run/agent.lock    held (flock) by the running agent: one agent per home
    run/status.json   the agent's status document, rewritten atomically every second
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

from mesh.drivers.home import write_atomic
from mesh.errors import HomeError

RUN_DIR = "run"
LOCK_FILE = "agent.lock"
STATUS_FILE = "status.json"


def acquire_agent_lock(home_path: Path) -> IO[bytes]:
    """Take the home's agent lock; HomeError if another agent already runs here."""
    run = home_path / RUN_DIR
    run.mkdir(exist_ok=True)
    handle = open(run / LOCK_FILE, "a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise HomeError(f"an agent is already running for {home_path} (see `mesh status`)") from None
    handle.truncate(0)
    handle.write(str(os.getpid()).encode())
    handle.flush()
    return handle


def agent_running(home_path: Path) -> bool:
    """True if some process holds this home's agent lock."""
    path = home_path / RUN_DIR / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def write_status(home_path: Path, status: dict) -> None:
    write_atomic(home_path / RUN_DIR / STATUS_FILE, json.dumps(status, sort_keys=True).encode())


def read_status(home_path: Path) -> dict | None:
    """The running agent's last status, or None if no agent runs for this home."""
    if not agent_running(home_path):
        return None
    try:
        return json.loads((home_path / RUN_DIR / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
