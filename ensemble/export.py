"""``effens export``: members and the whole ensemble as ONNX (or OpenVINO IR) files.

Every member becomes ``<name>.onnx`` (input ``image``: normalised float32 N x 3 x S x S;
output ``proba``: N x C) with ``<name>.json`` giving its preprocessing and classes. The
whole ensemble becomes ``ensemble.onnx``: one graph from normalised images at the
largest member's input size to the ensemble's probabilities (members, calibration and
the strategy's own graph head inside: :meth:`ensemble.combining.strategies.Strategy.graph_head`), so the ensemble can be
served without effens. ``export.json`` records every file's SHA-256.

(The runtimes' own ONNX files for ``predict --runtime openvino|onnxruntime`` are cached
by :meth:`ensemble.runfolder.RunFolder.member_onnx`.)
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .combining.strategies import graph_strategies
from .combining.votes import PROBA_FLOOR
from .files import RunError, atomic_write_bytes, atomic_write_json, read_json, refuse_foreign, sha256_file

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino", "mlflow")


class ExportRefused(RunError):
    """An export that cannot be made as asked (strategy, output folder)."""


# ---------------------------------------------------------------- the ensemble as one module
class EnsembleGraph(nn.Module):
    """Members + calibration + vote as one torch module (what ``ensemble.onnx`` holds).

    Input: images normalised for the first member of the largest input size. Each member
    whose size differs sees them bilinearly resized (and re-normalised when its mean/std
    differ), an approximation of its own centre crop; members of the input's geometry
    see exactly what effens gives them.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        inputs: Sequence,
        head: nn.Module,
        temperatures: Sequence[float] | None,
        used: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        # rows the head gives no weight (pool candidates greedy left out) are zeros, not run
        self.used = [True] * len(models) if used is None else [bool(u) for u in used]
        self.members = nn.ModuleList(m for m, u in zip(models, self.used) if u)
        self.slot = {j: k for k, j in enumerate(j for j, u in enumerate(self.used) if u)}
        self.sizes = [int(i.image_size) for i in inputs]
        ref = inputs[int(np.argmax(self.sizes))]
        self.input_size = int(ref.image_size)
        self.input_mean, self.input_std = tuple(ref.mean), tuple(ref.std)
        self.norms = [(tuple(i.mean), tuple(i.std)) for i in inputs]
        if not isinstance(head, nn.Module):
            raise ExportRefused(f"a strategy's graph head must be a torch.nn.Module; got {type(head).__name__}")
        self.head = head
        m = len(models)
        t = np.ones(m)
        self.n_calibrated = len(temperatures) if temperatures else 0  # pool candidates after them are not
        if temperatures:
            t[: len(temperatures)] = np.asarray(temperatures, dtype=np.float64)
        self.calibrated = bool(temperatures)
        self.register_buffer("temperatures", torch.tensor(t, dtype=torch.float32))

    def _member_input(self, x: torch.Tensor, j: int) -> torch.Tensor:
        size, (mean, std) = self.sizes[j], self.norms[j]
        if size != self.input_size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if (mean, std) != (self.input_mean, self.input_std):
            im, istd = (torch.tensor(v, dtype=x.dtype).view(1, 3, 1, 1) for v in (self.input_mean, self.input_std))
            m, s = (torch.tensor(v, dtype=x.dtype).view(1, 3, 1, 1) for v in (mean, std))
            x = (x * istd + im - m) / s
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs: list = [None] * len(self.used)
        for j, k in self.slot.items():
            p = self.members[k](self._member_input(x, j)).softmax(dim=1)
            if self.calibrated and j < self.n_calibrated:  # as combiners.temperature_scale
                p = (torch.log(p.clamp(PROBA_FLOOR / 100, 1.0)) / self.temperatures[j]).softmax(dim=1)
            probs[j] = p
        ref = next(p for p in probs if p is not None)
        probs = [torch.zeros_like(ref) if p is None else p for p in probs]
        return self.head(torch.stack(probs))  # (M, N, C) -> (N, C)


def graph_strategy(ens, strategy: str | None) -> str:
    """The strategy ``ensemble.onnx`` holds: the one asked for, else the run's if it fits."""
    comb = ens.combiner_
    allowed = graph_strategies()
    if strategy is None:
        strategy = comb.strategy if comb.strategy in allowed else "soft"
        if strategy != comb.strategy:
            log.warning("the run's strategy %s has no one-graph form; ensemble.onnx holds soft voting", comb.strategy)
    if strategy not in allowed:
        raise ExportRefused(
            f"`--strategy` for the ensemble graph must be one of {', '.join(allowed)}; got {strategy!r}"
        )
    comb.get(strategy)  # fitted in this run, or the one line that says so
    return strategy


