"""Does a candidate pool help the ensemble? (issue #21, item 2)

    python scripts/ablate_pool.py --runs runs/vds-pool/run-seed0 runs/vds-pool/run-seed1 \\
        --out runs/pool-ablation.json                       # the runs' own pool candidates
    python scripts/ablate_pool.py --runs runs/vds-seeds/run-seed0 --views crop,letterbox

The pool is the run's members and the pool candidates it kept (``members.N.candidates``:
snapshots and views, their OOB/val/test probabilities read from the run), plus, with
--views, every member evaluated under each of those views on its OOB images, val and test
(OpenVINO, the run's precision). Then, side by side:

- the run's default ensemble (its ``combiner.strategy``, as fitted) and each member;
- ``greedy`` over the three members, on OOB (the run's own strategy);
- ``greedy`` over the pool on OOB (the per-image availability mask: a candidate scores
  only the images its member left out), plain and bagged;
- ``greedy`` over the pool fitted on val (reported on test only);
- the uniform soft vote over the pool; stacking on OOB over the pool and over the members;
- ``greedy`` on OOB over the members plus one kind of candidate (``@last``, ``@ema``,
  ``@swa``, ``@probe``, ``+<view>``): each lever alone.

Every choice is made on OOB or val; the test split is only reported. Macro-F1 and log
loss on val and test are written to --out (JSON) and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from ensemble.combining.votes import fit_stacking, greedy_selection, oob_matrix, stacking_proba
from ensemble.data import load_dataset
from ensemble.estimator import decode_size
from ensemble.files import read_json, read_npy
from ensemble.images import decode_all
from ensemble.metrics import classification_report, log_loss
from ensemble.runfolder import RunFolder, load_run

log = logging.getLogger("ablate_pool")


def scores(y: np.ndarray, p: np.ndarray, k: int) -> dict:
    return {
        "macro_f1": classification_report(y, p.argmax(1), None, [str(i) for i in range(k)])["macro_f1"],
        "log_loss": log_loss(y, p),
    }


def pool_of(run_dir: str, views: list[str]) -> dict:
    """Each candidate's OOB, val and test probabilities, with the run's own figures."""
    ens = load_run(run_dir)
    folder = RunFolder(run_dir)
    cfg = folder.read_config()
    data = load_dataset(cfg.data, cfg.seed)
    pred = folder.predictions_dir
    y_train = read_npy(pred / "train_labels.npy")
    index = {c: i for i, c in enumerate(ens.classes_)}
    if [index[c] for c in data.train.labels] != y_train.tolist():
        raise SystemExit(f"{run_dir}: the training split read now differs from the one the run trained on")
    splits = {
        s: (read_json(pred / f"{s}_paths.json"), read_npy(pred / f"{s}_labels.npy"), read_npy(pred / f"{s}_proba.npy"))
        for s in ("val", "test")
    }
    oob_union = np.unique(np.concatenate(ens.oob_indices_))
    arrays: dict = {}
    if views:  # decoded only to evaluate the members under more views
        size = decode_size(ens)
        t0 = time.perf_counter()
        arrays = {s: decode_all(list(paths), size, on_bad="error")[0] for s, (paths, _, _) in splits.items()}
        arrays["oob"] = decode_all([data.train.paths[i] for i in oob_union], size, on_bad="error")[0]
        log.info("%s: decoded in %.0f s", run_dir, time.perf_counter() - t0)
    # the members and the run's pool candidates: what the run stored
    names = [fm.name for fm, _ in ens.pool_rows()]
    member_oob, oob = list(ens.oob_indices_), list(ens.oob_proba_)
    val, test = list(splits["val"][2]), list(splits["test"][2])
    for v in views:
        t0 = time.perf_counter()
        got = {s: ens.member_proba(a, tta=v) for s, a in arrays.items()}
        for j, fm in enumerate(ens.members_):
            if v == fm.inputs.view:
                continue
            pos = np.searchsorted(oob_union, ens.oob_indices_[j])
            names.append(f"{fm.name}+{v}")
            member_oob.append(ens.oob_indices_[j])
            oob.append(got["oob"][j][pos])
            val.append(got["val"][j])
            test.append(got["test"][j])
        log.info("%s: view %s in %.0f s", run_dir, v, time.perf_counter() - t0)
    full, available = oob_matrix(member_oob, oob, len(y_train), len(ens.classes_))
    default = ens.combiner_.strategy
    return {
        "names": names,
        "oob": full,
        "available": available,
        "y_train": y_train,
        "val": (np.stack(val), splits["val"][1]),
        "test": (np.stack(test), splits["test"][1]),
        "default": default,
        "default_val": ens.combiner_.apply(splits["val"][2], default)[1],
        "default_test": ens.combiner_.apply(splits["test"][2], default)[1],
        "k": len(ens.classes_),
        "members": [fm.name for fm in ens.members_],
    }


def compare(pool: dict, seed: int) -> dict:
    k, names = pool["k"], pool["names"]
    (pv, yv), (pt, yt) = pool["val"], pool["test"]
    n_members = len(pool["members"])
    rows = {f"default ({pool['default']})": (pool["default_val"], pool["default_test"], None)}
    for j in range(len(names)):
        rows[f"{'member' if j < n_members else 'candidate'} {names[j]}"] = (pv[j], pt[j], None)

    def mix(w):
        return np.einsum("m,mnc->nc", w, pv), np.einsum("m,mnc->nc", w, pt), dict(zip(names, np.round(w, 3)))

    w, _ = greedy_selection(pool["oob"][:n_members], pool["y_train"], pool["available"][:n_members], seed=seed)
    rows["greedy, 3 members, OOB"] = mix(np.concatenate([w, np.zeros(len(names) - n_members)]))
    w, _ = greedy_selection(pool["oob"], pool["y_train"], pool["available"], seed=seed)
    rows[f"greedy, pool of {len(names)}, OOB"] = mix(w)
    w, _ = greedy_selection(pool["oob"], pool["y_train"], pool["available"], bags=20, seed=seed)
    rows[f"greedy, pool of {len(names)}, OOB, 20 bags"] = mix(w)
    w, _ = greedy_selection(pv, yv, seed=seed)
    rows[f"greedy, pool of {len(names)}, val"] = mix(w)
    rows[f"soft, pool of {len(names)}"] = mix(np.full(len(names), 1 / len(names)))
    for label, keep in (
        (f"stacking, pool of {len(names)}, OOB", slice(None)),
        ("stacking, 3 members, OOB", slice(0, n_members)),
    ):
        coef, icpt = fit_stacking(pool["oob"][keep], pool["y_train"], k, 1.0, pool["available"][keep], seed)
        rows[label] = (stacking_proba(pv[keep], coef, icpt), stacking_proba(pt[keep], coef, icpt), None)
    rows["soft, 3 members"] = mix(np.concatenate([np.full(n_members, 1 / n_members), np.zeros(len(names) - n_members)]))
    kinds = sorted({n[len(n.split("@")[0].split("+")[0]) :] for n in names[n_members:]})
    for kind in kinds:  # each lever alone: the members plus one kind of candidate
        keep = np.array(
            [j < n_members or n.endswith(kind) and n[: -len(kind)] in pool["members"] for j, n in enumerate(names)]
        )
        if keep.sum() == n_members:
            continue
        w, _ = greedy_selection(pool["oob"][keep], pool["y_train"], pool["available"][keep], seed=seed)
        full_w = np.zeros(len(names))
        full_w[keep] = w
        rows[f"greedy, members + {kind}, OOB"] = mix(full_w)
    out = {}
    for name, (v, t, weights) in rows.items():
        out[name] = {"val": scores(yv, v, k), "test": scores(yt, t, k)}
        if weights is not None:
            out[name]["weights"] = {n: float(x) for n, x in weights.items() if x > 0}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--views", default="", help="eval views to add for every member (comma-separated)")
    p.add_argument("--out")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = {}
    for s, run in enumerate(args.runs):
        results[run] = compare(pool_of(run, [v for v in args.views.split(",") if v]), s)
        print(f"\n{run}")
        print(f"{'':42s} {'val F1':>7s} {'val LL':>7s} {'test F1':>8s} {'test LL':>8s}")
        for name, r in results[run].items():
            print(
                f"{name:42s} {r['val']['macro_f1']:7.4f} {r['val']['log_loss']:7.4f} "
                f"{r['test']['macro_f1']:8.4f} {r['test']['log_loss']:8.4f}"
            )
    if len(args.runs) > 1:
        print("\nmean over runs (test macro-F1)")
        for name in results[args.runs[0]]:
            key = name if all(name in r for r in results.values()) else None
            if key:
                print(f"{name:42s} {np.mean([r[key]['test']['macro_f1'] for r in results.values()]):.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
