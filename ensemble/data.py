"""Splits from class folders or CSV manifests -> (paths, labels); the class list."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from members.errors import EffensError

from .config import SplitSource

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataError(EffensError, ValueError):
    """A split cannot be read: missing files, unknown labels, empty classes, bad CSV."""


@dataclasses.dataclass
class Split:
    """Image paths with their string labels, in a fixed order."""

    paths: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def encode(self, classes: Sequence[str]) -> np.ndarray:
        """Labels as integer indices into ``classes``; unknown labels are an error."""
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({lab for lab in self.labels if lab not in index})
        if unknown:
            raise DataError(f"labels not in the class list {list(classes)}: {', '.join(unknown)}")
        return np.array([index[lab] for lab in self.labels], dtype=np.int64)

    def subset(self, idx: Sequence[int]) -> "Split":
        return Split([self.paths[i] for i in idx], [self.labels[i] for i in idx])


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def is_hidden(name: str) -> bool:
    """The one hidden-file rule, for folders and manifests alike: a name starting with a dot."""
    return name.startswith(".")


def find_images(root: str | os.PathLike) -> list[str]:
    """Every regular image file under ``root``, recursively, sorted; hidden files and folders
    (``.thumbnails/``) are skipped, and so are FIFOs, sockets and devices (listed in a
    warning; opening one would hang or block)."""
    out: list[str] = []
    special: list[str] = []
    for dirpath, dirnames, filenames in os.walk(str(root)):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for f in sorted(filenames):
            if not is_image_file(f) or is_hidden(f):
                continue
            full = os.path.join(dirpath, f)
            (out if os.path.isfile(full) else special).append(full)
    if special:
        log.warning(
            "%s: skipped %d entries that are not regular files: %s",
            root,
            len(special),
            ", ".join(special[:10]) + (" ..." if len(special) > 10 else ""),
        )
    return out


def load_folder(root: str | os.PathLike) -> Split:
    """ImageFolder layout: ``root/<class>/**/<image>``."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, not a folder of class folders (a CSV manifest must end in .csv)")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    if not class_dirs:
        raise DataError(f"{root}: no class folders inside")
    paths, labels = [], []
    empty = []
    for d in class_dirs:
        files = find_images(d)
        if not files:
            empty.append(d.name)
        paths.extend(files)
        labels.extend([d.name] * len(files))
    if empty:
        raise DataError(f"{root}: class folders with no images: {', '.join(empty)}")
    return Split(paths, labels)


