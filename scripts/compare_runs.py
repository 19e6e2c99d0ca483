"""Compare two run folders file by file: same weights, probabilities, metrics and report?

    python scripts/compare_runs.py runs/demo-before runs/demo-after

For a refactor that must not change behaviour (issue #42): weights and arrays are compared
bit for bit; JSON documents after dropping what legitimately differs between two trainings
(wall times, absolute paths, library versions, hashes of files that hold paths); Markdown
with paths and timings masked. Prints one line per file and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

#: JSON keys whose values are times, paths or environment, not results
VOLATILE = {
    "timing",
    "train_seconds",
    "seconds",
    "wall_s",
    "total_s",
    "decode_s",
    "created",
    "versions",
    "root",
    "source",
    "sources",
    "path",
    "paths",
    "config_path",
    "run",
    "weights_file",
    "hashes",
    "allocator",
    "command",
    "reproduce",
    "fingerprint_files",
    "img_s",
    "images_per_second",
    "throughput",
}


def _volatile(key: str) -> bool:
    return key in VOLATILE or key.endswith(("_seconds", "_per_second"))


def _clean(doc, root: str):
    if isinstance(doc, dict):
        return {k: _clean(v, root) for k, v in doc.items() if not _volatile(k)}
    if isinstance(doc, list):
        return [_clean(v, root) for v in doc]
    if isinstance(doc, str):
        return doc.replace(root, "<RUN>")
    return doc


def _mask(text: str, root: str) -> str:
    text = text.replace(root, "<RUN>")
    text = re.sub(r"\(\d+(\.\d+)? s\)|\d+(\.\d+)? s\b|\d+(\.\d+)? img/s", "<T>", text)
    return text


def compare(a: Path, b: Path, same: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """One (file, verdict) per file of either run; ``same``: a path prefix of run ``a``'s data
    and the one that stands for it in ``b`` (two checkouts of the demo), masked in both."""
    out = []
    files = sorted(
        {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
        | {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    )
    for rel in files:
        pa, pb = a / rel, b / rel
        name = str(rel)
        if not pa.exists() or not pb.exists():
            out.append((name, "only in " + (str(a) if pa.exists() else str(b))))
            continue
        if rel.suffix in (".safetensors", ".png", ".jpg", ".csv"):
            verdict = "same" if pa.read_bytes() == pb.read_bytes() else "DIFFERENT bytes"
        elif rel.suffix == ".npy":
            x, y = np.load(pa), np.load(pb)
            verdict = "same" if x.shape == y.shape and np.array_equal(x, y) else "DIFFERENT array"
        elif rel.suffix == ".json":
            try:
                equal = _clean(json.loads(_masked(pa, a, same, 0)), str(a)) == _clean(
                    json.loads(_masked(pb, b, same, 1)), str(b)
                )
            except ValueError:
                equal = pa.read_bytes() == pb.read_bytes()
            verdict = "same" if equal else "DIFFERENT json"
        elif rel.suffix in (".md", ".yaml", ".html", ".txt"):
            equal = _mask(_masked(pa, a, same, 0), str(a)) == _mask(_masked(pb, b, same, 1), str(b))
            verdict = "same" if equal else "DIFFERENT text"
        else:
            verdict = "same" if pa.read_bytes() == pb.read_bytes() else "DIFFERENT bytes"
        out.append((name, verdict))
    return out


def _masked(path: Path, root: Path, same: tuple[str, str] | None, side: int) -> str:
    text = path.read_text()
    return text.replace(same[side], "<DATA>") if same else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--only", nargs="*", default=None, help="glob patterns of files to compare (default: all)")
    ap.add_argument(
        "--same",
        nargs=2,
        metavar=("PREFIX_A", "PREFIX_B"),
        default=None,
        help="a path prefix in A's files and the one standing for it in B's (masked in both)",
    )
    args = ap.parse_args(argv)
    rows = compare(args.a.resolve(), args.b.resolve(), tuple(args.same) if args.same else None)
    if args.only:
        rows = [r for r in rows if any(Path(r[0]).match(g) for g in args.only)]
    for name, verdict in rows:
        sys.stdout.write(f"{verdict:18s} {name}\n")
    bad = [r for r in rows if r[1] != "same"]
    sys.stdout.write(f"{len(rows) - len(bad)} of {len(rows)} files the same\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
