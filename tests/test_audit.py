"""`effens audit` (issue #25, first part): confident learning on out-of-sample probabilities,
exact and near duplicates across splits, odd images, the page and its files."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import synth
import yaml
from PIL import Image, ImageOps

from ensemble.auditing.duplicates import find_duplicates, oddities, signature
from ensemble.auditing.label_issues import find_label_issues
from ensemble.cli import main


def _proba(y, n_classes, rng, strength=3.0):
    logits = rng.normal(0, 1, (len(y), n_classes))
    logits[np.arange(len(y)), y] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["prune_by_noise_rate", "confident"])
def test_a_flipped_label_is_ranked_first(method):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 300)
    proba = _proba(y_true, 3, rng)
    given = y_true.copy()
    flipped = int(np.argmax(proba[np.arange(300), y_true]))  # the surest image, now labelled wrong
    given[flipped] = (y_true[flipped] + 1) % 3
    audit = find_label_issues(proba, given, method)
    assert audit.issues[0] == flipped
    assert audit.suggested[flipped] == y_true[flipped]
    assert np.allclose(audit.noise_matrix.sum(axis=1), 1.0)


def test_clean_labels_give_a_low_noise_rate_and_20_percent_flips_are_found():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 1500)
    proba = _proba(y_true, 3, rng, strength=4.0)
    clean = find_label_issues(proba, y_true)
    assert np.diag(clean.noise_matrix).min() > 0.9
    given = y_true.copy()
    flip = rng.choice(1500, 300, replace=False)
    given[flip] = (given[flip] + rng.integers(1, 3, 300)) % 3
    noisy = find_label_issues(proba, given)
    found = set(noisy.issues.tolist())
    precision, recall = len(found & set(flip.tolist())) / len(found), len(found & set(flip.tolist())) / 300
    assert precision > 0.8 and recall > 0.8, (precision, recall)
    # as cleanlab: an image whose given label is its most probable class is never flagged
    assert (proba[noisy.issues].argmax(axis=1) != given[noisy.issues]).all()
    assert (noisy.margin[noisy.issues] < 0).all() and (np.diff(noisy.margin[noisy.issues]) >= 0).all()


def test_exclude_lists_keep_a_hash_inside_a_path(tmp_path):
    from ensemble.data import read_exclusions

    odd = tmp_path / "x#1" / "a.jpg"
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"# a comment line\n{odd}  # why: a comment after the entry\n{'ab' * 32}\n")
    paths, hashes = read_exclusions(str(listed))
    assert paths == {str(odd)} and hashes == {"ab" * 32}


def _photo(path, seed, size=(160, 120)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)  # large blocks: a hash to find, edges to be sharp
    Image.fromarray(base).resize(size, Image.NEAREST).save(path, quality=95)
    return path


def test_copies_are_found_and_distinct_images_are_not(tmp_path):
    a = _photo(tmp_path / "a.jpg", 0)
    _photo(tmp_path / "b.jpg", 1)
    shutil.copy(a, tmp_path / "a_copy.jpg")
    with Image.open(a) as im:
        im.resize((96, 72)).save(tmp_path / "a_small.jpg", quality=70)
        ImageOps.mirror(im).save(tmp_path / "a_mirror.jpg", quality=90)
    names = ["a.jpg", "b.jpg", "a_copy.jpg", "a_small.jpg", "a_mirror.jpg"]
    sigs = [signature(str(tmp_path / n)) for n in names]
    pairs = {(names[p["a"]], names[p["b"]]): p for p in find_duplicates(sigs)}
    assert pairs[("a.jpg", "a_copy.jpg")]["kind"] == "exact"
    assert ("a.jpg", "a_small.jpg") in pairs and pairs[("a.jpg", "a_mirror.jpg")]["mirrored"]
    assert not any("b.jpg" in k for k in pairs)


def test_odd_images_are_named(tmp_path):
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "blank.png")
    Image.new("RGB", (400, 50), (10, 200, 30)).save(tmp_path / "thin.png")
    odd = oddities(signature(str(tmp_path / "blank.png")))
    assert any(o.startswith("tiny") for o in odd) and any(o.startswith("near-blank") for o in odd)
    assert any(o.startswith("elongated") for o in oddities(signature(str(tmp_path / "thin.png"))))
    assert oddities(signature(str(_photo(tmp_path / "ok.jpg", 3)))) == []


def test_audit_of_a_run_finds_a_leaked_copy_and_writes_its_page(tiny_data, tmp_path, capsys, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    leaked = sorted((data / "train" / "circle").glob("*.png"))[0]
    shutil.copy(leaked, data / "test" / "circle" / "leaked_copy.png")
    (data / "notes").mkdir()
    cfg = tmp_path / "cfg.yaml"
    doc = synth.tiny_config(data, epochs=1)
    doc["members"][0]["view"] = "squash"
    cfg.write_text(yaml.safe_dump(doc))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 0
    out = tmp_path / "audit"
    assert main(["audit", str(run), "--out", str(out)]) == 0
    assert "duplicate pairs" in capsys.readouterr().out
    doc = json.loads((out / "audit.json").read_text())
    # the feature pass sees photos as the audit's threshold was chosen, not as the first member trains
    assert doc["features"].endswith(", views crop, squash, letterbox)")
    assert doc["duplicates"]["leakage"] >= 1 and doc["duplicates"]["exact"] >= 1
    rows = list(csv.DictReader(open(out / "duplicates.csv")))
    assert any(
        r["kind"] == "exact"
        and r["leakage"] == "True"
        and {r["a_path"], r["b_path"]} == {str(leaked), str(data / "test" / "circle" / "leaked_copy.png")}
        for r in rows
    )
    assert set(doc["label_issues"]) <= {"train", "train (cross-fitted)", "val", "test"}
    assert doc["stats"]["train"]["images"] == 48
    # training images no member left out are scored by cross-fitted heads: together, every one
    oob, crossed = doc["label_issues"]["train"], doc["label_issues"]["train (cross-fitted)"]
    assert oob["n_scored"] + crossed["n_scored"] == 48 and crossed["n_scored"] == oob["n_not_scored"] > 0
    assert (out / "features-crop.safetensors").is_file() and (out / "features-letterbox.safetensors").is_file()
    page = (out / "index.html").read_text()
    assert "<h1>effens audit</h1>" in page and "leaked_copy.png" in page and "across splits" in page
    labels = list(csv.DictReader(open(out / "label_issues.csv")))
    assert all(r["given"] != r["suggested"] for r in labels)
    # a second audit reads no image again: the signatures come from the cache in the folder
    before = (out / "signatures.json").read_text()
    assert main(["audit", str(run), "--out", str(out), "-q"]) == 0
    assert (out / "signatures.json").read_text() == before
    # a val photo gone since training: the run's saved val predictions no longer describe val
    sorted((data / "val" / "circle").glob("*.png"))[0].unlink()
    caplog.clear()
    assert main(["audit", str(run), "--out", str(out), "-q"]) == 0
    assert "its val photos changed since training" in caplog.text
    assert "val" not in json.loads((out / "audit.json").read_text())["label_issues"]
    # a training photo renamed since (same labels in the same order): its OOB vote would land on
    # its neighbour's row, so the audit refuses
    photo = sorted((data / "train" / "square").glob("*.png"))[1]
    photo.rename(photo.with_name("zzz.png"))
    assert main(["audit", str(run), "--out", str(out), "-q"]) == 2
    assert "its training images or their labels changed since training" in caplog.text


def test_exclude_and_relabel_round_trip_through_train_and_evaluate(tiny_data, tmp_path, capsys, caplog):
    from ensemble.config import load_config
    from ensemble.data import load_dataset

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    leaked = sorted((data / "train" / "square").glob("*.png"))[0]
    shutil.copy(leaked, data / "val" / "square" / "leaked_copy.png")
    cfg = tmp_path / "cfg.yaml"
    raw = synth.tiny_config(data, epochs=1)
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 0
    # an exclude list may not land inside the run folder
    assert main(["audit", str(run), "--out", str(tmp_path / "audit"), "--write-exclude", str(run / "x.txt")]) == 2
    assert not (run / "x.txt").exists() and not (tmp_path / "audit").exists()
    exclude = tmp_path / "exclude.txt"
    assert (
        main(
            ["audit", str(run), "--out", str(tmp_path / "audit"), "--write-exclude", str(exclude), "--threshold", "1.0"]
        )
        == 0
    )
    listed = [ln.split("#")[0].strip() for ln in exclude.read_text().splitlines() if not ln.startswith("#")]
    assert str(leaked) in listed  # the training twin of the copy in val
    # the relabel file: two training images moved to another class, by path relative to the CSV
    relabel = data / "relabel.csv"
    a, b = sorted((data / "train" / "circle").glob("*.png"))[:2]
    relabel.write_text(
        f"path,given,suggested\ntrain/circle/{a.name},circle,square\ntrain/circle/{b.name},circle,stripes\n"
    )
    raw["data"].update(exclude=str(exclude), relabel=str(relabel))
    cfg.write_text(yaml.safe_dump(raw))
    got = load_dataset(load_config(str(cfg)).data, 0)
    assert got.changes["train"] == {"excluded": len(listed), "relabelled": 2}
    assert str(leaked) not in got.train.paths and dict(zip(got.train.paths, got.train.labels))[str(a)] == "square"
    run2 = tmp_path / "run2"
    assert main(["train", str(cfg), "--out", str(run2), "-q"]) == 0
    doc = json.loads((run2 / "report" / "metrics.json").read_text())
    assert doc["data_changes"]["train"] == {"excluded": len(listed), "relabelled": 2}
    assert f"train: {len(listed)} excluded, 2 relabelled" in (run2 / "report" / "report.md").read_text()
    # evaluate applies the run's lists to the data it is given
    caplog.clear()
    assert main(["evaluate", str(run2), str(data / "train"), "--out", str(tmp_path / "ev"), "-q"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["data_changes"]["eval"] == {"excluded": len(listed), "relabelled": 2}
    assert f"the run's lists change what is scored: {len(listed)} of the 48 images left out" in caplog.text
    # a manifest of nothing but left-out images is one line, not a traceback
    only = tmp_path / "only_left_out.csv"
    only.write_text(f"path,label\n{leaked},square\n")
    assert main(["evaluate", str(run2), str(only), "--out", str(tmp_path / "ev0")]) == 2
    err = capsys.readouterr().err + caplog.text
    assert "leaves out all 1 of its images; nothing to evaluate" in err and "Traceback" not in err
    # evaluate cannot run without the run's lists: said as the run's
    exclude.rename(tmp_path / "moved.txt")
    assert main(["evaluate", str(run2), str(data / "val"), "--out", str(tmp_path / "ev1")]) == 2
    assert "the run's config names this list, which evaluate applies too: `data.exclude`" in caplog.text
    (tmp_path / "moved.txt").rename(exclude)
    # bad lists: one line naming the file (and the line), exit 2, nothing trained
    relabel.write_text("path,suggested\ntrain/circle/x.png,hexagon\n")
    code = main(["train", str(cfg), "--out", str(tmp_path / "run3")])
    err = capsys.readouterr().err + caplog.text
    assert code == 2 and "relabel.csv, line 2: 'hexagon' is not a class" in err and "Traceback" not in err
    raw["data"].update(exclude=str(tmp_path / "absent.txt"), relabel=None)
    cfg.write_text(yaml.safe_dump(raw))
    caplog.clear()
    assert main(["train", str(cfg), "--out", str(tmp_path / "run4")]) == 2
    assert "`data.exclude`: " in capsys.readouterr().err + caplog.text and not (tmp_path / "run4").exists()


def test_cross_fitted_heads_score_each_image_out_of_fold():
    from ensemble.auditing.audit import cross_fitted_proba

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 240)
    feats = np.eye(3)[y] * 3 + rng.normal(0, 1, (240, 3))
    flipped = int(np.argmax(feats[np.arange(240), y] - feats.mean(axis=1)))  # a clear case of its class
    given = y.copy()
    given[flipped] = (y[flipped] + 1) % 3
    p = cross_fitted_proba(feats, given, 3)
    assert np.allclose(p.sum(axis=1), 1) and (p.argmax(axis=1) == y).mean() > 0.9
    assert p[flipped, given[flipped]] < 0.2 and find_label_issues(p, given).issues[0] == flipped


def test_similar_pairs_find_a_twin_by_its_features_and_never_a_distinct_image():
    from ensemble.auditing.duplicates import merge_pairs, similar_pairs

    rng = np.random.default_rng(3)
    feats = rng.normal(0, 1, (200, 64)).astype(np.float32)
    feats[150] = feats[7] + rng.normal(0, 0.3, 64)  # a crop: close, not equal
    feats[160] = np.nan  # unreadable: never paired
    pairs = similar_pairs(feats, 0.75)
    assert [(p["a"], p["b"]) for p in pairs] == [(7, 150)] and pairs[0]["cosine"] > 0.9
    assert similar_pairs(feats, 0.999) == []
    merged = merge_pairs(
        [
            {"a": 7, "b": 150, "kind": "near", "distance": 3, "mirrored": False},
            {"a": 1, "b": 2, "kind": "exact", "distance": 0, "mirrored": False},
        ],
        pairs,
    )
    assert [(p["kind"], p["cosine"] is not None) for p in merged] == [("exact", False), ("near", True)]
    assert merge_pairs([], pairs)[0]["kind"] == "similar"


def test_similar_in_any_view_unites_the_twins_each_view_finds():
    """Under several views of the same images, a twin that only one view sees is found, a
    pair both see keeps its higher cosine, and a distinct image pairs under none."""
    from ensemble.auditing.duplicates import similar_in_any, similar_pairs

    rng = np.random.default_rng(4)
    a = rng.normal(0, 1, (200, 64)).astype(np.float32)
    b = rng.normal(0, 1, (200, 64)).astype(np.float32)
    a[150] = a[7] + rng.normal(0, 0.3, 64)  # seen as twins in view a only
    b[120] = b[30] + rng.normal(0, 0.3, 64)  # in view b only
    a[90], b[90] = a[11] + rng.normal(0, 0.2, 64), b[11] + rng.normal(0, 0.5, 64)  # in both, closer in a
    got = similar_in_any([a, b], 0.75)
    assert [(p["a"], p["b"]) for p in got] == [(7, 150), (11, 90), (30, 120)]
    cos = [next(p["cosine"] for p in similar_pairs(v, 0.75) if (p["a"], p["b"]) == (11, 90)) for v in (a, b)]
    assert cos[0] > cos[1] and got[1]["cosine"] == cos[0]  # found in both: the higher cosine kept
    assert similar_in_any([a], 0.75) == similar_pairs(a, 0.75)


def _shapes(root, swap=None, bad=None):
    """train/val/test folders of synthetic shapes; ``swap`` moves one circle into squares,
    ``bad`` adds an unreadable file to train/circle."""
    synth.make_dataset(root)
    moved = None
    if swap:
        src = sorted((root / "train" / "circle").glob("*.png"))[0]
        moved = root / "train" / "square" / "moved_circle.png"
        shutil.move(src, moved)
    if bad:
        (root / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return moved


def test_audit_without_a_run_flags_a_misfiled_photo_of_a_config_and_of_a_folder(tmp_path, capsys, caplog):
    data = tmp_path / "data"
    moved = _shapes(data, swap=True, bad=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(data, epochs=1)))
    for source, out in (
        (cfg, tmp_path / "from-config"),
        (data, tmp_path / "from-folder"),
        (data / "train", tmp_path / "one-folder"),
    ):
        assert main(["audit", str(source), "--out", str(out)]) == 0, source
        doc = json.loads((out / "audit.json").read_text())
        assert doc["kind"] == "data" and doc["n_unreadable"] == 1
        rows = list(csv.DictReader(open(out / "label_issues.csv")))
        train = [r for r in rows if r["split"] == "train"]
        assert train and train[0]["path"] == str(moved), (source, train[:3])  # ranked first
        assert train[0]["given"] == "square" and train[0]["suggested"] == "circle"
        assert any(
            "unreadable" in r["what"] and r["path"].endswith("broken.png")
            for r in csv.DictReader(open(out / "odd_images.csv"))
        )
        assert "Data " in (out / "index.html").read_text()
    splits = json.loads((tmp_path / "from-folder" / "audit.json").read_text())["stats"]
    assert set(splits) == {"train", "val", "test"}
    assert set(json.loads((tmp_path / "one-folder" / "audit.json").read_text())["stats"]) == {"train"}
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 2
    assert "absent: not found" in capsys.readouterr().err + caplog.text
    # a threshold without a list to apply it to would change nothing: refused before any work
    assert main(["audit", str(data / "train"), "--out", str(tmp_path / "t"), "--threshold", "0.5"]) == 2
    assert "--threshold sets which images --write-exclude lists" in capsys.readouterr().err + caplog.text
    assert not (tmp_path / "t").exists()
    (data / "train" / "hexagon").mkdir()  # an empty class: one line naming it, nothing written
    assert main(["audit", str(data / "train"), "--out", str(tmp_path / "y")]) == 2
    assert "class folders with no images: hexagon" in capsys.readouterr().err + caplog.text
    assert not (tmp_path / "y").exists()


def test_audit_of_a_run_without_oob_scores_every_training_image_by_its_heads(tiny_data, tmp_path):
    raw = synth.tiny_config(tiny_data, epochs=1)
    for m in raw["members"]:
        m["bagging"] = {"ratio": 1.0, "replace": False, "stratify": True}  # every member sees every image
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert main(["audit", str(tmp_path / "run"), "--out", str(tmp_path / "audit"), "-q"]) == 0
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert doc["label_issues"]["train"]["n_scored"] == 0  # no OOB vote at all, and said
    assert doc["label_issues"]["train"]["n_not_scored"] == 48
    assert doc["label_issues"]["train (cross-fitted)"]["n_scored"] == 48
    assert main(["audit", str(tmp_path / "run"), "--out", str(tmp_path / "audit2"), "--no-features", "-q"]) == 0
    doc = json.loads((tmp_path / "audit2" / "audit.json").read_text())
    assert set(doc["label_issues"]) <= {"train", "val", "test"} and not list((tmp_path / "audit2").glob("features*"))
    assert doc["label_issues"]["train"]["n_scored"] == 0


def test_audit_outputs_resolve_anywhere_and_odd_inputs_stay_one_line(tmp_path, monkeypatch, capsys, caplog):
    from ensemble.data import read_exclusions

    monkeypatch.chdir(tmp_path)
    synth.make_folder(tmp_path / "data", 6)
    shutil.copy(sorted((tmp_path / "data" / "circle").iterdir())[0], tmp_path / "data" / "square" / "copy.png")
    (tmp_path / "lists").mkdir()
    # a relative folder: the exclude list's entries still name the real files
    assert main(["audit", "data", "--out", "audit", "--write-exclude", "lists/x.txt", "--threshold", "1"]) == 0
    paths, _ = read_exclusions(str(tmp_path / "lists" / "x.txt"))
    assert paths and all(Path(p).is_file() for p in paths)
    # a class of one image: scored where it can be, never a traceback
    single = tmp_path / "single"
    synth.make_folder(single, 6)
    shutil.rmtree(single / "square")  # two classes, one of a single image: a fold could fit on one class
    for p in sorted((single / "stripes").iterdir())[1:]:
        p.unlink()
    assert main(["audit", str(single), "--out", "single-audit"]) == 0
    # strict JSON (no NaN) although the one-image class has no threshold, and that image is not scored
    doc = json.loads(
        (tmp_path / "single-audit" / "audit.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"{c} in audit.json"),
    )
    crossed = doc["label_issues"]["train (cross-fitted)"]  # no fold holds two classes: nothing scored, said
    assert crossed["n_scored"] == 0 and crossed["n_not_scored"] == 7
    shutil.copytree(tmp_path / "data" / "square", single / "square")  # now the one image stands beside two classes
    assert main(["audit", str(single), "--out", "single-audit", "-q"]) == 0
    doc = json.loads(
        (tmp_path / "single-audit" / "audit.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"{c} in audit.json"),
    )
    crossed = doc["label_issues"]["train (cross-fitted)"]
    assert crossed["n_not_scored"] == 1 and crossed["n_scored"] == 13  # the one image has no score
    assert doc["features"].endswith(", views crop, squash, letterbox)")
    capsys.readouterr()
    assert main(["audit", str(single), "--out", "single-audit", "--feature-views", "squash", "-q"]) == 0
    assert json.loads((tmp_path / "single-audit" / "audit.json").read_text())["features"].endswith(", views squash)")
    assert main(["audit", str(single), "--out", "single-audit", "--feature-views", "crop,sideways"]) == 2
    err = capsys.readouterr().err + caplog.text
    assert "`--feature-views` must name views among crop, " in err and "got 'sideways'" in err
    assert "Traceback" not in err
    # a damaged feature cache is computed again, not an error
    (tmp_path / "audit" / "features-crop.safetensors").write_bytes(b"truncated")
    assert main(["audit", "data", "--out", "audit", "-q"]) == 0
    # an --out inside the folders a config reads is refused before anything is written
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tmp_path / "ds")))
    synth.make_dataset(tmp_path / "ds")
    capsys.readouterr()
    assert main(["audit", str(cfg), "--out", str(tmp_path / "ds" / "train" / "zz")]) == 2
    assert "is inside the input folder" in capsys.readouterr().err + caplog.text
    assert not (tmp_path / "ds" / "train" / "zz").exists()


def test_a_second_audit_rescores_the_images_the_run_left_out_with_its_ensemble(tmp_path, capsys, caplog):
    from ensemble.auditing.audit import EXCLUDE_HEADER, LEFT_OUT
    from ensemble.runfolder import load_run
    from ensemble.serving.answers import predict_rows

    data = tmp_path / "data"
    moved = _shapes(data, swap=True)  # a circle filed under square
    right = next(p for p in sorted((data / "train" / "square").glob("*.png")) if p != moved)
    first = tmp_path / "exclude.txt"
    val_image = sorted((data / "val" / "circle").glob("*.png"))[0]
    first.write_text(f"{EXCLUDE_HEADER}\n{moved}\n{right}\n{val_image}  # a val entry\n{'cd' * 32}\n")
    raw = synth.tiny_config(data, epochs=3)
    raw["data"]["exclude"] = str(first)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 0
    # the run's own list is never overwritten
    assert main(["audit", str(run), "--out", str(tmp_path / "audit"), "--write-exclude", str(first)]) == 2
    assert f"is also an input of this command ({first})" in caplog.text and not (tmp_path / "audit").exists()
    second = tmp_path / "exclude2.txt"
    assert (
        main(
            ["audit", str(run), "--out", str(tmp_path / "audit"), "--write-exclude", str(second), "--threshold", "0.01"]
        )
        == 0
    )
    assert "of the 2 the run left out" in capsys.readouterr().out
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    left = doc["left_out"]
    assert left["images"] == 2 and left["still_flagged"] + left["not_flagged"] == 2
    # scored with the OOB votes in one confident joint, by the ensemble no member of which saw them
    oob = doc["label_issues"]["train"]
    assert oob["n_scored"] + oob["n_not_scored"] == 16 * 3 and oob["n_scored"] > 2
    ens = load_run(str(run))
    proba = {r["path"]: r["proba"] for r in predict_rows(ens, [str(moved), str(right)])}
    rows = [r for r in csv.DictReader(open(tmp_path / "audit" / "label_issues.csv")) if r["source"] == LEFT_OUT]
    assert len(rows) == left["still_flagged"]
    for r in rows:
        assert float(r["self_confidence"]) == pytest.approx(proba[r["path"]][r["given"]], abs=1e-5)
    # what stays flagged stays out whatever --threshold says; what is not flagged comes back
    listed = [ln.split("#")[0].strip() for ln in second.read_text().splitlines() if not ln.startswith("#")]
    assert {r["path"] for r in rows} <= set(listed)
    assert not ({str(moved), str(right)} - {r["path"] for r in rows}) & set(listed)
    # the circle filed under square looks like a circle to an ensemble that never trained on it
    assert str(moved) in listed and str(right) not in listed, (rows, proba)
    assert f"{left['still_flagged']} still look mislabelled</b>" in (tmp_path / "audit" / "index.html").read_text()
    assert str(val_image) in listed and "cd" * 32 in listed  # what the audit did not score stays listed
    # the left-out scores are cached: read again as they are, computed again under a refitted combiner
    cache = tmp_path / "audit" / "left_out_proba.safetensors"
    stamp = cache.stat().st_mtime_ns
    assert main(["audit", str(run), "--out", str(tmp_path / "audit"), "-q"]) == 0
    assert cache.stat().st_mtime_ns == stamp
    assert main(["fit-combiner", str(run), "--set", "combiner.strategy=hard", "-q"]) == 0
    assert main(["audit", str(run), "--out", str(tmp_path / "audit"), "-q"]) == 0
    assert cache.stat().st_mtime_ns != stamp
    # a list that changed since training would misplace every OOB row: one line, exit 2
    first.write_text(first.read_text() + f"{sorted((data / 'train' / 'circle').glob('*.png'))[0]}\n")
    assert main(["audit", str(run), "--out", str(tmp_path / "audit3")]) == 2
    assert "now leaves out 3 training images; the run was trained without 2" in caplog.text


def test_a_second_exclude_list_clears_only_what_the_ensemble_scored_and_did_not_flag(tmp_path):
    from ensemble.auditing.audit import LEFT_OUT, carried_entries, exclude_lines
    from ensemble.auditing.duplicates import Signature

    a, b, c, d, e = (str(tmp_path / f"{k}.png") for k in "abcde")
    old = tmp_path / "old.txt"
    old.write_text(f"{a}\n{b}\n{c}  # a val image\n{e}\n{'ab' * 32}\n{'ef' * 32}\n")
    sig = lambda h: Signature(h, 0, 0, 10, 10, 1.0, False, 1.0)  # noqa: E731
    cleared = {a, d}  # left out, scored, not flagged; d was listed by its hash
    carried = carried_entries(str(old), cleared, {d: sig("ab" * 32), b: sig("00" * 32)})
    assert carried == sorted([b, c, e]) + ["ef" * 32]

    def row(path, source, p):
        return {"split": "train", "source": source, "path": path, "given": "x", "suggested": "y", "self_confidence": p}

    rows = [
        row(b, LEFT_OUT, 0.6),
        row(str(tmp_path / "new.png"), "OOB vote", 0.05),
        row(str(tmp_path / "weak.png"), "OOB vote", 0.5),
    ]
    listed = [ln.split("  #")[0] for ln in exclude_lines(rows, [], 0.1, carried)[1:]]
    # still flagged stays out whatever the threshold; a new flag needs it; nothing twice
    assert listed == [b, str(tmp_path / "new.png"), c, e, "ef" * 32]


def test_bad_list_files_are_one_line_and_entries_that_name_no_image_are_said(tmp_path, capsys, caplog):
    """data.exclude / data.relabel files: a short row, bytes that are not UTF-8 and one image
    relabelled twice are one line and exit 2; a spreadsheet's byte-order mark is read; entries
    that name no image (a typo, a moved photo) are counted in a warning, not dropped silently."""
    data = tmp_path / "data"
    synth.make_dataset(data)
    one = sorted((data / "train" / "circle").glob("*.png"))[0]
    raw = synth.tiny_config(data, epochs=1)
    cfg = tmp_path / "cfg.yaml"

    def audit(exclude=None, relabel=None):
        raw["data"].update({k: str(v) for k, v in (("exclude", exclude), ("relabel", relabel)) if v})
        cfg.write_text(yaml.safe_dump(raw))
        capsys.readouterr()
        caplog.clear()
        code = main(["audit", str(cfg), "--out", str(tmp_path / "out"), "--no-features", "-q"])
        for k in ("exclude", "relabel"):
            raw["data"].pop(k, None)
        return code, capsys.readouterr().err + caplog.text

    short = tmp_path / "short.csv"
    short.write_text("suggested,path\nsquare\n")
    code, text = audit(relabel=short)
    assert code == 2 and f"`data.relabel`: {short}, line 2: no path" in text and "Traceback" not in text
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00junk")
    for kind in ("exclude", "relabel"):
        code, text = audit(**{kind: binary})
        assert code == 2 and f"`data.{kind}`: {binary}: is not UTF-8 text" in text and "Traceback" not in text
    twice = tmp_path / "twice.csv"
    twice.write_text(f"path,suggested\n{one},square\n{one},circle\n{one},circle\n")
    code, text = audit(relabel=twice)
    assert code == 2 and "line 3" in text and "'square' on line 2" in text
    bom = tmp_path / "bom.csv"
    bom.write_bytes(f"path,suggested\n{one},square\n".encode("utf-8-sig"))
    code, text = audit(relabel=bom)
    assert code == 0 and "name no image" not in text
    from ensemble.data import read_relabels

    assert read_relabels(str(bom), ["circle", "square", "stripes"]) == {str(one): "square"}
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"{one}\nhello world\n{tmp_path / 'gone.png'}\n{'ab' * 32}\n")
    code, text = audit(exclude=listed)
    assert code == 0
    assert f"`data.exclude`: {listed}: 3 of its 4 entries name no image of the splits" in text
    assert all(r.levelname == "WARNING" for r in caplog.records if "name no image" in r.getMessage())
    stale = tmp_path / "stale.csv"
    stale.write_text(f"path,suggested\n{one},square\n{tmp_path / 'gone.png'},circle\n")
    code, text = audit(relabel=stale)
    assert code == 0 and f"`data.relabel`: {stale}: 1 of its 2 entries name no image of the splits" in text


def test_write_exclude_never_loses_a_file_a_person_or_the_audit_wrote(tmp_path, capsys, caplog):
    """--write-exclude refuses, before any work and naming itself: a folder, a file inside
    --out, and a list effens wrote that a person has since edited; an unedited list is
    written again."""
    synth.make_folder(tmp_path / "data", 6)
    shutil.copy(sorted((tmp_path / "data" / "circle").iterdir())[0], tmp_path / "data" / "square" / "copy.png")
    out, target = tmp_path / "audit", tmp_path / "exclude.txt"

    def audit(write, out=out):
        capsys.readouterr()
        caplog.clear()
        code = main(
            [
                "audit",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--write-exclude",
                str(write),
                "--threshold",
                "1",
                "-q",
            ]
        )
        return code, capsys.readouterr().err + caplog.text

    assert audit(target)[0] == 0
    body = target.read_text()
    assert audit(target)[0] == 0 and target.read_text() == body  # effens's own list, unedited: written again
    for bad, says in (
        (tmp_path, "is a folder; name a file"),
        (out / "label_issues.csv", f"is inside --out {out}"),
        (tmp_path / "new" / "x.txt", "is inside --out"),
    ):
        code, text = audit(bad, out=tmp_path / "new" if bad.parent.name == "new" else out)
        assert code == 2 and f"--write-exclude {bad}: {says}" in text, text
    # --out not there yet: the list cannot be --out itself, nor a file --out would sit inside
    for bad, new_out in ((tmp_path / "new", tmp_path / "new"), (tmp_path / "new", tmp_path / "new" / "audit")):
        code, text = audit(bad, out=new_out)
        assert code == 2 and f"--write-exclude {bad}: --out {new_out} is this path or lies inside it" in text, text
    assert "path" in (out / "label_issues.csv").read_text().splitlines()[0]  # the audit's own file intact
    assert not (tmp_path / "new").exists()
    edited = body + "/somewhere/else.png  # I added this\n"
    target.write_text(edited)
    code, text = audit(target)
    assert code == 2 and f"--write-exclude {target}: was edited after `effens audit` wrote it" in text
    assert target.read_text() == edited


def test_list_entries_match_through_linked_folders_and_names_holding_a_hash(tmp_path, caplog):
    """An exclude entry written through a symlinked folder names the same image, and a file
    name holding `` #`` is one entry, with or without a comment after it."""
    from ensemble.config import config_from_dict
    from ensemble.data import load_dataset, read_exclusions

    synth.make_dataset(tmp_path / "ds")
    (tmp_path / "link").symlink_to(tmp_path / "ds")
    circles = sorted((tmp_path / "ds" / "train" / "circle").glob("*.png"))
    odd = [circles[1].with_name("car #3.png"), circles[2].with_name("b #2.png")]
    circles[1].rename(odd[0])
    circles[2].rename(odd[1])
    listed = tmp_path / "exclude.txt"
    listed.write_text(
        f"{odd[0]}  # exact copy of test image x.png\n{odd[1]}\n"
        f"{tmp_path / 'link' / 'train' / 'circle' / circles[0].name}  # through the link\n"
    )
    paths, _ = read_exclusions(str(listed))
    assert {str(odd[0]), str(odd[1])} <= paths
    cfg = config_from_dict(
        {
            "data": {
                "train": str(tmp_path / "link" / "train"),
                "val": str(tmp_path / "ds" / "val"),
                "exclude": str(listed),
            },
            "members": synth.tiny_config(tmp_path)["members"],
        }
    )
    data = load_dataset(cfg.data, 0)
    assert data.changes["train"]["excluded"] == 3 and "name no image" not in caplog.text
    assert not {str(p) for p in (*odd, circles[0])} & set(data.train.paths)
    # two split entries linking to one stored object (git-annex) stay two images: leaving out
    # the training one leaves val as it is
    pool = tmp_path / "pool.png"
    shutil.copy(circles[3], pool)
    linked = [tmp_path / "ds" / "train" / "circle" / "annexed.png", tmp_path / "ds" / "val" / "circle" / "annexed.png"]
    for p in linked:
        p.symlink_to(pool)
    listed.write_text(f"{linked[0]}\n")
    data = load_dataset(cfg.data, 0)
    assert data.changes["train"]["excluded"] == 1 and data.changes["val"]["excluded"] == 0


