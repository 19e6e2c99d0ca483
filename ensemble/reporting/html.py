"""``report/index.html``: one self-contained page per run (no network, inline CSS and JS).

Summary tables, per-class P/R/F1 and the confusion matrices are static HTML (so they read
without JavaScript and tests can parse them); a click on a confusion cell shows, from the
data embedded in the page, a paged gallery of exactly the images in that cell (thumbnail,
file name, true and predicted class, confidence, each member's vote, saliency when made),
most confident first. Also: images the ensemble fixed or broke against the best member,
training curves, and every registered report section and figure (:mod:`ensemble.reporting.markdown`'s
registries; a section's Markdown is converted by :func:`markdown_html`). Pure: returns file
contents; every name, path and number is escaped (HTML) or quoted (URLs).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from typing import Sequence
from urllib.parse import quote

import numpy as np

PAGE = 48  # gallery cards per page


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def href(target: str, base: str) -> str:
    """A relative, URL-quoted link from folder ``base`` to file ``target``."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(base))
    return quote(rel.replace(os.sep, "/"), safe="/")


def _num(v, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def summary_table(doc: dict) -> str:
    keys = [
        ("accuracy", "acc"),
        ("balanced_accuracy", "bal-acc"),
        ("macro_f1", "macro-F1"),
        ("weighted_f1", "weighted-F1"),
        ("log_loss", "log loss"),
        ("ece", "ECE"),
    ]
    splits = [
        s
        for s in ("val", "test", "eval", "oob")
        if any(s in per for per in list(doc["members"].values()) + list(doc["strategies"].values()))
    ]
    head = "".join(f"<th>{_e(s)} {_e(label)}</th>" for s in splits for _, label in keys)
    on_oob = set(doc.get("combiner", {}).get("fitted_on_oob", []))
    rows, marked = [], False
    for kind, entries in (("member", doc["members"]), ("strategy", doc["strategies"])):
        for who, per in entries.items():
            mark = " *" if kind == "strategy" and who == doc["strategy"] else ""
            cells = ""
            for s in splits:
                in_sample = s == "oob" and kind == "strategy" and who in on_oob and "oob" in per
                marked |= in_sample
                for k, _ in keys:
                    value = _num(per.get(s, {}).get(k))
                    cells += f'<td class="in-sample">{value}†</td>' if in_sample else f"<td>{value}</td>"
            rows.append(f'<tr class="{kind}{" default" if mark else ""}"><th>{_e(who)}{mark}</th>{cells}</tr>')
    return (
        f'<table class="summary"><tr><th>model</th>{head}</tr>{"".join(rows)}</table>'
        f"<p>* the run's default strategy. OOB: each training image voted on only by the members "
        f"that left it out."
        + (" † in-sample: the strategy was fitted on these OOB images (optimistic)." if marked else "")
        + "</p>"
    )


def choice_section(comb: dict) -> str:
    """How ``strategy: auto`` chose, and what the fitted strategies say of themselves."""
    from .markdown import choice_rows

    notes = "".join(f"<p>{_e(n)}</p>" for n in comb.get("notes") or [])
    choice = comb.get("choice") or {}
    if "table" not in choice:
        return notes
    rows = choice_rows(choice)
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return (
        f"<h2>How the default strategy was chosen</h2><p>{_e(choice['reason'])}. Held-out images: "
        f"{choice['n_val']} val and {choice['n_oob']} OOB; 95% intervals and standard errors from a paired "
        f"bootstrap of {choice['bootstrap']} resamples; rule: the simplest strategy within {choice['se']:g} "
        f'standard error(s) of the best.</p><table class="choice"><tr>{head}</tr>{body}</table>{notes}'
    )


def per_class_table(metrics: dict) -> str:
    rows = "".join(
        f"<tr><th>{_e(c)}</th><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for c, v in metrics["per_class"].items()
    )
    return (
        f'<table class="perclass"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
        f"<th>support</th></tr>{rows}</table>"
    )


def confusion_table(split: str, who: str, cm: list[list[int]], classes: Sequence[str]) -> str:
    """Counts and row shares coloured like a heatmap; every cell opens its gallery."""
    counts = np.asarray(cm)
    head = "".join(f"<th>{_e(c)}</th>" for c in classes)
    rows = []
    for i, c in enumerate(classes):
        total = max(int(counts[i].sum()), 1)
        cells = []
        for j in range(len(classes)):
            share = counts[i, j] / total
            tone = "#fff" if share > 0.55 else "#000"
            cells.append(
                f'<td class="cell" tabindex="0" data-split="{_e(split)}" data-who="{_e(who)}" '
                f'data-true="{i}" data-pred="{j}" data-count="{int(counts[i, j])}" '
                f'style="background: rgba(31, 119, 180, {share:.3f}); color: {tone}">'
                f"{int(counts[i, j])}<br><small>{share:.0%}</small></td>"
            )
        rows.append(f"<tr><th>{_e(c)}</th>{''.join(cells)}</tr>")
    return f'<table class="confusion"><tr><th>true \\ predicted</th>{head}</tr>{"".join(rows)}</table>'


_INLINE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)|\*\*(.+?)\*\*|`([^`]+)`")


def _inline(text: str) -> str:
    """Escaped text with Markdown's images, links, bold and code spans as HTML."""
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(_e(text[last : m.start()]))
        alt, src, label, target, bold, code = m.groups()
        if src is not None:
            out.append(f'<img class="figure" src="{quote(src, safe="/")}" alt="{_e(alt)}">')
        elif target is not None:
            out.append(f'<a href="{quote(target, safe="/#")}">{_e(label)}</a>')
        elif bold is not None:
            out.append(f"<b>{_e(bold)}</b>")
        else:
            out.append(f"<code>{_e(code)}</code>")
        last = m.end()
    return "".join(out) + _e(text[last:])


def markdown_html(lines: Sequence[str]) -> str:
    """The Markdown a report section writes (headings, paragraphs, ``- `` lists, pipe tables,
    bold, code, links, images) as HTML; anything else stays text, escaped."""
    out: list[str] = []
    block: list[str] = []
    kind = None

    def flush() -> None:
        nonlocal kind
        if kind == "p":
            out.append(f"<p>{_inline(' '.join(block))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in block) + "</ul>")
        elif kind == "table":
            rows = [
                [c.strip() for c in r.strip().strip("|").split("|")]
                for r in block
                if not re.fullmatch(r"\|?[\s|:-]+\|?", r.strip())
            ]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) if rows else ""
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f'<table class="section"><tr>{head}</tr>{body}</table>')
        block.clear()
        kind = None

    for line in (part for item in lines for part in str(item).split("\n")):
        text = line.rstrip()
        heading = re.match(r"(#{1,6})\s+(.*)", text)
        new = (
            None if not text or heading else "table" if text.startswith("|") else "ul" if text.startswith("- ") else "p"
        )
        if new != kind or new is None:
            flush()
        if heading:
            level = min(len(heading.group(1)), 6)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif new is not None:
            kind = new
            block.append(text[2:] if new == "ul" else text)
    flush()
    return "".join(out)


def _split_data(
    split: str,
    results: dict,
    paths: Sequence[str],
    y: np.ndarray,
    names: Sequence[str],
    thumbs: dict,
    saliency: dict,
    base: str,
) -> dict:
    return {
        "names": [os.path.basename(p) for p in paths],
        "links": [href(p, base) for p in paths],
        "thumbs": [quote(thumbs[p], safe="/") if thumbs.get(p) else None for p in paths],
        "y": [int(v) for v in y],
        "who": {
            who: {
                "pred": [int(v) for v in m["_pred"]],
                "conf": [round(float(m["_proba"][i, m["_pred"][i]]), 4) for i in range(len(y))],
            }
            for who, m in results.items()
        },
        "members": list(names),
        "saliency": {
            str(i): {w: quote(r, safe="/") for w, r in saliency[p].items()}
            for i, p in enumerate(paths)
            if p in saliency
        },
    }


def fixed_and_broken(results: dict, y: np.ndarray, names: Sequence[str], strategy: str) -> dict:
    """Images the best member (highest macro-F1 here) gets wrong and the ensemble right, and the reverse."""
    best = max(names, key=lambda n: results[n]["macro_f1"])
    member_ok = results[best]["_pred"] == y
    ens_ok = results[strategy]["_pred"] == y
    return {
        "best": best,
        "fixed": np.flatnonzero(~member_ok & ens_ok).tolist(),
        "broken": np.flatnonzero(member_ok & ~ens_ok).tolist(),
    }


def render_html(
    doc: dict,
    splits: dict[str, dict],
    split_data: dict[str, tuple[Sequence[str], np.ndarray]],
    base: str,
    thumbs: dict[str, str | None] | None = None,
    saliency: dict[str, dict[str, str]] | None = None,
    curves: str | None = None,
    figures: dict | None = None,
) -> str:
    """The page. ``base``: the report folder (links are relative to it); ``thumbs``: image path
    -> thumbnail file in it; ``saliency``: image path -> {member or ``mean``: overlay file};
    ``curves``: the training-curves PNG's file name; ``figures``: split ->
    :class:`ensemble.reporting.markdown.Figures` (the registered figures, as report.md shows them)."""
    from .markdown import SECTIONS

    thumbs, saliency, figures = thumbs or {}, saliency or {}, figures or {}
    classes = doc["classes"]
    names = list(doc["members"])
    strategy = doc["strategy"]
    data = {"classes": classes, "strategy": strategy, "page": PAGE, "splits": {}, "fixed": {}}
    body = [
        f"<h1>effens report</h1><p>Classes: {', '.join(_e(c) for c in classes)}. "
        f"Default strategy: <b>{_e(strategy)}</b>.</p>",
        "<h2>Summary</h2>",
        summary_table(doc),
        choice_section(doc.get("combiner") or {}),
    ]
    body += [markdown_html(lines) for lines in (section(doc) for section in SECTIONS.values()) if lines]
    for split, results in splits.items():
        drawn = figures.get(split)
        paths, y = split_data[split]
        data["splits"][split] = _split_data(split, results, paths, y, names, thumbs, saliency, base)
        body.append(f'<h2 id="split-{_e(split)}">{_e(split)}</h2>')
        if strategy in results and names:
            fb = fixed_and_broken(results, np.asarray(y), names, strategy)
            data["fixed"][split] = fb
            body.append(
                f"<p>Against the best member here, <b>{_e(fb['best'])}</b>, the {_e(strategy)} "
                f'ensemble <button class="list" data-split="{_e(split)}" data-list="fixed">fixed '
                f'{len(fb["fixed"])}</button> and <button class="list" data-split="{_e(split)}" '
                f'data-list="broken">broke {len(fb["broken"])}</button> images.</p>'
            )
        body.append('<div class="grid">')
        for who, m in results.items():
            body.append(
                f'<section class="who"><h3>{_e(who)}{" *" if who == strategy else ""}</h3>'
                f"<p>macro-F1 {m['macro_f1']:.4f} · accuracy {m['accuracy']:.4f} · log loss "
                f"{m['log_loss']:.4f} · ECE {m['ece']:.4f}</p>"
                f"{confusion_table(split, who, m['confusion_matrix'], classes)}"
                f"<details><summary>per class</summary>{per_class_table(m)}</details>"
                + (
                    f'<p class="files">{" · ".join(a.as_html() for a in drawn.models.get(who, []))}</p>'
                    if drawn and drawn.models.get(who)
                    else ""
                )
                + "</section>"
            )
        body.append("</div>")
        if drawn and drawn.split:
            body.append('<div class="figures">' + "".join(f"<p>{a.as_html()}</p>" for a in drawn.split) + "</div>")
    if curves:
        body.append(
            f"<h2>Training curves</h2><p>Per member: train loss, val macro-F1 and val log loss per "
            f'epoch; the marker is the epoch kept.</p><img class="figure" src="{quote(curves)}" '
            f'alt="training curves">'
        )
    payload = (
        json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>effens report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head>
<body>
<main>{"".join(body)}</main>
<aside id="gallery" hidden><div class="bar"><b id="gallery-title"></b>
<button id="gallery-close" type="button">close</button></div><div id="cards"></div>
<button id="more" type="button" hidden>more</button></aside>
<script type="application/json" id="data">{payload}</script>
<script>{JS}</script>
</body></html>
"""


def simple_page(
    title: str, intro: str, rows: list[list[str]], figures: Sequence[str] = (), highlight: str | None = None
) -> str:
    """A self-contained page with one table (first row: header) and figures (e.g. ``tune``'s)."""
    head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
    body = "".join(
        f"<tr{' class=default' if highlight is not None and r[0] == highlight else ''}>"
        + "".join(f"<td>{_e(c)}</td>" for c in r)
        + "</tr>"
        for r in rows[1:]
    )
    figs = "".join(f'<p><img class="figure" src="{quote(f)}" alt="{_e(f)}"></p>' for f in figures)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><main><h1>{_e(title)}</h1><p>{_e(intro)}</p>{figs}"
        f'<table class="summary"><tr>{head}</tr>{body}</table></main></body></html>\n'
    )


SPLIT_COLOURS = {"train": "#3182bd", "val": "#e6550d", "test": "#31a354"}


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def class_plot(prop: dict, classes: Sequence[str], width: int = 300, height: int = 150) -> str:
    """A small SVG of one property per class: for each split a bar from its first to its
    third quartile with a dot at the median, one colour per split."""
    cells = [(s, c, q) for s, by in prop["by_class"].items() for c, q in by.items() if q]
    if not cells:
        return ""
    lo, hi = min(q["q25"] for _, _, q in cells), max(q["q75"] for _, _, q in cells)
    span = (hi - lo) or 1.0
    splits = list(prop["by_class"])
    top, bottom, left = 10, 28, 44

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - lo) / span)

    parts = [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{y(hi) + 4:.1f}" text-anchor="end" font-size="10">{_fmt(hi)}</text>',
        f'<text x="{left - 4}" y="{y(lo) + 4:.1f}" text-anchor="end" font-size="10">{_fmt(lo)}</text>',
    ]
    slot = (width - left) / max(1, len(classes))
    for i, c in enumerate(classes):
        x0 = left + slot * i
        parts.append(
            f'<text x="{x0 + slot / 2:.1f}" y="{height - 12}" text-anchor="middle" font-size="11">{_e(c)}</text>'
        )
        for j, split in enumerate(splits):
            q = prop["by_class"][split].get(c)
            if not q:
                continue
            x = x0 + slot * (j + 1) / (len(splits) + 1)
            colour = SPLIT_COLOURS.get(split, "#777")
            parts.append(
                f'<line x1="{x:.1f}" y1="{y(q["q25"]):.1f}" x2="{x:.1f}" y2="{y(q["q75"]):.1f}" '
                f'stroke="{colour}" stroke-width="4"><title>{_e(split)} {_e(c)}: quartiles '
                f"{_fmt(q['q25'])}-{_fmt(q['q75'])}, median {_fmt(q['median'])} ({q['n']} images)</title></line>"
                f'<circle cx="{x:.1f}" cy="{y(q["median"]):.1f}" r="3.5" fill="#fff" stroke="{colour}"/>'
            )
    legend = "".join(f'<tspan fill="{SPLIT_COLOURS.get(sp, "#777")}">{_e(sp)} </tspan>' for sp in splits)
    parts.append(f'<text x="{width - 2}" y="{height - 1}" text-anchor="end" font-size="10">{legend}</text>')
    return (
        f'<svg class="shortcut" width="{width}" height="{height}" role="img" aria-label="per class">'
        + "".join(parts)
        + "</svg>"
    )


def shortcuts_section(doc: dict, classes: Sequence[str]) -> str:
    """The audit page's shortcut check: a table of every nuisance property (how well it
    predicts the label on train, flagged or not, how far val and test move from train)
    and a per-class plot for each, flagged ones first."""
    sc = doc["shortcuts"]
    others = [s for s in ("val", "test") if any(s in p["ks_from_train"] for p in sc["properties"].values())]
    order = sc["flagged"] + [n for n in sc["properties"] if n not in sc["flagged"]]
    rows = []
    for name in order:
        p = sc["properties"][name]
        f = p["predicts"]
        rows.append(
            f"<tr{' class=default' if p['flagged'] else ''}><td>{_e(name)}</td>"
            f'<td style="text-align:left">{_e(p["about"])}</td>'
            + (
                f"<td>{f['macro_f1']:.2f} [{f['low']:.2f}, {f['high']:.2f}]</td><td>{f.get('p', 1):.2f}</td>"
                if f
                else "<td>constant</td><td></td>"
            )
            + f"<td>{'<b>yes</b>' if p['flagged'] else ''}</td>"
            + "".join(
                f"<td>{p['ks_from_train'][s]:.2f}</td>" if s in p["ks_from_train"] else "<td></td>" for s in others
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ["property", "what", "macro-F1 on train [95%]", "p", "flagged", *(f"KS {s} vs train" for s in others)]
    )
    every = sc.get("all")
    plots = "".join(
        f'<figure class="who"><figcaption><b>{_e(n)}</b>{" (flagged)" if sc["properties"][n]["flagged"] else ""}'
        f"</figcaption>{class_plot(sc['properties'][n], classes)}</figure>"
        for n in order
    )
    from ..auditing.shortcuts import summary_line

    return (
        "<h2 id=shortcuts>Shortcuts: properties that are not the content</h2>"
        f"<p>{_e(summary_line(sc))}. Each property alone, then all together"
        + (f" (macro-F1 {every['macro_f1']:.2f} [{every['low']:.2f}, {every['high']:.2f}])" if every else "")
        + f", predicts the training labels out of fold; chance is {sc['chance']['mean']:.2f} (the same "
        f"classifier on {sc['chance'].get('shuffles', 0)} shuffles of the labels); a property is flagged when "
        f"the best property on shuffled labels scores as high in under {sc.get('alpha', 0.05) / 2:.1%} of the "
        f"shuffles (p) and it beats chance by {sc.get('min_gain', 0.05):.2f}. A flagged "
        "property is one the members can learn instead of the damage: if val or test differ from train in it "
        "(KS distance), train with the member key <code>render</code> (docs/guides/shift.md).</p>"
        + "<ul>"
        + "".join(f"<li>{_e(t)}</li>" for t in sc["findings"])
        + "</ul>"
        + f'<table class="audit"><tr>{head}</tr>{"".join(rows)}</table>'
        + f'<div class="grid">{plots}</div>'
    )


def path_columns(columns: Sequence[str]) -> list[str]:
    """The columns of an audit table that name photos (``path``, ``*_path``): shown as thumbnails."""
    return [c for c in columns if c == "path" or c.endswith("_path")]


@dataclasses.dataclass
class AuditPage:
    """What an audit detector's page section may use: the whole ``audit.json`` document,
    thumbnails of the photos its rows name, and the page's table helpers."""

    doc: dict
    thumbs: dict
    base: str
    limit: int = 200

    def image(self, path: str) -> str:
        """A photo's thumbnail (when made) and file name, linking to the photo."""
        t = self.thumbs.get(path)
        pic = f'<img class="thumb" src="{quote(t, safe="/")}" alt="">' if t else ""
        return f'<a href="{href(path, self.base)}">{pic}<br>{_e(os.path.basename(path))}</a>'

    def table(self, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
        """A table of HTML cells (escape text with :func:`escape`) under an escaped header."""
        h = "".join(f"<th>{_e(c)}</th>" for c in head)
        return (
            f'<table class="audit"><tr>{h}</tr>'
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>"
        )

    def rows_table(self, finding) -> str:
        """The generic section: ``finding.title`` (and its row count), then its first
        ``limit`` rows (photo columns as thumbnails, numbers to 3 decimals)."""
        photos = set(path_columns(finding.columns))

        def cell(column: str, value) -> str:
            if column in photos and value:
                return self.image(str(value))
            return _e(f"{value:.3f}" if isinstance(value, float) else "" if value is None else value)

        return f"<h2>{_e(finding.title)} ({len(finding.rows)})</h2>" + self.table(
            finding.columns, [[cell(c, r.get(c)) for c in finding.columns] for r in finding.rows[: self.limit]]
        )


def escape(value) -> str:
    """``value`` as HTML text (for an audit section's cells)."""
    return _e(value)


def label_issues_section(page: AuditPage, finding) -> str:
    """Label issues: how they were scored, the estimated noise per split, the flagged photos."""
    doc = page.doc
    noise = "".join(
        f"<li>{_e(split)}: {v['n_flagged']} of {v['n_scored']} scored images flagged"
        + (f" ({v['n_not_scored']} had no out-of-sample vote)" if v["n_not_scored"] else "")
        + "; "
        + ", ".join(f"{_e(k)} {r:.1%}" for k, r in v["noise_rate"].items() if r)
        + "</li>"
        for split, v in doc["label_issues"].items()
    )
    rows = finding.rows
    return (
        f"<h2>Probably mislabelled ({len(rows)})</h2>"
        f"<p>Label issues by confident learning ({_e(doc['method'])}) on out-of-sample probabilities: "
        + (
            "OOB votes for training images, the ensemble for val and test, linear heads on pretrained features "
            "for training images every member saw"
            if doc["kind"] == "run"
            else "linear heads on pretrained features (out-of-fold for training images)"
        )
        + (
            f"; the ensemble for the {doc['left_out']['images']} training images the run left out "
            f"(<code>data.exclude</code>): <b>{doc['left_out']['still_flagged']} still look mislabelled</b>, "
            f"{doc['left_out']['not_flagged']} do not"
            if doc.get("left_out")
            else ""
        )
        + f". Estimated share of labels that belong to another class:</p><ul>{noise}</ul>"
        + page.table(
            ["split", "image", "given", "suggested", "p(given)", "p(suggested)"],
            [
                [
                    _e(r["split"]),
                    page.image(r["path"]),
                    _e(r["given"]),
                    f"<b>{_e(r['suggested'])}</b>",
                    f"{r['self_confidence']:.3f}",
                    f"{r['p_suggested']:.3f}",
                ]
                for r in rows[: page.limit]
            ],
        )
    )


def duplicates_section(page: AuditPage, finding) -> str:
    """Duplicate pairs side by side, leaks across splits and conflicting labels marked."""
    doc, rows = page.doc, finding.rows
    d = doc["duplicates"]
    return (
        f"<h2>Duplicates ({len(rows)})</h2>"
        f"<p>Duplicates: {d['exact']} exact and {d['near']} near pairs (hash within {doc['max_distance']} bits)"
        + (f", {d['similar']} similar (feature cosine at least {doc['min_cosine']})" if doc.get("min_cosine") else "")
        + f"; <b>{d['leakage']} across splits</b> (leakage), {d['conflicting_labels']} with different labels.</p>"
        + page.table(
            ["kind", "image", "twin", "bits apart", "cosine", "leak", "labels"],
            [
                [
                    _e(r["kind"] + (" (mirrored)" if r["mirrored"] else "")),
                    f"{page.image(r['a_path'])}<br>{_e(r['a_split'])}",
                    f"{page.image(r['b_path'])}<br>{_e(r['b_split'])}",
                    "" if r["distance"] is None else str(r["distance"]),
                    "" if r.get("cosine") is None else f"{r['cosine']:.3f}",
                    "<b>yes</b>" if r["leakage"] else "",
                    _e(r["a_label"]) + (f" vs <b>{_e(r['b_label'])}</b>" if r["conflicting_labels"] else ""),
                ]
                for r in rows[: page.limit]
            ],
        )
    )


def odd_images_section(page: AuditPage, finding) -> str:
    """Odd and unreadable photos with what is odd about each."""
    doc, rows = page.doc, finding.rows
    return (
        f"<h2>Odd images ({len(rows)})</h2><p>Odd images: {doc['n_odd']}"
        + (f", {doc['n_unreadable']} of them unreadable" if doc.get("n_unreadable") else "")
        + ".</p>"
        + page.table(
            ["split", "image", "what"],
            [[_e(r["split"]), page.image(r["path"]), _e(r["what"])] for r in rows[: page.limit]],
        )
    )


def split_stats_section(page: AuditPage, finding) -> str:
    """Per split: images, median size, aspect and sharpness."""
    stats = [
        [
            _e(s),
            str(v["images"]),
            f"{v['median_width']:.0f} x {v['median_height']:.0f}",
            f"{v['median_aspect']:.2f}",
            f"{v['median_sharpness']:.0f}",
        ]
        for s, v in page.doc["stats"].items()
    ]
    return "<h2>Per split</h2>" + page.table(
        ["split", "images", "median size", "median aspect", "median sharpness"], stats
    )


def audit_page(doc: dict, findings: dict, thumbs: dict, base: str, limit: int = 200) -> str:
    """``effens audit``'s page: what was audited, then every detector's section in order (its
    own ``section``, else a table of its rows); thumbnails link to the photos. At most
    ``limit`` rows per table (the CSVs hold all)."""
    page = AuditPage(doc, thumbs, base, limit)
    body = ["<h1>effens audit</h1>", f"<p>{'Run' if doc['kind'] == 'run' else 'Data'} {_e(doc['source'])}.</p>"]
    for name, f in findings.items():
        body.append(f.section(page, f) if f.section else page.rows_table(dataclasses.replace(f, title=f.title or name)))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>effens audit</title>'
        f"<style>{CSS}.thumb{{max-width:120px;max-height:90px}}table.audit td{{vertical-align:top}}</style>"
        f"</head><body><main>{''.join(body)}</main></body></html>\n"
    )


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
main{padding:1em 2em;max-width:1500px}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f4f4f4}
tr.default th,tr.default td{background:#ffe9a8}
.grid{display:flex;flex-wrap:wrap;gap:1em}
.who{border:1px solid #ddd;padding:.5em;border-radius:4px}
.who h3{margin:.2em 0}
td.cell{cursor:pointer;min-width:3.5em;text-align:center}
td.cell:hover,td.cell:focus{outline:2px solid #e6550d}
#gallery{position:fixed;top:0;right:0;width:min(760px,100vw);height:100vh;overflow:auto;background:#fff;
border-left:2px solid #888;box-shadow:-4px 0 12px rgba(0,0,0,.2);padding:.5em 1em}
#gallery .bar{display:flex;justify-content:space-between;align-items:center;position:sticky;top:0;
background:#fff;padding:.3em 0}
#cards{display:flex;flex-wrap:wrap;gap:8px}
.card{width:170px;border:1px solid #ddd;border-radius:4px;padding:4px;font-size:12px;overflow-wrap:anywhere}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;display:block}
.card .wrong{color:#b00}
.figure{max-width:100%}
"""

JS = r"""
(function () {
  var D = JSON.parse(document.getElementById('data').textContent);
  var gallery = document.getElementById('gallery'), cards = document.getElementById('cards');
  var more = document.getElementById('more'), title = document.getElementById('gallery-title');
  var current = [], shown = 0, currentSplit = null;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }

  function card(split, i) {
    var S = D.splits[split], c = el('div', null, 'card');
    c.setAttribute('data-index', i);
    var a = el('a'); a.href = S.links[i]; a.title = S.names[i];
    var img = el('img'); img.loading = 'lazy'; img.alt = S.names[i];
    img.src = S.thumbs[i] || PLACEHOLDER;
    a.appendChild(img); c.appendChild(a);
    c.appendChild(el('div', S.names[i]));
    var who = currentWho || D.strategy, W = S.who[who] || S.who[D.strategy];
    c.appendChild(el('div', 'true: ' + D.classes[S.y[i]]));
    c.appendChild(el('div', who + ': ' + D.classes[W.pred[i]] + ' (' + W.conf[i].toFixed(3) + ')',
                     W.pred[i] === S.y[i] ? '' : 'wrong'));
    var votes = S.members.map(function (m) { return m + ' ' + D.classes[S.who[m].pred[i]]; }).join(', ');
    c.appendChild(el('div', 'votes: ' + votes));
    var sal = S.saliency[String(i)];
    if (sal) {
      Object.keys(sal).forEach(function (k) {
        var s = el('a', 'saliency ' + k); s.href = sal[k]; c.appendChild(el('span', ' ')); c.appendChild(s);
      });
    }
    return c;
  }

  function showPage() {
    var stop = Math.min(current.length, shown + D.page);
    for (; shown < stop; shown++) cards.appendChild(card(currentSplit, current[shown]));
    more.hidden = shown >= current.length;
  }

  var currentWho = null;
  function open(split, who, list, heading) {
    currentSplit = split; currentWho = who; current = list; shown = 0;
    cards.textContent = '';
    title.textContent = heading + ': ' + list.length + ' image' + (list.length === 1 ? '' : 's');
    gallery.hidden = false;
    gallery.setAttribute('data-count', String(list.length));
    showPage();
  }

  function cellList(split, who, t, p) {
    var S = D.splits[split], W = S.who[who], out = [];
    for (var i = 0; i < S.y.length; i++) if (S.y[i] === t && W.pred[i] === p) out.push(i);
    out.sort(function (a, b) { return W.conf[b] - W.conf[a] || a - b; });
    return out;
  }

  function openCell(td) {
    var split = td.getAttribute('data-split'), who = td.getAttribute('data-who');
    var t = +td.getAttribute('data-true'), p = +td.getAttribute('data-pred');
    open(split, who, cellList(split, who, t, p),
         split + ' · ' + who + ' · true ' + D.classes[t] + ' → predicted ' + D.classes[p]);
  }

  document.querySelectorAll('td.cell').forEach(function (td) {
    td.addEventListener('click', function () { openCell(td); });
    td.addEventListener('keydown', function (e) { if (e.key === 'Enter') openCell(td); });
  });
  document.querySelectorAll('button.list').forEach(function (b) {
    b.addEventListener('click', function () {
      var split = b.getAttribute('data-split'), kind = b.getAttribute('data-list'), F = D.fixed[split];
      var W = D.splits[split].who[D.strategy];
      var list = F[kind].slice().sort(function (a, c) { return W.conf[c] - W.conf[a] || a - c; });
      open(split, D.strategy, list, split + ' · ' + kind + ' by ' + D.strategy + ' vs ' + F.best);
    });
  });
  more.addEventListener('click', showPage);
  document.getElementById('gallery-close').addEventListener('click', function () { gallery.hidden = true; });

  // #cell=split/who/true/pred opens that cell; #selftest clicks the first non-empty cell and
  // records what the gallery shows (used by the headless-browser test and for screenshots)
  var h = decodeURIComponent(location.hash.slice(1));
  if (h.indexOf('cell=') === 0) {
    var parts = h.slice(5).split('/');
    document.querySelectorAll('td.cell').forEach(function (td) {
      if (td.getAttribute('data-split') === parts[0] && td.getAttribute('data-who') === parts[1] &&
          td.getAttribute('data-true') === parts[2] && td.getAttribute('data-pred') === parts[3]) td.click();
    });
  } else if (h === 'selftest') {
    var first = Array.prototype.find.call(document.querySelectorAll('td.cell'),
                                          function (td) { return +td.getAttribute('data-count') > 0; });
    first.click();
    document.body.setAttribute('data-selftest', JSON.stringify({
      count: +first.getAttribute('data-count'), shown: cards.children.length,
      gallery: gallery.getAttribute('data-count'), page: D.page}));
  }
  document.body.setAttribute('data-ready', String(Math.round(performance.now())));
})();
"""

PLACEHOLDER_SVG = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='160' height='160'%3E"
    "%3Crect width='160' height='160' fill='%23ddd'/%3E%3Ctext x='80' y='85' font-size='14' "
    "text-anchor='middle' fill='%23666'%3Eno thumbnail%3C/text%3E%3C/svg%3E"
)
JS = JS.replace("PLACEHOLDER", json.dumps(PLACEHOLDER_SVG))
