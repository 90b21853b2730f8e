"""The crew dashboard's pure parts (issue 22): event sentences, node badges and rates, the SVG charts."""

from __future__ import annotations

import re

from mesh.gateway import charts, event_text
from mesh.gateway import dashboard
from mesh.gateway.pages import _size, qr_svg


def words(event: dict, names: dict | None = None) -> str | None:
    return event_text.sentence(event, names or {}, _size)


def test_known_events_read_as_sentences_with_member_names_and_sizes() -> None:
    assert words({"event": "peer.connected", "node": "n1", "name": "door-1", "role": "edge",
                  "addr": "127.0.0.1:5"}) == "door-1 (edge) connected from 127.0.0.1:5."
    assert words({"event": "peer.disconnected", "node": "abcdefabcdefabcdef", "reason": "timeout"},
                 {"abcdefabcdefabcdef": "stage-box"}) == "stage-box disconnected: timeout."
    assert words({"event": "peer.revoked", "node": "abcdefabcdefabcdef"}) == "abcdefabcdef… was revoked and cut off."
    assert words({"event": "release.complete", "id": "x", "bytes": 12_500_000}) == \
        "The current release is complete and verified here (12.5 MB)."


def test_unknown_events_and_missing_fields_fall_back_to_the_raw_line() -> None:
    odd = {"time": 1.0, "event": "something.new", "a": 1}
    assert words(odd) is None and event_text.raw_line(odd) == "something.new a=1"
    assert words({"event": "peer.connected", "node": "n1"}) is None  # name, role, addr missing
    assert event_text.raw_line({"event": "agent.stopped"}) == "agent.stopped"


def test_every_sentence_names_only_documented_fields() -> None:
    for name, template in event_text.SENTENCES.items():
        assert re.fullmatch(r"[a-z]+\.[a-z_]+", name) and template.endswith("."), name


def test_rates_come_from_counter_differences_and_reset_with_the_counters() -> None:
    rates = dashboard.Rates()
    assert rates.rate("n", 100.0, 0, 0) is None  # the first sample
    assert rates.rate("n", 102.0, 2000, 1000) == (1000.0, 500.0)
    assert rates.rate("n", 102.5, 9999, 9999) == (1000.0, 500.0)  # too soon: the last rate
    assert rates.rate("n", 104.0, 10, 10) is None  # a new session restarted its counters
    for i in range(dashboard.RATE_KEYS_MAX + 10):
        rates.rate(f"k{i}", 1.0, 0, 0)
    assert len(rates._last) <= dashboard.RATE_KEYS_MAX
    for t in range(0, 2000, 1):
        rates.note_total(float(t), (1.0, 2.0))
    assert len(rates.history) == dashboard.HISTORY_POINTS_MAX


def test_badges() -> None:
    assert dashboard.badge({"online": False}) == "offline"
    assert dashboard.badge({"online": True, "health": {"ok": False}}) == "failing"
    assert dashboard.badge({"online": True, "release": {"complete": False}}) == "syncing"
    assert dashboard.badge({"online": True, "media": {"held": 1, "wanted": 3}}) == "syncing"
    assert dashboard.badge({"online": True, "release": {"complete": True}, "health": {"ok": True}}) == "ok"


def test_charts_are_scalable_svg_with_escaped_tags() -> None:
    empty = charts.throughput_svg([], 100.0, 600.0)
    assert "viewBox=" in empty and "Collecting" in empty
    line = charts.throughput_svg([(10.0, 0.0, 0.0), (50.0, 2000.0, 500.0)], 60.0, 600.0)
    assert line.count("<polyline") == 2 and "peak 2.0 KB/s" in line
    bars = charts.tags_svg([{"tag": "<stage>", "shown": 3, "hidden": 1, "views": 7}])
    assert "&lt;stage&gt;" in bars and "<stage>" not in bars and "3 + 1 · 7 views" in bars
    many = charts.tags_svg([{"tag": f"t{i}", "shown": 1, "hidden": 0, "views": 0} for i in range(30)])
    assert many.count('class="tag"') == charts.TAGS_SHOWN_MAX


def test_the_door_qr_has_a_viewbox_and_no_fixed_size() -> None:
    svg = qr_svg("http://10.0.0.1:8080/")
    head = svg[:svg.index(">")]
    assert "viewBox=" in head and "width=" not in head and "height=" not in head
