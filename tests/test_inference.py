"""effens predict / evaluate / fit-combiner on the tiny trained run."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import synth
import yaml

from ensemble.cli import main
from ensemble.estimator import BaggedEnsemble
from ensemble.files import read_npy
from ensemble.runfolder import load_run


def test_predict_folder_with_a_corrupt_file(trained, tiny_data, tmp_path, capsys):
    _, run = trained
    folder = tmp_path / "photos"
    shutil.copytree(tiny_data / "test", folder)
    (folder / "circle" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(folder), "--out", str(out), "--strategy", "stacking"]) == 0
    assert "predicted 18 of 19 images" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 19
    assert list(rows[0]) == [
        "path",
        "prediction",
        "proba:circle",
        "proba:square",
        "proba:stripes",
        "vote:a",
        "vote:b",
        "vote:c",
        "error",
    ]
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpg") and bad[0]["prediction"] == ""
    for r in rows:
        if not r["error"]:
            assert sum(float(r[f"proba:{c}"]) for c in ("circle", "square", "stripes")) == pytest.approx(1, abs=1e-5)
            assert r["prediction"] in ("circle", "square", "stripes")
            assert r["vote:a"] in ("circle", "square", "stripes")


def test_predict_json_files_csv_and_missing(trained, tiny_data, tmp_path):
    _, run = trained
    one = tiny_data / "val/square/square_000.png"
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,other\n{tiny_data / 'val/circle/circle_001.png'},x\nmissing.png,y\n")
    out = tmp_path / "p.json"
    assert main(["predict", str(run), str(one), str(manifest), "--out", str(out), "--tta", "--strategy", "hard"]) == 0
    rows = json.loads(out.read_text())
    assert [r["path"].split("/")[-1] for r in rows] == ["square_000.png", "circle_001.png", "missing.png"]
    assert rows[2]["error"] and rows[2]["prediction"] == ""
    assert sum(rows[0]["proba"][c] for c in ("circle", "square", "stripes")) == pytest.approx(1)
    assert set(rows[0]["votes"]) == {"a", "b", "c"}


def test_every_strategy_through_the_estimator(trained, tiny_data):
    _, run = trained
    ens = load_run(str(run))
    cached = read_npy(run / "predictions/test_proba.npy")
    from ensemble.data import load_folder
    from ensemble.images import decode_all
    from ensemble.inference import decode_size

    split = load_folder(tiny_data / "test")
    imgs, _ = decode_all(split.paths, decode_size(ens))  # the size training decoded at
    np.testing.assert_allclose(ens.member_proba(imgs), cached, atol=1e-5)
    for s in ("hard", "soft", "weighted", "stacking"):
        p = ens.predict_proba(imgs, strategy=s)
        assert p.shape == (18, 3) and np.allclose(p.sum(1), 1)


def test_evaluate_all_strategies_and_cache(trained, tiny_data, tmp_path, capsys, monkeypatch):
    _, run = trained
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), str(tiny_data / "test"), "--strategy", "all", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for who in ("a", "b", "c", "hard", "soft", "weighted", "stacking"):
        assert f"\n{who} " in table
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["strategies"]) == {"hard", "soft", "weighted", "stacking", "greedy"}
    train_doc = json.loads((run / "report/metrics.json").read_text())
    for s in doc["strategies"]:  # same images as the run's test split -> same figures
        assert doc["strategies"][s]["eval"]["macro_f1"] == pytest.approx(train_doc["strategies"][s]["test"]["macro_f1"])
    assert (out / "report.md").is_file() and (out / "confusion_stacking_eval.png").is_file()
    assert (out / "reliability_eval.png").is_file()

    # second call with another strategy: member probabilities come from the cache
    def boom(*a, **k):
        raise AssertionError("a network ran although probabilities were cached")

    monkeypatch.setattr(BaggedEnsemble, "member_proba", boom)
    assert main(["evaluate", str(run), str(tiny_data / "test"), "--strategy", "hard", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["strategy"] == "hard"


def test_evaluate_refuses_unknown_labels(trained, tiny_data, tmp_path, caplog):
    _, run = trained
    data = tmp_path / "d"
    shutil.copytree(tiny_data / "val", data)
    (data / "triangle").mkdir()
    shutil.copy(tiny_data / "val/circle/circle_000.png", data / "triangle/t.png")
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "e")]) == 2
    assert "triangle" in caplog.text and "not in the training classes" in caplog.text


def test_fit_combiner_refits_identically_and_switches_source(trained, tmp_path):
    _, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    coef = read_npy(copy / "combiner/stacking_coef.npy")
    assert main(["fit-combiner", str(copy)]) == 0
    np.testing.assert_allclose(read_npy(copy / "combiner/stacking_coef.npy"), coef)
    assert (
        main(["fit-combiner", str(copy), "--set", "combiner.stacking.source=val", "--set", "combiner.calibrate=true"])
        == 0
    )
    comb = json.loads((copy / "combiner/combiner.json").read_text())
    assert comb["strategies"]["stacking"]["source"] == "val" and len(comb["temperatures"]) == 3
    assert not np.allclose(read_npy(copy / "combiner/stacking_coef.npy"), coef)
    assert main(["fit-combiner", str(copy), "--set", "members.0.train.lr=1"]) == 2


def test_evaluate_decodes_in_chunks_with_the_same_figures(trained, tiny_data, tmp_path, monkeypatch):
    """Member probabilities come from one chunk of decoded images at a time; unreadable files
    in any chunk are skipped with the right indices, and the result equals one pass over all."""
    import ensemble.images as images
    from ensemble.serving.answers import readable_member_proba

    _, run = trained
    ens = load_run(str(run))
    paths = sorted(str(p) for p in (tiny_data / "test").rglob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths = paths[:5] + [str(broken)] + paths[5:]
    seen = []
    real = images.decode_all

    def spy(part, *a, **k):
        seen.append(len(part))
        return real(part, *a, **k)

    monkeypatch.setattr(images, "decode_all", spy)
    whole, keep_w, bad_w = readable_member_proba(ens, paths, chunk=len(paths))
    parts, keep_c, bad_c = readable_member_proba(ens, paths, chunk=4)
    assert seen == [len(paths), 4, 4, 4, 4, 3] and max(seen[1:]) <= 4
    assert keep_c == keep_w == [i for i in range(len(paths)) if i != 5]
    assert [p for p, _ in bad_c] == [str(broken)]
    assert parts.shape == (3, len(paths) - 1, 3)
    np.testing.assert_allclose(parts, whole, atol=1e-5)


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
def test_evaluate_after_the_images_changed_recomputes(trained, tiny_data, tmp_path, caplog):
    _, run = trained
    data = tmp_path / "test"
    shutil.copytree(tiny_data / "test", data)
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), str(data), "--out", str(out), "-q"]) == 0
    for p in (data / "circle").iterdir():
        synth.make_image("stripes", np.random.default_rng(0)).save(p)  # circles become stripes
    caplog.clear()
    caplog.set_level("INFO")
    assert main(["evaluate", str(run), str(data), "--out", str(out)]) == 0
    assert "reusing cached member probabilities" not in caplog.text


def test_output_columns_cannot_collide(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("error", "ok", "path"):
            (data / split / cls).mkdir(parents=True)
            for i in range(n):
                synth.make_image("circle" if cls == "ok" else "square" if cls == "path" else "stripes", rng).save(
                    data / split / cls / f"{i}.png"
                )
    cfg = synth.tiny_config(data, epochs=1)
    cfg["data"] = {"train": str(data / "train"), "val": str(data / "val")}
    cfg["members"][0]["name"] = "ok"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 2  # member = class
    cfg["members"][0]["name"] = "m.ok"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert main(["predict", str(tmp_path / "run"), str(data / "val"), "--out", str(tmp_path / "p.csv")]) == 0
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header == [
        "path",
        "prediction",
        "proba:error",
        "proba:ok",
        "proba:path",
        "vote:m.ok",
        "vote:b",
        "vote:c",
        "error",
    ]
    assert main(["predict", str(tmp_path / "run"), str(data / "val"), "--out", str(tmp_path / "p.JSON")]) == 0
    rows = json.loads((tmp_path / "p.JSON").read_text())
    assert set(rows[0]["proba"]) == {"error", "ok", "path"} and set(rows[0]["votes"]) == {"m.ok", "b", "c"}


def test_predict_never_overwrites_a_file_it_did_not_write(trained, tiny_data, tmp_path, fails):
    _, run = trained
    mine = tmp_path / "budget.csv"
    mine.write_text("month,amount\njan,3\n")
    fails(
        main(["predict", str(run), str(tiny_data / "test/circle"), "--out", str(mine)]),
        "was not written by `effens predict`",
    )
    assert mine.read_text() == "month,amount\njan,3\n"
    # its own earlier output may be replaced (CSV and JSON)
    for name in ("p.csv", "p.json"):
        out = tmp_path / name
        assert main(["predict", str(run), str(tiny_data / "test/circle"), "--out", str(out)]) == 0
        assert main(["predict", str(run), str(tiny_data / "test/square"), "--out", str(out)]) == 0


def test_nothing_predictable_is_exit_2_and_says_file_not_found(trained, tmp_path, fails):
    _, run = trained
    out = tmp_path / "p.csv"
    fails(
        main(["predict", str(run), str(tmp_path / "nope.jpg"), "--out", str(out)]),
        "none of the 1 input image(s) could be predicted",
        "file not found",
    )
    assert not out.exists()
    fails(
        main(["explain", str(run), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "x")]),
        "none of the 1 input image(s) could be read",
        "file not found",
    )


def test_an_unwritable_out_is_named_before_inference(trained, tiny_data, tmp_path, monkeypatch, fails):
    import ensemble.inference as inference

    _, run = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere, so the folder's permission is simulated; inference must not start
    monkeypatch.setattr(inference.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    monkeypatch.setattr(inference, "load_run", lambda *a, **k: pytest.fail("inference started"))
    fails(
        main(["predict", str(run), str(tiny_data / "test/circle"), "--out", str(locked / "p.csv")]),
        f"{locked / 'p.csv'}: cannot write in {locked} (permission denied)",
    )
