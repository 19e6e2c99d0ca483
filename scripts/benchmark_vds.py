"""VDS benchmark: train the three-member ensemble, compare with the published figures.

    python scripts/benchmark_vds.py --data ../shared/data/vds --out runs/vds-bench

1. Training throughput of the first member, side by side in this process: effens'
   trainer (decode-once cache, channels_last) against the plain loop a user would
   write (timm model + ImageFolder-style dataset + DataLoader), same model, resolution,
   batch, freezing and augmentation.
2. ``effens train`` of ``configs/vds.yaml`` with the data paths pointed at ``--data``.
3. ``DIR/results.json``: members -> name -> val/test -> accuracy, macro_f1, weighted_f1;
   strategies -> the same; ensemble -> the strategy with the best *validation* macro-F1;
   wall_s; peak_rss_mb; throughput -> effens_img_s, plain_img_s. Also ``DIR/results.md``.
4. With ``--seeds N``: the recipe trained N times (``seed`` 0..N-1, ``DIR/run-seedK``);
   ``seeds`` holds each seed's figures (test macro-F1, weighted-F1 and per-class recall of
   every member, every strategy and the val-chosen ensemble, plus wall time) and
   ``summary`` their mean and standard deviation.

Everything is selected on val or OOB; the test split is only reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import run_main

from ensemble.config import load_config
from ensemble.data import DataError, load_folder
from ensemble.images import decode_all
from members.precision import describe_cpu

log = logging.getLogger("benchmark_vds")

PUBLISHED = {
    "best single model (ResNet-18 + photometric aug.)": 0.7370,
    "best ensemble (ResNet-18 + DeiT-Small, weighted)": 0.7761,
}


def _n_per_class(paths: list[str], labels: list[str], n: int) -> list[int]:
    """``n`` indices spread over classes (first of each class in turn)."""
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    out: list[int] = []
    k = 0
    while len(out) < n:
        for idx in by_class.values():
            if k < len(idx) and len(out) < n:
                out.append(idx[k])
        k += 1
    return sorted(out)


def throughput(spec, train_dir: Path, n_images: int, classes: list[str], precision: str = "fp32") -> dict:
    """Images/s of one training pass over ``n_images``, effens vs the plain loop.

    effens trains in ``precision`` (``auto``: what ``effens train`` would pick here); the
    plain loop is the fp32 loop a user writes without effens.
    """
    from PIL import Image

    from ensemble.metrics import selection_scores
    from members.models import create_member, set_train_mode
    from members.precision import resolve_precision
    from members.trainer import TrainData, TrainRun, param_groups, train_member
    from members.transforms import eval_tensor, train_transform

    split = load_folder(train_dir)
    pick = _n_per_class(split.paths, split.labels, n_images)
    paths = [split.paths[i] for i in pick]
    y = np.array([classes.index(split.labels[i]) for i in pick])
    cfg = copy.deepcopy(spec)
    cfg.train.epochs = 1
    cfg.train.min_image_size = None  # both at the full resolution

    # plain first (effens' trainer changes the C allocator of this process for good:
    # members/allocator.py): files -> PIL -> the same timm transform -> DataLoader; model in default layout
    torch.manual_seed(0)
    plain = create_member(cfg, len(classes))
    tf = train_transform(plain.inputs, cfg.train)

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(paths[i]) as img:
                return tf(img.convert("RGB")), int(y[i])

    results = {}
    for workers in (0, 2):
        model = copy.deepcopy(plain.model)
        frozen_ids = {id(m) for m in plain.frozen}
        frozen = [m for m0, m in zip(plain.model.modules(), model.modules()) if id(m0) in frozen_ids]
        opt = torch.optim.AdamW(param_groups(model, cfg.train.lr, cfg.train.weight_decay), lr=cfg.train.lr)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        loader = torch.utils.data.DataLoader(
            Files(), batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers, drop_last=True
        )
        set_train_mode(model, frozen, True)
        seen, t0 = 0, None
        for step, (xb, yb) in enumerate(loader):
            if step == 2:  # the first two batches are warm-up, as for effens
                seen, t0 = 0, time.perf_counter()
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(yb)
        results[workers] = seen / (time.perf_counter() - t0)
        log.info("plain loop, %d workers: %.1f img/s", workers, results[workers])
    plain_img_s = max(results.values())

    # effens: decode once into the cache (counted), then one epoch of its trainer; first
    # with the C allocator left as it is (EFFENS_MALLOC=system), then as `effens train` runs
    from members import allocator

    prec = resolve_precision(precision, "cpu")  # as `effens train` resolves it
    log.info("effens precision: %s (%s)", prec.name, prec.reason)
    score = lambda yy, p: selection_scores(yy, p, len(classes))  # noqa: E731
    cpu = torch.device("cpu")
    passes = {}
    users = os.environ.get(allocator.ENV)
    modes = ("system", "default") if users is None else ("default",)  # a user's EFFENS_MALLOC stays
    for mode in modes:
        allocator._state = None  # noqa: SLF001 (the one place that switches within a process)
        if mode == "system":
            os.environ[allocator.ENV] = "system"
        elif users is None:
            os.environ.pop(allocator.ENV, None)
        torch.manual_seed(0)
        member = create_member(cfg, len(classes))
        t0 = time.perf_counter()
        arrays, _ = decode_all(paths, member.inputs.resize_size)
        decode_s = time.perf_counter() - t0
        val = eval_tensor(arrays[:8], member.inputs)
        warm = np.arange(2 * cfg.train.batch_size)  # warm-up pass (allocator, kernels), not timed
        train_member(
            member, cfg.train, TrainData(arrays, y, warm, val, y[:8]), TrainRun("warm-up", 0, cpu, score, prec)
        )
        res = train_member(
            member,
            cfg.train,
            TrainData(arrays, y, np.arange(len(arrays)), val, y[:8]),
            TrainRun("throughput", 0, cpu, score, prec),
        )
        # the one-off decode is shared by every member and epoch: charge it once to this pass
        passes[mode] = {
            "img_s": len(arrays) / (decode_s + res.history[0]["seconds"]),  # + 8-image val pass
            "decode_s": decode_s,
            "allocator": res.allocator,
        }
        log.info("effens, C allocator %s: %.1f img/s", res.allocator, passes[mode]["img_s"])
    passes.setdefault("system", passes["default"])
    effens_img_s = passes["default"]["img_s"]
    return {
        "member": cfg.name,
        "model": cfg.model,
        "image_size": member.inputs.image_size,
        "effens_precision": prec.name,
        "effens_precision_reason": prec.reason,
        "effens_allocator": passes["default"]["allocator"],
        "batch_size": cfg.train.batch_size,
        "freeze": cfg.train.freeze,
        "augment": cfg.train.augment,
        "images": len(paths),
        "effens_img_s": effens_img_s,
        "effens_decode_s": passes["default"]["decode_s"],
        "effens_system_allocator_img_s": passes["system"]["img_s"],
        "plain_img_s": plain_img_s,
        "plain_img_s_by_workers": results,
        "ratio": effens_img_s / plain_img_s,  # effens as it runs vs the plain loop on glibc's defaults
        "ratio_system_allocator": passes["system"]["img_s"] / plain_img_s,
    }  # both on glibc's defaults


def pick(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1")}


def seed_figures(doc: dict) -> dict:
    """One seed's test figures: each member, each strategy and the run's default ensemble
    (``combiner.strategy``; with ``auto``, chosen on val + OOB, never on test), plus its
    paired difference to that seed's best member on test (reported, not used to choose)."""

    def test(m: dict) -> dict:
        t = m["test"]
        return {
            "macro_f1": t["macro_f1"],
            "weighted_f1": t["weighted_f1"],
            **{f"recall_{c}": v["recall"] for c, v in t["per_class"].items()},
        }

    chosen = doc["strategy"]
    out = {f"member {n}": test(m) for n, m in doc["members"].items()}
    out.update({f"strategy {n}": test(m) for n, m in doc["strategies"].items()})
    out["ensemble (auto)"] = dict(test(doc["strategies"][chosen]))
    best = max(doc["members"], key=lambda n: doc["members"][n]["test"]["macro_f1"])
    diff = doc["strategies"][chosen]["test"]["macro_f1"] - doc["members"][best]["test"]["macro_f1"]
    return {
        "chosen": chosen,
        "best_member": best,
        "diff_to_best_member": diff,
        "figures": out,
        "choice": (doc.get("combiner") or {}).get("choice"),
    }