def read_manifest(path: str | os.PathLike, columns: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV manifest in UTF-8 (a BOM is fine) that has ``columns``.

    Text that is not UTF-8, NUL bytes and missing columns are errors naming the file (and
    the line).
    """
    import io

    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text; save the manifest as UTF-8") from None
    if "\0" in text:
        raise DataError(
            f"{path}: line {text[: text.index(chr(0))].count(chr(10)) + 1}: a NUL byte; not a text CSV"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    found = reader.fieldnames or []
    missing = [c for c in columns if c not in found]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; columns are {', '.join(found) or 'none'}")
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: {exc}") from None


def expand_inputs(inputs: Sequence[str], path_column: str = "path") -> list[str]:
    """Files, folders (recursive) and CSV manifests -> image paths, in the order given.

    Paths that do not exist are kept, so that they get an error row.
    """
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = find_images(p)
            if not found:
                log.warning("%s: no image files inside", p)
            out.extend(found)
        elif p.suffix.lower() == ".csv" and p.is_file():
            for line, row in read_manifest(p, (path_column,)):
                if not (row[path_column] or "").strip():
                    raise DataError(f"{p}: line {line}: no path in the `{path_column}` column")
                out.append(manifest_path(p, row[path_column]))
        else:
            out.append(str(p))
    return out


def manifest_path(csv_path: str | os.PathLike, listed: str) -> str:
    """A path listed in a CSV manifest, normalised (``./`` and ``..`` removed; symlinks kept,
    so linked caches such as git-annex keep their listed names): absolute as given, else
    relative to the CSV's folder."""
    return os.path.normpath(os.path.abspath(listed if os.path.isabs(listed) else Path(csv_path).parent / listed))


def load_csv(path: str | os.PathLike, path_column: str = "path", label_column: str = "label") -> Split:
    """A CSV manifest; relative paths resolve against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    rows = [
        (line, (r[path_column] or "", r[label_column] or ""))
        for line, r in read_manifest(path, (path_column, label_column))
    ]
    paths, labels, problems = [], [], []
    seen: dict[str, int] = {}
    for line, (p, lab) in rows:
        if not p or not lab:
            problems.append(f"row {line}: empty path or label")
            continue
        full = manifest_path(path, p)
        key = path_key(full)  # the same file through a linked folder is a duplicate too
        if key in seen:
            problems.append(f"row {line}: duplicate of row {seen[key]} ({p})")
            continue
        seen[key] = line
        if not os.path.isfile(full):
            problems.append(
                f"row {line}: " + ("not a regular file" if os.path.exists(full) else "no such file") + f" {p}"
            )
            continue
        label = lab.strip()
        if not label.isprintable():
            problems.append(f"row {line}: label {label!r} holds a control character (newline, tab, ...)")
            continue
        paths.append(full)
        labels.append(label)
    if problems:
        shown = "; ".join(problems[:20]) + (f"; ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(f"{path}: {len(problems)} bad row(s): {shown}")
    if not paths:
        raise DataError(f"{path}: no rows")
    return Split(paths, labels)


def load_split(source: SplitSource) -> Split:
    if source.csv is not None:
        return load_csv(source.csv, source.path_column, source.label_column)
    return load_folder(source.folder)  # type: ignore[arg-type]


def check_labels(split: Split, classes: Sequence[str], name: str) -> None:
    """Refuse a split whose labels are not all in ``classes``."""
    unknown = sorted(set(split.labels) - set(classes))
    if unknown:
        rows = [f"{p} ({lab})" for p, lab in zip(split.paths, split.labels) if lab not in classes]
        more = f", ... {len(rows) - 10} more" if len(rows) > 10 else ""
        raise DataError(
            f"{name} split has labels not in the training classes {list(classes)}: "
            f"{', '.join(unknown)}; images: {', '.join(rows[:10])}{more}"
        )


def stratified_holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off ``fraction`` of each class as a validation set."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(split))
    counts = Counter(split.labels)
    if min(counts.values()) < 2:
        raise DataError(
            f"cannot hold out a stratified validation set: classes with fewer than "
            f"2 images: {', '.join(c for c, n in counts.items() if n < 2)}"
        )
    n_val = int(np.ceil(fraction * len(split)))
    if n_val < len(counts) or len(split) - n_val < len(counts):
        raise DataError(
            f"cannot hold out a stratified validation set of `data.val_fraction` {fraction:g}: "
            f"{len(split)} training images give {n_val} for val, fewer than one per class "
            f"({len(counts)}) on one side; give a `data.val` split or more images"
        )
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed, stratify=split.labels)
    return split.subset(sorted(tr)), split.subset(sorted(va))


@dataclasses.dataclass
class Dataset:
    """All splits of a run plus the ordered class list (from the training split), and what
    ``data.exclude`` / ``data.relabel`` changed per split."""

    classes: list[str]
    train: Split
    val: Split
    test: Split | None
    changes: dict = dataclasses.field(default_factory=dict)
    val_in_train: int = 0  # val images moved into train by `data.train_on_val`


def read_exclusions(path: str) -> tuple[set[str], set[str]]:
    """(paths, SHA-256 hex digests) listed in an exclude file: one per line (a line starting
    with ``#``, or `` #`` after an entry, is a comment; ``"quoted"`` entries are unquoted as in
    a CSV), or a CSV with a ``path`` column (whatever the file is called)."""
    text = _read_text(path, "data.exclude")
    base = os.path.dirname(os.path.abspath(path))
    first = text.lstrip().split("\n", 1)[0]
    if path.lower().endswith(".csv") or _is_path_header(first):
        reader = csv.DictReader(text.splitlines(), skipinitialspace=True)
        if reader.fieldnames and "path" not in reader.fieldnames:
            raise DataError(
                f"`data.exclude`: {path}: a CSV needs a `path` column; found {', '.join(reader.fieldnames)}"
            )
        entries = [(r["path"] or "").strip() for r in reader]
    else:
        entries = [_entry(ln, base) for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    entries = [e for e in entries if e]
    hashes = {e.lower() for e in entries if is_sha256(e)}
    paths = {path_key(os.path.join(base, os.path.expanduser(e))) for e in entries if e.lower() not in hashes}
    return paths, hashes


def _is_path_header(line: str) -> bool:
    """Whether a list's first line is a CSV header whose first column is ``path`` (quoted or not)."""
    fields = next(csv.reader([line], skipinitialspace=True), [])
    return bool(fields) and fields[0].strip() == "path"


def is_sha256(entry: str) -> bool:
    """Whether a list entry is a file's SHA-256 (64 hex digits) rather than a path."""
    return len(entry) == 64 and all(c in "0123456789abcdefABCDEF" for c in entry)


#: a list line holding one ``"quoted"`` entry (``""`` inside is a quote, as in a CSV), then maybe a comment
_QUOTED = re.compile(r'\s*"((?:[^"]|"")*)"\s*(?:#.*)?')


def _entry(line: str, base: str) -> str:
    """One line's entry: a ``"quoted"`` one unquoted; else a comment starts at `` #`` after
    it, but a file name may hold `` #`` too (``car #3.jpg  # a copy``): the longest cut that
    names a file or a SHA-256 wins, else the first cut (the warning about entries naming no
    image then shows it)."""
    quoted = _QUOTED.fullmatch(line)
    if quoted:
        return quoted.group(1).replace('""', '"')
    cuts = [m.start() for m in re.finditer(r"\s#", line)]
    if not cuts:
        return line.strip()
    for option in [line] + [line[:i] for i in reversed(cuts)]:
        e = option.strip()
        if e and (is_sha256(e) or os.path.isfile(os.path.join(base, os.path.expanduser(e)))):
            return e
    return line[: cuts[0]].strip()


def path_key(path: str) -> str:
    """How list entries and split images are matched: the absolute path with its folder's
    symlinks resolved, so an entry written through a linked folder names the same image; the
    file's own link is kept (two split entries linking to one object, as git-annex makes,
    stay two images)."""
    full = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))


