"""How long the trio thread goes without a checkpoint: the agent's core-loop stalls.

A trio `Instrument` times every task step (from `before_task_step` to `after_task_step`): while
one step runs, no other task of the agent — the core, peers' readers and writers, the gateway —
can. It keeps, cheaply enough to stay on in production:
- the longest step and its task's name since start, and within a sliding window (`window_s`,
  made of `slots` equal slots that expire one at a time);
- a histogram of step durations per slot (buckets a factor of √2 apart), for a p99 over the
  window, reported as its bucket's upper bound;
- the last `slow_steps_max` steps of at least `slow_step_ms` (wall time, task, ms), and a
  histogram since start, so a benchmark can attribute stalls to what it did when;
- a callback for each step of at least `stall_log_ms`, at most once per `stall_log_gap_s` (the
  next call says how many were left out), which the agent turns into a `loop.stall` event.
The clock is injected (default `time.perf_counter`), so tests can drive it. With a `cpu_clock`
(`time.thread_time`; the agent uses it when MESH_LOOP_CPU=1, for benchmarks: it costs two more
clock reads a step) each slow step also says how much of it the trio thread spent computing: a
step much longer than its CPU time waited for the GIL (a worker thread) or for a CPU (a busy host).
With `start_sampling` (the agent calls it when MESH_LOOP_STACKS=1, for benchmarks) a daemon thread
looks at the trio thread every `SAMPLE_EVERY_S` while a step has run `SAMPLE_AFTER_MS` or more and
notes where it is (the innermost frames), so a slow step says what it was doing: a sampling
profiler aimed at the steps that matter. It sees the trio thread only when that thread lets go of
the GIL, so a step spent in one native call that holds it is seen after the call, or not at all.
While it samples, each slow step also says how long the cyclic garbage collector ran during it
(`gc.callbacks`: a collection stops every thread, whichever thread's allocation set it off).
"""

from __future__ import annotations

import bisect
import gc
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

WINDOW_S = 60.0  # the sliding window of `stall_max_ms` and `stall_p99_ms`
WINDOW_SLOTS = 6  # the window expires one slot (window_s / slots) at a time
STALL_LOG_MS = 100.0  # a step at least this long is reported (`loop.stall`)
STALL_LOG_GAP_S = 10.0  # ... at most once in this many seconds
SLOW_STEP_MS = 10.0  # steps at least this long are kept in `slow_steps` ...
SLOW_STEPS_MAX = 32  # ... the last this many
SAMPLE_AFTER_MS = 8.0  # the sampler looks at a step once it has run this long ...
SAMPLE_EVERY_S = 0.004  # ... every this many seconds
SAMPLES_PER_STEP_MAX = 4  # ... at most this many times a step
SAMPLE_FRAMES = 6  # frames kept per sample, innermost first
# Upper bounds (ms) of the histogram buckets: √2 apart from 1/16 ms to ~46 s, then infinity.
BUCKET_BOUNDS_MS = tuple(round(0.0625 * 2 ** (i / 2), 4) for i in range(40)) + (float("inf"),)


@dataclass
class _Slot:
    """The steps of one slot of the window."""

    ends_at: float  # clock time this slot stops taking steps
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKET_BOUNDS_MS))  # steps per bucket
    max_ms: float = 0.0  # the longest step
    max_task: str = ""  # ... and its task's name


@dataclass(frozen=True)
class Stall:
    """A step at least `stall_log_ms` long, as handed to the callback."""

    task: str  # the task's name
    ms: float  # how long the step ran
    unreported: int  # stalls left out since the last report (rate limit)


