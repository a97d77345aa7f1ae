"""The JSON schema of the config (``config.schema.yaml``, shipped with the package), with short
errors."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..params import cli_scalar

#: the checkout this package runs from (its config.yaml, presets/, Snakefile); only meaningful
#: in a source checkout
ROOT = Path(__file__).resolve().parents[3]
#: the JSON schema of the config, shipped with the package (``schemas/config.schema.yaml`` in
#: the checkout links to it, where the Snakemake workflow template keeps schemas)
SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


def validate_schema(config: dict, schema_path=SCHEMA) -> dict:
    """``snakemake.utils.validate`` (JSON schema, defaults filled in); the error is one line
    naming the key (``config key explain.max_images: -3 is less than the minimum of 1``)."""
    from snakemake.utils import validate
    from snakemake_interface_common.exceptions import WorkflowError

    import yaml
    coerce_cli_scalars(config, yaml.safe_load(Path(schema_path).read_text()))
    try:
        validate(config, str(schema_path))
    except WorkflowError as e:
        cause = e.__context__
        if hasattr(cause, "absolute_path") and hasattr(cause, "message"):
            key = ".".join(map(str, cause.absolute_path)) or "(top level)"
            msg = cause.message
            if cause.validator == "additionalProperties":
                allowed = sorted(cause.schema.get("properties", {}))
                msg = f"{msg}; allowed keys: {', '.join(allowed)}"
            elif cause.validator == "oneOf":
                msg = f"{cause.instance!r} is not a name or a mapping of names"
            raise ConfigError(f"config key {key}: {msg}") from None
        raise ConfigError(str(e.args[0] if e.args else e)) from None
    return config


_TYPE_CHECKS = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None}


def _coerced(value, sub: dict):
    """``value`` read as a YAML scalar (:func:`~xaipipe.params.cli_scalar`) where it is a
    string and the sub-schema ``sub`` wants a number, boolean or null and no string; else
    unchanged."""
    types = sub.get("type", [])
    types = [types] if isinstance(types, str) else types
    if not isinstance(value, str) or not types or "string" in types:
        return value
    read = cli_scalar(value)
    return read if any(_TYPE_CHECKS.get(t, lambda v: False)(read) for t in types) else value


def coerce_cli_scalars(config, schema: dict, root: dict | None = None) -> None:
    """Snakemake parses a nested ``--config`` value (``experiments={demo: {max_images: 20}}``)
    with every scalar as a string. Where the schema wants a number, boolean or null and does
    not accept a string, such a string is read as the YAML scalar it spells (in place), so
    command-line overrides mean what they say. Catalog entries are left to their parameter
    checks (:class:`~xaipipe.params.Param` does the same)."""
    root = schema if root is None else root
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    if isinstance(config, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in list(config.items()):
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                config[k] = _coerced(v, sub)
                coerce_cli_scalars(config[k], sub, root)
    elif isinstance(config, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(config):
            config[i] = _coerced(v, schema["items"])
