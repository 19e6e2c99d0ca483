"""Tiny generated image data sets for tests (no downloads, a few KB)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("circle", "stripes", "square")


def make_image(kind: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A noisy picture whose class is visible: a disc, horizontal stripes or a square."""
    arr = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-3, 3, 2)
    color = np.array([220, 40, 40]) if kind == "circle" else (
        np.array([40, 200, 40]) if kind == "stripes" else np.array([40, 40, 220]))
    if kind == "circle":
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 3) ** 2
    elif kind == "stripes":
        mask = (yy // 5) % 2 == 0
    else:
        lo, hi = int(size * 0.25), int(size * 0.75)
        mask = (yy > lo) & (yy < hi) & (xx > lo) & (xx < hi)
    arr[mask] = np.clip(color + rng.integers(-20, 20, 3), 0, 255)
    return Image.fromarray(arr)


def make_folder(root: str | Path, per_class: int, seed: int = 0, size: int = 40) -> Path:
    """``root/<class>/<i>.png`` for the three synthetic classes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(kind, rng, size).save(root / kind / f"{kind}_{i:03d}.png")
    return root


def make_dataset(root: str | Path, train: int = 16, val: int = 6, test: int = 6) -> Path:
    root = Path(root)
    make_folder(root / "train", train, seed=1)
    make_folder(root / "val", val, seed=2)
    make_folder(root / "test", test, seed=3)
    return root


def tiny_config(data: Path, epochs: int = 2, **extra) -> dict:
    """A three-member config of timm's tiny ``test_efficientnet`` at 32 px."""
    member = lambda name, ratio, replace: {  # noqa: E731
        "name": name, "model": "test_efficientnet", "weights": "none", "image_size": 32,
        "bagging": {"ratio": ratio, "replace": replace, "stratify": True},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "augment": "none",
                  "eval_batch_size": 32, "warmup_epochs": 0.0},
    }
    cfg = {
        "seed": 0,
        "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test")},
        "members": [member("a", 0.8, True), member("b", 0.6, False), member("c", 1.0, True)],
        "combiner": {"strategy": "soft"},
        "device": "cpu",
        # fixed, so that results do not depend on whether this CPU has native bf16 or
        # OpenVINO installed; tests/test_runtimes.py covers the other settings
        "precision": "fp32",
        "runtime": "torch",
    }
    cfg.update(extra)
    return cfg


def config_file(folder: Path, data: Path, name: str = "cfg.yaml", **extra) -> Path:
    """``folder/name`` holding :func:`tiny_config` over ``data`` (``extra`` as there)."""
    import yaml

    path = Path(folder) / name
    path.write_text(yaml.safe_dump(tiny_config(data, **extra)))
    return path


def write_file(path: Path, data: bytes) -> Path:
    """``data`` written to ``path``, its folders made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def digest(folder: Path) -> dict:
    """Every file under ``folder`` (but the lock) -> its SHA-256: what a failed command must leave as it was."""
    import hashlib

    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".effens.lock"}


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a finished run folder (without the lock of the process that trained it)."""
    import shutil

    shutil.copytree(run, dest)
    (dest / ".effens.lock").unlink(missing_ok=True)
    return dest
