"""Whole-image views, view TTA and the robustness preset (members/views.py, members/transforms.py)."""

import dataclasses
import json

import numpy as np
import pytest
import synth
import torch
import yaml
from PIL import Image

from ensemble.cli import main
from members.models import InputConfig
from members.streams import item_streams
from members.transforms import center_crop, eval_tensor, train_transform
from members.views import VIEWS, parse_tta, view_names

INPUTS = InputConfig(32, 0.875, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def wide_image():
    """64 x 32: left half red, right half blue, so what a view keeps is visible."""
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32, 0] = 255
    arr[:, 32:, 2] = 255
    return arr


def test_views_by_hand():
    arr = wide_image()
    crop = VIEWS["crop"](arr, INPUTS)
    np.testing.assert_array_equal(crop, center_crop(arr, INPUTS))
    assert crop.shape == (32, 32, 3)
    lb = VIEWS["letterbox"](arr, dataclasses.replace(INPUTS, view="letterbox"))
    assert lb.shape == (32, 32, 3)
    assert (lb[:8] == 128).all() and (lb[-8:] == 128).all()  # padded with the mean colour (0.5 -> 128)
    assert lb[16, 2, 0] > 200 and lb[16, -3, 2] > 200  # both halves of the photo are in view
    sq = VIEWS["squash"](arr, INPUTS)
    assert sq.shape == (32, 32, 3) and sq[0, 2, 0] > 200 and sq[-1, -3, 2] > 200 and (sq != 128).all(axis=2).any()
    start, end = VIEWS["crop_start"](arr, INPUTS), VIEWS["crop_end"](arr, INPUTS)
    assert (start[..., 0] == 255).all() and (start[..., 2] == 0).all()  # the left (red) half only
    assert (end[..., 2] == 255).all() and (end[..., 0] == 0).all()  # the right (blue) half only
    tall = np.ascontiguousarray(arr.transpose(1, 0, 2))  # 32 x 64 portrait: red on top
    assert (VIEWS["crop_start"](tall, INPUTS)[..., 0] == 255).all()
    assert (VIEWS["crop_end"](tall, INPUTS)[..., 2] == 255).all()
    with pytest.raises(ValueError, match="flip or one of crop, crop_start, crop_end, letterbox, squash; got zoom"):
        parse_tta("flip,zoom")
    assert parse_tta(True) == ("flip",) and parse_tta("crop, letterbox") == ("crop", "letterbox")


def test_tta_only_views_are_not_member_views(tmp_path, caplog):
    from ensemble.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("members:\n  - {name: a, model: test_efficientnet, view: crop_end}\ndata: {train: x, val: y}\n")
    with pytest.raises(ConfigError, match="view.*crop, letterbox, squash"):
        load_config(path)


