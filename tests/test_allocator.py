"""An agent's allocator reuses freed chunk-sized buffers instead of faulting fresh pages in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mesh.drivers.allocator import keep_chunk_buffers

# A few 1 MiB buffers alive at once, then all freed, over and over: what an edge does with the
# records it decrypts and the pieces it stores. Prints the page faults per round.
PATTERN = """
import os, resource, sys
from mesh.drivers.allocator import keep_chunk_buffers
if sys.argv[1] == "tuned":
    assert keep_chunk_buffers()
data = os.urandom(1 << 20)
def round_():
    held = [data + bytes([i]) for i in range(6)]
    del held
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    round_()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
"""


def _faults_per_round(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_chunk_buffers_are_reused_without_page_faults() -> None:
    if not keep_chunk_buffers():
        pytest.skip("this C library has no mallopt")
    plain, tuned = _faults_per_round("plain"), _faults_per_round("tuned")
    assert plain > 6 * 200  # glibc's defaults: every round maps its 6 MiB again (~256 faults a MiB)
    assert tuned < plain / 20
