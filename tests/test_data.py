import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import synth
import yaml
from PIL import Image

from ensemble.cli import main
from ensemble.config import DataConfig, SplitSource
from ensemble.data import DataError, load_csv, load_dataset, load_folder


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
    rows = [
        [f"../{tiny_data.name}/train/circle/circle_000.png", "circle", "x"],
        [str(tiny_data / "train/square/square_001.png"), "square", ""],
    ]
    sub = tmp_path / "sub"
    sub.mkdir()
    # a relative path resolves against the CSV's own folder
    (sub / "link").symlink_to(tiny_data.parent)
    rows[0][0] = f"link/{tiny_data.name}/train/circle/circle_000.png"
    split = load_csv(write_csv(sub / "m.csv", rows))
    assert split.labels == ["circle", "square"]
    assert split.paths[0].endswith("circle_000.png")


def test_csv_custom_columns(tiny_data, tmp_path):
    p = write_csv(tmp_path / "m.csv", [[str(tiny_data / "val/circle/circle_000.png"), "circle"]], header=("file", "y"))
    assert len(load_csv(p, "file", "y")) == 1
    with pytest.raises(DataError, match="missing column"):
        load_csv(p)


def test_csv_problems_list_the_rows(tiny_data, tmp_path):
    good = str(tiny_data / "val/circle/circle_000.png")
    p = write_csv(tmp_path / "m.csv", [[good, "circle", ""], [good, "circle", ""], ["nope.png", "circle", ""]])
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


# ---------------------------------------------------------------- data.exclude / data.relabel (#41)
def _tree(root):
    """Every file under ``root`` with its bytes: a failed command must leave it as it was."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _effens(argv, capsys, caplog):
    """(exit code, stderr and log) of ``effens ARGV`` run in this process."""
    from ensemble.cli import main

    capsys.readouterr()
    caplog.clear()
    code = main(argv)
    return code, capsys.readouterr().err + caplog.text


def _list_config(tmp_path, data, **lists):
    """A one-member, one-epoch config over ``data`` with ``data.exclude`` / ``data.relabel`` set."""
    import yaml

    raw = synth.tiny_config(data, epochs=1)
    raw["members"] = raw["members"][:1]
    raw["data"].update({k: str(v) for k, v in lists.items()})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@pytest.mark.parametrize("split", ["val", "test"])
def test_an_exclude_list_that_empties_val_or_test_is_refused_before_any_training(tmp_path, capsys, caplog, split):
    data = synth.make_dataset(tmp_path / "data")
    listed = tmp_path / "exclude.txt"
    listed.write_text("".join(f"{p.relative_to(tmp_path)}\n" for p in sorted((data / split).rglob("*.png"))))
    cfg = _list_config(tmp_path, data, exclude=listed)
    before = _tree(tmp_path)
    for command in (
        ["train", str(cfg), "--out", str(tmp_path / "run")],
        ["tune", str(cfg), "--out", str(tmp_path / "tuned"), "--yes"],
    ):
        code, err = _effens(command, capsys, caplog)
        assert code == 2 and "Traceback" not in err, err[-2000:]
        assert f"`data.exclude`: {listed}: leaves out all 18 images of the {split} split" in err
        assert _tree(tmp_path) == before  # no run, no tuning folder, inputs untouched


def _audited_images(tmp_path, cfg, capsys, caplog) -> dict:
    """Images per split after the config's lists, as `effens audit CONFIG --no-features` counts them."""

    out = tmp_path / "audit"
    code, err = _effens(["audit", str(cfg), "--out", str(out), "--no-features", "-q"], capsys, caplog)
    assert code == 0, err[-2000:]
    return {k: v["images"] for k, v in json.loads((out / "audit.json").read_text())["stats"].items()}