@pytest.mark.parametrize("view, robust", [("letterbox", "light"), ("squash", "strong"), ("crop", "light")])
def test_training_views_and_robust_preset_are_deterministic_per_item(view, robust):
    from ensemble.config import TrainConfig

    inputs = dataclasses.replace(INPUTS, view=view)
    cfg = TrainConfig(augment="none", robust=robust)
    tf = train_transform(inputs, cfg)
    names = [type(t).__name__ for t in tf.transforms]
    assert ("WholeImage" in names) == (view != "crop") and "RobustAugment" in names
    img = Image.fromarray(wide_image())
    with item_streams(0, 0, 5):
        a = tf(img)
    with item_streams(0, 0, 5):
        b = tf(img)
    outs = []
    for i in range(8):
        with item_streams(0, 0, i):
            outs.append(tf(img))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_a_letterbox_member_trains_predicts_and_exports_its_view(tiny_data, tmp_path):
    cfg = synth.tiny_config(tiny_data, epochs=1)
    for m in cfg["members"]:
        m["view"] = "letterbox"
        m["train"]["robust"] = "light"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "-q"]) == 0
    meta = json.loads((run / "members/a/member.json").read_text())
    assert meta["inputs"]["view"] == "letterbox"
    from ensemble.images import decode_all
    from ensemble.inference import decode_size
    from ensemble.runfolder import load_run

    ens = load_run(run)
    paths = sorted(str(p) for p in (tiny_data / "test/circle").iterdir())[:3]
    imgs, _ = decode_all(paths, decode_size(ens))
    fm = ens.members_[0]
    own = ens.member_proba(imgs, runtime="torch")[0]
    with torch.no_grad():
        x = eval_tensor(imgs, fm.inputs).float()
        mean = torch.tensor(fm.inputs.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(fm.inputs.std).view(1, 3, 1, 1) * 255
        manual = fm.model((x - mean) / std).softmax(1).double().numpy()
    np.testing.assert_allclose(own, manual, atol=1e-5)
    # view TTA: the mean of the single views
    both = ens.member_proba(imgs, runtime="torch", tta="crop,letterbox")
    crop = ens.member_proba(imgs, runtime="torch", tta="crop")
    np.testing.assert_allclose(both, (crop + ens.member_proba(imgs, runtime="torch")) / 2, atol=1e-12)
    out = tmp_path / "exp"
    pytest.importorskip("onnx")
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    doc = json.loads((out / "a.json").read_text())
    assert doc["view"] == "letterbox" and any("aspect kept" in step for step in doc["steps"])


def test_cli_tta_views(trained, tiny_data, tmp_path, caplog):
    _, run = trained
    out = tmp_path / "ev"
    assert (
        main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(out), "--tta", "crop,letterbox,flip", "-q"])
        == 0
    )
    assert main(["predict", str(run), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv"), "--tta", "zoom"]) == 2
    assert (
        "--tta: TTA views must be flip or one of crop, crop_start, crop_end, letterbox, squash; got zoom" in caplog.text
    )


def test_adapt_bn_uses_the_new_images_on_a_copy(trained, tiny_data, tmp_path, capsys):
    import hashlib

    from ensemble.images import decode_all
    from ensemble.inference import decode_size
    from ensemble.runfolder import load_run
    from members.adapt import adapt_batchnorm

    _, run = trained
    ens = load_run(run)
    fm = ens.members_[0]
    before = {k: v.clone() for k, v in fm.model.state_dict().items()}
    paths = sorted(str(p) for p in (tiny_data / "test").rglob("*.png"))
    imgs, _ = decode_all(paths, decode_size(ens))
    bright = [np.clip(a.astype(int) + 120, 0, 255).astype(np.uint8) for a in imgs]  # another "camera"
    x = eval_tensor(bright, fm.inputs)
    adapted = adapt_batchnorm(fm.model, x, fm.inputs)
    bn = next(n for n, m in adapted.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(adapted.state_dict()[f"{bn}.running_mean"], before[f"{bn}.running_mean"])
    assert all(torch.equal(v, fm.model.state_dict()[k]) for k, v in before.items())  # the member is untouched
    plain = ens.member_proba(bright, runtime="torch")
    got = ens.member_proba(bright, runtime="torch", adapt_bn=True)
    assert got.shape == plain.shape and not np.allclose(got, plain)
    digest = hashlib.sha256((run / "members/a/model.safetensors").read_bytes()).hexdigest()
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), str(tiny_data / "test"), "--out", str(out), "--adapt-bn", "-q"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["inference"]["adapt_bn"] is True and "--adapt-bn" in (out / "report.md").read_text()
    assert main(["predict", str(run), str(tiny_data / "test"), "--out", str(tmp_path / "p.csv"), "--adapt-bn"]) == 0
    assert "BatchNorm adapted to these images" in capsys.readouterr().out
    assert hashlib.sha256((run / "members/a/model.safetensors").read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", ["letterbox", "squash"])
def test_a_whole_image_view_trains_on_itself_at_the_resize_size_as_before(name):
    """The generic training counterpart gives the pixels the hand-written one gave
    (letterbox / squash of the photo at the resize size)."""
    from members.views import _interp, _mean_colour, letterbox_image, train_view

    inputs = dataclasses.replace(INPUTS, view=name)
    img = Image.fromarray(wide_image())
    got = np.asarray(train_view(inputs)(img))
    size = inputs.resize_size
    want = (
        letterbox_image(img, size, _mean_colour(inputs), _interp(inputs))
        if name == "letterbox"
        else img.resize((size, size), _interp(inputs))
    )
    assert got.shape == (size, size, 3)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_a_new_view_carries_its_own_training_step_and_description():
    from members.views import VIEWS, describe_view, train_view, view

    @view
    def top_band(arr, inputs):
        """The top third of the photo, squashed to the square input."""
        s = inputs.image_size
        return np.array(Image.fromarray(arr[: max(1, arr.shape[0] // 3)]).resize((s, s)), dtype=np.uint8)

    try:
        inputs = dataclasses.replace(INPUTS, view="top_band")
        step = train_view(inputs)
        img = Image.fromarray(wide_image())
        out = np.asarray(step(img))  # trains on crops of its own view, not of a letterbox
        np.testing.assert_array_equal(
            out, top_band(np.asarray(img), dataclasses.replace(inputs, image_size=inputs.resize_size))
        )
        assert describe_view(inputs) == [
            "the `top_band` view: The top third of the photo, squashed to the square input (test_views)"
        ]
        assert "top_band" in view_names()
    finally:
        VIEWS.remove("top_band")
