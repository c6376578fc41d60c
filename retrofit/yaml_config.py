"""One strict YAML loader: YAML -> typed dataclasses, with errors that name file, line and key.

Every declarative file of retrofit (training recipes, adapter specs, benchmark specs) is a YAML
mapping whose shape is a dataclass. This module is the one place that turns one into the other:

* :func:`load_yaml` reads a file into a :class:`LocatedDict` (a ``dict`` that also remembers the
  file and line of every key), follows ``extends: other.yaml`` when asked to, and rejects a missing
  file, invalid YAML, a top level that is not a mapping and a key written twice.
* :func:`from_dict` builds a dataclass from a mapping, strictly: an unknown key is an error with
  a did-you-mean, a value of the wrong type is an error naming the dotted key
  (``training.max_steps``), a missing required field is an error. Nested dataclasses,
  ``Optional``, ``Literal``, ``list``, ``tuple`` and ``dict`` annotations are followed; ``Any``
  takes the value as it is (as plain dicts and lists).
* :func:`parse_overrides` / :func:`apply_overrides` apply command-line ``dotted.key=value`` strings
  (values are YAML scalars) to a raw mapping before it is converted.
* :func:`load_dataclass` is the three together.

Errors are :class:`ConfigError` (a ``ValueError``) whose message starts with ``file:line:`` where
the offending key came from a file; :class:`ConfigTypeError` (also a ``TypeError``) for a wrong type
and :class:`ConfigFileNotFoundError` (also a ``FileNotFoundError``) for a missing file, so callers
that catch the builtin exception types keep working.

Usage (an adapter spec, a benchmark spec)::

    raw = load_yaml(path, what="adapter spec")            # LocatedDict, errors name the file
    raw.setdefault("name", Path(path).stem)
    spec = from_dict(AdapterSpec, raw, what="adapter spec")  # unknown keys / wrong types raise

Cross-field checks that run after the conversion can still point at the line of the key they
reject: ``raise ConfigError("must be >= 1", key="training.max_steps", location=locate(raw,
"training.max_steps"))``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "ConfigFileNotFoundError",
    "ConfigTypeError",
    "LocatedDict",
    "apply_overrides",
    "coerce",
    "deep_merge",
    "did_you_mean",
    "from_dict",
    "load_dataclass",
    "load_yaml",
    "locate",
    "parse_overrides",
    "to_dict",
]

T = TypeVar("T")
OVERRIDE_LOCATION = "command-line override"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """An invalid YAML file, key or value. ``str(error)`` is one line: ``[location: ]message``.

    ``key``: the dotted key at fault (``training.max_steps``) when there is one; ``location``:
    ``file:line`` (or ``command-line override``) where that key was written, when known.
    """

    def __init__(self, message: str, *, key: str | None = None, location: str | None = None):
        self.message = message
        self.key = key
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)

    def at(self, location: str | None) -> ConfigError:
        """The same error with ``location`` (kept if it already has one)."""
        if self.location is not None or location is None:
            return self
        return type(self)(self.message, key=self.key, location=location)


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type (also a ``TypeError``)."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A YAML file (or a file it names) that does not exist (also a ``FileNotFoundError``)."""


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """`` did you mean 'x'? Valid keys: a, b, x.`` (the hint only when a close match exists)."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f" did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(sorted(valid))}."


# ---------------------------------------------------------------------------------------------
# YAML with locations
# ---------------------------------------------------------------------------------------------


class LocatedDict(dict):
    """A ``dict`` read from YAML that remembers where each key was written (``file:line``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.locations: dict[Any, str] = {}

    def location(self, key: Any) -> str | None:
        """``file:line`` of ``key`` (None when it was not read from a file)."""
        return self.locations.get(key)


def _loader_for(source: str) -> type[yaml.SafeLoader]:
    """A SafeLoader whose mappings are LocatedDicts naming ``source``; duplicate keys raise."""

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LocatedDict:
        loader.flatten_mapping(node)
        mapping = LocatedDict()
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            where = f"{source}:{key_node.start_mark.line + 1}"
            if key in mapping:
                raise ConfigError(
                    f"key {key!r} is written twice (first at line "
                    f"{mapping.locations[key].rsplit(':', 1)[-1]}); keep one.",
                    key=str(key), location=where,
                )  # fmt: skip
            mapping[key] = loader.construct_object(value_node, deep=True)
            mapping.locations[key] = where
        return mapping

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def _read_one(path: Path, what: str) -> Any:
    """Parse one YAML file (no ``extends``); missing files and syntax errors raise ConfigError."""
    if not path.is_file():
        raise ConfigFileNotFoundError(
            f"{what} {str(path)!r} does not exist (looked in {Path.cwd()})."
        )
    try:
        # _loader_for returns a SafeLoader subclass: no arbitrary Python objects.
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_loader_for(str(path)))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(
            f"{what} is not valid YAML: {err.problem or err}", location=where
        ) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {err}") from err