class LoopWatch(trio.abc.Instrument):
    """Records the longest task steps of the trio run it is added to."""

    def __init__(self, window_s: float = WINDOW_S, slots: int = WINDOW_SLOTS,
                 stall_log_ms: float = STALL_LOG_MS, stall_log_gap_s: float = STALL_LOG_GAP_S,
                 on_stall: Callable[[Stall], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter, wall_clock: Callable[[], float] = time.time,
                 slow_step_ms: float = SLOW_STEP_MS, slow_steps_max: int = SLOW_STEPS_MAX,
                 cpu_clock: Callable[[], float] | None = None) -> None:
        self.window_s = window_s
        self.stall_log_ms = stall_log_ms
        self.stall_log_gap_s = stall_log_gap_s
        self.on_stall = on_stall
        self._clock = clock
        self._wall_clock = wall_clock
        self.slow_step_ms = slow_step_ms
        # (wall time, task, ms, CPU ms or None, samples: where the sampler saw the step)
        self.slow_steps: deque[tuple[float, str, float, float | None, tuple[str, ...]]] = deque(maxlen=slow_steps_max)
        self._cpu_clock = cpu_clock
        self._step_cpu = 0.0
        self._retired = [0] * len(BUCKET_BOUNDS_MS)  # steps per bucket of the slots dropped so far
        self._slot_s = window_s / slots
        self._slots_max = slots
        self._started_at = clock()
        self._slots: list[_Slot] = [_Slot(self._started_at + self._slot_s)]
        self._step_started: float | None = None  # None: added in the middle of a step
        self.max_ms = 0.0  # the longest step since start
        self.max_task = ""  # ... and its task's name
        self.stalls = 0  # steps of at least stall_log_ms since start
        self._reported_at = float("-inf")
        self._unreported = 0
        self._samples: list[str] = []  # where the sampler saw the running step (one line a sample)
        self._gc_ms = 0.0  # the collector's time during the running step (while sampling) ...
        self._gc_oldest = 0  # ... and the oldest generation it collected
        self._gc_started: float | None = None
        self._sampling: threading.Event | None = None  # set to stop the sampler
        self._hooks()

    # ---- the instrument -------------------------------------------------------------------------

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_started = self._clock()  # the plain hook (every step: keep it to one clock read)

    def _before_task_step_fully(self, task: trio.lowlevel.Task) -> None:
        """The hook while the CPU clock or the sampler is on (`_hooks`)."""
        if self._cpu_clock is not None:
            self._step_cpu = self._cpu_clock()
        if self._samples:
            self._samples = []
        self._gc_ms, self._gc_oldest = 0.0, 0
        self._step_started = self._clock()

    def _hooks(self) -> None:
        """Time each step with one clock read, unless the CPU clock or the sampler needs more."""
        if self._cpu_clock is not None or self._sampling is not None:
            self.before_task_step = self._before_task_step_fully  # type: ignore[method-assign]
        else:
            self.__dict__.pop("before_task_step", None)

    @property
    def steps(self) -> int:
        """Task steps since start."""
        return sum(self._since_start())

    def _since_start(self) -> list[int]:
        """Steps per bucket since start."""
        counts = list(self._retired)
        for slot in self._slots:
            counts = [a + b for a, b in zip(counts, slot.counts)]
        return counts

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        now = self._clock()
        if self._step_started is None:
            return
        ms = (now - self._step_started) * 1000.0
        slot = self._slots[-1]
        if now >= slot.ends_at:
            slot = self._rotate(now)
        slot.counts[bisect.bisect_left(BUCKET_BOUNDS_MS, ms)] += 1
        if ms > slot.max_ms:
            slot.max_ms, slot.max_task = ms, task.name
            if ms > self.max_ms:
                self.max_ms, self.max_task = ms, task.name
        if ms >= self.slow_step_ms:
            cpu_ms = None if self._cpu_clock is None else round((self._cpu_clock() - self._step_cpu) * 1000.0, 3)
            samples = tuple(self._samples) + ((f"gc {self._gc_ms:.1f} ms (oldest generation {self._gc_oldest})",)
                                              if self._gc_ms >= 1.0 else ())
            self.slow_steps.append((self._wall_clock(), task.name, round(ms, 3), cpu_ms, samples))
            if ms >= self.stall_log_ms:
                self._stalled(task.name, ms, now)

    # ---- reading ------------------------------------------------------------------------------

    def summary(self) -> dict:
        """The `loop` section of the status document (see docs/operations.md)."""
        now = self._clock()
        live = [s for s in self._slots if s.ends_at > now - self.window_s]
        worst = max(live, key=lambda s: s.max_ms, default=None)
        counts = self._since_start()
        return {
            "stall_max_ms": round(worst.max_ms, 3) if worst else 0.0,
            "stall_task": worst.max_task if worst else "",
            "stall_p99_ms": _quantile_ms([s.counts for s in live], 0.99),
            "window_s": self.window_s,
            "since_start": {"stall_max_ms": round(self.max_ms, 3), "stall_task": self.max_task,
                            "steps": sum(counts), "stalls": self.stalls,
                            "stall_log_ms": self.stall_log_ms,
                            "histogram_ms": [[b, c] for b, c in zip(BUCKET_BOUNDS_MS[:-1], counts) if c]
                            + ([["inf", counts[-1]]] if counts[-1] else [])},
            "slow_steps": [{"at": at, "task": task, "ms": ms, **({} if cpu is None else {"cpu_ms": cpu}),
                            **({"samples": list(samples)} if samples else {})}
                           for at, task, ms, cpu, samples in self.slow_steps],
            "slow_step_ms": self.slow_step_ms,
        }

    # ---- the stack sampler --------------------------------------------------------------------

    def start_sampling(self) -> None:
        """Sample the calling thread (the trio thread) during slow steps, until `stop_sampling`."""
        if self._sampling is None:
            gc.callbacks.append(self._collecting)
            self._sampling = threading.Event()
            self._hooks()
            threading.Thread(target=self._sample, args=(threading.get_ident(), self._sampling),
                             name="mesh.loopwatch.sampler", daemon=True).start()

    def stop_sampling(self) -> None:
        if self._sampling is not None:
            self._sampling.set()
            self._sampling = None
            self._hooks()
            gc.callbacks.remove(self._collecting)

    def _collecting(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = self._clock()
        elif self._gc_started is not None:
            self._gc_ms += (self._clock() - self._gc_started) * 1000.0
            self._gc_oldest = max(self._gc_oldest, info.get("generation", 0))
            self._gc_started = None

    def _sample(self, ident: int, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_EVERY_S):
            started = self._step_started
            if started is None or (self._clock() - started) * 1000.0 < SAMPLE_AFTER_MS:
                continue
            frame = sys._current_frames().get(ident)
            if frame is not None and self._step_started == started and len(self._samples) < SAMPLES_PER_STEP_MAX:
                at_ms = round((self._clock() - started) * 1000.0)
                self._samples.append(f"{at_ms} ms: " + " < ".join(_where(frame)))

    # ---- internals ----------------------------------------------------------------------------

    def _rotate(self, now: float) -> _Slot:
        """Start the slot that holds `now`; drop slots that left the window."""
        ends_at = self._slots[-1].ends_at
        while ends_at <= now:
            ends_at += self._slot_s
        self._slots.append(_Slot(ends_at))
        for gone in self._slots[:-self._slots_max]:
            self._retired = [a + b for a, b in zip(self._retired, gone.counts)]
        del self._slots[:-self._slots_max]
        return self._slots[-1]

    def _stalled(self, task: str, ms: float, now: float) -> None:
        self.stalls += 1
        if self.on_stall is None:
            return
        if now - self._reported_at < self.stall_log_gap_s:
            self._unreported += 1
            return
        self._reported_at = now
        stall, self._unreported = Stall(task, ms, self._unreported), 0
        self.on_stall(stall)


def _where(frame) -> list[str]:
    """The innermost `SAMPLE_FRAMES` frames: file (last two path parts), line, function."""
    found = []
    while frame is not None and len(found) < SAMPLE_FRAMES:
        code = frame.f_code
        path = os.sep.join(code.co_filename.split(os.sep)[-2:])
        found.append(f"{path}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return found


def _quantile_ms(histograms: list[list[int]], q: float) -> float:
    """The upper bound (ms) of the bucket holding the q-quantile of the steps counted."""
    counts = [sum(column) for column in zip(*histograms)] if histograms else []
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for bound, count in zip(BUCKET_BOUNDS_MS, counts):
        seen += count
        if seen >= rank:
            return bound if bound != float("inf") else BUCKET_BOUNDS_MS[-2]
    return BUCKET_BOUNDS_MS[-2]
