"""Reports: metrics.json, report.md, confusion-matrix heatmaps, misclassified-image CSVs.

Pure: :func:`build_metrics`, :func:`draw_figures` and :func:`render_report` turn scores
(from :mod:`ensemble.reporting.evaluation`) into file contents; the caller writes them (the run
folder, or ``evaluate``'s output folder). A new figure is one function registered with
``@split_figure`` (once per split) or ``@model_figure`` (per member and strategy), a new
section one ``@report_section`` function giving Markdown: ``report.md`` and ``index.html``
both show every registered figure and section (the page converts the section's Markdown).
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import logging
from typing import Callable, Sequence
from urllib.parse import quote

import numpy as np

from members.registry import Registry

from ..combining.pool import member_of
from ..runfolder import METRICS_NAME, REPORT_NAME

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


def _public(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def build_metrics(
    classes: Sequence[str],
    names: Sequence[str],
    splits: dict[str, dict],
    oob: dict | None,
    combiner,
    strategy: str | None = None,
    labels: dict[str, np.ndarray] | None = None,
) -> dict:
    """The ``metrics.json`` document.

    ``members`` -> name -> split -> metrics; ``strategies`` -> strategy -> split ->
    metrics; ``ensemble`` -> split -> metrics of the run's default strategy; with
    ``labels`` (split -> y), ``diversity`` -> split -> every pair of members.
    """
    from ..metrics import leave_one_out, pairwise_diversity

    strategy = strategy or combiner.strategy
    doc: dict = {
        "classes": list(classes),
        "strategy": strategy,
        "combiner": combiner.summary(),
        "members": {n: {} for n in names},
        "strategies": {},
        ENSEMBLE: {},
    }
    for split, results in splits.items():
        for who, metrics in results.items():
            target = doc["members"][who] if who in doc["members"] else doc["strategies"].setdefault(who, {})
            target[split] = _public(metrics)
    if oob is not None:
        for n in names:
            if oob["members"].get(n) is not None:
                doc["members"][n]["oob"] = oob["members"][n]
        for name, metrics in oob["strategies"].items():
            if metrics is not None and name in doc["strategies"]:
                doc["strategies"][name]["oob"] = dict(metrics, n_excluded=oob["n_excluded"])
    doc[ENSEMBLE] = doc["strategies"].get(strategy, {})
    if labels:
        doc["diversity"] = {
            split: pairwise_diversity(np.stack([results[n]["_pred"] for n in names]), labels[split], names)
            for split, results in splits.items()
            if split in labels and len(names) > 1
        }
        doc["contributions"] = {
            split: leave_one_out(np.stack([results[n]["_proba"] for n in names]), labels[split], names)
            for split, results in splits.items()
            if split in labels and len(names) > 1
        }
    return doc


def summary_rows(doc: dict) -> list[list[str]]:
    """Table rows: members then strategies (* = the run's default), per split, OOB (marked
    in-sample for a strategy fitted on the OOB images)."""
    first = next(iter(doc["strategies"].values()), doc[ENSEMBLE])
    splits = [s for s in ("val", "test") if s in first]
    header = ["model"] + [f"{s} {m}" for s in splits for m in ("acc", "macro-F1", "weighted-F1")]
    header += ["OOB macro-F1"]
    rows = [header]
    on_oob = set(doc.get("combiner", {}).get("fitted_on_oob", []))
    entries = [(name, m, False) for name, m in doc["members"].items()]
    entries += [
        (f"{ENSEMBLE} {s}" + (" *" if s == doc["strategy"] else ""), m, s in on_oob)
        for s, m in doc["strategies"].items()
    ]
    for who, per, in_sample in entries:
        row = [who]
        for s in splits:
            m = per.get(s, {})
            row += [
                f"{m.get('accuracy', float('nan')):.4f}",
                f"{m.get('macro_f1', float('nan')):.4f}",
                f"{m.get('weighted_f1', float('nan')):.4f}",
            ]
        oob = per.get("oob")
        row.append(f"{oob['macro_f1']:.4f}" + (" (in-sample)" if in_sample else "") if oob else "-")
        rows.append(row)
    return rows


def comparison_rows(results: dict[str, dict]) -> list[list[str]]:
    """One split, every member and strategy side by side."""
    rows = [["model", "acc", "bal-acc", "macro-F1", "weighted-F1", "log loss", "ECE"]]
    for who, m in results.items():
        rows.append(
            [who]
            + [f"{m[k]:.4f}" for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "log_loss", "ece")]
        )
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


def misclassified_csv(
    paths: Sequence[str], y: np.ndarray, pred: np.ndarray, proba: np.ndarray, classes: Sequence[str]
) -> str:
    """Every misclassified image: a false negative of ``true`` and a false positive of ``predicted``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "true", "predicted", "confidence", "true_class_probability"])
    wrong = np.flatnonzero(pred != y)
    order = sorted(wrong.tolist(), key=lambda i: (y[i], -proba[i, pred[i]]))
    for i in order:
        w.writerow([paths[i], classes[y[i]], classes[pred[i]], f"{proba[i, pred[i]]:.4f}", f"{proba[i, y[i]]:.4f}"])
    return buf.getvalue()


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """Render a figure to PNG bytes and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def heatmap_png(cm: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """Confusion-matrix heatmap: colour = row-normalised share, text = count and share."""
    from ..metrics import normalize_rows

    plt = pyplot()
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
            ax.text(
                j,
                i,
                f"{cm[i][j]}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return png_bytes(fig)


def reliability_png(y: np.ndarray, curves: dict[str, np.ndarray], title: str, n_bins: int = 10) -> bytes:
    """Reliability diagram: accuracy against confidence per bin, one line per model."""
    fig, ax = pyplot().subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    for who, proba in curves.items():
        conf, correct = proba.max(1), proba.argmax(1) == y
        bins = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
        xs = [conf[bins == b].mean() for b in range(n_bins) if (bins == b).any()]
        ys = [correct[bins == b].mean() for b in range(n_bins) if (bins == b).any()]
        ax.plot(xs, ys, "o-", ms=3, label=who)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return png_bytes(fig)


def training_curves_png(histories: dict[str, tuple[list[dict], int | None]]) -> bytes:
    """Train loss, val macro-F1 and val log loss per epoch, a line per member, the kept epoch marked."""
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 3.6), dpi=100)
    for name, (history, best) in histories.items():
        epochs = [h["epoch"] for h in history]
        for ax, key in zip(axes, ("train_loss", "val_macro_f1", "val_log_loss")):
            (line,) = ax.plot(epochs, [h[key] for h in history], marker=".", lw=1.2, label=name)
            kept = [h[key] for h in history if h["epoch"] == best]
            if kept:
                ax.plot([best], kept, marker="*", ms=13, color=line.get_color(), ls="none")
    for ax, title in zip(axes, ("train loss", "val macro-F1", "val log loss")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return png_bytes(fig)


# ---------------------------------------------------------------- figures: one registered function each
@dataclasses.dataclass
class Attachment:
    """A file the report writes and the Markdown that shows or links it."""

    name: str
    data: bytes | str
    markdown: str
    #: how ``index.html`` shows it; empty: the picture itself for an image file, else a link
    html: str = ""

    def as_html(self) -> str:
        if self.html:
            return self.html
        src, text = quote(self.name), html.escape(self.name)
        if self.name.lower().endswith((".png", ".jpg", ".jpeg", ".svg", ".webp", ".gif")):
            return f'<img class="figure" src="{src}" alt="{text}">'
        return f'<a href="{src}">{text}</a>'


@dataclasses.dataclass
class SplitView:
    """What a figure may draw from: one labelled split's scores (members and strategies)."""

    split: str
    results: dict[str, dict]  # who -> metrics with _pred, _proba, _probabilities
    paths: Sequence[str]
    y: np.ndarray
    classes: list[str]
    doc: dict  # the metrics.json document (strategy, decisions, ...)


