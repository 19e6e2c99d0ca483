"""The run folder: the only code that knows its layout and reads or writes it.

::

    RUN/config.yaml          the resolved config          RUN/classes.json
    RUN/members/<name>/      model.safetensors, samples.npy, oob.npy, oob_proba.npy,
                             member.json (with the SHA-256 of each: the commit point),
                             checkpoint.safetensors + checkpoint.json while training
    RUN/members/<name>@<weights>[+<view>]/   a pool candidate (:mod:`ensemble.combining.pool`): the same
                             files, written before its member's member.json
    RUN/predictions/         <split>_proba.npy (members, then pool candidates), <split>_labels.npy, <split>_paths.json,
                             train_labels.npy, hashes.json
    RUN/combiner/            combiner.json, <strategy>_<array>.npy, hashes.json
    RUN/report/              what :mod:`ensemble.reporting.markdown` renders
    RUN/cache/onnx/          members exported for the OpenVINO / ONNX Runtime runtimes
    RUN/cache/teacher/       a distilled run's cached teacher probabilities (``distill.teacher_views``)

Every file is written atomically; everything a prediction depends on is hash-checked
when read back. :class:`RunFolder` is also the ``store`` that
:meth:`ensemble.estimator.BaggedEnsemble.fit` saves members into and resumes from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .files import (
    RECORD,
    RunError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_safetensors,
    atomic_write_text,
    check_hashes,
    owned_files,
    read_json,
    read_npy,
    refuse_foreign,
    sha256_file,
    sha256_json,
    write_owned,
)

log = logging.getLogger(__name__)

__all__ = ["RunError", "RunFolder", "MemberCheckpoint", "load_run"]


class MemberCheckpoint:
    """One member's epoch checkpoint (a :class:`members.checkpoint.Checkpointer`), valid
    only for ``fingerprint``: tensors in ``checkpoint.safetensors``, the rest and the
    tensors' SHA-256 in ``checkpoint.json``, written last as the commit point."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    @property
    def where(self) -> str:
        return str(self.json_path)

    @property
    def tensors_path(self) -> Path:
        return self.folder / "checkpoint.safetensors"

    @property
    def json_path(self) -> Path:
        return self.folder / "checkpoint.json"

    def save(self, tensors: dict, doc: dict) -> None:
        atomic_write_safetensors(self.tensors_path, tensors)
        atomic_write_json(
            self.json_path, {"fingerprint": self.fingerprint, **doc, "sha256": sha256_file(self.tensors_path)}
        )

    def load(self) -> tuple[dict, dict] | None:
        """(tensors, document) if a checkpoint exists, is intact and has this fingerprint."""
        from safetensors.torch import load_file

        if not self.json_path.is_file() or not self.tensors_path.is_file():
            return None
        doc = read_json(self.json_path)
        if doc.get("fingerprint") != self.fingerprint:
            log.warning("%s belongs to other settings or data: starting this member afresh", self.json_path)
            return None
        if sha256_file(self.tensors_path) != doc.get("sha256"):
            log.warning("%s does not match its recorded hash: starting this member afresh", self.tensors_path)
            return None
        return load_file(str(self.tensors_path), device="cpu"), doc

    def clear(self) -> None:
        for p in (self.json_path, self.tensors_path):
            p.unlink(missing_ok=True)


#: the lock file of the process writing a run
LOCK_NAME = ".effens.lock"
#: the resolved config a run (and a tune folder) keeps
CONFIG_NAME = "config.yaml"
#: a report folder's files (a run's report/, and `effens evaluate --out`): the metrics
#: document, the Markdown report and the run card
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"
CARD_NAME = "card.md"
#: what a copy of a run for serving elsewhere leaves out: caches, the report, the lock
NOT_FOR_SERVING = ("cache", "report", LOCK_NAME)


