"""What the bench host does to a measurement that an edge box would not: settings a bench switches
off for its run and restores."""

from __future__ import annotations

import contextlib
from pathlib import Path

PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
PAGE_ORDER_NEVER = 11  # above the buddy allocator's largest order: no free block is reported


@contextlib.contextmanager
def page_reporting(mode: str):
    """With "off", stop virtio-balloon free page reporting while the bench runs (yields what was
    done, for the report). A freed page the guest reported is unmapped by the host, and its next
    use faults in the host: measured here, four processes writing 256 MiB each into new files
    spent 0.35-0.7 s of system time each with reporting on and 0.08-0.15 s with it off (a single
    writer reuses its own freed pages before they are reported, and pays 0.05-0.1 s either way)."""
    if mode != "off" or not PAGE_REPORTING_ORDER.exists():
        yield "kept" if mode != "off" else "not present"
        return
    before = PAGE_REPORTING_ORDER.read_text().strip()
    try:
        PAGE_REPORTING_ORDER.write_text(str(PAGE_ORDER_NEVER))
    except OSError:
        yield "kept (not writable)"
        return
    try:
        yield f"off (order {before} -> {PAGE_ORDER_NEVER} for the run)"
    finally:
        PAGE_REPORTING_ORDER.write_text(before)
