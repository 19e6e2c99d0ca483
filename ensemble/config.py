"""YAML -> typed, validated config; ``--set`` overrides; the resolved copy.

Every error names the key path and the file, e.g.
``configs/x.yaml: `members.0.bagging.ratio` must be in (0, 1]; got 1.5``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml

from members.schema import ConfigError, build, field, interval, redact, sections_field, to_dict
from members.settings import TrainConfig

__all__ = [
    "ConfigError",
    "Config",
    "MemberConfig",
    "TrainConfig",
    "DistillConfig",
    "load_config",
    "load_distill",
    "parse_overrides",
    "apply_overrides",
    "dump_config",
    "SplitSource",
]


def _non_empty(value: Any) -> str | None:
    return "must not be empty" if isinstance(value, str) and not value.strip() else None


def _path_text(value: Any) -> str | None:
    """A file or folder name (or URI): not empty, and no NUL character (no file system takes one)."""
    if isinstance(value, str) and "\0" in value:
        return "must not contain a NUL character"
    return _non_empty(value)


def _tracking_uri(value: Any) -> str | None:
    """A tracking URI that keeps what it is sent: a SQLite URI must name a database file."""
    from urllib.parse import urlsplit

    bad = _path_text(value)
    if bad is None and isinstance(value, str) and value.strip() in ("sqlite://", "sqlite:///", "sqlite:////"):
        return "names no database file, so MLflow would log to memory and lose every run; use `sqlite:///mlflow.db`"
    if bad is None and isinstance(value, str):
        try:
            urlsplit(value).port  # noqa: B018 - parsed as the tracker parses it (a bad port or bracket)
        except ValueError as exc:
            return f"is not a URI MLflow can use ({exc})"
    return bad


def _views() -> tuple[str, ...]:
    from members.views import view_names  # PIL and numpy only

    return view_names()


@dataclasses.dataclass
class SplitSource:
    """Where one split's images come from: a folder of class folders or a CSV manifest."""

    folder: str | None = field(None, doc="a folder with one sub-folder per class")
    csv: str | None = field(None, doc="a CSV manifest with a path and a label column")
    path_column: str = field("path", doc="CSV column holding image paths")
    label_column: str = field("label", doc="CSV column holding class labels")

    @classmethod
    def from_value(cls, value: Any, path: str) -> "SplitSource":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"`{path}` must be a folder, a CSV path or a mapping "
                f"{{csv: PATH, path_column: NAME, label_column: NAME}}; got {value!r}"
            )
        source = cls(csv=value) if value.lower().endswith(".csv") else cls(folder=value)
        source.validate(path)
        return source

    def validate(self, path: str) -> None:
        if (self.folder is None) == (self.csv is None):
            raise ConfigError(f"`{path}` needs exactly one of `folder` or `csv`")
        if "\0" in (self.folder or self.csv or ""):
            raise ConfigError(f"`{path}` must not contain a NUL character")
        if self.csv is not None and self.path_column == self.label_column:
            raise ConfigError(
                f"`{path}.path_column` and `{path}.label_column` must name different columns; "
                f"both are {self.path_column!r}"
            )

    def resolved(self, base: Path) -> "SplitSource":
        def res(p: str | None) -> str | None:
            return None if p is None else str((base / os.path.expanduser(p)).resolve())

        return dataclasses.replace(self, folder=res(self.folder), csv=res(self.csv))


@dataclasses.dataclass
class DataConfig:
    train: SplitSource = field(doc="training split (required)")
    val: SplitSource | None = field(None, doc="validation split; else `val_fraction` of train")
    test: SplitSource | None = field(None, doc="test split (reported, never used to choose)")
    val_fraction: float = field(
        0.2,
        check=interval(0, 1, low_open=True, high_open=True),
        doc="share of train held out (stratified) when `val` is absent",
    )
    cache_size: int | None = field(
        None,
        check=interval(16, 8192),
        doc="shorter side of decoded images kept in memory; default: the largest member's resize size",
    )
    on_bad_image: Literal["error", "skip"] = field(
        "error", doc="unreadable training image: stop naming it, or skip and list it"
    )
    exclude: str | None = field(
        None,
        check=_path_text,
        doc="a file of images left out of every split: one path "
        "or file SHA-256 per line (`#` comments), or a CSV with a `path` column "
        "(`effens audit --write-exclude` writes one)",
    )
    relabel: str | None = field(
        None,
        check=_path_text,
        doc="a CSV with `path` and `suggested` (or `label`) "
        "columns, such as audit's label_issues.csv after review: each listed image "
        "takes that label",
    )
    train_on_val: bool = field(
        False,
        doc="the final fit, once the recipe is chosen on val: train the members "
        "on train + val; each member's out-of-bag images stand in for val (its best "
        "epoch, the combiner, `auto`, temperatures, conformal sets), so no figure is "
        "scored on an image its member trained on",
    )


@dataclasses.dataclass
class BaggingConfig:
    ratio: float = field(
        1.0,
        check=interval(0, 1, low_open=True),
        doc="sample size as a share of the training set (sklearn `max_samples`)",
    )
    replace: bool = field(True, doc="draw with replacement (sklearn `bootstrap`)")
    stratify: bool = field(True, doc="keep each class's share in the sample")


