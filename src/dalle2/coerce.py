"""One set of type rules for config values read from YAML, ``--set`` or JSON.

:func:`convert` says whether a value is one of a kind and normalises it:

- ``bool``: only ``true`` / ``false`` (1 and 0 are numbers, not booleans);
- ``int``: a whole number that is not a boolean (``3.0`` is not an int);
- ``float``: any number that is not a boolean, as a float; also a string ``float()`` reads, because YAML 1.1
  reads ``1e-3`` (no dot) as a string;
- ``str``: a string;
- ``None`` (``type(None)``): null;
- ``list[int]``: a list (or tuple) of ints that are not booleans, as a list.

:func:`coerce` tries each kind of a union in turn and raises ``error`` (default :class:`InvalidConfigError`)
with ``"<where> must be <kinds>, got <value>"`` when none fits. The shared config sections
(:mod:`dalle2.config`) and the ``clip`` section (:mod:`dalle2.models.clip`) both check their keys here; each
names its own error class. :func:`check_fields` checks every field of a config dataclass the same way (the
model configs use it), raising :class:`ConfigError`, the one error of a bad config value, with
:func:`unknown_key` / :func:`unknown_section` for misspelt names. This module imports nothing from dalle2
but :mod:`dalle2.errors`, so every layer may use it.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from dalle2.errors import InvalidConfigError

__all__ = [
    "NO_FIT",
    "ConfigError",
    "check_fields",
    "coerce",
    "coerce_field",
    "convert",
    "element_fits",
    "kind_name",
    "union_options",
    "unknown_key",
    "unknown_section",
]

#: what :func:`convert` returns when a value is not of the kind
NO_FIT: Any = type("NoFit", (), {"__repr__": lambda self: "NO_FIT"})()


def union_options(annotation: Any) -> tuple[Any, ...]:
    """The kinds of a field annotation: ``int | None`` -> ``(int, NoneType)``; ``float`` -> ``(float,)``."""
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def convert(value: Any, kind: Any) -> Any:
    """``value`` as a value of ``kind`` (bool, int, float, str, NoneType or list[int]); :data:`NO_FIT` if it
    is not one (see the module docstring for the rules)."""
    if kind is bool:
        return value if isinstance(value, bool) else NO_FIT
    if kind is int:
        return value if _whole(value) else NO_FIT
    if kind is float:
        if _number(value):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return NO_FIT
        return NO_FIT
    if kind is str:
        return value if isinstance(value, str) else NO_FIT
    if kind is type(None):
        return None if value is None else NO_FIT
    if kind == list[int]:
        return list(value) if isinstance(value, list | tuple) and all(_whole(v) for v in value) else NO_FIT
    return NO_FIT


def kind_name(kind: Any) -> str:
    """How a config error names a kind: ``true or false``, ``null``, ``int``, ``list of int``..."""
    if kind is bool:
        return "true or false"
    if kind is type(None):
        return "null"
    if kind == list[int]:
        return "list of int"
    return getattr(kind, "__name__", None) or str(kind)


def coerce(
    value: Any,
    kinds: Any,
    where: str,
    error: type[Exception] = InvalidConfigError,
    names: str | None = None,
) -> Any:
    """``value`` converted to the first of ``kinds`` (an annotation, a union or a tuple of kinds) it fits;
    else ``error("<where> must be <names>, got <value>")`` (``names``: the kinds joined with "or")."""
    options = kinds if isinstance(kinds, tuple) else union_options(kinds)
    for kind in options:
        converted = convert(value, kind)
        if converted is not NO_FIT:
            return converted
    names = names or " or ".join(kind_name(kind) for kind in options)
    raise error(f"{where} must be {names}, got {value!r}")


def element_fits(value: Any, kind: Any) -> bool:
    """Whether ``value`` may be an element of a list field of ``kind`` (a bool element may also be 0 or 1; any
    kind but bool, int, float and str is the field's class's own business)."""
    if kind is bool:
        return isinstance(value, bool) or (_whole(value) and value in (0, 1))
    if kind is int:
        return _whole(value)
    if kind is float:
        return _number(value)
    if kind is str:
        return isinstance(value, str)
    return True


# -- typed config fields (the shared config sections and every model config) -------------------------


class ConfigError(InvalidConfigError):
    """A preset, YAML file or override is invalid; the message says which and why."""


def unknown_key(section: str, key: str, known: Any, source: str = "") -> ConfigError:
    """The error for ``section.key`` not among ``known``: the closest key as a hint, else every key."""
    hint = difflib.get_close_matches(key, list(known), n=1)
    return ConfigError(
        f"{source}unknown key {section}.{key}"
        + (f" (did you mean {section}.{hint[0]}?)" if hint else f"; keys: {', '.join(known)}")
    )


def unknown_section(name: str, known: Any, source: str = "", listed: Any = None) -> ConfigError:
    """The error for a config section ``name`` not among ``known``: the closest section as a hint, else the
    sections ``listed`` (default: every known one)."""
    hint = difflib.get_close_matches(name, list(known), n=1)
    return ConfigError(
        f"{source}unknown config section {name!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else f"; sections: {', '.join(known if listed is None else listed)}")
    )


def coerce_field(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation (str, int, float, bool, optional of those): the rules of
    :func:`dalle2.coerce.coerce`, a null where none is allowed named as such."""
    if value is None and type(None) not in union_options(annotation):
        raise ConfigError(f"{where} may not be null")
    return coerce(value, annotation, where, ConfigError)


_SCALARS = (bool, int, float, str, type(None))


def _type_name(annotation: Any) -> str:
    if typing.get_args(annotation):  # list[int], tuple[float, float]: the whole form
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_fields(cls: type, values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values`` for dataclass ``cls``, each checked against its field's annotation; a wrong type is a
    :class:`ConfigError` naming the key and the expected type (``sample_steps must be int, got 'lots'``),
    never a comparison failing later inside the class. Numbers for float fields become floats; lists stand
    for tuples (JSON has no tuples). Keys that are not fields are left to the caller."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        annotation = hints.get(key)
        if annotation is None or annotation is Any:
            continue
        where = f"{prefix}{key}"
        if all(option in _SCALARS for option in union_options(annotation)):
            out[key] = coerce_field(value, annotation, where)
            continue
        origin = typing.get_origin(annotation)
        if origin in (list, tuple):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where} must be a list ({_type_name(annotation)}), got {value!r}")
            args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            for item in value:
                if args and not any(element_fits(item, a) for a in args):
                    expected = " or ".join(_type_name(a) for a in dict.fromkeys(args))
                    raise ConfigError(f"{where} must be a list of {expected}, got {value!r}")
        elif origin is dict and not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return out
