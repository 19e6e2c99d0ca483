import csv

import numpy as np
import pytest

from ensemble.config import DataConfig, SplitSource
from ensemble.data import DataError, load_csv, load_dataset, load_folder

import synth


def write_csv(path, rows, header=("path", "label", "note")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_folder_layout(tiny_data):
    split = load_folder(tiny_data / "train")
    assert len(split) == 48
    assert sorted(set(split.labels)) == sorted(synth.CLASSES)
    assert all(p.endswith(".png") for p in split.paths)


def test_empty_class_folder_is_an_error(tmp_path):
    synth.make_folder(tmp_path / "d", 2)
    (tmp_path / "d" / "empty").mkdir()
    with pytest.raises(DataError, match="class folders with no images: empty"):
        load_folder(tmp_path / "d")


def test_csv_manifest_relative_paths_and_extra_columns(tiny_data, tmp_path):
    rows = [[f"../{tiny_data.name}/train/circle/circle_000.png", "circle", "x"],
            [str(tiny_data / "train/square/square_001.png"), "square", ""]]
    sub = tmp_path / "sub"
    sub.mkdir()
    # a relative path resolves against the CSV's own folder
    (sub / "link").symlink_to(tiny_data.parent)
    rows[0][0] = f"link/{tiny_data.name}/train/circle/circle_000.png"
    split = load_csv(write_csv(sub / "m.csv", rows))
    assert split.labels == ["circle", "square"]
    assert split.paths[0].endswith("circle_000.png")


def test_csv_custom_columns(tiny_data, tmp_path):
    p = write_csv(tmp_path / "m.csv", [[str(tiny_data / "val/circle/circle_000.png"), "circle"]],
                  header=("file", "y"))
    assert len(load_csv(p, "file", "y")) == 1
    with pytest.raises(DataError, match="missing column"):
        load_csv(p)


def test_csv_problems_list_the_rows(tiny_data, tmp_path):
    good = str(tiny_data / "val/circle/circle_000.png")
    p = write_csv(tmp_path / "m.csv", [[good, "circle", ""], [good, "circle", ""],
                                       ["nope.png", "circle", ""]])
    with pytest.raises(DataError) as info:
        load_csv(p)
    msg = str(info.value)
    assert "row 3: duplicate of row 2" in msg and "row 4: no such file nope.png" in msg
    # the same file again through a linked folder is the same row
    (tmp_path / "link").symlink_to(tiny_data / "val")
    linked = str(tmp_path / "link/circle/circle_000.png")
    p = write_csv(tmp_path / "l.csv", [[good, "circle", ""], [linked, "circle", ""]])
    with pytest.raises(DataError, match="row 3: duplicate of row 2"):
        load_csv(p)


def test_unknown_labels_in_val_are_refused(tiny_data, tmp_path):
    p = write_csv(tmp_path / "v.csv", [[str(tiny_data / "val/circle/circle_000.png"), "triangle", ""]])
    cfg = DataConfig(train=SplitSource(folder=str(tiny_data / "train")), val=SplitSource(csv=str(p)))
    with pytest.raises(DataError, match="labels not in the training classes .*: triangle"):
        load_dataset(cfg, seed=0)


def test_val_fraction_holds_out_stratified(tiny_data):
    cfg = DataConfig(train=SplitSource(folder=str(tiny_data / "train")), val_fraction=0.25)
    ds = load_dataset(cfg, seed=0)
    assert len(ds.val) == 12 and len(ds.train) == 36
    assert set(ds.val.paths).isdisjoint(ds.train.paths)
    counts = np.unique(ds.val.labels, return_counts=True)[1]
    assert counts.tolist() == [4, 4, 4]
    assert load_dataset(cfg, seed=0).val.paths == ds.val.paths  # deterministic
