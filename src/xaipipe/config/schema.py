"""The JSON schema of the config (``schemas/config.schema.yaml``), with short errors."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


def validate_schema(config: dict, schema_path=SCHEMA) -> dict:
    """``snakemake.utils.validate`` (JSON schema, defaults filled in); the error is one line
    naming the key (``config key explain.max_images: -3 is less than the minimum of 1``)."""
    from snakemake.utils import validate
    from snakemake_interface_common.exceptions import WorkflowError

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
