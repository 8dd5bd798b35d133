"""The workflow config: its schema (the one place every setting's default is written),
validation, and the settings one section hands to its command.

The Snakefile and every command that reads a config go through :func:`load_config` or
:func:`validate_config`, so a wrong key is reported the same way everywhere: one line
naming the key and what is wrong with it. A rule passes its section to its command as one
JSON object (:func:`section_json`); the command reads it back with :func:`read_section`,
which checks it against the same schema and fills the same defaults.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from deeprs.data.grouping import compile_subject_pattern
from deeprs.errors import ConfigError

SCHEMA_NAME = "config.schema.yaml"

JOB_KEYS = ("device", "threads")
"""Keys of ``train`` that belong to one job (its machine), not to the settings of a run:
they reach commands as ``--device``/``--threads`` and never force a rerun."""


def schema_path() -> Path:
    """The config schema: the checkout's ``workflow/schemas/config.schema.yaml``, or in an
    installed wheel the copy shipped as package data ``deeprs/resources/``."""
    checkout = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / SCHEMA_NAME
    if checkout.is_file():
        return checkout
    return Path(str(resources.files("deeprs").joinpath("resources", SCHEMA_NAME)))


@cache
def _read_schema(path: Path) -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The schema as a dictionary (a fresh copy: callers may change it)."""
    return copy.deepcopy(_read_schema(Path(path) if path is not None else schema_path()))


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


def _check(instance: dict[str, Any], schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise ConfigError(_describe(jsonschema.exceptions.best_match(errors)))


def validate_config(config: dict[str, Any], schema: str | Path | None = None) -> dict[str, Any]:
    """Fill defaults into ``config`` in place and check it; raise ConfigError on the first problem."""
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    loaded = load_schema(schema)
    _fill_defaults(config, loaded)
    check_label_table(config.get("data"))
    _check(config, loaded)
    check_method_names(config)
    compile_subject_pattern(config["data"]["subject_pattern"])
    _check_paths(config)
    return config


def _section_schema(section: str) -> dict[str, Any]:
    """The schema of one section as its command receives it: with the study's ``seed``,
    without the per-job keys, nested under the section's name (so messages name the key)."""
    schema = load_schema()
    part = schema["properties"][section]
    part["properties"]["seed"] = schema["properties"]["seed"]
    for key in JOB_KEYS:
        part["properties"].pop(key, None)
    return {"type": "object", "properties": {section: part}}


def section_defaults(section: str) -> dict[str, Any]:
    """Every default of ``section`` (and ``seed``), from the schema."""
    settings: dict[str, Any] = {}
    _fill_defaults(settings, _section_schema(section)["properties"][section])
    return settings


def job_defaults(section: str = "train") -> dict[str, Any]:
    """Defaults of the per-job keys of ``section`` (device, threads), for a command's options."""
    properties = load_schema()["properties"][section]["properties"]
    return {key: properties[key]["default"] for key in JOB_KEYS if key in properties}


def section_json(config: dict[str, Any], section: str) -> str:
    """The settings of ``section`` of a validated config, as the rule hands them to the
    command: one JSON object with the study's seed, without the per-job keys."""
    settings = {k: v for k, v in config[section].items() if k not in JOB_KEYS}
    return json.dumps({**settings, "seed": config["seed"]}, sort_keys=True)


def read_section(text: str, section: str) -> dict[str, Any]:
    """Parse a command's ``--settings`` JSON for ``section``, fill defaults and check it."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--settings (config section '{section}') is not JSON: {error}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"--settings (config section '{section}') must be a JSON object")
    schema = _section_schema(section)
    _fill_defaults(settings, schema["properties"][section])
    _check({section: settings}, schema)
    return settings


def check_label_table(data: Any) -> None:
    """Each structure its own name and its own value, none of them the background's 0.

    Two structures sharing a value would leave one of them empty in every label (and
    every test score of it 0); the schema cannot say so, hence this check. Types are left
    to the schema: only integer values are compared.
    """
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        return
    owners: dict[int, str] = {}
    names: dict[str, str] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if value == 0:
            raise ConfigError(
                f"config key 'data.labels.{name}': value 0 is the background; leave the "
                "background out of the table and give each structure its value (>= 1)"
            )
        if value in owners:
            raise ConfigError(
                f"config key 'data.labels': '{owners[value]}' and '{name}' share value "
                f"{value}; give each structure its own value"
            )
        owners[value] = name
        folded = str(name).casefold()
        if folded in names:
            raise ConfigError(
                f"config key 'data.labels': '{names[folded]}' and '{name}' differ only in "
                "case; give each structure one name"
            )
        names[folded] = str(name)


METHOD_LIST_KEYS = ("methods", "ablation", "label_amount_methods")


def check_method_names(config: dict[str, Any]) -> None:
    """Every name in ``methods``, ``ablation`` and ``label_amount_methods`` is a known method."""
    from deeprs.methods import METHODS

    for key in METHOD_LIST_KEYS:
        for index, name in enumerate(config.get(key) or []):
            if name not in METHODS:
                raise ConfigError(
                    f"config key '{key}.{index}': '{name}' is not one of {list(METHODS)}"
                )


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.MarkedYAMLError(
                problem=f"key '{key}' is given twice in one mapping", problem_mark=mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _describe_yaml_error(path: Path, error: yaml.YAMLError) -> str:
    """``config file 'x.yaml', line 6, column 15: <problem>``: one line, numbered from 1."""

    def at(mark: Any) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context:
        problem += f" ({context}" + (f" at {at(context_mark)})" if context_mark else ")")
    where = f", {at(mark)}" if mark is not None else ""
    return f"config file '{path}'{where}: {problem}; fix the YAML there"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a syntax error or repeated key is one ConfigError line
    with the file, line and column."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.load(handle, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(_describe_yaml_error(path, error)) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys to values")
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
    config = read_config_file(path)
    try:
        return validate_config(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
