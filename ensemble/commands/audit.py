"""``effens audit SOURCE --out DIR``: label issues, duplicates, odd images and shortcuts."""

from __future__ import annotations

import sys
from pathlib import Path

from . import command, options


def arguments(p) -> None:
    p.add_argument(
        "run",
        metavar="SOURCE",
        help="a run folder made by `effens train` (its data, OOB votes and predictions), a YAML "
        "config (its splits), or a folder of class folders / a CSV manifest (a folder holding "
        "train, val and test folders: those splits)",
    )
    p.add_argument("--out", required=True, help="output folder (index.html, CSVs, audit.json; reused)")
    p.add_argument(
        "--method",
        choices=("prune_by_noise_rate", "confident"),
        default="prune_by_noise_rate",
        help="which images confident learning flags (default: as many per class pair as its estimated noise rate)",
    )
    p.add_argument(
        "--max-distance",
        type=int,
        default=4,
        metavar="BITS",
        help="near-duplicates: perceptual hashes at most this many bits apart (of 64)",
    )
    p.add_argument(
        "--write-exclude",
        metavar="FILE",
        help="also write a `data.exclude` list: flagged training images whose given label has "
        "out-of-sample probability below --threshold, and training twins of exact or near copies "
        "in val/test; auditing a run trained with `data.exclude`, the images it left out that its "
        "ensemble still flags stay listed (a second pass: the others come back)",
    )
    p.add_argument("--threshold", type=float, default=None, help="for --write-exclude (default 0.1)")
    p.add_argument(
        "--min-cosine",
        type=float,
        default=0.75,
        metavar="C",
        help="similar images: nearest neighbours whose pretrained features (centred on the set's "
        "mean) are at least this cosine-similar (catches crops; default 0.75)",
    )
    p.add_argument(
        "--feature-views",
        metavar="VIEWS",
        type=options.name,
        default=None,
        help="comma-separated member views (crop, squash, letterbox or a plugin's) the feature pass "
        "sees each photo through, whatever the members train with: similar pairs under any of "
        "them, label scores under the first (default crop,squash,letterbox)",
    )
    p.add_argument(
        "--no-features",
        "--no-cross-fit",
        dest="no_features",
        action="store_true",
        help="skip the feature pass (pretrained features: label scores for images no member left out, "
        "or for all without a run, and similar-image pairs)",
    )


def summary(doc: dict, out: str, write_exclude: str | None) -> str:
    """The command's last line: each detector's phrase, where the page is."""
    return (
        "; ".join(doc["summary"].values())
        + f" -> {Path(out) / 'index.html'}"
        + (f"; {doc['n_excluded_written']} images listed in {write_exclude}" if write_exclude else "")
    )


def run(args) -> int:
    from ..auditing.audit import FEATURE_VIEWS, run_audit

    if args.threshold is not None and not args.write_exclude:  # before any work: it would change nothing
        raise options.UsageError(
            "--threshold sets which images --write-exclude lists; give --write-exclude FILE too", culprit="--threshold"
        )
    threshold = 0.1 if args.threshold is None else args.threshold
    views = tuple(v.strip() for v in args.feature_views.split(",")) if args.feature_views else FEATURE_VIEWS
    doc = run_audit(
        args.run,
        args.out,
        args.method,
        args.max_distance,
        args.write_exclude,
        threshold,
        not args.no_features,
        args.min_cosine,
        views,
    )
    sys.stdout.write(summary(doc, args.out, args.write_exclude) + "\n")
    return 0


command(
    "audit",
    "probably mislabelled photos, duplicates and leaks, odd images and shortcuts: of a run's data, "
    "a config's splits, or a folder",
    arguments,
    run,
    backend="auditing.audit",
    position=90,
)
