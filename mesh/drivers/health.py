"""Health checks: small functions that each return `{"name", "ok", "detail"}`, and the agent's loop.

- Every check is a plain function of facts (paths, a store, addresses, numbers); blocking ones
  (disk, hashing, sockets, subprocesses) run on worker threads when called from the agent.
- `health_loop(agent, config)` runs them every `config.health.interval_s` and publishes a report
  `{"time", "ok", "checks", "release", "drill"}` with `agent.publish_health`; peers show it in
  their status, so every node's dashboard sees every node's health.
- A drill (`mesh drill`) is a request in the shared state. When a new one appears, the loop runs
  every check at once, re-hashes every chunk of the current release, reads the consent decisions of
  the drill's subject, and carries the result as `"drill"` in every report until the next drill.
- `mesh doctor` calls `doctor_checks` directly, with or without a running agent.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from mesh.config import AgentConfig, HealthConfig, Probe
from mesh.errors import CorruptChunkError, MeshError

__all__ = [
    "HealthConfig", "Probe", "RollingSample", "check_clock", "check_disk", "check_mdns", "check_peers",
    "check_static_peer", "check_store_sample", "doctor_checks", "health_loop", "run_probe",
    "verify_release",
]

log = logging.getLogger("mesh.health")

DETAIL_CHARS_MAX = 160  # one check's detail in a report
REPORT_BYTES_MAX = 7 * 1024  # a report stays under the 8 KiB a Health signal may carry
DRILL_POLL_S = 0.5  # how often the loop looks for a new drill request between runs
DRILL_FRESH_S = 600.0  # drill requests older than this when the agent starts are not run
DRILL_SCOPE = "drill"  # the consent scope a drill grants then revokes
PROBE_OUTPUT_BYTES_MAX = 4096  # kept from a probe command's output


def result(name: str, ok: bool, detail: str = "", warn: bool = False) -> dict:
    """One check's outcome; `warn`: it passes, but something needs the crew's attention."""
    found = {"name": name, "ok": bool(ok), "detail": detail[:DETAIL_CHARS_MAX]}
    if warn:
        found["warn"] = True
    return found


# --- checks ---------------------------------------------------------------------------------------


def check_disk(path: Path, free_bytes_min: int) -> dict:
    """Free space on the file system holding `path` against a threshold."""
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return result("disk", False, f"cannot read free space of {path}: {exc.strerror or exc}")
    detail = f"{_size(free)} free, need {_size(free_bytes_min)}"
    return result("disk", free >= free_bytes_min, detail)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


class RollingSample:
    """Walks the store's chunk index a few chunks per run, wrapping around: over time every chunk
    gets re-hashed, at a bounded cost per run."""

    def __init__(self) -> None:
        self.after = ""  # the last chunk CID checked

    def next(self, store, count: int) -> list[str]:
        """The next `count` chunk CIDs after the cursor (from the start when at the end)."""
        found = _cids_after(store, self.after, count)
        if len(found) < count and self.after:
            found += [c for c in _cids_after(store, "", count - len(found)) if c not in found]
        if found:
            self.after = found[-1]
        return found


def _cids_after(store, after: str, count: int) -> list[str]:
    return store.cids_after(after, count)


def random_sample(store, count: int) -> list[str]:
    """`count` stored chunk CIDs picked at random (for one-off checks such as `mesh doctor`)."""
    return store.random_cids(count)


def _rehash_problem(store, cid_text: str) -> str | None:
    """None if the chunk reads back and hashes to its CID; otherwise what is wrong."""
    from mesh.content.cid import Cid

    try:
        store.read_chunk(Cid.parse(cid_text), verify=True)
    except CorruptChunkError as exc:
        return str(exc) or f"chunk {cid_text} is corrupt"
    except MeshError as exc:
        return str(exc)
    return None


def check_store_sample(store, cids: list[str]) -> dict:
    """Re-hash a sample of stored chunks through the store's verifying read."""
    problems = [p for p in (_rehash_problem(store, cid) for cid in cids) if p]
    if problems:
        return result("store", False, f"{len(problems)} of {len(cids)} sampled chunk(s) bad: {problems[0]}")
    return result("store", True, f"{len(cids)} sampled chunk(s) re-hashed")