def test_the_audit_keeps_what_people_wrote_and_says_what_it_cannot_list(tmp_path, capsys, caplog):
    """A table edited in --out, a list the audited config reads from --out, a list whose
    digest line was removed and a path under a file are refused before any work (exit 2);
    unreadable training images are listed; a file two splits share is counted and left to a
    person; a relabel list that changes val labels says so; audit.json stays strict JSON."""
    from ensemble.auditing.audit import EXCLUDE_HEADER

    ds = synth.make_dataset(tmp_path / "ds")
    broken = ds / "train" / "circle" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    shared = sorted((ds / "train" / "square").glob("*.png"))[0]
    val_csv = tmp_path / "val.csv"
    val_csv.write_text(
        "path,label\n"
        + "".join(f"{p},{p.parent.name}\n" for p in sorted((ds / "val").glob("*/*.png")))
        + f"{shared},square\n"
    )
    out, target = tmp_path / "audit", tmp_path / "exclude.txt"

    def audit(source, *extra):
        capsys.readouterr()
        caplog.clear()
        code = main(["audit", str(source), "--out", str(out), "--no-features", *extra])
        return code, capsys.readouterr().out + capsys.readouterr().err + caplog.text

    raw = synth.tiny_config(ds)
    raw["data"]["val"] = str(val_csv)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    code, text = audit(cfg, "--write-exclude", str(target), "--threshold", "1")
    assert code == 0 and "1 of them the same file in two splits" in text and "listed in two splits" in text
    doc = json.loads((out / "audit.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in audit.json"))
    assert doc["duplicates"]["same_file"] == 1
    listed = target.read_text()
    assert f"{broken}  # unreadable: " in listed and str(shared) not in listed  # val keeps its image
    # a name with a line break cannot be a line (it would list two wrong entries): said, not written
    odd = ds / "train" / "square" / "new\nline.png"
    shutil.copy(sorted((ds / "test" / "square").glob("*.png"))[0], odd)
    other = tmp_path / "exclude-odd.txt"
    code, text = audit(cfg, "--write-exclude", str(other))
    assert code == 0 and "has a line break in its name, so no list line can name it" in text
    assert "line.png" not in other.read_text()
    odd.unlink()
    assert audit(cfg)[0] == 0  # the audit's own tables, unedited: written again
    table = out / "label_issues.csv"
    table.write_text("path,suggested\n")  # reviewed in place
    code, text = audit(cfg)
    assert code == 2 and f"{table}: was edited after `effens audit` wrote it" in text
    assert table.read_text() == "path,suggested\n"
    # an audit folder of an older version (no digests): a table newer than its audit.json is an edit
    doc = json.loads((out / "audit.json").read_text())
    del doc["written"]
    (out / "audit.json").write_text(json.dumps(doc))
    os.utime(out / "audit.json", ns=(1, 1))
    code, text = audit(cfg)
    assert code == 2 and f"{table}: was edited after `effens audit` wrote it" in text
    (out / "audit.json").unlink()  # or none at all: effens's file record dates the tables
    code, text = audit(cfg)
    assert code == 2 and f"{table}: was edited after `effens audit` wrote it" in text
    raw["data"]["relabel"] = str(table)  # and named as the config's relabel list
    cfg.write_text(yaml.safe_dump(raw))
    code, text = audit(cfg)
    assert code == 2 and f"--out {out}: holds {table}, which this audit reads" in text
    assert table.read_text() == "path,suggested\n"
    # a list whose digest line a person deleted counts as edited; a path below a file, before any work
    target.write_text(f"{EXCLUDE_HEADER}\n{shared}\n")
    del raw["data"]["relabel"]
    cfg.write_text(yaml.safe_dump(raw))
    shutil.rmtree(out)
    code, text = audit(cfg, "--write-exclude", str(target))
    assert code == 2 and "has no digest line" in text and not out.exists()
    code, text = audit(cfg, "--write-exclude", str(target / "x.txt"))
    assert code == 2 and f"--write-exclude {target / 'x.txt'}: {target} is a file, not a folder" in text
    inside = ds / "train" / "circle" / "zz.jpg"  # the next audit would read it as a photo
    code, text = audit(cfg, "--write-exclude", str(inside))
    assert code == 2 and f"--write-exclude {inside}: is inside the input folder" in text
    assert not out.exists() and not inside.exists()
    # relabelling a val image is said where it cannot be missed
    relabel = tmp_path / "relabel.csv"
    val_circle = sorted((ds / "val" / "circle").glob("*.png"))[0]
    relabel.write_text(f"path,suggested\n{val_circle},square\n")
    raw["data"]["relabel"] = str(relabel)
    cfg.write_text(yaml.safe_dump(raw))
    code, text = audit(cfg)
    assert code == 0 and f"`data.relabel` {relabel} changes 1 val labels" in text
    relabel.write_text("path,suggested\n" + "".join(f"{p},square\n" for p in (ds / "train" / "stripes").glob("*.png")))
    code, text = audit(cfg)
    assert code == 0 and "leave no training image of class stripes" in text


