"""Weight averaging (EMA, SWA), `train.select`, LP-FT and WiSE-FT (issue #13, items 3-4)."""

import json

import pytest
import synth
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from ensemble.cli import main
from members.averaging import WeightAverages, interpolate


def _model(value: float) -> nn.Module:
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
        m[1].running_mean.fill_(value)
        m[1].num_batches_tracked.fill_(int(value))
    return m


def test_ema_follows_the_warmed_up_decay():
    avg = WeightAverages(ema=0.9, swa_epochs=0, epochs=3)
    expected = None
    for t, value in enumerate([1.0, 3.0, 5.0, 7.0]):
        avg.after_step(_model(value))
        if expected is None:
            expected = value
        else:
            d = min(0.9, (1 + t) / (10 + t))  # t: updates made before this one
            expected = d * expected + (1 - d) * value
    ema = avg.states()["ema"]
    assert ema["0.weight"][0, 0].item() == pytest.approx(expected)
    assert ema["1.running_mean"][0].item() == pytest.approx(expected)
    assert ema["1.num_batches_tracked"].item() == 7  # integer buffers: the latest value
    assert "swa" not in avg.states()


def test_swa_is_the_mean_of_the_last_epochs_only():
    avg = WeightAverages(ema=None, swa_epochs=2, epochs=4)
    for epoch, value in enumerate([10.0, 20.0, 2.0, 4.0], start=1):
        avg.after_step(_model(value))  # no EMA: nothing kept
        avg.after_epoch(epoch, _model(value))
    assert list(avg.states()) == ["swa"]
    assert avg.states()["swa"]["0.bias"][0].item() == pytest.approx(3.0)


def test_averages_survive_a_checkpoint_round_trip():
    avg = WeightAverages(ema=0.5, swa_epochs=1, epochs=1)
    avg.after_step(_model(1.0))
    avg.after_step(_model(2.0))
    avg.after_epoch(1, _model(2.0))
    again = WeightAverages(ema=0.5, swa_epochs=1, epochs=1)
    again.load(avg.tensors(), avg.doc())
    assert again.steps == avg.steps and again.swa_count == avg.swa_count
    for name in ("ema", "swa"):
        for k, v in avg.states()[name].items():
            assert torch.equal(again.states()[name][k], v)


def test_interpolate_is_wise_ft():
    a, b = _model(1.0).state_dict(), _model(3.0).state_dict()
    mixed = interpolate(a, b, 0.25)
    assert mixed["0.weight"][0, 0].item() == pytest.approx(0.25 * 1 + 0.75 * 3)
    assert mixed["1.num_batches_tracked"].item() == 1  # integers come from the fine-tuned side


def _one_member(tiny_data, tmp_path, **train):
    cfg = synth.tiny_config(tiny_data, epochs=4)
    cfg["members"] = cfg["members"][:1]
    cfg["members"][0]["train"].update(train)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "train",
    [
        {"ema": 0.9, "select": "ema"},
        {"swa_epochs": 2, "select": "swa", "lp_epochs": 2, "wise_alpha": 0.5},
        {"lp_epochs": 1, "select": "last"},
    ],
)
def test_member_keeps_the_selected_weights_and_records_every_candidate(tiny_data, tmp_path, train):
    cfg = _one_member(tiny_data, tmp_path, **train)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "-q"]) == 0
    meta = json.loads((out / "members/a/member.json").read_text())
    selection = meta["selection"]
    assert selection["select"] == train["select"]
    expected = {"best", "last"} | ({"ema"} if "ema" in train else set()) | ({"swa"} if "swa_epochs" in train else set())
    kept = train["select"]
    if train.get("wise_alpha", 1) < 1:
        kept = f"{kept}+wise"
        expected.add(kept)
        assert selection["wise_alpha"] == train["wise_alpha"]
    assert set(selection["val"]) == expected
    # the weights saved are the ones whose val score was recorded: the report's val log loss of
    # the member (computed anew from model.safetensors) equals the recorded one of the kept candidate
    metrics = json.loads((out / "report/metrics.json").read_text())
    assert metrics["members"]["a"]["val"]["log_loss"] == pytest.approx(selection["val"][kept]["log_loss"], abs=1e-5)
    if kept not in ("best", "last"):  # an average or interpolation is not any one epoch's weights
        assert selection["val"][kept]["log_loss"] != pytest.approx(selection["val"]["best"]["log_loss"], abs=1e-7)


def test_lp_ft_starts_fine_tuning_from_the_probe_head(tiny_data, tmp_path):
    """With lp_epochs the first epoch starts from a trained head, so its loss is lower
    than from the zeroed head (same seed, same sample, same batches)."""
    runs = {}
    for name, train in (("plain", {}), ("lpft", {"lp_epochs": 3})):
        (tmp_path / name).mkdir()
        cfg = _one_member(tiny_data, tmp_path / name, **train)
        assert main(["train", str(cfg), "--out", str(tmp_path / name / "run"), "-q"]) == 0
        runs[name] = json.loads((tmp_path / name / "run/members/a/member.json").read_text())["history"]
    assert runs["lpft"][0]["train_loss"] < runs["plain"][0]["train_loss"]


def test_resume_with_averages_gives_identical_weights(tiny_data, tmp_path, monkeypatch):
    from ensemble.runfolder import MemberCheckpoint

    cfg = _one_member(tiny_data, tmp_path, ema=0.9, swa_epochs=3, select="swa")
    assert main(["train", str(cfg), "--out", str(tmp_path / "straight"), "-q"]) == 0
    real_save = MemberCheckpoint.save

    class Killed(BaseException):
        pass

    def save_then_die(self, tensors, doc):
        real_save(self, tensors, doc)
        if doc["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(MemberCheckpoint, "save", save_then_die)
    with pytest.raises(Killed):
        main(["train", str(cfg), "--out", str(tmp_path / "resumed"), "-q"])
    monkeypatch.setattr(MemberCheckpoint, "save", real_save)
    assert main(["train", str(cfg), "--out", str(tmp_path / "resumed"), "-q"]) == 0
    a = load_file(str(tmp_path / "straight/members/a/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/members/a/model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "train, message",
    [
        ({"select": "ema"}, "`members.0.train.select` is ema but `members.0.train.ema` is not set"),
        ({"select": "swa"}, "`members.0.train.select` is swa but `members.0.train.swa_epochs` is 0"),
        ({"swa_epochs": 9}, "`members.0.train.swa_epochs` must be at most `members.0.train.epochs` (4); got 9"),
        ({"wise_alpha": 0.5}, "needs `members.0.train.lp_epochs` > 0"),
        ({"ema": 1.5}, "`members.0.train.ema` must be in (0, 1); got 1.5"),
        ({"select": "mean"}, "`members.0.train.select`"),
    ],
)
def test_bad_averaging_settings_are_one_line_errors(tiny_data, tmp_path, caplog, train, message):
    cfg = _one_member(tiny_data, tmp_path, **train)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and str(cfg) in errors[0]
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "run").exists()
