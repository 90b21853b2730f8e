"""The core's media pass follows only the assets that changed since the last pass (at 10,000 assets
a full pass cost ~120 ms of the event loop). Whatever the sequence of changes — records edited,
assets added and removed, consent flipping, pins moving, thumbnails shared by several assets — the
objects it ends with are exactly those a core that saw only the last pass would have."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.content.cid import cid_for_raw
from mesh.state.consent import VISIBLE, WITHDRAWN
from mesh.state.records import AssetRecord
from mesh.testing.sim import World

ASSETS = [str(cid_for_raw(f"asset {i}".encode())) for i in range(6)]
THUMBS = [str(cid_for_raw(f"thumb {i}".encode())) for i in range(3)]  # few: assets share them
TAGS = ("stage", "crowd")

asset_version = st.tuples(st.booleans(), st.sampled_from((None, *THUMBS)), st.sampled_from(TAGS),
                          st.sampled_from((VISIBLE, VISIBLE, WITHDRAWN)))
snapshot = st.lists(st.tuples(st.sampled_from(range(len(ASSETS))), asset_version), max_size=8)


def _records(picks) -> tuple[list[AssetRecord], dict[str, str]]:
    chosen = {}
    for index, (present, thumb, tag, status) in picks:
        chosen[index] = (present, thumb, tag, status)
    records, statuses = [], {}
    for index in sorted(chosen, key=lambda i: ASSETS[i]):
        present, thumb, tag, status = chosen[index]
        if not present:
            continue
        records.append(AssetRecord(cid=ASSETS[index], name="a.jpg", size=10 + index, media_type="image/jpeg",
                                   added_at=1.0 + index, added_by="cam", tags=frozenset({tag}), thumbnail=thumb))
        if status != VISIBLE:
            statuses[ASSETS[index]] = status
    return records, statuses


def _objects(core) -> dict:
    return {str(root): (obj.status, obj.pinned, obj.klass) for root, obj in core.media.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(snapshot, min_size=1, max_size=6), st.lists(st.sampled_from(((), ("stage",))), min_size=6,
                                                             max_size=6))
def test_following_only_changed_assets_ends_where_a_full_pass_does(passes, pins) -> None:
    world = World(5)
    world.add_node("edge")
    world.add_node("fresh")
    incremental, fresh = world.node("edge").live_core(), world.node("fresh").live_core()
    records, statuses = [], {}
    for number, picks in enumerate(passes):
        records, statuses = _records(picks)
        incremental.pin_tags = pins[number]
        incremental._refresh_media(records, statuses, 100.0 + number)
    fresh.pin_tags = pins[len(passes) - 1]
    fresh._refresh_media(records, statuses, 200.0)
    assert _objects(incremental) == _objects(fresh)
