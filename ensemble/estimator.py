"""BaggedEnsemble: the scikit-learn-style Python face of effens.

    ens = BaggedEnsemble(members=cfg.members, combiner=cfg.combiner, seed=0)
    ens.fit(images, y, classes, val_images, val_y, run=RunFolder("runs/x"))
    proba = ens.predict_proba(new_images)               # the combiner's strategy
    proba = ens.predict_proba(new_images, strategy="stacking")

Constructor arguments are stored as given; all work happens in :meth:`fit`; fitted
state ends in an underscore. ``images`` are decoded RGB uint8 arrays
(:func:`ensemble.images.decode_all`), shared by every member.
"""
from __future__ import annotations

import dataclasses
import logging
import platform
from typing import Sequence

import numpy as np
import torch

from . import __version__
from .bagging import draw_all, oob_indices
from .combiner_fit import FittedCombiner, fit_combiner, impute_missing, oob_matrix
from .combiners import oob_combine
from .metrics import classification_report
from .run import RunFolder, RunError, sha256_json
from .schema import to_dict

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FittedMember:
    """A trained member ready for inference."""

    name: str
    model: torch.nn.Module
    inputs: object  # members.models.InputConfig
    meta: dict


def member_seed(seed: int, index: int) -> int:
    """Torch seed of member ``index`` (independent of the bagging stream)."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and NumPy's global generator.

    torch's drives the model's initialisation and dropout; the other two are seeded so
    that no draw in a member's job depends on what ran before it in the process
    (augmentation has its own per-item streams, :mod:`members.streams`).
    """
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def images_fingerprint(paths: Sequence[str], labels: Sequence) -> str:
    return sha256_json([list(map(str, paths)), [str(v) for v in labels]])


