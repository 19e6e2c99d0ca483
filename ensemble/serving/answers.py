"""What ``predict`` (and ``serve``) answer for an image: the ensemble's class, its
probabilities, each member's vote, and when asked a prediction set and a review decision.

:class:`ImagePredictor` sets this up once per run (strategy, members used, calibration of
the decisions) and then answers batches of decoded images; the commands only decode and write.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterator, Sequence

import numpy as np

from ..estimator import BaggedEnsemble, decode_size

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How member probabilities are computed (defaults: the run's); ``predict`` and
    ``evaluate`` take one of these instead of five separate arguments."""

    batch_size: int | None = None  # images per inference step (default: each member's)
    device: str | None = None  # auto, cpu, cuda, cuda:N
    tta: bool | str = False  # True/"flip": with the mirror; "crop,letterbox,flip": over views
    runtime: str | None = None  # torch, openvino, onnxruntime, auto
    precision: str | None = None  # auto, fp32, bf16, fp16
    adapt_bn: bool = False  # re-estimate BatchNorm statistics on the images being predicted

    def member_proba(
        self,
        ens: BaggedEnsemble,
        images: Sequence[np.ndarray],
        used: np.ndarray | Sequence[bool] | None = None,
        pool: bool = False,
    ) -> np.ndarray:
        return ens.member_proba(images, **dataclasses.asdict(self), used=used, pool=pool)

    def plan(self, ens: BaggedEnsemble) -> dict:
        """The runtime and precision each member resolves to here (part of cache keys)."""
        plan = ens.inference_plan("torch" if self.adapt_bn else self.runtime, self.precision, self.device)
        return {"runtime": plan[0][0], "precision": [p.name for _, p in plan], "adapt_bn": self.adapt_bn}


@dataclasses.dataclass(frozen=True)
class DecisionOptions:
    """What ``predict`` adds to each row (defaults: the run's ``decision:`` settings)."""

    coverage: float | None = None  # a prediction set holding the truth this often
    by_class: bool = False  # ... within every class
    review_rate: float | None = None  # send this share of the least confident images to review
    target_accuracy: float | None = None  # ... or as many as needed for this accuracy on the rest
    costs: list | None = None  # true x predicted; predictions minimise the expected cost
    calibration: str = "val"

    @classmethod
    def from_settings(
        cls,
        settings,
        coverage: float | None = None,
        by_class: bool | None = None,
        review_rate: float | None = None,
        target_accuracy: float | None = None,
    ) -> "DecisionOptions":
        """The run's ``decision:`` settings with command-line values on top."""
        from ..combining.decisions import DecisionError

        if review_rate is not None and target_accuracy is not None:
            raise DecisionError("give one of --review-rate or --target-accuracy, not both")
        if review_rate is None and target_accuracy is None:
            review_rate, target_accuracy = settings.review_rate, settings.target_accuracy
        if by_class and coverage is None and settings.coverage is None:
            raise DecisionError("--coverage-by-class needs --coverage (or `decision.coverage` in the run's config)")
        checks = {f.name: f.metadata["check"] for f in dataclasses.fields(type(settings))}
        for flag, key, value in (
            ("--coverage", "coverage", coverage),
            ("--review-rate", "review_rate", review_rate),
            ("--target-accuracy", "target_accuracy", target_accuracy),
        ):
            # NaN passes every range check; then the config schema's own bounds for these keys
            problem = (
                "must be a finite number" if value is not None and not math.isfinite(value) else checks[key](value)
            )
            if problem:
                raise DecisionError(f"`{flag}` {problem}; got {value}")
        return cls(
            coverage if coverage is not None else settings.coverage,
            settings.coverage_by_class if by_class is None else by_class,
            review_rate,
            target_accuracy,
            settings.costs,
            settings.calibration,
        )

    def columns(self) -> list[str]:
        return (["prediction_set"] if self.coverage else []) + (
            ["decision"] if self.review_rate is not None or self.target_accuracy is not None else []
        )


