"""The run card (``report/card.md``, also a section of ``report.md`` and ``index.html``): what
the model is for, its classes and data (sizes per split, content fingerprints), members and
their settings, metrics with bootstrap intervals, calibration and coverage, known limits
(the ones the user states and the ones measured here) and how to reproduce it.

:func:`card_facts` gathers the numbers into ``metrics.json``'s ``card``; :func:`card_lines`
renders them (``report.run_card`` shows them as a section); pure apart from hashing the data
files in :func:`data_summary`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..metrics import macro_f1

#: bootstrap resamples for the card's intervals (seeded: the same run gives the same card)
RESAMPLES = 1000


def fingerprints(paths: Sequence[str], labels: Sequence[str]) -> tuple[str, str]:
    """(content, ordered): SHA-256 over the (file SHA-256, label) pairs sorted (the same images
    and labels give the same fingerprint wherever the folder lives and whatever the files are
    called) and in the split's order (which a run's per-image arrays, its OOB votes, follow)."""
    from ..files import file_digest, sha256_json

    pairs = [[file_digest(str(p)), str(lab)] for p, lab in zip(paths, labels)]
    return sha256_json(sorted(pairs)), sha256_json(pairs)


def data_summary(data, sources: dict[str, str]) -> dict:
    """Per split: where it came from, its size per class and its content fingerprints."""
    out = {}
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        if part is None:
            continue
        content, ordered = fingerprints(part.paths, part.labels)
        out[split] = {
            "source": sources.get(split, ""),
            "images": len(part),
            "per_class": {c: int(sum(1 for lab in part.labels if lab == c)) for c in data.classes},
            "fingerprint": content[:16],
            "ordered_fingerprint": ordered[:16],
        }
    return out


def bootstrap_interval(
    y: np.ndarray, pred: np.ndarray, n_classes: int, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of macro-F1 and accuracy (images resampled)."""
    rng = np.random.default_rng(seed)
    n = len(y)
    f1s, accs = np.empty(RESAMPLES), np.empty(RESAMPLES)
    for b in range(RESAMPLES):
        i = rng.integers(0, n, n)
        f1s[b] = macro_f1(y[i], pred[i], n_classes)
        accs[b] = float(np.mean(y[i] == pred[i]))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        "macro_f1": [round(float(np.percentile(f1s, lo)), 4), round(float(np.percentile(f1s, hi)), 4)],
        "accuracy": [round(float(np.percentile(accs, lo)), 4), round(float(np.percentile(accs, hi)), 4)],
    }


def _member_row(spec, meta: dict) -> dict:
    t = spec.train
    return {
        "name": spec.name,
        "model": spec.model,
        "weights": spec.weights,
        "image_size": spec.image_size,
        "view": spec.view,
        "bagging": f"ratio {spec.bagging.ratio}, "
        f"{'with' if spec.bagging.replace else 'without'} replacement"
        + (", stratified" if spec.bagging.stratify else ""),
        "training": f"{t.epochs} epochs, lr {t.lr}, batch {t.batch_size}, augment {t.augment or 'none'}"
        + (f", robust {t.robust}" if t.robust != "none" else "")
        + (f", {t.lp_epochs} linear-probe epochs" if t.lp_epochs else "")
        + f", keeps {t.select}",
        "best_epoch": meta.get("best_epoch"),
        "precision": meta.get("precision"),
    }


