"""The C allocator under CPU training: keep freed activation buffers in the process.

glibc's malloc serves every request over its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and hands it back to the kernel on ``free``. One training step of a
member at 224 px and batch 32 allocates activations of 50-150 MiB each, so every step
faults in (and the kernel zeroes) a few GiB of new pages: in the profile of Lite0's
step, ``fill_`` of one padded 150 MiB activation took longer than the convolutions
around it. :func:`keep_freed_memory` turns mmap off for the heap (``M_MMAP_MAX = 0``) and
never trims it (``M_TRIM_THRESHOLD = -1``; a 2 GiB threshold still trimmed the 2-3 GiB a
step frees at its end), so the next step reuses the pages of the last one. Measured in
docs/benchmarks.md ("Training (item 3), the C allocator").

- Numbers do not change: torch aligns every CPU buffer to 64 bytes either way, and
  the kernels do not depend on where a buffer lives (the same ``model.safetensors``
  bit for bit, tested).
- One arena (``M_ARENA_MAX = 1``) for the threads that allocate after the call, so a
  thread that runs the network (``effens serve``'s forward thread) reuses the same heap;
  a thread that had already allocated keeps its own arena, where glibc still maps
  requests over 64 MiB. Call it early: serve does, before its threads start.
- The cost: the process keeps its peak memory until it exits, also after a ``predict``
  in a notebook.
- Only where the C library is glibc (Linux) and nothing else chose the allocator: a
  ``MALLOC_*_`` variable or ``GLIBC_TUNABLES`` with ``glibc.malloc.*`` set by the user,
  or jemalloc/tcmalloc/mimalloc in ``LD_PRELOAD``, is left as it is; so is a libc whose
  ``mallopt`` cannot be reached. The reason is in the log and in ``member.json``.
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
_M_ARENA_MAX = -8
_NEVER = -1  # M_TRIM_THRESHOLD = -1: never give the heap's free top back

_state: str | None = None


def _chosen_elsewhere() -> str | None:
    """Why the allocator is someone else's choice, or None."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return f"{ENV}=system"
    user = sorted(k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_"))
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        return "set in the environment: " + ", ".join(user)
    preload = os.environ.get("LD_PRELOAD", "")
    for lib in ("jemalloc", "tcmalloc", "mimalloc"):
        if lib in preload:
            return f"{lib} in LD_PRELOAD"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    return None


def keep_freed_memory() -> str:
    """Keep freed buffers for reuse (see the module doc); once per process.

    Returns what the allocator does now, in words, for logs and run records.
    """
    global _state
    if _state is not None:
        return _state
    why = _chosen_elsewhere()
    if why is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        except (OSError, AttributeError) as e:
            why = f"mallopt unavailable: {e}"
        else:
            done = [
                name
                for name, param, value in (
                    ("mmap off", _M_MMAP_MAX, 0),
                    ("no trim", _M_TRIM_THRESHOLD, _NEVER),
                    ("one arena", _M_ARENA_MAX, 1),
                )
                if mallopt(param, value) == 1
            ]
            if done:
                _state = f"glibc: freed buffers kept for reuse ({', '.join(done)})"
            else:
                why = "glibc refused mallopt"
    if _state is None:
        _state = f"system defaults ({why})"
    log.info("C allocator: %s", _state)
    return _state