def test_quoted_list_entries_and_a_quoted_csv_header_in_a_txt_are_read(tmp_path, capsys, caplog):
    data = synth.make_dataset(tmp_path / "data")
    a, b, c = (p.relative_to(tmp_path) for p in sorted((data / "test" / "circle").glob("*.png"))[:3])
    quoted = tmp_path / "quoted.txt"
    quoted.write_text(f'"{a}"\n  "{b}"  # a comment\n{c}\n')
    assert _audited_images(tmp_path, _list_config(tmp_path, data, exclude=quoted), capsys, caplog)["test"] == 15
    header = tmp_path / "from_a_spreadsheet.txt"
    header.write_text(f'"path","reason"\n"{a}","blurred"\n"{b}", "a copy"\n')
    assert _audited_images(tmp_path, _list_config(tmp_path, data, exclude=header), capsys, caplog)["test"] == 16
    relabel = tmp_path / "relabel.csv"
    relabel.write_text(f'path, suggested\n "{c}", "square"\n')
    assert _audited_images(tmp_path, _list_config(tmp_path, data, relabel=relabel), capsys, caplog)["test"] == 18
    assert "name no image" not in caplog.text


def test_a_list_that_names_no_image_and_an_image_in_both_lists_are_refused(tmp_path, capsys, caplog):
    data = synth.make_dataset(tmp_path / "data")
    one = sorted((data / "train" / "circle").glob("*.png"))[0]
    stale = tmp_path / "stale.txt"
    stale.write_text(f"{tmp_path / 'moved' / one.name}\n{'ab' * 32}\n")
    relabel = tmp_path / "relabel.csv"
    relabel.write_text(f"path,suggested\n{one},square\n")
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text(f"path,suggested\n{tmp_path / 'moved' / one.name},square\n")
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"{one}\n")
    before = _tree(tmp_path)
    for lists, message in (
        ({"exclude": stale}, f"`data.exclude`: {stale}: none of its 2 entries names an image"),
        ({"relabel": elsewhere}, f"`data.relabel`: {elsewhere}: none of its 1 entries names an image"),
        (
            {"exclude": listed, "relabel": relabel},
            f"{one}: is left out by `data.exclude` {listed} and relabelled 'square' by "
            f"`data.relabel` {relabel}; keep it in one list",
        ),
    ):
        cfg = _list_config(tmp_path, data, **lists)
        code, err = _effens(["train", str(cfg), "--out", str(tmp_path / "run")], capsys, caplog)
        assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
        cfg.unlink()
        assert _tree(tmp_path) == before


def test_a_list_that_is_a_fifo_is_named_as_one_and_never_opened(tmp_path, capsys, caplog):
    import os

    data = synth.make_dataset(tmp_path / "data")
    fifo = tmp_path / "exclude.txt"
    os.mkfifo(fifo)  # reading it would block until a writer comes: the command would hang
    for key in ("exclude", "relabel"):
        cfg = _list_config(tmp_path, data, **{key: fifo})
        code, err = _effens(["train", str(cfg), "--out", str(tmp_path / "run")], capsys, caplog)
        assert code == 2 and f"`data.{key}`: {fifo}: not a regular file" in err, err[-2000:]
        assert not (tmp_path / "run").exists()


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
def test_tiny_and_lopsided_data(tmp_path, fails):
    rng = np.random.default_rng(0)
    tiny = tmp_path / "tiny"
    for cls in synth.CLASSES:
        (tiny / cls).mkdir(parents=True)
        for i in range(2):
            synth.make_image(cls, rng).save(tiny / cls / f"{i}.png")
    cfg = synth.tiny_config(tmp_path, epochs=1)
    cfg["data"] = {"train": str(tiny)}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    fails(main(["train", str(path), "--out", str(tmp_path / "r1")]), "cannot hold out a stratified validation set")
    # val with a single class and no OOB images (ratio 1 without replacement): stacking still fits
    one = tmp_path / "one/circle"
    one.mkdir(parents=True)
    shutil.copy(tiny / "circle/0.png", one / "0.png")
    cfg["data"] = {"train": str(tiny), "val": str(tmp_path / "one")}
    for m in cfg["members"]:
        m["bagging"] = {"ratio": 1.0, "replace": False}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "r2"), "-q", "--set", "combiner.strategy=stacking"]) == 0
    # skipping unreadable images must not silently drop a whole class
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    for p in (broken / "square").iterdir():
        p.write_bytes(b"not a png")
    cfg["data"] = {"train": str(broken), "val": str(tiny), "on_bad_image": "skip"}
    path.write_text(yaml.safe_dump(cfg))
    fails(main(["train", str(path), "--out", str(tmp_path / "r3")]), "every image of class square was unreadable")


