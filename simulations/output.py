"""Printing a scenario's figures with rich, and writing them as canonical JSON."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from simulations.measure import rounded


def to_json(result: dict) -> bytes:
    """Canonical bytes: rounded floats, sorted keys (same seed -> same bytes)."""
    return (json.dumps(rounded(result), sort_keys=True, indent=2) + "\n").encode()


def write_json(result: dict, path: str) -> None:
    Path(path).write_bytes(to_json(result))


def _flatten(prefix: str, value, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key in value:
            _flatten(f"{prefix}.{key}" if prefix else key, value[key], rows)
    elif isinstance(value, list):
        rows.append((prefix, f"[{len(value)} values]"))
    elif isinstance(value, float):
        rows.append((prefix, f"{value:,.3f}"))
    elif isinstance(value, int) and not isinstance(value, bool):
        rows.append((prefix, f"{value:,}"))
    else:
        rows.append((prefix, str(value)))


def print_result(result: dict, wall_s: float | None = None, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"simulation: {result['scenario']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = []
    for key in result:
        if key != "scenario":
            _flatten(key, result[key], rows)
    for name, value in rows:
        table.add_row(name, value)
    if wall_s is not None:
        table.add_row("wall_s (not in JSON)", f"{wall_s:.1f}")
    console.print(table)
