"""Planted duplicates for ``effens audit``'s near-duplicate search (issue #25).

    python scripts/benchmark_audit.py --images ../shared/data/vds/train --n 60 --pool 1500

Copies ``--n`` photos (seeded) once each, in turn as: resized to 60% and saved at JPEG
quality 70, a 90% centre crop, a mirror image, a byte copy; mixes them into ``--pool`` other
photos and reports, per ``--max-distance``, how many planted pairs are found (per kind) and
how many other pairs are reported; then, with the hash at ``--max-distance 4``, the same for
each ``--cosines`` value of the pretrained-feature similarity (``effens audit --min-cosine``),
and the time of the feature pass. Label noise: ``scripts/benchmark_label_noise.py``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import machine, report_json  # noqa: E402

from ensemble.auditing.audit import DEFAULT_FEATURES, FEATURE_VIEWS, _pretrained_features  # noqa: E402
from ensemble.auditing.duplicates import find_duplicates, merge_pairs, signature, similar_in_any  # noqa: E402
from ensemble.config import config_from_dict  # noqa: E402
from ensemble.data import find_images  # noqa: E402

KINDS = ("resize_jpeg70", "crop90", "mirror", "exact")


def plant(src: str, dst: Path, kind: str) -> None:
    if kind == "exact":
        dst.write_bytes(Path(src).read_bytes())
        return
    im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
    w, h = im.size
    if kind == "resize_jpeg70":
        im.resize((int(w * 0.6), int(h * 0.6))).save(dst, quality=70)
    elif kind == "crop90":
        dx, dy = int(w * 0.05), int(h * 0.05)
        im.crop((dx, dy, w - dx, h - dy)).save(dst, quality=90)
    else:
        ImageOps.mirror(im).save(dst, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--pool", type=int, default=1500)
    ap.add_argument("--distances", default="2,4,6,10")
    ap.add_argument("--cosines", default="0.6,0.65,0.7,0.75,0.8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--views",
        default=",".join(FEATURE_VIEWS),
        help="the eval views the features are computed under, pairs united (default: the audit's)",
    )
    ap.add_argument("--cache", help="keep the feature cache here (default: a temporary folder)")
    ap.add_argument("--out")
    args = ap.parse_args()
    views = args.views.split(",")
    specs = [
        config_from_dict({"data": {"train": args.images}, "members": [{**DEFAULT_FEATURES, "view": v}]}).members[0]
        for v in views
    ]
    paths = sorted(find_images(args.images))
    chosen = random.Random(args.seed).sample(paths, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        planted = []
        for i, p in enumerate(chosen):
            dst = Path(tmp) / f"copy{i}.jpg"
            plant(p, dst, KINDS[i % len(KINDS)])
            planted.append((p, str(dst), KINDS[i % len(KINDS)]))
        pool = list(dict.fromkeys(paths[: args.pool] + [p for p, _, _ in planted] + [c for _, c, _ in planted]))
        sigs = [signature(p) for p in pool]
        t0 = time.perf_counter()
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        feats = [_pretrained_features(spec, pool, 3, "cpu", cache / spec.view) for spec in specs]
        t_feat = time.perf_counter() - t0
    index = {p: i for i, p in enumerate(pool)}
    truth = {tuple(sorted((index[a], index[b]))): k for a, b, k in planted}
    rows = []
    for d in map(int, args.distances.split(",")):
        got = {(p["a"], p["b"]) for p in find_duplicates(sigs, d)}
        by_kind = {k: sum(1 for t, kk in truth.items() if kk == k and t in got) for k in KINDS}
        rows.append(
            {
                "max_distance": d,
                "found": sum(by_kind.values()),
                "planted": len(truth),
                "by_kind": by_kind,
                "other_pairs": len(got - set(truth)),
                "images": len(pool),
            }
        )
        print(
            f"--max-distance {d}: found {rows[-1]['found']}/{len(truth)} {by_kind}; "
            f"{rows[-1]['other_pairs']} other pairs among {len(pool)} images",
            flush=True,
        )
    hashed = find_duplicates(sigs, 4)
    cos_rows = []
    for c in map(float, args.cosines.split(",")):
        got = {(p["a"], p["b"]) for p in merge_pairs(hashed, similar_in_any(feats, c))}
        by_kind = {k: sum(1 for t, kk in truth.items() if kk == k and t in got) for k in KINDS}
        cos_rows.append(
            {
                "min_cosine": c,
                "found": sum(by_kind.values()),
                "planted": len(truth),
                "by_kind": by_kind,
                "other_pairs": len(got - set(truth)),
            }
        )
        print(
            f"hash 4 bits + --min-cosine {c}: found {cos_rows[-1]['found']}/{len(truth)} {by_kind}; "
            f"{cos_rows[-1]['other_pairs']} other pairs",
            flush=True,
        )
    report_json(
        {
            "images": args.images,
            "views": views,
            "seed": args.seed,
            "rows": rows,
            "with_features": cos_rows,
            "feature_seconds": round(t_feat, 1),
            "machine": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
