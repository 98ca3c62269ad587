"""Give memory that the model freed back to the OS, so a service's RSS stays flat.

Why: every request of a new length makes torch/oneDNN allocate intermediate buffers of new
sizes, from several threads (the RPC handlers, the scheduler, the OpenMP workers). glibc's
malloc keeps freed chunks in its heaps and only returns the *top* of a heap to the OS, so
free pages stranded between live chunks stay resident: measured on the vocoder (unary
inference of 60 mels of 15-250 frames, in process), RSS rose 403 -> 730 MiB and kept rising;
with `MALLOC_ARENA_MAX=2` alike, with `ONEDNN_PRIMITIVE_CACHE_CAPACITY=0` more slowly but
still; with `malloc_trim(0)` after each call it stayed at 450-461 MiB. `malloc_trim(0)` walks
every arena and returns each whole free page (madvise), which is what the heap never does
by itself. It costs about 1-30 ms (measured on the 2-core machine, 450-MiB vocoder), so the
scheduler's workers call it once they have been idle a moment after some work, and at least
once a second under sustained load (`BatchScheduler._work`), never between a stream's windows.

No-op where the C library is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

log = logging.getLogger(__name__)


def _load_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_trim()


def release_freed_memory() -> float:
    """Return freed heap pages to the OS (glibc `malloc_trim(0)`); the seconds it took
    (0.0 where unsupported)."""
    if _malloc_trim is None:
        return 0.0
    t0 = time.perf_counter()
    _malloc_trim(0)
    return time.perf_counter() - t0


#: oneDNN compiled-kernel cache entries for stages whose input length varies with every text
#: (frontend, acoustic). The default (1,024 per process) keeps one kernel set per layer and
#: length: measured in process over 300 varied texts, frontend + acoustic grew 29 MiB with
#: it, 7 MiB with 64, 5 MiB with 0 (which costs ~4 ms a text). The vocoder's windows come in
#: a few fixed sizes, so it keeps the default and its cache hits.
VARIABLE_SHAPE_KERNEL_CACHE = 64


def bound_kernel_cache(capacity: int = VARIABLE_SHAPE_KERNEL_CACHE) -> None:
    """Bound oneDNN's kernel cache for a stage that sees a new input shape per request.

    oneDNN reads the setting when it builds its first kernel, so call this before the model
    runs (importing torch is fine). An operator's own ONEDNN_PRIMITIVE_CACHE_CAPACITY wins.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))
