"""The MLflow pyfunc model (ensemble/serving/mlflow_model.py) as a stranger calls it: a `path` input is
read only under the folders EFFENS_ALLOWED_PATHS lists, and the refusal is the same whether
or not the file exists (#41)."""

import pytest

from ensemble.cli import main

mlflow = pytest.importorskip("mlflow", reason="the MLflow model needs MLflow: pip install 'effens[track]'")


@pytest.fixture(scope="module")
def model(trained, tmp_path_factory):
    _, run = trained
    out = tmp_path_factory.mktemp("mlflow") / "model"
    assert main(["export", str(run), "--format", "mlflow", "--out", str(out)]) == 0
    return mlflow.pyfunc.load_model(str(out))


def _errors(model, paths):
    import pandas as pd

    return list(model.predict(pd.DataFrame({"path": [str(p) for p in paths]}))["error"])


def test_path_inputs_are_read_only_under_the_allowed_folders(model, tiny_data, tmp_path, monkeypatch):
    import shutil

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    photo = shutil.copy(sorted((tiny_data / "test").rglob("*.png"))[0], allowed / "photo.png")
    (allowed / "link.png").symlink_to("/etc/passwd")  # inside by name, outside once resolved
    (tmp_path / "not-an-image.png").write_text("secret")
    outside = [photo, "/etc/passwd", "/etc/no-such-file", tmp_path / "not-an-image.png", "relative.png"]
    monkeypatch.delenv("EFFENS_ALLOWED_PATHS", raising=False)
    errors = _errors(model, outside)
    assert len(set(errors)) == 1 and "EFFENS_ALLOWED_PATHS" in errors[0], errors  # off by default
    assert "/etc" not in errors[0] and "not found" not in errors[0] and "identify" not in errors[0]
    monkeypatch.setenv("EFFENS_ALLOWED_PATHS", f"{allowed}:{tmp_path / 'nothing-here'}")
    escapes = [
        "/etc/passwd",
        "/etc/no-such-file",
        allowed / ".." / ".." / ".." / ".." / "etc" / "passwd",
        allowed / "link.png",
        tmp_path / "not-an-image.png",
    ]
    got = _errors(model, [photo, *escapes])
    assert got[0] == "" and set(got[1:]) == {errors[0]}, got
    # inside the allowed folders a missing file is said as such
    missing = _errors(model, [allowed / "absent.png"])[0]
    assert missing and missing != errors[0]
