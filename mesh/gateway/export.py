"""`mesh export-static`: the current release, a client-side search page and a consent page as
plain files (opens from file:// or any static server; no node needed), and the printable door
page. Only visible assets are written (consent and retention as of the export); bytes stream from
the store chunk by chunk, re-hashed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from mesh.content.cid import Cid
from mesh.errors import MeshError
from mesh.gateway.pages import STATIC_DIR, _env, qr_svg
from mesh.gateway.catalog import build_catalog
from mesh.gateway.view import policies_json
from mesh.state import releases as rel

EXPORT_ASSETS_MAX = 10_000
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str) -> str:
    cleaned = _SAFE_NAME.sub("_", Path(name).name).strip("._")
    return cleaned[:100] or "file"


def _inside(root: Path, relative: str) -> Path:
    """root/relative, refusing anything that would land outside root."""
    target = (root / relative).resolve()
    if root.resolve() not in target.parents:
        raise MeshError(f"refusing to write outside the export directory: {relative!r}")
    return target


def _write_object(store, cid: str, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "wb") as handle:
        for _, chunks in [store.object_chunks(cid)]:
            for chunk in chunks:
                data = store.read_chunk(Cid.parse(chunk), verify=True)
                handle.write(data)
                written += len(data)
    return written


def _held(store, cid: str) -> bool:
    try:
        store.object_chunks(cid)
        return not store.missing_chunks(cid)
    except MeshError:
        return False


def export_site(directory: Path, state, store, info, now: float, include_assets: bool = True) -> dict:
    """Write the static site; {"files", "assets", "bytes", "skipped"}."""
    directory.mkdir(parents=True, exist_ok=True)
    catalog = build_catalog(state, info.authority_public_key, now)
    report = {"files": 0, "assets": 0, "bytes": 0, "skipped": []}
    entries = _export_release(directory, state, store, info, now, catalog, report)
    assets = _export_assets(directory, store, catalog, report) if include_assets else []
    index = {"mesh": info.mesh_name, "exported_at": now, "assets": assets, "files": entries,
             "tags": [t.__dict__ for t in catalog.tags]}
    (directory / "index.js").write_text("window.MESH_INDEX = " + json.dumps(index, sort_keys=True) + ";\n",
                                        encoding="utf-8")
    (directory / "index.json").write_text(json.dumps(index, sort_keys=True), encoding="utf-8")
    shutil.copyfile(STATIC_DIR / "style.css", directory / "style.css")
    shutil.copyfile(STATIC_DIR / "export-search.js", directory / "search.js")
    page = {"name": info.mesh_name, "exported_at": now}
    (directory / "index.html").write_text(_env.get_template("export_index.html").render(site=page),
                                          encoding="utf-8")
    (directory / "consent.html").write_text(_env.get_template("export_consent.html").render(
        site=page, policies=policies_json(catalog.policies)), encoding="utf-8")
    return report


def _export_release(directory, state, store, info, now, catalog, report) -> list[dict]:
    book = rel.ReleaseBook(state, info.authority_public_key, now)
    current = book.current()
    if current is None:
        return []
    try:
        files = rel.release_files(store, current.root)
    except MeshError as exc:
        report["skipped"].append(f"release {current.id}: {exc}")
        return []
    entries = []
    for item in files:
        cid, path = str(item.cid), item.path
        if cid in catalog.hidden or not _held(store, cid):
            report["skipped"].append(path)
            continue
        report["bytes"] += _write_object(store, cid, _inside(directory, "release/" + path))
        report["files"] += 1
        entries.append({"path": path, "url": "release/" + path, "size": _size_of(store, cid)})
    return entries


def _size_of(store, cid: str) -> int:
    return store.object_chunks(cid)[0]


def _export_assets(directory, store, catalog, report) -> list[dict]:
    found = []
    for record in _all_visible(catalog):
        if not _held(store, record.cid):
            continue
        url = f"assets/{record.cid}/{_safe_name(record.name)}"
        report["bytes"] += _write_object(store, record.cid, _inside(directory, url))
        report["assets"] += 1
        thumb = None
        if record.thumbnail and _held(store, record.thumbnail):
            thumb = f"thumbs/{record.thumbnail}.jpg"
            report["bytes"] += _write_object(store, record.thumbnail, _inside(directory, thumb))
        preview = None
        if record.preview and _held(store, record.preview):
            preview = f"previews/{record.preview}.mp4"
            report["bytes"] += _write_object(store, record.preview, _inside(directory, preview))
        found.append({"cid": record.cid, "name": record.name, "size": record.size,
                      "media_type": record.media_type, "tags": sorted(record.tags), "url": url,
                      "thumbnail": thumb, "preview": preview, "added_at": record.added_at})
    return found


def _all_visible(catalog):
    records = sorted(catalog.visible.values(), key=lambda r: (-r.added_at, r.cid))
    return records[:EXPORT_ASSETS_MAX]


def door_page(mesh_name: str, url: str, badges: int = 0, mesh_id: str | None = None) -> str:
    """A standalone printable page: the door QR, and optionally badge cards (`mesh_id` needed), each
    with a fresh code in print and its consent link, secret included, only in the QR."""
    import random

    from mesh.gateway.pages import badge_url
    from mesh.state.consent import new_badge

    rng = random.SystemRandom()
    cards = []
    for _ in range(badges):
        badge = new_badge(rng, mesh_id)
        cards.append({"code": badge.code, "qr": qr_svg(badge_url(url, badge), scale=4)})
    css = (STATIC_DIR / "style.css").read_text(encoding="utf-8")
    return _env.get_template("export_door.html").render(name=mesh_name, url=url, qr=qr_svg(url), cards=cards,
                                                        css=css)