class RunFolder:
    """Paths and records of one run."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config_path = self.root / CONFIG_NAME
        self.classes_path = self.root / "classes.json"
        self.report_dir = self.root / "report"
        self.predictions_dir = self.root / "predictions"
        self.combiner_dir = self.root / "combiner"
        self.marker_path = self.root / "run.json"  # effens made this folder; the run record
        self.lock_path = self.root / LOCK_NAME  # the process writing it now

    def member_dir(self, name: str) -> Path:
        return self.root / "members" / name

    def member_weights(self, name: str) -> Path:
        """A member's trained weights (safetensors), as :meth:`save_member` writes them."""
        return self.member_dir(name) / "model.safetensors"

    @property
    def report_path(self) -> Path:
        return self.report_dir / REPORT_NAME

    @property
    def card_path(self) -> Path:
        return self.report_dir / CARD_NAME

    def holds_run(self) -> bool:
        """Whether the folder holds a run: its config, and its record or members (a run
        being trained, or one made before effens recorded ``run.json``)."""
        return self.config_path.is_file() and (self.marker_path.is_file() or (self.root / "members").is_dir())

    # ---------------------------------------------------------------- config and classes
    def open_for_training(self, cfg, restart: bool, ignore: tuple[str, ...] = ()) -> "RunFolder":
        """Create or reopen the folder for ``cfg`` (call after every input is checked).

        A folder effens did not make is refused, naming a file in it; a changed config is
        refused unless ``restart``, which then removes only files effens recorded (and
        refuses, before removing anything, if the folder holds any other file). Changes of keys
        starting with one of ``ignore`` (e.g. ``distill.`` for ``train``) do not count. Takes the
        folder's lock (released by :meth:`unlock`).
        """
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root}: exists and is not a folder; --out names the run folder")
        self._check_ours()
        self.lock()
        try:
            return self._open(cfg, restart, ignore)
        except BaseException:
            self.unlock()
            raise

    def _open(self, cfg, restart: bool, ignore: tuple[str, ...] = ()) -> "RunFolder":
        from .config import ConfigError, config_from_dict, config_to_dict, read_yaml

        if self.config_path.is_file():
            try:
                old = config_to_dict(config_from_dict(read_yaml(self.config_path), source=str(self.config_path)))
            except (ConfigError, ValueError, TypeError, AttributeError):
                old = {}  # unreadable: counts as changed
            changed = [
                k
                for k in config_changes(old, config_to_dict(cfg))
                if not k.startswith(("combiner.", "tune.", "parallel.", "decision.", "report.", "tracking.", *ignore))
                and ".candidates." not in k
            ]  # pool candidates: a member missing some trains again
            work = any((self.root / "members").glob("*/member.json")) or any(
                (self.root / "members").glob("*/checkpoint.json")
            )
            if changed and not restart and work:
                raise RunError(
                    f"{self.root} holds a run with a different config (changed: "
                    f"{', '.join(changed[:10])}); use another --out, or --restart to start over"
                )
            if changed and work:
                self.discard(", ".join(changed[:10]))
            elif changed:
                log.info(
                    "%s: config changed (%s) before any member trained: starting with the new one",
                    self.root,
                    ", ".join(changed[:10]),
                )
            elif any((self.root / "members").glob("*/member.json")):
                log.info("resuming the run in %s", self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.marker_path.is_file():
            atomic_write_json(self.marker_path, {"effens": _version(), "kind": "run", "files": {}})
        self.write_config(cfg)
        return self

    @contextlib.contextmanager
    def all_or_nothing(self, subs: tuple[str, ...] = ("combiner", "report")):
        """A block whose writes to config.yaml, run.json and ``subs`` are undone if it fails:
        a command that fails leaves the run as it found it."""

        def files() -> list[Path]:
            return [
                self.config_path,
                self.marker_path,
                *(p for sub in subs for p in (self.root / sub).rglob("*") if p.is_file()),
            ]

        before = {p: p.read_bytes() for p in files() if p.is_file()}
        try:
            yield
        except BaseException:
            for p in files():
                if p not in before and p.is_file():
                    p.unlink()
            for p, data in before.items():
                if not p.is_file() or p.read_bytes() != data:
                    atomic_write_bytes(p, data)
            log.info("%s: the failed command's changes were undone", self.root)
            raise

    def _check_ours(self) -> None:
        """Refuse a non-empty folder effens did not make (a run from an older effens is adopted)."""
        if (
            self.root.is_dir()
            and not self.marker_path.is_file()
            and self.classes_path.is_file()
            and (self.root / "members").is_dir()
        ):
            log.info("%s: a run made by an older effens; recording it as effens's", self.root)
            return
        refuse_foreign(self.root, "run", "effens train", record=self.marker_path.name, whole=True)

    def discard(self, why: str) -> None:
        """``--restart``: remove the files effens recorded in members/, predictions/, combiner/,
        report/ and cache/, after checking that nothing else is there (nor at the top of the
        folder, beside config.yaml, classes.json and run.json)."""
        recorded = self._recorded_files()
        everything = [p for sub in _SUBFOLDERS for p in (self.root / sub).rglob("*") if not p.is_dir()]
        foreign = sorted(p for p in everything if p not in recorded and not p.name.startswith("."))
        top = [
            p for p in self.root.iterdir() if p.name not in (*_SUBFOLDERS, *_TOP_FILES) and not p.name.startswith(".")
        ]
        foreign += sorted(f for p in top for f in (p.rglob("*") if p.is_dir() else [p]) if not f.is_dir())
        if foreign:
            raise RunError(
                f"{_listed(foreign, self.root)}: not written by effens; --restart removes only effens's "
                f"files, so move them out of {self.root} first"
            )
        log.warning("--restart: discarding the previous run in %s (changed: %s)", self.root, why)
        for p in everything:
            p.unlink()
        for sub in _SUBFOLDERS:
            for d in sorted((self.root / sub).rglob("*"), key=lambda q: -len(q.parts)) + [self.root / sub]:
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()

    def _recorded_files(self) -> set[Path]:
        """Every file effens recorded writing under members/, predictions/, combiner/, report/, cache/."""
        out: set[Path] = set()
        for meta in (self.root / "members").glob("*/member.json"):
            out |= {meta, meta.parent / "checkpoint.json", meta.parent / "checkpoint.safetensors"}
            try:
                out |= {meta.parent / f for f in read_json(meta).get("files", {})}
            except (ValueError, OSError):
                pass
        for ckpt in (self.root / "members").glob("*/checkpoint.json"):
            out |= {ckpt, ckpt.parent / "checkpoint.safetensors"}
        for sub in ("predictions", "combiner"):
            d = self.root / sub
            out |= {p for p in d.glob("*") if _effens_name(sub, p.name)}
        out |= {self.report_dir / f for f in owned_files(self.report_dir, "report")} | {self.report_dir / RECORD}
        out |= set((self.root / "cache" / "onnx").glob("*.onnx")) | set((self.root / "cache" / "onnx").glob("*.json"))
        out |= set((self.root / "cache" / "teacher").glob("*.npy")) | set(
            (self.root / "cache" / "teacher").glob("*.json")
        )
        out |= set((self.root / "cache" / "compiled").glob("*/*/*.blob"))  # OpenVINO's cache in folders effens made
        return out

    # ---------------------------------------------------------------- the lock
    def lock(self) -> None:
        """Take the folder for this process; refuse while a live effens holds it (a dead
        one's lock is taken over)."""
        self.root.mkdir(parents=True, exist_ok=True)
        me = _me()
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._holder()
                if held is None:  # released meanwhile
                    continue
                if held == me:
                    return
                if _gone(held):
                    log.warning(
                        "%s: taking over the lock of a process that is gone (pid %s)", self.root, held.get("pid")
                    )
                    self.lock_path.unlink(missing_ok=True)
                    continue
                raise self._in_use(held)
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            return
        raise RunError(f"{self.root}: could not take its lock")

    def _holder(self) -> dict | None:
        """The lock's record (pid, host); None without a lock; ``{}`` when unreadable (a writer
        taking it this instant, or not a regular file, which is never opened)."""
        if not os.path.lexists(self.lock_path):
            return None
        if not self.lock_path.is_file():
            return {}
        try:
            held = read_json(self.lock_path)
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}
        return held if isinstance(held, dict) else {}

    def _in_use(self, held: dict) -> RunError:
        return RunError(
            f"{self.root}: in use by another effens (pid {held.get('pid')} on {held.get('host')}); "
            f"wait for it, or delete {self.lock_path} if it is gone"
        )

    def refuse_if_locked(self) -> None:
        """For every reader of the run: refuse while another live effens holds the lock (its
        files may be mid-rewrite), naming that process, rather than blaming a file."""
        held = self._holder()
        if held is not None and held != _me() and not _gone(held):
            raise self._in_use(held)

    @contextlib.contextmanager
    def reading(self):
        """A block that reads the run: refused up front while another effens writes it; a
        failure inside it that a writer starting meanwhile caused names that writer."""
        self.refuse_if_locked()
        try:
            yield
        except Exception:
            self.refuse_if_locked()
            raise

    def unlock(self) -> None:
        try:
            if read_json(self.lock_path).get("pid") == os.getpid():
                self.lock_path.unlink()
        except (OSError, ValueError):
            pass

    # ---------------------------------------------------------------- the run record
    def record(self, cfg=None) -> None:
        """Record the SHA-256 of every file predictions depend on outside the sealed folders
        (config.yaml, classes.json, each member.json) in ``run.json``: the commit point
        (``cfg``: the config written there, checked; default: read from it)."""
        from .combining.pool import pool_candidates

        cfg = self.read_config() if cfg is None else cfg
        names = [m.name for m in cfg.members] + [c.name for c in pool_candidates(cfg.members)]
        files = ["config.yaml", "classes.json"] + [f"members/{n}/member.json" for n in names]
        atomic_write_json(
            self.marker_path,
            {"effens": _version(), "kind": "run", "files": {f: sha256_file(self.root / f) for f in files}},
        )

    def adopt_legacy_report(self) -> None:
        """A run from an effens before ``run.json``: record its report files that carry effens's
        report names as effens's (anything else there stays foreign)."""
        if self.marker_path.is_file() or not self.report_dir.is_dir() or (self.report_dir / RECORD).is_file():
            return
        pattern = re.compile(
            r"(metrics\.json|report\.md|card\.md|index\.html|(confusion|reliability|risk_coverage)_.+\.png|"
            r"training_curves\.png|misclassified_.+\.csv|(thumbs|saliency)/[0-9a-f]{24}.*\.jpg|thumbs/index\.json)"
        )
        ours = sorted(
            str(p.relative_to(self.report_dir))
            for p in self.report_dir.rglob("*")
            if p.is_file() and pattern.fullmatch(str(p.relative_to(self.report_dir)))
        )
        atomic_write_json(self.report_dir / RECORD, {"kind": "report", "files": ours})

    def verify_record(self, adopt: bool = False) -> None:
        """Refuse a run whose config, classes or member records changed since training."""
        if not self.marker_path.is_file():
            if adopt:
                return
            raise RunError(
                f"{self.root}: no run.json (not an effens run, or made by an older effens: run "
                f"`effens fit-combiner {self.root}` once to record it)"
            )
        files = read_json(self.marker_path).get("files") or {}
        if not files:
            raise RunError(f"{self.root}: training has not finished here (run.json records no files)")
        check_hashes(self.root, files, "run.json")

    def write_config(self, cfg) -> None:
        from .config import dump_config

        atomic_write_text(self.config_path, dump_config(cfg))

    def read_config(self, overrides: list[str] | None = None):
        from .config import load_config

        if not self.config_path.is_file():
            raise RunError(f"{self.root}: not a run folder (config.yaml missing)")
        return load_config(self.config_path, overrides)

    def save_classes(self, classes: list[str]) -> None:
        if self.classes_path.is_file() and read_json(self.classes_path) != classes:
            raise RunError(
                f"{self.classes_path}: the run's classes {read_json(self.classes_path)} differ "
                f"from the data's {classes}; use --restart"
            )
        atomic_write_json(self.classes_path, classes)

    # ---------------------------------------------------------------- members (the estimator's store)
    def checkpoint(self, name: str, fingerprint: str) -> MemberCheckpoint:
        return MemberCheckpoint(self.member_dir(name), fingerprint)

    def finished_member(self, name: str, fingerprint: str) -> dict | None:
        """The member's ``state_dict``, ``meta`` and ``arrays`` if it finished with this
        fingerprint (files hash-checked), else None."""
        meta_path = self.member_dir(name) / "member.json"
        if not meta_path.is_file() or read_json(meta_path).get("fingerprint") != fingerprint:
            return None
        state, meta, arrays = self.load_member(name)
        return {"state_dict": state, "meta": meta, "arrays": arrays}

    def unfinish_member(self, name: str) -> None:
        """Withdraw a finished member's record (member.json) before it is trained again, so
        that a crash midway leaves it unfinished rather than with files its record does not match."""
        (self.member_dir(name) / "member.json").unlink(missing_ok=True)

    def save_member(self, name: str, state_dict: dict, meta: dict, arrays: dict[str, np.ndarray]) -> dict:
        """Write a member's files, then ``member.json`` with their hashes (the commit point),
        then drop its epoch checkpoint; returns the meta as written."""
        d = self.member_dir(name)
        atomic_write_safetensors(d / "model.safetensors", state_dict)
        for key, arr in arrays.items():
            atomic_write_npy(d / f"{key}.npy", arr)
        files = ["model.safetensors", *(f"{k}.npy" for k in arrays)]
        meta = dict(meta, files={f: sha256_file(d / f) for f in files})
        atomic_write_json(d / "member.json", meta)
        MemberCheckpoint(d, "").clear()
        return meta

    def load_member(self, name: str) -> tuple[dict, dict, dict[str, np.ndarray]]:
        """(state dict, member.json, arrays), after checking the hashes."""
        from safetensors.torch import load_file

        meta, arrays = self.load_member_record(name)
        return load_file(str(self.member_dir(name) / "model.safetensors"), device="cpu"), meta, arrays

    def load_member_record(self, name: str) -> tuple[dict, dict[str, np.ndarray]]:
        """(member.json, arrays) after checking the hashes of every file, the weights
        included; the weights themselves are read by :meth:`load_member`."""
        d = self.member_dir(name)
        if not (d / "member.json").is_file():
            raise RunError(f"{d}: no finished member here (member.json missing)")
        meta = read_json(d / "member.json")
        check_hashes(d, meta.get("files", {}), "member.json")
        arrays = {f[:-4]: read_npy(d / f) for f in meta["files"] if f.endswith(".npy")}
        return meta, arrays

    def member_fingerprint(self, name: str) -> str | None:
        """The settings-and-data fingerprint a member finished (or was checkpointed) with; None: neither."""
        for record in ("member.json", "checkpoint.json"):
            path = self.member_dir(name) / record
            if path.is_file():
                try:
                    return read_json(path).get("fingerprint")
                except (ValueError, OSError, AttributeError):
                    return None
        return None

    # ---------------------------------------------------------------- predictions
    def save_predictions(self, split: str, paths: list[str], y: np.ndarray, member_proba: np.ndarray) -> None:
        """Cache a split's member probabilities so combiners and reports never re-run a network."""
        d = self.predictions_dir
        atomic_write_npy(d / f"{split}_proba.npy", member_proba.astype(np.float64))
        atomic_write_npy(d / f"{split}_labels.npy", np.asarray(y, dtype=np.int64))
        atomic_write_json(d / f"{split}_paths.json", list(paths))

    def save_train_labels(self, y: np.ndarray) -> None:
        atomic_write_npy(self.predictions_dir / "train_labels.npy", np.asarray(y, dtype=np.int64))

    def seal_predictions(self) -> None:
        """Record the hashes of every cached prediction (after the last split is saved)."""
        self.seal("predictions")

    def load_predictions(self, split: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        d = self.predictions_dir
        if not (d / f"{split}_proba.npy").is_file():
            return None
        return (
            read_json(d / f"{split}_paths.json"),
            read_npy(d / f"{split}_labels.npy"),
            read_npy(d / f"{split}_proba.npy"),
        )

    # ---------------------------------------------------------------- combiner
    def save_combiner(self, combiner) -> None:
        """combiner.json + one ``.npy`` per strategy array, sealed."""
        doc, arrays = combiner.state()
        for key, arr in arrays.items():
            atomic_write_npy(self.combiner_dir / f"{key}.npy", arr)
        atomic_write_json(self.combiner_dir / "combiner.json", doc)
        self.seal("combiner")

    def has_combiner(self) -> bool:
        """Whether a fitted combiner was sealed here (``train`` finished its members and voting)."""
        return (self.combiner_dir / "hashes.json").is_file()

    def load_combiner(self):
        from .combining.strategies import Combiner

        self.verify("combiner")
        d = self.combiner_dir
        arrays = {p.stem: read_npy(p) for p in d.glob("*.npy")}
        try:
            return Combiner.from_state(read_json(d / "combiner.json"), arrays)
        except (KeyError, ValueError) as exc:
            raise RunError(f"{d / 'combiner.json'}: {exc}") from None

    # ---------------------------------------------------------------- report
    def write_report(self, files: dict) -> Path:
        write_owned(self.report_dir, files, "report", strict=False)  # a user's notes may sit beside it
        return self.report_dir

    def read_metrics(self) -> dict:
        path = self.report_dir / METRICS_NAME
        return read_json(path) if path.is_file() else {}

    # ---------------------------------------------------------------- hashes
    def seal(self, subdir: str) -> None:
        """Record the SHA-256 of every file in ``subdir`` (``hashes.json``, written last)."""
        d = self.root / subdir
        files = sorted(
            p.name for p in d.iterdir() if p.is_file() and p.name != "hashes.json" and not p.name.startswith(".")
        )
        atomic_write_json(d / "hashes.json", {f: sha256_file(d / f) for f in files})

    def verify(self, subdir: str) -> None:
        """Refuse a sealed folder whose files changed, naming the first bad file."""
        d = self.root / subdir
        if not (d / "hashes.json").is_file():
            raise RunError(f"{d}: no hashes.json (unfinished or not an effens run folder)")
        check_hashes(d, read_json(d / "hashes.json"), "hashes.json")

    # ---------------------------------------------------------------- runtime cache
    def member_onnx(self, fm) -> Path:
        """The member's ONNX file for the runtimes (uint8 input, normalisation inside),
        exported once and cached in ``cache/onnx/``.

        The cache record keys the file by the member's weights hash and the exporter's
        versions; a file whose bytes differ from its record is refused, naming it. A run
        folder that cannot be written to gets a per-process temporary export instead.
        """
        from members.runtimes import exporter_versions

        from . import __version__

        folder = self.root / "cache" / "onnx"
        if not _writable(folder):
            log.info("%s is not writable: caching exported members in a temporary folder", folder)
            from members.export import temporary_onnx

            return Path(temporary_onnx(fm.model, fm.inputs, fm.name, owner=str(self.root)))
        key = sha256_json(
            {
                "weights": weights_hash(fm.meta),
                "image_size": fm.inputs.image_size,
                "input": "uint8",
                "mean": list(fm.inputs.mean),
                "std": list(fm.inputs.std),
                "effens": __version__,
                **exporter_versions(),
            }
        )
        path, record = folder / f"{fm.name}.onnx", folder / f"{fm.name}.json"
        if path.is_file() and record.is_file():
            rec = read_json(record)
            if rec.get("key") == key:
                if sha256_file(path) != rec.get("sha256"):
                    raise RunError(
                        f"{path}: contents do not match the hash recorded when it was written "
                        f"(modified or corrupted); delete {folder} to rebuild the cache"
                    )
                return path
        from members.export import export_member_onnx

        data = export_member_onnx(fm.model, fm.inputs.image_size, fm.name, inputs=fm.inputs)
        atomic_write_bytes(path, data)
        atomic_write_json(
            record,
            {"key": key, "sha256": sha256_file(path), "member": fm.name, "effens": __version__, **exporter_versions()},
        )
        log.info("member %s exported to %s (%.1f MB)", fm.name, path, len(data) / 1e6)
        return path

    def compiled_cache(self, onnx_path: str | os.PathLike) -> Path | None:
        """Where a compiling runtime (OpenVINO) keeps the compiled form of the member
        exported at ``onnx_path``, so that the next process loads it instead of compiling:
        ``cache/compiled/<key>/<ONNX hash>``, keyed by the runtime's version, this CPU's
        model and flags, and the export's recorded SHA-256 (the runtime itself keys by path,
        options and file time, which a re-export in place could fool). None where the run
        folder is read-only or the export has no record."""
        import hashlib
        from importlib.metadata import PackageNotFoundError, version

        from members.precision import cpu_info

        try:
            ov = version("openvino")
        except PackageNotFoundError:
            return None
        record = Path(onnx_path).with_suffix(".json")
        try:
            onnx_hash = read_json(record)["sha256"]
        except (OSError, ValueError, KeyError, TypeError, RunError):
            return None
        model, flags = cpu_info()
        key = hashlib.sha256(json.dumps([ov, model, sorted(flags)]).encode()).hexdigest()[:16]
        folder = self.root / "cache" / "compiled" / key / str(onnx_hash)[:16]
        return folder if _writable(folder) else None


class TeacherCache:
    """A distilled run's teacher probabilities on N augmented views of each image (``distill.teacher_views``):
    ``cache/teacher/proba.npy`` with ``proba.json`` (its key and SHA-256, written last), valid for one key."""

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.folder = Path(root) / "cache" / "teacher"
        self.key = key

    def load(self) -> np.ndarray | None:
        """The cached array if it is there, intact and made for this key."""
        array, record = self.folder / "proba.npy", self.folder / "proba.json"
        if not array.is_file() or not record.is_file():
            return None
        rec = read_json(record)
        if rec.get("key") != self.key:
            log.info("%s: made for other settings, data or teacher: labelling again", array)
            return None
        if sha256_file(array) != rec.get("sha256"):
            log.warning("%s does not match its recorded hash: labelling again", array)
            return None
        return read_npy(array)

    def save(self, proba: np.ndarray) -> None:
        (self.folder / "proba.json").unlink(missing_ok=True)  # the record goes first, comes back last
        atomic_write_npy(self.folder / "proba.npy", np.asarray(proba, dtype=np.float32))
        atomic_write_json(
            self.folder / "proba.json",
            {"key": self.key, "shape": list(proba.shape), "sha256": sha256_file(self.folder / "proba.npy")},
        )


def enclosing_run(path: str | os.PathLike) -> Path | None:
    """The effens run folder that holds ``path`` (resolved; ``path`` itself counts), or None."""
    p = Path(os.path.realpath(path))
    for folder in (p, *p.parents):
        if (folder / "run.json").is_file():
            try:
                if json.loads((folder / "run.json").read_text(encoding="utf-8")).get("kind") == "run":
                    return folder
            except (OSError, ValueError, AttributeError):
                continue
    return None


def check_output_path(
    out: str | os.PathLike,
    inputs: "Sequence[str | os.PathLike]" = (),
    run_root: bool = False,
    folder: bool = True,
    flag: str = "--out",
) -> None:
    """Refuse an output path that would destroy what a command reads or a run: the same file
    as one of ``inputs`` (symlinks, ``./``, ``..`` and case folding resolved by the file
    system), a folder output inside an input folder, or anything inside an effens run
    folder (``run_root``: the output may *be* a run folder, as ``train --out``). Messages name
    ``flag``, the option that gave the path."""
    near = next((p for p in Path(os.path.abspath(out)).parents if p.exists()), None)
    if near is not None and not near.is_dir():  # else it fails only when writing, after all the work
        raise RunError(f"{flag} {out}: {near} is a file, not a folder; choose a path in a folder")
    out_real = os.path.realpath(out)
    run = enclosing_run(out)
    if run is not None and not (run_root and run == Path(out_real)):
        raise RunError(
            f"{flag} {out}: is inside the effens run folder {run}; choose one outside it (only "
            f"`effens train` and `effens fit-combiner` write a run's files; inference only adds exported "
            f"models to its cache/)"
        )
    for inp in inputs:
        if not os.path.exists(inp):
            continue
        if os.path.exists(out) and os.path.samefile(out, inp):
            raise RunError(
                f"{flag} {out}: is also an input of this command ({inp}); choose another "
                f"(effens never writes over its inputs)"
            )
        if folder and os.path.isdir(inp) and _inside(out_real, inp):
            raise RunError(
                f"{flag} {out}: is inside the input folder {inp}; choose one outside it (its files "
                f"would be read as inputs next time)"
            )


def _inside(path: str, folder: str | os.PathLike) -> bool:
    """Whether ``path`` (resolved, may not exist yet) lies inside ``folder``: each existing
    ancestor is compared as a file (symlinks and case folding resolved by the file system)."""
    for parent in Path(path).parents:
        if parent.exists():
            try:
                if os.path.samefile(parent, folder):
                    return True
            except OSError:
                continue
    return False


def _version() -> str:
    from . import __version__

    return __version__


def _listed(paths: list[Path], root: Path, limit: int = 10) -> str:
    """The first path in full, then up to ``limit`` more relative to ``root``, then a count."""
    rest = [str(p.relative_to(root)) for p in paths[1 : limit + 1]]
    extra = len(paths) - 1 - len(rest)
    return ", ".join([str(paths[0]), *rest]) + (f" and {extra} more" if extra else "")


def _me() -> dict:
    """This process as a lock records it."""
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}