def check_peers(count: int, peers_min: int) -> dict:
    """Connected peers against the minimum."""
    return result("peers", count >= peers_min, f"{count} connected, need {peers_min}")


def check_mdns(enabled: bool, running: bool | None, seen: int | None) -> dict:
    """mDNS: off by choice, or the discovery task alive (and how many nodes it found)."""
    if not enabled:
        return result("mdns", True, "disabled: static peers and invite hints only")
    if running is None:
        return result("mdns", True, "not checked: no agent running")
    if not running:
        return result("mdns", False, "discovery task not running")
    return result("mdns", True, "announcing" + (f", {seen} node(s) seen" if seen is not None else ""))


def check_static_peer(address: tuple[str, int], timeout_s: float) -> dict:
    """A TCP connection to a static peer opens within the timeout."""
    name = f"peer {address[0]}:{address[1]}"
    started = time.monotonic()
    try:
        with socket.create_connection(address, timeout=timeout_s):
            pass
    except OSError as exc:
        return result(name, False, f"unreachable: {exc.strerror or exc}")
    return result(name, True, f"reachable in {1000 * (time.monotonic() - started):.0f} ms")


def check_clock(skews_s: dict[str, float], skew_s_max: float) -> dict:
    """Our clock against each peer's (from the time in their health reports)."""
    if not skews_s:
        return result("clock", True, "no peer reports to compare with")
    worst_node, worst = max(skews_s.items(), key=lambda item: abs(item[1]))
    detail = f"worst skew {worst:+.1f} s ({worst_node[:12]}), limit {skew_s_max:g} s"
    return result("clock", abs(worst) <= skew_s_max, detail)


def run_probe(probe: Probe) -> dict:
    """One user probe: HTTP (status < 400), TCP (connects), path (exists), command (exits 0)."""
    name = f"probe {probe.name}"
    try:
        ok, detail = _PROBES[probe.kind](probe)
    except Exception as exc:  # a probe is the user's code or device: any failure is its result
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return result(name, ok, detail)


def _probe_http(probe: Probe) -> tuple[bool, str]:
    request = urllib.request.Request(probe.target, method="GET", headers={"User-Agent": "assetmesh-health"})
    try:
        with urllib.request.urlopen(request, timeout=probe.timeout_s) as response:
            return response.status < 400, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable: {getattr(exc, 'reason', exc)}"


def _probe_tcp(probe: Probe) -> tuple[bool, str]:
    from mesh.drivers.settings import parse_address

    checked = check_static_peer(parse_address(probe.target), probe.timeout_s)
    return checked["ok"], checked["detail"]


def _probe_path(probe: Probe) -> tuple[bool, str]:
    exists = os.path.exists(probe.target)
    return exists, f"{probe.target} {'exists' if exists else 'is missing'}"


