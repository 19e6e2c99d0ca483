"""create_member(spec): a timm model with its weights, freezing and input settings."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from .inputs import DeviceError, InputConfig, resolve_device  # noqa: F401 (re-exported)
from .weights import WeightsError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Member:
    """A built (not necessarily trained) member."""

    model: nn.Module
    inputs: InputConfig
    frozen: list[nn.Module]
    weights_file: str | None


def _render(spec) -> dict | None:
    """A member spec's ``render`` ranges as plain data (None when off)."""
    render = getattr(spec, "render", None)
    if render is None or not render.short_side:
        return None
    return {"short_side": [int(v) for v in render.short_side], "quality": [int(v) for v in render.quality]}


def input_config(
    model: nn.Module | str, image_size: int | None, view: str = "crop", render: dict | None = None
) -> InputConfig:
    """How a member sees images, from its timm pretrained config: the one rule for the
    input size, the resize-then-crop ratio and the normalisation (``model``: a built model
    or a timm model name, so callers can size caches without building anything)."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    if isinstance(model, str):
        pretrained = get_pretrained_cfg(model)
        cfg = resolve_data_config({}, pretrained_cfg=pretrained.to_dict() if pretrained else None)
    else:
        cfg = resolve_data_config({}, model=model)
    size = image_size or cfg["input_size"][-1]
    return InputConfig(
        image_size=int(size),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=_rgb(cfg["mean"]),
        std=_rgb(cfg["std"]),
        view=view,
        render=render,
    )


def _rgb(values) -> tuple[float, float, float]:
    red, green, blue = (float(v) for v in values)
    return red, green, blue


def frozen_modules(model: nn.Module, freeze: str | int) -> list[nn.Module]:
    """Modules whose parameters stay fixed (and whose norm layers stay in eval mode)."""
    if freeze in ("none", 0):
        return []
    if freeze == "backbone":
        head = model.get_classifier()
        return [m for name, m in model.named_children() if m is not head]
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(
            f"freeze={freeze} needs a model with `.blocks` (EfficientNet-style); "
            f"use `none` or `backbone` for {type(model).__name__}"
        )
    n = int(freeze)
    if n > len(blocks):
        raise ValueError(f"freeze={n} but the model has only {len(blocks)} blocks")
    stem = [getattr(model, a) for a in ("conv_stem", "bn1") if hasattr(model, a)]
    return stem + list(blocks[:n])


def zero_head(model: nn.Module) -> None:
    """Zero a freshly initialised classifier on pretrained features.

    The first predictions are then uniform (loss = log(classes)) instead of the large
    random logits that 1280 unnormalised features give, which destabilise fine-tuning.
    """
    head = model.get_classifier()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()


def set_train_mode(model: nn.Module, frozen: list[nn.Module], training: bool = True) -> None:
    """``model.train(training)``, keeping frozen parts in eval mode (fixed BN statistics)."""
    model.train(training)
    for m in frozen:
        m.eval()


def create_member(spec, num_classes: int, state: dict | None = None, inputs: dict | None = None) -> Member:
    """Build one member from its settings (a :class:`~ensemble.config.MemberConfig`): the
    one builder of every member, fresh or restored.

    Fresh: the architecture with ``spec.weights`` loaded, a zeroed head and the frozen
    parts fixed. Restored (``state`` given): the architecture with those trained weights,
    in eval mode, seeing images as recorded when it was trained (``inputs``, the saved
    :class:`InputConfig` fields; default: :func:`input_config`).
    """
    import timm

    kwargs = {}
    if spec.train.drop_rate is not None:
        kwargs["drop_rate"] = spec.train.drop_rate
    if state is not None:
        model = timm.create_model(spec.model, pretrained=False, num_classes=num_classes, **kwargs)
        model.load_state_dict(state)
        model.eval()
        saved = (
            input_config(model, spec.image_size, spec.view, _render(spec))
            if inputs is None
            else InputConfig.from_record(inputs)
        )
        return Member(model=model, inputs=saved, frozen=[], weights_file=None)
    from .weights import weights_source

    try:
        model, weights_file = weights_source(spec.weights).create(
            spec.model, spec.weights, num_classes=num_classes, **kwargs
        )
    except WeightsError as exc:
        raise WeightsError(f"member {spec.name}: {exc}") from None
    if weights_file is not None:
        zero_head(model)
    frozen = frozen_modules(model, spec.train.freeze)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info(
        "member %s: %s, %s trainable of %s parameters, weights: %s",
        spec.name,
        spec.model,
        f"{n_train:,}",
        f"{n_all:,}",
        weights_file or "none",
    )
    return Member(
        model=model,
        inputs=input_config(model, spec.image_size, spec.view, _render(spec)),
        frozen=frozen,
        weights_file=weights_file,
    )


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when present, else cpu; ``cpu``, ``cuda`` and ``cuda:N`` as asked
    (:func:`members.inputs.resolve_device`, as a ``torch.device``)."""
    return torch.device(resolve_device(name))
