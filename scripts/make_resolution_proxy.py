"""A proxy without a class-tied resolution, built from a labelled split (never test): the
photos whose shorter side is at least ``--min-side`` px, the same number per class.

    python scripts/make_resolution_proxy.py ../shared/data/vds/val /tmp/vds-res-proxy

On VDS's train and val, small photos are mostly severe (shorter side under 200 px: minor
39%, moderate 59%, severe 67% of val) and the test photos are all large; a member that
reads resolution as severity scores well on val and badly on test. Among val photos of at
least 224 px the tie is gone, and class balance keeps a majority class from hiding it
(issue #39). Copies the chosen files into ``OUT/<class>/`` (seeded draw) and prints counts.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble.data import load_folder  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", help="a folder of class folders (val, never test)")
    ap.add_argument("out", help="output folder of class folders (must not exist)")
    ap.add_argument("--min-side", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    split = load_folder(args.split)
    large: dict[str, list[str]] = {}
    for path, label in zip(split.paths, split.labels):
        with Image.open(path) as img:
            if min(img.size) >= args.min_side:
                large.setdefault(label, []).append(path)
    missing = sorted(set(split.labels) - set(large))
    if missing:
        raise SystemExit(
            f"{args.split}: no photo of at least {args.min_side} px in class(es) {', '.join(missing)}; lower --min-side"
        )
    n = min(len(v) for v in large.values())
    out = Path(args.out)
    out.mkdir(parents=True)
    rng = random.Random(args.seed)
    for label, paths in sorted(large.items()):
        (out / label).mkdir()
        for k, p in enumerate(sorted(rng.sample(sorted(paths), n))):
            shutil.copy2(p, out / label / f"{k:04d}_{Path(p).name}")  # numbered: equal names never collide
        print(f"{label}: {n} of {len(paths)} photos of at least {args.min_side} px")


if __name__ == "__main__":
    main()