SPLIT_FIGURES: Registry[Callable[[SplitView], Attachment | None]] = Registry("split figure")
MODEL_FIGURES: Registry[Callable[[SplitView, str], Attachment]] = Registry("model figure")
SECTIONS: Registry[Callable[[dict], list[str]]] = Registry("report section")


def report_section(fn: Callable[[dict], list[str]]) -> Callable[[dict], list[str]]:
    """Register a Markdown section drawn from the metrics document (after the summary, in
    ``report.md`` and, converted, in ``index.html``)."""
    SECTIONS.add(fn.__name__, fn)
    return fn


def split_figure(fn: Callable[[SplitView], Attachment | None]) -> Callable[[SplitView], Attachment | None]:
    """Register a figure drawn once per split (shown under the split's table)."""
    SPLIT_FIGURES.add(fn.__name__, fn)
    return fn


def model_figure(fn: Callable[[SplitView, str], Attachment]) -> Callable[[SplitView, str], Attachment]:
    """Register a figure drawn per member and strategy on each split (shown in its section)."""
    MODEL_FIGURES.add(fn.__name__, fn)
    return fn


@split_figure
def reliability_figure(view: SplitView) -> Attachment:
    """Reliability diagram: accuracy against confidence of every member and strategy that gives probabilities."""
    rel = f"reliability_{view.split}.png"
    curves = {who: m["_proba"] for who, m in view.results.items() if m["_probabilities"]}
    return Attachment(
        rel, reliability_png(view.y, curves, f"reliability - {view.split}"), f"![reliability {view.split}]({rel})"
    )


