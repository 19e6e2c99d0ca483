"""One member's training settings (``members.N.train`` in the config): owned here, by the
package that reads them, and built with the shared schema (:mod:`members.schema`), so a
training key is a field here plus the code that reads it. :mod:`ensemble.config` nests
them in each member's section (``ensemble.config.TrainConfig`` is this class)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .schema import ConfigError, field, interval


def _check_freeze(value: Any) -> str | None:
    if isinstance(value, int):
        return "must be >= 0" if value < 0 else None
    if value not in ("none", "backbone"):
        return "must be `none`, `backbone` or a number of blocks"
    return None


@dataclasses.dataclass
class TrainConfig:
    """How one member trains (``members.N.train``): read by :mod:`members.trainer`,
    :mod:`members.transforms` and :mod:`members.features`."""

    epochs: int = field(3, check=interval(1, 10_000), doc="training epochs")
    batch_size: int = field(32, check=interval(1, 65_536), doc="images per step")
    lr: float = field(1e-3, check=interval(0, None, low_open=True), doc="peak AdamW learning rate")
    backbone_lr_scale: float = field(
        1.0, check=interval(0, 1), doc="backbone learning rate as a share of `lr` (head: `lr`)"
    )
    weight_decay: float = field(0.05, check=interval(0, None), doc="AdamW weight decay")
    warmup_epochs: float = field(0.5, check=interval(0, 10_000), doc="linear warm-up, then cosine decay")
    freeze: int | str = field(
        "none", check=_check_freeze, doc="`none`, `backbone` (head only) or N = stem + first N blocks frozen"
    )
    augment: str | None = field(
        "rand-m9-mstd0.5",
        doc="timm auto-augment preset (rand-*, augmix-*, original, v0); `none` or null for flip + crop only",
    )
    min_image_size: int | None = field(
        None,
        check=interval(8, 4096),
        doc="progressive resizing: the first epoch trains at this "
        "size, growing linearly to `image_size` by the last "
        "third of epochs (null: off)",
    )
    crop_scale: list[float] = field(default_factory=lambda: [0.25, 1.0], doc="random-resized-crop area range")
    hflip: float = field(0.5, check=interval(0, 1), doc="horizontal flip probability")
    robust: Literal["none", "light", "strong"] = field(
        "none",
        doc="robustness augmentation per image (downscale-upscale, JPEG re-encoding, mild blur, "
        "photometric jitter), for photos from other sources",
    )
    label_smoothing: float = field(0.1, check=interval(0, 1, high_open=True), doc="cross-entropy label smoothing")
    drop_rate: float | None = field(
        None, check=interval(0, 1, high_open=True), doc="dropout before the classifier; default: the model's"
    )
    eval_batch_size: int = field(64, check=interval(1, 65_536), doc="images per inference step")
    num_workers: int = field(0, check=interval(0, 256), doc="augmentation worker processes")
    ema: float | None = field(
        None,
        check=interval(0, 1, low_open=True, high_open=True),
        doc="decay of an exponential moving average of the weights, updated every "
        "step (e.g. 0.998; warmed up over the first steps); null: off",
    )
    swa_epochs: int = field(
        0, check=interval(0, 10_000), doc="SWA: average the weights at the end of the last N epochs (0: off)"
    )
    select: Literal["best", "last", "ema", "swa"] = field(
        "best",
        doc="the weights a member keeps: best epoch on val, last epoch, the EMA (needs `ema`) or "
        "the SWA average (needs `swa_epochs`); every candidate's val score is kept in the member's record",
    )
    lp_epochs: int = field(
        0,
        check=interval(0, 10_000),
        doc="LP-FT: first train the head alone for N epochs on frozen, un-augmented "
        "features, then fine-tune from that head (0: off)",
    )
    wise_alpha: float = field(
        1.0,
        check=interval(0, 1),
        doc="WiSE-FT: keep alpha x the selected weights + (1 - alpha) x the linear-probe "
        "weights (1: fine-tuned only; below 1 needs `lp_epochs`)",
    )

    def validate(self, path: str) -> None:
        if self.select == "ema" and not self.ema:
            raise ConfigError(f"`{path}.select` is ema but `{path}.ema` is not set; set a decay such as 0.998")
        if self.select == "swa" and not self.swa_epochs:
            raise ConfigError(
                f"`{path}.select` is swa but `{path}.swa_epochs` is 0; set how many last epochs to average"
            )
        if self.swa_epochs > self.epochs:
            raise ConfigError(
                f"`{path}.swa_epochs` must be at most `{path}.epochs` ({self.epochs}); got {self.swa_epochs}"
            )
        if self.wise_alpha < 1 and not self.lp_epochs:
            raise ConfigError(
                f"`{path}.wise_alpha` below 1 interpolates with the linear probe, so it needs `{path}.lp_epochs` > 0"
            )
        lo_hi = self.crop_scale
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            raise ConfigError(f"`{path}.crop_scale` must be [low, high] with 0 < low <= high <= 1; got {lo_hi}")
