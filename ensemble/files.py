"""Files effens writes: atomic writes, strict reads, SHA-256 hashes.

Everything is written to a temporary file in the target folder, flushed, fsynced and
renamed into place, so a kill never leaves a half-written file behind. Tensors go to
safetensors, arrays to ``.npy`` (read back with ``allow_pickle=False``), the rest to JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from members.errors import EffensError


class RunError(EffensError, ValueError):
    """A run folder is inconsistent: a changed config, a tampered or missing file."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; honour the umask like open() does
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=metadata))


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def refuse_irregular(path: str | os.PathLike, flag: str = "") -> None:
    """Refuse a user-named path that exists but is not a regular file (a folder, FIFO,
    device or socket: reading one may block forever), before anything opens it; the one
    line names ``flag`` (the option or key that gave the path) and the path. Nothing there,
    or a link to a regular file, passes."""
    try:
        mode = os.stat(path).st_mode  # follows links (/proc/self/fd/1 is one); opens nothing
    except OSError:
        return  # missing (or unreachable): the caller's own check says so
    kind = next((name for test, name in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "a special file")
    if kind is not None:
        raise RunError(
            f"{f'{flag} ' if flag else ''}{path}: is {kind}; name a file (effens opens only regular "
            f"files: no folders, pipes, devices or sockets)"
        )


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """A file's SHA-256, or ``"unreadable"`` (content fingerprints count such a file, not fail)."""
    try:
        return sha256_file(path)
    except OSError:
        return "unreadable"


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def check_hashes(folder: Path, hashes: dict[str, str], record: str) -> None:
    """Refuse the first file in ``folder`` that is missing or differs from its recorded hash."""
    for fname, digest in hashes.items():
        path = folder / fname
        if not path.is_file():
            raise RunError(f"{path}: recorded in {record} but missing")
        if sha256_file(path) != digest:
            raise RunError(
                f"{path}: contents do not match the hash recorded when it was written (modified or corrupted)"
            )


def write_files(folder: str | os.PathLike, files: dict[str, bytes | str | Any]) -> None:
    """Write several files atomically: bytes as they are, text as UTF-8, the rest as JSON."""
    folder = Path(folder)
    for name, data in files.items():
        if isinstance(data, bytes):
            atomic_write_bytes(folder / name, data)
        elif isinstance(data, str):
            atomic_write_text(folder / name, data)
        else:
            atomic_write_json(folder / name, data)


# ---------------------------------------------------------------- folders effens owns
RECORD = ".effens-files.json"


def _record(path: Path) -> dict:
    try:
        doc = read_json(path) if path.is_file() else {}
    except (ValueError, OSError):
        return {}
    return doc if isinstance(doc, dict) else {}


def owned_files(folder: str | os.PathLike, kind: str) -> set[str]:
    """Files (relative paths) an earlier effens ``kind`` output recorded in ``folder``."""
    doc = _record(Path(folder) / RECORD)
    return set(doc.get("files", [])) if doc.get("kind") == kind else set()


def foreign_files(
    folder: str | os.PathLike, kind: str, record: str = RECORD, whole: bool = False, adopt: Sequence[str] = ()
) -> list[str]:
    """Files in ``folder`` (recursively) that no earlier ``kind`` output of effens recorded in
    ``record``; with ``whole``, a record of that kind claims the whole folder (a run, a tune
    search: every cache and member file under it is effens's). Dot-files are never counted;
    anything that is not a folder is (a FIFO or socket there is not effens's either)."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [""]
    doc = _record(folder / record)
    if whole and doc.get("kind") == kind:
        return []
    listed = doc.get("files", []) if doc.get("kind") == kind else []
    ours = set(listed) | {record, RECORD, *adopt}
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if not p.is_dir() and str(p.relative_to(folder)) not in ours and not p.name.startswith(".")
    )


def refuse_foreign(
    folder: str | os.PathLike, kind: str, who: str, record: str = RECORD, whole: bool = False, adopt: Sequence[str] = ()
) -> None:
    """The one rule for every output folder effens writes (run, report, evaluate, explain,
    tune, export): before any work, refuse a folder that is not a folder, or holds a file no
    earlier ``kind`` output of effens recorded (``who`` names the command in the message).
    ``record``/``whole``/``adopt``: see :func:`foreign_files`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder}: exists and is not a folder; --out names a folder")
    foreign = foreign_files(folder, kind, record, whole, adopt)
    if foreign:
        raise RunError(
            f"{folder / foreign[0]}: not written by {who}; choose a new or empty --out "
            f"(effens never overwrites or removes files it did not write)"
        )


def write_owned(
    folder: str | os.PathLike, files: dict, kind: str, also: Sequence[str] = (), strict: bool = True
) -> None:
    """Write ``files`` into a folder that is new, empty or an earlier ``kind`` output of
    effens; a file effens did not write there is a refusal naming it (nothing is written).
    With ``strict=False`` other files may stay beside ours: only one we would overwrite is
    refused."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{folder}: exists and is not a folder; --out names a folder")
    foreign = [f for f in foreign_files(folder, kind) if f not in also and (strict or f in files)]
    if foreign:
        raise RunError(
            f"{folder / foreign[0]}: not written by effens here; choose a new or empty output "
            f"folder (effens never overwrites files it did not write)"
        )
    write_files(folder, files)
    atomic_write_json(
        folder / RECORD, {"kind": kind, "files": sorted(owned_files(folder, kind) | set(files) | set(also))}
    )
