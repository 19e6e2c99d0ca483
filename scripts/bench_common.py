"""What the benchmark scripts share: the plain loop's file dataset (what a user writes
without effens) and printing/saving the figures."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import torch
from PIL import Image


class FileDataset(torch.utils.data.Dataset):
    """Image files decoded by PIL and passed through a torchvision transform ``tf``."""

    def __init__(self, paths: list[str], tf) -> None:
        self.paths, self.tf = paths, tf

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as img:
            return self.tf(img.convert("RGB"))


def report_json(res: dict, out: str | None) -> None:
    """Print the figures as JSON and, with ``out``, write them there too."""
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def machine() -> dict:
    """The CPU model, its relevant flags, cores, Python and the checkout's commit."""
    from members.precision import cpu_info

    model, flags = cpu_info()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).resolve().parent
    ).stdout.strip()
    return {
        "cpu": model,
        "flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit or None,
    }


def run_main(main) -> None:
    """Run a benchmark's ``main``; a bad input (a missing folder, a bad config) is one line
    on stderr and exit 2, as for every effens command, never a traceback."""
    import sys

    from members.errors import EffensError

    try:
        main()
    except EffensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
