"""One name registry for everything a config names (timm style).

Methods, metrics, data set kinds, variants, filters, tables and figures all register the same
way and fail the same way on an unknown name::

    METHODS = Registry("method", package="xaipipe.explain.methods")

    @METHODS.register            # uses cls.name
    class Saliency(Method): ...

    METHODS.get("saliency")      # -> the class
    METHODS.get("salincy", where="methods.x.method")
    # ConfigError: methods.x.method: unknown method 'salincy'; available: gradcam, ...

A registry with ``package`` imports every module of that package the first time it is used,
so adding a file is all it takes to add an entry.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError


class Registry:
    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self.package = package
        self._items: dict[str, Any] = {}
        self._loaded = package is None

    # -- registration ----------------------------------------------------------------------
    def register(self, obj=None, *, name: str | None = None):
        """Decorator (``@REG.register`` or ``@REG.register(name="x")``) or plain call
        (``REG.register(obj, name="x")``). Classes default to their ``name`` attribute,
        functions to their ``__name__``."""
        def add(o):
            key = name or getattr(o, "name", None) or getattr(o, "__name__", None)
            if not key or not isinstance(key, str):
                raise ValueError(f"{self.kind} {o!r} has no name")
            if key in self._items and self._items[key] is not o:
                raise ValueError(f"{self.kind} name {key!r} is registered twice")
            self._items[key] = o
            return o
        return add if obj is None else add(obj)

    # -- lookup ----------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str, where: str | None = None):
        self._load()
        if name not in self._items:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown {self.kind} {name!r}; "
                              f"available: {', '.join(self.names()) or '(none)'}")
        return self._items[name]

    def __contains__(self, name) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, Any]]:
        self._load()
        return sorted(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

