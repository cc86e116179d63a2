"""Strict conversion between YAML documents and frozen dataclasses.

One loader serves every file exitflow reads (boards, designs, run configurations), so every file
gets the same guarantees:

* YAML is parsed with :func:`yaml.safe_load`; nothing in a file is ever executed or imported.
* An unknown key, a missing key, a value of the wrong type or an impossible value is rejected
  with one line naming the file, the key path (``stages[1].head.threshold``) and what is allowed.
* :func:`to_data` is the inverse of :func:`from_data`, so ``from_data(cls, to_data(x)) == x``.

Supported field types: ``bool``, ``int``, ``float``, ``str``, unions of those, ``Literal[...]``,
``X | None``, ``tuple[X, ...]``, :class:`FrozenMap` ``[str, X]``, nested dataclasses, and named
tuples of numbers (such as :class:`~exitflow.core.resources.Resources`, read from and written as a
mapping of its field names). A dataclass field whose ``metadata`` holds ``omit_none=True`` is left
out of :func:`to_data` while it is None (for files whose writers leave such a key out).

YAML files are read by :func:`load_file`; the JSON files that pass between exitflow's steps by
:func:`load_json_file` (:mod:`exitflow.core.artifacts`), with the same strict checks. Value checks live in
each dataclass's ``__post_init__``, which raises :class:`FieldError` naming the field; the loader
adds the path in front.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, Union

import yaml

from exitflow.core.errors import ConfigError
from exitflow.core.files import atomic_write

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class FieldError(ValueError):
    """Raised by a dataclass's ``__post_init__``: ``field`` is the offending key (may be dotted)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """An immutable, hashable, insertion-ordered mapping, for mappings inside frozen dataclasses."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[K, V] | typing.Iterable[tuple[K, V]] = ()):
        self._items = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


def _join(path: str, key: str) -> str:
    if not path:
        return key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})" if not isinstance(value, (dict, list)) else text


_SCALARS = {bool, int, float, str}


