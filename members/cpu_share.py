"""Sharing a CPU: threads that wait sleep instead of spinning.

torch's CPU kernels run on GNU OpenMP, whose idle threads spin at every barrier for a
while before they sleep (``GOMP_SPINCOUNT``, 300,000 turns when nothing is set). On a
small CPU that another process also uses, a spinning thread takes the core the other
process's threads (or its own sibling, descheduled) need, and both crawl: on 2 cores a
training beside another torch process ran 16-19x slower, not 2x (issue #41, item 13;
docs/benchmarks.md). So effens asks OpenMP to let waiting threads sleep
(``OMP_WAIT_POLICY=PASSIVE``), unless the user set ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT``. It changes no number: the same kernels, threads and order of work.
It must happen before torch loads OpenMP, so ``ensemble`` and ``members`` do it on import.
"""

from __future__ import annotations

import os

#: the environment variables that decide how OpenMP threads wait; a user's value wins
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def share_cpu() -> bool:
    """Let waiting OpenMP threads sleep, unless the user chose; True when effens set it."""
    if any(k in os.environ for k in WAIT_SETTINGS):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def waiting_threads_sleep() -> bool:
    """Whether threads are asked to sleep when they wait (also for ONNX Runtime's pool)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
