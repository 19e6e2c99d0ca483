"""Epoch checkpoints of one member's training, without pickles.

Tensors (model, best-epoch model, optimiser moments, torch RNG states) go to
``checkpoint.safetensors``; everything else (epoch, history, optimiser hyper-parameters,
scheduler and scaler state, the SHA-256 of the tensor file) to ``checkpoint.json``,
written last as the commit point. Resuming from it continues exactly where the
uninterrupted run would have been. Python's and NumPy's global generators are not
saved: augmentation draws from per-item streams (:mod:`members.streams`), not from them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class CheckpointStore:
    """The checkpoint of one member in ``folder``, valid only for ``fingerprint``."""

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @property
    def tensors_path(self) -> Path:
        return self.folder / "checkpoint.safetensors"

    @property
    def json_path(self) -> Path:
        return self.folder / "checkpoint.json"

    def save(self, *, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler, scaler, generator: torch.Generator, best_state: dict, best_key: list,
             best_epoch: int, history: list[dict], precision: str = "fp32") -> None:
        from ensemble.run import atomic_write_json, atomic_write_safetensors, sha256_file

        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
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
        atomic_write_safetensors(self.tensors_path, tensors)
        doc = {
            "fingerprint": self.fingerprint, "epoch": epoch, "best_key": list(best_key),
            "best_epoch": best_epoch, "history": history, "precision": precision,
            "optimizer_param_groups": opt["param_groups"],
            "optimizer_state_keys": {str(i): sorted(s) for i, s in opt["state"].items()},
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            "scaler": scaler.state_dict(),
            "sha256": sha256_file(self.tensors_path),
        }
        atomic_write_json(self.json_path, doc)

    def load(self) -> dict[str, Any] | None:
        """The checkpoint if it exists, is intact and belongs to this fingerprint."""
        from safetensors.torch import load_file

        from ensemble.run import read_json, sha256_file

        if not self.json_path.is_file() or not self.tensors_path.is_file():
            return None
        doc = read_json(self.json_path)
        if doc.get("fingerprint") != self.fingerprint:
            log.warning("%s belongs to other settings or data: starting this member afresh", self.json_path)
            return None
        if sha256_file(self.tensors_path) != doc.get("sha256"):
            log.warning("%s does not match its recorded hash: starting this member afresh",
                        self.tensors_path)
            return None
        doc["tensors"] = load_file(str(self.tensors_path), device="cpu")
        return doc

    def restore(self, doc: dict, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler, scaler, generator: torch.Generator) -> dict:
        """Put every saved state back; returns the best-epoch state dict."""
        t = doc["tensors"]
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        device = next(model.parameters()).device
        state = {int(i): {name: t[f"optim.{i}.{name}"].to(device) if name != "step" else t[f"optim.{i}.{name}"]
                          for name in names}
                 for i, names in doc["optimizer_state_keys"].items()}
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

    def clear(self) -> None:
        for p in (self.json_path, self.tensors_path):
            p.unlink(missing_ok=True)
