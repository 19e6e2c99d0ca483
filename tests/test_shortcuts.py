"""The shortcut check (issue #39, item 1): nuisance properties that predict the label are
flagged with their shift between splits; properties independent of the label never are."""

import json

import numpy as np
import pytest
from PIL import Image

from ensemble.auditing.duplicates import jpeg_quality, signature
from ensemble.auditing.shortcuts import check_shortcuts, source_folders
from ensemble.cli import main

CLASSES = ["minor", "moderate", "severe"]


def _made_up(n: int, tie: float, seed: int):
    """Labels and a ``short_side`` that follows them with strength ``tie`` (0: independent),
    plus two properties independent of the label; 80% train, 20% test, test photos larger."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    short = rng.normal(200, 30, n) - tie * 40 * y
    splits = np.where(rng.random(n) < 0.8, "train", "test")
    short[splits == "test"] = rng.normal(300, 10, (splits == "test").sum())
    table = {"short_side": short, "brightness": rng.normal(120, 20, n), "exif": rng.integers(0, 2, n).astype(float)}
    return table, [CLASSES[i] for i in y], list(splits)


def test_a_planted_size_label_tie_is_flagged_with_the_shift_to_test():
    table, labels, splits = _made_up(900, tie=1.0, seed=0)
    doc = check_shortcuts(table, labels, splits, CLASSES, seed=0)
    assert doc["flagged"] == ["short_side"]
    p = doc["properties"]["short_side"]
    assert p["predicts"]["p"] <= 0.025 and p["predicts"]["macro_f1"] > 0.5
    assert p["ks_from_train"]["test"] > 0.9  # test lies above train's range
    assert "short_side" in doc["findings"][0] and "test KS" in doc["findings"][0]
    medians = {c: p["by_class"]["train"][c]["median"] for c in CLASSES}
    assert medians["minor"] > medians["moderate"] > medians["severe"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_properties_independent_of_the_label_are_never_flagged(seed):
    table, labels, splits = _made_up(900, tie=0.0, seed=seed)
    doc = check_shortcuts(table, labels, splits, CLASSES, seed=seed)
    assert doc["flagged"] == [] and not doc["all_flagged"]
    assert abs(doc["chance"]["mean"] - 1 / 3) < 0.05


def test_false_alarms_on_small_data_stay_rare():
    """10 small made-up data sets (60 training photos) whose properties are all independent
    of the label: checking six properties at once must not multiply false alarms."""
    alarms = 0
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        n = 75
        labels = [CLASSES[i] for i in rng.integers(0, 3, n)]
        splits = ["train"] * 60 + ["test"] * 15
        table = {f"p{k}": rng.normal(0, 1, n) for k in range(6)}
        doc = check_shortcuts(table, labels, splits, CLASSES, seed=seed)
        alarms += bool(doc["flagged"] or doc["all_flagged"])
    assert alarms <= 2, alarms  # at a 5% rate, 3 or more of 10 happens 1% of the time


def test_properties_that_predict_only_together_are_said_so():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1500)
    # each property alone carries a little of the label; together they carry more
    table = {f"p{k}": rng.normal(0, 1, 1500) + 0.3 * (y == k % 3) for k in range(9)}
    doc = check_shortcuts(table, [CLASSES[i] for i in y], ["train"] * 1500, CLASSES)
    assert doc["all_flagged"] and doc["all"]["macro_f1"] > max(
        p["predicts"]["macro_f1"] for p in doc["properties"].values()
    )
    assert any(f.startswith("all properties together") for f in doc["findings"])
    if not doc["flagged"]:
        from ensemble.auditing.shortcuts import summary_line

        assert summary_line(doc).startswith("the nuisance properties together predict the label")


def test_source_folders_leave_out_the_class_folder_and_only_for_class_folders(tmp_path):
    paths = [
        str(tmp_path / "train" / "minor" / "kaggle" / "a.jpg"),
        str(tmp_path / "train" / "severe" / "web" / "b.jpg"),
        str(tmp_path / "test" / "minor" / "c.jpg"),
    ]
    assert source_folders(paths, ["minor", "severe", "minor"]) == ["kaggle", "web", ""]
    # a manifest whose folders are not named as the labels: a folder may be the class itself
    assert source_folders(paths, ["moderate", "severe", "minor"]) is None


def test_jpeg_quality_is_read_from_the_quantisation_table(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for q in (30, 60, 90):
        img.save(tmp_path / f"q{q}.jpg", quality=q)
        with Image.open(tmp_path / f"q{q}.jpg") as got:
            assert abs(jpeg_quality(got) - q) <= 2
    img.save(tmp_path / "x.png")
    assert signature(str(tmp_path / "x.png")).jpeg_quality is None


def _photo(rng, side: int) -> Image.Image:
    """A smooth random photo (the same distribution for every class), ``side`` px high."""
    small = rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((round(side * 1.5), side), Image.Resampling.BICUBIC)


def _folder(root, rng, sizes_for):
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        for k, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                _photo(rng, sizes_for(split, k)).save(d / f"{i}.jpg", quality=85)


@pytest.mark.parametrize("tied", [True, False])
def test_the_audit_flags_a_planted_resolution_tie_and_stays_silent_without_one(tmp_path, capsys, tied):
    rng = np.random.default_rng(1)

    def sizes(split, k):
        if split == "test":
            return 128
        return (96, 64, 40)[k] + int(rng.integers(-4, 5)) if tied else int(rng.choice([40, 64, 96]))

    _folder(tmp_path / "data", rng, sizes)
    out = tmp_path / "audit"
    assert main(["audit", str(tmp_path / "data"), "--out", str(out), "--no-features", "-q"]) == 0
    doc = json.loads((out / "audit.json").read_text())["shortcuts"]
    line = capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert "Shortcuts" in page and page.count('<svg class="shortcut"') == len(doc["properties"])
    if tied:
        assert "short_side" in doc["flagged"] and "height" in doc["flagged"]
        assert doc["properties"]["short_side"]["ks_from_train"]["test"] == 1.0
        assert "nuisance properties predict the label (" in line
    else:
        assert doc["flagged"] == [], doc["findings"]
        assert "no nuisance property predicts the label" in line


def test_hundreds_of_source_folders_are_checked_without_failing():
    rng = np.random.default_rng(0)
    n = 900
    labels = [CLASSES[i] for i in rng.integers(0, 3, n)]
    sources = [f"session{rng.integers(0, 400)}" for _ in range(n)]
    from ensemble.auditing.shortcuts import _with_sources

    table = _with_sources({"brightness": rng.normal(0, 1, n)}, sources)
    assert table["source"].max() <= 250
    doc = check_shortcuts(table, labels, ["train"] * n, CLASSES)
    assert "source" in doc["properties"] and not doc["properties"]["source"]["flagged"]


def test_fit_combiner_keeps_the_cards_shortcut_check(trained, tmp_path):
    import synth

    _, run = trained
    copy = synth.copy_run(run, tmp_path / "run")
    before = json.loads((copy / "report" / "metrics.json").read_text())["shortcuts"]
    assert before["properties"] and "n_train" in before
    assert main(["fit-combiner", str(copy), "-q"]) == 0
    assert json.loads((copy / "report" / "metrics.json").read_text())["shortcuts"] == before
