"""Reports: metrics.json, report.md, confusion-matrix heatmaps, misclassified-image CSVs."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .combiners import combine
from .metrics import classification_report
from .run import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


def evaluate_split(member_proba: np.ndarray, y: np.ndarray, classes: Sequence[str],
                   names: Sequence[str], strategy: str,
                   weights: Sequence[float] | None = None) -> dict[str, dict]:
    """Metrics of every member and of the combined ensemble on one labelled split.

    Also returns each one's predictions and probabilities under ``"_pred"``/``"_proba"``
    (dropped before writing JSON).
    """
    out = {}
    for name, proba in zip(names, member_proba):
        pred = proba.argmax(axis=1)
        out[name] = classification_report(y, pred, proba, classes) | {"_pred": pred, "_proba": proba}
    pred, proba = combine(member_proba, strategy, weights)
    out[ENSEMBLE] = classification_report(y, pred, proba, classes) | {"_pred": pred, "_proba": proba}
    return out


def _public(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def build_metrics(classes: Sequence[str], names: Sequence[str], splits: dict[str, dict],
                  oob: dict | None, strategy: str, weights) -> dict:
    """The ``metrics.json`` document: members -> name -> split -> metrics; ensemble -> split."""
    doc: dict = {"classes": list(classes), "strategy": strategy, "weights": weights,
                 "members": {n: {} for n in names}, ENSEMBLE: {}}
    for split, results in splits.items():
        for who, metrics in results.items():
            target = doc[ENSEMBLE] if who == ENSEMBLE else doc["members"][who]
            target[split] = _public(metrics)
    if oob is not None:
        for n in names:
            if oob["members"].get(n) is not None:
                doc["members"][n]["oob"] = oob["members"][n]
        if oob.get(ENSEMBLE) is not None:
            doc[ENSEMBLE]["oob"] = oob[ENSEMBLE]
            doc[ENSEMBLE]["oob"]["n_excluded"] = oob["n_excluded"]
    return doc


def summary_rows(doc: dict) -> list[list[str]]:
    """Table rows: who, then accuracy / macro-F1 for each split present, OOB macro-F1."""
    splits = [s for s in ("val", "test") if s in doc[ENSEMBLE]]
    header = ["model"] + [f"{s} {m}" for s in splits for m in ("acc", "macro-F1", "weighted-F1")]
    header += ["OOB macro-F1"]
    rows = [header]
    entries = list(doc["members"].items()) + [(f"{ENSEMBLE} ({doc['strategy']})", doc[ENSEMBLE])]
    for who, per in entries:
        row = [who]
        for s in splits:
            m = per.get(s, {})
            row += [f"{m.get('accuracy', float('nan')):.4f}", f"{m.get('macro_f1', float('nan')):.4f}",
                    f"{m.get('weighted_f1', float('nan')):.4f}"]
        oob = per.get("oob")
        row.append(f"{oob['macro_f1']:.4f}" if oob else "-")
        rows.append(row)
    return rows


def format_table(rows: list[list[str]], markdown: bool = False) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _slug(who: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in who)


def misclassified_csv(paths: Sequence[str], y: np.ndarray, pred: np.ndarray, proba: np.ndarray,
                      classes: Sequence[str]) -> str:
    """Every misclassified image: a false negative of ``true`` and a false positive of ``predicted``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "true", "predicted", "confidence", "true_class_probability"])
    wrong = np.flatnonzero(pred != y)
    order = sorted(wrong, key=lambda i: (y[i], -proba[i, pred[i]]))
    for i in order:
        w.writerow([paths[i], classes[y[i]], classes[pred[i]], f"{proba[i, pred[i]]:.4f}",
                    f"{proba[i, y[i]]:.4f}"])
    return buf.getvalue()


def heatmap_png(cm: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """Confusion-matrix heatmap: colour = row-normalised share, text = count and share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import normalize_rows

    norm = normalize_rows(np.asarray(cm))
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 1.8), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i][j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(out_dir: str | Path, doc: dict, splits: dict[str, dict],
                 split_data: dict[str, tuple[Sequence[str], np.ndarray]],
                 extra_md: str = "") -> Path:
    """Write metrics.json, report.md, heatmaps and misclassified CSVs into ``out_dir``."""
    out = Path(out_dir)
    classes = doc["classes"]
    atomic_write_json(out / "metrics.json", doc)
    md = ["# effens report", "", f"Classes: {', '.join(classes)}. Strategy: **{doc['strategy']}**"
          + (f", weights {doc['weights']}" if doc.get("weights") else "") + ".", "",
          format_table(summary_rows(doc), markdown=True), ""]
    oob = doc[ENSEMBLE].get("oob")
    if oob:
        md += [f"OOB: ensemble scored on {oob['n']} training images left out by at least one member "
               f"({oob['n_excluded']} excluded: every member saw them).", ""]
    if extra_md:
        md += [extra_md, ""]
    for split, results in splits.items():
        paths, y = split_data[split]
        md += [f"## {split}", ""]
        for who, metrics in results.items():
            slug = _slug(who)
            cm = np.asarray(metrics["confusion_matrix"])
            png = f"confusion_{slug}_{split}.png"
            atomic_write_bytes(out / png, heatmap_png(cm, classes, f"{who} - {split}"))
            mis = f"misclassified_{slug}_{split}.csv"
            atomic_write_text(out / mis, misclassified_csv(paths, y, metrics["_pred"], metrics["_proba"],
                                                           classes))
            md += [f"### {who}", "",
                   f"accuracy {metrics['accuracy']:.4f} · balanced accuracy "
                   f"{metrics['balanced_accuracy']:.4f} · macro-F1 {metrics['macro_f1']:.4f} · "
                   f"weighted-F1 {metrics['weighted_f1']:.4f} · log loss {metrics['log_loss']:.4f} · "
                   f"ECE {metrics['ece']:.4f}", "",
                   "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
            md += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                   for c, v in metrics["per_class"].items()]
            md += ["", "Confusion matrix (rows = true, columns = predicted):", "",
                   "| true \\ predicted | " + " | ".join(classes) + " |",
                   "|---" * (len(classes) + 1) + "|"]
            md += [f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                   for c, row in zip(classes, metrics["confusion_matrix"])]
            md += ["", f"![{who} {split}]({png}) · misclassified images: [{mis}]({mis})", ""]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return out
