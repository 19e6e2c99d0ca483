"""Inference runtimes behind one interface: torch, OpenVINO, ONNX Runtime.

A runtime turns a batch of centre-cropped uint8 RGB images (N x 3 x S x S) into one
member's class probabilities. Adding a runtime is one class here with ``@register``:

    @register("myrt", needs_onnx=True, package="myrt", extra="myrt", auto=5)  # auto: optional priority
    class MyRuntime(Runtime):
        def __init__(self, model, inputs, onnx_path, device, precision, cache_dir=None): ...
        def run(self, x): ...

Runtimes that read ONNX get ``model=None`` and the member's export with uint8 input and
the normalisation inside the graph (:func:`members.export.export_member_onnx` with
``inputs``); the caller decides where that file lives and caches it, and may give a
folder for the runtime's own compiled-model cache. Nothing here imports torch unless the
torch runtime runs: a prediction through an exported runtime starts in under a second.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .cpu_share import waiting_threads_sleep
from .errors import EffensError
from .inputs import InputConfig, device_type
from .precision import Precision
from .registry import Registry

if TYPE_CHECKING:  # torch loads only for the torch runtime (issue #23: start-up)
    from torch import nn

log = logging.getLogger(__name__)


#: ONNX opset of every export (:mod:`members.export`)
OPSET = 17


def exporter_versions() -> dict:
    """What an exported file depends on besides the weights (part of every cache key);
    read from the installed package's metadata, so checking a cache imports no torch."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover - effens needs torch installed
        torch_version = "unknown"
    return {"torch": torch_version, "opset": OPSET}


class RuntimeUnavailable(EffensError, RuntimeError):
    """A runtime was asked for that is not installed (or cannot run on this device)."""


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    name: str
    cls: type
    needs_onnx: bool
    package: str | None  # import name that must be installed
    extra: str | None  # ``pip install 'effens[extra]'``
    devices: tuple[str, ...]
    precisions: tuple[str, ...]  # what it can run; anything else runs fp32
    auto: int | None = None  # priority when `runtime: auto` (highest installed wins); None: never


RUNTIMES: Registry[RuntimeInfo] = Registry("runtime")


def register(
    name: str,
    *,
    needs_onnx: bool = False,
    package: str | None = None,
    extra: str | None = None,
    devices: tuple[str, ...] = ("cpu", "cuda"),
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16"),
    auto: int | None = None,
) -> Callable:
    """Class decorator: make a :class:`Runtime` available under ``name``; ``auto``: its
    priority for ``runtime: auto`` on the devices it runs on (None: only when asked for)."""

    def wrap(cls: type[Runtime]) -> type[Runtime]:
        RUNTIMES.add(
            name, RuntimeInfo(name, cls, needs_onnx, package, extra, devices, precisions, auto), cls.__module__
        )
        cls.name = name
        return cls

    return wrap


def is_installed(name: str) -> bool:
    info = RUNTIMES[name]
    return info.package is None or importlib.util.find_spec(info.package) is not None


def resolve_runtime(requested: str, device) -> str:
    """``auto`` -> the installed runtime with the highest ``auto`` priority that runs on
    this device (OpenVINO on CPU when installed, else torch); others are checked."""
    kind = device_type(device)
    if requested == "auto":
        eligible = [
            info
            for info in RUNTIMES.values()
            if info.auto is not None and kind in info.devices and is_installed(info.name)
        ]
        if not eligible:
            raise RuntimeUnavailable(f"no installed runtime runs on {kind} under `runtime: auto`")
        return max(eligible, key=lambda info: info.auto).name
    if requested not in RUNTIMES:
        raise RuntimeUnavailable(f"`runtime` must be auto or one of {', '.join(RUNTIMES)}; got {requested!r}")
    info = RUNTIMES[requested]
    if not is_installed(requested):
        raise RuntimeUnavailable(f"runtime {requested} is not installed: pip install 'effens[{info.extra}]'")
    if kind not in info.devices:
        raise RuntimeUnavailable(
            f"runtime {requested} runs on {', '.join(info.devices)}, not on {kind}; use `--runtime torch` for {kind}"
        )
    return requested


def runtime_precision(name: str, precision: Precision) -> Precision:
    """The precision runtime ``name`` actually runs for a resolved ``precision``."""
    if precision.name in RUNTIMES[name].precisions:
        return precision
    return Precision("fp32", precision.device_type, f"{name} has no {precision.name} path")


