"""The core loop's stall figure: LoopWatch alone, inside a running agent, and in `mesh status`."""

from __future__ import annotations

import logging
import time
import urllib.request
from pathlib import Path

import trio

from mesh.config import AgentConfig
from mesh.drivers.home import Home
from mesh.drivers.loopwatch import LoopWatch
from mesh.drivers.runtime import Agent
from mesh.drivers.tcp import TcpTransport
from tests.agents import Node, free_port, wait_until
from tests.conftest import run_mesh


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Task:
    def __init__(self, name: str) -> None:
        self.name = name


def _step(watch: LoopWatch, clock: _Clock, task: str, ms: float) -> None:
    watch.before_task_step(_Task(task))
    clock.now += ms / 1000
    watch.after_task_step(_Task(task))


def test_longest_step_is_kept_for_the_window_then_forgotten_but_not_since_start() -> None:
    clock, stalls = _Clock(), []
    watch = LoopWatch(window_s=60, slots=6, stall_log_ms=100, stall_log_gap_s=10, on_stall=stalls.append,
                      clock=clock)
    for _ in range(1000):
        _step(watch, clock, "fast", 0.2)
    _step(watch, clock, "slow", 150)
    _step(watch, clock, "slow", 120)  # within the log gap: counted, not reported
    summary = watch.summary()
    assert summary["stall_task"] == "slow" and 149 < summary["stall_max_ms"] < 151
    assert summary["stall_p99_ms"] <= 0.25  # 2 slow steps in 1002 stay above the 99th percentile
    assert [(s.task, round(s.ms)) for s in stalls] == [("slow", 150)]
    clock.now += 61
    _step(watch, clock, "later", 5)
    clock.now += 11
    _step(watch, clock, "slow", 101)
    assert stalls[-1].unreported == 1 and watch.summary()["since_start"]["stalls"] == 3
    clock.now += 70  # the window is 60 s, give or take a slot (10 s)
    summary = watch.summary()
    assert summary["stall_max_ms"] == 0.0 and summary["since_start"]["stall_task"] == "slow"


def test_since_start_counts_every_step_after_its_slot_left_the_window() -> None:
    """The since-start histogram is folded from the slots as they leave the window (the per-step
    hook keeps one counter), so nothing may be lost or counted twice when they do."""
    clock = _Clock()
    watch = LoopWatch(window_s=60, slots=6, clock=clock)
    for _ in range(15):  # a slot (10 s) each: the first nine leave the six the watch keeps
        for _ in range(100):
            _step(watch, clock, "fast", 0.2)
        _step(watch, clock, "medium", 3.0)
        clock.now += 10.5
    clock.now += 70  # the window (60 s, give or take a slot) is empty now
    summary = watch.summary()
    assert summary["stall_p99_ms"] == 0.0 and summary["stall_max_ms"] == 0.0
    assert summary["since_start"]["steps"] == watch.steps == 15 * 101
    assert {bound: count for bound, count in summary["since_start"]["histogram_ms"]} == {0.25: 1500, 4.0: 15}


def test_a_slow_step_says_how_much_of_it_was_computing_and_how_much_waiting() -> None:
    """With a CPU clock, a step that waited (for the GIL, for a CPU) shows less CPU than wall time."""
    clock, cpu = _Clock(), _Clock()
    watch = LoopWatch(clock=clock, cpu_clock=cpu, slow_step_ms=10)
    watch.before_task_step(_Task("waited"))
    clock.now += 0.150
    cpu.now += 0.004  # computed 4 ms of it
    watch.after_task_step(_Task("waited"))
    _step(watch, clock, "busy", 30)  # wall time only: the CPU clock did not move
    steps = {s["task"]: s for s in watch.summary()["slow_steps"]}
    assert steps["waited"]["ms"] == 150.0 and steps["waited"]["cpu_ms"] == 4.0
    assert steps["busy"]["cpu_ms"] == 0.0
    plain = LoopWatch(clock=clock, slow_step_ms=10)  # the agent's default: no CPU clock, no cost
    _step(plain, clock, "busy", 30)
    assert [set(s) for s in plain.summary()["slow_steps"]] == [{"at", "task", "ms"}]


