"""One member's training state as tensors + JSON, and back (no pickles, no file I/O).

:func:`pack_state` turns the model, the best-epoch model, the optimiser moments and the
torch RNG states into named tensors, and everything else (epoch, history, optimiser
hyper-parameters, scheduler and scaler state) into a JSON-able document;
:func:`restore_state` puts them back so training continues exactly where the
uninterrupted run would have been. Where they are stored is the caller's business: the
trainer takes any :class:`Checkpointer` (effens' run folder writes
``checkpoint.safetensors`` + ``checkpoint.json``). Python's and NumPy's global generators
are not saved: augmentation draws from per-item streams (:mod:`members.streams`).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Checkpointer(Protocol):
    """Where a member's epoch checkpoints live."""

    where: str

    def save(self, tensors: dict[str, torch.Tensor], doc: dict) -> None: ...

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None: ...


def pack_state(
    *,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    generator: torch.Generator,
    best_state: dict,
    best_key: list,
    best_epoch: int,
    history: list[dict],
    precision: str = "fp32",
    averages: tuple[dict[str, torch.Tensor], dict] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, document) of the training state after ``epoch``; ``averages`` are the
    weight averages' tensors and document (:class:`members.averaging.WeightAverages`)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if averages is not None:
        tensors.update({f"avg.{k}": v for k, v in averages[0].items()})
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.loader"] = generator.get_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    doc = {
        "epoch": epoch,
        "best_key": list(best_key),
        "best_epoch": best_epoch,
        "history": history,
        "precision": precision,
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_state_keys": {str(i): sorted(s) for i, s in opt["state"].items()},
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "scaler": scaler.state_dict(),
    }
    if averages is not None:
        doc["averages"] = averages[1]
    return tensors, doc


def restore_state(
    tensors: dict[str, torch.Tensor],
    doc: dict,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    generator: torch.Generator,
) -> dict:
    """Put every saved state back; returns the best-epoch state dict (the weight averages
    are read by the caller: :func:`saved_averages`)."""
    t = tensors
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    device = next(model.parameters()).device
    state = {
        int(i): {
            name: t[f"optim.{i}.{name}"].to(device) if name != "step" else t[f"optim.{i}.{name}"] for name in names
        }
        for i, names in doc["optimizer_state_keys"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": doc["optimizer_param_groups"]})
    scheduler.load_state_dict(dict(doc["scheduler"], lr_lambdas=[None] * len(optimizer.param_groups)))
    if doc["scaler"]:
        scaler.load_state_dict(doc["scaler"])
    torch.set_rng_state(t["rng.torch"])
    generator.set_state(t["rng.loader"])
    if torch.cuda.is_available():
        cuda_states = [t[k] for k in sorted(t) if k.startswith("rng.cuda.")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    return {k[5:]: v for k, v in t.items() if k.startswith("best.")}


def saved_averages(tensors: dict[str, torch.Tensor], doc: dict) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The weight averages' tensors and document saved by :func:`pack_state`."""
    return {k[4:]: v for k, v in tensors.items() if k.startswith("avg.")}, doc.get("averages")