def _gone(held: dict) -> bool:
    """Whether a lock's holder is a process of this host that has ended."""
    return held.get("host") == _me()["host"] and not _alive(held.get("pid"))


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: what effens writes at the top of a run folder (besides dot-files: the lock, records)
_SUBFOLDERS = ("members", "predictions", "combiner", "report", "cache")
_TOP_FILES = (CONFIG_NAME, "classes.json", "run.json")

_EFFENS_NAMES = {
    "predictions": re.compile(r"(\w+_(proba\.npy|labels\.npy|paths\.json)|hashes\.json)"),
    "combiner": re.compile(r"(combiner\.json|hashes\.json|[\w-]+_\w+\.npy)"),
}


def _effens_name(sub: str, name: str) -> bool:
    return bool(_EFFENS_NAMES[sub].fullmatch(name))


def weights_hash(meta: dict) -> str | None:
    """The SHA-256 of a member's weights file, as its member.json records it."""
    return meta.get("files", {}).get("model.safetensors")


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def config_changes(old: dict, new: dict) -> list[str]:
    """Key paths whose values differ between two config dicts."""
    from .config import flat_keys

    a, b = flat_keys(old), flat_keys(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def load_run(root: str | os.PathLike, adopt: bool = False):
    """A fitted :class:`~ensemble.estimator.BaggedEnsemble` from a finished run folder
    (every file a prediction depends on hash-checked, no pickles). ``adopt`` accepts a run
    made before effens recorded ``run.json`` (``fit-combiner`` then records it). Refused,
    naming the process, while another effens writes the folder (``train --restart``)."""
    run = RunFolder(root)
    with run.reading():
        return _read_run(run, root, adopt)


def _read_run(run: RunFolder, root: str | os.PathLike, adopt: bool):
    from members.inputs import InputConfig

    from .estimator import BaggedEnsemble, FittedMember, with_precision

    kind = read_json(run.root / RECORD).get("kind") if (run.root / RECORD).is_file() else None
    if kind == "tune":
        raise RunError(
            f"{root}: is a tune folder, not a run; train its best candidate first: "
            f"effens train {Path(root) / 'best.yaml'} --out RUN"
        )
    if not run.config_path.is_file():
        raise RunError(f"{root}: not a run folder (config.yaml missing)")
    run.verify_record(adopt)
    cfg = run.read_config()
    ens = BaggedEnsemble.from_config(cfg)
    ens.run_dir_ = str(run.root)
    ens.onnx_cache_ = run.member_onnx
    ens.compiled_cache_ = run.compiled_cache
    ens.specs_ = with_precision(cfg.members, cfg.precision)
    from .combining.pool import candidate_specs

    members, samples, oob_proba = [], [], []
    for spec in [*ens.specs_, *candidate_specs(ens.specs_)]:  # the members, then their pool candidates
        meta, arrays = run.load_member_record(spec.name)
        members.append(
            FittedMember(
                spec.name,
                None,
                InputConfig.from_record(meta["inputs"]),
                meta,
                build=_MemberBuilder(run.root, spec, meta),
            )
        )
        samples.append(arrays["samples"])
        oob_proba.append(arrays["oob_proba"])
    run.verify("predictions")
    combiner = run.load_combiner()
    pred = run.predictions_dir
    val_proba = read_npy(pred / "val_proba.npy")
    if len(val_proba) != len(members):
        raise RunError(
            f"{pred / 'val_proba.npy'}: holds {len(val_proba)} members' probabilities, the config "
            f"{len(members)} (members and pool candidates); run `effens train` on this folder again"
        )
    n = len(cfg.members)
    ens._set_fitted(
        read_json(run.classes_path),
        members[:n],
        samples,
        oob_proba,
        read_npy(pred / "train_labels.npy"),
        val_proba,
        read_npy(pred / "val_labels.npy"),
        combiner=combiner,
        candidates=members[n:],
    )
    return ens


class _MemberBuilder:
    """Builds a member's torch model on first use (timm, weights read then); the weights
    file was hash-checked when the run was loaded and is checked again as it is read.
    A class, not a closure, so that a loaded ensemble still pickles (joblib workers)."""

    def __init__(self, root: Path, spec, meta: dict) -> None:
        self.root, self.spec, self.meta = root, spec, meta

    def __call__(self):
        from safetensors.torch import load_file

        from .estimator import restore_member

        run = RunFolder(self.root)
        d = run.member_dir(self.spec.name)
        with run.reading():
            check_hashes(d, {"model.safetensors": self.meta["files"]["model.safetensors"]}, "member.json")
            state = load_file(str(d / "model.safetensors"), device="cpu")
        return restore_member(self.spec, self.meta, state)[0]
