"""effens tune: candidates, selection, cached-feature heads, resume, best.yaml."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import synth
import timm
import torch
import yaml

from ensemble.cli import main
from ensemble.config import TuneConfig, load_config
from ensemble.tuning import Candidate, enumerate_candidates, halving_schedule, select_best
from members.features import extract_features, head_proba, train_head
from members.models import input_config
from members.transforms import normalize


def test_grid_enumeration():
    tied = enumerate_candidates(TuneConfig(ratios=[0.5, 1.0], replace=[True, False]), 3)
    assert len(tied) == 4 and all(len(set(c.ratios)) == 1 for c in tied)
    untied = enumerate_candidates(TuneConfig(ratios=[0.5, 1.0], replace=[True], tie_members=False), 3)
    assert len(untied) == 8 and len({c.ratios for c in untied}) == 8
    per = enumerate_candidates(TuneConfig(ratios=[[0.5], [0.6, 0.7], [1.0]], replace=[False]), 3)
    assert [c.ratios for c in per] == [(0.5, 0.6, 1.0), (0.5, 0.7, 1.0)]
    rnd = enumerate_candidates(
        TuneConfig(ratios=[0.2, 0.4, 0.6, 0.8], replace=[True, False], method="random", budget=3), 2, seed=1
    )
    assert len(rnd) == 3 and rnd == enumerate_candidates(
        TuneConfig(ratios=[0.2, 0.4, 0.6, 0.8], replace=[True, False], method="random", budget=3), 2, seed=1
    )
    for cands in (tied, untied, per, rnd):
        assert len({c.id for c in cands}) == len(cands)  # ids are unique


def test_best_candidate_selection_on_a_fake_objective():
    cands = enumerate_candidates(TuneConfig(ratios=[0.2, 0.4, 0.6, 0.8, 1.0], replace=[True, False]), 2)
    # a fake objective peaking at ratio 0.6 without replacement
    rows = [
        {"candidate": c.id, "round": 0, "ensemble_score": -abs(c.ratios[0] - 0.6) - 0.1 * c.replace[0]} for c in cands
    ]
    assert select_best(rows)["candidate"] == Candidate((0.6, 0.6), (False, False)).id
    rows.append({"candidate": "late", "round": 1, "ensemble_score": -5.0})
    assert select_best(rows)["candidate"] == "late"  # only the last round counts


def test_halving_schedule():
    assert halving_schedule(27, 9, 3, 1) == [(27, 1), (9, 1), (3, 3), (1, 9)]
    assert halving_schedule(243, 81, 3, 1)[-1] == (1, 81)  # exact powers: no float-log off-by-one
    assert halving_schedule(10, 8, 2, 2) == [(10, 2), (5, 2), (3, 4), (2, 8)]  # min_epochs=2 floors round 0
    assert halving_schedule(1, 5, 3, 1) == [(1, 5)]


def test_cached_features_train_the_same_head_as_the_frozen_network():
    from ensemble.config import TrainConfig

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=3).eval()
    inputs = input_config(model, 32)
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.integers(0, 255, (40, 3, 32, 32)), dtype=torch.uint8)
    labels = rng.integers(0, 3, 40)
    sample = np.sort(rng.choice(40, 30, replace=True))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, warmup_epochs=0.5)
    cached = extract_features(model, images, inputs)
    head_a = train_head(lambda idx: cached[idx], cached.shape[1], labels, sample, 3, cfg, seed=7)

    def through_network(idx):
        with torch.no_grad():
            x = normalize(images[idx], inputs)
            return model.forward_head(model.forward_features(x), pre_logits=True)

    head_b = train_head(through_network, cached.shape[1], labels, sample, 3, cfg, seed=7)
    torch.testing.assert_close(head_a.weight, head_b.weight, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(head_a.bias, head_b.bias, atol=1e-4, rtol=1e-3)
    assert head_a.weight.abs().sum() > 0  # it did learn something
    assert head_proba(head_a, cached).shape == (40, 3)


@pytest.fixture(scope="module")
def tuned(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    cfg = synth.tiny_config(tiny_data, epochs=2)
    cfg["tune"] = {"mode": "features", "ratios": [0.5, 1.0], "replace": [True, False]}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["tune", str(path), "--out", str(root / "out")]) == 0
    return path, root / "out"


def test_tune_outputs(tuned, capsys):
    _, out = tuned
    lines = (out / "results.csv").read_text().splitlines()
    header = lines[0].split(",")
    for col in [
        "a_ratio",
        "a_replace",
        "a_score",
        "ensemble_score",
        "disagreement",
        "q_statistic",
        "error_correlation",
        "seconds",
    ]:
        assert col in header
    assert len(lines) == 1 + 4
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert "Best:" in (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    best = json.loads((out / "summary.json").read_text())["best"]["candidate"]
    assert page.count("<tr") == 1 + 4 and f"<tr class=default><td>{best}</td>" in page
    assert 'src="scores.png"' in page


def test_best_yaml_loads_and_trains(tuned, tmp_path):
    _, out = tuned
    cfg = load_config(out / "best.yaml")
    best = json.loads((out / "summary.json").read_text())["best"]
    assert cfg.members[0].bagging.ratio == best["a_ratio"]
    assert cfg.members[0].bagging.replace == best["a_replace"]
    assert main(["train", str(out / "best.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 0


def test_tune_resume_skips_finished_candidates(tuned, monkeypatch):
    import ensemble.tuning as tuning

    path, out = tuned
    files = sorted((out / "candidates").glob("*.json"))
    assert len(files) == 4
    before = (out / "results.csv").read_text()
    files[1].unlink()  # as if killed before this candidate finished
    calls = []
    real = tuning.evaluate_candidate

    def counting(ctx, cand, *args):
        calls.append(cand.id)
        return real(ctx, cand, *args)

    monkeypatch.setattr(tuning, "evaluate_candidate", counting)
    assert main(["tune", str(path), "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0] in files[1].name
    after = (out / "results.csv").read_text()
    strip = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731 (drop seconds)
    assert strip(after) == strip(before)


def test_tune_reruns_every_candidate_when_its_images_change(tuned, tiny_data, monkeypatch, tmp_path):
    """The same config over other images (the exclude list edited in place) is another tuning:
    no candidate of the old one counts as finished."""
    import ensemble.tuning as tuning

    path, _ = tuned
    photos = sorted((Path(tiny_data) / "train" / "circle").glob("*.png"))
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"{photos[0]}\n")
    calls = []
    real = tuning.evaluate_candidate
    monkeypatch.setattr(
        tuning, "evaluate_candidate", lambda ctx, cand, *a: calls.append(cand.id) or real(ctx, cand, *a)
    )
    run = ["tune", str(path), "--out", str(tmp_path / "out"), "--set", f"data.exclude={listed}", "-q"]
    assert main(run) == 0 and len(calls) == 4
    assert main(run) == 0 and len(calls) == 4  # unchanged: all reused
    listed.write_text(f"{photos[1]}\n")
    assert main(run) == 0 and len(calls) == 8
    # and the report counts what the list changed, as train's does
    assert "train: 1 excluded, 0 relabelled" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["data_changes"]["train"]["excluded"] == 1


def test_halving_in_full_mode(tiny_data, tmp_path):
    cfg = synth.tiny_config(tiny_data, epochs=3)
    cfg["tune"] = {"mode": "full", "method": "halving", "eta": 2, "ratios": [0.5, 1.0], "replace": [True]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["tune", str(path), "--out", str(tmp_path / "out"), "-q"]) == 0
    rows = list(__import__("csv").DictReader(open(tmp_path / "out/results.csv")))
    assert [(r["round"], r["epochs"]) for r in rows] == [("0", "2"), ("0", "2"), ("1", "3")]


# ------------------------------------------------ users' files kept, no stale answers, one line per mistake (#22)
def test_a_huge_tune_grid_is_refused_with_its_count_and_time(tiny_data, tmp_path, fails):
    raw = synth.tiny_config(tiny_data, epochs=1)
    raw["tune"] = {"ratios": [round(0.05 * k, 2) for k in range(1, 21)], "tie_members": False}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    text = fails(
        main(["tune", str(path), "--out", str(tmp_path / "t")]), "would try 64,000 candidates", "hours", "--yes"
    )
    assert "tune.budget" in text and not (tmp_path / "t").exists()
    from ensemble.config import load_config
    from ensemble.tuning import check_grid_size, enumerate_candidates

    cfg = load_config(path, ["tune.method=random", "tune.budget=5"])
    assert check_grid_size(cfg.tune, 3) == 5
    huge = load_config(
        path,
        ["tune.method=random", "tune.budget=7", "tune.ratios=" + str([round(0.001 * k, 3) for k in range(1, 1001)])],
    )
    t0 = time.perf_counter()
    picked = enumerate_candidates(huge.tune, 3)  # 8e9 combinations: drawn, never listed
    assert len(picked) == 7 and time.perf_counter() - t0 < 5


def test_tune_oob_objective_without_oob_images_is_refused(tiny_data, tmp_path, fails):
    raw = synth.tiny_config(tiny_data, epochs=1, tune={"ratios": [1.0], "replace": [False], "objective": "oob"})
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    fails(main(["tune", str(path), "--out", str(tmp_path / "t")]), "`tune.objective: oob` needs out-of-bag images")
