"""Tracking and the run card (issue #27): a real local MLflow store and real TensorBoard event
files read back with their own readers; the MLflow pyfunc model against `effens predict`;
an unreachable tracker is one warning and the run is complete; the card's figures."""

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import synth
import yaml

from ensemble.cli import main

mlflow = pytest.importorskip("mlflow", reason="tracking tests need MLflow: pip install 'effens[track]'")
pytest.importorskip("tensorboard", reason="tracking tests need TensorBoard: pip install 'effens[track]'")


def _runs(uri: str, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["effens"], search_all_experiments=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture(scope="module")
def tracked(tiny_data, tmp_path_factory):
    """A tiny run trained with MLflow (file store) and TensorBoard both on."""
    root = tmp_path_factory.mktemp("tracked")
    cfg = synth.tiny_config(tiny_data)
    cfg["report"] = {"purpose": "sort synthetic shapes for the tests", "limits": ["never seen real photos"]}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    uri = f"file:{root / 'mlruns'}"
    assert (
        main(
            [
                "train",
                str(root / "cfg.yaml"),
                "--out",
                str(root / "run"),
                "--tracking",
                f"mlflow={uri}",
                "--tracking",
                f"tensorboard={root / 'tb'}",
            ]
        )
        == 0
    )
    return root, uri


def test_mlflow_run_holds_params_epochs_final_metrics_tags_and_artifacts(tracked, monkeypatch):
    root, uri = tracked
    runs = _runs(uri, monkeypatch)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.effens.command"] == "train"
    # the resolved config as flat parameters
    assert run["params.members.1.bagging.ratio"] == "0.6" and run["params.seed"] == "0"
    assert run["params.report.purpose"] == "sort synthetic shapes for the tests"
    # final metrics per member and strategy on every split, and the decisions summary
    for split in ("val", "test", "oob"):
        for who in ("a", "b", "c", "soft", "hard", "stacking", "ensemble"):
            assert np.isfinite(run[f"metrics.{split}/{who}/macro_f1"]), (split, who)
    assert any(c.startswith("metrics.decisions/val/coverage_") for c in runs.columns)
    assert any(c.startswith("metrics.decisions/test/review_") for c in runs.columns)
    for tag in (
        "effens.version",
        "effens.cpu",
        "effens.gpu",
        "effens.precision",
        "effens.runtime",
        "effens.torch",
        "effens.data.train",
    ):
        assert isinstance(run[f"tags.{tag}"], str) and run[f"tags.{tag}"], tag
    client = mlflow.tracking.MlflowClient(uri)
    # per member, per epoch: the same numbers as the member's saved history
    history = yaml.safe_load((root / "run" / "members" / "a" / "member.json").read_text())["history"]
    logged = client.get_metric_history(run.run_id, "a/val_macro_f1")
    assert [m.step for m in logged] == [h["epoch"] for h in history]
    assert [m.value for m in logged] == pytest.approx([h["val_macro_f1"] for h in history])
    for key in ("a/train_loss", "b/val_log_loss", "c/train_images_per_s"):
        assert len(client.get_metric_history(run.run_id, key)) == 2, key
    top = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"report", "config", "model", "card.md"} <= top
    report = {a.path for a in client.list_artifacts(run.run_id, "report")}
    assert {"report/index.html", "report/metrics.json", "report/card.md"} <= report


