"""How the HTML report scales: `effens evaluate` on N generated images, then the page in
headless Chromium (time until its script has run, and a cell click's gallery).

    python scripts/benchmark_report.py --images 5000 --out /tmp/report-bench

Trains the tiny three-member test ensemble (timm's test_efficientnet at 32 px) on a
small generated set, evaluates it on N generated 40 px images, and reports: evaluate's
wall time, the page's size, thumbnails made, and in Chromium (`chromium --headless`)
the page's own `performance.now()` when its script finished (data-ready) plus the wall
time of loading it with a click on the largest confusion cell.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import synth  # noqa: E402

from ensemble.cli import main  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def chromium_load(url: str, chromium: str, home: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    dom = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, HOME=home),
    ).stdout
    wall = time.perf_counter() - t0
    out = {}
    for key in ("data-ready", "data-selftest"):
        marker = f'{key}="'
        if marker in dom:
            out[key] = dom.split(marker)[1].split('"')[0].replace("&quot;", '"')
    return out, wall


def main_(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--out", default="/tmp/effens-report-bench")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    synth.make_dataset(out / "data")
    per_class = -(-args.images // len(synth.CLASSES))  # at least --images
    synth.make_folder(out / "many", per_class, seed=7)
    cfg = out / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(synth.tiny_config(out / "data")))
    assert main(["train", str(cfg), "--out", str(out / "run"), "-q"]) == 0
    t0 = time.perf_counter()
    assert main(["evaluate", str(out / "run"), str(out / "many"), "--out", str(out / "ev"), "-q"]) == 0
    evaluate_s = time.perf_counter() - t0
    page = out / "ev/index.html"
    result = {
        "date": datetime.date.today().isoformat(),
        "images": per_class * len(synth.CLASSES),
        "evaluate_s": round(evaluate_s, 1),
        "page_mb": round(page.stat().st_size / 1e6, 2),
        "thumbnails": len(list((out / "ev/thumbs").iterdir())),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        got, wall = chromium_load(page.resolve().as_uri() + "#selftest", chromium, str(out))
        result.update(
            {
                "chromium_script_done_ms": int(got.get("data-ready", -1)),
                "chromium_wall_s_with_click": round(wall, 2),
                "selftest": json.loads(got["data-selftest"]),
            }
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main_()
