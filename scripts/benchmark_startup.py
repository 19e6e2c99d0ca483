"""Whole processes, the way users meet them: start-up, one photo, a folder (issue #23).

    python scripts/benchmark_startup.py --run RUN --images ../shared/data/vds/val --out runs/startup.json

Each figure is the wall time of a fresh process (interpreter start, imports, loading the
run, decoding, inference, writing the CSV), timed side by side in one run, interleaved
over --repeats rounds; the median counts:

- ``effens --help``;
- ``effens predict RUN ONE.jpg`` (the first image of --images) on the run's defaults
  (runtime auto, precision auto), its caches warm (one call before timing builds them;
  that first call is reported on its own);
- ``effens predict RUN IMAGES`` over the whole folder;
- the plain loop over the same folder (this script's ``plain`` mode in its own process):
  per member, timm's model from the run's weights, a torchvision dataset (PIL decode,
  Resize and CenterCrop, or Resize to the square for a ``squash`` member, ToTensor, Normalize) and a DataLoader (0 and 2 workers), the model
  under no_grad, the probabilities averaged;
- where the CPU has native bf16: ``effens predict --precision bf16`` over the folder, and
  its agreement with the fp32 predictions.

Also recorded: which modules the one-photo predict imported (torch, timm, sklearn) and
``python -X importtime`` of the largest imports. The CPU model and flags go with the figures.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def plain_main(run: str, images: str, workers: int) -> None:
    """The plain per-member loop a user would write, as its own process (``plain`` mode)."""
    import numpy as np
    import timm
    import torch
    from bench_common import FileDataset
    from safetensors.torch import load_file
    from torchvision import transforms as T

    paths = sorted(str(p) for p in Path(images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    members = sorted((Path(run) / "members").iterdir())

    out = []
    for d in members:
        meta = json.loads((d / "member.json").read_text())
        inp = meta["inputs"]
        model = timm.create_model(meta["architecture"], num_classes=meta["num_classes"])
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        model.eval()
        size, bicubic = inp["image_size"], T.InterpolationMode.BICUBIC
        look = (
            [T.Resize((size, size), interpolation=bicubic)]
            if inp.get("view") == "squash"
            else [T.Resize(int(size / inp["crop_pct"]), interpolation=bicubic), T.CenterCrop(size)]
        )
        tf = T.Compose([*look, T.ToTensor(), T.Normalize(inp["mean"], inp["std"])])
        probs = []
        with torch.no_grad():
            for x in torch.utils.data.DataLoader(FileDataset(paths, tf), batch_size=64, num_workers=workers):
                probs.append(model(x).softmax(1))
        out.append(torch.cat(probs).numpy())
    print(f"plain: {len(paths)} images, {len(members)} members, mean max prob {np.mean(out, 0).max(1).mean():.4f}")


def timed(cmd: list[str], cwd: str | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return wall


def predictions(path: str) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row["prediction"] for row in csv.DictReader(fh)}


def import_table(cmd: list[str], top: int = 12) -> list[tuple[str, float]]:
    """The largest cumulative imports (seconds) of ``cmd`` under ``python -X importtime``."""
    done = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True)
    roots = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line[len("import time:") :].split("|")
            if cumulative.strip().isdigit() and not name[1:].startswith(" "):  # top level: one space
                roots.append((name.strip(), int(cumulative) / 1e6))
    return sorted(roots, key=lambda r: -r[1])[:top]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "plain"])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--images", default="../shared/data/vds/val")
    p.add_argument("--workers", type=int, default=0, help="plain mode: DataLoader workers")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    from bench_common import machine, report_json

    if args.mode == "plain":
        return plain_main(args.run, args.images, args.workers)

    effens = [sys.executable, "-m", "ensemble"]
    images = sorted(str(x) for x in Path(args.images).rglob("*") if x.suffix.lower() in (".jpg", ".jpeg", ".png"))
    one = images[0]
    tmp = Path(tempfile.mkdtemp(prefix="effens-startup-"))
    from members.precision import cpu_info

    bf16 = "avx512_bf16" in cpu_info()[1] or "amx_bf16" in cpu_info()[1]
    res: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE.parent
        ).stdout.strip(),
        "run": args.run,
        "images": len(images),
        "repeats": args.repeats,
    }
    res["first_predict_one_s"] = timed([*effens, "predict", args.run, one, "--out", str(tmp / "first.csv")])
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom ensemble.cli import main\n"
            f"sys.argv=['effens','predict',{args.run!r},{one!r},'--out',{str(tmp / 'probe.csv')!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "import json\nprint(json.dumps([m for m in ('torch','timm','sklearn','scipy','torchvision') "
            "if m in sys.modules]))",
        ],
        capture_output=True,
        text=True,
    )
    res["one_photo_heavy_imports"] = json.loads(probe.stdout.strip().splitlines()[-1])
    cases = {
        "help": [*effens, "--help"],
        "predict_one": [*effens, "predict", args.run, one, "--out", str(tmp / "one.csv")],
        "predict_all": [*effens, "predict", args.run, args.images, "--out", str(tmp / "all.csv")],
        "plain_workers0": [sys.executable, str(HERE), "plain", "--run", args.run, "--images", args.images],
        "plain_workers2": [
            sys.executable,
            str(HERE),
            "plain",
            "--run",
            args.run,
            "--images",
            args.images,
            "--workers",
            "2",
        ],
    }
    if bf16:
        cases["predict_all_bf16"] = [
            *effens,
            "predict",
            args.run,
            args.images,
            "--precision",
            "bf16",
            "--out",
            str(tmp / "all_bf16.csv"),
        ]
    walls: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.repeats):
        for name, cmd in cases.items():
            walls[name].append(timed(cmd))
            print(f"round {r + 1}: {name} {walls[name][-1]:.2f} s", flush=True)
    res["wall_s"] = {k: round(statistics.median(v), 3) for k, v in walls.items()}
    res["wall_all_s"] = {k: [round(x, 3) for x in v] for k, v in walls.items()}
    plain = min(res["wall_s"]["plain_workers0"], res["wall_s"]["plain_workers2"])
    res["speedup_all_vs_best_plain"] = round(plain / res["wall_s"]["predict_all"], 2)
    res["img_s"] = {
        "effens": round(len(images) / res["wall_s"]["predict_all"], 1),
        "plain_best": round(len(images) / plain, 1),
    }
    if bf16:
        a, b = predictions(str(tmp / "all.csv")), predictions(str(tmp / "all_bf16.csv"))
        res["bf16_agreement_with_fp32"] = round(sum(a[k] == b[k] for k in a) / len(a), 4)
        res["speedup_bf16_vs_fp32"] = round(res["wall_s"]["predict_all"] / res["wall_s"]["predict_all_bf16"], 2)
    res["importtime_predict_one_s"] = import_table(
        ["-m", "ensemble", "predict", args.run, one, "--out", str(tmp / "imp.csv")]
    )
    report_json(res, args.out)


if __name__ == "__main__":
    main()