def _probe_command(probe: Probe) -> tuple[bool, str]:
    try:
        done = subprocess.run(shlex.split(probe.target), capture_output=True, timeout=probe.timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {probe.timeout_s:g} s"
    except OSError as exc:
        return False, f"cannot run: {exc.strerror or exc}"
    output = (done.stderr or done.stdout)[-PROBE_OUTPUT_BYTES_MAX:].decode(errors="replace").strip()
    last = output.splitlines()[-1] if output else ""
    return done.returncode == 0, f"exit {done.returncode}" + (f": {last}" if last else "")


_PROBES = {"http": _probe_http, "tcp": _probe_tcp, "path": _probe_path, "command": _probe_command}


# --- release verification (drills) -------------------------------------------------------------


def _release_chunks(manifests: list[tuple[str, bytes]]) -> tuple[set[str], int]:
    """(every data chunk CID the release needs that the manifests here name, file manifests
    the root names that are missing here)."""
    from mesh.content.cid import RAW
    from mesh.content.manifest import DirManifest, FileManifest, decode_manifest

    decoded = {cid: decode_manifest(data) for cid, data in manifests}
    root = decoded[manifests[0][0]]
    needed: set[str] = set()
    missing_manifests = 0
    entries = root.entries if isinstance(root, DirManifest) else []
    for entry in entries:
        text = str(entry.cid)
        if entry.cid.codec == RAW:
            needed.add(text)
        elif isinstance(decoded.get(text), FileManifest):
            needed.update(str(c) for c in decoded[text].chunks)
        else:
            missing_manifests += 1
    return needed, missing_manifests


def verify_release(store, root: str) -> dict:
    """Re-hash every chunk of the release `root` held here: `{"ok","checked","missing","bad","detail"}`."""
    manifests, _ = store.release_inventory(root)
    if not manifests:
        return {"ok": False, "checked": 0, "missing": 1, "bad": 0, "detail": "root manifest missing"}
    needed, missing_manifests = _release_chunks(manifests)
    from mesh.content.cid import Cid

    present = sorted(cid for cid in needed if store.has(Cid.parse(cid)))
    missing = missing_manifests + len(needed) - len(present)
    bad = sum(1 for cid in present if _rehash_problem(store, cid))
    ok = missing == 0 and bad == 0
    detail = f"{len(present)} chunk(s) re-hashed, {bad} bad, {missing} missing"
    return {"ok": ok, "checked": len(present) + len(manifests), "missing": missing, "bad": bad, "detail": detail}


# --- reports --------------------------------------------------------------------------------------


def make_report(checks: list[dict], release: dict | None, drill: dict | None, now: float) -> dict:
    """A health report, trimmed to fit one Health signal."""
    report = {"time": now, "ok": all(c["ok"] for c in checks), "checks": checks,
              "release": release, "drill": drill}
    return _fit(report)


def _fit(report: dict) -> dict:
    if len(json.dumps(report)) <= REPORT_BYTES_MAX:
        return report
    report.pop("media", None)  # before any check
    report["checks"] = [c if not c["ok"] else {**c, "detail": ""} for c in report["checks"]]
    while len(json.dumps(report)) > REPORT_BYTES_MAX and report["checks"]:
        report["checks"] = report["checks"][:-1]
    return report


def _release_summary(status_release: dict | None) -> dict | None:
    if not status_release:
        return None
    keys = ("id", "name", "root", "have_bytes", "total_bytes", "complete")
    return {k: status_release.get(k) for k in keys}


# --- doctor ---------------------------------------------------------------------------------------


def local_checks(home_path: Path, store, config: AgentConfig, sample: list[str]) -> list[dict]:
    """The checks that need no running agent: disk, store sample, static peers, probes."""
    health = config.health
    checks = [check_disk(home_path, health.disk_free_bytes_min), check_store_sample(store, sample)]
    checks += [check_static_peer(address, health.connect_timeout_s) for address in config.peers]
    checks += [run_probe(probe) for probe in health.probes]
    checks += check_live_inputs(home_path)
    return checks


def check_live_inputs(home_path: Path) -> list[dict]:
    """Each camera input `mesh live start` configured here: live (segments arriving), waiting for
    its push, failed (the reason), or, while no ingest holds it, probed (mesh.drivers.livesource)."""
    from mesh.drivers.live import read_specs, read_status

    checks = []
    for name, spec in read_specs(home_path).items():
        if spec.stopped:
            continue
        status = read_status(home_path, name) or {}
        ours = status.get("started_at") == spec.started_at
        state = status.get("state") if ours else None
        if state == "live":
            checks.append(result(f"camera:{name}", True, f"live from {spec.source}, {status.get('segments')} segment(s)"))
        elif state == "failed":
            checks.append(result(f"camera:{name}", False, f"{spec.source}: {status.get('error')}"))
        elif spec.listen or state == "waiting":
            checks.append(result(f"camera:{name}", True, f"waiting for the camera to push to {spec.source}", warn=True))
        else:
            checks.append(_probe_camera(name, spec))
    return checks


REFUSAL_RECENT_S = 600.0  # a member's refusal of our credential this recent fails the check


def check_refusals(refusals: dict, now: float | None = None) -> list[dict]:
    """Members that refused this node's credential lately, and why (the operator's next step)."""
    now = time.time() if now is None else now
    recent = [r for r in refusals.values() if now - r["at"] <= REFUSAL_RECENT_S]
    if not recent:
        return []
    detail = "; ".join(f"{r['addr']}: {r['reason']}" for r in recent[:4])
    return [result("admitted", False, f"refused by {len(recent)} peer(s): {detail}")]


LIVE_LAG_SEGMENTS_MAX = 2  # an edge further behind the ingester than this is failing its viewers


def check_live_streams(rows: list[dict]) -> list[dict]:
    """Per live stream this node follows (what every node's health report, the dashboard and the
    drill show): serving near the live edge, its lag and viewers; ended streams are left out."""
    checks = []
    for row in rows:
        if row.get("state") != "live" or not row.get("allowed", True):
            continue
        lag, viewers = row.get("lag_segments"), row.get("viewers", 0)
        if lag is None:
            checks.append(result(f"live:{row['name']}", True, "no segment held yet", warn=True))
            continue
        latency = f", ~{row['latency_s']:.1f} s behind the camera" if row.get("latency_s") is not None else ""
        detail = f"{lag} segment(s) behind the ingester{latency}, {viewers} viewer(s)"
        checks.append(result(f"live:{row['name']}", lag <= LIVE_LAG_SEGMENTS_MAX, detail))
    return checks


def _probe_camera(name: str, spec) -> dict:
    try:
        from mesh.drivers.livesource import probe_source
    except ImportError:  # PyAV is not installed
        return result(f"camera:{name}", False, "PyAV (the `av` package) is not installed")
    found = probe_source(spec.source, input_format=spec.input_format)
    media = ", ".join(x for x in (found.get("video"), found.get("audio")) if x)
    return result(f"camera:{name}", bool(found.get("ok")), f"{spec.source}: {found.get('detail')}" + (f" ({media})" if media else ""))


def store_budget(config: AgentConfig, used_bytes: int, store_path: Path) -> int:
    """The store's budget: `store_budget` bytes, or its share of the disk (the store's bytes plus
    the free space of its file system). The agent and `mesh doctor` both use this."""
    if config.store_budget_bytes is not None:
        return config.store_budget_bytes
    try:
        free = shutil.disk_usage(store_path).free
    except OSError:
        free = 0
    return int(config.store_budget_fraction * (used_bytes + free))


def check_budget(pinned_bytes: int, budget_bytes: int, pinned_tags: list[str]) -> dict:
    """What this box must keep (pinned originals, the current release) against its budget: more
    than fits is a warning (pinned media is never evicted; what does not fit is not fetched)."""
    detail = f"pins and the release need {_size(pinned_bytes)} of a {_size(budget_bytes)} budget"
    if pinned_bytes <= budget_bytes:
        return result("budget", True, detail)
    tags = ", ".join(pinned_tags) or "none"
    return result("budget", True, f"{detail}: pins alone exceed it (tags {tags}); raise store_budget or "
                                  "`mesh unpin --tag`", warn=True)


def pinned_bytes(state, store, info, config: AgentConfig, now: float) -> tuple[int, list[str]]:
    """(bytes of the visible originals this node pins plus the current release, the pinned tags)."""
    from mesh.drivers.purge import consent_view
    from mesh.state.media import pinned_tags
    from mesh.state.releases import ReleaseBook, release_totals

    tags = pinned_tags(state, info.node_id, info.role, config.pin_tags, config.pin_canonical)
    view = consent_view(state, info.authority_public_key, now)
    total = sum(r.size for r in state.assets() if not tags.isdisjoint(r.tags) and view.visible(r, now))
    current = ReleaseBook(state, info.authority_public_key, now).current()
    totals = release_totals(store, current.root) if current is not None else None
    return total + (totals[0] if totals else 0), sorted(tags)


def doctor_checks(home_path: Path, store, config: AgentConfig, status: dict | None,
                  state=None, info=None) -> list[dict]:
    """Every check `mesh doctor` runs; with a running agent's `status`, also peers, mDNS and clock;
    with the shared state and the home's info, the storage budget against what is pinned."""
    checks = local_checks(home_path, store, config, random_sample(store, config.health.sample_chunks))
    if state is not None and info is not None:
        pinned, tags = pinned_bytes(state, store, info, config, time.time())
        checks.append(check_budget(pinned, store_budget(config, store.usage()[1], home_path), tags))
    if status is None:
        checks.append(check_mdns(config.mdns, None, None))
        return checks
    checks.append(check_peers(len(status.get("peers", [])), config.health.peers_min))
    reported = {c["name"]: c for c in ((status.get("health") or {}).get("checks") or [])}
    checks.append(reported.get("mdns") or check_mdns(config.mdns, None, None))
    checks.append(reported.get("clock") or check_clock(_status_skews(status), config.health.clock_skew_s_max))
    return checks


def _status_skews(status: dict) -> dict[str, float]:
    """Rough skews from a status file: a peer's report time against when the status was written
    (reports are at most one health interval old, so this only catches large skews)."""
    written = status.get("updated_at", time.time())
    skews = {}
    for peer in status.get("peers", []):
        report = peer.get("health") or {}
        if isinstance(report.get("time"), (int, float)) and report["time"] > written:
            skews[peer["node_id"]] = report["time"] - written
    return skews


# --- the agent's loop -----------------------------------------------------------------------------


class _Runner:
    """The health loop's memory: the rolling sample, drills handled, the last drill result."""

    def __init__(self, agent, config: AgentConfig) -> None:
        import trio

        self.agent = agent
        self.config = config
        self.sample = RollingSample()
        self.limiter = trio.CapacityLimiter(1)
        self.handled: set[str] = set()
        self.last_drill: dict | None = None
        cutoff = time.time() - DRILL_FRESH_S
        self.handled.update(i for i, r in self._drills().items() if _drill_at(r) < cutoff)

    def _drills(self) -> dict[str, dict]:
        state = self.agent.core.state if self.agent.core is not None else None
        return state.drill_requests() if state is not None else {}

    def new_drill(self) -> tuple[str, dict] | None:
        """The newest drill request not handled yet (older unhandled ones are skipped)."""
        pending = [(i, r) for i, r in self._drills().items() if i not in self.handled]
        if not pending:
            return None
        self.handled.update(i for i, _ in pending)
        return max(pending, key=lambda item: _drill_at(item[1]))

    async def run(self, drill: tuple[str, dict] | None) -> dict:
        import trio

        core = self.agent.core
        status_release = core.status().get("release")
        count = self.config.health.sample_chunks
        sample = await trio.to_thread.run_sync(self.sample.next, self.agent.store, count, limiter=self.limiter)
        checks = await trio.to_thread.run_sync(
            local_checks, self.agent.home.path, self.agent.store, self.config, sample, limiter=self.limiter
        )
        checks += self._session_checks()
        if drill is not None:
            self.last_drill = await self._drill(drill, checks, status_release)
        report = make_report(checks, _release_summary(status_release), self.last_drill, time.time())
        return _fit({**report, **self._holdings(core)})

    def _holdings(self, core) -> dict:
        """What the crew dashboard shows of a node it is not on: its store and media progress."""
        chunks, stored = getattr(self.agent, "_usage", (0, 0))
        media = core.status().get("media") or {}
        keys = ("wanted", "held", "bytes", "fetching", "budget")
        return {"store": {"chunks": chunks, "bytes": stored},
                "media": {k: media.get(k) for k in keys} if media else None}

    def _session_checks(self) -> list[dict]:
        core, health = self.agent.core, self.config.health
        connected = {s.node_id for s in core.peers()}
        skews = {node: report.get("time", received) - received
                 for node, (received, report) in core.peer_health.items()
                 if node in connected and isinstance(report.get("time"), (int, float))}
        running, seen = _mdns_facts(self.agent)
        return [check_peers(len(connected), health.peers_min), check_mdns(self.config.mdns, running, seen),
                check_clock(skews, health.clock_skew_s_max), *check_refusals(getattr(self.agent, "refusals", {})),
                *check_live_streams(self.agent.live_rows(core.live_status()))]

    async def _drill(self, drill: tuple[str, dict], checks: list[dict], release: dict | None) -> dict:
        import trio

        drill_id, request = drill
        verified = {"ok": False, "detail": "no current release here"}
        if release and release.get("root"):
            try:
                verified = await trio.to_thread.run_sync(verify_release, self.agent.store, release["root"],
                                                         limiter=self.limiter)
            except MeshError as exc:
                verified = {"ok": False, "detail": str(exc)}
        consent = drill_consent(self.agent.core.state, request.get("subject", ""), request.get("scope", ""))
        ok = all(c["ok"] for c in checks) and verified["ok"] and consent["ok"]
        log.info("health.drill id=%s ok=%s", drill_id, ok,
                 extra={"event": "health.drill", "fields": {"id": drill_id, "ok": ok}})
        return {"id": drill_id, "ok": ok, "release_verified": bool(verified["ok"]),
                "release_detail": verified.get("detail", "")[:DETAIL_CHARS_MAX], "consent": consent}


def _drill_at(request: dict) -> float:
    at = request.get("at")
    return float(at) if isinstance(at, (int, float)) else 0.0


def _mdns_facts(agent) -> tuple[bool | None, int | None]:
    """(discovery running, nodes it found) from the agent; the agent may not report the count."""
    mdns_state = getattr(agent, "mdns_state", None)
    if callable(mdns_state):
        facts = mdns_state()
        return bool(facts.get("running")), facts.get("discovered")
    return agent.discovery is not None, None


def drill_consent(state, subject: str, scope: str) -> dict:
    """What this node sees of a drill's consent round-trip: a grant, then a revoke that wins."""
    from mesh.state.consent import ConsentView, Policies

    view = ConsentView(state, Policies())
    try:
        decisions = view.decisions(subject, scope) or []
        granted = view.granted(subject, scope)
    except (ValueError, MeshError):
        decisions, granted = [], False
    grants = sum(1 for d in decisions if d.grant)
    revokes = len(decisions) - grants
    ok = grants >= 1 and revokes >= 1 and not granted
    return {"subject": subject, "scope": scope, "grants": grants, "revokes": revokes,
            "granted": granted, "ok": ok}


async def health_loop(agent, config: AgentConfig) -> None:
    """Run every check each `config.health.interval_s` (at once when a drill arrives) and publish
    the report with `agent.publish_health`. Start it in the agent's nursery once `agent.core` exists."""
    import trio

    runner = _Runner(agent, config)
    while True:
        try:
            report = await runner.run(runner.new_drill())
        except Exception:  # a bug in a check must never take the agent down
            log.exception("health.run_failed")
            await trio.sleep(config.health.interval_s)
            continue
        agent.publish_health(report)  # logs health.failed / health.recovered on a change of verdict
        await _wait_interval_or_drill(runner, config.health.interval_s)


async def _wait_interval_or_drill(runner: _Runner, interval_s: float) -> None:
    import trio

    with trio.move_on_after(interval_s):
        while True:
            await trio.sleep(DRILL_POLL_S)
            if any(i not in runner.handled for i in runner._drills()):
                return

