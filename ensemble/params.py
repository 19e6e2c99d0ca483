"""scikit-learn's parameter protocol (``get_params``/``set_params``) without importing
scikit-learn, which takes most of a second: a prediction on an exported run must start in
well under one (issue #23). ``sklearn.base.clone`` works on any object with this protocol.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any


class ParamsMixin:
    """Parameters are the constructor's arguments, stored as given under their own names."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments by name (``deep``: nested estimators' as ``name__param``)."""
        out: dict[str, Any] = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> "ParamsMixin":
        """Set constructor arguments (``name__param`` reaches a nested estimator); returns self."""
        valid = self._param_names()
        nested: dict[str, dict] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}; "
                    f"valid parameters are: {', '.join(valid)}"
                )
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, values in nested.items():
            getattr(self, name).set_params(**values)
        return self

    def __sklearn_clone__(self) -> "ParamsMixin":
        """A new unfitted instance with deep copies of the parameters (what ``clone`` does)."""
        return type(self)(**{k: copy.deepcopy(v) for k, v in self.get_params(deep=False).items()})

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items() if len(repr(v)) <= 60)
        return f"{type(self).__name__}({shown})"
