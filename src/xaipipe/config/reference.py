"""The parameter reference of ``docs/configuration.md``, generated from the code.

:func:`parameter_tables` renders Markdown tables of (a) every key of the config schema
(:data:`xaipipe.config.schema.SCHEMA`) with its type, default, allowed values and
description, and (b) the declared :class:`~xaipipe.params.Param` of every registered method,
metric, data set kind, variant and filter, and of preprocessing and training. The page holds
the text between the markers :data:`BEGIN` and :data:`END`; rewrite it with::

    python -m xaipipe.config.reference --write docs/configuration.md

``tests/unit/config/test_reference.py`` fails when the committed page differs from what the
code declares.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- BEGIN GENERATED PARAMETERS -->"
END = "<!-- END GENERATED PARAMETERS -->"
COMMAND = "python -m xaipipe.config.reference --write docs/configuration.md"


def _sources() -> dict[str, tuple[str, dict[str, dict]]]:
    """Every declaration the page lists: config section -> (title, {entry: {name: Param}}).
    The one place that knows where the registries and parameter sets live."""
    from ..data.datasets import DATASETS
    from ..data.filters import FILTERS
    from ..data.preprocess import PREPROCESS_PARAMS
    from ..data.variants import VARIANTS
    from ..explain.base import METHODS
    from ..metrics.base import METRICS
    from ..models.train import TRAIN_PARAMS
    return {
        "methods": ("Methods (`methods.<run>`)", {n: c.params for n, c in METHODS.items()}),
        "metrics": ("Metrics (`metrics.<run>`)", {n: c.params for n, c in METRICS.items()}),
        "datasets": ("Data set kinds (`datasets.<name>`, by `kind`)",
                     {n: c.params for n, c in DATASETS.items()}),
        "variants": ("Variants (`variants.<name>`)", {n: f.params for n, f in VARIANTS.items()}),
        "filters": ("Filters (`filters.<name>`)", {n: f.params for n, f in FILTERS.items()}),
        "preprocess": ("Preprocessing (`preprocess.<name>`)", {"preprocess": PREPROCESS_PARAMS}),
        "train": ("Training of demo models (`models.<name>.train`)", {"train": TRAIN_PARAMS}),
    }


def _schema() -> dict:
    import yaml

    from .schema import SCHEMA
    return yaml.safe_load(Path(SCHEMA).read_text())


# -- formatting -------------------------------------------------------------------------------
def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped, and ``<`` outside
    code spans written as ``&lt;`` (so ``results/<name>/`` is not read as an HTML tag)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _value(v) -> str:
    """A value as it would be written in the YAML config."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return v if v else '""'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _code(v) -> str:
    return f"`{_value(v)}`"


def _type_name(t) -> str:
    types = t if isinstance(t, tuple) else (t,)
    names = {bool: "bool", int: "int", float: "float", str: "str", dict: "mapping",
             list: "list", tuple: "list", type(None): "null", object: "any"}
    return " or ".join(names.get(x, x.__name__) for x in types)


def _param_allowed(p) -> str:
    parts = []
    if p.choices is not None:
        parts.append("one of " + ", ".join(_code(c) for c in p.choices))
    if p.min is not None:
        parts.append(f"≥ {_value(p.min)}")
    if p.max is not None:
        parts.append(f"≤ {_value(p.max)}")
    return "; ".join(parts)


_HEADER = ("| {first} | type | default | allowed | description |\n"
           "|---|---|---|---|---|")


def _param_table(params: dict) -> str:
    rows = [_HEADER.format(first="parameter")]
    for name, p in params.items():
        rows.append(f"| `{name}` | {_cell(_type_name(p.type))} | {_cell(_code(p.default))} | "
                    f"{_cell(_param_allowed(p))} | {_cell(p.doc)} |")
    return "\n".join(rows)


# -- the schema -------------------------------------------------------------------------------
def _resolve(node: dict, root: dict) -> dict:
    """``node`` with a ``$ref`` replaced by its target, local keys kept on top."""
    if "$ref" not in node:
        return node
    target = root
    for part in node["$ref"].lstrip("#/").split("/"):
        target = target[part]
    merged = {**_resolve(target, root), **{k: v for k, v in node.items() if k != "$ref"}}
    merged["_ref"] = node["$ref"].rsplit("/", 1)[-1]
    return merged