def _versions() -> dict:
    import timm

    return {"effens": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def fit_one_member(index: int, spec, images, y, sample, oob, val_images, classes, seed: int,
                   device, val_y, checkpoint=None):
    """Seed, build and train one member; returns (member, train result, OOB probabilities).

    The member trains and predicts in ``spec.precision`` (``auto`` when unset).
    """
    from members.models import create_member
    from members.precision import resolve_precision
    from members.predictor import predict_proba
    from members.trainer import step_probe, train_member
    from members.transforms import eval_tensor

    mseed = member_seed(seed, index)
    seed_everything(mseed)  # before the model is built: initialisation draws from it
    member = create_member(spec, len(classes))
    probe = step_probe(member, min(spec.train.batch_size, 8), member.inputs.image_size, device)
    precision = resolve_precision(spec.precision or "auto", device, probe=probe)
    del probe
    log.info("member %s: precision %s (%s)", spec.name, precision.name, precision.reason)
    val_tensor = eval_tensor(val_images, member.inputs)
    result = train_member(member, spec.train, images, y, sample, val_tensor, np.asarray(val_y),
                          len(classes), device, mseed, name=spec.name, checkpoint=checkpoint,
                          precision=precision)
    oob_tensor = eval_tensor([images[i] for i in oob], member.inputs)
    oob_proba = (predict_proba(member.model, oob_tensor, member.inputs, spec.train.eval_batch_size, device,
                               precision=precision)
                 if len(oob) else np.zeros((0, len(classes))))
    return member, result, oob_proba


def _fit_member(index: int, spec, images, y, sample, oob, val_images, val_y, classes, seed: int,
                device_name: str, run_root: str | None, fingerprint: str,
                torch_threads: int | None = None) -> dict | None:
    """Build, train and save one member; runs in-process or in a joblib worker."""
    from members.models import pick_device

    previous_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        return _fit_and_save(index, spec, images, y, sample, oob, val_images, val_y, classes, seed,
                             pick_device(device_name), run_root, fingerprint)
    finally:
        torch.set_num_threads(previous_threads)


def _fit_and_save(index: int, spec, images, y, sample, oob, val_images, val_y, classes, seed: int,
                  device, run_root: str | None, fingerprint: str) -> dict | None:
    from members.checkpoint import CheckpointStore

    checkpoint = (CheckpointStore(RunFolder(run_root).member_dir(spec.name), fingerprint)
                  if run_root is not None else None)
    member, result, oob_proba = fit_one_member(index, spec, images, y, sample, oob, val_images, classes,
                                               seed, device, val_y, checkpoint)
    mseed = member_seed(seed, index)
    meta = {
        "name": spec.name, "index": index, "architecture": spec.model, "weights": spec.weights,
        "weights_file": member.weights_file, "num_classes": len(classes), "classes": list(classes),
        "inputs": dataclasses.asdict(member.inputs), "bagging": to_dict(spec.bagging),
        "train": to_dict(spec.train), "seed": seed, "member_seed": mseed, "device": str(device),
        "precision": result.precision,
        "n_samples": int(len(sample)), "n_unique": int(len(np.unique(sample))), "n_oob": int(len(oob)),
        "best_epoch": result.best_epoch, "history": result.history, "train_seconds": result.seconds,
        "fingerprint": fingerprint, "versions": _versions(),
    }
    arrays = {"samples.npy": np.asarray(sample, dtype=np.int64), "oob.npy": np.asarray(oob, dtype=np.int64),
              "oob_proba.npy": oob_proba.astype(np.float32)}
    if run_root is not None:
        RunFolder(run_root).save_member(spec.name, result.state_dict, meta, arrays)
        checkpoint.clear()  # member.json is the commit point; the epoch checkpoint is done
        log.info("member %s saved (best epoch %d, %.0f s)", spec.name, result.best_epoch, result.seconds)
        return None
    return {"state_dict": result.state_dict, "meta": meta, "arrays": arrays}


class BaggedEnsemble:
    """Bagged ensemble of heterogeneous timm members with a voting combiner.

    Parameters
    ----------
    members : list of MemberConfig
        One entry per member (model, weights, image size, bagging, training).
    combiner : CombinerConfig or None
        Default strategy, weights, stacking and calibration settings (None = defaults:
        soft voting, learned weights and a stacking meta-learner fitted on validation).
    seed : int
        Seeds bagging, initialisation and augmentation.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    parallel : ParallelConfig or None
        Backend (sequential, loky, ray, dask), jobs at once, cluster address, threads.
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` for members whose own ``precision`` is
        unset (training and inference; :mod:`members.precision`).
    runtime : str
        Inference runtime of :meth:`member_proba`: ``auto`` (OpenVINO on CPU when
        installed), ``torch``, ``openvino`` or ``onnxruntime`` (:mod:`members.runtimes`).
        Training always evaluates with torch.
    """

    def __init__(self, members: Sequence, combiner=None, seed: int = 0, device: str = "auto",
                 parallel=None, precision: str = "auto", runtime: str = "auto") -> None:
        self.members = members
        self.combiner = combiner
        self.seed = seed
        self.device = device
        self.parallel = parallel
        self.precision = precision
        self.runtime = runtime

    # ------------------------------------------------------------------ fit
    def fit(self, images: Sequence[np.ndarray], y: np.ndarray, classes: Sequence[str],
            val_images: Sequence[np.ndarray], val_y: np.ndarray, run: RunFolder | None = None,
            data_fingerprint: str = "") -> "BaggedEnsemble":
        """Draw each member's sample, train the members, fit the combiner, score OOB.

        With ``run``, each member is saved as it finishes and a member already finished
        with the same settings and data is loaded instead of retrained; the combiner
        and the members' validation probabilities are saved too.
        """
        y = np.asarray(y, dtype=np.int64)
        self.classes_ = list(classes)
        n = len(y)
        specs = self._specs()
        self.samples_ = draw_all(y, [m.bagging for m in self.members], self.seed)
        self.oob_indices_ = [oob_indices(n, s) for s in self.samples_]
        prints = [sha256_json({"spec": to_dict(spec), "classes": self.classes_,
                               "sample": self.samples_[i].tolist(), "data": data_fingerprint,
                               "seed": self.seed})
                  for i, spec in enumerate(specs)]
        todo = [i for i, spec in enumerate(self.members)
                if run is None or not run.member_done(spec.name, prints[i])]
        for i, spec in enumerate(self.members):
            if i not in todo:
                log.info("member %s already finished in %s: reusing it", spec.name, run.root)
        from .config import ParallelConfig
        from .parallel import plan_jobs, run_jobs

        par = self.parallel or ParallelConfig()
        plan = plan_jobs(len(todo), par.n_jobs, self.device, par.threads_per_job)
        if todo:
            log.info("training %d member(s) on %s: %s", len(todo), par.backend, plan.describe())
        jobs = [(self.members[i].name, dict(
            index=i, spec=specs[i], images=images, y=y, sample=self.samples_[i],
            oob=self.oob_indices_[i], val_images=val_images, val_y=val_y, classes=self.classes_,
            seed=self.seed, device_name=plan.devices[k], run_root=str(run.root) if run is not None else None,
            fingerprint=prints[i],
            torch_threads=plan.threads if plan.n_jobs > 1 or par.threads_per_job else None))
            for k, i in enumerate(todo)]
        results = run_jobs(_fit_member, jobs, par.backend, plan.n_jobs, plan.threads, par.address)
        in_memory = dict(zip(todo, results))
        self.members_ = []
        self.oob_proba_ = []
        for i, spec in enumerate(self.members):
            if run is not None:
                state, meta, arrays = run.load_member(spec.name)
                arrays = {k + ".npy": v for k, v in arrays.items()}
            else:
                got = in_memory[i]
                state, meta, arrays = got["state_dict"], got["meta"], got["arrays"]
            self.members_.append(_restore_member(spec, meta, state))
            self.oob_proba_.append(np.asarray(arrays["oob_proba.npy"], dtype=np.float64))
        self.y_train_ = y
        self.val_proba_ = self.member_proba(val_images, runtime="torch")
        self.val_y_ = np.asarray(val_y, dtype=np.int64)
        self.refit_combiner(self.combiner)
        if run is not None:
            self.combiner_.save(run.root / "combiner")
            run.seal("combiner")
        return self

    def refit_combiner(self, combiner_cfg=None) -> "BaggedEnsemble":
        """Fit weights, stacking and temperatures from stored probabilities (no network runs)."""
        from .config import CombinerConfig

        self._check_fitted()
        cfg = combiner_cfg if combiner_cfg is not None else CombinerConfig()
        self.combiner_ = fit_combiner(cfg, [fm.name for fm in self.members_], self.classes_,
                                      self.y_train_, self.oob_indices_, self.oob_proba_,
                                      self.val_proba_, self.val_y_, self.seed)
        self.oob_score_ = self._oob_scores(self.y_train_)
        return self

    def _oob_scores(self, y: np.ndarray) -> dict:
        """Metrics of each member on its OOB set and of each strategy's OOB vote.

        An image is voted on only by the members that left it out; for stacking, the
        missing members' probabilities are imputed as in fitting.
        """
        comb = self.combiner_
        n, k = len(y), len(self.classes_)
        oob_proba = [comb.calibrate(p[None])[0] if len(p) else p for p in self.oob_proba_]
        full, avail = oob_matrix(self.oob_indices_, oob_proba, n, k)
        out: dict = {"members": {}, "strategies": {}}
        for fm, oob, proba in zip(self.members_, self.oob_indices_, oob_proba):
            out["members"][fm.name] = (classification_report(y[oob], proba.argmax(1), proba, self.classes_)
                                       if len(oob) else None)
        covered = np.flatnonzero(avail.any(axis=0))
        for strategy in comb.available():
            if not len(covered):
                out["strategies"][strategy] = None
                continue
            if strategy == "stacking":
                pred, proba = comb.apply(impute_missing(full[:, covered], avail[:, covered]),
                                         "stacking", calibrated=True)
            else:
                w = comb.learned_weights if strategy == "weighted" else comb.vote_weights
                _, pred, proba = oob_combine(full, ~avail, "hard" if strategy == "hard" else "soft", w)
            out["strategies"][strategy] = classification_report(y[covered], pred, proba, self.classes_)
        out["n_covered"] = int(len(covered))
        out["n_excluded"] = int(n - len(covered))
        return out

    def _specs(self) -> list:
        """Member specs with the ensemble's precision filled in where a member has none."""
        return [spec if getattr(spec, "precision", None) else dataclasses.replace(spec, precision=self.precision)
                for spec in self.members]

    # ------------------------------------------------------------------ inference
    def member_proba(self, images: Sequence[np.ndarray], batch_size: int | None = None,
                     tta: bool = False, device: str | None = None, runtime: str | None = None,
                     precision: str | None = None) -> np.ndarray:
        """Probabilities of every member, shape (members, samples, classes).

        ``runtime`` and ``precision`` default to the ensemble's (and each member's own
        precision); a runtime is compiled once per member and reused by later calls.
        """
        from members.models import pick_device
        from members.runtimes import runtime_proba
        from members.transforms import eval_tensor

        self._check_fitted()
        dev = pick_device(device or self.device)
        out = []
        for j, (fm, spec) in enumerate(zip(self.members_, self._specs())):
            rt = self._runtime(j, runtime, precision, dev)
            out.append(runtime_proba(rt, eval_tensor(images, fm.inputs),
                                     batch_size or spec.train.eval_batch_size, tta=tta))
        return np.stack(out)

    def inference_plan(self, runtime: str | None = None, precision: str | None = None,
                       device=None) -> list[tuple[str, object]]:
        """(runtime name, resolved Precision) each member infers with for these settings."""
        from members.models import pick_device
        from members.precision import inference_precision
        from members.runtimes import resolve_runtime, runtime_precision

        dev = pick_device(str(device) if device is not None else self.device)
        name = resolve_runtime(runtime or self.runtime, dev)
        return [(name, runtime_precision(name, inference_precision(precision or spec.precision,
                                                                   fm.meta.get("precision"), dev)))
                for fm, spec in zip(self.members_, self._specs())]

    def _runtime(self, index: int, runtime: str | None, precision: str | None, device: torch.device):
        """Member ``index``'s compiled runtime, made on first use (see :mod:`members.runtimes`)."""
        from members.runtimes import create_runtime

        from .export import member_onnx_path

        name, prec = self.inference_plan(runtime, precision, device)[index]
        key = (index, name, prec.name, str(device))
        cache = self.__dict__.setdefault("_runtimes", {})
        if key not in cache:
            fm = self.members_[index]
            log.info("member %s: inference on %s, %s (%s)", fm.name, name, prec.name, prec.reason)
            cache[key] = create_runtime(name, fm.model, fm.inputs, device, prec,
                                        onnx_path=lambda: member_onnx_path(self, index))
        return cache[key]

    def predict_proba(self, images: Sequence[np.ndarray], strategy: str | None = None,
                      **kwargs) -> np.ndarray:
        """Ensemble probabilities (vote shares for ``hard``), shape (samples, classes)."""
        return self.combiner_.apply(self.member_proba(images, **kwargs), strategy)[1]

    def predict(self, images: Sequence[np.ndarray], strategy: str | None = None,
                **kwargs) -> np.ndarray:
        """Predicted class indices."""
        return self.combiner_.apply(self.member_proba(images, **kwargs), strategy)[0]

    def _check_fitted(self) -> None:
        if not hasattr(self, "members_"):
            raise RuntimeError("this BaggedEnsemble is not fitted yet; call fit() or load_run()")

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load_run(cls, root: str) -> "BaggedEnsemble":
        """A fitted ensemble from a finished run folder (hashes checked, no pickles)."""
        from .config import config_from_dict, read_yaml
        from .run import read_json, read_npy

        run = RunFolder(root)
        if not run.config_path.is_file():
            raise RunError(f"{root}: not a run folder (config.yaml missing)")
        cfg = config_from_dict(read_yaml(run.config_path), source=str(run.config_path))
        ens = cls(cfg.members, cfg.combiner, cfg.seed, cfg.device, cfg.parallel, cfg.precision, cfg.runtime)
        ens.run_dir_ = str(run.root)
        ens.classes_ = list(read_json(run.classes_path))
        ens.members_, ens.samples_, ens.oob_indices_, ens.oob_proba_ = [], [], [], []
        for spec in cfg.members:
            state, meta, arrays = run.load_member(spec.name)
            ens.members_.append(_restore_member(spec, meta, state))
            ens.samples_.append(arrays["samples"])
            ens.oob_indices_.append(arrays["oob"])
            ens.oob_proba_.append(arrays["oob_proba"].astype(np.float64))
        run.verify("predictions")
        run.verify("combiner")
        pred = run.root / "predictions"
        ens.y_train_ = read_npy(pred / "train_labels.npy")
        ens.val_proba_ = read_npy(pred / "val_proba.npy")
        ens.val_y_ = read_npy(pred / "val_labels.npy")
        ens.combiner_ = FittedCombiner.load(run.root / "combiner")
        ens.oob_score_ = ens._oob_scores(ens.y_train_)
        return ens


def _restore_member(spec, meta: dict, state: dict) -> FittedMember:
    """Rebuild the architecture and load its trained weights."""
    import timm

    from members.models import InputConfig

    kwargs = {"drop_rate": spec.train.drop_rate} if spec.train.drop_rate is not None else {}
    model = timm.create_model(meta["architecture"], pretrained=False,
                              num_classes=meta["num_classes"], **kwargs)
    model.load_state_dict(state)
    model.eval()
    inputs = meta["inputs"]
    inputs = InputConfig(**{**inputs, "mean": tuple(inputs["mean"]), "std": tuple(inputs["std"])})
    return FittedMember(name=spec.name, model=model, inputs=inputs, meta=meta)
