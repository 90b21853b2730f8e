"""How commands talk to people: one-line errors, JSON on request, progress on a TTY."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_CONSOLES: dict[str, Any] = {}  # "stdout"/"stderr" -> rich Console, made on first use


def __getattr__(name: str) -> Any:
    """`output.stdout` and `output.stderr`: rich Consoles, imported only when a command prints
    through them (rich costs ~40 ms of start-up that `mesh cat` and `mesh add --json` skip)."""
    if name not in ("stdout", "stderr"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def _console(name: str) -> Any:  # -> rich.console.Console
    if name not in _CONSOLES:
        from rich.console import Console

        _CONSOLES[name] = Console(stderr=name == "stderr", highlight=False, soft_wrap=True)
    return _CONSOLES[name]


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def fail_line(message: str) -> None:
    """The single line a user sees for an error."""
    _console("stderr").print(f"[bold red]error:[/] {message}", markup=True)


@contextmanager
def byte_progress(description: str, total: int, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar over bytes on a TTY; a no-op callback when quiet or piped."""
    if quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
    from rich.progress import TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console("stderr"), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
