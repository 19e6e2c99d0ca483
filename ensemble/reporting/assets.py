"""The report page's pictures and files: thumbnails (made once, indexed), Grad-CAM overlays
of where each member looks (``report: {saliency: true}``, ``effens explain``), and
:func:`page_files`, everything ``report/index.html`` shows. Shared by the commands that
write a page (train, fit-combiner, evaluate), so none of them imports another."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..images import BadImageError, decode_all, decode_image

log = logging.getLogger(__name__)

THUMB = 160


def image_key(path: str) -> str:
    """Names a picture of ``path``: its absolute path, size and modification time, hashed."""
    try:
        st = os.stat(path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return hashlib.sha256(f"{os.path.abspath(path)}|{stamp}".encode()).hexdigest()[:24]


def thumbnail_jpeg(path: str, size: int = THUMB) -> bytes:
    from PIL import Image

    img = Image.fromarray(decode_image(path, size))
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


THUMB_INDEX = "thumbs/index.json"


def make_thumbnails(
    paths: Sequence[str], exists: Callable[[str], bool], previous: dict[str, str] | None = None
) -> tuple[dict, dict]:
    """(image path -> ``thumbs/<key>.jpg`` or None when it cannot be read, new files to write).

    Thumbnails already present (``exists``) are not made again; an image that has moved
    away keeps the thumbnail ``previous`` (the last :data:`THUMB_INDEX`) recorded for it.
    """
    from concurrent.futures import ThreadPoolExecutor

    previous = previous or {}
    names = {
        p: (
            previous[p]
            if not os.path.exists(p) and previous.get(p) and exists(previous[p])
            else f"thumbs/{image_key(p)}.jpg"
        )
        for p in dict.fromkeys(paths)
    }
    todo = [p for p, n in names.items() if not exists(n)]

    def one(p: str) -> bytes | None:
        try:
            return thumbnail_jpeg(p)
        except BadImageError as exc:
            log.warning("no thumbnail for %s", exc)
            return None

    with ThreadPoolExecutor(2) as pool:
        made = dict(zip(todo, pool.map(one, todo)))
    files = {names[p]: data for p, data in made.items() if data is not None}
    mapping = {p: (None if p in made and made[p] is None else n) for p, n in names.items()}
    return mapping, files


def member_saliency(ens, images: Sequence[np.ndarray], targets: np.ndarray) -> list[dict[str, bytes]]:
    """Per image: ({member: overlay JPEG, ``mean``: overlay JPEG}, ...) for class ``targets``."""
    from PIL import Image

    from members.saliency import gradcam, overlay_jpeg
    from members.transforms import eval_tensor

    per_member = []
    for fm in ens.members_:
        crops = eval_tensor(images, fm.inputs)
        maps = (
            np.concatenate(
                [
                    gradcam(fm.model, crops[i : i + 16], fm.inputs, targets[i : i + 16])
                    for i in range(0, len(images), 16)
                ]
            )
            if len(images)
            else np.zeros((0, 1, 1))
        )
        per_member.append((fm.name, crops, maps))
    out = []
    ref_name, ref_crops, _ = per_member[0]
    size = ref_crops.shape[-1]
    for i in range(len(images)):
        files, resized = {}, []
        for name, crops, maps in per_member:
            files[name] = overlay_jpeg(crops[i].permute(1, 2, 0).numpy(), maps[i])
            resized.append(
                np.asarray(Image.fromarray((maps[i] * 255).astype(np.uint8)).resize((size, size)), dtype=np.float32)
                / 255
            )
        files["mean"] = overlay_jpeg(ref_crops[i].permute(1, 2, 0).numpy(), np.mean(resized, axis=0))
        out.append(files)
    return out


def saliency_for_report(
    ens,
    split_data: dict[str, tuple[Sequence[str], np.ndarray]],
    splits: dict[str, dict],
    strategy: str,
    limit: int = 200,
) -> tuple[dict, dict]:
    """Overlays for the images ``strategy`` gets wrong on each split (at most ``limit`` per
    split, most confident mistakes first) -> (path -> {who: file}, files to write)."""
    from ..estimator import decode_size

    mapping, files = {}, {}
    for split, results in splits.items():
        paths, y = split_data[split]
        m = results[strategy]
        wrong = np.flatnonzero(m["_pred"] != y)
        wrong = wrong[np.argsort(-m["_proba"][wrong, m["_pred"][wrong]], kind="stable")][:limit]
        todo = [i for i in wrong.tolist() if paths[i] not in mapping]
        arrays, _ = decode_all([paths[i] for i in todo], decode_size(ens), on_bad="skip", desc="saliency")
        ok = [k for k, a in enumerate(arrays) if a is not None]
        made = member_saliency(ens, [a for a in arrays if a is not None], m["_pred"][[todo[k] for k in ok]])
        for k, overlays in zip(ok, made):
            key = image_key(paths[todo[k]])
            names = {who: f"saliency/{key}_{who}.jpg" for who in overlays}
            mapping[paths[todo[k]]] = names
            files.update({names[who]: data for who, data in overlays.items()})
    log.info("saliency: %d overlays", len(files))
    return mapping, files


def report_files(
    doc: dict,
    splits: dict[str, dict],
    split_data: dict[str, tuple[Sequence[str], np.ndarray]],
    folder: str | os.PathLike,
    ens,
    saliency: bool = False,
    extra_md: str = "",
) -> dict:
    """Everything a report folder holds: metrics.json, report.md, every registered figure
    (drawn once, shown by both pages) and ``index.html`` with what it shows."""
    from .markdown import draw_figures, render_report

    figures = draw_figures(doc, splits, split_data)
    files = render_report(doc, splits, split_data, extra_md=extra_md, figures=figures)
    files.update(page_files(doc, splits, split_data, folder, ens, saliency, figures))
    return files


def page_files(
    doc: dict,
    splits: dict[str, dict],
    split_data: dict[str, tuple[Sequence[str], np.ndarray]],
    folder: str | os.PathLike,
    ens,
    saliency: bool = False,
    figures: dict | None = None,
) -> dict:
    """``index.html`` and what it shows: thumbnails (made once), training curves, the registered
    figures (``figures``, from :func:`ensemble.reporting.markdown.draw_figures`), and with ``saliency`` the
    overlays of the default strategy's mistakes; file name -> contents."""
    from .html import render_html
    from .markdown import training_curves_png

    folder = Path(folder)
    paths = [p for ps, _ in split_data.values() for p in ps]
    try:
        previous = json.loads((folder / THUMB_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    previous = previous if isinstance(previous, dict) else {}
    thumbs, files = make_thumbnails(paths, lambda name: (folder / name).is_file(), previous)
    files[THUMB_INDEX] = {**previous, **{p: n for p, n in thumbs.items() if n}}  # for images that move later
    sal: dict = {}
    if saliency:
        sal, sal_files = saliency_for_report(ens, split_data, splits, doc["strategy"])
        files.update(sal_files)
    curves = None
    histories = {fm.name: (fm.meta.get("history") or [], fm.meta.get("best_epoch")) for fm in ens.members_}
    if any(h for h, _ in histories.values()):
        curves = "training_curves.png"
        files[curves] = training_curves_png(histories)
    files["index.html"] = render_html(doc, splits, split_data, str(folder), thumbs, sal, curves, figures)
    return files
