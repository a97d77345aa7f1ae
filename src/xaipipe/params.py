"""Declared hyper-parameters, shared by methods and metrics: defaults, types, allowed values.

A component declares ``params = {"steps": Param(32, int, min=1), ...}``; :func:`check_params`
fills defaults and stops with a :class:`ConfigError` naming the key and what would be right.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .errors import ConfigError


@dataclass(frozen=True)
class Param:
    default: Any
    type: type | tuple[type, ...] = object
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    doc: str = ""
    #: a parameter added after its component's first release: while it is at its default it is
    #: left out of the random seeds and of the job signatures (:meth:`ParamSet.signature`), so
    #: runs that do not use it draw, and are keyed, as before it existed
    omit_default: bool = False

    def check(self, value, where: str):
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if value is None and (self.default is None or type(None) in types):
            return None                   # an optional value: null passes, bounds are for numbers
        if self.choices is not None and not _is_free(value, self.type):
            if value not in self.choices:
                raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: "
                                  f"{', '.join(map(repr, self.choices))}")
            return value
        if isinstance(value, str) and str not in types:
            value = cli_scalar(value)     # `--config` strings: "8" -> 8, "true" -> True
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(f"{where}: expected {names}, got {value!r} ({type(value).__name__})")
        if self.min is not None and value < self.min:
            raise ConfigError(f"{where}: {value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ConfigError(f"{where}: {value!r} is above the maximum {self.max}")
        return value


def cli_scalar(text: str):
    """A string given on Snakemake's command line (which passes nested values as strings) as
    the YAML scalar it spells, or the string itself."""
    import yaml
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, int, float, list)) or value is None else text


def _is_free(value, typ) -> bool:
    """Values of a non-str type bypass ``choices`` (e.g. a tensor baseline instead of a name)."""
    types = typ if isinstance(typ, tuple) else (typ,)
    return not isinstance(value, str) and any(t is not str and isinstance(value, t) for t in types)


def check_params(spec: dict[str, Param], given: dict, where: str) -> dict:
    """Validate ``given`` against ``spec``; returns the complete parameter dict."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(spec)) or '(none)'}")
    out = {}
    for key, p in spec.items():
        out[key] = p.check(given[key], f"{where}.{key}") if key in given else p.default
    return out


def signature_values(spec: dict[str, Param], values: dict) -> dict:
    """``values`` without the parameters ``spec`` declares ``omit_default`` that are at their
    default: what random draws are seeded by and what decides whether a job reruns (a new
    parameter does not change the jobs that existed before it)."""
    return {k: v for k, v in values.items()
            if not (spec[k].omit_default and v == spec[k].default)}


class ParamSet:
    """Base of the typed parameter objects (frozen dataclasses) that :func:`params_class`
    builds from a component's ``Param`` declarations: attribute access (``p.steps``), the
    declarations in ``spec``, :meth:`as_dict` for provenance and seeds, :meth:`replace`."""

    spec: ClassVar[dict[str, Param]] = {}

    def as_dict(self) -> dict:
        """The values by name, in declaration order (plain data: JSON, Snakemake params)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def signature(self) -> dict:
        """:meth:`as_dict` without the parameters declared ``omit_default`` that are at their
        default: what random draws are seeded by and what decides whether a job reruns
        (:func:`signature_values`)."""
        return signature_values(self.spec, self.as_dict())

    def replace(self, **changes) -> "ParamSet":
        """A copy with ``changes`` (not re-validated: callers pass checked values)."""
        return dataclasses.replace(self, **changes)


def _annotation(p: Param):
    types = p.type if isinstance(p.type, tuple) else (p.type,)
    ann = types[0]
    for t in types[1:]:
        ann = ann | t
    return ann


def params_class(owner: type, spec: dict[str, Param]) -> type[ParamSet]:
    """A frozen dataclass ``owner.Params`` with one typed field per declared parameter (its
    default the declared one), picklable as ``<owner's module>.<owner>.Params``. Its
    docstring lists the parameters with their docs."""
    specs = []
    for key, p in spec.items():
        default = p.default
        if isinstance(default, (list, dict, set)):
            f = field(default_factory=lambda d=default: copy.deepcopy(d))
        else:
            f = field(default=default)
        specs.append((key, _annotation(p), f))
    cls = dataclasses.make_dataclass(f"{owner.__name__}Params", specs, bases=(ParamSet,),
                                     frozen=True)
    cls.__module__ = owner.__module__
    cls.__qualname__ = f"{owner.__qualname__}.Params"
    cls.spec = dict(spec)
    lines = [f"Parameters of {owner.__qualname__} (validated by its ``check``):", ""]
    lines += [f"- ``{k}`` ({_annotation(p)}, default {p.default!r}): {p.doc}".rstrip(": ")
              for k, p in spec.items()]
    cls.__doc__ = "\n".join(lines)
    return cls


class Parametrised:
    """What methods and metrics share about their parameters: they declare ``params`` (name ->
    :class:`Param`) and get ``Params`` (:func:`params_class`), built for every subclass;
    :meth:`check` turns a mapping into a validated ``Params``; :meth:`set_params` takes them
    as a ``Params``, a mapping, or keyword arguments, into ``self.hparams``. ``kind`` names
    the component in messages (``method 'x'``)."""

    kind: ClassVar[str] = "component"
    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    Params: ClassVar[type[ParamSet]]      # built from ``params`` for every subclass

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.Params = params_class(cls, cls.params)

    @classmethod
    def check(cls, params: "ParamSet | dict", where: str | None = None) -> ParamSet:
        """The validated ``Params`` of a mapping (defaults filled in; a :class:`ConfigError`
        naming ``where`` and the key otherwise). A ``Params`` of this class is returned as
        it is: it was checked when it was made."""
        if isinstance(params, cls.Params):
            return params
        if isinstance(params, ParamSet):
            params = params.as_dict()
        where = where or f"{cls.kind} {cls.name!r}"
        return cls.Params(**cls.validate(check_params(cls.params, params, where), where))

    @classmethod
    def validate(cls, values: dict, where: str) -> dict:
        """Checks across parameters, after each was checked on its own (``values``: every
        declared parameter); returns the values, possibly normalised. Default: none."""
        return values

    def set_params(self, params: "ParamSet | dict | None", kwargs: dict) -> None:
        """``self.hparams`` from ``params`` (a checked ``Params``, what a job carries, or a
        mapping) or the keyword arguments ``kwargs``, not both."""
        if params is not None and kwargs:
            raise TypeError(f"{self.kind} {self.name!r}: give the parameters as params= or "
                            f"as keywords, not both ({sorted(kwargs)})")
        self.hparams = self.check(kwargs if params is None else params)