def _check_views(value: Any) -> str | None:
    from members.views import view_names  # PIL and numpy only

    unknown = [v for v in value if v not in view_names()]
    if unknown:
        return f"must name member views ({', '.join(view_names())}); {unknown[0]!r} is not one"
    return "must not repeat a view" if len(set(value)) != len(value) else None


def _check_snapshots(value: Any) -> str | None:
    return "must not repeat a snapshot" if len(set(value)) != len(value) else None


@dataclasses.dataclass
class CandidatesConfig:
    """Extra probability sources a member adds to the pool of ``combiner.greedy`` (issue #21)."""

    weights: list[Literal["best", "last", "ema", "swa", "probe"]] = field(
        default_factory=list,
        check=_check_snapshots,
        doc="snapshots of this member's training kept besides `train.select` as pool candidates: best (epoch on "
        "val), last (epoch), ema (needs `train.ema`), swa (needs `train.swa_epochs`), probe (the linear "
        "probe, needs `train.lp_epochs`); each is saved and scored on OOB, val and test ([]: none, the default)",
    )
    views: list[str] = field(
        default_factory=list,
        check=_check_views,
        doc="eval views each kept weight is also scored under, as further candidates "
        "(a registered member view; []: only the member's own `view`)",
    )


def _show_name(name: str) -> str:
    return repr(name) if len(name) <= 40 else repr(name[:37]) + "..."


def _check_model(value: Any) -> str | None:
    from members.model_names import model_name_problem  # timm only for names not seen before

    return model_name_problem(value)


def _runtimes() -> tuple[str, ...]:
    from members.runtimes import RUNTIMES  # numpy only

    return ("auto", *RUNTIMES)


@dataclasses.dataclass
class RenderConfig:
    short_side: list[int] = field(
        default_factory=list,
        doc="[low, high] px: in training each photo's shorter side is brought down to a "
        "value drawn in this range (never up), at eval to its middle; []: off",
    )
    quality: list[int] = field(
        default_factory=lambda: [50, 90],
        doc="[low, high]: the JPEG quality each photo is re-encoded at (drawn in training, the middle at eval)",
    )

    def validate(self, path: str) -> None:
        side, q = self.short_side, self.quality
        if side and (len(side) != 2 or not 8 <= side[0] <= side[1] <= 4096):
            raise ConfigError(
                f"`{path}.short_side` must be [] or [low, high] with 8 <= low <= high <= 4096; got {side}"
            )
        if len(q) != 2 or not 1 <= q[0] <= q[1] <= 100:
            raise ConfigError(f"`{path}.quality` must be [low, high] with 1 <= low <= high <= 100; got {q}")