def load_yaml(
    path: str | os.PathLike[str],
    *,
    what: str = "config",
    extends_key: str | None = None,
    _seen: tuple[Path, ...] = (),
) -> LocatedDict:
    """Read the YAML mapping in ``path`` (an empty file is ``{}``).

    ``what`` names the kind of file in errors ("recipe", "adapter spec"). With ``extends_key``
    (e.g. ``"extends"``), a top-level ``extends: other.yaml`` (relative to the file) is loaded
    first and this file's keys are merged over it, section by section (:func:`deep_merge`).
    Raises ConfigFileNotFoundError / ConfigError (invalid YAML, not a mapping, duplicate key,
    ``extends`` cycle).
    """
    path = Path(path)
    if path.resolve() in _seen:
        cycle = [str(p) for p in _seen]
        raise ConfigError(f"{what} {str(path)!r}: `extends` cycle through {cycle}.")
    raw = _read_one(path, what)
    if raw is None:
        raw = LocatedDict()
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{what} {str(path)!r}: top level must be a mapping, got {type(raw).__name__}."
        )
    if extends_key is None or extends_key not in raw:
        return raw
    parent = raw.pop(extends_key)
    if not isinstance(parent, str):
        raise ConfigError(
            f"{what} {str(path)!r}: `{extends_key}` must be a path string.",
            key=extends_key, location=raw.location(extends_key),
        )  # fmt: skip
    base = load_yaml(
        path.parent / parent, what=what, extends_key=extends_key, _seen=_seen + (path.resolve(),)
    )
    return deep_merge(base, raw)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> LocatedDict:
    """``over`` merged into ``base`` section by section (mappings merge, anything else replaces);
    each key keeps the location of the file it finally comes from."""
    merged = LocatedDict(base)
    merged.locations.update(getattr(base, "locations", {}))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
        location = over.location(key) if isinstance(over, LocatedDict) else None
        if location is not None:
            merged.locations[key] = location
        else:
            merged.locations.pop(key, None)
    return merged


def locate(raw: Mapping[str, Any], dotted_key: str) -> str | None:
    """Where ``dotted_key`` (``training.max_steps``) was written in ``raw`` (None if unknown);
    for a key that is not there, where its nearest enclosing section was written."""
    node: Any = raw
    found = None
    for part in dotted_key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            break
        if isinstance(node, LocatedDict):
            found = node.location(part) or found
        node = node[part]
    return found


