"""One name registry for everything a config names (timm style).

Methods, metrics, models, data set kinds, variants, filters, tables and figures all register
the same way, with the registry's decorator, and fail the same way on an unknown name::

    METHODS = Registry("method", package="xaipipe.explain")

    @METHODS.register            # uses cls.name
    class Saliency(Method): ...

    METHODS.get("saliency")      # -> the class
    METHODS.get("salincy", where="methods.x.method")
    # ConfigError: methods.x.method: unknown method 'salincy'; did you mean saliency?
    #   available: gradcam, ...

A registry knows where its entries live (``package``: a package, whose modules and
sub-packages are all imported, or a single module) and imports it the first time it is asked
for a name, so adding a file there is all it takes to add an entry. Names it does not hold
may still resolve through ``fallback`` (the model zoo: any torchvision classification
architecture).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ConfigError


def unknown_name(where: str | None, kind: str, name, known: list[str], *,
                 label: str = "available", close_pool=(), note: str = "") -> str:
    """``<where>: unknown <kind> 'x'; did you mean y? <label>: a, b, c``: the one form of
    every unknown-name error (registries and catalog names alike). Close matches come from
    ``known`` and ``close_pool``; ``note`` is appended to the list of known names."""
    close = difflib.get_close_matches(str(name), list(known) + list(close_pool), n=3,
                                      cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    listed = ", ".join(known) or "(none)"
    if note:
        listed += f" or {note}"
    prefix = f"{where}: " if where else ""
    return f"{prefix}unknown {kind} {name!r}; {hint}{label}: {listed}"


class Registry:
    """Names of one kind of thing (``kind``: "method", "metric", ...) -> objects.

    ``package``: where the entries register themselves (imported on first lookup).
    ``fallback``: ``fallback(name) -> object or None`` for names that are not registered,
    with ``fallback_names() -> list`` for suggestions and ``fallback_note`` for the error
    message (instead of listing every such name)."""

    def __init__(self, kind: str, package: str | None = None, *,
                 fallback: Callable[[str], Any] | None = None,
                 fallback_names: Callable[[], list[str]] | None = None,
                 fallback_note: str = ""):
        self.kind = kind
        self.package = package
        self.fallback = fallback
        self.fallback_names = fallback_names
        self.fallback_note = fallback_note
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
        if hasattr(pkg, "__path__"):
            for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
                importlib.import_module(info.name)

    def names(self) -> list[str]:
        """The registered names (not those only the fallback knows), sorted."""
        self._load()
        return sorted(self._items)

    def get(self, name: str, where: str | None = None):
        """The entry ``name``; :class:`~xaipipe.errors.ConfigError` naming ``where``, the close
        matches and what is available if there is none."""
        self._load()
        if name in self._items:
            return self._items[name]
        if self.fallback is not None:
            found = self.fallback(name)
            if found is not None:
                return found
        raise ConfigError(self.unknown(name, where))

    def unknown(self, name, where: str | None = None) -> str:
        """The message for an unknown ``name``: where, close matches, what is available."""
        pool = self.fallback_names() if self.fallback_names else []
        return unknown_name(where, self.kind, name, self.names(), close_pool=pool,
                            note=self.fallback_note)

    def __contains__(self, name) -> bool:
        self._load()
        if name in self._items:
            return True
        return self.fallback is not None and self.fallback(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, Any]]:
        self._load()
        return sorted(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
