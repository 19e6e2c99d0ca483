"""Tiny generated image data sets for tests (no downloads, a few KB)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("circle", "stripes", "square")


def make_image(kind: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A noisy picture whose class is visible: a disc, horizontal stripes or a square."""
    arr = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-3, 3, 2)
    color = (
        np.array([220, 40, 40])
        if kind == "circle"
        else (np.array([40, 200, 40]) if kind == "stripes" else np.array([40, 40, 220]))
    )
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


def tiny_config(data: Path, epochs: int = 2, n_members: int = 3, **extra) -> dict:
    """A three-member config of timm's tiny ``test_efficientnet`` at 32 px (the first
    ``n_members`` of them: a test that checks no ensemble trains one member, a third of the time)."""
    member = lambda name, ratio, replace: {  # noqa: E731
        "name": name,
        "model": "test_efficientnet",
        "weights": "none",
        "image_size": 32,
        "bagging": {"ratio": ratio, "replace": replace, "stratify": True},
        "train": {
            "epochs": epochs,
            "batch_size": 8,
            "lr": 3e-3,
            "augment": "none",
            "eval_batch_size": 32,
            "warmup_epochs": 0.0,
        },
    }
    cfg = {
        "seed": 0,
        "data": {"train": str(data / "train"), "val": str(data / "val"), "test": str(data / "test")},
        "members": [member("a", 0.8, True), member("b", 0.6, False), member("c", 1.0, True)][:n_members],
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
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".effens.lock"
    }


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a finished run folder (without the lock of the process that trained it)."""
    import shutil

    shutil.copytree(run, dest)
    (dest / ".effens.lock").unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------- `effens serve` over HTTP
def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`effens serve RUN` in a subprocess on a free loopback port, ready when constructed.

    The port is free when picked and taken when the server binds it; a test file in
    another pytest-xdist worker can take it in between, so a bind refused as in use is
    retried on a new port (up to three picks)."""

    def __init__(self, run, *extra, env=None):
        for attempt in range(3):
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ensemble", "serve", str(run), "--port", str(self.port), *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **(env or {})},
            )
            if self._wait_ready(last=attempt == 2):
                return

    def _wait_ready(self, last: bool) -> bool:
        """True once /v1/ready answers 200; False when the port was taken (and not ``last``)."""
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read()
                if not last and "is in use; choose another" in out:
                    return False
                raise AssertionError(f"the server exited with {self.proc.returncode}: {out[-3000:]}")
            try:
                if http_get(self.url + "/v1/ready")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError("the server did not get ready in 180 s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def http_get(url, headers=None):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(url, files=(), headers=None, body=None, content_type=None):
    """multipart/form-data POST of (field, filename, bytes) parts; -> (status, JSON)."""
    boundary = uuid.uuid4().hex
    if body is None:
        parts = []
        for field, name, data in files:
            parts += [
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode(),
                data,
                b"\r\n",
            ]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": content_type or f"multipart/form-data; boundary={boundary}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
