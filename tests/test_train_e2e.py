"""End to end: `effens train` with timm's tiny test_efficientnet on generated images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import synth
import yaml
from safetensors.torch import load_file

from ensemble.cli import main
from ensemble.data import load_folder
from ensemble.images import decode_all
from ensemble.runfolder import load_run

MEMBER_FILES = {"model.safetensors", "member.json", "samples.npy", "oob.npy", "oob_proba.npy"}


def test_run_folder_layout(trained):
    _, out = trained
    assert (out / "config.yaml").is_file()
    assert json.loads((out / "classes.json").read_text()) == sorted(synth.CLASSES)
    for name in "abc":
        files = {p.name for p in (out / "members" / name).iterdir()}
        assert MEMBER_FILES <= files
        meta = json.loads((out / "members" / name / "member.json").read_text())
        assert meta["architecture"] == "test_efficientnet"
        assert meta["inputs"]["image_size"] == 32 and len(meta["inputs"]["mean"]) == 3
        assert {"ratio", "replace", "stratify"} <= set(meta["bagging"])
        assert "torch" in meta["versions"] and "timm" in meta["versions"]
        assert set(meta["files"]) == MEMBER_FILES - {"member.json"}
        load_file(str(out / "members" / name / "model.safetensors"))
    # nothing pickled anywhere: every array reads with allow_pickle=False, no pickle files
    for path in out.rglob("*"):
        assert path.suffix not in {".pkl", ".pickle", ".joblib", ".pt", ".pth"}
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)


def test_bagging_samples_follow_the_config(trained):
    _, out = trained
    n = 48
    a = np.load(out / "members/a/samples.npy")
    b = np.load(out / "members/b/samples.npy")
    assert len(a) == round(0.8 * n) and len(b) == round(0.6 * n)
    assert len(np.unique(b)) == len(b)  # b draws without replacement
    for name, s in (("a", a), ("b", b)):
        oob = np.load(out / f"members/{name}/oob.npy")
        assert set(oob) == set(range(n)) - set(s)
        assert np.load(out / f"members/{name}/oob_proba.npy").shape == (len(oob), 3)


def test_metrics_json(trained):
    _, out = trained
    doc = json.loads((out / "report/metrics.json").read_text())
    assert doc["classes"] == sorted(synth.CLASSES)
    assert doc["ensemble"] == doc["strategies"]["soft"]
    assert set(doc["strategies"]) == {"hard", "soft", "weighted", "stacking", "greedy"}
    for who in [doc["members"][m] for m in "abc"] + list(doc["strategies"].values()):
        for split, n in (("val", 18), ("test", 18)):
            m = who[split]
            cm = np.array(m["confusion_matrix"])
            assert cm.shape == (3, 3) and cm.sum() == n
            assert cm.sum(axis=1).tolist() == [6, 6, 6]  # rows are true classes
            assert m["accuracy"] == pytest.approx(np.trace(cm) / n)
            assert 0 <= m["macro_f1"] <= 1
        assert "oob" in who
    assert doc["ensemble"]["oob"]["n"] + doc["ensemble"]["oob"]["n_excluded"] == 48


def test_report_files(trained):
    _, out = trained
    rep = out / "report"
    md = (rep / "report.md").read_text()
    assert "ensemble soft *" in md and "Confusion matrix" in md
    doc = json.loads((rep / "metrics.json").read_text())
    for split in ["val", "test"]:
        assert (rep / f"reliability_{split}.png").read_bytes()[:4] == b"\x89PNG"
    for who in ["a", "b", "c", "hard", "soft", "weighted", "stacking"]:
        for split in ["val", "test"]:
            assert (rep / f"confusion_{who}_{split}.png").read_bytes()[:4] == b"\x89PNG"
            lines = (rep / f"misclassified_{who}_{split}.csv").read_text().splitlines()
            assert lines[0] == "path,true,predicted,confidence,true_class_probability"
            m = doc["members"][who] if who in doc["members"] else doc["strategies"][who]
            cm = np.array(m[split]["confusion_matrix"])
            assert len(lines) - 1 == cm.sum() - np.trace(cm)


def test_oob_figures_of_strategies_fitted_on_oob_are_marked_in_sample(trained):
    _, out = trained
    doc = json.loads((out / "report" / "metrics.json").read_text())
    on_oob = doc["combiner"]["fitted_on_oob"]
    assert on_oob, "the tiny run fits its weights on OOB (`combiner.weights_source: oob`)"
    rows = {
        r.split("|")[1].strip(): r
        for r in (out / "report" / "report.md").read_text().splitlines()
        if r.startswith("| ")
    }
    for name in doc["members"]:
        assert "in-sample" not in rows[name]
    for name, m in doc["strategies"].items():
        row = rows[f"ensemble {name}" + (" *" if name == doc["strategy"] else "")]
        assert row.rstrip(" |").endswith("(in-sample)") == (name in on_oob and "oob" in m), row
    html = (out / "report" / "index.html").read_text()
    assert html.count("†</td>") == 6 * sum("oob" in doc["strategies"][n] for n in on_oob)  # six figures per row
    assert "fitted on these OOB images" in html


def test_loaded_run_predicts_what_the_report_says(trained, tiny_data):
    _, out = trained
    ens = load_run(str(out))
    split = load_folder(tiny_data / "test")
    from ensemble.inference import decode_size

    images, _ = decode_all(split.paths, decode_size(ens))
    pred = ens.predict(images)
    y = split.encode(ens.classes_)
    doc = json.loads((out / "report/metrics.json").read_text())
    assert np.mean(pred == y) == pytest.approx(doc["ensemble"]["test"]["accuracy"])
    assert ens.predict_proba(images).sum(1) == pytest.approx(np.ones(len(y)))


def test_rerun_reuses_finished_members(trained, caplog):
    caplog.set_level("INFO")
    cfg_path, out = trained
    before = {n: os.stat(out / "members" / n / "model.safetensors").st_mtime_ns for n in "abc"}
    assert main(["train", str(cfg_path), "--out", str(out)]) == 0
    after = {n: os.stat(out / "members" / n / "model.safetensors").st_mtime_ns for n in "abc"}
    assert before == after
    assert "already finished" in caplog.text


def test_changed_config_is_refused_unless_restart(trained, tmp_path, caplog):
    cfg_path, out = trained
    assert main(["train", str(cfg_path), "--out", str(out), "--set", "members.1.train.lr=0.01"]) == 2
    assert "members.1.train.lr" in caplog.text


def test_tampered_member_file_is_refused(trained, tmp_path, caplog):
    import shutil

    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    arr = np.load(copy / "members/b/oob.npy")
    np.save(copy / "members/b/oob.npy", arr[:-1])
    with pytest.raises(Exception, match=r"members/b/oob.npy: contents do not match"):
        load_run(str(copy))


def test_same_seed_same_samples_and_weights(tiny_data, tmp_path):
    cfg = synth.tiny_config(tiny_data, epochs=1)
    cfg["members"] = cfg["members"][:1]
    cfg["members"][0]["train"]["augment"] = "rand-m9-mstd0.5"  # draws from random and np.random
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for out in ("r1", "r2"):
        assert main(["train", str(path), "--out", str(tmp_path / out), "-q"]) == 0
    np.testing.assert_array_equal(
        np.load(tmp_path / "r1/members/a/samples.npy"), np.load(tmp_path / "r2/members/a/samples.npy")
    )
    w1 = load_file(str(tmp_path / "r1/members/a/model.safetensors"))
    w2 = load_file(str(tmp_path / "r2/members/a/model.safetensors"))
    for k in w1:
        assert (w1[k] == w2[k]).all(), k


def test_console_entry_point_and_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train: x}\nmembers:\n  - {name: a, model: test_efficientnet, bagging: {ratio: 1.5}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "ensemble", "train", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "`members.0.bagging.ratio` must be in (0, 1]; got 1.5" in r.stderr
    assert str(bad) in r.stderr
    assert not (tmp_path / "o").exists()  # nothing ran


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_bad_training_image_policy(tiny_data, tmp_path, policy, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = data / "train/circle/zz_truncated.png"
    bad.write_bytes((data / "train/circle/circle_000.png").read_bytes()[:60])
    cfg = synth.tiny_config(data, epochs=1)
    cfg["members"] = cfg["members"][:1]
    cfg["data"]["on_bad_image"] = policy
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", str(path), "--out", str(tmp_path / "run")])
    if policy == "error":
        assert code == 2 and "zz_truncated.png" in caplog.text
        assert not (tmp_path / "run/members/a/member.json").exists()  # stopped before training
    else:
        assert code == 0
        doc = json.loads((tmp_path / "run/report/metrics.json").read_text())
        assert [d["path"] for d in doc["skipped_images"]["train"]] == [str(bad)]
        assert "zz_truncated.png" in (tmp_path / "run/report/report.md").read_text()
        assert len(np.load(tmp_path / "run/predictions/train_labels.npy")) == 48  # 49 files, 1 skipped


def test_one_train_checks_its_config_once_and_imports_its_plugins_once(tiny_data, tmp_path, monkeypatch):
    """Issue #42 item 4: the output guard and train_run share one check; fit, the combiner's
    refit, the report and the run record take the checked config, never a dict round trip."""
    import ensemble.config as config

    checks, real = [], config.config_from_dict

    def counted(raw, *args, **kwargs):
        checks.append(kwargs.get("source") or (args[0] if args else "<dict>"))
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(config, "config_from_dict", counted)
    imports = tmp_path / "imports.log"
    (tmp_path / "countplug.py").write_text(f"with open({str(imports)!r}, 'a') as fh:\n    fh.write('x')\n")
    raw = synth.tiny_config(tiny_data, epochs=1, plugins=["countplug"])
    raw["members"] = raw["members"][:2]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert checks == [str(cfg)], checks
    assert imports.read_text() == "x"  # the plugin module ran once
