"""A shift proxy built from a labelled split (never the test split): its images re-framed,
re-sized and re-compressed the way VDS's golden test differs from train/val.

    python scripts/make_shift_proxy.py ../shared/data/vds/val /tmp/vds-proxy

Measured on the inputs, without labels (issue #13): test photos are wider (median aspect
1.50 vs 1.34), framed closer on the damage, larger and sharper (quality ~99 originals,
resized to shorter side 256 at quality 90) while train/val are small web images at
quality ~75. Each proxy image: the centre 1.5:1 window of the photo, zoomed in to 85% of
it, resized to shorter side 256 with an unsharp mask, saved as JPEG quality 90. Choosing
a recipe on this proxy (and on val) keeps the test split out of every decision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble.data import load_folder  # noqa: E402


def reframe(img: Image.Image, aspect: float = 1.5, zoom: float = 0.85, short: int = 256) -> Image.Image:
    w, h = img.size
    if w / h < aspect:  # too tall: keep the width, cut the height
        cw, ch = w, round(w / aspect)
    else:
        cw, ch = round(h * aspect), h
    cw, ch = round(cw * zoom), round(ch * zoom)
    left, top = (w - cw) // 2, (h - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    scale = short / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    return img.filter(ImageFilter.UnsharpMask(radius=1.5, percent=60, threshold=2))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("split", help="a folder of class folders (val, never test)")
    ap.add_argument("out", help="output folder of class folders")
    args = ap.parse_args(argv)
    split = load_folder(args.split)
    out = Path(args.out)
    for path, label in zip(split.paths, split.labels):
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
        dst = out / label / (Path(path).stem + ".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        reframe(img).save(dst, format="JPEG", quality=90)
    print(f"{len(split.paths)} images -> {out}")


if __name__ == "__main__":
    main()