def test_tensorboard_event_files_hold_the_per_epoch_scalars(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = tracked
    (folder,) = [p for p in (root / "tb").iterdir() if p.is_dir()]
    acc = EventAccumulator(str(folder))
    acc.Reload()
    history = yaml.safe_load((root / "run" / "members" / "b" / "member.json").read_text())["history"]
    got = acc.Scalars("b/train_loss")
    assert [e.step for e in got] == [h["epoch"] for h in history]
    assert [e.value for e in got] == pytest.approx([h["train_loss"] for h in history], rel=1e-5)
    assert "val/ensemble/macro_f1" in acc.Tags()["scalars"]


def test_the_logged_model_and_the_exported_one_predict_as_effens_predict(
    tracked, trained, tmp_path, tiny_data, monkeypatch
):
    import pandas as pd

    root, uri = tracked
    _, run = trained
    monkeypatch.setenv("EFFENS_ALLOWED_PATHS", str(tiny_data))  # `path` inputs are read only there
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(tiny_data / "test"), "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        ref = list(csv.DictReader(fh))
    assert main(["export", str(run), "--format", "mlflow", "--out", str(tmp_path / "model")]) == 0
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    got = model.predict(pd.DataFrame({"path": [r["path"] for r in ref]}))
    assert list(got.columns) == list(ref[0])
    assert list(got["prediction"]) == [r["prediction"] for r in ref]
    for c in (c for c in ref[0] if c.startswith(("proba:", "vote:"))):
        if c.startswith("proba:"):
            assert np.allclose(got[c].astype(float), [float(r[c]) for r in ref], atol=1e-6), c
        else:
            assert list(got[c]) == [r[c] for r in ref], c
    # bytes in, a broken row answered with its error and the others predicted
    data = Path(ref[0]["path"]).read_bytes()
    two = model.predict(pd.DataFrame({"image": [data, b"not an image"]}))
    assert two["prediction"][0] == ref[0]["prediction"] and two["error"][0] == ""
    assert two["prediction"][1] == "" and "cannot decode" in two["error"][1] and "BytesIO" not in two["error"][1]
    # the strategy per call, as `predict --strategy`
    hard = tmp_path / "hard.csv"
    assert main(["predict", str(run), str(tiny_data / "test"), "--out", str(hard), "--strategy", "hard"]) == 0
    with open(hard, newline="") as fh:
        want = [r["prediction"] for r in csv.DictReader(fh)]
    assert (
        list(model.predict(pd.DataFrame({"path": [r["path"] for r in ref]}), params={"strategy": "hard"})["prediction"])
        == want
    )
    # the model logged with the tracked run loads from the store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_id = _runs(uri, monkeypatch).iloc[0].run_id
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert len(logged.predict(pd.DataFrame({"path": [r["path"] for r in ref[:3]]}))) == 3
    req = (tmp_path / "model" / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in req) and any(r.startswith("timm==") for r in req)
    # {"path": [...]} as MLflow hands it over; an unknown strategy is the caller's error, not a crash
    assert len(model.predict({"path": [r["path"] for r in ref[:2]]})) == 2
    assert two["proba:" + next(iter(c[6:] for c in ref[0] if c.startswith("proba:")))][1] is None  # null, not NaN
    with pytest.raises(mlflow.exceptions.MlflowException, match="strategy"):
        model.predict(pd.DataFrame({"path": [ref[0]["path"]]}), params={"strategy": "nosuch"})
    # a second export replaces the first; a folder of someone else's files (dot-files too) is refused
    assert main(["export", str(run), "--format", "mlflow", "--out", str(tmp_path / "model")]) == 0
    for name in ("notes.txt", ".gitignore"):
        mine = tmp_path / f"mine-{name}"
        mine.mkdir()
        (mine / name).write_text("keep")
        assert main(["export", str(run), "--format", "mlflow", "--out", str(mine)]) == 2
        assert (mine / name).read_text() == "keep"
    (tmp_path / "model" / ".gitignore").write_text("keep")
    assert main(["export", str(run), "--format", "mlflow", "--out", str(tmp_path / "model")]) == 2
    assert (tmp_path / "model" / ".gitignore").read_text() == "keep"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert main(["export", str(run), "--format", "mlflow", "--out", str(tmp_path / "link")]) == 2


def test_an_unreachable_tracker_is_one_warning_and_the_run_is_complete(tiny_data, tmp_path, capfd, caplog):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1)))
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--tracking", f"mlflow={url}"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert len(warned) == 1 and f"tracking: MLflow at {url} failed" in warned[0], warned
    assert "going on without it" in warned[0] and "\n" not in warned[0]
    assert "Traceback" not in capfd.readouterr().err
    assert (tmp_path / "run" / "report" / "metrics.json").is_file()
    assert main(["predict", str(tmp_path / "run"), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv")]) == 0


def test_a_sink_that_fails_midway_is_dropped_and_the_others_go_on(caplog):
    from ensemble.tracking import Sink, Tracker

    class Broken(Sink):
        what = "broken"

        def scalars(self, values, step=0):
            raise ConnectionError("gone\nsecond line")

    class Keeps(Sink):
        what = "keeps"

        def __init__(self):
            self.got = []

        def scalars(self, values, step=0):
            self.got.append((step, values))

    keeps, broken = Keeps(), Broken()
    tracker = Tracker([broken, keeps])
    for step in range(1, 5):
        tracker.scalars({"x": float(step), "nan": float("nan"), "flag": True}, step)
    assert keeps.got == [(k, {"x": float(k)}) for k in range(1, 5)]
    warned = [r.getMessage() for r in caplog.records if "tracking:" in r.getMessage()]
    # each failure one line; after three (each may have waited on a timeout) the sink is dropped
    assert warned == [
        "tracking: broken could not log scalars (ConnectionError: gone); the rest is still logged"
    ] * 2 + ["tracking: broken failed (ConnectionError: gone); going on without it"]
    assert tracker.sinks == [keeps]


def test_tune_keys_of_members_with_odd_names_are_ones_trackers_take():
    from ensemble.tracking import Sink, Tracker, log_tune

    class Keys(Sink):
        def __init__(self):
            self.keys = []

        def child(self, run_name, params, values, step):
            self.keys += [*params, *values]

        def scalars(self, values, step=0):
            self.keys += list(values)

    sink = Keys()
    name = "b é (x)"
    row = {
        "candidate": "r1",
        "round": 0,
        "epochs": 1,
        "ensemble_score": 0.5,
        f"{name}_ratio": 0.8,
        f"{name}_replace": True,
        f"{name}_score": 0.4,
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log_tune(Tracker([sink]), [row], [name], row, Path(tmp))
    import re

    assert sink.keys and all(re.fullmatch(r"[A-Za-z0-9_\-. :/]+", k) for k in sink.keys), sink.keys


def test_tune_logs_one_child_run_per_candidate_and_evaluate_logs_its_metrics(tiny_data, trained, tmp_path, monkeypatch):
    cfg_path, run = trained
    uri = f"file:{tmp_path / 'mlruns'}"
    assert (
        main(
            [
                "tune",
                str(cfg_path),
                "--out",
                str(tmp_path / "tune"),
                "--tracking",
                f"mlflow={uri}",
                "--set",
                "tune.ratios=[0.6,1.0]",
                "--set",
                "tune.replace=[true]",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                str(run),
                str(tiny_data / "test"),
                "--out",
                str(tmp_path / "ev"),
                "--tracking",
                f"mlflow={uri}",
            ]
        )
        == 0
    )
    runs = _runs(uri, monkeypatch)
    parent = runs[runs["tags.effens.command"] == "tune"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent.run_id]
    with open(tmp_path / "tune" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(children) == len(rows) == 2
    assert sorted(children["params.a.ratio"].astype(float)) == [0.6, 1.0]
    assert sorted(children["metrics.ensemble_score"]) == pytest.approx(
        sorted(float(r["ensemble_score"]) for r in rows), abs=1e-6
    )  # the CSV keeps 6 decimals
    ev = runs[runs["tags.effens.command"] == "evaluate"].iloc[0]
    assert ev["metrics.eval/ensemble/macro_f1"] == pytest.approx(
        yaml.safe_load((tmp_path / "ev" / "metrics.json").read_text())["ensemble"]["eval"]["macro_f1"]
    )


def test_tracking_settings_are_checked_and_never_force_a_restart(tiny_data, tmp_path, capsys, caplog, monkeypatch):
    import sys

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1)))
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exc:
        main(["train", str(cfg), "--out", out, "--tracking", "wandb"])
    assert exc.value.code == 2 and "must be mlflow[=URI], tensorboard=DIR or none" in capsys.readouterr().err
    assert main(["train", str(cfg), "--out", out, "--set", "tracking.mlflow.experiment=x"]) == 2
    assert "missing required key `tracking.mlflow.uri`" in capsys.readouterr().err + caplog.text
    for bad, says in (
        ("mlflow=foo://bar", "`tracking.mlflow.uri`: MLflow cannot use 'foo://bar'"),
        ("mlflow=sqlite:///", "`tracking.mlflow.uri` names no database file, so MLflow would log to memory"),
        (f"tensorboard={tiny_data / 'train' / 'tb'}", "is inside the input folder"),
    ):
        caplog.clear()
        assert main(["train", str(cfg), "--out", out, "--tracking", bad]) == 2, bad
        err = capsys.readouterr().err + caplog.text
        assert says in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and not (tiny_data / "train" / "tb").exists()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    caplog.clear()
    assert main(["train", str(cfg), "--out", out, "--tracking", "mlflow=file:./x"]) == 2
    assert "needs MLflow, which is not installed" in capsys.readouterr().err + caplog.text
    assert not (tmp_path / "run" / "members").exists()
    monkeypatch.undo()
    assert main(["train", str(cfg), "--out", out]) == 0
    # a tracker added later is not a config change: the finished run is reused, not retrained; the
    # folder is taken as written (never read as YAML: a date stays a name)
    caplog.clear()
    assert main(["train", str(cfg), "--out", out, "--tracking", f"tensorboard={tmp_path / '2024-01-01'}"]) == 0
    assert "different config" not in capsys.readouterr().err + caplog.text
    assert any((tmp_path / "2024-01-01").rglob("events.out.tfevents.*"))


def test_the_run_card_states_data_members_intervals_limits_and_how_to_reproduce(tracked):
    root, _ = tracked
    card = (root / "run" / "report" / "card.md").read_text()
    assert card.startswith("## Run card")
    assert "sort synthetic shapes for the tests" in card and "- never seen real photos" in card
    metrics = yaml.safe_load((root / "run" / "report" / "metrics.json").read_text())
    summary = metrics["data_summary"]
    assert {s: summary[s]["images"] for s in summary} == {"train": 48, "val": 18, "test": 18}
    for split, d in summary.items():
        assert f"| {split} | {d['images']} |" in card and d["fingerprint"] in card
    for name in ("a", "b", "c"):
        assert f"| {name} | test_efficientnet |" in card
    iv = metrics["card"]["intervals"]["test"]["ensemble"]["macro_f1"]
    assert iv[0] <= metrics["ensemble"]["test"]["macro_f1"] <= iv[1]
    assert f"[{iv[0]:.3f}, {iv[1]:.3f}]" in card
    assert "effens train" in card and "config.yaml" in card
    assert "Run card" in (root / "run" / "report" / "index.html").read_text()


def test_measured_limits_name_a_val_to_test_drop_and_a_missed_coverage_only_when_there():
    from ensemble.reporting.card import bootstrap_interval, measured_limits

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.6, y, (y + 1) % 3)
    iv = bootstrap_interval(y, pred, 3)
    assert iv == bootstrap_interval(y, pred, 3)  # seeded: the same run gives the same card
    assert iv["accuracy"][0] < float(np.mean(y == pred)) < iv["accuracy"][1]
    per_class = {c: {"recall": 0.9} for c in "xyz"}
    doc = {
        "strategy": "soft",
        "ensemble": {
            "val": {"macro_f1": 0.9, "n": 400, "per_class": per_class, "ece": 0.02},
            "test": {"macro_f1": 0.6, "n": 300, "per_class": per_class, "ece": 0.02},
        },
        "decisions": {"splits": {"test": {"coverage": {"0.9": {"coverage": 0.8, "below_target": True}}}}},
    }
    limits = measured_limits(doc, {"test": {"ensemble": iv}})
    assert any("falls from 0.900 on val to 0.600 on test" in x for x in limits)
    assert any("90% of the time hold it 80%" in x for x in limits)
    doc["ensemble"]["test"]["macro_f1"] = 0.9
    doc["decisions"]["splits"]["test"]["coverage"]["0.9"]["below_target"] = False
    assert measured_limits(doc, {"test": {"ensemble": {"macro_f1": [0.85, 0.95]}}}) == []
    doc["ensemble"]["val"]["per_class"] = {**per_class, "z": {"recall": 0.0, "support": 0}}  # no z image in val
    assert measured_limits(doc, {"test": {"ensemble": {"macro_f1": [0.85, 0.95]}}}) == []
    doc["ensemble"]["val"]["per_class"]["y"] = {"recall": 0.5, "support": 10}
    assert measured_limits(doc, {}) == ["On val, only 50% of the y images are recognised (recall)."]


