"""``effens explain``: Grad-CAM overlays of where each member looks, per image, for the
ensemble's predicted class (the pictures themselves: :mod:`ensemble.reporting.assets`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .images import decode_all
from .reporting.assets import image_key, member_saliency


def run_explain(run_dir: str, images: Sequence[str], out: str, strategy: str | None = None) -> dict:
    """``effens explain``: per image, each member's and the mean Grad-CAM overlay for the
    ensemble's predicted class, written to ``out`` with ``explain.json`` listing them."""
    from .data import DataError, expand_inputs
    from .estimator import decode_size
    from .files import refuse_foreign, write_owned
    from .runfolder import load_run

    refuse_foreign(out, "explain", "effens explain")
    ens = load_run(run_dir)
    ens.combiner_.get(strategy)  # a strategy the run lacks is refused before any network runs
    paths = expand_inputs(images)
    if not paths:
        raise DataError("no input images found")
    arrays, bad = decode_all(paths, decode_size(ens), on_bad="skip", desc="decode")
    ok = [i for i, a in enumerate(arrays) if a is not None]
    if not ok:
        raise DataError(f"none of the {len(paths)} input image(s) could be read (first: {bad[0][1]}); nothing written")
    kept = [a for a in arrays if a is not None]
    comb = ens.combiner_
    used = comb.uses(strategy)[: len(comb.names(strategy))]  # the members (and pool candidates) it weighs
    pred, proba = (
        comb.apply(ens.member_proba(kept, runtime="torch", pool=comb.pooled(strategy), used=used), strategy)
        if ok
        else ([], [])
    )
    files: dict = {}
    listing = []
    for k, (i, overlays) in enumerate(zip(ok, member_saliency(ens, kept, np.asarray(pred, dtype=np.int64)))):
        stem = f"{Path(paths[i]).stem}_{image_key(paths[i])[:8]}"
        written = {}
        for who, data in overlays.items():
            files[f"{stem}_{who}.jpg"] = data
            written[who] = f"{stem}_{who}.jpg"
        listing.append(
            {
                "path": paths[i],
                "prediction": ens.classes_[pred[k]],
                "confidence": float(proba[k, pred[k]]),
                "overlays": written,
            }
        )
    doc = {
        "strategy": strategy or ens.combiner_.strategy,
        "images": listing,
        "unreadable": [{"path": p, "reason": r} for p, r in bad],
    }
    files["explain.json"] = doc
    write_owned(out, files, "explain")
    return doc
