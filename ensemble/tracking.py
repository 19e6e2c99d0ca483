"""Experiment trackers (``tracking:``): MLflow and TensorBoard sinks.

A :class:`Tracker` is opened when a command starts (``train``, ``tune``, ``evaluate``),
so a tracker that cannot be reached is found before any work, and is fed afterwards from
what the command wrote: the resolved config as parameters, each member's per-epoch
history, the final metrics of every member and strategy, the decisions summary, the
report folder and the model. A sink that fails is one warning line and is dropped; the
command goes on and its run folder is never touched by tracking. Nothing is logged unless
``tracking:`` names a sink.

Every place a sink writes on this machine (a TensorBoard folder, a local store, the artifact
folder of an MLflow experiment) is checked like ``--out`` before any work: outside the data,
outside any run and the command's own output, and writable. A SQLite store keeps its
artifacts in ``mlartifacts/<experiment>`` beside the database, never in MLflow's default
``./mlruns`` of whatever folder the command runs from. A user name and password in a URI are
never stored or logged: MLflow gets them through its own environment variables.

A new sink is one :class:`Sink` subclass here (its hooks: ``start``, ``scalars``,
``child``, ``folder``, ``model``, ``finish``) and one key in
:class:`~ensemble.config.TrackingConfig`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from members.schema import redact

from .files import RunError

log = logging.getLogger(__name__)

#: the per-epoch fields of a member's history that are logged, as ``<member>/<field>``
EPOCH_FIELDS = ("train_loss", "val_macro_f1", "val_log_loss", "train_images_per_s")
#: the final metrics logged per member and strategy, as ``<split>/<who>/<metric>``
FINAL_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "weighted_f1", "log_loss", "ece")
#: the folder beside a SQLite store that holds its experiments' artifacts (as ``mlflow server``'s)
ARTIFACTS = "mlartifacts"
#: the variables MLflow reads a server's user name and password from
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def metric_key(*parts: str) -> str:
    """A key MLflow and TensorBoard both take: parts joined by ``/``, odd characters as ``_``."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. :]", "_", str(p)) for p in parts)


class Sink:
    """One tracker. Every hook may raise; :class:`Tracker` turns a failure into one warning."""

    what = "tracker"

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        """Open a run (called once, before the command's work)."""

    def scalars(self, values: dict[str, float], step: int = 0) -> None:
        """Numbers, at ``step`` (an epoch; 0 for final figures)."""

    def child(self, run_name: str, params: dict[str, str], values: dict[str, float], step: int) -> None:
        """A nested result (a tuning candidate)."""

    def folder(self, path: Path, under: str) -> None:
        """Files to keep with the run (the report folder)."""

    def text(self, name: str, text: str) -> None:
        """A short document (the run card, the decisions summary)."""

    def tags(self, tags: dict[str, str]) -> None:
        """Labels learnt during the work (the data's fingerprints)."""

    def model(self, run_dir: Path) -> None:
        """The trained ensemble, loadable from the tracker."""

    def finish(self, ok: bool) -> None:
        """Close the run: finished, or failed."""

    def written_paths(self) -> dict[str, str]:
        """Folders on this machine the sink writes that only it can name (may ask its store),
        as ``{path: what}``; checked before any work."""
        return {}


