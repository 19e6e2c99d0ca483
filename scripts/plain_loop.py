"""The pieces of the plain loop a user writes without effens (shared by the benchmarks)."""
from __future__ import annotations

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
