"""Ablation of the weight levers of one member: train once, score every weight choice.

    python scripts/ablate_vds.py --config configs/vds.yaml --member lite0 \\
        --proxy /work/runs/vds-proxy --out runs/ablate-lite0 --set members.0.train.ema=0.998 ...

One training of one member (its bootstrap sample, seed and settings exactly as
``effens train`` draws them) keeps every candidate the trainer makes: ``best`` (best epoch
on val), ``last``, ``ema``, ``swa`` and, with ``lp_epochs``, ``probe`` (the linear probe,
LP-FT's first stage) and WiSE-FT interpolations ``wise(<select>, alpha)``. Each is scored
(macro-F1) on val and on a shift proxy (``scripts/make_shift_proxy.py``, built from val)
under each eval ``--views``. The test split is never read. Writes ``DIR/ablation.json``
and ``DIR/ablation.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from ensemble.bagging import draw_all
from ensemble.config import load_config
from ensemble.data import load_folder
from ensemble.images import decode_all
from ensemble.member_jobs import member_seed, seed_everything
from ensemble.metrics import selection_scores
from members.averaging import interpolate
from members.models import create_member, pick_device
from members.predictor import default_precision, predict_proba
from members.trainer import TrainData, TrainRun, train_member
from members.transforms import eval_tensor

log = logging.getLogger("ablate_vds")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/vds.yaml")
    p.add_argument("--member", required=True, help="name of the member to train")
    p.add_argument("--data", default="../shared/data/vds", help="VDS root with train/val (test is not read)")
    p.add_argument("--proxy", required=True, help="shift proxy folder (scripts/make_shift_proxy.py)")
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--views", default="crop,letterbox,squash", help="eval views to score")
    p.add_argument("--wise", default="0.5,0.8", help="WiSE-FT alphas to score (with lp_epochs)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    t0 = time.perf_counter()
    data = Path(args.data).resolve()
    cfg = load_config(
        args.config, [f"data.train={data / 'train'}", f"data.val={data / 'val'}", "data.test=null", *args.overrides]
    )
    names = [m.name for m in cfg.members]
    if args.member not in names:
        p.error(f"--member {args.member!r} is not in {args.config} (members: {', '.join(names)})")
    index = names.index(args.member)
    spec = cfg.members[index]
    train, val, proxy = load_folder(data / "train"), load_folder(data / "val"), load_folder(args.proxy)
    classes = sorted(set(train.labels))
    y, y_val, y_proxy = (s.encode(classes) for s in (train, val, proxy))
    sample = draw_all(y, [m.bagging for m in cfg.members], cfg.seed)[index]
    mseed = member_seed(cfg.seed, index)
    seed_everything(mseed)
    member = create_member(spec, len(classes))
    size = member.inputs.resize_size
    images = decode_all(train.paths, size)[0]
    val_images, proxy_images = decode_all(val.paths, size)[0], decode_all(proxy.paths, size)[0]
    device = pick_device(cfg.device)
    precision = default_precision(device)  # fp32 on CPU (bf16 measured slower here), mixed on GPU
    k = len(classes)
    run = TrainRun(spec.name, mseed, device, lambda yy, pp: selection_scores(yy, pp, k), precision)
    result = train_member(
        member, spec.train, TrainData(images, y, sample, eval_tensor(val_images, member.inputs), y_val), run
    )
    train_s = time.perf_counter() - t0
    candidates = dict(result.candidates)
    if "probe" in candidates:
        for alpha in (float(a) for a in args.wise.split(",") if a):
            candidates[f"wise({spec.train.select}, {alpha})"] = interpolate(
                candidates[spec.train.select], candidates["probe"], alpha
            )
    rows: dict = {}
    model = member.model
    for view in args.views.split(","):
        inputs = dataclasses.replace(member.inputs, view=view)
        tensors = {
            "val": (eval_tensor(val_images, inputs), y_val),
            "proxy": (eval_tensor(proxy_images, inputs), y_proxy),
        }
        for name, state in candidates.items():
            model.load_state_dict(state)
            for split, (x, yy) in tensors.items():
                proba = predict_proba(model, x, inputs, spec.train.eval_batch_size, device, precision=precision)
                rows.setdefault(name, {}).setdefault(view, {})[split] = selection_scores(yy, proba, k)["macro_f1"]
            log.info(
                "%s, view %s: val %.4f, proxy %.4f", name, view, rows[name][view]["val"], rows[name][view]["proxy"]
            )
    doc = {
        "config": args.config,
        "member": spec.name,
        "overrides": args.overrides,
        "seed": cfg.seed,
        "train": dataclasses.asdict(spec.train),
        "view": spec.view,
        "selection": result.selection,
        "train_s": train_s,
        "wall_s": time.perf_counter() - t0,
        "macro_f1": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(doc, indent=2) + "\n")
    views = args.views.split(",")
    lines = [
        "| weights | " + " | ".join(f"{v} val | {v} proxy" for v in views) + " | mean (val, proxy) best view |",
        "|---|" + "---|---|" * len(views) + "---|",
    ]
    for name, by_view in rows.items():
        best = max(np.mean([by_view[v]["val"], by_view[v]["proxy"]]) for v in views)
        lines.append(
            f"| {name} | "
            + " | ".join(f"{by_view[v]['val']:.4f} | {by_view[v]['proxy']:.4f}" for v in views)
            + f" | {best:.4f} |"
        )
    text = f"member {spec.name} (trained view {spec.view}), train {train_s:.0f} s\n\n" + "\n".join(lines)
    (out / "ablation.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
