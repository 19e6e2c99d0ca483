"""Private random streams for training augmentation: one per image, per epoch, per member.

timm's training transforms draw from process-wide generators (the `random` module and
`numpy.random`), and torchvision's flip from torch's default generator. Any other
thread of the process that draws from them shifts the stream: a Dask worker's event
loop does, so members trained there were not reproducible. Here each image's
augmentation draws from generators seeded by (member seed, epoch, sample position)
alone, so it does not depend on threads, DataLoader workers, backend or resume point.

The `random` and `numpy.random` module functions are routed through a per-thread
slot (installed once, on first use); a thread outside :func:`item_streams` keeps the
global generators exactly as before. State functions (`seed`, `getstate`, ...) are
not routed.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
from typing import Callable, Iterator

import numpy as np
from PIL import Image

_local = threading.local()
_install_lock = threading.Lock()
_installed = False
_STATE_FUNCTIONS = {"seed", "getstate", "setstate", "get_state", "set_state"}


def _routed(module, name: str, slot: str) -> Callable:
    global_fn = getattr(module, name)

    @functools.wraps(global_fn)
    def call(*args, **kwargs):
        rng = getattr(_local, slot, None)
        return (global_fn if rng is None else getattr(rng, name))(*args, **kwargs)

    return call


def _install() -> None:
    """Route the module-level functions bound to the global generators (once per process)."""
    global _installed
    if _installed:  # the common case, once per training image: no lock
        return
    with _install_lock:
        if _installed:
            return
        for module, owner, slot in ((random, random._inst, "py"), (np.random, np.random.mtrand._rand, "np")):
            for name in dir(module):
                fn = getattr(module, name)
                if name.startswith("_") or name in _STATE_FUNCTIONS or getattr(fn, "__self__", None) is not owner:
                    continue
                setattr(module, name, _routed(module, name, slot))
        _installed = True


@contextlib.contextmanager
def item_streams(*key: int) -> Iterator[None]:
    """Give the calling thread its own `random` and `numpy.random` streams, seeded by ``key``."""
    _install()
    py_seed, np_seed = np.random.SeedSequence([int(k) for k in key]).generate_state(2)
    saved = getattr(_local, "py", None), getattr(_local, "np", None)
    _local.py, _local.np = random.Random(int(py_seed)), np.random.RandomState(int(np_seed))
    try:
        yield
    finally:
        _local.py, _local.np = saved


class HorizontalFlip:
    """Flip left-right with probability ``p``, drawing from `random` (torchvision's uses torch's
    default generator, which :func:`item_streams` does not route)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"
