"""Combiner strategies: a registry, one class per strategy, and the fitted combiner.

A strategy turns member probabilities (members, samples, classes) into ensemble
predictions and probabilities. Each one is a :class:`Strategy` subclass registered with
``@register``; everything else (the config's allowed values, the CLI's choices, OOB
scoring, the report, the ensemble graph of ``effens export``) reads this registry, so a
new strategy is one class here (or in your own module) plus its test::

    @register
    class MostConfident(Strategy):      # trust the surest member on each image
        name = "most-confident"

        def apply(self, proba):
            best = proba.max(axis=2).argmax(axis=0)          # (samples,)
            p = proba[best, np.arange(proba.shape[1])]
            return p.argmax(axis=1), p

A strategy that learns something says where from (``source``: ``val`` or ``oob``) and
overrides :meth:`Strategy.fit`; its fitted state ends in an underscore and is saved by
:meth:`Strategy.state` / restored by :meth:`Strategy.from_state` (JSON + ``.npy``).
This module is numpy-only (scipy / scikit-learn load only when fitting), so the command
line can read the registry without loading torch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from members.registry import Registry, RegistryError
from members.schema import ConfigError, build, interval, to_dict
from members.schema import field as setting

from ..files import RunError
from .votes import (
    fit_stacking,
    fit_temperature,
    fit_weights,
    greedy_selection,
    hard_vote,
    impute_missing,
    masked_vote,
    oob_matrix,
    soft_vote,
    stacking_proba,
    temperature_scale,
    vote_shares,
)

log = logging.getLogger(__name__)

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy")


def register(cls: type["Strategy"]) -> type["Strategy"]:
    """Class decorator: make a strategy available by its ``name`` (a taken name is refused,
    and so is a ``settings_schema`` that no config could use: see :func:`check_settings_schema`)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name`")
    check_settings_schema(cls)
    return STRATEGIES.add(cls.name, cls)


def check_settings_schema(cls: type["Strategy"]) -> None:
    """A strategy's ``settings_schema`` is None or a dataclass whose defaults pass its own
    checks as a config's values do (a NaN default is refused when the strategy registers,
    before any command writes a file)."""
    schema = cls.settings_schema
    if schema is None:
        return
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise RegistryError(f"strategy {cls.name!r}: `settings_schema` must be a dataclass or None; got {schema!r}")
    try:
        defaults = to_dict(schema())
    except TypeError:
        return  # settings without defaults: every config gives them, and they are checked there
    try:
        build(schema, defaults, f"combiner.{cls.name}")
    except ConfigError as exc:
        raise RegistryError(f"strategy {cls.name!r}: its default settings are refused: {exc}") from None


def strategy_names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


def graph_strategies() -> tuple[str, ...]:
    """Registered strategies with a one-graph form (:meth:`Strategy.graph_head`) for ``effens export``."""
    return tuple(n for n, cls in STRATEGIES.items() if cls.graph_head is not Strategy.graph_head)


def strategy_settings() -> dict[str, type]:
    """Strategy name -> the dataclass of its ``combiner.<name>`` section (strategies with settings)."""
    return {n: cls.settings_schema for n, cls in STRATEGIES.items() if cls.settings_schema is not None}


def strategy_class(name: str) -> type["Strategy"]:
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {', '.join(STRATEGIES)}; got {name!r}")
    return STRATEGIES[name]


@dataclasses.dataclass
class FitData:
    """What strategies may be fitted on: validation probabilities, and OOB probabilities
    with the ``available`` (members, samples) mask of members that left each image out."""

    val_proba: np.ndarray
    val_y: np.ndarray
    oob_proba: np.ndarray
    oob_y: np.ndarray
    oob_available: np.ndarray

    @classmethod
    def from_oob_lists(
        cls,
        val_proba: np.ndarray,
        val_y: np.ndarray,
        oob_indices: Sequence[np.ndarray],
        oob_proba: Sequence[np.ndarray],
        y_train: np.ndarray,
    ) -> "FitData":
        full, available = oob_matrix(list(oob_indices), list(oob_proba), len(y_train), val_proba.shape[2])
        return cls(np.asarray(val_proba, dtype=np.float64), np.asarray(val_y), full, np.asarray(y_train), available)

    @property
    def has_oob(self) -> bool:
        return bool(self.oob_available.any())

    def head(self, n: int) -> "FitData":
        """The first ``n`` rows (the members, without the pool's candidates)."""
        if n >= len(self.val_proba):
            return self
        return dataclasses.replace(
            self, val_proba=self.val_proba[:n], oob_proba=self.oob_proba[:n], oob_available=self.oob_available[:n]
        )

    def source(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
        """(proba, y, available or None, the source actually used) for ``val`` or ``oob``."""
        if (name == "oob" or not len(self.val_y)) and self.has_oob:
            return self.oob_proba, self.oob_y, self.oob_available, "oob"
        if not len(self.val_y):
            raise ValueError("no held-out images: val is empty and no member left a training image out")
        if name == "oob":
            log.warning(
                "no member left any training image out (ratio 1 without replacement): "
                "fitting the combiner on validation probabilities instead"
            )
        return self.val_proba, self.val_y, None, "val"


class Strategy:
    """One way to combine members. Subclasses set ``name`` and override :meth:`apply`.

    Hooks (all optional but ``apply``): :meth:`fit` learns from probabilities;
    :meth:`apply_oob` combines only the members that left each image out (default:
    :meth:`vote` over them, weights renormalised); :meth:`state` / :meth:`from_state` persist fitted state;
    :meth:`summary` and :meth:`describe` feed the report; :meth:`graph_head` gives the
    vote as a torch module for the one graph of ``effens export``. Its own settings:
    ``settings_schema``, read back as ``self.settings.<name>``.
    """

    name: ClassVar[str] = ""
    #: False when :meth:`apply` returns vote shares rather than probabilities
    probabilities: ClassVar[bool] = True
    #: the ``combiner`` setting naming where this strategy is fitted (None: nothing to fit)
    source_key: ClassVar[str | None] = None
    #: the dataclass (fields made with :func:`ensemble.schema.field`) of this strategy's own
    #: ``combiner.<name>`` section: validated, documented and saved like every other setting
    settings_schema: ClassVar[type | None] = None
    #: True: fitted and applied on the whole pool (members, then their candidates,
    #: :mod:`ensemble.combining.pool`) rather than on the members alone
    pool: bool = False
    #: where a fitted strategy's data came from (``val``, ``oob``, ``config``), once fitted
    source_: str | None

    def __init__(self, settings: Any = None, seed: int = 0) -> None:
        self.settings = settings
        self.seed = seed

    # ---- fitting
    @property
    def source(self) -> str | None:
        """``val`` or ``oob``: where :meth:`fit` takes its data from (None: not fitted)."""
        return None if self.source_key is None else _get(self.settings, self.source_key)

    def fit(
        self, proba: np.ndarray, y: np.ndarray, available: np.ndarray | None = None, n_classes: int | None = None
    ) -> "Strategy":
        """Learn from member probabilities; ``available`` masks members per image (OOB)."""
        return self

    # ---- applying
    def apply(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, ensemble probabilities) for (members, samples, classes)."""
        raise NotImplementedError

    def weights(self) -> np.ndarray | None:
        """Per-member weights of the vote (None: equal), used by the default :meth:`apply_oob`."""
        return None

    def n_params(self) -> int:
        """Number of values :meth:`fit` learned (0: nothing); `strategy: auto` prefers fewer."""
        return 0

    def uses(self, n_members: int) -> np.ndarray:
        """Which members :meth:`apply` reads (bool per member); inference may skip the others."""
        w = self.weights()
        return np.ones(n_members, dtype=bool) if w is None else np.asarray(w) > 0

    def vote(self, proba: np.ndarray, weights: np.ndarray | Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`apply` with these member weights (default: the weights do not matter)."""
        return self.apply(proba)

    def apply_oob(self, proba: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(covered indices, predictions, probabilities) voting only with available members."""
        return masked_vote(proba, available, self.vote, self.weights())

    # ---- files and report
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON-able fitted state and named arrays (saved as ``<name>_<key>.npy``)."""
        return {}, {}

    @classmethod
    def from_state(cls, doc: dict, arrays: dict[str, np.ndarray]) -> "Strategy":
        obj = cls()
        obj._load(doc, arrays)
        return obj

    def _load(self, doc: dict, arrays: dict[str, np.ndarray]) -> None:
        pass

    def summary(self, member_names: Sequence[str]) -> dict:
        """Keys for ``metrics.json``'s ``combiner`` section."""
        return {}

    def describe(self, member_names: Sequence[str]) -> str:
        """One sentence for the report (empty: nothing to say)."""
        return ""

    def graph_head(self):
        """The vote as a ``torch.nn.Module`` from stacked member probabilities (members,
        samples, classes) to ensemble probabilities (samples, classes), for ``ensemble.onnx``;
        not overridden: no one-graph form. Import torch inside (this module stays numpy-only)."""
        return None


def _get(settings: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def _config_weights(settings: Any) -> list[float] | None:
    w = getattr(settings, "weights", None)
    return list(map(float, w)) if isinstance(w, list) else None


class _Vote(Strategy):
    """Shared by the votes: weights given in the config (None = equal)."""

    def __init__(self, settings: Any = None, seed: int = 0) -> None:
        super().__init__(settings, seed)
        self.weights_: list[float] | None = _config_weights(settings)

    def weights(self) -> np.ndarray | None:
        return None if self.weights_ is None else np.asarray(self.weights_, dtype=np.float64)

    def apply(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.vote(proba, self.weights_)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"weights": self.weights_}, {}

    def _load(self, doc: dict, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = doc.get("weights")

    def summary(self, member_names: Sequence[str]) -> dict:
        return {"vote_weights": self.weights_}


@register
class HardVote(_Vote):
    """Majority vote (weighted by the config's weights); ties go to the higher mean probability."""

    name = "hard"
    probabilities = False

    def vote(self, proba: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray]:
        return hard_vote(proba, weights), vote_shares(proba, weights)


@register
class SoftVote(_Vote):
    """Mean of the member probabilities (weighted by the config's weights)."""

    name = "soft"

    def vote(self, proba: np.ndarray, weights) -> tuple[np.ndarray, np.ndarray]:
        p = soft_vote(proba, weights)
        return p.argmax(axis=1), p

    def graph_head(self):
        from .graph_heads import WeightedMean

        return WeightedMean(self.weights())


@register
class WeightedVote(SoftVote):
    """Soft vote with weights given in the config or learned (minimum log loss on ``weights_source``)."""

    name = "weighted"
    source_key = "weights_source"

    def __init__(self, settings: Any = None, seed: int = 0) -> None:
        super().__init__(settings, seed)
        self.source_: str | None = None

    def fit(
        self, proba: np.ndarray, y: np.ndarray, available: np.ndarray | None = None, n_classes: int | None = None
    ) -> "Strategy":
        w = _config_weights(self.settings)
        if w is not None:
            self.weights_, self.source_ = list(map(float, np.asarray(w) / np.sum(w))), "config"
        else:
            self.weights_ = fit_weights(proba, y, available).tolist()
        return self

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {"weights": self.weights_, "source": self.source_}, {}

    def _load(self, doc: dict, arrays: dict[str, np.ndarray]) -> None:
        self.weights_, self.source_ = doc["weights"], doc.get("source")

    def n_params(self) -> int:
        return 0 if self.source_ == "config" else max(len(self.weights_ or []) - 1, 0)

    def summary(self, member_names: Sequence[str]) -> dict:
        return {"learned_weights": dict(zip(member_names, self.weights_ or [])), "weights_source": self.source_}

    def describe(self, member_names: Sequence[str]) -> str:
        weights = ", ".join(f"{k} {v:.3f}" for k, v in zip(member_names, self.weights_ or []))
        return f"Learned weights ({self.source_}): {weights}."


@dataclasses.dataclass
class StackingSettings:
    source: Literal["oob", "val"] = setting(
        "oob", doc="meta-learner fitted on out-of-bag or validation member probabilities"
    )
    C: float = setting(
        1.0, check=interval(0, None, low_open=True), doc="inverse regularisation strength of the logistic meta-learner"
    )


@register
class Stacking(Strategy):
    """Multinomial logistic regression on the members' log-probabilities (fitted on
    ``stacking.source``); for OOB, members that saw an image are imputed with the mean of
    those that did not."""

    name = "stacking"
    source_key = "stacking.source"
    settings_schema = StackingSettings

    def __init__(self, settings: Any = None, seed: int = 0) -> None:
        super().__init__(settings, seed)
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.source_ = None
        self.C_: float | None = None if settings is None else float(settings.stacking.C)

    def fit(
        self, proba: np.ndarray, y: np.ndarray, available: np.ndarray | None = None, n_classes: int | None = None
    ) -> "Strategy":
        self.coef_, self.intercept_ = fit_stacking(
            proba, y, n_classes or proba.shape[2], 1.0 if self.C_ is None else self.C_, available, self.seed
        )
        return self

    def apply(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = stacking_proba(proba, *self._head())
        return p.argmax(axis=1), p

    def apply_oob(self, proba: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        covered = np.flatnonzero(np.asarray(available).any(axis=0))
        pred, p = self.apply(impute_missing(proba[:, covered], available[:, covered]))
        return covered, pred, p

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        doc = {
            "source": self.source_,
            "C": self.C_,
            "features": "log(clip(p, 1e-6, 1)) of members in member_names order, classes in classes "
            "order; proba = softmax(X @ coef.T + intercept)",
        }
        coef, intercept = self._head()
        return doc, {"coef": coef, "intercept": intercept}

    def _load(self, doc: dict, arrays: dict[str, np.ndarray]) -> None:
        self.source_, self.C_ = doc.get("source"), doc.get("C")
        self.coef_, self.intercept_ = arrays["coef"], arrays["intercept"]

    def summary(self, member_names: Sequence[str]) -> dict:
        return {"stacking_source": self.source_, "stacking_C": self.C_}

    def n_params(self) -> int:
        return 0 if self.coef_ is None or self.intercept_ is None else int(self.coef_.size + self.intercept_.size)

    def describe(self, member_names: Sequence[str]) -> str:
        return f"Stacking meta-learner fitted on {self.source_}."

    def graph_head(self):
        from .graph_heads import LogisticHead

        return LogisticHead(*self._head())

    def _head(self) -> tuple[np.ndarray, np.ndarray]:
        if self.coef_ is None or self.intercept_ is None:
            raise RuntimeError("the stacking strategy is used before it was fitted or loaded")
        return self.coef_, self.intercept_


@dataclasses.dataclass
class GreedySettings:
    source: Literal["oob", "val"] = setting("oob", doc="probabilities greedy selection is fitted on")
    iterations: int = setting(
        25, check=interval(1, 1000), doc="selection steps (with replacement); the best prefix of the path is kept"
    )
    metric: Literal["log_loss", "brier", "macro_f1"] = setting(
        "log_loss", doc="what each step minimises (macro_f1: maximises)"
    )
    bags: int = setting(
        0,
        check=interval(0, 1000),
        doc="repeat on this many random subsets of the pool and average the weights (0: off)",
    )
    bag_fraction: float = setting(0.5, check=interval(0, 1, low_open=True), doc="share of the candidates in each bag")
    pool: bool = setting(
        True,
        doc="select over the members' pool candidates too (`members.N.candidates`; without any, the members alone)",
    )


@register
class GreedySelection(SoftVote):
    """Greedy ensemble selection (Caruana et al., 2004): members added one at a time, with
    replacement, each time the one that most lowers ``greedy.metric`` on ``greedy.source``
    (OOB: each image scored only by the members that left it out); the weights are the
    selection counts of the best prefix, optionally averaged over ``greedy.bags`` bags."""

    name = "greedy"
    source_key = "greedy.source"
    settings_schema = GreedySettings

    def __init__(self, settings: Any = None, seed: int = 0) -> None:
        super().__init__(settings, seed)
        self.weights_: list[float] | None = None
        self.source_ = None
        self.path_: list[dict] = []
        g = getattr(settings, "greedy", None)
        self.params_ = (
            None
            if g is None
            else {
                "iterations": int(g.iterations),
                "metric": g.metric,
                "bags": int(g.bags),
                "bag_fraction": float(g.bag_fraction),
            }
        )
        self.pool = bool(getattr(g, "pool", False))

    def fit(
        self, proba: np.ndarray, y: np.ndarray, available: np.ndarray | None = None, n_classes: int | None = None
    ) -> "Strategy":
        p = self.params_ or {}
        w, self.path_ = greedy_selection(
            proba,
            y,
            available,
            p.get("iterations", 25),
            p.get("metric", "log_loss"),
            p.get("bags", 0),
            p.get("bag_fraction", 0.5),
            self.seed,
        )
        self.weights_ = w.tolist()
        return self

    def n_params(self) -> int:
        return max(int(np.count_nonzero(self.weights_ or [])) - 1, 0)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        return {
            "weights": self.weights_,
            "source": self.source_,
            "params": self.params_,
            "path": self.path_,
            "pool": self.pool,
        }, {}

    def _load(self, doc: dict, arrays: dict[str, np.ndarray]) -> None:
        self.weights_, self.source_ = doc["weights"], doc.get("source")
        self.params_, self.path_ = doc.get("params"), doc.get("path", [])
        self.pool = bool(doc.get("pool", False))

    def summary(self, member_names: Sequence[str]) -> dict:
        return {
            "greedy_weights": dict(zip(member_names, self.weights_ or [])),
            "greedy_source": self.source_,
            "greedy_path": [dict(s, added=member_names[s["added"]]) for s in self.path_],
        }

    def describe(self, member_names: Sequence[str]) -> str:
        weights = ", ".join(f"{k} {v:.3f}" for k, v in zip(member_names, self.weights_ or []))
        steps = " -> ".join(f"{member_names[s['added']]} ({s['loss']:.4f})" for s in self.path_[:12])
        more = f" ... ({len(self.path_)} steps)" if len(self.path_) > 12 else ""
        metric = (self.params_ or {}).get("metric", "log_loss")
        return f"Greedy selection on {self.source_} ({metric}): weights {weights}; path {steps}{more}."


# ---------------------------------------------------------------- the fitted combiner
@dataclasses.dataclass
class Combiner:
    """Every fitted strategy of a run, its default, and the optional per-member temperatures."""

    strategy: str
    classes: list[str]
    member_names: list[str]
    strategies: dict[str, Strategy]
    temperatures: list[float] | None = None
    choice: dict | None = None  # with `strategy: auto`: how the default was chosen
    candidate_names: list[str] = dataclasses.field(default_factory=list)  # the pool's rows after the members

    def calibrate(self, member_proba: np.ndarray) -> np.ndarray:
        """Apply per-member temperatures (identity when not calibrated; pool candidates are not calibrated)."""
        p = np.asarray(member_proba, dtype=np.float64)
        if not self.temperatures:
            return p
        scaled = [temperature_scale(q, t) for q, t in zip(p, self.temperatures)]
        return np.stack(scaled + list(p[len(scaled) :]))

    def calibrate_row(self, j: int, proba: np.ndarray) -> np.ndarray:
        """Row ``j``'s (samples, classes) probabilities with its temperature (candidates: none)."""
        p = np.asarray(proba, dtype=np.float64)
        if not self.temperatures or j >= len(self.temperatures) or not len(p):
            return p
        return temperature_scale(p, self.temperatures[j])

    # ---- the pool: members first, then their candidates (ensemble.combining.pool)
    def pooled(self, strategy: str | None = None) -> bool:
        """Whether ``strategy`` reads the pool's candidates (a pool strategy in a run that has some)."""
        return bool(self.candidate_names) and self.get(strategy).pool

    def names(self, strategy: str | None = None) -> list[str]:
        """The rows ``strategy`` combines: the members, and the candidates for a pool strategy."""
        return self.member_names + (self.candidate_names if self.pooled(strategy) else [])

    def rows(self, arr: np.ndarray, strategy: str | None = None) -> np.ndarray:
        """``arr``'s rows (members [+ candidates] first) that ``strategy`` combines."""
        n = len(self.names(strategy))
        if len(arr) < n:
            raise RunError(
                f"strategy {strategy or self.strategy!r} combines {n} members and pool candidates "
                f"({', '.join(self.names(strategy))}); got probabilities of {len(arr)}"
            )
        return arr[:n]

    def uses(self, strategy: str | None = None) -> np.ndarray:
        """Which pool rows (members, then candidates) ``strategy`` reads; inference may skip the others."""
        n_pool = len(self.member_names) + len(self.candidate_names)
        used = self.get(strategy).uses(len(self.names(strategy)))
        return np.concatenate([used, np.zeros(n_pool - len(used), dtype=bool)])

    def available(self) -> list[str]:
        return list(self.strategies)

    def get(self, strategy: str | None = None) -> Strategy:
        name = strategy or self.strategy
        if name not in self.strategies:
            from members.registry import close_spelling

            hint = close_spelling(name, self.strategies)
            fix = f"did you mean {hint!r}?" if hint else "run `effens fit-combiner` to fit it"
            raise RunError(f"strategy {name!r} is not available in this run ({', '.join(self.strategies)}); {fix}")
        return self.strategies[name]

    def apply(
        self, member_proba: np.ndarray, strategy: str | None = None, calibrated: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, probabilities) of ``strategy`` (default: the run's)."""
        p = member_proba if calibrated else self.calibrate(member_proba)
        return self.get(strategy).apply(self.rows(p, strategy))

    def apply_oob(
        self, full: np.ndarray, available: np.ndarray, strategy: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(covered indices, predictions, probabilities) of ``strategy``'s OOB vote (see :meth:`Strategy.apply_oob`)."""
        return self.get(strategy).apply_oob(self.rows(full, strategy), self.rows(available, strategy))

    def summary(self) -> dict:
        """``metrics.json``'s ``combiner`` section."""
        out: dict = {}
        for name, s in self.strategies.items():
            out.update(s.summary(self.names(name)))
        out["temperatures"] = dict(zip(self.member_names, self.temperatures)) if self.temperatures else None
        out["notes"] = [t for t in (s.describe(self.names(n)) for n, s in self.strategies.items()) if t]
        out["candidates"] = self.candidate_names
        out["fitted_on_val"] = sorted(n for n, s in self.strategies.items() if getattr(s, "source_", None) == "val")
        out["fitted_on_oob"] = sorted(n for n, s in self.strategies.items() if getattr(s, "source_", None) == "oob")
        out["choice"] = self.choice
        return out

    # files: see ensemble.runfolder (the only code that writes them)
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        doc: dict = {
            "format": 2,
            "strategy": self.strategy,
            "choice": self.choice,
            "classes": self.classes,
            "member_names": self.member_names,
            "candidate_names": self.candidate_names,
            "temperatures": self.temperatures,
            "strategies": {},
        }
        arrays: dict[str, np.ndarray] = {}
        for name, s in self.strategies.items():
            sdoc, sarr = s.state()
            doc["strategies"][name] = dict(sdoc, arrays=sorted(sarr))
            arrays.update({f"{name}_{k}": v for k, v in sarr.items()})
        return doc, arrays

    @classmethod
    def from_state(cls, doc: dict, arrays: dict[str, np.ndarray]) -> "Combiner":
        doc = _upgrade(doc)
        strategies = {}
        for name, sdoc in doc["strategies"].items():
            if name not in STRATEGIES:
                raise ValueError(f"names strategy {name!r}, which this effens does not have")
            own = {k: arrays[f"{name}_{k}"] for k in sdoc.get("arrays", [])}
            strategies[name] = STRATEGIES[name].from_state(sdoc, own)
        return cls(
            doc["strategy"],
            list(doc["classes"]),
            list(doc["member_names"]),
            strategies,
            doc.get("temperatures"),
            doc.get("choice"),
            list(doc.get("candidate_names") or []),
        )


def _upgrade(doc: dict) -> dict:
    """A combiner.json written before the strategy registry, in today's form."""
    if "strategies" in doc:
        return doc
    strategies = {
        "hard": {"weights": doc.get("vote_weights")},
        "soft": {"weights": doc.get("vote_weights")},
        "weighted": {"weights": doc.get("learned_weights"), "source": doc.get("weights_source")},
    }
    if doc.get("stacking_source"):
        strategies["stacking"] = {
            "source": doc["stacking_source"],
            "C": doc.get("stacking_C"),
            "arrays": ["coef", "intercept"],
        }
    return {
        "strategy": doc["strategy"],
        "classes": doc["classes"],
        "member_names": doc["member_names"],
        "temperatures": doc.get("temperatures"),
        "strategies": strategies,
    }


def fit_combiner(
    settings: Any,
    member_names: Sequence[str],
    classes: Sequence[str],
    data: FitData,
    seed: int = 0,
    only: Sequence[str] | None = None,
    candidate_names: Sequence[str] = (),
) -> Combiner:
    """Fit temperatures (``settings.calibrate``) and every registered strategy (or ``only``
    these) from member probabilities; ``settings`` is a :class:`~ensemble.config.CombinerConfig`.
    ``data`` holds the members' rows, then the pool candidates' (``candidate_names``), which
    only pool strategies see."""
    temperatures = None
    n = len(member_names)
    if settings.calibrate:
        temperatures = (
            [fit_temperature(p, data.val_y) for p in data.val_proba[:n]]
            if len(data.val_y)
            else [
                fit_temperature(data.oob_proba[j, a], data.oob_y[a])  # train_on_val: each member's OOB
                for j, a in enumerate(data.oob_available[:n])
            ]
        )
        oob = data.oob_proba.copy()
        for j, t in enumerate(temperatures):
            left_out = data.oob_available[j]
            if left_out.any():
                oob[j, left_out] = temperature_scale(oob[j, left_out], t)
        val = np.stack(
            [temperature_scale(p, t) for p, t in zip(data.val_proba, temperatures)] + list(data.val_proba[n:])
        )
        data = dataclasses.replace(data, val_proba=val, oob_proba=oob)
    fitted: dict[str, Strategy] = {}
    for name in only or STRATEGIES:
        s = STRATEGIES[name](settings, seed)
        if s.source is not None:
            proba, y, available, actual = (data if s.pool else data.head(n)).source(s.source)
            s.fit(proba, y, available, n_classes=len(classes))
            s.source_ = getattr(s, "source_", None) or actual
        fitted[name] = s
    strategy, choice = settings.strategy, None
    if strategy == "auto":
        from .auto import choose_strategy

        strategy, choice = choose_strategy(fitted, data, len(classes), getattr(settings, "auto", None), seed, n)
    return Combiner(strategy, list(classes), list(member_names), fitted, temperatures, choice, list(candidate_names))