# ---------------------------------------------------------------------------------------------
# Command-line overrides
# ---------------------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``["training.max_steps=10", ...]`` into ``[(["training", "max_steps"], 10), ...]``.

    Values are YAML scalars (or flow collections): ``10`` -> int, ``3e-5`` -> str (YAML 1.1; a
    float field accepts it), ``true`` -> bool, ``null`` -> None, ``[a, b]`` -> list. A leading
    ``--`` is accepted (``--key=value``).
    """
    parsed = []
    for item in items:
        text = item.removeprefix("--")
        if "=" not in text:
            raise ConfigError(
                f"override {item!r}: expected dotted.key=value (e.g. training.max_steps=10)."
            )
        key, raw = text.split("=", 1)
        parts = key.strip().split(".")
        if not key.strip() or any(not part for part in parts):
            raise ConfigError(f"override {item!r}: empty key segment in {key!r}.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err}).") from err
        parsed.append((parts, value))
    return parsed


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[tuple[list[str], Any]]
) -> dict[str, Any]:
    """Set each dotted key in the raw mapping (creating sections as needed); returns ``raw``.
    Keys set here are located as ``command-line override``."""
    for parts, value in overrides:
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = LocatedDict()
                _set_location(node, part, OVERRIDE_LOCATION)
            if not isinstance(child, dict):
                dotted = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {'.'.join(parts)}: {dotted} is {child!r}, not a section."
                )
            node = child
        node[parts[-1]] = value
        _set_location(node, parts[-1], OVERRIDE_LOCATION)
    return raw


def _set_location(node: dict[str, Any], key: str, location: str) -> None:
    if isinstance(node, LocatedDict):
        node.locations[key] = location


# ---------------------------------------------------------------------------------------------
# Mapping -> dataclass
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    """A readable name for a type annotation (for error messages)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _plain(value: Any) -> Any:
    """``value`` with every LocatedDict turned into a plain dict (for ``Any`` fields)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _kind(value: Any) -> str:
    """The YAML-level type name of a value (a LocatedDict is a dict)."""
    return "dict" if isinstance(value, dict) else type(value).__name__


def _type_error(where: str, expected: str, value: Any, hint: str = "") -> ConfigTypeError:
    return ConfigTypeError(
        f"{where}: expected {expected}, got {value!r} ({_kind(value)}){hint}.", key=where
    )


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    options = [arg for arg in args if arg is not type(None)]
    if len(options) == 1 and typing.get_origin(options[0]) is not Literal:
        # Optional[X]: X's own error is the precise one (a Literal lists null among its choices).
        return coerce(value, options[0], where)
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, where)
        except ConfigError:
            continue
    raise ConfigTypeError(
        f"{where}: expected {_type_name(tp)}, got {value!r} ({_kind(value)}).", key=where
    )


def _coerce_literal(value: Any, tp: Any, where: str) -> Any:
    choices = typing.get_args(tp)
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{where}: {value!r} is not one of {', '.join(repr(c) for c in choices)}.{hint}",
            key=where,
        )
    return value


def _coerce_list(value: Any, tp: Any, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigTypeError(
            f"{where}: expected a list ({_type_name(tp)}), got {value!r}.", key=where
        )
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigTypeError(
                f"{where}: expected {len(args)} items ({_type_name(tp)}), got {value!r}.",
                key=where,
            )
        pairs = enumerate(zip(value, args, strict=True))
        return [coerce(item, arg, f"{where}[{i}]") for i, (item, arg) in pairs]
    item_tp = args[0] if args else Any
    return [coerce(item, item_tp, f"{where}[{i}]") for i, item in enumerate(value)]


def _coerce_dict(value: Any, tp: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigTypeError(
            f"{where}: expected a mapping ({_type_name(tp)}), got {value!r}.", key=where
        )
    args = typing.get_args(tp)
    value_tp = args[1] if len(args) == 2 else Any
    return {str(k): coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigTypeError(
                f"{where}: expected true/false, got {value!r} ({_kind(value)}).", key=where
            )
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(where, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigTypeError(f"{where}: expected a number, got {value!r}.", key=where)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it obviously is.
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(where, "a number", value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(where, "a string", value, "; quote it in YAML")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigTypeError(f"{where}: expected {tp.__name__}, got {value!r}.", key=where)
    return value


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce) ``value`` against the annotation ``tp``; ``where`` is its dotted
    key. Nested dataclasses are built with :func:`from_dict`. Raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _plain(value)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is Literal:
        return _coerce_literal(value, tp, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigTypeError(
                f"{where}: expected a mapping (section {tp.__name__}), got {value!r}.", key=where
            )
        return from_dict(tp, value, prefix=where)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        return _coerce_list(value, tp, where)
    if origin in (dict, Mapping) or tp is dict:
        return _coerce_dict(value, tp, where)
    return _coerce_scalar(value, tp, where)


def from_dict(
    cls: type[T], data: Mapping[str, Any], *, prefix: str = "", what: str = "config"
) -> T:
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys, wrong types and missing
    required fields raise ConfigError naming the dotted key (``prefix.key``) and, when ``data``
    was read by :func:`load_yaml`, the file and line. A ``ValueError`` / ``TypeError`` raised by
    the dataclass itself (``__post_init__`` validation) becomes a ConfigError naming the section.
    """
    if not isinstance(data, Mapping):
        raise ConfigTypeError(f"{prefix or what}: expected a mapping, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        location = data.location(key) if isinstance(data, LocatedDict) else None
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key.{did_you_mean(str(key), list(fields))}",
                key=where, location=location,
            )  # fmt: skip
        try:
            kwargs[key] = coerce(value, hints[key], where)
        except ConfigError as err:
            raise err.at(location) from None
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{prefix or what}: missing required key(s) {', '.join(missing)}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a dataclass's own __post_init__ validation
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"{prefix or what}: {err}", key=prefix or None, location=_mentioned(data, str(err))
        ) from err


def _mentioned(data: Mapping[str, Any], message: str) -> str | None:
    """Location of the first key of ``data`` that ``message`` names (validation messages name the
    field they reject), else None."""
    if not isinstance(data, LocatedDict):
        return None
    hits = [
        (match.start(), key)
        for key in data
        if (match := re.search(rf"(?<![\w-]){re.escape(str(key))}(?![\w-])", message))
    ]
    return data.location(min(hits)[1]) if hits else None


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-serialisable Python (for saving a resolved config)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_dataclass(
    cls: type[T],
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    what: str = "config",
    extends_key: str | None = None,
    prepare: Callable[[LocatedDict], None] | None = None,
) -> T:
    """:func:`load_yaml` + :func:`apply_overrides` + :func:`from_dict` in one call.

    ``prepare`` may edit the raw mapping before the conversion (e.g. default ``name`` to the
    file's stem).
    """
    raw = load_yaml(path, what=what, extends_key=extends_key)
    apply_overrides(raw, parse_overrides(overrides))
    if prepare is not None:
        prepare(raw)
    return from_dict(cls, raw, what=what)