class ImagePredictor:
    """A run ready to answer: :meth:`rows` for decoded images (``None`` where decoding failed)."""

    def __init__(
        self,
        ens: BaggedEnsemble,
        strategy: str | None = None,
        options: InferenceOptions = InferenceOptions(),
        decisions: DecisionOptions = DecisionOptions(),
    ) -> None:
        from ..combining.decisions import Decider
        from ..reporting.evaluation import calibration_set

        self.ens, self.strategy, self.options, self.decisions = ens, strategy, options, decisions
        self.classes = list(ens.classes_)
        self.names = [fm.name for fm in ens.members_]
        self.size = decode_size(ens)
        self.decider = Decider(*calibration_set(ens, strategy, decisions.calibration), decisions.costs, self.classes)
        self.review = "decision" in decisions.columns()
        # members (and pool candidates) the strategy gives no weight are not run
        comb = ens.combiner_
        self.pool = comb.pooled(strategy)
        rows = comb.names(strategy)
        self.used = comb.uses(strategy)[: len(rows)]
        if not self.used.all():
            log.info(
                "strategy %s uses %s: the others are not run",
                strategy or comb.strategy,
                ", ".join(n for n, u in zip(rows, self.used) if u),
            )
        self.threshold = self.check(decisions)

    def check(self, decisions: DecisionOptions) -> float | None:
        """Fit ``decisions`` on the calibration images now, not on the first image: a
        :class:`~ensemble.combining.decisions.DecisionError` when they cannot be made (too few
        calibration images for the coverage); the review threshold, if one is asked for."""
        if decisions.coverage:
            self.decider.sets(self.decider.cal_proba[:1], decisions.coverage, decisions.by_class)
        if "decision" not in decisions.columns():
            return None
        return self.decider.review_threshold(decisions.review_rate, decisions.target_accuracy)

    def _decided(
        self, proba: np.ndarray, decisions: DecisionOptions, threshold: float | None
    ) -> tuple[np.ndarray, dict[str, list[str]]]:
        """(predictions, decision column -> one value per image) for ensemble probabilities."""
        from ..combining.decisions import confidence

        pred = self.decider.predict(proba)
        columns: dict[str, list[str]] = {}
        if decisions.coverage:
            sets = self.decider.sets(proba, decisions.coverage, decisions.by_class)
            columns["prediction_set"] = ["|".join(c for j, c in enumerate(self.classes) if row[j]) for row in sets]
        if "decision" in decisions.columns():
            conf = confidence(proba)
            columns["decision"] = [
                "review" if conf[k] < threshold else self.classes[pred[k]] for k in range(len(proba))
            ]
        return pred, columns

    def _row(
        self, key: str, name: str, prediction: str, decided: dict[str, str], proba: dict, votes: dict, error: str
    ) -> dict:
        return {key: name, "prediction": prediction, **decided, "proba": proba, "votes": votes, "error": error}

    def redecide(self, rows: list[dict], decisions: DecisionOptions) -> list[dict]:
        """``rows`` with their prediction set and review decision made anew under ``decisions``
        (a request's own coverage or review rate), from each row's probabilities."""
        ok = [i for i, r in enumerate(rows) if not r["error"]]
        blank = {c: "" for c in decisions.columns()}
        decided: dict[int, dict[str, str]] = {}
        if ok:
            proba = np.array([[rows[i]["proba"][c] for c in self.classes] for i in ok], dtype=np.float64)
            _, columns = self._decided(proba, decisions, self.check(decisions))
            decided = {i: {c: v[k] for c, v in columns.items()} for k, i in enumerate(ok)}
        key = next(iter(rows[0])) if rows else "path"
        return [
            self._row(key, r[key], r["prediction"], decided.get(i, blank), r["proba"], r["votes"], r["error"])
            for i, r in enumerate(rows)
        ]

    def rows(
        self, keys: Sequence[str], arrays: Sequence[np.ndarray | None], reasons: dict[str, str], key: str = "path"
    ) -> list[dict]:
        """One row per image, in order: ``key`` (the image's path or file name), prediction,
        the decision columns asked for, ``proba`` per class, ``votes`` per member, ``error``."""
        classes, names, used = self.classes, self.names, self.used
        ok = [i for i, a in enumerate(arrays) if a is not None]
        if ok:
            member_proba = self.options.member_proba(self.ens, [a for a in arrays if a is not None], used, self.pool)
            _, proba = self.ens.combiner_.apply(member_proba, self.strategy)
            pred, columns = self._decided(proba, self.decisions, self.threshold)
            member_pred = member_proba.argmax(axis=2)
        results = {i: k for k, i in enumerate(ok)}
        blank = {c: "" for c in self.decisions.columns()}
        rows: list[dict] = []
        for i, name in enumerate(keys):
            if i in results:
                k = results[i]
                rows.append(
                    self._row(
                        key,
                        name,
                        classes[pred[k]],
                        {c: v[k] for c, v in columns.items()},
                        {c: float(proba[k, j]) for j, c in enumerate(classes)},
                        {n: classes[member_pred[m, k]] if used[m] else "" for m, n in enumerate(names)},
                        "",
                    )
                )
            else:
                rows.append(
                    self._row(
                        key,
                        name,
                        "",
                        blank,
                        {c: None for c in classes},
                        {n: "" for n in names},
                        reasons.get(name, "not found"),
                    )
                )
        return rows


