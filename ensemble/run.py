"""The run folder: layout, atomic writes, file hashes, finished-member records.

Everything is written to a temporary file in the target folder, flushed, fsynced and
renamed into place, so a kill never leaves a half-written file behind. Tensors go to
safetensors, arrays to ``.npy`` (read back with ``allow_pickle=False``), the rest to JSON.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class RunError(ValueError):
    """A run folder is inconsistent: a changed config, a tampered or missing file."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def check_hashes(folder: Path, hashes: dict[str, str], record: str) -> None:
    """Refuse the first file in ``folder`` that is missing or differs from its recorded hash."""
    for fname, digest in hashes.items():
        path = folder / fname
        if not path.is_file():
            raise RunError(f"{path}: recorded in {record} but missing")
        if sha256_file(path) != digest:
            raise RunError(f"{path}: contents do not match the hash recorded when it was written "
                           f"(modified or corrupted)")


class RunFolder:
    """Paths and records of one run (see the README's run-folder layout)."""

    MEMBER_FILES = ("model.safetensors", "samples.npy", "oob.npy", "oob_proba.npy")

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # layout
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def classes_path(self) -> Path:
        return self.root / "classes.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def member_dir(self, name: str) -> Path:
        return self.root / "members" / name

    # members
    def member_done(self, name: str, fingerprint: str) -> bool:
        """True when the member finished with this fingerprint and its files are intact."""
        meta_path = self.member_dir(name) / "member.json"
        if not meta_path.is_file():
            return False
        meta = read_json(meta_path)
        if meta.get("fingerprint") != fingerprint:
            return False
        self.verify_member(name, meta)
        return True

    def verify_member(self, name: str, meta: dict | None = None) -> dict:
        """Check every recorded file hash of a member; raise naming the first mismatch."""
        d = self.member_dir(name)
        meta = meta if meta is not None else read_json(d / "member.json")
        check_hashes(d, meta.get("files", {}), "member.json")
        return meta

    def save_member(self, name: str, state_dict: dict, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Write a member's files, then ``member.json`` with their hashes (the commit point)."""
        d = self.member_dir(name)
        atomic_write_safetensors(d / "model.safetensors", state_dict)
        for fname, arr in arrays.items():
            atomic_write_npy(d / fname, arr)
        files = ["model.safetensors", *arrays]
        meta = dict(meta, files={f: sha256_file(d / f) for f in files})
        atomic_write_json(d / "member.json", meta)

    def seal(self, subdir: str) -> None:
        """Record the SHA-256 of every file in ``subdir`` (``hashes.json``, written last)."""
        d = self.root / subdir
        files = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != "hashes.json"
                       and not p.name.startswith("."))
        atomic_write_json(d / "hashes.json", {f: sha256_file(d / f) for f in files})

    def verify(self, subdir: str) -> None:
        """Refuse a sealed folder whose files changed, naming the first bad file."""
        d = self.root / subdir
        if not (d / "hashes.json").is_file():
            raise RunError(f"{d}: no hashes.json (unfinished or not an effens run folder)")
        check_hashes(d, read_json(d / "hashes.json"), "hashes.json")

    def load_member(self, name: str) -> tuple[dict, dict, dict[str, np.ndarray]]:
        """(state dict, member.json, arrays), after checking the hashes."""
        from safetensors.torch import load_file

        d = self.member_dir(name)
        if not (d / "member.json").is_file():
            raise RunError(f"{d}: no finished member here (member.json missing)")
        meta = self.verify_member(name)
        state = load_file(str(d / "model.safetensors"), device="cpu")
        arrays = {f[:-4]: read_npy(d / f) for f in meta["files"] if f.endswith(".npy")}
        return state, meta, arrays