def ensemble_graph(ens, strategy: str) -> EnsembleGraph:
    """The fitted ensemble as one module: members, calibration and ``strategy``'s graph form."""
    from members.export import cpu_copy

    comb = ens.combiner_
    head = comb.get(strategy).graph_head()
    rows = [fm for fm, _ in ens.pool_rows()][: len(comb.names(strategy))]  # members [+ pool candidates]
    used = comb.uses(strategy)[: len(rows)]
    check_one_view(strategy, [fm for fm, u in zip(rows, used) if u])
    return EnsembleGraph(
        [cpu_copy(fm.model) if u else nn.Identity() for fm, u in zip(rows, used)],
        [fm.inputs for fm in rows],
        head,
        comb.temperatures,
        used,
    ).eval()


def check_one_view(strategy: str, rows: Sequence) -> None:
    """Refuse a graph whose members (or pool candidates) see images under different views
    (or re-renders, ``render:``):
    its one input would feed all of them the first one's view, and its answers would differ
    from ``effens predict``'s."""

    def look(fm) -> str:
        render = getattr(fm.inputs, "render", None)
        return fm.inputs.view + (f" rendered at {render}" if render else "")

    if len({look(fm) for fm in rows}) > 1:
        seen = ", ".join(f"{fm.name}: {look(fm)}" for fm in rows)
        raise ExportRefused(
            f"strategy {strategy} weighs members or pool candidates seen under different views "
            f"({seen}); one graph takes one input view: use `effens predict` (each its own view), "
            f"train the members under one view, or refit greedy with `combiner.greedy.pool=false`"
        )


# ---------------------------------------------------------------- files
def preprocessing(inputs, classes: Sequence[str]) -> dict:
    """What a server must do to an image before the graph (effens' eval view)."""
    from members.views import describe_view

    return {
        "input": {
            "name": "image",
            "layout": "NCHW",
            "dtype": "float32",
            "shape": ["batch", 3, inputs.image_size, inputs.image_size],
        },
        "output": {"name": "proba", "shape": ["batch", len(classes)], "meaning": "class probabilities"},
        "view": inputs.view,
        "render": getattr(inputs, "render", None),
        "steps": [
            "decode to RGB (EXIF orientation applied)",
            *describe_view(inputs),
            "scale to [0, 1], subtract mean, divide by std (per channel, RGB)",
        ],
        "image_size": inputs.image_size,
        "resize_size": inputs.resize_size,
        "crop_pct": inputs.crop_pct,
        "interpolation": inputs.interpolation,
        "mean": list(inputs.mean),
        "std": list(inputs.std),
        "classes": list(classes),
    }


def _versions() -> dict:
    from members.export import exporter_versions

    return {"effens": __version__, **exporter_versions()}


