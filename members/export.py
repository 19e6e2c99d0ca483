"""Export a member's network to ONNX: images (normalised, or uint8) in, class probabilities out."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from .errors import EffensError
from .runtimes import OPSET, exporter_versions  # noqa: F401 (re-exported)


class ExportError(EffensError, RuntimeError):
    """A network could not be exported (names the member and, where known, the operator)."""


class WithSoftmax(nn.Module):
    """``softmax(model(x))``: the exported graph gives probabilities, like effens does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


def export_onnx_bytes(
    module: nn.Module, example: torch.Tensor | tuple, name: str, input_names: list[str], output_names: list[str]
) -> bytes:
    """ONNX bytes of ``module`` in eval mode, fp32, with a dynamic batch axis on every input.

    Uses torch's TorchScript-based exporter (fast; needs the `onnx` package); failures name
    ``name`` and the unsupported operator when torch says which.
    """
    module = module.eval().float()
    example = example if isinstance(example, tuple) else (example,)
    buf = io.BytesIO()
    axes = {n: {0: "batch"} for n in input_names + output_names}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                buf,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )
    except Exception as exc:  # torch raises several types here
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"{name}: ONNX export failed ({type(exc).__name__}: {text[:300]})") from None
    return buf.getvalue()


class FromUint8(nn.Module):
    """uint8 RGB (N, 3, S, S) -> the member's normalisation -> ``module``, in one graph."""

    def __init__(self, module: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module((x.float() - self.mean) / self.std)


def export_member_onnx(model: nn.Module, image_size: int, name: str, inputs=None) -> bytes:
    """One member as ONNX: input ``image`` (N, 3, S, S), output ``proba`` (N, C).

    The input is normalised float32, or with ``inputs`` (an InputConfig) uint8 RGB with
    the normalisation inside the graph (what effens' runtimes feed).
    """
    module: nn.Module = WithSoftmax(cpu_copy(model))
    example = torch.zeros(2, 3, image_size, image_size)
    if inputs is not None:
        module, example = FromUint8(module, inputs.mean, inputs.std), example.to(torch.uint8)
    return export_onnx_bytes(module, example, f"member {name}", ["image"], ["proba"])


def cpu_copy(model: nn.Module) -> nn.Module:
    """A contiguous-format CPU copy, so exporting never changes the caller's model."""
    import copy

    return copy.deepcopy(model).to(device="cpu", memory_format=torch.contiguous_format).eval()


_TEMPORARY: dict[tuple, str] = {}


def temporary_onnx(model: nn.Module, inputs, name: str, owner) -> str:
    """A runtime ONNX file (uint8 input) in a per-process temporary folder, exported once
    per ``(owner, name)``: for fitted ensembles with no writable run folder."""
    import os
    import tempfile

    key = (owner, name)
    if key not in _TEMPORARY or not os.path.isfile(_TEMPORARY[key]):
        folder = tempfile.mkdtemp(prefix="effens-onnx-")
        path = os.path.join(folder, f"{name}.onnx")
        with open(path, "wb") as fh:
            fh.write(export_member_onnx(model, inputs.image_size, name, inputs=inputs))
        _TEMPORARY[key] = path
    return _TEMPORARY[key]