@pytest.mark.parametrize("target", ["fifo", "/proc/self/fd/1"])
def test_write_exclude_at_a_pipe_is_refused_without_reading_it(tmp_path, target):
    """--write-exclude at a FIFO (or at the process's own stdout, a pipe here) is one line
    naming the flag, exit 2, at once: the target is never opened (reading it blocked forever)."""
    import subprocess
    import sys

    synth.make_folder(tmp_path / "data", 4)
    if target == "fifo":
        target = str(tmp_path / "exclude.txt")
        os.mkfifo(target)
    out = tmp_path / "audit"
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ensemble",
                "audit",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--write-exclude",
                target,
                "--no-features",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"effens audit --write-exclude {target} hung")
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert f"--write-exclude {target}: is a named pipe (FIFO); name a file" in err[0]
    assert not out.exists() and "Traceback" not in done.stderr


DETECTOR_PLUGIN = '''
import os

from ensemble.auditing.audit import Finding, detector


@detector
def big_files(ctx):
    """Photos larger on disk than the median photo."""
    sizes = {p: os.path.getsize(p) for _, p, _ in ctx.known}
    median = sorted(sizes.values())[len(sizes) // 2]
    rows = [{"split": s, "path": p, "bytes": sizes[p]} for s, p, _ in ctx.known if sizes[p] > median]
    return Finding({"big_files": {"n": len(rows), "classes": len(ctx.classes)}}, f"{len(rows)} big files",
                   "Big files", rows, ["split", "path", "bytes"], "big_files.csv")
'''