class _Loader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, message: str) -> typing.NoReturn:
        where = f"{self.source}: " if self.source else ""
        key = f"{path}: " if path else ""
        raise ConfigError(f"{where}{key}{message}")

    def load(self, tp: Any, data: Any, path: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            return self.load_dataclass(tp, data, path)
        if _is_number_tuple(tp):
            return self.load_number_tuple(tp, data, path)
        if origin in (Union, types.UnionType):
            non_none = [a for a in args if a is not type(None)]
            if data is None and len(non_none) < len(args):
                return None
            if len(non_none) == 1:
                return self.load(non_none[0], data, path)
            if not set(non_none) <= _SCALARS:
                raise TypeError(f"unsupported union {tp!r}")
            # a union of scalars: the value keeps its own YAML type (bool is not an int here)
            for scalar in (bool, int, float, str):
                if scalar in non_none and type(data) is scalar:
                    return data
            if float in non_none and type(data) is int:
                return float(data)
            allowed = " or ".join(a.__name__ for a in non_none)
            self.fail(path, f"must be {allowed}; got {_describe(data)}")
        if origin is Literal:
            if data in args and type(data) is type(args[args.index(data)]):
                return data
            allowed = ", ".join(repr(a) for a in args)
            self.fail(path, f"must be one of {allowed}; got {_describe(data)}")
        if origin is tuple:
            if not isinstance(data, list):
                self.fail(path, f"must be a list; got {_describe(data)}")
            if len(args) != 2 or args[1] is not Ellipsis:
                raise TypeError(f"unsupported tuple type {tp!r}")
            return tuple(self.load(args[0], item, _join(path, f"[{i}]")) for i, item in enumerate(data))
        if origin is FrozenMap:
            if not isinstance(data, dict):
                self.fail(path, f"must be a mapping of name: value; got {_describe(data)}")
            key_type, value_type = args
            out = {}
            for key, value in data.items():
                if not isinstance(key, key_type) or isinstance(key, bool):
                    self.fail(path, f"key {key!r} must be a {key_type.__name__}")
                out[key] = self.load(value_type, value, _join(path, str(key)))
            return FrozenMap(out)
        if tp is bool:
            if not isinstance(data, bool):
                self.fail(path, f"must be true or false; got {_describe(data)}")
            return data
        if tp is int:
            if isinstance(data, bool) or not isinstance(data, int):
                self.fail(path, f"must be an integer; got {_describe(data)}")
            return data
        if tp is float:
            if isinstance(data, bool) or not isinstance(data, (int, float)):
                self.fail(path, f"must be a number; got {_describe(data)}")
            if not math.isfinite(data):
                self.fail(path, f"must be a finite number; got {data!r}")
            return float(data)
        if tp is str:
            if not isinstance(data, str):
                self.fail(path, f"must be a string; got {_describe(data)}")
            return data
        raise TypeError(f"schema: unsupported field type {tp!r} at {path or '<root>'}")

    def load_dataclass(self, cls: type, data: Any, path: str) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        if not isinstance(data, dict):
            self.fail(path, f"must be a mapping with keys {', '.join(fields)}; got {_describe(data)}")
        unknown = [k for k in data if k not in fields]
        if unknown:
            self.fail(
                _join(path, str(unknown[0])),
                f"unknown key; allowed keys here: {', '.join(fields)}",
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, field in fields.items():
            if name not in data:
                if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                    self.fail(_join(path, name), "missing required key")
                continue
            kwargs[name] = self.load(hints[name], data[name], _join(path, name))
        try:
            return cls(**kwargs)
        except FieldError as err:
            self.fail(_join(path, err.field), err.message)

    def load_number_tuple(self, cls: type, data: Any, path: str) -> Any:
        fields = cls._fields
        if not isinstance(data, dict):
            self.fail(path, f"must be a mapping with keys {', '.join(fields)}; got {_describe(data)}")
        unknown = [k for k in data if k not in fields]
        if unknown:
            self.fail(_join(path, str(unknown[0])), f"unknown key; allowed keys here: {', '.join(fields)}")
        values = {}
        for name in fields:
            if name not in data:
                if name not in cls._field_defaults:
                    self.fail(_join(path, name), "missing required key")
                continue
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.fail(_join(path, name), f"must be a finite number; got {_describe(value)}")
            values[name] = value  # kept as written: an integer count stays an integer
        return cls(**values)


def _is_number_tuple(tp: Any) -> bool:
    """A :class:`typing.NamedTuple` class (its fields are read as numbers)."""
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def from_data(cls: type[T], data: Any, source: str = "") -> T:
    """Build ``cls`` from plain YAML data, rejecting anything the schema does not allow.

    ``source`` (usually the file name) starts every error message.
    """
    return _Loader(source).load(cls, data, "")


def to_data(obj: Any) -> Any:
    """The plain-data (YAML-ready) form of a schema object: the inverse of :func:`from_data`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_data(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.init and not (f.metadata.get("omit_none") and getattr(obj, f.name) is None)
        }
    if _is_number_tuple(type(obj)):
        return {name: to_data(value) for name, value in zip(obj._fields, obj, strict=True)}
    if isinstance(obj, FrozenMap):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [to_data(v) for v in obj]
    return obj


#: The largest YAML file exitflow parses (configs, designs, boards are a few KB): a bigger file is
#: refused before it is read, so a wrong or hostile file cannot take minutes and gigabytes.
MAX_YAML_BYTES = 1 << 20


class _UniqueKeyLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that refuses a mapping holding the same key twice (PyYAML keeps the
    last one silently, so a typo'd second ``threshold:`` would win unnoticed)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` may be overridden by the keys written next to it
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # construct_mapping reports an unhashable key itself
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(key, line, seen[key])
        seen[key] = line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str, source: str = "") -> Any:
    """Parse YAML text safely (nothing is executed), refusing duplicate keys; errors are one
    :class:`ConfigError` line naming ``source``, the line and the problem."""
    where = f"{source}: " if source else ""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as err:
        raise ConfigError(
            f"{where}line {err.line}: duplicate key {err.key!r} (first at line {err.first}); keep one of them"
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}malformed YAML: {at}{err.problem or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}malformed YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{where}malformed YAML: nested too deeply") from None


def read_yaml(path: str | Path, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse a YAML file safely; a missing, oversized or malformed file, or one with a duplicated
    key, raises one clear :class:`ConfigError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if path.is_file() and size > max_bytes:
        raise ConfigError(
            f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit for a YAML file "
            f"(configs, designs and boards are a few KB); is this the right file?"
        )
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise ConfigError(
                f"{path}: over the {max_bytes:,}-byte limit for a YAML file "
                "(configs, designs and boards are a few KB); is this the right file?"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    return parse_yaml(text, str(path))


def load_file(cls: type[T], path: str | Path) -> T:
    """Read a YAML file into ``cls`` (see :func:`from_data`)."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: file is empty")
    return from_data(cls, data, source=str(path))


def dump_yaml(obj: Any, set_only: bool = False) -> str:
    """YAML text for a schema object, keys in declaration order.

    ``set_only``: only the fields set away from their defaults, in block style (the designs the
    sweep writes for itself); :func:`load_file` reads either form back to the same object."""
    if set_only:
        return yaml.safe_dump(_set_fields(obj), sort_keys=False)
    return yaml.safe_dump(to_data(obj), sort_keys=False, default_flow_style=None, allow_unicode=True)


def _set_fields(obj: Any) -> Any:
    """:func:`to_data` of a schema object less the dataclass fields left at their defaults."""
    if not dataclasses.is_dataclass(obj):
        return [_set_fields(v) for v in obj] if isinstance(obj, tuple) else to_data(obj)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        out[f.name] = _set_fields(value)
    return out


def write_file(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as YAML atomically: a crash never leaves a half-written file behind."""
    text = dump_yaml(obj)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


#: The largest JSON artifact exitflow reads (``pareto.json`` of a large search is a few MB).
MAX_JSON_BYTES = 64 << 20


def read_json(path: str | Path, fix: str = "", name: str | None = None) -> Any:
    """The parsed JSON of ``path``. Anything wrong (missing, over :data:`MAX_JSON_BYTES`,
    unreadable, not JSON) is one :class:`ConfigError` line starting with ``name`` (default: the
    path) and ending in ``; fix``."""
    path = Path(path)
    name = str(path) if name is None else name
    tail = f"; {fix}" if fix else ""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise ConfigError(f"{name}: over the {MAX_JSON_BYTES:,}-byte limit for exitflow's JSON files{tail}")
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name}: missing{tail}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ConfigError(f"{name}: unreadable or not JSON ({type(err).__name__}){tail}") from None


def load_json_file(
    cls: type[T],
    path: str | Path,
    fix: str = "",
    check: Callable[[Any], str | None] | None = None,
    name: str | None = None,
) -> T:
    """Read a JSON file written by :func:`write_json_file` into ``cls`` with the same strict checks
    as :func:`load_file`. Anything wrong (missing, unreadable, not JSON, a key or value the schema
    does not allow) is one :class:`ConfigError` line naming the file (as ``name``, default the
    path) and ending in ``; fix``.

    ``check``, when given, sees the parsed JSON first and returns what is wrong with its overall
    shape in the reader's own words (or None), for a friendlier line than the schema's."""
    name = str(path) if name is None else name
    tail = f"; {fix}" if fix else ""
    data = read_json(path, fix, name)
    problem = check(data) if check else None
    if problem:
        raise ConfigError(f"{name}: {problem}{tail}")
    try:
        return from_data(cls, data, source=name)
    except ConfigError as err:
        raise ConfigError(f"{err}{tail}") from None


def write_json_file(obj: Any, path: str | Path) -> Path:
    """Write a schema object as indented JSON, atomically (:func:`load_json_file` reads it back)."""
    text = json.dumps(to_data(obj), indent=1)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
