"""Media from the command line: the canonical tag set (`mesh tags`), what a box keeps (`mesh pin`,
`mesh unpin`), and `mesh doctor` warning when the pins alone exceed the storage budget."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from tests.conftest import assert_one_line_error, run_mesh


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    return result.stdout.decode()


def _add(home: Path, path: Path, size: int, *tags: str) -> dict:
    path.write_bytes(hashlib.shake_256(path.name.encode()).digest(size))
    args = [a for tag in tags for a in ("--tag", tag)]
    return json.loads(_ok(run_mesh("add", path, *args, "--json", home=home)))[0]


def _edge(org_home: Path, tmp_path: Path, name: str = "door") -> Path:
    token = _ok(run_mesh("invite", "--role", "edge", "--name", name, home=org_home)).strip()
    home = tmp_path / name
    _ok(run_mesh("join", token, home=home))
    return home


def test_tags_set_declares_describes_counts_and_replaces_the_set(org_home: Path, tmp_path: Path) -> None:
    _add(org_home, tmp_path / "a.bin", 100, "stage")
    _add(org_home, tmp_path / "b.bin", 100, "stage", "merch")
    result = run_mesh("tags", "set", "music", "Merch", "stage", "--describe", "stage=Live from the main stage",
                      "--json", home=org_home)
    rows = json.loads(_ok(result))
    assert not result.stderr.strip(), "three tags are within the advised range: no warning"
    assert {r["tag"]: (r["description"], r["assets"]) for r in rows} == {
        "music": ("", 0), "merch": ("", 1), "stage": ("Live from the main stage", 2)}
    again = run_mesh("tags", "set", "stage", "door", home=org_home)
    assert "warning:" in again.stderr.decode() and "3 to 6" in again.stderr.decode(), "warned, not refused"
    listed = json.loads(_ok(run_mesh("tags", "ls", "--json", home=org_home)))
    assert {r["tag"] for r in listed} == {"door", "stage"}, "the tags left out are undeclared"
    assert next(r for r in listed if r["tag"] == "stage")["description"] == "Live from the main stage", \
        "a tag kept in the set keeps its description"
    human = _ok(run_mesh("tags", "ls", home=org_home))
    assert "Live from the main stage" in human and "merch" not in human


def test_tags_set_errors_are_one_line_and_change_nothing(org_home: Path, tmp_path: Path) -> None:
    _ok(run_mesh("tags", "set", "music", "merch", "stage", home=org_home))
    before = _ok(run_mesh("tags", "ls", "--json", home=org_home))
    assert_one_line_error(run_mesh("tags", "set", "music", "--describe", "nodelimiter", home=org_home), "TAG=")
    assert_one_line_error(run_mesh("tags", "set", "music", "--describe", "vip=VIP area", home=org_home),
                          "not among")
    assert_one_line_error(run_mesh("tags", "set", "bad tag!", home=org_home))
    edge = _edge(org_home, tmp_path)
    assert_one_line_error(run_mesh("tags", "set", "a", "b", "c", home=edge), "only an organizer")
    assert _ok(run_mesh("tags", "ls", "--json", home=org_home)) == before


def test_pin_and_unpin_change_what_an_edge_keeps(org_home: Path, tmp_path: Path) -> None:
    _ok(run_mesh("tags", "set", "music", "merch", "stage", home=org_home))
    edge = _edge(org_home, tmp_path)
    shown = json.loads(_ok(run_mesh("pin", "--json", home=edge)))
    assert shown["node_pins"] == [] and shown["canonical"] is True
    pinned = json.loads(_ok(run_mesh("pin", "--tag", "VIP", "--tag", "backstage", "--json", home=edge)))
    assert pinned["node_pins"] == ["backstage", "vip"]
    assert {"backstage", "vip"} <= set(pinned["pinned"])
    unpinned = json.loads(_ok(run_mesh("unpin", "--tag", "vip", "--json", home=edge)))
    assert unpinned["node_pins"] == ["backstage"] and "vip" not in unpinned["pinned"]
    assert json.loads(_ok(run_mesh("pin", "--json", home=edge)))["node_pins"] == ["backstage"], "kept"
    assert "backstage" in _ok(run_mesh("pin", home=edge))
    assert_one_line_error(run_mesh("unpin", home=edge), "--tag")


def test_doctor_warns_when_pins_alone_exceed_the_budget(org_home: Path, tmp_path: Path) -> None:
    _add(org_home, tmp_path / "merch-1.bin", 300_000, "merch")
    _add(org_home, tmp_path / "merch-2.bin", 300_000, "merch")
    _ok(run_mesh("pin", "--tag", "merch", home=org_home))

    def budget_check(budget: str) -> tuple[int, dict]:
        config = tmp_path / f"budget-{budget}.toml"
        config.write_text(f'mdns = false\nstore_budget = "{budget}"\n')
        result = run_mesh("doctor", "--json", "--config", config, home=org_home)
        assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
        report = json.loads(result.stdout)
        return result.returncode, next(c for c in report["checks"] if c["name"] == "budget")

    code, check = budget_check("100KiB")
    assert code == 0 and check["ok"] and check.get("warn") is True, "a warning, not a failure"
    assert "merch" in check["detail"] and "unpin" in check["detail"]
    code, check = budget_check("1GiB")
    assert code == 0 and check["ok"] and not check.get("warn")
    _ok(run_mesh("unpin", "--tag", "merch", home=org_home))
    assert not budget_check("100KiB")[1].get("warn"), "unpinned: nothing must be kept"