@dataclasses.dataclass
class MemberConfig:
    name: str = field(check=_non_empty, doc="member name, used for its folder")
    model: str = field(check=_check_model, doc="any timm model name")
    weights: str = field(
        "none", doc="`none`, `hub`, a weights file (.safetensors/.pt/.pth) or an installed weights package"
    )
    image_size: int | None = field(
        None, check=interval(8, 4096), doc="training/inference size; default: the model's native size"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = field(
        None, doc="this member's precision; default: the top-level `precision`"
    )
    view: str = field(
        "crop",
        choices=_views,
        doc="how a photo becomes the input, in training, val, OOB, predict and export: a "
        "registered member view (each one's meaning: docs/reference/registries.md)",
    )
    render: RenderConfig = field(
        default_factory=RenderConfig,
        doc="re-render every photo through a drawn resolution and JPEG quality, so "
        "neither can stand in for the label (docs/guides/shift.md)",
    )
    bagging: BaggingConfig = field(default_factory=BaggingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    candidates: CandidatesConfig = field(
        default_factory=CandidatesConfig, doc="pool candidates for `combiner.greedy` (snapshots, views)"
    )

    def validate(self, path: str) -> None:
        if "@" in self.name:
            raise ConfigError(
                f"`{path}.name` must not contain `@` (it names a member's pool candidates, "
                f"`{self.name.split('@')[0]}@last`); got {_show_name(self.name)}"
            )
        need = {
            "ema": ("ema", self.train.ema, "not set; set a decay such as 0.998"),
            "swa": ("swa_epochs", self.train.swa_epochs, "0; set how many last epochs to average"),
            "probe": ("lp_epochs", self.train.lp_epochs, "0; set the linear-probe epochs, e.g. 3"),
        }
        for snap in self.candidates.weights:
            if snap in need and not need[snap][1]:
                key, _, fix = need[snap]
                raise ConfigError(f"`{path}.candidates.weights` names `{snap}` but `{path}.train.{key}` is {fix}")
        if (
            any(c in self.name for c in "/\\:\0")
            or self.name in (".", "..")
            or len(self.name.encode("utf-8")) > 100
            or not self.name.isprintable()
        ):
            raise ConfigError(
                f"`{path}.name` must be usable as a folder name (printable, no / \\ : or NUL, "
                f"at most 100 bytes); got {_show_name(self.name)}"
            )
        low = self.train.min_image_size
        if low is not None and self.image_size is not None and low > self.image_size:
            raise ConfigError(
                f"`{path}.train.min_image_size` ({low}) must not exceed `{path}.image_size` "
                f"({self.image_size}): progressive resizing grows towards image_size"
            )


@dataclasses.dataclass
class AutoConfig:
    metric: Literal["log_loss", "macro_f1"] = field(
        "log_loss",
        doc="what `strategy: auto` ranks strategies by on held-out images (val and cross-fitted "
        "OOB); log_loss ranks only strategies that give probabilities",
    )
    se: float = field(
        1.0,
        check=interval(0, 10),
        doc="strategies within this many standard errors (paired "
        "bootstrap) of the best are a tie; the simplest is chosen",
    )
    bootstrap: int = field(1000, check=interval(10, 100000), doc="paired bootstrap resamples")
    folds: int = field(5, check=interval(2, 20), doc="cross-fitting folds for OOB-fitted strategies")


def _strategies() -> tuple[str, ...]:
    from .combining.strategies import strategy_names

    return strategy_names()


def _default_strategies() -> tuple[str, ...]:
    return ("auto", *_strategies())


def _strategy_settings() -> dict[str, type]:
    from .combining.strategies import strategy_settings

    return strategy_settings()


#: names a member may not take: strategies and the fixed columns of predict's output
RESERVED_COLUMNS = ("path", "prediction", "prediction_set", "decision", "error", "ensemble")


@dataclasses.dataclass
class CombinerConfig:
    strategy: str = field(
        "soft",
        choices=_default_strategies,
        doc="default voting: hard (majority), soft (mean probability), weighted "
        "(learned or given weights), stacking (meta-learner), greedy (ensemble selection), any "
        "registered strategy, or auto: the simplest strategy within `auto.se` standard errors of the "
        "best on held-out images (val + cross-fitted OOB; the table is in metrics.json and the report)",
    )
    weights: list[float] | Literal["auto"] | None = field(
        None,
        doc="one non-negative weight per member (used by hard, soft and weighted), "
        "or `auto`/null: `weighted` learns them",
    )
    weights_source: Literal["oob", "val"] = field(
        "oob", doc="probabilities `auto` weights are fitted on (oob keeps val a clean holdout)"
    )
    sections: dict[str, Any] = sections_field(
        _strategy_settings,
        doc="each strategy's own settings, one section per strategy named after it "
        "(`combiner.stacking`, `combiner.greedy`, a plugin's): the strategy owns their schema",
    )
    auto: AutoConfig = field(default_factory=AutoConfig)
    calibrate: bool = field(False, doc="per-member temperature scaling fitted on validation")

    def __getattr__(self, name: str) -> Any:
        """A strategy's settings section by its name (``settings.stacking.C``); defaults when not given."""
        if name.startswith("__") or name == "sections":
            raise AttributeError(name)
        given = self.__dict__.get("sections") or {}
        if name in given:
            return given[name]
        schema = _strategy_settings().get(name)
        if schema is None:
            raise AttributeError(f"{type(self).__name__} has no setting or strategy section {name!r}")
        return schema()

    def validate(self, path: str) -> None:
        w = self.weights
        if isinstance(w, list) and (any(v < 0 for v in w) or sum(w) <= 0):
            raise ConfigError(f"`{path}.weights` must be non-negative with a positive sum; got {w}")


def _check_costs(value: Any) -> str | None:
    if value is None:
        return None
    if not value or any(not isinstance(row, list) or len(row) != len(value) for row in value):
        return "must be a square matrix (one row per true class, one column per predicted class)"
    if any(
        not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0
        for row in value
        for v in row
    ):
        return "must hold finite non-negative numbers"
    if all(v == 0 for row in value for v in row):
        return "is all zeros: every prediction would cost nothing, so predictions would all be the first class"
    for i, row in enumerate(value):
        if row[i] > min(row):
            return (
                f"row {i}: the correct answer (column {i}, cost {row[i]:g}) must not cost more than a "
                f"mistake in its row (min {min(row):g}), or predictions turn into the cheaper wrong class"
            )
    return None


@dataclasses.dataclass
class DecisionConfig:
    costs: list[list[float]] | None = field(
        None,
        check=_check_costs,
        doc="cost of predicting column j when the truth is row i (class "
        "order); predictions then minimise the expected cost",
    )
    calibration: Literal["val", "oob"] = field("val", doc="images prediction sets and review thresholds are fitted on")
    coverage: float | None = field(
        None,
        check=interval(0, 1, low_open=True, high_open=True),
        doc="predict: add a prediction set holding the true class this often (split conformal); `--coverage` overrides",
    )
    coverage_by_class: bool = field(False, doc="prediction sets with the coverage within every class")
    review_rate: float | None = field(
        None,
        check=interval(0, 1),
        doc="predict: send this share of the least confident images to "
        "review (threshold chosen on the calibration images)",
    )
    target_accuracy: float | None = field(
        None,
        check=interval(0, 1, low_open=True),
        doc="predict: review the least confident images so that the rest reach this accuracy on the calibration images",
    )

    def validate(self, path: str) -> None:
        if self.review_rate is not None and self.target_accuracy is not None:
            raise ConfigError(f"`{path}.review_rate` and `{path}.target_accuracy`: give one, not both")


@dataclasses.dataclass
class ReportConfig:
    saliency: bool = field(
        False,
        doc="Grad-CAM overlays (each member and their mean) of the default "
        "strategy's mistakes in index.html (up to 200 per split)",
    )
    purpose: str | None = field(
        None, check=_non_empty, doc="what the model is for, in a sentence (the run card's first line, `report/card.md`)"
    )
    limits: list[str] = field(
        default_factory=list, doc="known limits you want on the run card, next to the ones effens measures"
    )


@dataclasses.dataclass
class MlflowConfig:
    uri: str = field(
        check=_tracking_uri,
        doc="tracking URI: `sqlite:///mlflow.db` (artifacts in `mlartifacts/` "
        "beside it), `http://host:5000`, or an existing `file:` store",
    )
    experiment: str = field("effens", check=_non_empty, doc="experiment name (created when missing)")
    log_model: bool = field(True, doc="log the trained ensemble as an MLflow pyfunc model with the run")


@dataclasses.dataclass
class TrackingConfig:
    mlflow: MlflowConfig | None = field(
        None,
        doc="log params, per-epoch and final metrics, the report and "
        "the model to MLflow (`pip install 'effens[track]'`)",
    )
    tensorboard: str | None = field(
        None, check=_path_text, doc="write TensorBoard event files (per-epoch scalars, final metrics) under this folder"
    )


@dataclasses.dataclass
class TuneConfig:
    ratios: list[float] | list[list[float]] = field(
        default_factory=lambda: [0.5, 0.7, 0.85, 1.0],
        doc="candidate bagging ratios: one list for every member, or one list per member",
    )
    replace: list[bool] = field(default_factory=lambda: [True, False], doc="replacement settings searched")
    tie_members: bool = field(
        True,
        doc="with one shared list: every member takes the same "
        "(ratio, replace) in a candidate; false: all combinations",
    )
    mode: Literal["auto", "features", "full"] = field(
        "auto",
        doc="features: train heads on cached frozen-backbone features (fast proxy); "
        "full: train members as configured; auto: features when every member has "
        "`freeze: backbone`",
    )
    method: Literal["grid", "random", "halving"] = field(
        "grid",
        doc="grid: every candidate; random: `budget` of them; halving: successive "
        "halving over training epochs, keeping the best 1/`eta` each round",
    )
    budget: int | None = field(
        None,
        check=interval(1, 100_000),
        doc="random: number of candidates; halving: candidates in the first round (default: all)",
    )
    eta: int = field(3, check=interval(2, 1000), doc="halving: keep 1/eta per round")
    min_epochs: int = field(1, check=interval(1, 10_000), doc="halving: epochs in the first round")
    objective: Literal["oob", "val"] = field("val", doc="where candidates are scored")
    metric: Literal["macro_f1", "accuracy", "log_loss"] = field("macro_f1", doc="score to optimise")
    strategy: str = field("soft", choices=_strategies, doc="how the ensemble is scored (fitted as `train` fits it)")

    def validate(self, path: str) -> None:
        ratios: list = self.ratios  # one list for every member, or one per member
        lists = ratios if ratios and isinstance(ratios[0], list) else [ratios]
        for i, lst in enumerate(lists):
            if not lst or any(not 0 < r <= 1 for r in lst):
                raise ConfigError(f"`{path}.ratios` must hold values in (0, 1]; got {lst}")
        if not self.replace:
            raise ConfigError(f"`{path}.replace` must list at least one of true, false")


@dataclasses.dataclass
class ParallelConfig:
    backend: Literal["sequential", "loky", "ray", "dask"] = field(
        "sequential",
        doc="how members and tuning candidates run: in process, local processes (loky), or a Ray / Dask cluster",
    )
    n_jobs: int = field(1, check=interval(1, 1024), doc="jobs at once")
    address: str | None = field(
        None,
        doc="ray/dask: cluster address (e.g. `auto`, "
        "`ray://host:10001`, `tcp://host:8786`); default: "
        "start a local cluster",
    )
    threads_per_job: int | None = field(
        None, check=interval(1, 1024), doc="torch threads per job; default: cores / n_jobs"
    )


#: member keys a student does not take: it trains on every training image once, in no pool
NOT_STUDENT_KEYS = ("bagging", "candidates")


def _known_key(key: Any, known: list[str], path: str) -> None:
    if key not in known:
        import difflib

        close = difflib.get_close_matches(str(key), known, n=1)
        where = f"{path}." if path else ""
        shown = key if isinstance(key, str) and key.isprintable() else repr(key)
        hint = f" (did you mean `{where}{close[0]}`?)" if close else ""
        raise ConfigError(f"unknown key `{where}{shown}`{hint}; known keys here: {', '.join(known)}")


@dataclasses.dataclass
class DistillConfig:
    """``effens distill``: the student, its teacher and how the teacher teaches (issue #40)."""

    student: dict = field(
        default_factory=dict,
        doc="the student member: any keys of `members.N` but bagging and candidates (model, weights, image_size, "
        "view, render, train.*), over those of the run's smallest member (fewest parameters; its architecture "
        "and weights source by default); it trains on every training image, named `student` unless `name` is given",
    )
    strategy: str | None = field(
        None,
        check=_non_empty,
        doc="the teacher: the run's strategy of this name (`--strategy`); null: the run's default, "
        "or soft where that default gives vote shares rather than probabilities (hard)",
    )
    temperature: float = field(
        1.0,
        check=interval(0, 100, low_open=True),
        doc="softens the teacher's and the student's probabilities in the soft loss "
        "(scaled by temperature²); 1 keeps the teacher's probabilities as they are",
    )
    soft_weight: float = field(
        0.9,
        check=interval(0, 1),
        doc="share of the soft teacher loss in each image's loss; the label's "
        "cross-entropy gets 1 - soft_weight (1: the student follows the teacher alone)",
    )
    teacher_views: int = field(
        0,
        check=interval(0, 10_000),
        doc="0: the teacher labels the very augmented view the student sees, every step "
        "(consistent teaching); N: it labels N augmented views of each image once "
        "(cached in the run folder) and epoch e trains on view e mod N",
    )
    init: str = field(
        "weights",
        check=_non_empty,
        doc="where the student starts: `weights` (its `weights:` source, as a member does), `member` (the "
        "trained weights of the run's smallest member, head included) or a member's name (that member's, and "
        "its settings as the student's base); from a trained head, no linear probe unless `student.train` asks",
    )
    teaching: Literal["ensemble", "oob"] = field(
        "ensemble",
        doc="who teaches a training image: the whole ensemble (in-sample for the members that "
        "trained on it), or only the members that left it out (its OOB vote; images no member "
        "left out fall back to the whole ensemble, counted in the report)",
    )
    unlabelled: str | None = field(
        None,
        check=_path_text,
        doc="a folder or CSV manifest (`path` column) of photos only the teacher labels (`--unlabelled`)",
    )

    def validate(self, path: str) -> None:
        # the keys now; their values by the members' own schema once merged over the run's member (`effens distill`)
        known = [f.name for f in dataclasses.fields(MemberConfig) if f.name not in NOT_STUDENT_KEYS]
        for key in self.student:
            if key in NOT_STUDENT_KEYS:
                raise ConfigError(
                    f"`{path}.student.{key}`: a student trains on every training image once, in no pool; remove the key"
                )
            _known_key(key, known, f"{path}.student")
        train = self.student.get("train")
        if train is not None and not isinstance(train, dict):
            raise ConfigError(f"`{path}.student.train` must be a mapping; got {train!r}")
        for key in train or {}:
            _known_key(key, [f.name for f in dataclasses.fields(TrainConfig)], f"{path}.student.train")
        if self.unlabelled is not None and self.soft_weight == 0:
            raise ConfigError(
                f"`{path}.unlabelled` photos are taught by the teacher alone, so `{path}.soft_weight` "
                f"must be > 0; got 0"
            )


@dataclasses.dataclass
class Config:
    data: DataConfig = field(doc="the splits")
    members: list[MemberConfig] = field(doc="one entry per ensemble member")
    seed: int = field(0, check=interval(0, 2**32 - 1), doc="seeds bagging, splits, initialisation and augmentation")
    combiner: CombinerConfig = field(default_factory=CombinerConfig)
    device: str = field("auto", doc="`auto` (cuda when present), `cpu`, `cuda` or `cuda:N`")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "auto",
        doc="training and inference precision: auto (fp32 on CPU, never chosen by a timing; "
        "bf16/fp16 mixed precision on CUDA), fp32, bf16 (CPUs with native bf16: often faster) or fp16 "
        "(CUDA only); weights stay fp32",
    )
    runtime: str = field(
        "auto",
        choices=_runtimes,
        doc="inference runtime of predict/evaluate: auto (the installed runtime "
        "with the highest `auto` priority for the device) or a registered runtime",
    )
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    decision: DecisionConfig = field(
        default_factory=DecisionConfig, doc="prediction sets, review and costs (`effens predict`, reports)"
    )
    report: ReportConfig = field(default_factory=ReportConfig, doc="what the report shows")
    tune: TuneConfig = field(default_factory=TuneConfig, doc="bagging-ratio search (`effens tune`)")
    tracking: TrackingConfig = field(
        default_factory=TrackingConfig, doc="experiment trackers (train, tune, evaluate); nothing is logged unless set"
    )
    distill: DistillConfig = field(
        default_factory=DistillConfig, doc="one network taught by the ensemble (`effens distill`; `train` ignores it)"
    )
    plugins: list[str] = field(
        default_factory=list,
        doc="modules or .py files imported before the rest of the config is checked "
        "(a module next to the YAML file is found): your own strategies, views, runtimes, "
        "weights sources, report figures",
    )

    def validate(self, path: str) -> None:
        r = self.tune.ratios
        if r and isinstance(r[0], list) and len(r) != len(self.members):
            raise ConfigError(
                f"`tune.ratios` per member must have one list per member ({len(self.members)}); got {len(r)}"
            )
        if not self.members:
            raise ConfigError("`members` must list at least one member")
        for i, m in enumerate(self.members):
            if self.tune.method == "halving" and self.tune.min_epochs > m.train.epochs:
                raise ConfigError(
                    f"`tune.min_epochs` ({self.tune.min_epochs}) must not exceed "
                    f"`members.{i}.train.epochs` ({m.train.epochs})"
                )
        names = [m.name for m in self.members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"`members` names must be unique; repeated: {', '.join(dupes)}")
        for i, name in enumerate(names):
            if name in _strategies() or name in RESERVED_COLUMNS:
                raise ConfigError(
                    f"`members.{i}.name` must differ from the strategy names and output "
                    f"columns ({', '.join(_strategies() + RESERVED_COLUMNS)}); got {name!r}"
                )
        if self.data.train_on_val:
            for i, m in enumerate(self.members):
                if m.bagging.ratio >= 1 and not m.bagging.replace:
                    raise ConfigError(
                        f"`data.train_on_val` needs out-of-bag images, but `members.{i}.bagging` "
                        f"(ratio 1, replace false) leaves no image out; lower its ratio"
                    )
        w = self.combiner.weights
        if isinstance(w, list) and len(w) != len(self.members):
            raise ConfigError(f"`combiner.weights` must have one weight per member ({len(self.members)}); got {len(w)}")
        if not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ConfigError(f"`device` must be auto, cpu, cuda or cuda:N; got {_show_name(self.device)}")


# ---------------------------------------------------------------- YAML
class _StrictLoader(yaml.SafeLoader):
    """SafeLoader (no Python tags) that also refuses duplicate keys, and reads numbers as a
    person writes them (``1e-3``, ``1E5``, ``-.5``: YAML 1.2's floats; YAML 1.1, PyYAML's
    rule, needs a dot and a signed exponent, so ``1e-3`` would be a string)."""


#: YAML 1.2 core-schema floats, plus YAML 1.1's forms (``1_000.5``, ``190:20:30.15``) that PyYAML reads
_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_StrictLoader.yaml_implicit_resolvers = {  # PyYAML's float rule replaced by the one above; the others kept
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string :class:`_StrictLoader` would read as something
    else (a member named ``1e5`` is written ``'1e5'``), so a saved config loads back equal."""


_Dumper.yaml_implicit_resolvers = _StrictLoader.yaml_implicit_resolvers


def _mapping_no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` merges; explicit keys win
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)

MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict) -> int:
    """Nodes the document would have with every alias expanded (computed without expanding)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # guards recursive documents
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, 10 * MAX_YAML_NODES)
    return memo[id(node)]


def _load_yaml(stream, where: str):
    """Parse strictly (see :class:`_StrictLoader`), refusing documents whose aliases expand
    beyond :data:`MAX_YAML_NODES` (an "alias bomb")."""
    loader = _StrictLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: its aliases expand to more than {MAX_YAML_NODES:,} values; refused")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML file strictly: safe tags only, no duplicate keys, a mapping at the top."""
    from .files import refuse_irregular

    refuse_irregular(path)  # a FIFO or device would block the read
    try:
        with open(path, encoding="utf-8") as fh:
            raw = _load_yaml(fh, str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_short(str(exc))}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "members.0.name=x"]`` -> key paths and YAML-parsed values."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE; got {item!r}")
        try:
            value = _load_yaml(text, f"--set {key}") if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: invalid value: {_short(redact(str(exc)))}") from None
        out.append((key.strip(), value))
    return out


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]]) -> dict:
    """Return a copy of ``raw`` with each dotted key path set; list items by index."""
    raw = copy.deepcopy(raw)
    for key, value in overrides:
        parts = key.split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            node = _step(node, part, key, create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, key)
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {key}: `{'.'.join(parts[:-1])}` is not a mapping or list")
    return raw


