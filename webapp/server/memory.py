"""The memory this process may use, and the memory it does use.

A dyno or container is restarted when it passes its memory quota, and every
client of every project is dropped with it. So the server reads its limit at
start-up, derives its budgets from it (`config._derive_budgets`), reports the
limit and its resident size (`/api/status`, `/metrics`, `/dashboard`), and
logs a warning when it gets close.

The limit comes from, in order: cgroup v2 `memory.max`, cgroup v1
`memory.limit_in_bytes` (Heroku and most container hosts), else the
machine's physical memory. Reading them is a few small file reads, done once.
"""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)

CGROUP_V2 = "/sys/fs/cgroup/memory.max"
CGROUP_V1 = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
#: cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages).
_UNLIMITED = 1 << 60
#: RSS share of the limit at which a warning is logged, and at which the
#: warning re-arms once RSS has come down again.
WARN_SHARE, REARM_SHARE = 0.90, 0.85


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _read_limit(path: str) -> int | None:
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max": no limit at this level
        return None
    value = int(text)
    return value if 0 < value < _UNLIMITED else None


def memory_limit(cgroup_v2: str = CGROUP_V2, cgroup_v1: str = CGROUP_V1) -> tuple[int, str]:
    """(bytes, where it came from): the container's limit, else physical memory."""
    physical = physical_memory()
    for path, source in ((cgroup_v2, "cgroup v2"), (cgroup_v1, "cgroup v1")):
        value = _read_limit(path)
        if value is not None and value < physical:
            return value, source
    return physical, "physical memory"


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from /proc (what the container's quota counts)."""
    try:
        with open(f"/proc/{pid}/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class MemoryWatch:
    """Reports RSS against the limit; warns once per excursion above 90%."""

    def __init__(self, settings: dict):
        self.limit_bytes = int(settings["MEMORY_LIMIT_BYTES"])
        self.limit_source = settings["MEMORY_LIMIT_SOURCE"]
        self.budgets = {
            "model_memory_bytes": int(float(settings["MODEL_MEMORY_MB"]) * 1024 * 1024),
            "decode_memory_bytes": int(float(settings["DECODE_MEMORY_MB"]) * 1024 * 1024),
            "max_connections": int(settings["MAX_CONNECTIONS"]),
        }
        self._warned = False

    def announce(self) -> None:
        log.info("memory limit %.0f MB (%s); budgets: models %.0f MB, decoding %.0f MB, %d connections",
                 self.limit_bytes / 2**20, self.limit_source, self.budgets["model_memory_bytes"] / 2**20,
                 self.budgets["decode_memory_bytes"] / 2**20, self.budgets["max_connections"])

    def check(self) -> int:
        """Read RSS now; log a warning when it first passes 90% of the limit."""
        rss = rss_bytes()
        if not self._warned and rss > WARN_SHARE * self.limit_bytes:
            self._warned = True
            log.warning("memory: RSS %.0f MB is over %d%% of the %.0f MB limit (%s); the platform may restart "
                        "the process above it", rss / 2**20, WARN_SHARE * 100, self.limit_bytes / 2**20,
                        self.limit_source)
        elif self._warned and rss < REARM_SHARE * self.limit_bytes:
            self._warned = False
        return rss

    def snapshot(self) -> dict:
        return {"limit_bytes": self.limit_bytes, "limit_source": self.limit_source,
                "rss_bytes": self.check(), "budgets": dict(self.budgets)}


#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: Allocations from this size up get their own mapping, returned to the
#: system when freed. Decoded images (Pillow allocates them in 16 MB blocks)
#: and batch tensors are above it; per-frame objects are far below.
MMAP_THRESHOLD_BYTES = 1024 * 1024


def return_freed_memory_to_the_system() -> bool:
    """Make glibc give large freed buffers back at once, not keep them per thread.

    By default glibc raises its mmap threshold after the first large free (up
    to 32 MB), so later decoded images come from per-thread heaps that are
    not trimmed: each decoding thread keeps the largest image it ever decoded,
    and RSS ratchets up to threads x largest image. A fixed threshold turns
    that off.

    It also caps glibc's heaps (arenas) at one per usable core (at least 2:
    the affinity, capped by the container's CPU quota, `config.usable_cpus`)
    unless `MALLOC_ARENA_MAX` is set: glibc's default of 8 per core gives each native
    thread (decoders, interpreters, tpool, XNNPACK) a heap of its own whose
    free pages stay resident. Measured with three int8 MobileNetV2 loaded:
    -8 MB (eventlet), -4 MB (threading). Set before those threads exist.

    Process-wide, so applied by `create_app`, idempotently; a no-op where the
    C library is not glibc.
    """
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        return False
    if "MALLOC_ARENA_MAX" not in os.environ:
        from ..config import usable_cpus  # no more threads than these run at once

        mallopt(_M_ARENA_MAX, max(2, usable_cpus()))
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES))


def return_freed_memory() -> None:
    """Give the free pages of every glibc heap back to the operating system.

    Memory freed on a native thread stays in that thread's heap (arena), and
    pieces below the mmap threshold stay in whichever heap they came from.
    Called after what frees a lot at once: a closed interpreter (measured:
    +80 MB over 100 swaps of a 1 MB model, +14 MB with this) and a websocket
    message refused for its size. A no-op without glibc.
    """
    trim = getattr(_glibc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library, for its malloc tuning and statistics; None where it cannot be loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


#: glibc's `struct mallinfo2` (malloc.h), every field a size_t.
_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")


@functools.lru_cache(maxsize=1)
def _mallinfo2():
    import ctypes

    function = getattr(_glibc(), "mallinfo2", None)
    if function is None:
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]

    function.restype = MallInfo2
    return function


def allocated_bytes() -> int:
    """Bytes malloc has handed out and not taken back, in every arena
    (glibc's `mallinfo2`); the RSS where there is no glibc."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return rss_bytes()
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)
