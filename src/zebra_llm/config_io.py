"""One engine for typed configs: a dataclass from a dict, a YAML / TOML / JSON file, or ``key=value`` text.

The training configs (``zebra_llm.train.config``) and the evaluation methods' options
(``zebra_llm.eval.methods``) are dataclasses built here: values are coerced to the field types
(``"3e-4"`` to a float, ``"true"`` to a bool, ``"4"`` to an int; an integer field takes digits only,
never ``"1e9"`` or ``4.0``) and every mistake is a
:class:`ConfigError` (a ``ValueError``) that names the field by its dotted path and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value is invalid; the message starts with the field's dotted path."""



def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file as a dict: ``.yaml``/``.yml``, ``.toml`` or ``.json``.

    YAML is read with ``safe_load``: tags that would build Python objects
    (``!!python/...``) are refused, never executed. Every problem is a
    ValueError (or FileNotFoundError) naming the file and, where known, the line.
    """
    from .io import check_regular_file, decode_text

    path = check_regular_file(Path(path), "config")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ValueError(f"config: {path} must be a .yaml, .yml, .toml or .json file")
    text = decode_text(path.read_bytes(), path=path, what="config", hint="config files must be UTF-8")
    if suffix in (".yaml", ".yml"):
        data = parse_yaml(text, f"config: {path}")
    elif suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config: {path} is not valid TOML: {_first_line(e)}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config: {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def parse_yaml(text: str, where: str):
    """``yaml.safe_load`` with its errors as one-line ValueErrors starting with ``where``."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(
            f"{where}: {e.problem}{at}; only plain YAML values are allowed (tags that build Python objects are refused)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or _first_line(e)
        raise ValueError(f"{where} is not valid YAML: {problem}{at}") from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy). String items ``"a.b=value"``
    are parsed as YAML scalars, so numbers, booleans and lists work."""
    import copy

    out = copy.deepcopy(data)
    if isinstance(overrides, (list, tuple)):
        parsed = {}
        for item in overrides:
            key, sep, raw = str(item).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set expects KEY=VALUE (e.g. optim.lr=1e-3), got {item!r}")
            parsed[key.strip()] = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
        overrides = parsed
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"config: cannot set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls, data, path: str = ""):
    """Construct dataclass ``cls`` from a mapping, coercing values to the field
    types and naming unknown or mistyped fields by their dotted path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = path or "the config"
        raise ConfigError(
            f"{_join(path, unknown[0])} is not a known field; {where} has: {', '.join(names)}"
        )
    kwargs = {name: coerce(hints[name], data[name], _join(path, name)) for name in names if name in data}
    return cls(**kwargs)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def coerce(tp, value, path: str):
    """``value`` as type ``tp`` (unions, Literal, dataclasses, lists, dicts, bool, int, float, str)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # Exact type matches first, so that "bool | str" keeps True a bool and "x" a str.
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: not _matches(a, value)):
            try:
                return coerce(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path} must not be empty")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = args or (Any,)
        return [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if tp is int:
        # Integers only: digits, no exponent or decimal point (issue 25, item 4). "1e9" or 4.0 in a
        # size field is refused rather than rounded, so a slip of notation cannot ask for 10^9 tokens.
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # exact, also beyond float's 2**53
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            return int(value.strip())
        raise ConfigError(f"{path} must be an integer (digits only, no exponent or decimal point), got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        try:
            number = float(value)  # YAML reads 3e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{path} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    return value


def _matches(tp, value) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and isinstance(value, origin)
