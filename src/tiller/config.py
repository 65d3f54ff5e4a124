"""Typed configs: dataclasses that load from YAML and take ``key=value`` overrides from the command line.

Each stage owns a dataclass of its settings (field docs are in ``metadata['help']``). Loading is strict:
an unknown key, a value of the wrong type or a missing path raises :class:`ConfigError` with one clear
line naming the file and the field; the CLI turns that into exit status 2.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped]  # stubs are the separate types-PyYAML package

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line meant for the user."""


def field(default: Any = MISSING, *, help: str = "", default_factory: Any = MISSING) -> Any:
    """A dataclass field with a help text (shown by ``tiller STAGE --help`` and in docs)."""
    kw: dict[str, Any] = {"metadata": {"help": help}}
    if default_factory is not MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; converts only losslessly (int -> float, str -> Path)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        vt = args[1] if len(args) > 1 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and is_dataclass(tp):  # an annotation is a class, never a dataclass instance
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    data = dict(data)
    for k, v in data.items():  # a nested section given partly keeps the field's own defaults for the rest
        f = known[k]
        if isinstance(v, dict) and f.default_factory is not MISSING:
            default = f.default_factory()
            if is_dataclass(default):
                data[k] = {**to_dict(default), **v}
    kwargs = {k: _coerce(v, hints[k], f"{where}: field {k!r}") for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A config as plain YAML/JSON-able data (paths as strings)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3); the value is parsed as YAML so ``x=[1,2]`` and ``flag=true`` work."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    for p in path[:-1]:
        data = data.setdefault(p, {})
        if not isinstance(data, dict):
            raise ConfigError(f"override {'.'.join(path)}: {p!r} is not a section")
    data[path[-1]] = value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults <- ``base`` <- YAML file ``path`` <- ``overrides`` (``key=value``, dotted for nesting)."""
    data: dict[str, Any] = dict(base or {})
    where = "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of settings at the top level")
        data.update(loaded)
        where = str(p)
    for o in overrides:
        keys, value = parse_override(o)
        _set(data, keys, value)
        where = f"{where} (with overrides)" if "overrides" not in where else where
    return from_dict(cls, data, where)


def help_lines(cls: type) -> list[str]:
    """``name (type, default): help`` for every field, for ``--help`` epilogues and docs."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        default = (
            f.default
            if f.default is not MISSING
            else (f.default_factory() if f.default_factory is not MISSING else "required")
        )
        if is_dataclass(default):
            default = "{...}"
        out.append(f"{f.name} ({_type_name(hints[f.name])}, default {default!r}): {f.metadata.get('help', '')}")
    return out