def export_run(run_dir: str, fmt: str, out: str, strategy: str | None = None) -> dict:
    """Write every member and the ensemble graph to ``out`` as ONNX or OpenVINO IR."""
    from members.export import export_member_onnx, export_onnx_bytes

    from .runfolder import load_run

    if fmt not in FORMATS:
        raise ExportRefused(f"`--format` must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out_dir = Path(out)
    _check_out_dir(out_dir)
    if fmt == "mlflow":
        return _export_mlflow(run_dir, out_dir, strategy)
    ens = load_run(run_dir)
    strategy = graph_strategy(ens, strategy)
    graph = ensemble_graph(ens, strategy)  # a graph that cannot be made is refused before any member is exported
    files: dict[str, bytes] = {}
    docs: dict[str, dict] = {}
    temperatures = ens.combiner_.temperatures or [None] * len(ens.members_)
    for fm, temperature in zip(ens.members_, temperatures):
        files[f"{fm.name}.onnx"] = export_member_onnx(fm.model, fm.inputs.image_size, fm.name)
        docs[f"{fm.name}.json"] = {
            "member": fm.name,
            "architecture": fm.meta.get("architecture"),
            "calibration_temperature": temperature,
            **preprocessing(fm.inputs, ens.classes_),
        }
    big = ens.members_[int(np.argmax([fm.inputs.image_size for fm in ens.members_]))]
    files["ensemble.onnx"] = export_onnx_bytes(
        graph, torch.zeros(2, 3, graph.input_size, graph.input_size), "the ensemble graph", ["image"], ["proba"]
    )
    comb = ens.combiner_
    names, used = comb.names(strategy), graph.used
    docs["ensemble.json"] = {
        "strategy": strategy,
        "members": [fm.name for fm in ens.members_],
        **(
            {
                "pool": names,
                "pool_used": [n for n, u in zip(names, used) if u],
                "pool_note": "the pool candidates greedy weighs run inside the graph like the members (not calibrated)",
            }
            if comb.pooled(strategy)
            else {}
        ),
        "weights": _head_weights(graph.head, len(names)),
        "temperatures": comb.temperatures,
        "member_input_sizes": graph.sizes,
        "note": (
            "members whose input size differs from the graph's see the input bilinearly resized "
            "inside the graph (an approximation of their own centre crop); for exact member "
            "inputs run the member files"
        ),
        **preprocessing(big.inputs, ens.classes_),
    }
    if fmt == "openvino":
        files = _to_openvino(files)
    written = {}
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
        written[name] = sha256_file(out_dir / name)
    for name, doc in docs.items():
        atomic_write_json(out_dir / name, doc)
        written[name] = sha256_file(out_dir / name)
    manifest = {
        "format": fmt,
        "run": str(Path(run_dir).resolve()),
        "strategy": strategy,
        "classes": ens.classes_,
        "files": written,
        **_versions(),
    }
    atomic_write_json(out_dir / "export.json", manifest)
    return manifest


def _export_mlflow(run_dir: str, out_dir: Path, strategy: str | None) -> dict:
    """The run as an MLflow pyfunc model folder (:mod:`ensemble.serving.mlflow_model`); an earlier
    export there is replaced only once the new one is complete."""

    try:
        import mlflow  # noqa: F401

        from .serving.mlflow_model import save_mlflow_model
    except ImportError:
        raise ExportRefused("format mlflow needs MLflow: pip install 'effens[track]'") from None
    if strategy is not None:
        raise ExportRefused(
            "--strategy is not for format mlflow: the model takes the strategy per call "
            "(params={'strategy': ...}); the run's is the default"
        )
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        made = Path(tmp) / "model"
        about = save_mlflow_model(run_dir, made)
        files = {p.relative_to(made).as_posix(): sha256_file(p) for p in sorted(made.rglob("*")) if p.is_file()}
        manifest = {
            "format": "mlflow",
            "run": str(Path(run_dir).resolve()),
            "strategy": about["strategy"],
            "classes": about["classes"],
            "files": files,
            **_versions(),
        }
        atomic_write_json(made / "export.json", manifest)
        if out_dir.exists():
            old = Path(tmp) / "old"
            out_dir.rename(old)
        made.rename(out_dir)
    return manifest


def _check_replaceable(out_dir: Path) -> None:
    """An MLflow export replaces its whole folder: only a new or empty one, or an earlier
    export holding nothing but its own files (and what loading it wrote: caches, bytecode)."""
    if out_dir.is_symlink():
        raise ExportRefused(f"{out_dir}: is a symbolic link; name a real folder for --out")
    if not out_dir.exists():
        return
    try:
        listed = (
            set(read_json(out_dir / "export.json").get("files", {})) if (out_dir / "export.json").is_file() else set()
        )
    except (ValueError, OSError, AttributeError, TypeError):
        listed = set()
    for p in sorted(out_dir.rglob("*")):
        rel = p.relative_to(out_dir).as_posix()
        if p.is_dir() and not p.is_symlink():
            continue
        if rel == "export.json" or rel in listed or rel.startswith("artifacts/run/cache/") or "/__pycache__/" in rel:
            continue
        raise ExportRefused(
            f"{p}: not written by effens export; choose a new or empty --out (an MLflow export "
            f"replaces its whole folder, and effens never removes files it did not write)"
        )


def _head_weights(head: nn.Module, n_members: int) -> list[float]:
    """The members' weights in the graph's vote (equal when its head keeps none)."""
    w = getattr(head, "weights", None)
    return w.tolist() if isinstance(w, torch.Tensor) else [1.0 / n_members] * n_members


def _check_out_dir(out_dir: Path) -> None:
    """Write only into a new or empty folder, or over an earlier export's own files (those
    its ``export.json`` lists)."""
    manifest = out_dir / "export.json"
    try:
        adopt = [*read_json(manifest).get("files", {}), "export.json"] if manifest.is_file() else []
    except (ValueError, OSError, AttributeError, TypeError):
        adopt = []
    try:
        refuse_foreign(out_dir, "export", "effens export", adopt=adopt)
    except RunError as exc:
        raise ExportRefused(str(exc)) from None


def _to_openvino(files: dict[str, bytes]) -> dict[str, bytes]:
    """ONNX bytes -> OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) for each graph."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportRefused("format openvino needs OpenVINO: pip install 'effens[openvino]'") from None
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            src = Path(tmp) / name
            src.write_bytes(data)
            xml = src.with_suffix(".xml")
            ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)
            out[xml.name] = xml.read_bytes()
            out[xml.with_suffix(".bin").name] = xml.with_suffix(".bin").read_bytes()
    return out
