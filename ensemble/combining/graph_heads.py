"""The votes as torch modules, for the one graph of ``effens export``.

A strategy's :meth:`~ensemble.combining.strategies.Strategy.graph_head` returns one of these (or its
own module): stacked member probabilities (members, samples, classes) in, ensemble
probabilities (samples, classes) out, computed as the strategy's numpy ``apply`` does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .votes import PROBA_FLOOR


class WeightedMean(nn.Module):
    """Mean of the member probabilities with these weights (None: equal), as ``soft_vote``."""

    def __init__(self, weights: Sequence[float] | None) -> None:
        super().__init__()
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.register_buffer("weights", None if w is None else torch.tensor(w / w.sum(), dtype=torch.float32))

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return stacked.mean(dim=0)
        return (self.weights.view(-1, 1, 1) * stacked).sum(dim=0)


class LogisticHead(nn.Module):
    """Multinomial logistic regression on the members' log-probabilities, as ``stacking_proba``."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("coef", torch.tensor(np.asarray(coef), dtype=torch.float32))
        self.register_buffer("intercept", torch.tensor(np.asarray(intercept), dtype=torch.float32))

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        feats = torch.log(stacked.clamp(PROBA_FLOOR, 1.0)).permute(1, 0, 2).flatten(1)
        return (feats @ self.coef.T + self.intercept).softmax(dim=1)