def read_relabels(path: str, classes: Sequence[str]) -> dict[str, str]:
    """Path -> new label from a CSV with ``path`` and ``suggested`` (or ``label``) columns."""
    base = os.path.dirname(os.path.abspath(path))
    reader = csv.DictReader(_read_text(path, "data.relabel").splitlines(), skipinitialspace=True)
    column = next((c for c in ("suggested", "label") if c in (reader.fieldnames or [])), None)
    if "path" not in (reader.fieldnames or []) or column is None:
        raise DataError(
            f"`data.relabel`: {path}: needs a `path` column and a `suggested` or `label` column; "
            f"found {', '.join(reader.fieldnames or []) or 'no header'}"
        )
    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        entry = (row.get("path") or "").strip()
        if not entry:
            raise DataError(f"`data.relabel`: {path}, line {line}: no path")
        label = (row.get(column) or "").strip()
        if label not in classes:
            raise DataError(f"`data.relabel`: {path}, line {line}: {label!r} is not a class ({', '.join(classes)})")
        key = path_key(os.path.join(base, os.path.expanduser(entry)))
        if out.get(key, label) != label:
            raise DataError(
                f"`data.relabel`: {path}, line {line}: {entry} is relabelled {label!r} here and "
                f"{out[key]!r} on line {line_of[key]}; keep one"
            )
        out[key], line_of[key] = label, line
    return out


