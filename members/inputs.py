"""How a member sees an image (:class:`InputConfig`), and which device it runs on.

Both are plain data: nothing here imports torch, so a prediction served by an exported
runtime (OpenVINO, ONNX Runtime) never loads it (issue #23).
"""

from __future__ import annotations

import dataclasses
import glob
import math

from .errors import EffensError


@dataclasses.dataclass
class InputConfig:
    """How a member sees an image: size, resize-then-crop ratio, normalisation."""

    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    view: str = "crop"  # how a whole photo becomes the input (members.views)
    render: dict | None = None  # {"short_side": [lo, hi], "quality": [lo, hi]} (members.render); None: off

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop at inference."""
        return int(math.floor(self.image_size / self.crop_pct))

    @classmethod
    def from_record(cls, fields: dict) -> "InputConfig":
        """From the fields saved in member.json."""
        return cls(**{**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"])})


class DeviceError(EffensError, ValueError):
    """A device that does not exist here or is not spelled as one."""


#: device nodes without which no CUDA (or ROCm) device can be visible to torch on Linux:
#: NVIDIA's, AMD's (ROCm), WSL's and Jetson's
_GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg", "/dev/nvhost-ctrl*", "/dev/nvgpu*")


def _gpu_nodes_present() -> bool:
    """Whether a GPU may be visible; outside Linux always asked of torch."""
    import sys

    return not sys.platform.startswith("linux") or any(glob.glob(pattern) for pattern in _GPU_NODES)


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when present, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as asked.

    torch is imported only where a GPU could exist (its device nodes are present) or one
    is asked for: on a CPU-only machine ``auto`` answers without it.
    """
    if name == "cpu":
        return "cpu"
    if name == "auto":
        if not _gpu_nodes_present():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N; got {name[:40]!r}")
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but no CUDA device is available")
    index = int(name[5:]) if ":" in name else None
    if index is not None and index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return name


def device_type(device) -> str:
    """``cpu`` or ``cuda`` of a resolved device (a string or a ``torch.device``)."""
    return str(device).split(":")[0]
