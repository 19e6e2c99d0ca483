"""BaggedEnsemble: the scikit-learn-style Python face of effens.

    ens = BaggedEnsemble(members=[{"name": "a", "model": "tf_efficientnet_lite0"}, ...], seed=0)
    ens.fit(train_paths, train_labels, X_val=val_paths, y_val=val_labels)
    proba = ens.predict_proba(new_paths)                 # the combiner's strategy
    proba = ens.predict_proba(new_paths, strategy="stacking")

Constructor arguments are stored as given and validated in :meth:`fit` by the same
schema, checks and messages as a YAML config (one schema, two doors); fitted state ends
in an underscore; ``get_params``/``set_params`` follow scikit-learn's protocol
(:mod:`ensemble.params`), so ``sklearn.base.clone`` works. Images are file paths or decoded RGB uint8 arrays
(:func:`ensemble.images.decode_all`). The estimator fits in memory: it reads the image
files it is given and, for a runtime that reads ONNX without a run folder, exports members
to a per-process temporary folder, and writes nothing else; give ``fit`` a ``store`` (a :class:`ensemble.runfolder.RunFolder`) to
save each member as it finishes and to resume, and use
:func:`ensemble.runfolder.load_run` for a saved run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from members.schema import to_dict

from .bagging import draw_all, oob_indices
from .combining.pool import candidate_specs, member_candidates, member_of
from .combining.strategies import FitData, fit_combiner
from .files import sha256_json
from .params import ParamsMixin
from .reporting.evaluation import oob_report, oob_score

if TYPE_CHECKING:  # torch, timm and the training stack load only when a network runs here
    from pathlib import Path

    import torch

    from members.precision import Precision

    from .member_jobs import TrainingData

log = logging.getLogger(__name__)


class FittedMember:
    """A trained member ready for inference: its name, how it sees images (``inputs``, a
    :class:`members.inputs.InputConfig`), member.json (``meta``) and its torch ``model``,
    built on first use from ``model`` or ``build`` (so a member served by an exported
    runtime never loads torch or timm)."""

    def __init__(
        self,
        name: str,
        model: "torch.nn.Module | None",
        inputs,
        meta: dict,
        build: Callable[[], "torch.nn.Module"] | None = None,
    ) -> None:
        if model is None and build is None:
            raise ValueError("FittedMember needs a model or a function that builds it")
        self.name, self.inputs, self.meta = name, inputs, meta
        self._model, self._build = model, build

    @property
    def model(self) -> "torch.nn.Module":
        if self._model is None:
            assert self._build is not None  # __init__ takes a model or a builder
            self._model = self._build()
        return self._model

    @model.setter
    def model(self, value: "torch.nn.Module") -> None:
        self._model = value

    def __repr__(self) -> str:
        return f"FittedMember({self.name!r}, {'loaded' if self._model is not None else 'not loaded'})"


def _unchanged(before: dict, now: dict) -> bool:
    """Whether constructor arguments equal a copy taken earlier (arrays, which compare
    element-wise, count as changed)."""
    try:
        return bool(before == now)
    except (ValueError, TypeError):
        return False


def images_fingerprint(paths: Sequence[str], labels: Sequence) -> str:
    """Identifies a labelled image set by its paths, labels and file contents (SHA-256 of
    each file), so that pixels replaced in place are never mistaken for the old ones."""
    from .files import file_digest

    return sha256_json([list(map(str, paths)), [str(v) for v in labels], [file_digest(str(p)) for p in paths]])


class BaggedEnsemble(ParamsMixin):
    """Bagged ensemble of heterogeneous timm members with a voting combiner.

    Parameters
    ----------
    members : list of MemberConfig or of mappings
        One entry per member (name, model, weights, image size, bagging, training), as
        under ``members:`` in a YAML config.
    combiner : CombinerConfig, mapping or None
        Default strategy, weights, stacking and calibration settings (None = defaults:
        soft voting, learned weights and a stacking meta-learner fitted on OOB).
    seed : int
        Seeds bagging, initialisation and augmentation.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    parallel : ParallelConfig, mapping or None
        Backend (sequential, loky, ray, dask), jobs at once, cluster address, threads.
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` for members whose own ``precision`` is
        unset (training and inference; :mod:`members.precision`).
    runtime : str
        Inference runtime of :meth:`member_proba`: ``auto`` (OpenVINO on CPU when
        installed), ``torch``, ``openvino`` or ``onnxruntime`` (:mod:`members.runtimes`).
        Training always evaluates with torch.
    plugins : list of str
        Modules or ``.py`` files registering your own strategies, views, runtimes, weights
        sources or figures (:mod:`ensemble.plugins`), imported before the arguments are
        checked and again in every worker process.

    Attributes
    ----------
    classes_, members_, samples_, oob_indices_, oob_proba_, val_proba_, combiner_
        Fitted state (``members_``: :class:`FittedMember`; ``combiner_``:
        :class:`ensemble.combining.strategies.Combiner`).
    candidates_ : list of FittedMember
        The members' pool candidates (``members.N.candidates``, :mod:`ensemble.combining.pool`), whose
        rows follow the members' in ``samples_``, ``oob_indices_``, ``oob_proba_`` and
        ``val_proba_``; only a pool strategy (``greedy``) combines them.
    oob_score_ : float
        Out-of-bag macro-F1 of the default strategy: each training image voted on only
        by the members that left it out (nan when every member saw every image).
    oob_report_ : dict
        Every member's and strategy's OOB metrics (:func:`ensemble.reporting.evaluation.oob_report`).
    """

    #: set by :func:`ensemble.runfolder.load_run` on a run read from its folder: the folder and its caches
    run_dir_: str
    onnx_cache_: Callable[[FittedMember], Path]
    compiled_cache_: Callable[..., Path | None]

    def __init__(
        self,
        members: Sequence = (),
        combiner=None,
        seed: int = 0,
        device: str = "auto",
        parallel=None,
        precision: str = "auto",
        runtime: str = "auto",
        plugins: Sequence[str] = (),
    ) -> None:
        self.members = members
        self.combiner = combiner
        self.seed = seed
        self.device = device
        self.parallel = parallel
        self.precision = precision
        self.runtime = runtime
        self.plugins = plugins

    @classmethod
    def from_config(cls, cfg) -> "BaggedEnsemble":
        """The estimator of a checked :class:`~ensemble.config.Config` (from
        :func:`~ensemble.config.load_config` or :func:`~ensemble.config.config_from_dict`):
        :meth:`fit` takes it as it is, without checking it (or loading its plugins) again."""
        ens = cls(
            cfg.members, cfg.combiner, cfg.seed, cfg.device, cfg.parallel, cfg.precision, cfg.runtime, cfg.plugins
        )
        ens._checked = (copy.deepcopy(ens.get_params(deep=False)), cfg)
        return ens

    # ------------------------------------------------------------------ params
    def validated_config(self):
        """The constructor arguments checked by the config schema -> :class:`~ensemble.config.Config`;
        checked once while they stay as they were (``set_params`` or an edit in place checks them again)."""
        from .config import config_from_params

        params = self.get_params(deep=False)
        checked = getattr(self, "_checked", None)
        if checked is not None and _unchanged(checked[0], params):
            return checked[1]
        cfg = config_from_params(params)
        self._checked = (copy.deepcopy(params), cfg)
        return cfg

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: Sequence,
        y: Sequence | np.ndarray,
        *,
        X_val: Sequence,
        y_val: Sequence | np.ndarray,
        classes: Sequence[str] | None = None,
        store=None,
        data_fingerprint: str | None = None,
        teacher=None,
        unlabelled: Sequence = (),
    ) -> "BaggedEnsemble":
        """Draw each member's sample, train the members, fit the combiner, score OOB.

        ``X``/``X_val``: image paths or decoded RGB uint8 arrays; ``y``/``y_val``: class
        names, or indices into ``classes`` (default: the sorted distinct labels). The
        validation images choose each member's best epoch and fit calibration. With
        ``store``, each member is saved as it finishes and one already finished with the
        same settings and data is loaded instead of retrained. ``teacher`` (a
        :class:`members.trainer.Teacher`) distils it into the members (``effens distill``):
        each training step also matches what the teacher says of its batch, and the
        ``unlabelled`` images (paths or arrays) are taught by the teacher alone; give a
        ``data_fingerprint`` that names the teacher, so that resuming never mixes two.
        """
        cfg = self.validated_config()
        classes, y, y_val = _encode_labels(y, y_val, classes)
        specs = with_precision(cfg.members, cfg.precision)
        images, val_images = _decoded(X, specs, "X"), _decoded(X_val, specs, "X_val")
        if data_fingerprint is None:
            data_fingerprint = sha256_json([_fingerprint_part(X), _fingerprint_part(X_val), y.tolist(), y_val.tolist()])
        samples = draw_all(y, [m.bagging for m in specs], cfg.seed)
        prints = [
            member_fingerprint(spec, classes, samples[i], data_fingerprint, cfg.seed) for i, spec in enumerate(specs)
        ]
        from .member_jobs import TrainingData

        unlabelled = _decoded(unlabelled, specs, "unlabelled") if len(unlabelled) else []
        results = self._fit_members(
            cfg, specs, samples, prints, TrainingData(images, y, val_images, y_val, classes, unlabelled, teacher), store
        )
        self.specs_ = specs
        members = [
            FittedMember(spec.name, *restore_member(spec, r["meta"], r["state_dict"]), r["meta"])
            for spec, r in zip(specs, results)
        ]
        made = [c for r in results for c in r.get("candidates", [])]
        cands = [
            FittedMember(cs.name, *restore_member(cs, c["meta"], c["state_dict"]), c["meta"])
            for cs, c in zip(candidate_specs(specs), made, strict=True)
        ]
        self._set_fitted(
            classes,
            members,
            samples + [c["arrays"]["samples"] for c in made],
            [r["arrays"]["oob_proba"] for r in results + made],
            y,
            None,
            y_val,
            val_images=val_images,
            candidates=cands,
        )
        return self

    def _fit_members(
        self, cfg, specs: list, samples: list, prints: list[str], data: "TrainingData", store
    ) -> list[dict]:
        """Each member's result, from ``store`` when already finished, else trained (joblib jobs)."""
        from .member_jobs import MemberJob, fit_member
        from .parallel import plan_jobs, run_jobs

        found = {i: _finished(store, spec, prints[i]) for i, spec in enumerate(specs)} if store is not None else {}
        done = {i: got for i, got in found.items() if got is not None}
        for i in done:
            log.info("member %s already finished in %s: reusing it", specs[i].name, store.root)
        todo = [i for i in range(len(specs)) if i not in done]
        par = cfg.parallel
        plan = plan_jobs(len(todo), par.n_jobs, cfg.device, par.threads_per_job)
        if todo:
            log.info("training %d member(s) on %s: %s", len(todo), par.backend, plan.describe())
        threads = plan.threads if plan.n_jobs > 1 or par.threads_per_job else None
        jobs = [
            (
                specs[i].name,
                dict(
                    job=MemberJob(
                        i,
                        specs[i],
                        cfg.seed,
                        samples[i],
                        oob_indices(len(data.y), samples[i]),
                        prints[i],
                        plan.devices[k],
                        threads,
                        tuple(cfg.plugins),
                    ),
                    data=data,
                    store=store,
                ),
            )
            for k, i in enumerate(todo)
        ]
        trained = dict(zip(todo, run_jobs(fit_member, jobs, par.backend, plan.n_jobs, plan.threads, par.address)))
        return [done[i] if i in done else trained[i] for i in range(len(specs))]

    def _set_fitted(
        self,
        classes: list[str],
        members: list[FittedMember],
        samples: list[np.ndarray],
        oob_proba: list[np.ndarray],
        y_train: np.ndarray,
        val_proba: np.ndarray | None,
        val_y: np.ndarray,
        combiner=None,
        val_images=None,
        candidates: Sequence[FittedMember] = (),
    ) -> None:
        """Fitted state from trained members (and their pool candidates: ``samples``,
        ``oob_proba`` and ``val_proba`` hold the members' rows, then the candidates');
        fits the combiner unless one is given."""
        self.classes_ = list(classes)
        self.members_ = members
        self.candidates_ = list(candidates)
        self.samples_ = samples
        self.oob_indices_ = [oob_indices(len(y_train), s) for s in samples]
        self.oob_proba_ = [np.asarray(p, dtype=np.float64) for p in oob_proba]
        self.y_train_ = np.asarray(y_train, dtype=np.int64)
        self.val_y_ = np.asarray(val_y, dtype=np.int64)
        self.val_proba_ = (
            val_proba if val_proba is not None else self.member_proba(val_images, runtime="torch", pool=True)
        )
        if combiner is None:
            self.refit_combiner(self.validated_config().combiner)
        else:
            self.combiner_ = combiner
            self._score_oob()

    def refit_combiner(self, combiner_cfg=None) -> "BaggedEnsemble":
        """Fit weights, stacking and temperatures from stored probabilities (no network runs)."""
        from .config import CombinerConfig

        self._check_fitted()
        data = FitData.from_oob_lists(self.val_proba_, self.val_y_, self.oob_indices_, self.oob_proba_, self.y_train_)
        self.combiner_ = fit_combiner(
            combiner_cfg if combiner_cfg is not None else CombinerConfig(),
            [fm.name for fm in self.members_],
            self.classes_,
            data,
            self.seed,
            candidate_names=[fm.name for fm in self.candidates_],
        )
        self._score_oob()
        return self

    def _score_oob(self) -> None:
        self.oob_report_ = oob_report(self.combiner_, self.y_train_, self.oob_indices_, self.oob_proba_)
        self.oob_score_ = oob_score(self.oob_report_, self.combiner_.strategy)

    def _specs(self) -> list:
        if hasattr(self, "specs_"):
            return self.specs_
        cfg = self.validated_config()
        return with_precision(cfg.members, cfg.precision)

    def pool_rows(self) -> list[tuple[FittedMember, Any]]:
        """(fitted member, spec) of every pool row: the members, then their candidates (:mod:`ensemble.combining.pool`)."""
        specs = self._specs()
        return list(zip(self.members_, specs)) + list(zip(getattr(self, "candidates_", []), candidate_specs(specs)))

    # ------------------------------------------------------------------ inference
    def member_proba(
        self,
        X: Sequence,
        batch_size: int | None = None,
        tta: bool = False,
        device: str | None = None,
        runtime: str | None = None,
        precision: str | None = None,
        adapt_bn: bool = False,
        used: np.ndarray | Sequence[bool] | None = None,
        pool: bool = False,
    ) -> np.ndarray:
        """Probabilities of every member, shape (members, samples, classes); with ``pool``,
        of the members and then their pool candidates (:mod:`ensemble.combining.pool`).

        ``runtime`` and ``precision`` default to the ensemble's (and each member's own
        precision); a runtime is compiled once per member and reused by later calls.
        ``tta``: ``True``/``"flip"`` averages with the mirror image; a list or comma-separated
        names of views (:mod:`members.views`) averages over those views instead of the
        member's own (``"crop,letterbox,flip"``: both views and their mirrors).
        ``adapt_bn`` re-estimates each member's BatchNorm statistics on ``X`` first, on a
        copy (:mod:`members.adapt`; runs on the torch runtime). ``used`` (one bool per
        member): run only these; the others' rows are zeros (for a strategy that gives them
        no weight, :meth:`Combiner.uses`; with ``pool``, one bool per pool row).
        """
        from members.inputs import resolve_device
        from members.runtimes import runtime_proba
        from members.views import eval_array, parse_tta

        self._check_fitted()
        try:
            names = parse_tta(tta)
        except ValueError as exc:
            from .config import ConfigError

            raise ConfigError(f"--tta: {exc}") from None
        views, flip = [v for v in names if v != "flip"], "flip" in names
        if adapt_bn and len(X) < 2:
            log.warning(
                "--adapt-bn needs at least 2 images to re-estimate BatchNorm statistics; got %d: "
                "predicting with the trained statistics",
                len(X),
            )
            adapt_bn = False
        elif adapt_bn and len(X) < 8:
            log.warning(
                "--adapt-bn re-estimates BatchNorm statistics on the %d image(s) given: that few give "
                "noisy statistics; predict a batch of at least a few dozen photos together",
                len(X),
            )
        rows = self.pool_rows() if pool else list(zip(self.members_, self._specs()))
        if not len(X):  # no images (an empty val with `data.train_on_val`): nothing to run
            return np.zeros((len(rows), 0, len(self.classes_)))
        own_view = {fm.name: fm.inputs.view for fm in self.members_}
        images = _decoded(X, self._specs(), "X", [fm.inputs for fm, _ in rows])
        dev = resolve_device(str(device or self.device))
        out = []
        for j, (fm, spec) in enumerate(rows):
            if used is not None and not used[j]:
                out.append(np.zeros((len(images), len(self.classes_))))
                continue
            rt = (
                self._adapted_runtime(j, images, precision, dev)
                if adapt_bn
                else self._runtime(j, runtime, precision, dev)
            )
            # a pool candidate that is its member under another view keeps that view under view TTA
            own = views if fm.inputs.view == own_view.get(member_of(fm.name), fm.inputs.view) else []
            seen = [
                runtime_proba(
                    rt,
                    eval_array(images, dataclasses.replace(fm.inputs, view=v) if v else fm.inputs),
                    batch_size or spec.train.eval_batch_size,
                    tta=flip,
                )
                for v in (own if own else [None])
            ]
            out.append(seen[0] if len(seen) == 1 else np.mean(seen, axis=0))
        return np.stack(out)

    def inference_plan(
        self, runtime: str | None = None, precision: str | None = None, device=None
    ) -> list[tuple[str, Precision]]:
        """(runtime name, resolved Precision) each pool row (members, then candidates) infers with."""
        from members.inputs import resolve_device
        from members.precision import inference_precision
        from members.runtimes import resolve_runtime, runtime_precision

        dev = resolve_device(str(device) if device is not None else self.device)
        name = resolve_runtime(runtime or self.runtime, dev)
        return [
            (
                name,
                runtime_precision(
                    name, inference_precision(precision or spec.precision, fm.meta.get("precision"), dev)
                ),
            )
            for fm, spec in self.pool_rows()
        ]

    def member_runtime(self, index: int, device=None, runtime: str | None = None):
        """Pool row ``index``'s network as ``predict`` runs it here, compiled once (``runtime``:
        default the run's; ``auto``: the fastest installed for the device), with the run's
        precision: ``.run(uint8 (N, 3, S, S)) -> probabilities``."""
        from members.inputs import resolve_device

        dev = resolve_device(str(device if device is not None else self.device))
        return self._runtime(index, runtime, None, dev)

    def _runtime(self, index: int, runtime: str | None, precision: str | None, device: str):
        """Member ``index``'s compiled runtime, made on first use (see :mod:`members.runtimes`)."""
        from members.runtimes import create_runtime

        name, prec = self.inference_plan(runtime, precision, device)[index]
        key = (index, name, prec.name, str(device))
        cache = self.__dict__.setdefault("_runtimes", {})
        if key not in cache:
            from members.runtimes import RUNTIMES

            fm = self.pool_rows()[index][0]
            log.info("member %s: inference on %s, %s (%s)", fm.name, name, prec.name, prec.reason)
            onnx = self._onnx_file(index) if RUNTIMES[name].needs_onnx else None
            compiled = getattr(self, "compiled_cache_", None)
            cache[key] = create_runtime(
                name,
                lambda: fm.model,
                fm.inputs,
                device,
                prec,
                onnx_path=lambda: onnx,
                cache_dir=compiled(onnx) if compiled is not None and onnx else None,
            )
        return cache[key]

    def _adapted_runtime(self, index: int, images: Sequence[np.ndarray], precision: str | None, device):
        """Member ``index`` with BatchNorm statistics re-estimated on ``images`` (a copy, torch runtime)."""
        from members.adapt import adapt_batchnorm
        from members.runtimes import create_runtime
        from members.transforms import eval_tensor

        fm, spec = self.pool_rows()[index]
        _, prec = self.inference_plan("torch", precision, device)[index]
        model = adapt_batchnorm(fm.model, eval_tensor(images, fm.inputs), fm.inputs, spec.train.eval_batch_size, device)
        log.info("member %s: BatchNorm statistics re-estimated on %d images (a copy)", fm.name, len(images))
        return create_runtime("torch", lambda: model, fm.inputs, device, prec, onnx_path=lambda: None)

    def _onnx_file(self, index: int):
        """The member's runtime ONNX file: the run folder's cache (``onnx_cache_``, set by
        :func:`ensemble.runfolder.load_run`), else a per-process temporary export."""
        fm = self.pool_rows()[index][0]
        cache = getattr(self, "onnx_cache_", None)
        if cache is not None:
            return cache(fm)
        from members.export import temporary_onnx

        return temporary_onnx(fm.model, fm.inputs, fm.name, owner=id(self))

    def predict_proba(self, X: Sequence, strategy: str | None = None, **kwargs) -> np.ndarray:
        """Ensemble probabilities (vote shares for ``hard``), shape (samples, classes)."""
        return self._combined(X, strategy, kwargs)[1]

    def predict(self, X: Sequence, strategy: str | None = None, **kwargs) -> np.ndarray:
        """Predicted class indices (``classes_[i]`` names them)."""
        return self._combined(X, strategy, kwargs)[0]

    def _combined(self, X: Sequence, strategy: str | None, kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, probabilities) of ``strategy``, running only the members and pool
        candidates it gives weight to."""
        self._check_fitted()
        comb = self.combiner_
        used = comb.uses(strategy)[: len(comb.names(strategy))]
        return comb.apply(self.member_proba(X, pool=comb.pooled(strategy), used=used, **kwargs), strategy)

    def _check_fitted(self) -> None:
        if not hasattr(self, "members_"):
            raise RuntimeError("this BaggedEnsemble is not fitted yet; call fit() or ensemble.runfolder.load_run()")


def member_fingerprint(spec, classes: Sequence[str], sample: np.ndarray, data_fingerprint: str, seed: int) -> str:
    """What a finished member or its checkpoint is valid for: its settings (precision filled in),
    classes, sample, data and seed; pool candidates are kept from its training, not a change to it."""
    return sha256_json(
        {
            "spec": {k: v for k, v in to_dict(spec).items() if k != "candidates"},
            "classes": list(classes),
            "sample": np.asarray(sample).tolist(),
            "data": data_fingerprint,
            "seed": seed,
        }
    )


def _finished(store, spec, fingerprint: str) -> dict | None:
    """A member finished in ``store`` with this fingerprint, with every pool candidate its spec
    declares (loaded beside it); None when the member or one of them is missing."""
    got = store.finished_member(spec.name, fingerprint)
    if got is None:
        return None
    cands = [store.finished_member(c.name, fingerprint) for c in member_candidates(spec)]
    if any(c is None for c in cands):
        log.info("member %s finished without all its pool candidates: training it again to keep them", spec.name)
        for name in [spec.name, *(c.name for c in member_candidates(spec))]:
            store.unfinish_member(name)
        return None
    return dict(got, candidates=cands)


def decode_size(ens: "BaggedEnsemble") -> int:
    """Shorter side to decode at: the largest resize any member needs."""
    return max(fm.inputs.resize_size for fm, _ in ens.pool_rows())


def with_precision(members: Sequence, precision: str) -> list:
    """Member specs with the ensemble's precision filled in where a member has none."""
    return [spec if spec.precision else dataclasses.replace(spec, precision=precision) for spec in members]


def restore_member(spec, meta: dict, state: dict) -> "tuple[torch.nn.Module, object]":
    """(model, inputs) of a trained member from its weights and member.json (via ``create_member``)."""
    from members.models import create_member

    member = create_member(spec, meta["num_classes"], state=state, inputs=meta["inputs"])
    return member.model, member.inputs


def _encode_labels(
    y: Sequence | np.ndarray, y_val: Sequence | np.ndarray, classes: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names and both label arrays as indices into them."""
    from .config import ConfigError

    y, y_val = np.asarray(y), np.asarray(y_val)
    if classes is None:
        if y.dtype.kind in "iu":
            raise ConfigError("BaggedEnsemble.fit: integer labels need `classes` (the name of each index)")
        classes = sorted(set(map(str, y.tolist())))
    classes = list(map(str, classes))

    def encode(labels: np.ndarray, what: str) -> np.ndarray:
        if labels.dtype.kind in "iu":
            bad = labels[(labels < 0) | (labels >= len(classes))]
        else:
            index = {c: i for i, c in enumerate(classes)}
            unknown = sorted({str(v) for v in labels.tolist()} - set(index))
            if unknown:
                raise ConfigError(f"BaggedEnsemble.fit: `{what}` holds labels not in classes: {', '.join(unknown[:5])}")
            labels = np.asarray([index[str(v)] for v in labels.tolist()], dtype=np.int64)
            bad = labels[:0]
        if len(bad):
            raise ConfigError(f"BaggedEnsemble.fit: `{what}` holds class indices outside 0..{len(classes) - 1}")
        return labels.astype(np.int64)

    return classes, encode(y, "y"), encode(y_val, "y_val")


def _fingerprint_part(X: Sequence) -> Any:
    """Paths as they are; arrays by a hash of their bytes."""
    import hashlib

    return [
        x if isinstance(x, str) else hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
        for x in (str(v) if _is_path(v) else v for v in X)
    ]


def _is_path(x: Any) -> bool:
    import os

    return isinstance(x, (str, os.PathLike))


def _decoded(X: Sequence, specs: Sequence, what: str, inputs: Sequence | None = None) -> list[np.ndarray]:
    """Images as decoded arrays: paths are decoded at the largest size any member needs."""
    X = list(X)
    if not any(_is_path(x) for x in X):
        return X
    if not all(_is_path(x) for x in X):
        from .config import ConfigError

        raise ConfigError(f"BaggedEnsemble: `{what}` mixes file paths and arrays; give one kind")
    from .images import decode_all

    if inputs is None:
        from members.models import input_config

        inputs = [input_config(s.model, s.image_size) for s in specs]
    size = max(i.resize_size for i in inputs)
    arrays, _ = decode_all([str(x) if _is_path(x) else x for x in X], size, on_bad="error", desc=f"decode {what}")
    return [a for a in arrays if a is not None]  # on_bad="error": every one was read
