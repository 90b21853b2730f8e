"""Shared fixtures: run the real `mesh` command in a subprocess against a temporary home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def mesh_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MESH_HOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_mesh(
    *args: str | os.PathLike,
    home: Path | None = None,
    input: bytes | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -m mesh [--home HOME] ARGS...` and capture its output (bytes)."""
    cmd = [*prefix, sys.executable, "-m", "mesh"]
    if home is not None:
        cmd += ["--home", str(home)]
    cmd += [str(a) for a in args]
    return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=mesh_env(env))


@pytest.fixture
def org_home(tmp_path: Path) -> Path:
    """An initialised organizer home."""
    home = tmp_path / "org"
    result = run_mesh("init", "popup-test", "--node-name", "laptop", home=home)
    assert result.returncode == 0, result.stderr.decode()
    return home


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A CLI failure is a non-zero exit and a clear message, never a traceback."""
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert "Traceback" not in err, err
    first = err.strip().splitlines()[0]
    assert first.startswith("error:"), err
    for needle in needles:
        assert needle.lower() in err.lower(), err
    return first