@split_figure
def risk_coverage_figure(view: SplitView) -> Attachment | None:
    """Accuracy of the kept images against the share kept (most confident first), for the
    strategy decisions use, with the review thresholds chosen on the calibration images."""
    dec = view.doc.get("decisions") or {}
    who = dec.get("strategy", view.doc.get("strategy"))
    if who not in view.results:
        return None
    from ..combining.decisions import confidence, risk_coverage

    proba = view.results[who]["_proba"]
    conf = confidence(proba)
    kept, acc = risk_coverage(conf, view.results[who]["_pred"] == view.y)
    fig, ax = pyplot().subplots(figsize=(5.5, 4), dpi=100)
    ax.plot(kept, acc, lw=1.5, label=f"{who}: kept most confident first")
    for rate, r in (dec.get("splits", {}).get(view.split, {}).get("review") or {}).items():
        share = 1 - r["reviewed"]
        ax.axvline(share, ls=":", lw=1, color="grey")
        ax.annotate(
            f"review {float(rate):.0%} (on calibration)",
            (share, r["accuracy_kept"]),
            fontsize=7,
            rotation=90,
            va="bottom",
        )
    ax.set_xlabel("share of images kept (not sent to review)")
    ax.set_ylabel("accuracy of kept images")
    ax.set_xlim(0, 1)
    ax.set_title(f"risk-coverage - {view.split}", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    name = f"risk_coverage_{view.split}.png"
    return Attachment(name, png_bytes(fig), f"![risk-coverage {view.split}]({name})")


@report_section
def decisions_section(doc: dict) -> list[str]:
    """Prediction-set coverage, review and costs per split (see :mod:`ensemble.combining.decisions`)."""
    dec = doc.get("decisions")
    if not dec:
        return []
    md = [
        "## Decisions",
        "",
        f"Strategy **{dec['strategy']}**; prediction sets and review thresholds fitted on "
        f"{dec['n_calibration']} {dec['calibration']} images"
        + (" (conformal per class)" if dec.get("by_class") else "")
        + "."
        + (
            f" The strategy was fitted on {dec['calibration']} too: its figures there are in-sample."
            if dec.get("in_sample")
            else ""
        ),
        "",
    ]
    cov_keys = sorted({k for r in dec["splits"].values() for k in r["coverage"]}, key=float)
    rate_keys = sorted({k for r in dec["splits"].values() for k in r["review"]}, key=float)
    rows = [
        ["split"]
        + [f"coverage @{k} (set size)" for k in cov_keys]
        + [f"acc. kept @review {float(k):.0%} (reviewed)" for k in rate_keys]
    ]
    warnings = []
    for split, r in dec["splits"].items():
        row = [split]
        for k in cov_keys:
            c = r["coverage"].get(k, {})
            row.append(f"{c['coverage']:.3f} ({c['mean_set_size']:.2f})" if "coverage" in c else "n/a")
            if c.get("below_target"):
                warnings.append(
                    f"- {split}: coverage {c['coverage']:.3f} is below the target {float(k):g}; "
                    f"these images are not exchangeable with the calibration images "
                    f"(another source, another shift), so the guarantee does not hold for them."
                )
            if "error" in c:
                warnings.append(f"- {split}: coverage {k}: {c['error']}")
        row += [f"{r['review'][k]['accuracy_kept']:.3f} ({r['review'][k]['reviewed']:.0%})" for k in rate_keys]
        rows.append(row)
    md += [format_table(rows, markdown=True), ""]
    if warnings:
        md += warnings + [""]
    cost_rows = [["split", "rule", "expected cost", "realised cost", "accuracy"]]
    for split, r in dec["splits"].items():
        for rule, c in (r.get("costs") or {}).items():
            cost_rows.append(
                [split, rule, f"{c['expected_cost']:.4f}", f"{c['realised_cost']:.4f}", f"{c['accuracy']:.4f}"]
            )
    if len(cost_rows) > 1:
        md += [
            f"Costs (true x predicted): {dec['costs']}; `min_cost` is what `predict` outputs.",
            "",
            format_table(cost_rows, markdown=True),
            "",
        ]
    return md


@report_section
def diversity_section(doc: dict) -> list[str]:
    """Pairwise disagreement, Q-statistic and error correlation of the members, per split."""
    div = doc.get("diversity") or {}
    if not div:
        return []
    rows = [["split", "pair", "disagreement", "Q-statistic", "error correlation"]]
    rows += [
        [
            split,
            f"{p['a']} / {p['b']}",
            f"{p['disagreement']:.3f}",
            f"{p['q_statistic']:.3f}",
            f"{p['error_correlation']:.3f}",
        ]
        for split, pairs in div.items()
        for p in pairs
    ]
    return [
        "## Diversity",
        "",
        "Members that err on different images are what an ensemble can fix (Q near 1: they err together).",
        "",
        format_table(rows, markdown=True),
        "",
        *contribution_markdown(doc),
    ]


def contribution_rows(doc: dict) -> list[list[str]]:
    """Each member's greedy weight and leave-one-out effect on the soft vote, per split."""
    by_name = (doc.get("combiner") or {}).get("greedy_weights") or {}
    weights: dict[str, float] = {}
    for name, w in by_name.items():  # a member's share with its pool candidates (`lite0@ema`, ...)
        member = member_of(name)
        weights[member] = weights.get(member, 0.0) + w
    rows = [["split", "member", "greedy weight", "soft vote macro-F1 gain", "soft vote log-loss gain"]]
    rows += [
        [
            split,
            c["member"],
            f"{weights[c['member']]:.3f}" if c["member"] in weights else "-",
            f"{c['macro_f1_gain']:+.4f}",
            f"{c['log_loss_gain']:+.4f}",
        ]
        for split, items in (doc.get("contributions") or {}).items()
        for c in items
    ]
    return rows


def contribution_markdown(doc: dict) -> list[str]:
    rows = contribution_rows(doc)
    if len(rows) < 2:
        return []
    return [
        "### What each member adds",
        "",
        "Gain: the soft vote of all members minus the soft vote without this "
        "member (macro-F1 up, log loss down: positive means the member helps); greedy weight: its share in "
        "the `greedy` strategy (fitted on OOB), with its pool candidates'.",
        "",
        format_table(rows, markdown=True),
        "",
    ]


@model_figure
def confusion_figure(view: SplitView, who: str) -> Attachment:
    """Confusion-matrix heatmap (rows true, columns predicted); the page links it beside its clickable table."""
    png = f"confusion_{_slug(who)}_{view.split}.png"
    cm = np.asarray(view.results[who]["confusion_matrix"])
    return Attachment(
        png,
        heatmap_png(cm, view.classes, f"{who} - {view.split}"),
        f"![{who} {view.split}]({png})",
        f'<a href="{quote(png)}">heatmap</a>',
    )  # the page's own table is clickable


@model_figure
def misclassified_list(view: SplitView, who: str) -> Attachment:
    """CSV of the misclassified images: path, true and predicted class, confidence."""
    mis = f"misclassified_{_slug(who)}_{view.split}.csv"
    m = view.results[who]
    return Attachment(
        mis,
        misclassified_csv(view.paths, view.y, m["_pred"], m["_proba"], view.classes),
        f"misclassified images: [{mis}]({mis})",
        f'<a href="{quote(mis)}">misclassified (CSV)</a>',
    )


def _choice_note(choice: dict) -> str:
    if "reason" in choice:
        return (
            f"Chosen by `strategy: auto` on {choice['n_val']} val + {choice.get('n_oob', 0)} OOB images: "
            f"{choice['reason']} (table below)."
        )
    scores = ", ".join(f"{n} {v:.4f}" for n, v in choice["scores"].items())
    return f"Chosen by `strategy: auto` on {choice['on']} macro-F1 ({scores})."


def choice_rows(choice: dict) -> list[list[str]]:
    """``strategy: auto``'s table: header row, then one row per strategy it compared."""
    metric = choice["metric"]
    head = [
        "strategy",
        f"held-out {metric}",
        "95% interval",
        "macro-F1",
        "95% interval",
        "difference to best",
        "SE of difference",
        "fitted values",
        "tie with best",
    ]
    rows = [head]
    for name, t in choice["table"].items():
        mark = " *" if name == choice["chosen"] else ""
        rows.append(
            [
                name + mark,
                f"{t[metric]:.4f}",
                "{:.4f} - {:.4f}".format(*t[f"{metric}_ci95"]),
                f"{t['macro_f1']:.4f}",
                "{:.4f} - {:.4f}".format(*t["macro_f1_ci95"]),
                f"{t['diff_to_best']:+.4f}",
                f"{t['se_of_diff']:.4f}",
                str(t["n_params"]),
                "yes" if t["tie"] else "no",
            ]
        )
    return rows


def choice_markdown(choice: dict) -> list[str]:
    """report.md's section on how `strategy: auto` chose (empty for older runs)."""
    if not choice or "table" not in choice:
        return []
    rows = choice_rows(choice)
    return [
        "## How the default strategy was chosen",
        "",
        f"Held-out images: {choice['n_val']} val and {choice['n_oob']} OOB (strategies fitted on OOB "
        f"cross-fitted in {choice['folds']} folds); intervals and standard errors from a paired bootstrap of "
        f"{choice['bootstrap']} resamples. Rule: the simplest strategy within {choice['se']:g} standard "
        f"error(s) of the best. {choice['reason']}.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(r) + " |" for r in rows[1:]),
        "",
    ]


def distill_rows(d: dict) -> list[list[str]]:
    """A distilled run's student beside its teacher and the teacher's best member, per split."""
    names = {
        "student": f"student ({d['student']['model']})",
        "teacher": f"teacher ({d['teacher']['strategy']})",
        "best_member": f"best member ({d.get('best_member')})",
    }
    rows = [["model", "split", "macro-F1 [95% interval]", "accuracy", "ECE", "log loss", "agrees with teacher"]]
    for split, per in d["splits"].items():
        for who, m in per.items():
            lo, hi = m["interval"]
            rows.append(
                [
                    names[who],
                    split,
                    f"{m['macro_f1']:.4f} [{lo:.4f}, {hi:.4f}]",
                    f"{m['accuracy']:.4f}",
                    f"{m['ece']:.4f}",
                    f"{m['log_loss']:.4f}",
                    f"{m['agreement']:.4f}",
                ]
            )
    return rows


#: what each `distill.teaching` means for the training images' labels, said in the report
TEACHING_NOTES = {
    "ensemble": "Training images were taught by the whole ensemble, so their teacher labels are in-sample: "
    "each member trained on {in_sample:.0%} of them (on average), and on those it is more confident and "
    "more often right than on a new photo (a wrong label it memorised, it teaches). The student learns "
    "the ensemble's fit to the training set rather than only its judgment of new photos; val and test "
    "below are out of sample for both.",
    "oob": "Training images were taught by their OOB vote: only the members that left an image out of their "
    "sample labelled it, which is what the ensemble says of a photo it never saw, from fewer members.",
}


@report_section
def distillation_section(doc: dict) -> list[str]:
    """A distilled run (``effens distill``): the student beside its teacher and the teacher's
    best member (macro-F1 with intervals, ECE, agreement per class), speed, what taught it."""
    d = doc.get("distill")
    if not d:
        return []
    t, cfg = d["teacher"], d["settings"]
    views = (
        f"{cfg['teacher_views']} augmented views of each image labelled once (epoch e trains on view e mod "
        f"{cfg['teacher_views']})"
        if cfg["teacher_views"]
        else "the very augmented view the student sees, labelled every step"
    )
    md = [
        "## Distillation",
        "",
        f"Student `{d['student']['model']}` ({d['student']['parameters']:,} parameters, {d['student']['image_size']} "
        f"px) taught by the `{t['strategy']}` vote of {t['run']} ({len(t['members'])} networks, "
        f"{d['teacher_parameters']:,} parameters used); temperature {cfg['temperature']:g}, soft weight "
        f"{cfg['soft_weight']:g} (labels {1 - cfg['soft_weight']:g}); the teacher labelled {views}."
        + (
            f" It started from the trained weights of member {d['start']['member']}, head included "
            f"(`distill.init`), rather than from its `weights:` source."
            if d.get("start")
            else ""
        ),
        "",
        TEACHING_NOTES[cfg["teaching"]].format(in_sample=d.get("in_sample_share", float("nan")))
        + (
            f" {d['oob']['taught_by_oob']} images were taught by their OOB vote, {d['oob']['taught_by_all']} "
            f"(in every member's sample) by all members."
            if d.get("oob")
            else ""
        ),
        "",
        format_table(distill_rows(d), markdown=True),
        "",
    ]
    sp = d.get("speed")
    if sp:
        md += [
            f"Speed ({sp['images']} val images, {sp['runtime']} on {sp['device']}, {sp['threads']} threads, "
            f"networks only): student {sp['student_images_per_s']:.1f} images/s, teacher "
            f"{sp['teacher_images_per_s']:.1f} images/s "
            f"({sp['student_images_per_s'] / max(sp['teacher_images_per_s'], 1e-9):.1f}x).",
            "",
        ]
    for split, per in d["splits"].items():
        classes = list(per["student"]["agreement_per_class"])
        rows = [["teacher predicts", "student agrees", "best member agrees"]]
        rows += [
            [c]
            + [
                ("-" if per[w]["agreement_per_class"][c] is None else f"{per[w]['agreement_per_class'][c]:.3f}")
                for w in ("student", "best_member")
            ]
            for c in classes
        ]
        md += [
            f"Agreement with the teacher per class it predicts ({split}):",
            "",
            format_table(rows, markdown=True),
            "",
        ]
    u = d.get("unlabelled") or {}
    if u.get("source"):
        gone = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in u["left_out"].items()) or "none"
        md += [
            f"Unlabelled photos from {u['source']}: {u['found']} found, {u['used']} taught by the teacher alone; "
            f"left out: {gone}.",
            "",
        ]
    md += [
        "Teacher member weights (SHA-256): " + ", ".join(f"{n} `{h[:12]}`" for n, h in t["members"].items() if h) + ".",
        "",
    ]
    return md


