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
glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator setting applies to glibc only",
)


def _python(code: str, **env: str) -> str:
    full = {
        k: v
        for k, v in os.environ.items()  # the user's own malloc settings would win
        if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD", "EFFENS_MALLOC"))
    }
    full.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


MAPPED = """
    import ctypes, threading, numpy as np
    from members.allocator import keep_freed_memory

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                   "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        print("no-mallinfo2"); raise SystemExit
    libc.mallinfo2.restype = Info
    MB64 = 64 << 20                        # over glibc's largest mmap threshold (32 MiB)

    def mapped_by(alloc):                  # bytes mmapped while the buffer lives, over a baseline
        base = libc.mallinfo2().hblkhd
        big = alloc()
        return libc.mallinfo2().hblkhd - base >= MB64

    def in_thread():
        out = []
        t = threading.Thread(target=lambda: out.append(mapped_by(lambda: np.ones(MB64, np.uint8))))
        t.start(); t.join()
        return out[0]

    before = mapped_by(lambda: np.ones(MB64, np.uint8))
    state = keep_freed_memory()
    after = mapped_by(lambda: np.ones(MB64, np.uint8))
    thread = in_thread()                   # a thread started after the call (serve's forward thread)
    kept = libc.mallinfo2().fordblks >= MB64   # freed, and still in the heap (no trim)
    print(before, after, thread, kept, state)
"""


@glibc_only
def test_large_buffers_come_from_the_heap_once_kept_and_stay_there():
    out = _python(MAPPED)
    if out == "no-mallinfo2":
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe the setting")
    assert out.startswith("True False False True glibc: freed buffers kept"), out


@glibc_only
def test_effens_malloc_system_leaves_glibc_as_it_is():
    out = _python(MAPPED, EFFENS_MALLOC="system")
    if out == "no-mallinfo2":
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe the setting")
    assert out == "True True True False system defaults (EFFENS_MALLOC=system)", out


@glibc_only
def test_a_users_own_malloc_setting_is_left_alone():
    out = _python(MAPPED, MALLOC_ARENA_MAX_="2")
    if out == "no-mallinfo2":
        pytest.skip("glibc older than 2.33 has no mallinfo2 to observe the setting")
    assert out.endswith("system defaults (set in the environment: MALLOC_ARENA_MAX_)"), out


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


def test_elsewhere_than_glibc_nothing_is_changed_and_the_reason_is_given(monkeypatch):
    from members import allocator

    for k in [
        k for k in os.environ if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD", "EFFENS_MALLOC")
    ]:
        monkeypatch.delenv(k)
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.keep_freed_memory() == "system defaults (the C library is not glibc)"

    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")

    def no_libc(name):
        raise OSError("no C library here")

    monkeypatch.setattr(allocator.ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory() == "system defaults (mallopt unavailable: no C library here)"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    monkeypatch.setattr(allocator, "_state", None)
    assert allocator.keep_freed_memory() == "system defaults (jemalloc in LD_PRELOAD)"


@pytest.mark.parametrize("runtime, called", [("torch", True), ("openvino", False)])
def test_serve_keeps_freed_memory_before_its_threads_start_on_the_torch_runtime(trained, monkeypatch, runtime, called):
    pytest.importorskip("fastapi", reason="`effens serve` needs FastAPI: pip install 'effens[serve]'")
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the OpenVINO runtime is not installed")
    from ensemble.serving.answers import InferenceOptions
    from ensemble.serving.app import ServeSettings, create_app
    from members import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or "recorded")
    create_app(str(trained[1]), ServeSettings(options=InferenceOptions(runtime=runtime)))
    assert bool(calls) is called
