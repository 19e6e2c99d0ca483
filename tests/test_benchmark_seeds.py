"""scripts/benchmark_vds.py --seeds: per-seed figures and their mean +- std (on tiny data)."""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import synth
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_seeds_table(tiny_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="benchmark_vds")
    sys.path.insert(0, str(ROOT / "scripts"))
    import benchmark_vds

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(tiny_data, epochs=1)))
    out = tmp_path / "bench"
    benchmark_vds.main(
        ["--data", str(tiny_data), "--out", str(out), "--config", str(cfg), "--seeds", "2", "--skip-throughput"]
    )
    r = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in r["seeds"]] == [0, 1]
    assert (out / "run-seed0/report/metrics.json").is_file() and (out / "run-seed1/report/metrics.json").is_file()
    for k in (0, 1):  # each seed's figures are its run's test figures
        doc = json.loads((out / f"run-seed{k}/report/metrics.json").read_text())
        assert r["seeds"][k]["figures"]["member a"]["macro_f1"] == doc["members"]["a"]["test"]["macro_f1"]
        assert r["seeds"][k]["chosen"] == doc["strategy"]  # the run's own default, never picked on test
        best = max(doc["members"][m]["test"]["macro_f1"] for m in "abc")
        assert r["seeds"][k]["diff_to_best_member"] == doc["strategies"][doc["strategy"]]["test"]["macro_f1"] - best
    vals = [s["figures"]["ensemble (auto)"]["macro_f1"] for s in r["seeds"]]
    summary = r["summary"]["ensemble (auto)"]["macro_f1"]
    assert summary["mean"] == np.mean(vals) and summary["std"] == np.std(vals, ddof=1)
    assert r["summary"]["paired"]["seeds"] == 2
    assert "recall_circle" in r["seeds"][0]["figures"]["strategy soft"]
    assert "mean +- std" in (out / "results.md").read_text()
    seed_lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("seed ")]
    assert len(seed_lines) == 2 and all(
        "val macro-F1" in m and "test" not in m for m in seed_lines
    )  # test: the table only
    # --refit: the same runs' combiners fitted again (here: strategy auto), no training
    for k in (0, 1):
        (out / f"run-seed{k}" / ".effens.lock").unlink(missing_ok=True)
    benchmark_vds.main(
        [
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--config",
            str(cfg),
            "--seeds",
            "2",
            "--skip-throughput",
            "--refit",
            "--set",
            "combiner.strategy=auto",
        ]
    )
    again = json.loads((out / "results.json").read_text())
    assert [s["figures"]["member a"] for s in again["seeds"]] == [s["figures"]["member a"] for s in r["seeds"]]
    assert all(s["throughput"]["chosen"] > 0 and s["throughput"]["all members"] > 0 for s in again["seeds"])
    assert "member inference on val" in (out / "results.md").read_text()


def test_missing_data_folder_is_one_line(tmp_path):
    import subprocess

    (tmp_path / "vds" / "train").mkdir(parents=True)  # val/ and test/ missing
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark_vds.py"), "--data", str(tmp_path / "vds"), "--seeds", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'vds' / 'val'}: no such folder (--data must hold train/, val/ and test/)"
    ]
    assert not (tmp_path / "runs").exists()  # nothing written
