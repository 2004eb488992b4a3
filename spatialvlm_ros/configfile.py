"""
Dataclass configs from YAML files plus command-line overrides, with clear errors.

A file holds a mapping of the dataclass's field names (a top-level key naming the section,
e.g. ``episode:``, may wrap it). Unknown keys are an error naming the known ones; values are
validated by the dataclass's own ``__post_init__``. Lists become tuples where the field's
default is a tuple; numbers become floats where the default is a float, including YAML 1.1's
exponents without a dot (``1e-5`` reads as a string in PyYAML), and anything else there is an
error naming the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar('T')


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the problem."""


def load_mapping(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (the ``section`` sub-mapping when it is present)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except OSError as exc:
        raise ConfigError(f'cannot read config file {path}: {exc.strerror or exc}') from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f'config file {path} is not valid YAML: {exc}') from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path} must hold a mapping, got {type(data).__name__}')
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    return dict(data)


def build_config(cls: type[T], values: dict[str, Any], source: str = 'config') -> T:
    """Build the dataclass ``cls`` from ``values``, rejecting unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f'{source}: unknown key(s) {unknown} for {cls.__name__}; '
                          f'known: {sorted(fields)}')
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, bool):  # before int: a bool is an int
            if not isinstance(value, bool):
                raise ConfigError(f'{source}: {name} must be true or false, got {value!r}')
        elif isinstance(default, float) and not isinstance(value, float):
            value = _as_float(value, name, source)
        elif isinstance(default, int) and (isinstance(value, bool)
                                           or not isinstance(value, int)):
            raise ConfigError(f'{source}: {name} must be an integer, got {value!r}')
        elif isinstance(default, str) and value is not None and not isinstance(value, str):
            raise ConfigError(f'{source}: {name} must be text, got {value!r}')
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f'{source}: {exc}') from exc


def _as_float(value: Any, name: str, source: str) -> float:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f'{source}: {name} must be a number, got {value!r}')


def load_config(cls: type[T], path: str | Path | None = None, section: str | None = None,
                overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from the file at ``path`` (optional), then ``overrides`` not None."""
    values = load_mapping(path, section) if path is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(cls, values, source=str(path) if path is not None else 'config')
