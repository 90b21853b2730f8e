"""What the bench host does to a measurement that an edge box would not: settings a bench switches
off for its run and restores."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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


FRESH_FS_BYTES_MIN = 1024**3


@contextlib.contextmanager
def fresh_filesystem(mode: str, where: Path, size: int):
    """With "fresh", yield the mount point of a new ext4 (mkfs defaults, so with a journal) on a
    loop device backed by a sparse file in `where`, made for one run and removed after it; with
    "workdir" (or where it cannot be made: not root, no mkfs.ext4 or loop devices) yield `where`.

    Why: an edge box stores chunks on a journaled ext4 (or f2fs) that has not just freed the
    inodes of a previous run. This VM's root filesystem has no journal, and on such an ext4 the
    inode allocator skips every inode freed in the last ~30 s, reading its inode table block to
    find out (`recently_deleted`): after a previous run's homes were deleted, creating one file
    per chunk made `recently_deleted` and `find_get_block_common` ~5% of every sample, and the
    agents' system time rose run after run (2.7 -> 4.3 CPU-s over six runs of the same code)."""
    loop = _loop_filesystem(where / "fresh-fs.img", max(size, FRESH_FS_BYTES_MIN)) if mode == "fresh" else None
    if loop is None:
        yield where, "the work directory" + ("" if mode != "fresh" else " (no loop device or mkfs.ext4 here)")
        return
    mount = where / "fresh-fs"
    try:
        mount.mkdir()
        subprocess.run(["mount", loop, str(mount)], check=True, capture_output=True)
        try:
            yield mount, "a fresh ext4 with a journal (loop device)"
        finally:
            subprocess.run(["umount", str(mount)], check=False, capture_output=True)
            mount.rmdir()
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False, capture_output=True)
        (where / "fresh-fs.img").unlink()


def _loop_filesystem(image: Path, size: int) -> str | None:
    """A loop device (its path) holding a new ext4 in the sparse file `image`; None where this
    host cannot (not root, no mkfs.ext4 or losetup, no loop devices)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None:
        return None
    with open(image, "wb") as handle:
        handle.truncate(size)
    try:  # inode tables and journal written now, not by a kernel thread during the run
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)],
                       check=True, capture_output=True)
        return subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(image)],
                              check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        image.unlink()
        return None
