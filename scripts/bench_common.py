"""What the benchmark scripts share: the plain loop's file dataset (what a user writes
without effens) and printing/saving the figures."""
from __future__ import annotations

import json
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
