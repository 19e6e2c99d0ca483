"""The C allocator under CPU training: keep freed activation buffers in the process.

glibc's malloc serves every request over its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and hands it back to the kernel on ``free``. One training step of a
member at 224 px and batch 32 allocates activations of 50-150 MiB each, so every step
faults in (and the kernel zeroes) a few GiB of new pages: in the profile of Lite0's
step, ``fill_`` of one padded 150 MiB activation took longer than the convolutions
around it. :func:`keep_freed_memory` turns mmap off for the heap (``M_MMAP_MAX = 0``) and
never trims it (``M_TRIM_THRESHOLD = -1``; a 2 GiB threshold still trimmed the 2-3 GiB a
step frees at its end), so the next step reuses the pages of the last one. Measured in docs/benchmarks.md ("The C allocator").

- Numbers do not change: torch aligns every CPU buffer to 64 bytes either way, and
  the kernels do not depend on where a buffer lives (the same ``model.safetensors``
  bit for bit, tested).
- The cost: the process keeps its peak memory until it exits.
- Only where the C library is glibc (Linux); elsewhere nothing is changed.
- ``EFFENS_MALLOC=system`` in the environment leaves glibc's defaults.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

ENV = "EFFENS_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_MAX = -4
_NEVER = -1  # M_TRIM_THRESHOLD = -1: never give the heap's free top back

_state: str | None = None


def keep_freed_memory() -> str:
    """Keep freed buffers for reuse (see the module doc); once per process.

    Returns what the allocator does now, in words, for logs and run records.
    """
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV, "").strip().lower() == "system":
        _state = f"system defaults ({ENV}=system)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = "system defaults (the C library is not glibc)"
    else:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER) == 1
        _state = ("glibc: freed buffers kept for reuse (mmap off, no trim)" if ok
                  else "system defaults (glibc refused mallopt)")
    log.info("C allocator: %s", _state)
    return _state