_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
               "object": "mapping", "array": "list", "null": "null"}
_REF_TYPES = {"name": "name", "names": "list of names", "catalog": "mapping of names"}


def _schema_type(node: dict) -> str:
    if "_ref" in node and node["_ref"] in _REF_TYPES:
        return _REF_TYPES[node["_ref"]]
    if "oneOf" in node:
        return "name or mapping of names"
    if "enum" in node and "type" not in node:
        return "str"
    t = node.get("type")
    if t is None:
        return "any"
    types = [t] if isinstance(t, str) else t
    return " or ".join(_JSON_TYPES.get(x, x) for x in types)


def _schema_allowed(node: dict) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                      ("exclusiveMaximum", "<"), ("minItems", "items ≥"),
                      ("minProperties", "entries ≥")):
        if key in node:
            parts.append(f"{sign} {_value(node[key])}")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    return "; ".join(parts)


def schema_keys(schema: dict | None = None) -> list[tuple[str, dict, bool]]:
    """Every key of the schema as (dotted key, resolved node, required), in schema order.
    Keys under a mapping of user-chosen names are written ``<name>``
    (``models.<name>.arch``)."""
    root = _schema() if schema is None else schema
    out: list[tuple[str, dict, bool]] = []

    def walk(node: dict, prefix: str) -> None:
        node = _resolve(node, root)
        required = set(node.get("required", ()))
        for key, sub in node.get("properties", {}).items():
            sub = _resolve(sub, root)
            out.append((f"{prefix}{key}", sub, key in required))
            walk(sub, f"{prefix}{key}.")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "properties" in _resolve(extra, root):
            walk(extra, f"{prefix}<name>.")

    walk(root, "")
    return out


def _schema_table(schema: dict | None = None) -> str:
    rows = [_HEADER.format(first="key")]
    for key, node, required in schema_keys(schema):
        default = _code(node["default"]) if "default" in node else (
            "required" if required else "–")
        rows.append(f"| `{key}` | {_cell(_schema_type(node))} | {_cell(default)} | "
                    f"{_cell(_schema_allowed(node))} | {_cell(node.get('description', ''))} |")
    return "\n".join(rows)


# -- the page ---------------------------------------------------------------------------------
def parameter_tables() -> str:
    """The generated Markdown: the schema's keys, then every declared parameter."""
    parts = [
        f"<!-- generated by `{COMMAND}`; edit the schema or the Param declarations -->",
        "",
        "### Config keys",
        "",
        "Keys under a mapping of names you choose are written `<name>`. Catalog entries "
        "(`datasets`, `variants`, `filters`, `methods`, `metrics`, `preprocess`, "
        "`models.<name>.train`) take the parameters listed in the sections below.",
        "",
        _schema_table(),
    ]
    for _section, (title, entries) in _sources().items():
        parts += ["", f"### {title}"]
        for entry, params in sorted(entries.items()):
            parts += ["", f"#### `{entry}`", ""]
            parts.append(_param_table(params) if params else "No parameters.")
    return "\n".join(parts) + "\n"


def generated_part(text: str, where: str = "the page") -> str:
    """The text between :data:`BEGIN` and :data:`END` (without the marker lines)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{where}: expected one {BEGIN} line followed by one {END} line")
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n") + "\n"


def rewrite(text: str, where: str = "the page") -> str:
    """``text`` with the generated part replaced by :func:`parameter_tables`."""
    generated_part(text, where)                  # checks the markers
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{parameter_tables()}{END}{tail}"


def write(path) -> bool:
    """Rewrite the generated part of the page at ``path`` (atomically); True if it changed."""
    from ..utils import atomic_path
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such page")
    old = path.read_text(encoding="utf-8")
    new = rewrite(old, str(path))
    if new == old:
        return False
    with atomic_path(path) as tmp:
        Path(tmp).write_text(new, encoding="utf-8")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xaipipe.config.reference",
                                 description="Print (or write into a page) the generated "
                                             "parameter tables of docs/configuration.md.")
    ap.add_argument("--write", metavar="PAGE",
                    help="rewrite the part of PAGE between the generated-parameter markers")
    args = ap.parse_args(argv)
    if args.write is None:
        sys.stdout.write(parameter_tables())
        return 0
    try:
        changed = write(args.write)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.write}: {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