def _step(node: Any, part: str, key: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            node[part] = {}
        return node[part]
    raise ConfigError(f"--set {key}: cannot descend into `{part}`")


def _index(node: list, part: str, key: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {key}: `{part}` is not an index of a list of {len(node)}")
    return int(part)


def load_config(
    path: str | os.PathLike, overrides: list[str] | None = None, base_dir: str | os.PathLike | None = None
) -> Config:
    """Read, override and validate a config; data paths become absolute.

    Relative data paths resolve against ``base_dir`` (default: the current directory,
    as for any command-line tool). Inside :func:`checked_once` (a command), a config read
    again (the same text, overrides and folders) is not checked, nor its plugins loaded, again.
    """
    raw = read_yaml(path)
    seen = _CHECKED.get()
    key = (
        repr(raw),
        tuple(overrides or ()),
        str(path),
        str(Path(base_dir).resolve()) if base_dir is not None else os.getcwd(),
    )
    if seen is not None and key in seen:
        return copy.deepcopy(seen[key])
    cfg = _validated(raw, path, overrides, base_dir)
    if seen is not None:
        seen[key] = copy.deepcopy(cfg)
    return cfg


#: the configs checked in the current :func:`checked_once` block (None outside one)
_CHECKED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("effens_checked_configs", default=None)


@contextlib.contextmanager
def checked_once() -> Iterator[None]:
    """A block (one command: :mod:`ensemble.cli` runs each inside one) in which
    :func:`load_config` checks each config once: its output guard, the command and the run
    folder it reads share one check."""
    token = _CHECKED.set({} if _CHECKED.get() is None else _CHECKED.get())
    try:
        yield
    finally:
        _CHECKED.reset(token)


def _validated(raw: dict, path, overrides: list[str] | None, base_dir) -> Config:
    """:func:`load_config`'s check: a bad ``--set`` is named as such, a bad file as the file."""
    if not overrides:
        return config_from_dict(raw, source=str(path), base_dir=base_dir)
    parsed = parse_overrides(overrides)
    try:
        return config_from_dict(apply_overrides(raw, parsed), source=str(path), base_dir=base_dir)
    except ConfigError as exc:
        try:
            config_from_dict(raw, source=str(path), base_dir=base_dir)
        except ConfigError:
            raise exc from None  # the file itself is wrong: it is named
        # the file is fine on its own: the culprit is --set
        text = str(exc).split(": ", 1)[-1]
        raise ConfigError(f"--set {redact(', '.join(overridden(text, overrides) or overrides))}: {text}") from None


def overridden(message: str, overrides: list[str] | None) -> list[str]:
    """The ``--set KEY=VALUE`` items whose key an error message names (the culprits)."""
    items = list(overrides or [])
    return [
        item for item, (key, _) in zip(items, parse_overrides(items)) if f"`{key}`" in message or f"`{key}." in message
    ]


def blamed(exc: ConfigError, overrides: list[str] | None, source: str) -> ConfigError:
    """``exc`` prefixed with the ``--set`` items it names, else with ``source`` (the file)."""
    named = overridden(str(exc), overrides)
    return ConfigError(f"--set {redact(', '.join(named))}: {exc}" if named else f"{source}: {exc}")


def load_distill(
    path: str | os.PathLike | None, default: DistillConfig, overrides: list[str] | None = None
) -> DistillConfig:
    """``effens distill``'s settings: the ``distill:`` section of ``path`` (a YAML file of config
    keys, read for that section alone: a file holding only it, a training config, a student's
    saved config.yaml), or ``default`` (the run's own) without a file, with ``--set
    distill.KEY=VALUE`` on top; a relative ``unlabelled`` path resolves against the current folder."""
    source = str(path) if path is not None else "the run's config"
    if path is not None:
        raw = read_yaml(path)
        known = [f.name for f in dataclasses.fields(Config)]
        for key in raw:
            try:
                _known_key(key, known, "")
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}; `effens distill` reads its `distill:` section") from None
        section = raw.get("distill")
    else:
        section = to_dict(default)
    parsed = parse_overrides(overrides or [])
    for item, (key, _) in zip(overrides or [], parsed):
        if not key.startswith("distill."):
            raise ConfigError(
                f"--set {redact(item)}: `effens distill` takes `distill.*` keys (the run's other "
                f"settings are the teacher's)"
            )
    try:
        settings = build(DistillConfig, apply_overrides({"distill": section}, parsed)["distill"], "distill")
    except ConfigError as exc:
        raise blamed(exc, overrides, source) from None
    if settings.unlabelled is not None:
        settings.unlabelled = str(Path(os.path.expanduser(settings.unlabelled)).resolve())
    return settings


def config_from_dict(raw: dict, source: str = "<dict>", base_dir: str | os.PathLike | None = None) -> Config:
    """Validate a plain mapping; errors are prefixed with ``source``. Plugins (``plugins:``
    and the ``effens.plugins`` entry points) are imported first, so what they register is
    known to the checks."""
    from .plugins import load_entry_points, load_plugins

    load_entry_points()  # an installed plugin that fails is named as itself, not as this config
    try:
        plugins = raw.get("plugins") if isinstance(raw, dict) else None
        if plugins is not None:
            if not isinstance(plugins, list):
                raise ConfigError(f"`plugins` must be a list of module names; got {plugins!r}")
            raw = {**raw, "plugins": load_plugins(plugins, Path(source).parent if os.path.isfile(source) else None)}
        cfg = build(Config, raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    data = cfg.data
    cfg.data = dataclasses.replace(
        data,
        train=data.train.resolved(base),
        val=data.val.resolved(base) if data.val else None,
        test=data.test.resolved(base) if data.test else None,
        exclude=str((base / os.path.expanduser(data.exclude)).resolve()) if data.exclude else None,
        relabel=str((base / os.path.expanduser(data.relabel)).resolve()) if data.relabel else None,
    )
    cfg.tracking = resolved_tracking(cfg.tracking, base)
    return cfg


def local_store(uri: str) -> tuple[str, str] | None:
    """``(prefix, path)`` of an MLflow URI that names a store on this machine (a ``file:``
    or ``sqlite:///`` URI, or a plain path); ``None`` for a server or a hosted service."""
    from urllib.parse import urlparse

    if uri.startswith("file:"):
        parsed = urlparse(uri)
        return ("file:", parsed.path) if parsed.netloc in ("", "localhost") else None
    if uri.startswith("sqlite:///"):
        return "sqlite:///", uri[len("sqlite:///") :]
    if "://" not in uri and ":" not in uri.split("/")[0] and not uri.startswith("databricks"):
        return "", uri
    return None


def resolved_tracking(tracking: "TrackingConfig", base: Path) -> "TrackingConfig":
    """``tracking:`` with its local paths (a TensorBoard folder; a plain-path, ``file:`` or
    ``sqlite:///`` MLflow store) absolute, so the config saved with a run logs to the same
    place whichever folder a later ``evaluate`` runs from; server URIs stay as given."""

    def absolute(p: str) -> str:
        return str((base / os.path.expanduser(p)).resolve())

    tb = absolute(tracking.tensorboard) if tracking.tensorboard else None
    ml = tracking.mlflow
    if ml is not None:
        ml = dataclasses.replace(ml, uri=_without_credentials(ml.uri))
    store = local_store(ml.uri) if ml is not None else None
    if store is not None and ml is not None:
        prefix, path = store
        ml = dataclasses.replace(
            ml, uri=Path(absolute(path)).as_uri() if prefix == "file:" else prefix + absolute(path)
        )
    return dataclasses.replace(tracking, tensorboard=tb, mlflow=ml)


#: user name and password taken out of tracking URIs, by the URI without them: this process's
#: memory only (never a config, a run folder or a log)
_CREDENTIALS: dict[str, tuple[str, str | None]] = {}


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user:password, user, password)``, by parsing (a password may hold ``@``)."""
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri, None, None
    if "@" not in parts.netloc:
        return uri, None, None
    netloc = parts.netloc.rpartition("@")[2]
    return (
        parts._replace(netloc=netloc).geturl(),
        unquote(parts.username or ""),
        None if parts.password is None else unquote(parts.password),
    )


def _without_credentials(uri: str) -> str:
    """``uri`` with any user:password removed and kept in memory for :func:`tracking_credentials`."""
    clean, user, password = split_credentials(uri)
    if user is None:
        return uri
    if clean not in _CREDENTIALS:
        import logging

        instead = (
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead of writing them in the URI"
            if clean.startswith(("http:", "https:"))
            else "a later command on the run needs them again"
        )
        logging.getLogger(__name__).warning(
            "`tracking.mlflow.uri`: the user name and password in %s are used by "
            "this process only and saved nowhere; %s",
            clean,
            instead,
        )
    _CREDENTIALS[clean] = (user, password)
    return clean


def tracking_credentials(uri: str) -> tuple[str, str | None] | None:
    """``(user, password)`` that were taken out of ``uri`` when its config was read, or None."""
    return _CREDENTIALS.get(uri)


def config_from_params(params: dict, source: str = "BaggedEnsemble") -> Config:
    """Check an estimator's constructor arguments with the config schema (the same checks
    and messages as a YAML file); ``members`` etc. may be config objects or mappings."""
    raw = {k: to_dict(v) for k, v in params.items() if v is not None}
    raw["members"] = list(raw.get("members") or [])
    raw["plugins"] = list(raw.get("plugins") or [])
    raw["data"] = {"train": "<in memory>"}
    return config_from_dict(raw, source=source)


def check_against_classes(cfg: "Config", classes: list[str], source: str) -> None:
    """Checks that need the data's classes: member names, the cost matrix's size."""
    check_member_names(cfg.members, classes, source)
    costs = cfg.decision.costs
    if costs is not None and len(costs) != len(classes):
        raise ConfigError(
            f"{source}: `decision.costs` must be {len(classes)} x {len(classes)} "
            f"(classes {', '.join(classes)}); got {len(costs)} x {len(costs[0])}"
        )


def check_member_names(members: list, classes: list[str], source: str) -> None:
    """Refuse a member named like a class: one name would mean two things in reports and outputs."""
    for i, m in enumerate(members):
        if m.name in classes:
            raise ConfigError(f"{source}: `members.{i}.name` {m.name!r} is also a class name; rename the member")


def data_inputs(cfg: Config) -> list[str]:
    """The folders and manifests a config's splits are read from, and its exclude and relabel
    lists (outputs must stay out of them)."""
    srcs = (cfg.data.train, cfg.data.val, cfg.data.test)
    return [str(s.folder or s.csv) for s in srcs if s is not None] + [
        f for f in (cfg.data.exclude, cfg.data.relabel) if f
    ]


def flat_keys(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A config mapping as dotted key paths (list items of mappings by index): what ``--set``
    takes, and what trackers log as parameters."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flat_keys(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(flat_keys(v, f"{prefix}.{i}"))
        return out
    return {prefix: obj}


def config_to_dict(cfg: Config) -> dict:
    """The resolved config as plain data, splits written in their shortest form."""
    out = to_dict(cfg)
    for name in ("train", "val", "test"):
        split = out["data"][name]
        if split is None:
            continue
        if split["folder"] is not None:
            out["data"][name] = split["folder"]
        elif split["path_column"] == "path" and split["label_column"] == "label":
            out["data"][name] = split["csv"]
        else:
            out["data"][name] = {k: v for k, v in split.items() if k != "folder"}
    return out


def dump_config(cfg: Config) -> str:
    """YAML text of the resolved config (loads back to an equal config)."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False)
