"""Numeric precision of training and inference: ``auto | fp32 | bf16 | fp16``.

One decision per (requested precision, device), made by :func:`resolve_precision` from
what the hardware reports, never assumed:

- CPU: ``auto`` is fp32, always: the same config, seed and machine give the same weights
  whatever else the machine is doing. (A timing probe at run time read 0.17x-0.86x within
  one hour on one machine, so a run-time measurement would make results depend on load;
  and CPUs with the same flags differ: bf16 training 1.4x faster on one, 0.6x on
  another.) Where the CPU has native bf16 (AVX512_BF16 or AMX, as torch reports it) the
  reason says so: ``precision: bf16`` is then one explicit setting away, and
  ``scripts/benchmark_cpu.py`` measures whether it pays on that machine.
  ``bf16`` on a CPU without native bf16 still runs (emulated) after one warning that it
  will be slower than fp32; ``fp16`` on a CPU is refused.
- CUDA: ``auto`` is bf16 where the GPU supports it, else fp16 with a gradient scaler.

Master weights always stay fp32; only the forward (and backward) passes run in the
lower precision, so checkpoints and resume are unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import platform
import time
from typing import Callable

from .errors import EffensError
from .inputs import device_type

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class PrecisionError(EffensError, ValueError):
    """A precision the device cannot run (e.g. fp16 on a CPU)."""


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset]:
    """The CPU's model name and flags as the OS reports them (no torch)."""
    model = platform.processor() or "unknown"
    flags: frozenset = frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict:
    """The CPU's model name and the features that decide its fast paths."""
    model, flags = cpu_info()
    import torch  # its own probes first: what it will actually run

    cpu = getattr(torch, "cpu", None)

    def ask(fn: str, flag: str) -> bool:
        probe = getattr(cpu, fn, None)
        if probe is not None:
            try:
                return bool(probe())
            except Exception:  # a probe missing from this build
                pass
        return flag in flags

    return {
        "model": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": ask("_is_avx512_bf16_supported", "avx512_bf16"),
        "amx": ask("_is_amx_tile_supported", "amx_tile"),
        "avx2": ask("_is_avx2_supported", "avx2"),
    }


def inference_precision(requested: str, trained: str | None, device) -> Precision:
    """Inference precision: ``auto`` means what the member trained in, where it can run here
    (a member trained in fp32 answers without importing torch)."""
    kind = device_type(device)
    if requested == "auto" and kind == "cpu":
        if trained == "bf16" and cpu_has_native_bf16():
            return Precision("bf16", "cpu", "auto: the precision the member trained in")
        return Precision(
            "fp32",
            "cpu",
            f"auto: the member trained in {trained or 'fp32'}"
            + ("" if trained in (None, "fp32") else ", fp32 on this CPU"),
        )
    return resolve_precision(requested, device)


def cpu_has_native_bf16() -> bool:
    f = cpu_features()
    return bool(f["avx512_bf16"] or f["amx"])


def describe_cpu() -> str:
    """One line for logs and benchmark records: model, torch's capability, bf16 flags."""
    f = cpu_features()
    return f"{f['model']} (torch capability {f['capability']}, avx512_bf16={f['avx512_bf16']}, amx={f['amx']})"


@dataclasses.dataclass(frozen=True)
class Precision:
    """A resolved precision for one device: what autocast and the gradient scaler do."""

    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda
    reason: str = ""

    @property
    def dtype(self):
        """The autocast ``torch.dtype`` (None for fp32)."""
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def uses_scaler(self) -> bool:
        """fp16 gradients need loss scaling; bf16 has fp32's range and does not."""
        return self.name == "fp16" and self.device_type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype is None:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=self.dtype)


_warned: set[str] = set()


def speedup(probe: Callable[[Precision], None], device_type: str = "cpu", repeats: int = 3) -> float:
    """fp32 seconds / bf16 seconds of ``probe`` (one warm-up call each, then the best of ``repeats``)."""
    best = {}
    for name in ("fp32", "bf16"):
        p = Precision(name, device_type)
        probe(p)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            probe(p)
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    return best["fp32"] / max(best["bf16"], 1e-12)


def resolve_precision(requested: str, device) -> Precision:
    """Turn ``auto|fp32|bf16|fp16`` into what runs on ``device`` (see the module doc): from
    the request and the hardware only, never from a timing."""
    if requested not in PRECISIONS:
        raise PrecisionError(f"`precision` must be one of {', '.join(PRECISIONS)}; got {requested!r}")
    kind = device_type(device)
    if requested == "fp32":
        return Precision("fp32", kind, "asked for")
    if kind == "cuda":
        import torch

        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if requested == "auto":
            return Precision(
                "bf16" if bf16_ok else "fp16",
                "cuda",
                "GPU supports bf16" if bf16_ok else "GPU lacks bf16: fp16 with loss scaling",
            )
        if requested == "bf16" and not bf16_ok:
            raise PrecisionError("`precision: bf16` but this GPU does not support bf16; use fp16 or auto")
        return Precision(requested, "cuda", "asked for")
    if kind != "cpu":
        return Precision("fp32", kind, f"no mixed precision on {kind}")
    native = cpu_has_native_bf16()
    if requested == "auto":
        if not native:
            return Precision("fp32", "cpu", "auto: fp32 on CPU (no native bf16: AVX512_BF16/AMX)")
        return Precision(
            "fp32",
            "cpu",
            "auto: fp32 on CPU, whatever the load, for reproducible weights; this CPU "
            "has native bf16: `precision: bf16` may be faster "
            "(scripts/benchmark_cpu.py measures it)",
        )
    if requested == "fp16":
        raise PrecisionError("`precision: fp16` needs a CUDA device; on a CPU use bf16, fp32 or auto")
    if requested == "bf16" and not native and "bf16" not in _warned:
        _warned.add("bf16")
        log.warning(
            "precision bf16 on a CPU without native bf16 (%s): it is emulated and usually "
            "slower than fp32; use `precision: auto` to let effens choose",
            describe_cpu(),
        )
    return Precision(requested, "cpu", "asked for")
