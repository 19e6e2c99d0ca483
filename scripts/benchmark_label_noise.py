"""Synthetic label noise for ``effens audit`` (issue #25): detection against cleanlab, and
retraining without the flagged images.

    # detection: 10% and 20% of the training labels flipped (uniform and class-conditional),
    # scored by cross-fitted heads on pretrained features; effens's flags next to cleanlab's
    python scripts/benchmark_label_noise.py detect --config configs/vds.yaml --rates 0.1,0.2 --seeds 3

    # retraining: train on 20% flipped labels, audit that run, train again without the flags
    python scripts/benchmark_label_noise.py retrain --config configs/vds.yaml --rate 0.2 \
        --work runs/noise20 --clean runs/vds-seeds/run-seed0

    # a second pass: audit the cleaned run (what it left out is now out of sample for every
    # member), train again without what it still flags; WORK as `retrain` filled it
    python scripts/benchmark_label_noise.py second --config configs/vds.yaml --work runs/noise20 \
        --threshold 0.3 --clean runs/vds-seeds/run-seed0

    # a third pass: the same on the second pass's run (WORK/cleaned_r2 -> audit_r3, cleaned_r3)
    python scripts/benchmark_label_noise.py second --round 3 --config configs/vds.yaml --work runs/noise20 \
        --threshold 0.3 --clean runs/vds-seeds/run-seed0

    # the seeds together: the share recovered per seed and its mean (clean, noisy, cleaned runs),
    # with a 90% interval from a paired bootstrap over the val images
    python scripts/benchmark_label_noise.py summary --seed CLEAN0 NOISY0 CLEANED0 --seed CLEAN1 NOISY1 CLEANED1

Flips are seeded and touch the training split only (``data.relabel``), so val and test stay
as published and measure what the noise cost. ``uniform``: a flipped image gets any other
class; ``adjacent``: class-conditional, the neighbouring class in the configured class order
(for severity grades the mistakes annotators make: minor <-> moderate <-> severe).
Nothing is chosen on test; the retraining compares val macro-F1 (test is printed beside it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import machine, report_json  # noqa: E402


def flip_labels(labels: list[str], classes: list[str], rate: float, kind: str, seed: int) -> dict[int, str]:
    """Index -> new label for ``round(rate * n)`` seeded images (never their own label)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    out = {}
    for i in sorted(chosen.tolist()):
        k = classes.index(labels[i])
        if kind == "uniform":
            others = [c for c in range(len(classes)) if c != k]
        elif kind == "adjacent":
            others = [c for c in (k - 1, k + 1) if 0 <= c < len(classes)]
        else:
            raise SystemExit(f"`--kind` must be uniform or adjacent; got {kind!r}")
        out[i] = classes[int(rng.choice(others))]
    return out


def prf(flagged: set, truth: set) -> dict:
    tp = len(flagged & truth)
    p = tp / len(flagged) if flagged else 0.0
    r = tp / len(truth) if truth else 0.0
    return {
        "flagged": len(flagged),
        "true_flips": len(truth),
        "hits": tp,
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
    }


def _train_split(config: str):
    from ensemble.config import load_config
    from ensemble.data import load_dataset

    cfg = load_config(config)
    return cfg, load_dataset(cfg.data, cfg.seed)