def test_input_files(trained, tiny_data, tmp_path, fails):
    _, run = trained
    long = tmp_path / "long.png"
    Image.fromarray(np.zeros((1, 100000, 3), np.uint8)).save(long)
    assert long.stat().st_size < 1000
    good = str(sorted((tiny_data / "test/circle").iterdir())[0])
    assert main(["predict", str(run), str(long), good, "--out", str(tmp_path / "p.csv")]) == 0
    row = (tmp_path / "p.csv").read_text().splitlines()[1]
    assert "more elongated than 20:1" in row
    latin = synth.write_file(tmp_path / "latin.csv", "path\ncaf\xe9.png\n".encode("latin-1"))
    fails(main(["predict", str(run), str(latin), "--out", str(tmp_path / "q.csv")]), "latin.csv: line 2: not UTF-8")
    nul = synth.write_file(tmp_path / "nul.csv", b"path\na.png\nb\x00.png\n")
    fails(main(["predict", str(run), str(nul), "--out", str(tmp_path / "q.csv")]), "nul.csv: line 3: a NUL byte")
    nopath = synth.write_file(tmp_path / "nopath.csv", b"path,note\n,x\n")
    fails(main(["predict", str(run), str(nopath), "--out", str(tmp_path / "q.csv")]), "nopath.csv: line 2: no path")


def test_a_fifo_among_images_is_skipped_not_opened(trained, tiny_data, tmp_path):
    _, run = trained
    folder = tmp_path / "imgs"
    shutil.copytree(tiny_data / "test/circle", folder)
    os.mkfifo(folder / "pipe.jpg")
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "ensemble", "predict", str(run), str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not regular files" in proc.stderr and "pipe.jpg" in proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and not any("pipe" in r["path"] for r in rows)
    # named directly, it is an error row, not a hang
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensemble",
            "predict",
            str(run),
            str(folder / "pipe.jpg"),
            str(sorted(folder.glob("*.png"))[0]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not a regular file" in out.read_text()


@pytest.mark.parametrize("bad", ["review", "minor|moderate", "line\nbreak"])
def test_ambiguous_class_names_are_refused_at_train_time(tiny_data, tmp_path, bad, fails):
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for i, p in enumerate(sorted((tiny_data / "train/circle").iterdir())[:6]):
            w.writerow([str(p), "circle" if i % 2 else bad])
    path = synth.config_file(tmp_path, tiny_data, epochs=1)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["train"] = str(manifest)
    path.write_text(yaml.safe_dump(raw))
    text = fails(main(["train", str(path), "--out", str(tmp_path / "run")]))
    assert ("control character" in text) if "\n" in bad else ("is not allowed" in text and repr(bad) in text)
    assert not (tmp_path / "run").exists()


def test_one_path_rule_and_one_hidden_rule(tiny_data, tmp_path, capsys, caplog):
    from ensemble.data import load_csv, load_folder

    first = sorted((tiny_data / "train/circle").iterdir())[0]
    manifest = tmp_path / "m.csv"
    twisted = str(first.parent / "." / first.name)
    dotted = str(first.parent.parent / "circle" / ".." / "circle" / first.name)
    manifest.write_text(f"path,label\n{first},circle\n{twisted},circle\n{dotted},circle\n")
    from ensemble.data import DataError

    with pytest.raises(DataError, match=r"row 3: duplicate of row 2.*row 4: duplicate of row 2"):
        load_csv(manifest)
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "train", data)
    hidden = data / "circle" / ".thumbnails"
    hidden.mkdir()
    Image.new("RGB", (8, 8)).save(hidden / "thumb.png")
    split = load_folder(data)
    assert not any(".thumbnails" in p for p in split.paths)
    assert len(split) == 48


def test_a_class_missing_from_val_and_a_sample_without_a_class_warn(tiny_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shutil.rmtree(data / "val/square")
    raw = synth.tiny_config(data, epochs=1, n_members=1)
    raw["members"][0]["bagging"] = {"ratio": 0.05, "replace": False, "stratify": False}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "val has no image of class(es) square" in caplog.text
    assert "bagging sample holds no image of class" in caplog.text


def test_data_train_naming_a_file_says_so(tiny_data, tmp_path, fails):
    f = tmp_path / "train.txt"
    f.write_text("x")
    raw = synth.tiny_config(tiny_data)
    raw["data"]["train"] = str(f)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    fails(main(["train", str(path), "--out", str(tmp_path / "r")]), "is a file, not a folder")
