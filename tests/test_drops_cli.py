"""`mesh drop` from the command line, with no agent running: create, ls --json, reserve --json from
this box's allowance, sell, cancel, close; every refusal is one clear line and changes nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import assert_one_line_error, run_mesh


def _ok(result) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def _json(*args, home: Path):
    return json.loads(_ok(run_mesh(*args, "--json", home=home)))


def _state_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((home / "state").rglob("*")) if p.is_file() and p.name != "lock")


def test_a_drop_sells_its_stock_and_not_one_more(org_home: Path) -> None:
    made = _json("drop", "create", "Signed print", "--stock", "2", "--price", "25eur", "--tag", "Merch",
                 "--pay-url", "https://pay.example/p/{order}", home=org_home)
    drop_id = made["id"]
    assert (made["stock"], made["sold"], made["reserved"], made["tag"], made["price"]) == (2, 0, 0, "merch", "25EUR")
    first = _json("drop", "reserve", drop_id, home=org_home)
    assert set(first) >= {"order", "expires"} and first["expires"] > time.time() + 800
    assert first["pay_url"] == f"https://pay.example/p/{first['order']}"
    second = _json("drop", "reserve", "Signed print", "--hold", "90s", home=org_home)  # by name too
    assert second["order"] != first["order"] and second["expires"] < time.time() + 100
    before = _state_bytes(org_home)
    assert_one_line_error(run_mesh("drop", "reserve", drop_id, home=org_home), "allowance is used up")
    assert _state_bytes(org_home) == before  # a refusal writes nothing

    assert _json("drop", "sell", drop_id, "--order", first["order"].lower(), home=org_home)["status"] == "paid"
    assert_one_line_error(run_mesh("drop", "sell", drop_id, "--order", first["order"], home=org_home), "is paid")
    assert_one_line_error(run_mesh("drop", "sell", drop_id, "--order", "ZZZZZZ", home=org_home), "no order ZZZZZZ")
    assert_one_line_error(run_mesh("drop", "sell", drop_id, "--order", "12", home=org_home), "not an order code")
    assert _json("drop", "cancel", drop_id, "--order", second["order"], home=org_home)["status"] == "cancelled"

    (row,) = _json("drop", "ls", home=org_home)
    assert {k: row[k] for k in ("id", "name", "stock", "sold", "reserved")} == {
        "id": drop_id, "name": "Signed print", "stock": 2, "sold": 1, "reserved": 0}
    assert list(row["per_node"].values())[0]["left"] == 1

    final = _json("drop", "close", drop_id, home=org_home)
    assert final["closed"] and (final["sold"], final["left"]) == (1, 1)
    assert_one_line_error(run_mesh("drop", "reserve", drop_id, home=org_home), "is closed")
    assert_one_line_error(run_mesh("drop", "close", drop_id, home=org_home), "already closed")


def test_bad_input_is_one_clear_line(org_home: Path, tmp_path: Path) -> None:
    for args, needle in [
        (("drop", "create", "x", "--stock", "0", "--price", "1EUR"), "stock"),
        (("drop", "create", "x", "--stock", "3", "--price", "cheap"), "--price"),
        (("drop", "create", "x", "--stock", "3", "--price", "1EUR", "--pay-url", "ftp://x"), "pay URL"),
        (("drop", "create", "x", "--stock", "3", "--price", "1EUR", "--alloc", "nobody=2"), "names 0 members"),
        (("drop", "reserve", "nosuchdrop"), "no drop"),
        (("drop", "reserve", "x", "--hold", "soon"), "duration"),
    ]:
        assert_one_line_error(run_mesh(*args, home=org_home), needle)
    edge = tmp_path / "edge"
    token = _ok(run_mesh("invite", "--role", "edge", "--name", "door-1", home=org_home)).strip()
    _ok(run_mesh("join", token, home=edge))
    assert_one_line_error(run_mesh("drop", "create", "x", "--stock", "3", "--price", "1EUR", home=edge),
                          "only organizers")