def measured_limits(doc: dict, intervals: dict) -> list[str]:
    """What the run's own figures say it does badly, one sentence each."""
    out = []
    ens = doc.get("ensemble") or {}
    strategy = doc.get("strategy")
    val, test = ens.get("val"), ens.get("test")
    if val and test and "test" in intervals:
        hi = intervals["test"].get("ensemble", {}).get("macro_f1", [None, None])[1]
        if hi is not None and hi < val["macro_f1"]:
            out.append(
                f"Macro-F1 falls from {val['macro_f1']:.3f} on val to {test['macro_f1']:.3f} on test (test's "
                f"95% interval ends at {hi:.3f}): the test photos differ from those it learned from; expect "
                f"the same on photos from another source."
            )
    for split, res in (("val", val), ("test", test)):
        if res:
            recall = {c: v["recall"] for c, v in res["per_class"].items() if v.get("support", 1) > 0}
            worst = min(recall, key=lambda c: recall[c]) if recall else None
            if worst is not None and recall[worst] < 0.7:
                out.append(f"On {split}, only {recall[worst]:.0%} of the {worst} images are recognised (recall).")
            if res.get("ece") is not None and res["ece"] > 0.1:
                out.append(
                    f"Probabilities on {split} are off by {res['ece']:.2f} on average (ECE): read them as "
                    f"scores, or set `combiner.calibrate: true`."
                )
    splits = (doc.get("decisions") or {}).get("splits") or {}
    for split, parts in splits.items():
        for level, c in ((parts or {}).get("coverage") or {}).items():
            if isinstance(c, dict) and c.get("below_target") and "coverage" in c:
                out.append(
                    f"Prediction sets meant to hold the true class {float(level):.0%} of the time hold it "
                    f"{c['coverage']:.0%} of the time on {split} (coverage falls on photos unlike the "
                    f"calibration images)."
                )
    if val:
        best = max(
            ((m, v["val"]["macro_f1"]) for m, v in (doc.get("members") or {}).items() if "val" in v),
            key=lambda t: t[1],
            default=None,
        )
        if best and best[1] > val["macro_f1"]:
            out.append(
                f"On val the ensemble ({strategy}, {val['macro_f1']:.3f}) is below its best member "
                f"{best[0]} ({best[1]:.3f})."
            )
        if val["n"] < 200:
            out.append(
                f"Val holds {val['n']} images: one image moves macro-F1 by about {1 / val['n']:.3f}, so "
                f"differences inside the metrics' intervals are noise."
            )
    shortcuts = doc.get("shortcuts") or {}
    if shortcuts.get("findings"):
        out.append(
            "Properties of the files that are not their content predict the label on train, so the members "
            "may learn the camera instead of the content: "
            + "; ".join(shortcuts["findings"][:3])
            + ". `effens audit` shows them per class; a member's `render:` trains without them."
        )
    oob = ens.get("oob")
    if oob and oob.get("n_excluded"):
        out.append(f"{oob['n_excluded']} training images were seen by every member and have no out-of-bag score.")
    for split, skipped in (doc.get("skipped_images") or {}).items():
        if skipped:
            out.append(f"{len(skipped)} unreadable {split} image(s) were skipped.")
    return out


def card_facts(cfg, ens, splits: dict[str, dict], split_data: dict, doc: dict, command: str) -> dict:
    """``metrics.json``'s ``card``: everything :func:`card_lines` shows."""
    from .. import __version__

    n_classes = len(doc["classes"])
    intervals: dict[str, dict] = {}
    for split, results in splits.items():
        y = np.asarray(split_data[split][1])
        whos = [fm.name for fm in ens.members_] + [doc["strategy"]]
        intervals[split] = {
            ("ensemble" if who == doc["strategy"] else who): bootstrap_interval(y, results[who]["_pred"], n_classes)
            for who in whos
            if who in results
        }
    metas = {fm.name: fm.meta for fm in ens.members_}
    return {
        "purpose": cfg.report.purpose,
        "stated_limits": list(cfg.report.limits),
        "members": [_member_row(spec, metas.get(spec.name, {})) for spec in cfg.members],
        "intervals": intervals,
        "measured_limits": measured_limits(doc, intervals),
        "reproduce": {
            "command": command,
            "effens": __version__,
            "seed": cfg.seed,
            "versions": (ens.members_[0].meta.get("versions") if ens.members_ else None),
        },
    }


def _interval(iv: dict | None, key: str) -> str:
    return f" [{iv[key][0]:.3f}, {iv[key][1]:.3f}]" if iv and key in iv else ""


