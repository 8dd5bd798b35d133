"""Load and validate a workflow config against ``workflow/schemas/config.schema.yaml``.

The Snakefile and every CLI that reads a config go through :func:`load_config` or
:func:`validate_config`, so a wrong key is reported the same way everywhere: one line
naming the key and what is wrong with it.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from deeprs.errors import ConfigError


def _schema_path() -> Path:
    """The checkout's ``workflow/schemas/config.schema.yaml``, or in an installed wheel the
    copy that setup.py ships as ``deeprs/resources/config.schema.yaml``."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "workflow" / "schemas" / "config.schema.yaml"
    return checkout if checkout.is_file() else package / "resources" / checkout.name


SCHEMA_PATH = _schema_path()


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _key_name(path: list[Any]) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    """One sentence for the most specific schema violation."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        key = _key_name([*path, unknown[0]]) if unknown else _key_name(path)
        return f"config key '{key}' is not known (allowed here: {', '.join(allowed)})"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"config key '{_key_name([*path, missing])}' is required but missing"
    return f"config key '{_key_name(path)}': {error.message}"


def _fill_defaults(instance: dict[str, Any], schema: dict[str, Any]) -> None:
    """Set schema defaults for absent keys, recursing into nested objects."""
    for key, subschema in schema.get("properties", {}).items():
        if key not in instance and "default" in subschema:
            instance[key] = copy.deepcopy(subschema["default"])
        if isinstance(instance.get(key), dict) and subschema.get("type") == "object":
            _fill_defaults(instance[key], subschema)


def validate_config(
    config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH
) -> dict[str, Any]:
    """Fill defaults into ``config`` in place and check it; raise ConfigError on the first problem."""
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    schema = load_schema(schema_path)
    _fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best))
    _check_paths(config)
    return config


def _check_paths(config: dict[str, Any]) -> None:
    data = config["data"]
    if data["source"] != "phantom":
        folder = Path(data["dir"])
        if not folder.is_dir():
            raise ConfigError(
                f"config key 'data.dir': data folder '{folder}' does not exist; "
                "point it at the folder that holds your images"
            )
        if not any(folder.iterdir()):
            raise ConfigError(
                f"config key 'data.dir': data folder '{folder}' is empty; put your cohort "
                "there or point data.dir at the folder that holds it"
            )


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file '{path}' is not valid YAML: {error}") from None
    try:
        return validate_config(config if config is not None else {})
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configfile", type=Path, help="YAML config to check")


def run(args: argparse.Namespace) -> int:
    load_config(args.configfile)
    print(f"{args.configfile}: valid")
    return 0
