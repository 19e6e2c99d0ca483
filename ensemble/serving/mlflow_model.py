"""A run as an MLflow ``pyfunc`` model (``effens export --format mlflow``; logged with the
run when ``tracking.mlflow.log_model`` is on).

The model is saved *from code* (MLflow's models-from-code: a two-line script names
:class:`EffensModel`), so nothing is pickled; its artifact is a copy of the run folder
without caches and report, and its code is this package (``code_paths``), so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work where effens is not
installed. ``predict`` takes a DataFrame with an ``image`` column (encoded bytes) or a
``path`` column (image files on the serving machine, read only under the folders that
``EFFENS_ALLOWED_PATHS`` lists) and returns the columns of ``effens predict``'s CSV.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: the packages the model's environment pins (name on PyPI -> import name)
REQUIREMENTS = {
    "torch": "torch",
    "timm": "timm",
    "numpy": "numpy",
    "scikit-learn": "sklearn",
    "joblib": "joblib",
    "pyyaml": "yaml",
    "safetensors": "safetensors",
    "pillow": "PIL",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "onnx": "onnx",
    "openvino": "openvino",
    "pandas": "pandas",
    "mlflow": "mlflow",
}
#: the folders (``os.pathsep``-separated) whose files a ``path`` input may name; unset: none
ALLOWED_PATHS_ENV = "EFFENS_ALLOWED_PATHS"
#: the one answer for a path outside them, whether or not the file exists
PATH_REFUSED = (
    f"`path` is outside the folders that {ALLOWED_PATHS_ENV} lists on the serving machine "
    "(send the image's bytes in an `image` column instead)"
)

_ENTRY = '''"""effens: the pyfunc model MLflow loads (models from code; nothing pickled)."""
import mlflow

from ensemble.serving.mlflow_model import EffensModel

mlflow.models.set_model(EffensModel())
'''


def _pins() -> list[str]:
    """``name==version`` of each requirement installed here (local tags such as ``+cpu`` dropped)."""
    from importlib import metadata

    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return out


def allowed_folders() -> list[Path]:
    """The folders ``EFFENS_ALLOWED_PATHS`` lists, resolved (symbolic links followed)."""
    listed = os.environ.get(ALLOWED_PATHS_ENV, "").split(os.pathsep)
    return [Path(folder).resolve() for folder in listed if folder.strip()]


def allowed_path(path: str, folders: list[Path]) -> Path | None:
    """``path`` resolved, if it lies under one of ``folders`` (else None): decided from the
    name alone, so the answer never tells whether a file outside exists. The resolved path
    is what gets read, so a link swapped in after the check cannot lead outside."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL byte
        return None
    return real if any(real.is_relative_to(folder) for folder in folders) else None


