"""effens: bagged ensembles of EfficientNet image classifiers."""

__version__ = "0.1.0"

from members.cpu_share import share_cpu  # noqa: E402

share_cpu()  # waiting threads sleep: effens shares a small CPU in proportion (members.cpu_share)


def __getattr__(name):  # keep `import ensemble` light: torch loads only when needed
    if name == "BaggedEnsemble":
        from .estimator import BaggedEnsemble

        return BaggedEnsemble
    raise AttributeError(name)


__all__ = ["BaggedEnsemble", "__version__"]
