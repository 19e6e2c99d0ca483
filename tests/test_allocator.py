"""The C allocator setting under CPU training and torch inference (members/allocator.py)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator setting applies to glibc only")


def _python(code: str, **env: str) -> str:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    if "EFFENS_MALLOC" not in env:
        full.pop("EFFENS_MALLOC", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=full, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


MAPPED = """
    import ctypes, numpy as np
    from members.allocator import keep_freed_memory

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                   "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        print("no-mallinfo2"); raise SystemExit
    libc.mallinfo2.restype = Info
    big = np.ones(64 << 20, np.uint8)      # 64 MiB, over glibc's largest mmap threshold
    before = libc.mallinfo2().hblkhd       # bytes in mmapped chunks, while it lives
    del big
    state = keep_freed_memory()
    big = np.ones(64 << 20, np.uint8)
    after = libc.mallinfo2().hblkhd
    print(before >= 64 << 20, after >= 64 << 20, state)
"""


@glibc_only
def test_large_buffers_come_from_the_heap_once_kept():
    out = _python(MAPPED)
    if out == "no-mallinfo2":
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe the setting")
    assert out.startswith("True False glibc: freed buffers kept"), out


@glibc_only
def test_effens_malloc_system_leaves_glibc_as_it_is():
    out = _python(MAPPED, EFFENS_MALLOC="system")
    if out == "no-mallinfo2":
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe the setting")
    assert out == "True True system defaults (EFFENS_MALLOC=system)", out


TRAIN = """
    import hashlib, numpy as np, torch
    from ensemble.config import MemberConfig, TrainConfig
    from ensemble.metrics import selection_scores
    from members.models import create_member
    from members.trainer import TrainData, TrainRun, train_member
    from members.transforms import eval_tensor

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (72, 72, 3), dtype=np.uint8) for _ in range(24)]
    y = np.arange(24) % 3
    spec = MemberConfig(name="m", model="test_efficientnet", image_size=64,
                        train=TrainConfig(epochs=2, batch_size=12, warmup_epochs=0.0))
    torch.manual_seed(0)
    member = create_member(spec, 3)
    data = TrainData(imgs, y, np.arange(24), eval_tensor(imgs[:6], member.inputs), y[:6])
    res = train_member(member, spec.train, data, TrainRun("m", 0, torch.device("cpu"),
                                                          lambda a, p: selection_scores(a, p, 3)))
    h = hashlib.sha256()
    for k in sorted(res.state_dict):
        h.update(res.state_dict[k].numpy().tobytes())
    print(h.hexdigest(), res.allocator)
"""


@glibc_only
def test_training_gives_the_same_weights_whatever_the_allocator_does():
    # the system run maps every buffer over 4 KiB (page-aligned, returned on free); the
    # default run takes them all from the heap: the weights must not notice
    system = _python(TRAIN, EFFENS_MALLOC="system", MALLOC_MMAP_THRESHOLD_="4096").split(" ", 1)
    kept = _python(TRAIN).split(" ", 1)
    assert system[1].startswith("system defaults") and kept[1].startswith("glibc: freed buffers kept")
    assert system[0] == kept[0]


def test_the_setting_is_recorded_and_made_once(monkeypatch):
    from members import allocator

    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setenv(allocator.ENV, "system")
    first = allocator.keep_freed_memory()
    monkeypatch.delenv(allocator.ENV)
    assert first == allocator.keep_freed_memory() == "system defaults (EFFENS_MALLOC=system)"