def _read_text(path: str, key: str) -> str:
    """A list file's text (UTF-8, with or without the byte-order mark spreadsheets write)."""
    if not os.path.isfile(path):  # never opened: a FIFO or a device would block the read
        raise DataError(
            f"`{key}`: {path}: "
            + (
                "is a folder, not a file"
                if os.path.isdir(path)
                else "not a regular file (a FIFO, socket or device)"
                if os.path.exists(path)
                else "file not found"
            )
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"`{key}`: {path}: is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


@dataclasses.dataclass
class DataChanges:
    """``data.exclude`` and ``data.relabel``, read once: excluded paths and file hashes, new
    labels, and the two lists' file names (for messages)."""

    paths: set[str] = dataclasses.field(default_factory=set)
    hashes: set[str] = dataclasses.field(default_factory=set)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    exclude: str | None = None
    relabel: str | None = None

    @classmethod
    def read(cls, exclude: str | None, relabel: str | None, classes: Sequence[str]) -> "DataChanges":
        paths, hashes = read_exclusions(exclude) if exclude else (set(), set())
        return cls(paths, hashes, read_relabels(relabel, classes) if relabel else {}, exclude, relabel)


def change_split(split: Split, changes: DataChanges, matched: set | None = None) -> tuple[Split, dict]:
    """One split with ``changes`` applied, and what changed; the exclude entries (paths,
    hashes) that named one of its images are added to ``matched``. An image both excluded
    and relabelled is refused: the two lists disagree about it."""
    from .files import sha256_file

    matched = set() if matched is None else matched
    keep, out_labels, n_relabelled = [], [], 0
    for i, p in enumerate(split.paths):
        norm = path_key(p)
        digest = sha256_file(p) if changes.hashes and os.path.isfile(p) else None
        new = changes.labels.get(norm)
        if norm in changes.paths or digest in changes.hashes:
            if new is not None:
                raise DataError(
                    f"{p}: is left out by `data.exclude` {changes.exclude} and relabelled {new!r} by "
                    f"`data.relabel` {changes.relabel}; keep it in one list"
                )
            matched.add(norm if norm in changes.paths else digest)
            continue
        keep.append(i)
        n_relabelled += new is not None and new != split.labels[i]
        out_labels.append(new if new is not None else split.labels[i])
    return (
        Split([split.paths[i] for i in keep], out_labels),
        {"excluded": len(split) - len(keep), "relabelled": int(n_relabelled)},
    )


def apply_data_changes(data: "Dataset", exclude: str | None, relabel: str | None) -> "Dataset":
    """``data.exclude`` and ``data.relabel`` applied to every split, with the counts per split.
    A list none of whose entries names an image, or an exclude list that empties val or
    test, is refused (before any training)."""
    if not exclude and not relabel:
        return data
    wanted = DataChanges.read(exclude, relabel, data.classes)
    changes: dict = {}
    splits = {}
    matched: set = set()
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if split is not None:
            split, changes[name] = change_split(split, wanted, matched)
        splits[name] = split
    every = {
        path_key(p)
        for name in ("train", "val", "test")
        if getattr(data, name) is not None
        for p in getattr(data, name).paths
    }
    for key, path, entries, named in (
        ("data.exclude", exclude, wanted.paths | wanted.hashes, matched),
        ("data.relabel", relabel, set(wanted.labels), every),
    ):
        _check_matches(key, path, entries, entries & named)
    for name in ("val", "test"):
        if splits[name] is not None and not len(splits[name]):
            raise DataError(
                f"`data.exclude`: {exclude}: leaves out all {changes[name]['excluded']} images of the "
                f"{name} split, so nothing would score the ensemble there; take them off the list or "
                f"give another `data.{name}`"
            )
    new = Dataset(data.classes, splits["train"], splits["val"], splits["test"], changes)
    present = set(new.train.labels)
    if len(present) < 2:
        raise DataError("`data.exclude` / `data.relabel` leave the training split with fewer than 2 classes")
    emptied = [c for c in data.classes if c not in present]
    if emptied:  # still a class of the model (val and test may hold it), but nothing teaches it
        log.warning(
            "`data.exclude` / `data.relabel` leave no training image of class %s: the members cannot learn it",
            ", ".join(emptied),
        )
    log.info("data.exclude / data.relabel: %s", describe_changes(changes))
    held = {k: v["relabelled"] for k, v in changes.items() if k != "train" and v["relabelled"]}
    if held:  # scores against other labels than the folders say: said where it cannot be missed
        log.warning(
            "`data.relabel` %s changes %s labels: val and test are scored against the new labels (keep "
            "only training rows in the list to score against the folders' labels)",
            relabel,
            " and ".join(f"{n} {k}" for k, n in held.items()),
        )
    return new


def _check_matches(key: str, path: str | None, entries: set[str], found: set[str]) -> None:
    """A list whose entries name no image of the splits is an error (a list for other data, or
    every path written another way); some entries naming none (a typo, a moved image) a warning."""
    unmatched = sorted(entries - found)
    if not unmatched:
        return
    if not found:
        raise DataError(
            f"`{key}`: {path}: none of its {len(entries)} entries names an image of the splits (first: "
            f"{unmatched[0]}); relative paths are read from the list's own folder"
        )
    log.warning(
        "`%s`: %s: %d of its %d entries name no image of the splits (first: %s); relative paths "
        "are read from the list's own folder",
        key,
        path,
        len(unmatched),
        len(entries),
        unmatched[0],
    )


def describe_changes(changes: dict) -> str:
    """``train: 3 excluded, 2 relabelled; val: ...``: what the lists changed, per split."""
    return "; ".join(f"{k}: {v['excluded']} excluded, {v['relabelled']} relabelled" for k, v in changes.items())


def load_dataset(data_cfg, seed: int) -> Dataset:
    """Read every split named in a :class:`~ensemble.config.DataConfig`."""
    train = load_split(data_cfg.train)
    classes = sorted(set(train.labels))
    check_class_names(classes)
    if len(classes) < 2:
        raise DataError(f"the training split needs at least 2 classes; found {classes}")
    if data_cfg.val is not None:
        val = load_split(data_cfg.val)
    else:
        train, val = stratified_holdout(train, data_cfg.val_fraction, seed)
        log.info("no val split given: held out %d of %d training images (stratified)", len(val), len(val) + len(train))
    check_labels(val, classes, "val")
    test = load_split(data_cfg.test) if data_cfg.test is not None else None
    if test is not None:
        check_labels(test, classes, "test")
    missing = sorted(set(classes) - set(val.labels))
    if missing:
        log.warning(
            "val has no image of class(es) %s: its scores for them are undefined and the best epoch "
            "is chosen without them",
            ", ".join(missing),
        )
    data = apply_data_changes(
        Dataset(classes, train, val, test), getattr(data_cfg, "exclude", None), getattr(data_cfg, "relabel", None)
    )
    return with_val_in_train(data) if getattr(data_cfg, "train_on_val", False) else data


def with_val_in_train(data: Dataset) -> Dataset:
    """``data.train_on_val``: val joins train and val is left empty; every held-out figure then
    comes from the members' out-of-bag images."""
    log.info(
        "data.train_on_val: training on %d train + %d val images; held-out figures come from out-of-bag images",
        len(data.train),
        len(data.val),
    )
    merged = Split(data.train.paths + data.val.paths, data.train.labels + data.val.labels)
    return dataclasses.replace(data, train=merged, val=Split([], []), val_in_train=len(data.val))


#: words a class may not be called: predict's `decision` column says "review" for sent-to-review images
RESERVED_CLASSES = ("review",)


def check_class_names(classes: Sequence[str]) -> None:
    """Refuse class names that would make outputs ambiguous: ``review`` (a decision), names
    holding ``|`` (the prediction-set separator) or control characters."""
    for c in classes:
        if c in RESERVED_CLASSES or "|" in c or not c.isprintable() or not c.strip():
            raise DataError(
                f"class name {c!r} is not allowed: class names must be printable, must not contain "
                f"'|' (it separates a prediction set) and must not be 'review' (a decision); "
                f"rename the folder or label"
            )


def overlapping_images(splits: dict[str, Split], limit: int = 5) -> dict[str, dict]:
    """Images whose content (SHA-256) appears in two splits: ``"train/test"`` -> {n, first pairs}."""
    from .files import sha256_file

    digests: dict[str, dict[str, str]] = {}
    for name, split in splits.items():
        d: dict[str, str] = {}
        for p in split.paths:
            try:
                d.setdefault(sha256_file(p), p)
            except OSError:
                continue
        digests[name] = d
    out = {}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sorted(set(digests[a]) & set(digests[b]), key=lambda h: digests[a][h])
            if common:
                out[f"{a}/{b}"] = {"n": len(common), "pairs": [[digests[a][h], digests[b][h]] for h in common[:limit]]}
    return out


def decode_split(split: Split, size: int, on_bad: Literal["error", "skip"], name: str) -> tuple[Split, list, list]:
    """Decode a split; with ``skip``, unreadable files leave the split and are listed."""
    from .images import decode_all

    arrays, bad = decode_all(split.paths, size, on_bad=on_bad, desc=f"decode {name}")
    keep = [i for i, a in enumerate(arrays) if a is not None]
    kept = split.subset(keep)
    if name in ("train", "val") and bad:
        gone = sorted(set(split.labels) - set(kept.labels))
        if gone:
            raise DataError(
                f"{name}: every image of class {', '.join(gone)} was unreadable and skipped (first: {bad[0][1]})"
            )
    return kept, [arrays[i] for i in keep], bad


def cache_size(cfg) -> int:
    """Shorter side images are decoded at: ``data.cache_size``, else the largest member's resize size."""
    from members.models import input_config

    if cfg.data.cache_size:
        return cfg.data.cache_size
    return max(input_config(m.model, m.image_size).resize_size for m in cfg.members)