def detect(args) -> None:
    """Flags on cross-fitted probabilities (pretrained features of the first member)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    from ensemble.auditing.audit import _pretrained_features, cross_fitted_proba
    from ensemble.auditing.label_issues import find_label_issues

    cfg, data = _train_split(args.config)
    classes = data.classes
    t0 = time.perf_counter()
    feats = _pretrained_features(cfg.members[0], list(data.train.paths), len(classes), "cpu", Path(args.cache))
    t_feat = time.perf_counter() - t0
    rows = []
    for rate in map(float, args.rates.split(",")):
        for kind in args.kinds.split(","):
            for seed in range(args.seeds):
                flips = flip_labels(list(data.train.labels), classes, rate, kind, seed)
                y = np.array([classes.index(flips.get(i, lab)) for i, lab in enumerate(data.train.labels)])
                proba = cross_fitted_proba(feats, y, len(classes), seed=seed)
                truth = set(flips)
                ours = set(find_label_issues(proba, y).issues.tolist())
                theirs = set(np.flatnonzero(cleanlab_issues(y, proba)).tolist())
                row = {
                    "rate": rate,
                    "kind": kind,
                    "seed": seed,
                    "effens": prf(ours, truth),
                    "cleanlab": prf(theirs, truth),
                    "same_flags": len(ours & theirs),
                    "only_effens": len(ours - theirs),
                    "only_cleanlab": len(theirs - ours),
                }
                rows.append(row)
                print(
                    f"{rate:.0%} {kind} seed {seed}: effens F1 {row['effens']['f1']:.3f} "
                    f"(P {row['effens']['precision']:.3f} R {row['effens']['recall']:.3f}), cleanlab F1 "
                    f"{row['cleanlab']['f1']:.3f} (P {row['cleanlab']['precision']:.3f} "
                    f"R {row['cleanlab']['recall']:.3f}); {row['same_flags']} flagged by both",
                    flush=True,
                )
    import cleanlab

    report_json(
        {
            "config": args.config,
            "images": len(data.train),
            "feature_seconds": round(t_feat, 1),
            "cleanlab": cleanlab.__version__,
            "rows": rows,
            "machine": machine(),
        },
        args.out,
    )


def _effens(*argv: str) -> None:
    cmd = [sys.executable, "-c", "import sys; from ensemble.cli import main; sys.exit(main())", *argv]
    print("$ effens " + " ".join(argv), flush=True)
    subprocess.run(cmd, check=True)


def _listed(exclude: Path) -> set[str]:
    """The paths an exclude list written by ``effens audit --write-exclude`` names."""
    return {ln.split("  #")[0].strip() for ln in exclude.read_text().splitlines() if ln and not ln.startswith("#")}


def _val_scores(run: str) -> dict:
    doc = json.loads((Path(run) / "report" / "metrics.json").read_text())
    out = {m: {s: round(v[s]["macro_f1"], 4) for s in ("val", "test") if s in v} for m, v in doc["members"].items()}
    out["ensemble"] = {s: round(v["macro_f1"], 4) for s, v in doc["ensemble"].items() if "macro_f1" in v}
    out["ensemble"]["strategy"] = doc["strategy"]
    return out


def retrain(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg, data = _train_split(args.config)
    flips = flip_labels(list(data.train.labels), data.classes, args.rate, args.kind, args.seed)
    relabel = work / "flips.csv"
    with open(relabel, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "given", "suggested"])
        for i, new in flips.items():
            w.writerow([os.path.abspath(data.train.paths[i]), data.train.labels[i], new])
    extra = [x for s in args.set for x in ("--set", s)]
    t0 = time.perf_counter()
    _effens("train", args.config, "--out", str(work / "noisy"), "--set", f"data.relabel={relabel}", *extra)
    t_noisy = time.perf_counter() - t0
    exclude = work / "exclude.txt"
    _effens(
        "audit",
        str(work / "noisy"),
        "--out",
        str(work / "audit"),
        "--write-exclude",
        str(exclude),
        "--threshold",
        str(args.threshold),
    )
    listed = _listed(exclude)
    flipped = {os.path.abspath(data.train.paths[i]) for i in flips}
    t0 = time.perf_counter()
    _effens(
        "train",
        args.config,
        "--out",
        str(work / "cleaned"),
        "--set",
        f"data.relabel={relabel}",
        "--set",
        f"data.exclude={exclude}",
        *extra,
    )
    t_clean = time.perf_counter() - t0
    res = {
        "config": args.config,
        "rate": args.rate,
        "kind": args.kind,
        "seed": args.seed,
        "threshold": args.threshold,
        "train_images": len(data.train),
        "excluded": prf(listed, flipped),
        "noisy": _val_scores(str(work / "noisy")),
        "cleaned": _val_scores(str(work / "cleaned")),
        "seconds": {"noisy": round(t_noisy), "cleaned": round(t_clean)},
        "machine": machine(),
    }
    if args.clean:
        res["clean"] = _val_scores(args.clean)
        res["recovered"] = recovered(res["clean"], res["noisy"], res["cleaned"])
    report_json(res, args.out or str(work / "result.json"))


def second(args) -> None:
    """A further pass: audit the run trained without the last pass's flags (the images it left
    out are out of sample for its whole ensemble), and train again without what it still flags.
    Round N writes WORK/audit_rN, WORK/exclude_rN.txt and WORK/cleaned_rN."""
    work = Path(args.work)
    n = args.round
    if n < 2:
        raise SystemExit(f"--round must be 2 or more; got {n}")
    first = Path(args.first or work / ("cleaned" if n == 2 else f"cleaned_r{n - 1}"))
    relabel = work / "flips.csv"
    with open(relabel, newline="", encoding="utf-8") as fh:
        flipped = {os.path.abspath(r["path"]) for r in csv.DictReader(fh)}
    extra = [x for s in args.set for x in ("--set", s)]
    exclude = work / f"exclude_r{n}.txt"
    cleaned = work / f"cleaned_r{n}"
    _effens(
        "audit",
        str(first),
        "--out",
        str(work / f"audit_r{n}"),
        "--write-exclude",
        str(exclude),
        "--threshold",
        str(args.threshold),
    )
    listed = _listed(exclude)
    t0 = time.perf_counter()
    _effens(
        "train",
        args.config,
        "--out",
        str(cleaned),
        "--set",
        f"data.relabel={relabel}",
        "--set",
        f"data.exclude={exclude}",
        *extra,
    )
    res = {
        "config": args.config,
        "round": n,
        "first": str(first),
        "threshold": args.threshold,
        "excluded": prf(listed, flipped),
        "noisy": _val_scores(str(work / "noisy")),
        "first_pass": _val_scores(str(first)),
        "cleaned": _val_scores(str(cleaned)),
        "seconds": {f"cleaned_r{n}": round(time.perf_counter() - t0)},
        "machine": machine(),
    }
    if args.clean:
        res["clean"] = _val_scores(args.clean)
        res["recovered"] = recovered(res["clean"], res["noisy"], res["cleaned"])
    report_json(res, args.out or str(work / f"result_r{n}.json"))


def recovered(clean: dict, noisy: dict, cleaned: dict) -> dict:
    """Share of the val macro-F1 lost to the noise that retraining without the flags won back."""
    return {
        m: round((cleaned[m]["val"] - noisy[m]["val"]) / (clean[m]["val"] - noisy[m]["val"]), 3)
        if clean[m]["val"] != noisy[m]["val"]
        else None
        for m in clean
    }


def _val_predictions(run: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(val labels, val predictions of each member and of the run's chosen strategy), the
    ensemble's rebuilt from the saved member probabilities by the run's own combiner."""
    from ensemble.files import read_npy
    from ensemble.metrics import macro_f1
    from ensemble.runfolder import load_run

    ens = load_run(run)
    pred = Path(run) / "predictions"
    proba, y = read_npy(pred / "val_proba.npy"), read_npy(pred / "val_labels.npy")
    doc = json.loads((Path(run) / "report" / "metrics.json").read_text())
    out = {m.name: proba[i].argmax(1) for i, m in enumerate(ens.members_)}
    out["ensemble"] = ens.combiner_.apply(proba, doc["strategy"])[0]
    k = len(doc["classes"])
    for m, p in out.items():  # the rebuilt predictions score what the run reported
        want = (doc["members"][m] if m != "ensemble" else doc["ensemble"])["val"]["macro_f1"]
        if abs(macro_f1(y, p, k) - want) > 1e-9:
            raise SystemExit(f"{run}: {m} val macro-F1 rebuilt {macro_f1(y, p, k):.4f}, reported {want:.4f}")
    return y, out