@functools.cache
def _define():
    """The pyfunc class (defined on first use, so importing this module needs no MLflow)."""
    import mlflow.pyfunc

    class _EffensModel(mlflow.pyfunc.PythonModel):
        """A trained effens run answering DataFrames of image paths or bytes."""

        _skip_type_hint_validation = True  # the saved signature says what the input is

        def load_context(self, context) -> None:
            from ..runfolder import RunFolder, load_run
            from .answers import DecisionOptions, ImagePredictor, InferenceOptions

            run = context.artifacts["run"]
            self._ens = load_run(run)
            self._decisions = DecisionOptions.from_settings(RunFolder(run).read_config().decision)
            # the serving machine's own device: a run trained on a GPU still answers on a CPU-only host
            options = InferenceOptions(device="auto")
            self._make = lambda strategy: ImagePredictor(self._ens, strategy, options, self._decisions)
            self._predictors: dict[str | None, Any] = {}

        def predict(self, context, model_input, params=None):
            import pandas as pd
            from mlflow.exceptions import MlflowException

            from ..files import RunError
            from ..images import BadImageError, decode_image
            from .answers import flat_row

            strategy = (params or {}).get("strategy") or None
            predictor = self._predictors.get(strategy)
            if predictor is None:
                try:
                    predictor = self._predictors[strategy] = self._make(strategy)
                except (KeyError, ValueError, RunError) as exc:  # an unknown or unavailable strategy
                    raise MlflowException.invalid_parameter_value(f"`strategy`: {exc}") from None
            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            if len(frame) == 1 and any(isinstance(v, (list, tuple)) for v in frame.iloc[0].values):
                frame = pd.DataFrame(
                    {c: list(v) if isinstance(v, (list, tuple)) else [v] for c, v in frame.iloc[0].items()}
                )  # {"path": [a, b]}: one row per item
            if "path" not in frame.columns and "image" not in frame.columns:
                raise MlflowException.invalid_parameter_value(
                    "the input needs a `path` column (image files) or an `image` column (encoded bytes)"
                )
            keys, arrays, reasons = [], [], {}
            folders = allowed_folders()
            for i, row in enumerate(frame.to_dict("records")):
                path, data = row.get("path"), row.get("image")
                key = str(path) if isinstance(path, str) and path else f"image {i}"
                keys.append(key)
                stream = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray)) and data else None
                try:
                    if stream is not None:
                        arrays.append(decode_image(stream, predictor.size))
                    elif isinstance(path, str) and path:
                        real = allowed_path(path, folders)
                        if real is None:
                            raise BadImageError(PATH_REFUSED)
                        try:
                            arrays.append(decode_image(str(real), predictor.size))
                        except BadImageError as exc:  # named as the client named it
                            raise BadImageError(str(exc).replace(str(real), path)) from None
                    else:
                        raise BadImageError("no `path` and no `image` bytes in this row")
                except BadImageError as exc:
                    arrays.append(None)
                    reasons[key] = str(exc).replace(str(stream), key) if stream is not None else str(exc)
            rows = predictor.rows(keys, arrays, reasons)
            classes, names = predictor.classes, predictor.names
            columns = [
                "path",
                "prediction",
                *self._decisions.columns(),
                *(f"proba:{c}" for c in classes),
                *(f"vote:{n}" for n in names),
                "error",
            ]
            out = pd.DataFrame([flat_row(r) for r in rows], columns=columns)
            for c in (c for c in columns if c.startswith("proba:")):  # an unreadable row: null, not NaN
                out[c] = out[c].astype(object).where(out[c].notna(), None)
            return out

    return _EffensModel


def __getattr__(name: str):
    if name == "EffensModel":
        return _define()
    raise AttributeError(name)


def save_mlflow_model(run_dir: str | Path, path: str | Path) -> dict:
    """Write the run as an MLflow model folder at ``path`` (which must not exist); returns
    its default strategy, classes and members."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from ..runfolder import NOT_FOR_SERVING, load_run

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # effens logs its own progress
    ens = load_run(run_dir)  # a broken run is refused before anything is written
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "path", required=False), ColSpec("binary", "image", required=False)]),
        params=ParamSchema([ParamSpec("strategy", "string", ens.combiner_.strategy)]),
    )
    about = {
        "strategy": ens.combiner_.strategy,
        "classes": list(ens.classes_),
        "members": [fm.name for fm in ens.members_],
    }
    package = Path(__file__).resolve().parents[1]  # ensemble/, beside members/
    with tempfile.TemporaryDirectory() as tmp:
        run_copy = Path(tmp) / "run"
        shutil.copytree(
            run_dir,
            run_copy,
            ignore=lambda folder, names: [
                n for n in names if Path(folder).resolve() == Path(run_dir).resolve() and n in NOT_FOR_SERVING
            ],
        )
        entry = Path(tmp) / "effens_model.py"
        entry.write_text(_ENTRY, encoding="utf-8")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example.*")  # an example would run the model
            mlflow.pyfunc.save_model(
                str(path),
                python_model=str(entry),
                artifacts={"run": str(run_copy)},
                code_paths=[str(package), str(package.parent / "members")],
                pip_requirements=_pins(),
                signature=signature,
                metadata=about,
            )
    return about
