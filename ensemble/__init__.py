"""effens: bagged ensembles of EfficientNet image classifiers."""
__version__ = "0.1.0"


def __getattr__(name):  # keep `import ensemble` light: torch loads only when needed
    if name == "BaggedEnsemble":
        from .estimator import BaggedEnsemble

        return BaggedEnsemble
    raise AttributeError(name)


__all__ = ["BaggedEnsemble", "__version__"]