def test_an_agent_reports_a_blocking_step_with_its_task_name(tmp_path: Path, caplog) -> None:
    home_dir = tmp_path / "org"
    assert run_mesh("init", "stall-test", "--node-name", "org", home=home_dir).returncode == 0
    agent = Agent(Home.open(home_dir), AgentConfig(listen=("127.0.0.1", 0), mdns=False), TcpTransport())

    async def blocker() -> None:
        time.sleep(0.15)  # a deliberately blocking step on the trio thread

    async def main() -> dict:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            nursery.start_soon(blocker, name="deliberate-blocker")
            await trio.sleep(0.3)
            status = agent.status()
            nursery.cancel_scope.cancel()
        return status

    with caplog.at_level(logging.INFO, logger="mesh.agent"):
        status = trio.run(main)
    loop = status["loop"]
    # the step is named among the slow steps (start-up on a loaded machine may block longer still)
    assert loop["stall_max_ms"] >= 150
    assert any(s["task"] == "deliberate-blocker" and s["ms"] >= 150 for s in loop["slow_steps"])
    assert any("loop.stall" in r.getMessage() and "deliberate-blocker" in r.getMessage() for r in caplog.records)


def test_the_stall_figure_is_in_mesh_status_and_metrics(tmp_path: Path) -> None:
    node = Node(tmp_path / "org")
    node.cli("init", "stall-test", "--node-name", "org")
    port = free_port()
    try:
        node.start("--no-mdns", "--http", f"127.0.0.1:{port}")
        loop = wait_until(lambda: node.json("status").get("loop"), 20, "the loop figure")
        assert {"stall_max_ms", "stall_task", "stall_p99_ms", "window_s", "since_start"} <= set(loop)
        assert loop["since_start"]["steps"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert "mesh_loop_stall_max_seconds" in text
    finally:
        node.stop()


def _busy_for(seconds: float) -> None:
    """Pure Python work on the trio thread (it lets go of the GIL, so the sampler can look)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(100))


def test_the_sampler_says_where_a_slow_step_was_and_only_for_slow_steps() -> None:
    watch = LoopWatch(slow_step_ms=10)

    async def main() -> None:
        watch.start_sampling()
        try:
            _busy_for(0.08)  # one slow step ...
            await trio.sleep(0)
            for _ in range(20):
                _busy_for(0.001)  # ... then quick ones
                await trio.sleep(0)
        finally:
            watch.stop_sampling()

    trio.run(main, instruments=[watch])
    slow = watch.summary()["slow_steps"]
    assert len(slow) == 1 and slow[0]["ms"] >= 80
    samples = slow[0]["samples"]
    assert 1 <= len(samples) <= 4
    assert all("test_loopwatch.py" in line and "_busy_for" in line for line in samples)
    plain = LoopWatch(slow_step_ms=10)  # not sampling: no samples, no thread
    trio.run(_slow_step_only, instruments=[plain])
    assert plain.summary()["slow_steps"] and "samples" not in plain.summary()["slow_steps"][0]


async def _slow_step_only() -> None:
    _busy_for(0.05)
    await trio.sleep(0)


def test_while_sampling_a_slow_step_says_how_long_the_collector_ran_in_it() -> None:
    import gc

    watch = LoopWatch(slow_step_ms=10)

    async def main() -> None:
        watch.start_sampling()
        try:
            junk = [[i] for i in range(300_000)]  # many tracked objects: a full collection takes a while
            _busy_for(0.012)
            gc.collect()
            del junk
            await trio.sleep(0)
        finally:
            watch.stop_sampling()

    trio.run(main, instruments=[watch])
    (step,) = watch.summary()["slow_steps"]
    assert any(line.startswith("gc ") and line.endswith("(oldest generation 2)") for line in step["samples"])
    assert watch._collecting not in gc.callbacks  # stopped: nothing left behind
