"""Build the shipped demo subset (data/demo) from the VDS data set.

    python scripts/make_demo_data.py --src ../shared/data/vds --out data/demo

A stratified random subset per split, shorter side resized to 160 px, JPEG quality 85.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ensemble.images import decode_image

log = logging.getLogger("make_demo_data")

LICENCE = """\
# Demo data: a small subset of VDS-2.5k (vehicle damage severity)

{counts}

Made by `python scripts/make_demo_data.py` (seed {seed}): a stratified random subset of
each split, every image's shorter side resized to {size} px (bicubic), JPEG quality {quality}.

Source: the public repository VadimsRomanovskis/vehicle-damage-severity-assessment
(folder `data/vehicle-damage-severity-assessment-dataset`), built from a Kaggle
car-damage-severity set, Roboflow Universe and CarDD (Wang et al., 2022). The test
split comes from CarDD, a different source than train/val.

Licence: MIT, as stated by the source repository (see its LICENSE file for the
full text and copyright notice); the images keep that licence here.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--src", default="../shared/data/vds")
    p.add_argument("--out", default="data/demo")
    p.add_argument("--per-class", nargs=3, type=int, default=[60, 30, 30], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--quality", type=int, default=85)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(args.seed)
    src, out = Path(args.src), Path(args.out)
    rows = ["| class | train | val | test |", "|---|---:|---:|---:|"]
    counts: dict[str, list[int]] = {}
    for split, k in zip(("train", "val", "test"), args.per_class):
        for cls_dir in sorted(d for d in (src / split).iterdir() if d.is_dir()):
            files = sorted(cls_dir.glob("*.jpg"))
            pick = sorted(rng.choice(len(files), size=min(k, len(files)), replace=False))
            (out / split / cls_dir.name).mkdir(parents=True, exist_ok=True)
            for i in pick:
                arr = decode_image(str(files[i]), args.size)
                Image.fromarray(arr).save(out / split / cls_dir.name / files[i].name, quality=args.quality)
            counts.setdefault(cls_dir.name, []).append(len(pick))
    rows += [f"| {c} | " + " | ".join(map(str, v)) + " |" for c, v in counts.items()]
    (out / "README.md").write_text(
        LICENCE.format(counts="\n".join(rows), seed=args.seed, size=args.size, quality=args.quality)
    )
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
