"""One ensemble member: a timm model, its weights, its training loop and its predictor."""

from .cpu_share import share_cpu

share_cpu()  # before torch loads OpenMP (members.cpu_share)


def __getattr__(name):  # keep `import members.views` light: torch and timm load only when needed
    if name in ("Member", "create_member"):
        from . import models

        return getattr(models, name)
    raise AttributeError(name)


__all__ = ["Member", "create_member"]
