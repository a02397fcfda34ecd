"""Process-wide settings for a process that runs one source.  ``cdc run`` applies them;
a program that embeds ``SourceRunner`` next to other work decides for itself."""

from __future__ import annotations

import ctypes
import gc
import sys

__all__ = ["tune_process", "SWITCH_INTERVAL"]

SWITCH_INTERVAL = 0.05  # seconds
MALLOC_TRIM_THRESHOLD = 8 << 20  # bytes of free heap top glibc keeps instead of returning
MALLOC_MMAP_THRESHOLD = 4 << 20  # bytes from which an allocation gets its own mapping
_M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc malloc.h)
_M_MMAP_THRESHOLD = -3


def tune_process() -> None:
    """Fewer young-generation collections and a longer GIL switch interval (measured: ~15%
    and ~4% of the reader's time), glibc's heap top kept up to 8 MiB, and allocations up to
    4 MiB served from the heap."""
    # Events hold no reference cycles; collecting every 700 allocations costs ~15% of
    # the reader's time, so the young generation is allowed to grow.
    gc.freeze()
    gc.set_threshold(max(gc.get_threshold()[0], 50_000), 10, 10)
    # The reader and the sink threads all want the GIL; handing it over every 5 ms
    # (the default) costs the reader a few percent of its throughput.
    sys.setswitchinterval(max(sys.getswitchinterval(), SWITCH_INTERVAL))
    # A sink that holds a batch's serialized lines (file: ~1,000 lines of JSON) grows
    # the heap and frees it again; glibc gave the top back to the kernel after each
    # (128 kB threshold) and took fresh zeroed pages for the next: 3x the file sink's
    # time, in page faults.  8 MiB kept costs at most 8 MiB of RSS.  Setting it also fixes
    # glibc's threshold for a mapping of its own at 128 kB, so every 1 MiB read of the
    # PostgreSQL stream was mapped and faulted in afresh: up to 4 MiB now comes from the heap.
    if sys.platform.startswith("linux"):
        try:  # the process's own symbols: glibc's, without ctypes.util's ldconfig run (~9 ms)
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc
            return
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
        mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
