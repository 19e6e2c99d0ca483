"""ensemble/training.py: `effens train` and `fit-combiner` around the estimator: what they check
before any work, and what a failure leaves behind."""

import json
import shutil

import synth
import yaml

from ensemble.cli import main


def test_a_failed_fit_combiner_changes_nothing(trained, tmp_path, monkeypatch, fails):
    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    before = synth.digest(run)
    import ensemble.training as training
    from ensemble.data import DataError

    def broken(*args, **kwargs):
        raise DataError("simulated failure while writing the report")

    monkeypatch.setattr(training, "write_run_report", broken)
    code = main(["fit-combiner", str(run), "--set", "combiner.strategy=stacking"])
    fails(code, "simulated failure")
    assert synth.digest(run) == before  # config.yaml, run.json and the combiner are as they were


def test_fit_combiner_with_a_bad_value_writes_nothing(trained, tmp_path, fails):
    _, run = trained
    run = synth.copy_run(run, tmp_path / "run")
    before = synth.digest(run)
    fails(main(["fit-combiner", str(run), "--set", "combiner.stacking.C=-1"]), "combiner.stacking.C")
    assert synth.digest(run) == before


def test_training_refuses_a_decode_cache_that_would_not_fit(tiny_data, tmp_path, monkeypatch, fails):
    import ensemble.images as images

    monkeypatch.setattr(images, "available_memory", lambda: 50 * 2**20)  # 50 MB free
    raw = synth.tiny_config(tiny_data, epochs=1)
    for m in raw["members"]:
        m["image_size"] = 4096
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(raw))
    fails(
        main(["train", str(path), "--out", str(tmp_path / "run")]),
        "px (from `image_size` or `data.cache_size`) needs about",
        "GB, more than 70% of the 50 MB available",
    )
    assert not (tmp_path / "run").exists()


def test_a_photo_in_train_and_test_is_warned_about(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    src = sorted((data / "train/circle").iterdir())[0]
    shutil.copy(src, data / "test/circle/copy_of_train.png")
    path = synth.config_file(tmp_path, data, epochs=1, n_members=1)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "1 image(s) appear in both train and test (same file contents)" in caplog.text
    assert "copy_of_train.png" in caplog.text


def test_a_bad_image_failure_can_be_fixed_without_restart(tiny_data, tmp_path, fails):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train/circle/broken.png").write_bytes(b"not a png")
    path = synth.config_file(tmp_path, data, epochs=1, n_members=1)
    out = tmp_path / "run"
    fails(main(["train", str(path), "--out", str(out)]), "broken.png")
    assert main(["train", str(path), "--out", str(out), "--set", "data.on_bad_image=skip"]) == 0


def test_fit_combiner_after_the_data_moved_keeps_the_thumbnails(tiny_data, tmp_path):
    import re

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    path = synth.config_file(tmp_path, data, epochs=1)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0

    def thumbs() -> list:
        html = (run / "report/index.html").read_text()
        doc = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1))
        return [t for s in doc["splits"].values() for t in s["thumbs"]]

    before = thumbs()
    assert before and all(before)
    shutil.move(str(data), str(tmp_path / "moved"))
    assert main(["fit-combiner", str(run), "--set", "combiner.strategy=stacking"]) == 0
    after = thumbs()
    assert after == before  # the thumbnails made when the images were there


def test_fit_combiner_asking_for_oob_calibration_without_oob_images_changes_nothing(
    tiny_data, tmp_path, capsys, caplog
):
    raw = synth.tiny_config(tiny_data, epochs=1)
    for m in raw["members"]:
        m["bagging"] = {"ratio": 1.0, "replace": False, "stratify": True}  # every member sees every image
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0
    before = synth.digest(run)
    code = main(["fit-combiner", str(run), "--set", "decision.calibration=oob"])
    assert code == 2 and "Traceback" not in caplog.text
    assert synth.digest(run) == before
    img = str(tiny_data / "test/circle")
    assert main(["predict", str(run), img, "--out", str(tmp_path / "p.csv"), "--coverage", "0.8"]) == 0