class Runtime:
    """One member's network, compiled once; ``run`` maps uint8 crops to probabilities."""

    name = "base"

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@register("torch", auto=0)
class TorchRuntime(Runtime):
    """Eager PyTorch, channels_last, with the member's autocast precision."""

    def __init__(
        self, model: nn.Module, inputs: InputConfig, onnx_path: Path | None, device, precision: Precision
    ) -> None:
        import torch

        from .allocator import keep_freed_memory

        if torch.device(device).type == "cpu":
            keep_freed_memory()  # scripts/benchmark_allocator.py: an inference batch, both ways
        self.model = model.eval().to(device=device, memory_format=torch.channels_last)
        self.inputs, self.device, self.precision = inputs, device, precision

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        from .transforms import normalize

        with torch.inference_mode():
            t = normalize(torch.from_numpy(x).to(self.device, non_blocking=True), self.inputs)
            with self.precision.autocast():
                return self.model(t).float().softmax(dim=1).cpu().numpy()


def omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive whole number, or None when unset or not one."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdecimal() and text.isascii() and int(text) > 0 else None


def cpu_threads() -> int:
    """Threads for a CPU runtime: ``OMP_NUM_THREADS`` when set, else the physical cores
    this process may use (what torch takes by default). Never read from torch, so a
    runtime compiles with the same setting whether torch is loaded or not (the setting is
    part of OpenVINO's compiled-model cache key)."""
    asked = omp_num_threads()
    if asked:
        return asked
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list", encoding="utf-8") as fh:
                cores.add(fh.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


@functools.lru_cache(maxsize=1)
def _openvino_core():
    """One OpenVINO Core per process: its thread pools are made once and never torn down
    (creating and dropping Cores, then forking, crashed the parent process in tests)."""
    import openvino as ov

    return ov.Core()


@register(
    "openvino",
    needs_onnx=True,
    package="openvino",
    extra="openvino",
    devices=("cpu",),
    precisions=("fp32", "bf16"),
    auto=10,
)
class OpenVinoRuntime(Runtime):
    """OpenVINO on CPU, compiled from the member's ONNX file; bf16 when precision is bf16."""

    def __init__(
        self,
        model: nn.Module | None,
        inputs: InputConfig,
        onnx_path: Path,
        device,
        precision: Precision,
        cache_dir: Path | None = None,
    ) -> None:
        core = _openvino_core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision.name == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": str(cpu_threads()),
        }
        if cache_dir is not None:  # OpenVINO's compiled-model cache: compiled once, loaded after
            config["CACHE_DIR"] = str(cache_dir)
        self.compiled = core.compile_model(str(onnx_path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(x)})
        return np.asarray(out[self.compiled.output(0)], dtype=np.float32)


@register(
    "onnxruntime", needs_onnx=True, package="onnxruntime", extra="onnxruntime", devices=("cpu",), precisions=("fp32",)
)
class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU provider (always fp32: it has no fast bf16 CPU kernels)."""

    def __init__(
        self,
        model: nn.Module | None,
        inputs: InputConfig,
        onnx_path: Path,
        device,
        precision: Precision,
        cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu_threads()
        opts.log_severity_level = 3
        if waiting_threads_sleep():  # as torch's OpenMP threads (members.cpu_share)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x)})[0]


def create_runtime(
    name: str,
    model: Callable[[], nn.Module],
    inputs: InputConfig,
    device,
    precision: Precision,
    onnx_path: Callable[[], Path | None] | None = None,
    cache_dir: Path | None = None,
) -> Runtime:
    """Build runtime ``name`` (already resolved) for one member.

    ``model`` is a function that gives the torch model: it is called only by runtimes that
    run it, and ``onnx_path`` only by runtimes that read ONNX, so an exported member
    loads neither torch nor its weights. ``cache_dir``: where a runtime that compiles may
    keep its compiled model (OpenVINO).
    """
    info = RUNTIMES[name]
    if info.needs_onnx:
        if onnx_path is None:
            raise RuntimeUnavailable(f"runtime {name} needs the member exported to ONNX")
        extra = {"cache_dir": cache_dir} if cache_dir is not None and _accepts(info.cls, "cache_dir") else {}
        return info.cls(None, inputs, onnx_path(), device, precision, **extra)
    return info.cls(model(), inputs, None, device, precision)


def _accepts(cls: type, arg: str) -> bool:
    import inspect

    return arg in inspect.signature(cls).parameters


def runtime_proba(runtime: Runtime, images, batch_size: int = 64, tta: bool = False) -> np.ndarray:
    """Probabilities (N, C) of uint8 images (N, 3, S, S; numpy or a torch tensor) through
    ``runtime``, in batches. With ``tta`` the image's and its mirror's probabilities are averaged.
    """
    images = images.numpy() if hasattr(images, "numpy") and not isinstance(images, np.ndarray) else images
    out = []
    for start in range(0, len(images), batch_size):
        x = np.ascontiguousarray(images[start : start + batch_size])
        p = runtime.run(x)
        if tta:
            p = (p + runtime.run(np.ascontiguousarray(x[..., ::-1]))) / 2
        out.append(p)
    if not out:
        return np.zeros((0, 0), dtype=np.float64)
    return np.concatenate(out).astype(np.float64)