def test_the_commit_tag_says_whether_the_checkout_differs_from_it(tmp_path):
    import subprocess

    from ensemble.config import config_from_dict
    from ensemble.tracking import environment_tags

    src = Path(__file__).resolve().parents[1]
    if not (src / ".git").exists():
        pytest.skip("effens is not run from a git checkout here")
    cfg = config_from_dict(
        {"data": {"train": str(tmp_path)}, "members": [{"name": "a", "model": "test_efficientnet", "weights": "none"}]},
        source="test",
    )
    tags = environment_tags("train", cfg)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=src, capture_output=True, text=True
    ).stdout.strip()
    assert tags["effens.commit"] == head
    assert tags["effens.dirty"] == ("true" if changed else "false")


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_tracker_writes_in_the_data_a_run_or_the_commands_output(tiny_data, tmp_path, monkeypatch, caplog):
    """#41.1: MLflow's artifact folder is resolved beside the store (not ./mlruns of the current
    folder), and every place a sink writes is checked like --out before any work."""
    import shutil

    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    cfg = synth.tiny_config(data, epochs=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "store").mkdir()
    db = tmp_path / "store" / "mlflow.db"
    before = _files(data)
    monkeypatch.chdir(data / "train")  # a user cd'd into the training folder
    assert (
        main(
            [
                "train",
                str(tmp_path / "cfg.yaml"),
                "--out",
                str(tmp_path / "run"),
                "--tracking",
                f"mlflow=sqlite:///{db}",
            ]
        )
        == 0
    )
    assert _files(data) == before  # no ./mlruns beside the class folders
    client = mlflow.tracking.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("effens").experiment_id])
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts" / "effens").as_uri())
    assert (tmp_path / "store" / "mlartifacts" / "effens" / run.info.run_id / "artifacts" / "config").is_dir()
    # an experiment made earlier whose artifact folder is in the data: refused, nothing written
    client.create_experiment("old", artifact_location=(data / "train" / "mlruns" / "9").as_uri())
    (tmp_path / "old.yaml").write_text(
        yaml.safe_dump({**cfg, "tracking": {"mlflow": {"uri": f"sqlite:///{db}", "experiment": "old"}}})
    )
    refusals = [
        (
            ["train", str(tmp_path / "old.yaml"), "--out", str(tmp_path / "run2")],
            f"`tracking.mlflow` (artifacts of experiment 'old') {data / 'train' / 'mlruns' / '9'}: is inside the "
            f"input folder {data / 'train'}",
        ),
        (
            [
                "train",
                str(tmp_path / "cfg.yaml"),
                "--out",
                str(tmp_path / "run2"),
                "--tracking",
                f"tensorboard={tmp_path / 'run2' / 'tb'}",
            ],
            "which this command writes",
        ),
        (
            [
                "train",
                str(tmp_path / "cfg.yaml"),
                "--out",
                str(tmp_path / "run2"),
                "--tracking",
                f"tensorboard={tmp_path / 'run' / 'tb'}",
            ],
            f"is inside the effens run folder {tmp_path / 'run'}",
        ),
        (
            [
                "evaluate",
                str(tmp_path / "run"),
                str(data / "test"),
                "--out",
                str(tmp_path / "ev"),
                "--tracking",
                f"tensorboard={tmp_path / 'ev' / 'tb'}",
            ],
            "which this command writes",
        ),
    ]
    run_files = _files(tmp_path / "run")
    for argv, says in refusals:
        caplog.clear()
        assert main(argv) == 2, argv
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and says in errors[0] and "\n" not in errors[0], (argv, errors)
    assert _files(data) == before and _files(tmp_path / "run") == run_files
    assert not (tmp_path / "run2").exists() and not (tmp_path / "ev" / "tb").exists()