def test_a_plugin_detector_reaches_audit_json_the_page_the_csv_and_the_summary_line(tmp_path, capsys):
    """Issue #42 item 4: an audit detector is one registered function; nothing else is edited."""
    from ensemble.auditing.audit import DETECTORS

    data = tmp_path / "data"
    synth.make_dataset(data)
    (tmp_path / "bigplug.py").write_text(DETECTOR_PLUGIN)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(data, plugins=["bigplug"])))
    sizes = {p: p.stat().st_size for p in data.rglob("*.png")}
    big = [p for p in sorted(sizes) if sizes[p] > sorted(sizes.values())[len(sizes) // 2]]
    assert 0 < len(big) < len(sizes)
    try:
        assert main(["audit", str(cfg), "--out", str(tmp_path / "audit"), "--no-features"]) == 0
    finally:
        DETECTORS.remove("big_files")
    out = tmp_path / "audit"
    doc = json.loads((out / "audit.json").read_text())
    assert doc["big_files"] == {"n": len(big), "classes": 3}
    assert doc["summary"]["big_files"] == f"{len(big)} big files"
    assert {"label_issues", "duplicates", "n_odd", "stats", "shortcuts"} <= set(doc)  # the built-in ones too
    assert f"; {len(big)} big files -> {out / 'index.html'}" in capsys.readouterr().out  # after the built-in ones
    page = (out / "index.html").read_text()
    assert f"<h2>Big files ({len(big)})</h2>" in page and big[0].name in page and "<h2>Duplicates (" in page
    rows = list(csv.DictReader(open(out / "big_files.csv")))
    assert sorted(r["path"] for r in rows) == sorted(map(str, big)) and "big_files.csv" in doc["written"]