def flat_row(row: dict) -> dict:
    """A CSV row: probabilities as ``proba:<class>``, votes as ``vote:<member>`` (the prefixes
    keep class and member names from ever colliding with each other or the fixed columns)."""
    out = {k: v for k, v in row.items() if k not in ("proba", "votes")}
    out.update({f"proba:{c}": v for c, v in row["proba"].items()})
    out.update({f"vote:{n}": v for n, v in row["votes"].items()})
    return out


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_rows(
    ens: BaggedEnsemble,
    paths: Sequence[str],
    strategy: str | None = None,
    options: InferenceOptions = InferenceOptions(),
    chunk: int = 256,
    decisions: DecisionOptions = DecisionOptions(),
) -> list[dict]:
    """One row per path: prediction, class probabilities, each member's prediction, error;
    with ``decisions``, a prediction set and/or a review decision (:mod:`ensemble.combining.decisions`)."""
    from ..images import decode_all  # here, not at import: `effens serve` decodes on its own

    predictor = ImagePredictor(ens, strategy, options, decisions)
    if options.adapt_bn:  # the statistics come from every image given, not from chunks of them
        chunk = max(1, len(paths))
    rows: list[dict] = []
    for part in _chunks(list(paths), chunk):
        arrays, bad = decode_all(part, predictor.size, on_bad="skip", desc="decode")
        rows += predictor.rows(part, arrays, dict(bad))
    return rows


def readable_member_proba(
    ens: BaggedEnsemble,
    paths: Sequence[str],
    options: InferenceOptions = InferenceOptions(),
    used: np.ndarray | Sequence[bool] | None = None,
    pool: bool = False,
    chunk: int = 256,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Member probabilities (members x kept images x classes) of the readable images among
    ``paths``, decoded ``chunk`` at a time so memory holds one chunk of pixels, not every
    image; also the kept indices and ``(path, reason)`` for each unreadable file."""
    from ..images import decode_all

    if options.adapt_bn:  # the statistics come from every image given, not from chunks of them
        chunk = max(1, len(paths))
    parts, keep, bad = [], [], []
    for start in range(0, len(paths), chunk):
        arrays, skipped = decode_all(paths[start : start + chunk], decode_size(ens), on_bad="skip", desc="decode")
        bad += skipped
        ok = [i for i, a in enumerate(arrays) if a is not None]
        if ok:
            parts.append(options.member_proba(ens, [a for a in arrays if a is not None], used, pool))
            keep += [start + i for i in ok]
    return (np.concatenate(parts, axis=1) if parts else np.empty((0, 0, 0))), keep, bad


def member_hashes(ens: BaggedEnsemble, pool: bool = False) -> list:
    """The weights hash of every member (with ``pool``: and of every pool candidate, with its view)."""
    from ..runfolder import weights_hash

    rows = [fm for fm, _ in ens.pool_rows()] if pool else ens.members_
    return [weights_hash(fm.meta) if fm in ens.members_ else [weights_hash(fm.meta), fm.inputs.view] for fm in rows]