def test_credentials_in_a_tracking_uri_reach_no_file_and_no_log(tiny_data, tmp_path, capfd, caplog, monkeypatch):
    """#41.2: user and password are parsed out of the URI (a password may hold '@'), given to
    MLflow through its environment variables, and written nowhere."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    heard: list[str | None] = []

    class Refuses(BaseHTTPRequestHandler):  # a real server that wants a password it is never given
        def _answer(self):
            heard.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error_code": "UNAUTHENTICATED", "message": "no"}')

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1)))
        uri = f"http://alice:hu@nter2@127.0.0.1:{server.server_address[1]}/"
        assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--tracking", f"mlflow={uri}"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    # the server was asked with the password, as basic authentication
    assert heard and set(heard) == {"Basic " + base64.b64encode(b"alice:hu@nter2").decode()}
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    for secret in ("hunter2", "nter2", "alice"):
        leaks = [name for name, blob in _files(tmp_path).items() if secret.encode() in blob]
        assert not leaks, (secret, leaks)
        assert secret not in logged, secret
    assert "MLFLOW_TRACKING_PASSWORD" in logged and "Traceback" not in logged
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["tracking"]["mlflow"]["uri"]
    assert saved == f"http://127.0.0.1:{server.server_address[1]}/"
    # refused URIs are named without their password too
    for spec in ("mlflow=http://alice:hu@nter2@[::1/", "mlfow=http://alice:hu@nter2@127.0.0.1/"):
        try:
            assert main(["train", str(cfg), "--out", str(tmp_path / "run2"), "--tracking", spec]) == 2
        except SystemExit as exc:
            assert exc.code == 2
        out, err = capfd.readouterr()
        assert "nter2" not in out + err + caplog.text and "***" in out + err + caplog.text, spec
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # set only while the tracker was open


def test_a_tracker_that_cannot_write_is_refused_before_any_work(tiny_data, tmp_path, caplog):
    """#41.15: an unwritable or missing store folder is one line and exit 2 at once, not minutes
    of retries; the run folder is never made."""
    import time

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1)))
    for spec, says in (
        ("mlflow=sqlite:////proc/mlflow.db", "`tracking.mlflow.uri` /proc/mlflow.db: cannot create files in /proc"),
        (f"mlflow=sqlite:///{tmp_path / 'missing' / 'mlflow.db'}", f"the folder {tmp_path / 'missing'} does not exist"),
        (f"mlflow=sqlite:///{tmp_path}", "is a folder; name a database file"),
        ("mlflow=file:/proc/mlruns", "`tracking.mlflow.uri` /proc/mlruns: cannot create files in /proc"),
        ("tensorboard=/proc/tb", "`tracking.tensorboard` /proc/tb: cannot create files in /proc"),
    ):
        caplog.clear()
        t0 = time.monotonic()
        assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--tracking", spec]) == 2, spec
        assert time.monotonic() - t0 < 30, spec
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and says in errors[0] and "\n" not in errors[0], (spec, errors)
        assert not (tmp_path / "run").exists() and not (tmp_path / "missing").exists(), spec


def test_mlflow_alone_logs_to_a_sqlite_store_here_that_mlflow_itself_reads(tiny_data, tmp_path, monkeypatch):
    """#41.16: `--tracking mlflow` is a SQLite store in the current folder, its artifacts beside
    it; the user's own `mlflow.search_runs()` reads it with no file-store switch."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1)))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--tracking", "mlflow"]) == 0
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # as in a fresh Python of the user's
    assert sorted(p.name for p in work.iterdir()) == ["mlartifacts", "mlflow.db"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["tracking"]["mlflow"]["uri"]
    assert saved == f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(saved)
    try:
        runs = mlflow.search_runs(experiment_names=["effens"])
    finally:
        mlflow.set_tracking_uri(None)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["artifact_uri"].startswith((work / "mlartifacts" / "effens").as_uri())
    assert (work / "mlartifacts" / "effens" / runs.iloc[0]["run_id"] / "artifacts" / "model" / "MLmodel").is_file()