def val_f1(doc: dict) -> str:
    """The default strategy's val macro-F1 for a progress line ("-" under `data.train_on_val`)."""
    val = doc["strategies"][doc["strategy"]].get("val")
    return f"{val['macro_f1']:.4f}" if val else "-"


def summarise(seeds: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every figure."""
    out: dict = {}
    # what every seed has (a one-network run reports its default strategy alone, which `auto` may pick per seed)
    for who in [w for w in seeds[0]["figures"] if all(w in s["figures"] for s in seeds)]:
        out[who] = {}
        for key in seeds[0]["figures"][who]:
            vals = np.array([s["figures"][who][key] for s in seeds])
            out[who][key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    walls = np.array([s["wall_s"] for s in seeds])
    out["wall_s"] = {"mean": float(walls.mean()), "std": float(walls.std(ddof=1)) if len(walls) > 1 else 0.0}
    diffs = np.array([s["diff_to_best_member"] for s in seeds])
    out["paired"] = {
        "mean_diff_to_best_member": float(diffs.mean()),
        "seeds_at_or_above_best_member": int((diffs >= 0).sum()),
        "seeds": len(diffs),
    }
    return out


def run_seeds(args, overrides: list[str], out: Path) -> dict:
    from ensemble.training import train_run

    seeds = []
    for k in range(args.seeds):
        t0 = time.perf_counter()
        doc = train_run(args.config, str(out / f"run-seed{k}"), overrides=[*overrides, f"seed={k}"])
        seeds.append(dict(seed_figures(doc), seed=k, wall_s=time.perf_counter() - t0))
        log.info(  # val, not test: test is read once, from the final table, after every seed
            "seed %d: auto chose %s, val macro-F1 %s (%.0f s)", k, seeds[-1]["chosen"], val_f1(doc), seeds[-1]["wall_s"]
        )
    return {"seeds": seeds, "summary": summarise(seeds)}


def refit_seeds(args, out: Path) -> dict:
    """``--refit``: the combiner of each trained ``DIR/run-seedK`` fitted again by this
    effens (``effens fit-combiner``: no member is retrained), then the seed table; wall
    time is the original training's (from the run's metrics.json) plus the refit."""
    from ensemble.training import refit_run_combiner

    seeds = []
    for k in range(args.seeds):
        run = out / f"run-seed{k}"
        old = json.loads((run / "report" / "metrics.json").read_text())
        t0 = time.perf_counter()
        doc = refit_run_combiner(
            str(run), [o for o in args.overrides if o.startswith(("combiner.", "decision.", "report."))]
        )
        wall = (old.get("timing") or {}).get("total_s", 0.0) + time.perf_counter() - t0
        seeds.append(dict(seed_figures(doc), seed=k, wall_s=wall, throughput=predict_throughput(run, doc)))
        log.info("seed %d: auto chose %s, val macro-F1 %s", k, seeds[-1]["chosen"], val_f1(doc))
    return {"seeds": seeds, "summary": summarise(seeds)}


def predict_throughput(run: Path, doc: dict) -> dict:
    """Images/s of member inference on the run's val images (decoded once, runtime auto):
    the default strategy's members (a strategy that gives a member no weight skips it)
    against all members, side by side in this process."""
    from ensemble.estimator import decode_size
    from ensemble.runfolder import load_run

    ens = load_run(run)
    paths = json.loads((run / "predictions" / "val_paths.json").read_text())
    arrays, _ = decode_all(paths, decode_size(ens), on_bad="skip")
    arrays = [a for a in arrays if a is not None]
    comb = ens.combiner_
    ens.member_proba(arrays[:8], pool=True)  # compile every runtime once, not timed
    out: dict = {}
    timed = [("chosen", doc["strategy"]), ("all members", None)]
    if comb.candidate_names and "greedy" in comb.strategies and doc["strategy"] != "greedy":
        timed.insert(1, ("greedy", "greedy"))  # the pool strategy, beside the chosen one
    for label, strategy in timed:
        names = comb.names(strategy) if strategy else comb.member_names
        used = comb.uses(strategy)[: len(names)] if strategy else None
        t0 = time.perf_counter()
        ens.member_proba(arrays, used=used, pool=bool(strategy) and comb.pooled(strategy))
        out[label] = len(arrays) / (time.perf_counter() - t0)
        if strategy:
            out[f"{label}_uses" if label != "chosen" else "members_used"] = [n for n, u in zip(names, used) if u]
    return out


def seeds_markdown(r: dict) -> str:
    summary, seeds = r["summary"], r["seeds"]
    lines = [
        "| test | " + " | ".join(f"seed {s['seed']}" for s in seeds) + " | mean +- std |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for who in [w for w in seeds[0]["figures"] if w in summary]:
        for key in ("macro_f1", "weighted_f1", *sorted(k for k in seeds[0]["figures"][who] if k.startswith("recall_"))):
            m = summary[who][key]
            lines.append(
                f"| {who} {key} | "
                + " | ".join(f"{s['figures'][who][key]:.4f}" for s in seeds)
                + f" | {m['mean']:.4f} +- {m['std']:.4f} |"
            )
    w = summary["wall_s"]
    p = summary["paired"]
    lines += [
        "",
        "strategy auto chose per seed: "
        + ", ".join(s["chosen"] for s in seeds)
        + f"; wall time per seed {w['mean']:.0f} +- {w['std']:.0f} s",
        "ensemble (auto) minus that seed's best member on test: "
        + ", ".join(f"{s['diff_to_best_member']:+.4f} ({s['best_member']})" for s in seeds)
        + f"; mean {p['mean_diff_to_best_member']:+.4f}; at or above it in "
        f"{p['seeds_at_or_above_best_member']} of {p['seeds']} seeds",
    ]
    if all("throughput" in s for s in seeds):
        lines.append(
            "member inference on val (img/s, chosen strategy's members vs all): "
            + "; ".join(
                f"seed {s['seed']}: {s['throughput']['chosen']:.1f} ({'+'.join(s['throughput']['members_used'])}) vs "
                f"{s['throughput']['all members']:.1f}"
                for s in seeds
            )
        )
        if all("greedy" in s["throughput"] for s in seeds):
            lines.append(
                "greedy over the pool (img/s, the candidates it weighs): "
                + "; ".join(
                    f"seed {s['seed']}: {s['throughput']['greedy']:.1f} ({'+'.join(s['throughput']['greedy_uses'])})"
                    for s in seeds
                )
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/vds", help="VDS root with train/val/test")
    p.add_argument("--out", default="runs/vds-bench")
    p.add_argument("--config", default="configs/vds.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--throughput-images", type=int, default=320)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--throughput-only", action="store_true")
    p.add_argument("--seeds", type=int, default=0, help="train the recipe this many times (seeds 0..N-1)")
    p.add_argument(
        "--refit",
        action="store_true",
        help="with --seeds: refit the combiners of the runs already trained in --out (no training)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    t_start = time.perf_counter()
    data = Path(args.data).resolve()
    for split in ("train", "val", "test"):
        if not (data / split).is_dir():
            raise DataError(f"{data / split}: no such folder (--data must hold train/, val/ and test/)")
    overrides = [
        f"data.train={data / 'train'}",
        f"data.val={data / 'val'}",
        f"data.test={data / 'test'}",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    results: dict = {
        "config": args.config,
        "overrides": args.overrides,
        "data": str(data),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu": describe_cpu(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "versions": {"torch": torch.__version__},
    }
    if not args.skip_throughput:
        results["throughput"] = throughput(
            cfg.members[0], data / "train", args.throughput_images, classes, cfg.members[0].precision or cfg.precision
        )
        t = results["throughput"]
        log.info(
            "throughput: effens %.1f img/s, plain %.1f img/s (%.2fx; %.2fx with the C allocator as it is)",
            t["effens_img_s"],
            t["plain_img_s"],
            t["ratio"],
            t["ratio_system_allocator"],
        )
    if args.seeds and args.refit:
        results.update(refit_seeds(args, out))
    elif args.seeds:
        results.update(run_seeds(args, overrides, out))
    elif not args.throughput_only:
        from ensemble.training import train_run

        t0 = time.perf_counter()
        doc = train_run(args.config, str(out / "run"), overrides=overrides)
        results["train_s"] = time.perf_counter() - t0
        results["members"] = {n: {s: pick(m[s]) for s in ("val", "test")} for n, m in doc["members"].items()}
        results["strategies"] = {n: {s: pick(m[s]) for s in ("val", "test")} for n, m in doc["strategies"].items()}
        chosen = max(doc["strategies"], key=lambda s: doc["strategies"][s]["val"]["macro_f1"])
        results["ensemble"] = dict(results["strategies"][chosen], strategy=chosen, chosen_on="val macro-F1")
        results["member_train_s"] = doc["timing"]["members_train_s"]
    results["wall_s"] = time.perf_counter() - t_start
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results) + ("\n\n" + seeds_markdown(results) if "seeds" in results else "")
    (out / "results.md").write_text(text + "\n")
    print(text)


def markdown(r: dict) -> str:
    lines = [f"wall time {r['wall_s']:.0f} s, peak memory {r['peak_rss_mb']:.0f} MB", ""]
    if "throughput" in r:
        t = r["throughput"]
        lines += [
            f"training throughput ({t['model']} @{t['image_size']}px, batch {t['batch_size']}, "
            f"freeze {t['freeze']}, {t['augment']}): effens {t['effens_img_s']:.1f} img/s, plain loop "
            f"{t['plain_img_s']:.1f} img/s -> {t['ratio']:.2f}x (C allocator left as it is: "
            f"{t['effens_system_allocator_img_s']:.1f} img/s, {t['ratio_system_allocator']:.2f}x)",
            "",
        ]
    if "members" in r:
        lines += [
            "| model | val acc | val macro-F1 | val weighted-F1 | test acc | test macro-F1 | test weighted-F1 |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = list(r["members"].items()) + [
            (f"ensemble {k}" + (" (chosen on val)" if k == r["ensemble"]["strategy"] else ""), v)
            for k, v in r["strategies"].items()
        ]
        for who, m in rows:
            lines.append(
                f"| {who} | "
                + " | ".join(f"{m[s][k]:.4f}" for s in ("val", "test") for k in ("accuracy", "macro_f1", "weighted_f1"))
                + " |"
            )
        lines += ["", "Published (test F1): " + "; ".join(f"{k}: {v:.4f}" for k, v in PUBLISHED.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