def card_lines(doc: dict) -> list[str]:
    """The card as Markdown lines (empty for a document without one, e.g. ``evaluate``'s)."""
    from ..runfolder import CONFIG_NAME

    card = doc.get("card")
    if not card:
        return []
    classes = doc["classes"]
    md = [
        "## Run card",
        "",
        f"**What it is for.** {card.get('purpose') or 'Not stated (set `report.purpose`).'}",
        "",
        f"**Classes.** {', '.join(classes)}. Default strategy: {doc['strategy']}.",
        "",
        "**Data.**",
        "",
        "| split | images | " + " | ".join(classes) + " | content fingerprint | source |",
        "|---|---|" + "---|" * len(classes) + "---|---|",
    ]
    for split, d in (doc.get("data_summary") or {}).items():
        md.append(
            f"| {split} | {d['images']} | "
            + " | ".join(str(d["per_class"].get(c, 0)) for c in classes)
            + f" | `{d['fingerprint']}` | {d['source']} |"
        )
    changes = doc.get("data_changes") or {}
    if changes:
        from ..data import describe_changes

        md += ["", f"Changed by `data.exclude` / `data.relabel`: {describe_changes(changes)}."]
    md += [
        "",
        "**Members.**",
        "",
        "| member | model | weights | size | view | bagging | training | best epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {m['name']} | {m['model']} | {m['weights']} | {m['image_size'] or 'default'} | {m['view']} | "
        f"{m['bagging']} | {m['training']} | {m['best_epoch']} |"
        for m in card["members"]
    ]
    md += [
        "",
        "**Metrics** (95% bootstrap intervals over images).",
        "",
        "| split | who | macro-F1 | accuracy | log loss | ECE |",
        "|---|---|---|---|---|---|",
    ]
    ens = doc.get("ensemble") or {}
    for split, per in card["intervals"].items():
        for who, iv in per.items():
            m = ens.get(split) if who == "ensemble" else (doc.get("members") or {}).get(who, {}).get(split)
            if not m:
                continue
            label = f"ensemble ({doc['strategy']})" if who == "ensemble" else who
            md.append(
                f"| {split} | {label} | {m['macro_f1']:.3f}{_interval(iv, 'macro_f1')} | "
                f"{m['accuracy']:.3f}{_interval(iv, 'accuracy')} | {m['log_loss']:.3f} | {m['ece']:.3f} |"
            )
    if ens.get("oob"):
        o = ens["oob"]
        md.append(
            f"| OOB ({o['n']} training images) | ensemble ({doc['strategy']}) | {o['macro_f1']:.3f} | "
            f"{o['accuracy']:.3f} | {o['log_loss']:.3f} | {o['ece']:.3f} |"
        )
    cover = []
    for split, parts in ((doc.get("decisions") or {}).get("splits") or {}).items():
        for level, c in ((parts or {}).get("coverage") or {}).items():
            if isinstance(c, dict) and "coverage" in c:
                cover.append(
                    f"{split} {float(level):.0%} -> {c['coverage']:.1%} (mean set size {c['mean_set_size']:.2f})"
                )
    if cover:
        md += ["", "**Coverage of prediction sets** (target -> measured): " + "; ".join(cover) + "."]
    limits = list(card.get("stated_limits") or []) + list(card.get("measured_limits") or [])
    md += ["", "**Known limits.**", ""] + ([f"- {x}" for x in limits] or ["- none measured"])
    rep = card["reproduce"]
    versions = rep.get("versions") or {}
    md += [
        "",
        "**Reproduce.**",
        "",
        f"    {rep['command']}",
        "",
        f"with this run's `{CONFIG_NAME}` (seed {rep['seed']}), effens {rep['effens']}"
        + "".join(f", {k} {v}" for k, v in versions.items() if k not in ("effens",))
        + ".",
        "",
    ]
    return md