@dataclasses.dataclass
class Figures:
    """Every registered figure, drawn once for one split: report.md and index.html show these."""

    split: list[Attachment]  # the @split_figure ones, in registration order
    models: dict[str, list[Attachment]]  # member or strategy -> its @model_figure ones

    def files(self) -> dict[str, bytes | str]:
        return {a.name: a.data for a in [*self.split, *(a for v in self.models.values() for a in v)]}


def draw_figures(
    doc: dict, splits: dict[str, dict], split_data: dict[str, tuple[Sequence[str], np.ndarray]]
) -> dict[str, Figures]:
    """Split -> its figures (every registered figure function, once)."""
    out = {}
    for split, results in splits.items():
        paths, y = split_data[split]
        view = SplitView(split, results, paths, y, list(doc["classes"]), doc)
        out[split] = Figures(
            [a for a in (fig(view) for fig in SPLIT_FIGURES.values()) if a is not None],
            {who: [fig(view, who) for fig in MODEL_FIGURES.values()] for who in results},
        )
    return out


def render_report(
    doc: dict,
    splits: dict[str, dict],
    split_data: dict[str, tuple[Sequence[str], np.ndarray]],
    extra_md: str = "",
    figures: dict[str, Figures] | None = None,
) -> dict[str, bytes | str | dict]:
    """File name -> contents: metrics.json, report.md and every figure (heatmaps, reliability
    diagrams, misclassified CSVs, ...). ``splits``: split -> :func:`ensemble.reporting.evaluation.evaluate_split`;
    ``figures``: from :func:`draw_figures` (drawn here when not given)."""
    figures = figures if figures is not None else draw_figures(doc, splits, split_data)
    files: dict[str, bytes | str | dict] = {METRICS_NAME: doc}
    classes = doc["classes"]
    comb = doc.get("combiner", {})
    md = [
        "# effens report",
        "",
        "Open [index.html](index.html) in a browser for clickable confusion matrices with the images in each cell.",
        "",
        " ".join(
            [f"Classes: {', '.join(classes)}. Default strategy: **{doc['strategy']}** (marked *)."]
            + ([_choice_note(comb["choice"])] if comb.get("choice") else [])
            + comb.get("notes", [])
            + ([f"Temperatures: {comb['temperatures']}."] if comb.get("temperatures") else [])
            + (
                ["Validation figures of combiners fitted on val are in-sample (optimistic)."]
                if comb.get("fitted_on_val")
                else []
            )
            + (
                ["Members' BatchNorm statistics were re-estimated on these images (`--adapt-bn`)."]
                if (doc.get("inference") or {}).get("adapt_bn")
                else []
            )
        ),
        "",
        format_table(summary_rows(doc), markdown=True),
        "",
        *choice_markdown(comb.get("choice")),
    ]
    oob = doc[ENSEMBLE].get("oob")
    if oob:
        md += [
            f"OOB: ensemble scored on {oob['n']} training images left out by at least one member "
            f"({oob['n_excluded']} excluded: every member saw them).",
            "",
        ]
    if extra_md:
        md += [extra_md, ""]
    for section in SECTIONS.values():
        md += section(doc)
    for split, results in splits.items():
        shown = figures[split].split
        files.update(figures[split].files())
        md += [
            f"## {split}",
            "",
            format_table(comparison_rows(results), markdown=True),
            "",
            *(a.markdown for a in shown),
            "",
        ]
        for who, metrics in results.items():
            md += [
                f"### {who}",
                "",
                f"accuracy {metrics['accuracy']:.4f} · balanced accuracy "
                f"{metrics['balanced_accuracy']:.4f} · macro-F1 {metrics['macro_f1']:.4f} · "
                f"weighted-F1 {metrics['weighted_f1']:.4f} · log loss {metrics['log_loss']:.4f} · "
                f"ECE {metrics['ece']:.4f}",
                "",
                "| class | precision | recall | F1 | support |",
                "|---|---|---|---|---|",
            ]
            md += [
                f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                for c, v in metrics["per_class"].items()
            ]
            md += [
                "",
                "Confusion matrix (rows = true, columns = predicted):",
                "",
                "| true \\ predicted | " + " | ".join(classes) + " |",
                "|---" * (len(classes) + 1) + "|",
            ]
            md += [
                f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                for c, row in zip(classes, metrics["confusion_matrix"])
            ]
            attached = figures[split].models[who]
            md += ["", " · ".join(a.markdown for a in attached), ""]
    files[REPORT_NAME] = "\n".join(md) + "\n"
    return files


@report_section
def run_card(doc: dict) -> list[str]:
    """The run card as a report section (report.md and index.html)."""
    from .card import card_lines

    return card_lines(doc)