def sqlite_artifacts(store: tuple[str, str] | None, experiment: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: ``mlartifacts/<experiment>``
    beside the database (MLflow's own default is ``./mlruns`` of the current folder)."""
    if store is None or store[0] != "sqlite:///":
        return None
    return str(Path(store[1]).parent / ARTIFACTS / re.sub(r"[^A-Za-z0-9_-]", "_", experiment))


def local_paths(cfg) -> list[tuple[str, str, bool]]:
    """The places ``tracking:`` writes on this machine that its settings name (a TensorBoard
    folder, a ``file:`` store, a SQLite database and its artifact folder), as ``(path, the
    setting that gave it, whether it is a file)``."""
    from .config import local_store

    out = [(cfg.tensorboard, "`tracking.tensorboard`", False)] if cfg.tensorboard else []
    if cfg.mlflow is not None:
        store = local_store(cfg.mlflow.uri)
        if store is not None:
            out.append((store[1], "`tracking.mlflow.uri`", store[0] == "sqlite:///"))
        artifacts = sqlite_artifacts(store, cfg.mlflow.experiment)
        if artifacts is not None:
            out.append((artifacts, f"`tracking.mlflow` (artifacts of experiment {cfg.mlflow.experiment!r})", False))
    return out


def _local_folder(uri: str | None) -> str | None:
    """The local path of an artifact location (``file:`` URI or plain path); None elsewhere."""
    from urllib.parse import unquote, urlsplit

    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return unquote(parts.path)
    return uri if not parts.scheme else None


class MlflowSink(Sink):
    """An MLflow run (``MlflowClient``: no global state; tuning candidates are nested runs)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.what = f"MLflow at {redact(cfg.uri)}"
        from .config import local_store

        store = local_store(cfg.uri)
        self.artifacts = sqlite_artifacts(store, cfg.experiment)
        if store is not None and store[0] != "sqlite:///":
            # MLflow 3 refuses its file store unless asked; naming a file: URI is asking
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # an unreachable server: a few seconds, not MLflow's default of minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its retry notes: the failure is one line
        from mlflow.tracking import MlflowClient

        self.saved_env: dict[str, str | None] = {}
        try:
            self.client = MlflowClient(self._client_uri())
        except Exception:
            self._restore_env()
            raise
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def _client_uri(self) -> str:
        """The URI the client opens. A user and password taken out of the config's URI go to a
        server through MLflow's environment variables (set while the sink is open: MLflow
        names URLs in its messages), and back into a database URI (its driver needs them)."""
        from urllib.parse import quote, urlsplit

        from .config import tracking_credentials

        creds = tracking_credentials(self.cfg.uri)
        if creds is None:
            return self.cfg.uri
        user, password = creds
        parts = urlsplit(self.cfg.uri)
        if parts.scheme in ("http", "https"):
            self.saved_env = {k: os.environ.get(k) for k in CREDENTIAL_VARS}
            os.environ[CREDENTIAL_VARS[0]] = user
            if password is not None:
                os.environ[CREDENTIAL_VARS[1]] = password
            return self.cfg.uri
        userinfo = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
        return parts._replace(netloc=f"{userinfo}@{parts.netloc}").geturl()

    def written_paths(self) -> dict[str, str]:
        """The artifact folder of the experiment when it already exists and is on this machine
        (one made earlier, by effens or not, may point anywhere)."""
        found = self.client.get_experiment_by_name(self.cfg.experiment)
        folder = _local_folder(found.artifact_location) if found is not None else None
        return {folder: f"`tracking.mlflow` (artifacts of experiment {self.cfg.experiment!r})"} if folder else {}

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        found = self.client.get_experiment_by_name(self.cfg.experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(
                self.cfg.experiment, artifact_location=Path(self.artifacts).as_uri() if self.artifacts else None
            )
        )
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
        self._params(self.run_id, params)

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def scalars(self, values: dict[str, float], step: int = 0) -> None:
        assert self.run_id is not None, "start() first"
        self._metrics(self.run_id, values, step)

    def child(self, run_name: str, params: dict[str, str], values: dict[str, float], step: int) -> None:
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={"mlflow.parentRunId": self.run_id, "effens.command": "tune candidate"},
        )
        try:
            self._params(run.info.run_id, params)
            self._metrics(run.info.run_id, values, 0)
        except Exception:
            self.client.set_terminated(run.info.run_id, "FAILED")
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def folder(self, path: Path, under: str) -> None:
        self.client.log_artifacts(self.run_id, str(path), under)

    def text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def model(self, run_dir: Path) -> None:
        if not self.cfg.log_model:
            return
        import tempfile

        from .serving.mlflow_model import save_mlflow_model

        with tempfile.TemporaryDirectory() as tmp:
            save_mlflow_model(run_dir, Path(tmp) / "model")
            self.client.log_artifacts(self.run_id, str(Path(tmp) / "model"), "model")
        log.info("tracking: model logged to MLflow: runs:/%s/model", self.run_id)

    def finish(self, ok: bool) -> None:
        try:
            if self.run_id is not None:
                self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
                if ok:
                    log.info(
                        "tracking: MLflow run %s (experiment %s) at %s",
                        self.run_id,
                        self.cfg.experiment,
                        redact(self.cfg.uri),
                    )
        finally:
            self._restore_env()

    def _restore_env(self) -> None:
        """The credential variables as they were before :meth:`_client_uri`."""
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.saved_env = {}


class TensorBoardSink(Sink):
    """Event files under ``tracking.tensorboard/<run name>`` (read by TensorBoard)."""

    def __init__(self, folder: str) -> None:
        self.root = Path(folder)
        self.what = f"TensorBoard in {folder}"
        self.writer: Any = None  # a SummaryWriter once started

    def start(self, run_name: str, params: dict[str, str], tags: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.root / run_name))
        rows = "\n".join(f"| {k} | {v} |" for k, v in {**tags, **params}.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)

    def scalars(self, values: dict[str, float], step: int = 0) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), int(step))
        self.writer.flush()

    def child(self, run_name: str, params: dict[str, str], values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(metric_key("candidates", k), float(v), int(step))
        self.writer.add_text(
            "candidates", f"{run_name}: " + ", ".join(f"{k}={v}" for k, v in params.items()), int(step)
        )

    def text(self, name: str, text: str) -> None:
        self.writer.add_text(name, text, 0)

    def tags(self, tags: dict[str, str]) -> None:
        self.writer.add_text("tags", "\n".join(f"- {k}: {v}" for k, v in tags.items()), 0)

    def finish(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close()


def check_tracking(cfg, inputs: Sequence, outputs: Sequence = ()) -> None:
    """Refuse, before any work, what ``tracking:`` cannot do: a package that is not
    installed, a URI MLflow cannot use, or a place it writes (a TensorBoard folder, a local
    store, an experiment's artifact folder) that is inside an input, a run or one of the
    command's ``outputs``, or that cannot be written."""
    inputs = [str(p) for p in inputs if p]
    outputs = [str(p) for p in outputs if p]
    for path, what, file in local_paths(cfg):
        check_location(path, what, inputs, outputs, file)
    sinks = _sinks(cfg)
    try:
        for sink in sinks:
            try:
                found = sink.written_paths()
            except Exception:  # noqa: BLE001 - a store that cannot be asked: its sink warns when it starts
                continue
            for path, what in found.items():
                check_location(path, what, inputs, outputs)
    finally:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.finish(False)


def check_location(path: str, what: str, inputs: list[str], outputs: list[str], file: bool = False) -> None:
    """Refuse a place a tracker writes (``file``: a database file, else a folder) that is
    inside an input or a run (as ``--out``), inside a folder the command writes, or that
    cannot be written; ``what`` names the setting that gave it."""
    from .runfolder import check_output_path

    check_output_path(path, inputs, flag=what)
    real = os.path.realpath(path)
    for out in outputs:
        if Path(real).is_relative_to(os.path.realpath(out)):
            raise RunError(
                f"{what} {path}: is inside {out}, which this command writes; choose a place outside "
                f"it (trackers never write into a run or a command's output)"
            )
    if file and os.path.isdir(path):
        raise RunError(f"{what} {path}: is a folder; name a database file")
    folder = Path(path).parent if file else next(p for p in (Path(path), *Path(path).parents) if p.exists())
    if file and not folder.is_dir():
        raise RunError(f"{what} {path}: the folder {folder} does not exist; create it or choose another")
    problem = _cannot_write(path if file and os.path.exists(path) else None, folder)
    if problem:
        raise RunError(f"{what} {path}: cannot create files in {folder} ({problem}); choose a writable place")


def _cannot_write(file: str | None, folder: Path) -> str | None:
    """Why ``file`` (when it exists) or a new file in ``folder`` cannot be written, tried for
    real (permission bits say nothing for root or a read-only mount); None when it can. The
    try leaves nothing behind: the file is opened without writing, the probe has no name."""
    import tempfile

    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        if file is not None:
            os.close(os.open(file, os.O_RDWR))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _sinks(cfg) -> list[Sink]:
    """The sinks ``tracking:`` names; a missing package or an unusable URI is refused here."""
    sinks: list[Sink] = []
    if cfg.mlflow is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise RunError(
                "`tracking.mlflow` needs MLflow, which is not installed: pip install 'effens[track]'"
            ) from None
        try:
            sinks.append(MlflowSink(cfg.mlflow))
        except Exception as exc:  # noqa: BLE001 - an unknown scheme, a missing database driver: one line
            first = redact((str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
            raise RunError(
                f"`tracking.mlflow.uri`: MLflow cannot use {redact(cfg.mlflow.uri)!r} ({type(exc).__name__}: {first})"
            ) from None
    if cfg.tensorboard is not None:
        try:
            import tensorboard  # noqa: F401  (torch's SummaryWriter writes through it)
        except ImportError:
            raise RunError(
                "`tracking.tensorboard` needs TensorBoard, which is not installed: pip install 'effens[track]'"
            ) from None
        sinks.append(TensorBoardSink(cfg.tensorboard))
    return sinks


class Tracker:
    """The sinks of one command; each call goes to every sink still working."""

    #: failures after which a sink that did start is dropped (each one may have waited on a timeout)
    MAX_FAILURES = 3

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self.failures: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _each(self, hook: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, hook)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops the work: one line each
                first = (str(exc).strip().splitlines() or [""])[0]
                first = redact(first if len(first) <= 300 else first[:300] + "...")
                n = self.failures[id(sink)] = self.failures.get(id(sink), 0) + 1
                if hook == "start" or n >= self.MAX_FAILURES:
                    log.warning(
                        "tracking: %s failed (%s: %s); going on without it", sink.what, type(exc).__name__, first
                    )
                    self.sinks.remove(sink)
                    with contextlib.suppress(Exception):
                        sink.finish(False)
                else:
                    log.warning(
                        "tracking: %s could not log %s (%s: %s); the rest is still logged",
                        sink.what,
                        hook,
                        type(exc).__name__,
                        first,
                    )

    def scalars(self, values: dict[str, float], step: int = 0) -> None:
        self._each("scalars", {k: v for k, v in values.items() if _number(v)}, step)

    def child(self, run_name: str, params: dict, values: dict[str, float], step: int) -> None:
        self._each(
            "child",
            run_name,
            {k: str(v) for k, v in params.items()},
            {k: v for k, v in values.items() if _number(v)},
            step,
        )

    def folder(self, path: Path, under: str) -> None:
        self._each("folder", Path(path), under)

    def text(self, name: str, text: str) -> None:
        self._each("text", name, text)

    def model(self, run_dir: Path) -> None:
        self._each("model", Path(run_dir))

    def tags(self, tags: dict[str, str]) -> None:
        self._each("tags", {k: str(v) for k, v in tags.items()})


def _number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def environment_tags(command: str, cfg) -> dict[str, str]:
    """What a run ran on and with: effens, torch and timm versions, CPU and GPU model, the
    precision and runtime asked for, the effens checkout's commit (when it is one) and whether
    its tracked files differ from that commit (``effens.dirty``: the commit alone would not
    reproduce the run)."""
    import platform

    import timm
    import torch

    from members.precision import cpu_info

    from . import __version__

    model, flags = cpu_info()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    tags = {
        "effens.command": command,
        "effens.version": __version__,
        "effens.torch": torch.__version__,
        "effens.timm": timm.__version__,
        "effens.python": platform.python_version(),
        "effens.cpu": model,
        "effens.cpu_flags": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags),
        "effens.gpu": gpu,
        "effens.precision": cfg.precision,
        "effens.runtime": cfg.runtime,
    }
    src = Path(__file__).resolve().parent.parent
    if (src / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            if commit:
                tags["effens.commit"] = commit
                status = subprocess.run(
                    ["git", "status", "--porcelain", "--untracked-files=no"],
                    cwd=src,
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                if status.returncode == 0:
                    tags["effens.dirty"] = "true" if status.stdout.strip() else "false"
    return tags


@contextlib.contextmanager
def tracking(
    cfg, command: str, name: str, params: dict | None = None, tags: dict[str, str] | None = None
) -> Iterator[Tracker]:
    """Open the sinks of ``cfg`` (a :class:`~ensemble.config.TrackingConfig`) for one
    command; the run is marked failed if the command raises, finished otherwise."""
    sinks = _sinks(cfg)
    tracker = Tracker(sinks)
    if sinks:
        run_name = f"{name}-{command}-{time.strftime('%Y%m%d-%H%M%S')}"
        tracker._each(
            "start",
            run_name,
            {k: _param(v) for k, v in (params or {}).items()},
            {k: str(v) for k, v in (tags or {}).items()},
        )
    ok = False
    try:
        yield tracker
        ok = True
    finally:
        for sink in tracker.sinks:
            try:
                sink.finish(ok)
            except Exception as exc:  # noqa: BLE001
                log.warning(
                    "tracking: %s could not close its run (%s: %s)",
                    sink.what,
                    type(exc).__name__,
                    redact((str(exc).splitlines() or [""])[0][:300]),
                )


def _param(v: Any) -> str:
    return "null" if v is None else str(v)


def config_params(cfg) -> dict[str, str]:
    """The resolved config as flat ``key.path -> value`` parameters."""
    from .config import config_to_dict, flat_keys

    return {
        metric_key(k): redact(_param(v)) if k == "tracking.mlflow.uri" else _param(v)
        for k, v in flat_keys(config_to_dict(cfg)).items()
    }


def final_metrics(doc: dict, prefix: str = "") -> dict[str, float]:
    """``<split>/<who>/<metric>`` for every member, strategy and the default ensemble of a
    metrics document, plus the decisions summary (coverage, review) and timings."""
    out: dict[str, float] = {}
    groups = {
        **{f"member {m}": v for m, v in (doc.get("members") or {}).items()},
        **{f"strategy {s}": v for s, v in (doc.get("strategies") or {}).items()},
        "ensemble": doc.get("ensemble") or {},
    }
    for who, splits in groups.items():
        name = who.split(" ", 1)[-1] if who != "ensemble" else "ensemble"
        for split, metrics in splits.items():
            for m in FINAL_METRICS:
                if isinstance(metrics, dict) and _number(metrics.get(m)):
                    out[metric_key(*(p for p in (prefix, split, name, m) if p))] = metrics[m]
    decisions = (doc.get("decisions") or {}).get("splits") or {}
    for split, parts in decisions.items():
        for kind, by_level in (parts or {}).items():
            for level, values in (by_level or {}).items() if isinstance(by_level, dict) else ():
                for k, v in (values or {}).items() if isinstance(values, dict) else ():
                    if _number(v) and k not in ("n", "target"):
                        out[metric_key(*(p for p in (prefix, "decisions", split, f"{kind}_{level}", k) if p))] = v
    for k, v in (doc.get("timing") or {}).items():
        if _number(v):
            out[metric_key("timing", k)] = v
    return out


def log_histories(tracker: Tracker, ens) -> None:
    """Each member's per-epoch history, at its epoch."""
    for fm in ens.members_:
        for record in fm.meta.get("history") or []:
            tracker.scalars(
                {metric_key(fm.name, f): record[f] for f in EPOCH_FIELDS if f in record}, int(record.get("epoch", 0))
            )


def log_train(tracker: Tracker, run, ens, doc: dict) -> None:
    """What ``train`` logs once its report is written: histories, final metrics, the
    decisions summary, the report folder and config, and the model."""
    if not tracker:
        return
    tracker.tags(
        {
            f"effens.data.{split}": f"{d['fingerprint']} ({d['images']} images)"
            for split, d in (doc.get("data_summary") or {}).items()
        }
    )
    log_histories(tracker, ens)
    tracker.scalars(final_metrics(doc))
    tracker.scalars(
        {
            metric_key(fm.name, "best_epoch"): fm.meta["best_epoch"]
            for fm in ens.members_
            if _number(fm.meta.get("best_epoch"))
        }
    )
    card = run.card_path
    if card.is_file():
        tracker.text(card.name, card.read_text(encoding="utf-8"))
    tracker.folder(run.report_dir, "report")
    with _files_folder([run.config_path]) as folder:
        tracker.folder(folder, "config")
    tracker.model(run.root)


@contextlib.contextmanager
def _files_folder(paths: list[Path]) -> Iterator[Path]:
    """A temporary folder holding copies of ``paths`` (artifact APIs log folders)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="effens-track-") as tmp:
        for p in paths:
            if p.is_file():
                shutil.copy2(p, Path(tmp) / p.name)
        yield Path(tmp)


def log_tune(tracker: Tracker, rows: list[dict], names: list[str], best: dict, out_dir: Path) -> None:
    """One child run per candidate (its ratios, replacement and scores); the best on the parent."""
    if not tracker:
        return
    for step, r in enumerate(rows):
        params = {metric_key(f"{n}.{k}"): r[f"{n}_{k}"] for n in names for k in ("ratio", "replace")}
        params.update(candidate=r["candidate"], round=r["round"], epochs=r["epochs"])
        values = {
            k: r[k] for k in ("ensemble_score", "disagreement", "q_statistic", "error_correlation", "seconds") if k in r
        }
        values.update({metric_key(f"{n}_score"): r[f"{n}_score"] for n in names})
        tracker.child(f"candidate {r['candidate']} (round {r['round']})", params, values, step)
    tracker.scalars(
        {
            "best/ensemble_score": best["ensemble_score"],
            **{metric_key("best", f"{n}_ratio"): best[f"{n}_ratio"] for n in names},
        }
    )
    from .runfolder import CONFIG_NAME, REPORT_NAME

    with _files_folder(
        [out_dir / n for n in ("results.csv", REPORT_NAME, "scores.png", "best.yaml", "summary.json", CONFIG_NAME)]
    ) as folder:
        tracker.folder(folder, "tune")