def _boot_macro_f1(y: np.ndarray, pred: np.ndarray, k: int, counts: np.ndarray) -> np.ndarray:
    """Macro-F1 of ``pred`` on each bootstrap resample (``counts``: resamples x images)."""
    cells = counts @ np.eye(k * k)[y * k + pred]  # resamples x (true, predicted) cells
    cm = cells.reshape(len(counts), k, k)
    tp = np.einsum("bii->bi", cm)
    denom = cm.sum(1) + cm.sum(2)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=float), where=denom > 0)
    return f1.mean(1)


def summary(args) -> None:
    seeds = []
    for clean, noisy, cleaned in args.seed:
        runs = {"clean": _val_scores(clean), "noisy": _val_scores(noisy), "cleaned": _val_scores(cleaned)}
        seeds.append({"runs": [clean, noisy, cleaned], **runs, "recovered": recovered(**runs)})
    models = list(seeds[0]["clean"])
    # paired bootstrap over the val images: one resample for every run of every seed (they all
    # score the same val images, so the images' luck is shared, not averaged away over seeds):
    # how far the share recovered moves with the val set alone, the runs retrained as they are
    rng = np.random.default_rng(args.bootstrap_seed)
    boot = {m: {k: 0.0 for k in ("clean", "noisy", "cleaned")} for m in models}
    y0 = counts = None
    for s in seeds:
        preds = {}
        for key, run in zip(("clean", "noisy", "cleaned"), s["runs"]):
            y, preds[key] = _val_predictions(run)
            if y0 is None:
                y0 = y
                counts = rng.multinomial(len(y0), np.full(len(y0), 1 / len(y0)), size=args.bootstrap)
            elif not np.array_equal(y, y0):
                raise SystemExit(f"{run}: val labels differ from {seeds[0]['runs'][0]}'s; not the same val split")
        k = int(y0.max()) + 1
        for m in models:
            for key in boot[m]:
                boot[m][key] = boot[m][key] + _boot_macro_f1(y0, preds[key][m], k, counts) / len(seeds)
    mean = {}
    for m in models:
        v = {k: float(np.mean([s[k][m]["val"] for s in seeds])) for k in ("clean", "noisy", "cleaned")}
        b = boot[m]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = (b["cleaned"] - b["noisy"]) / (b["clean"] - b["noisy"])
        lo, hi = np.nanpercentile(share, [5, 95])
        mean[m] = {
            **{k: round(x, 4) for k, x in v.items()},
            "recovered_of_mean_loss": round((v["cleaned"] - v["noisy"]) / (v["clean"] - v["noisy"]), 3),
            "recovered_90pct_interval": [round(float(lo), 3), round(float(hi), 3)],
            "bootstrap_share_at_least_half": round(float(np.mean(share >= 0.5)), 3),
            "recovered_per_seed": [s["recovered"][m] for s in seeds],
        }
        print(
            f"{m}: clean {v['clean']:.4f}, noisy {v['noisy']:.4f}, cleaned {v['cleaned']:.4f}, "
            f"recovered {mean[m]['recovered_of_mean_loss']:.0%} of the mean loss "
            f"(val bootstrap 90%: {lo:.0%} to {hi:.0%}; per seed {mean[m]['recovered_per_seed']})",
            flush=True,
        )
    report_json({"seeds": seeds, "mean": mean, "bootstrap": args.bootstrap, "machine": machine()}, args.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect", help="flag flipped labels: effens vs cleanlab on the same probabilities")
    d.add_argument("--config", required=True)
    d.add_argument("--rates", default="0.1,0.2")
    d.add_argument("--kinds", default="uniform,adjacent")
    d.add_argument("--seeds", type=int, default=3)
    d.add_argument("--cache", default="runs/label-noise-cache", help="folder for the feature cache")
    d.add_argument("--out")
    r = sub.add_parser("retrain", help="train on flipped labels, audit, train without the flagged images")
    r.add_argument("--config", required=True)
    r.add_argument("--rate", type=float, default=0.2)
    r.add_argument("--kind", default="uniform")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument(
        "--threshold", type=float, default=1.0, help="--write-exclude threshold (1: every flagged training image)"
    )
    r.add_argument("--work", required=True)
    r.add_argument("--clean", help="a run of the same config on the clean labels, for the share recovered")
    r.add_argument("--set", action="append", default=[])
    r.add_argument("--out")
    t = sub.add_parser(
        "second", help="a further pass: audit the last cleaned run and train without what it still flags"
    )
    t.add_argument("--config", required=True)
    t.add_argument("--work", required=True, help="the folder `retrain` filled (flips.csv, noisy, cleaned)")
    t.add_argument("--round", type=int, default=2, help="which pass this is (names its outputs *_rN)")
    t.add_argument("--first", help="the last pass's cleaned run (default: WORK/cleaned, or WORK/cleaned_r{N-1})")
    t.add_argument("--threshold", type=float, default=0.3, help="--write-exclude threshold for new flags")
    t.add_argument("--clean", help="a run of the same config on the clean labels, for the share recovered")
    t.add_argument("--set", action="append", default=[])
    t.add_argument("--out")
    m = sub.add_parser("summary", help="the share recovered over seeds, from finished runs")
    m.add_argument("--seed", nargs=3, action="append", required=True, metavar=("CLEAN", "NOISY", "CLEANED"))
    m.add_argument("--bootstrap", type=int, default=2000, help="paired val resamples for the interval")
    m.add_argument("--bootstrap-seed", type=int, default=0)
    m.add_argument("--out")
    args = ap.parse_args()
    {"detect": detect, "retrain": retrain, "second": second, "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    main()
