"""Reading the schema dataclasses: field types, allowed values, and key paths as users see them."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Union

TYPE_NAMES = {int: "int", float: "float", bool: "bool (true/false)", str: "string"}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a schema dataclass (schema.py uses postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.cache
def field_choices(cls: type) -> dict[str, tuple[str, ...]]:
    """Allowed values of the enum-like fields of ``cls``, declared with ``schema.one_of``."""
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(cls) if "choices" in f.metadata}


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def is_schema(tp: Any) -> bool:
    """A schema dataclass (a nested section or a list item type)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def list_item(tp: Any) -> Any | None:
    """The item type of ``list[X]``, else None."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is list else None


def describe(tp: Any) -> str:
    """A type as users read it in an error message."""
    inner, optional = unwrap_optional(tp)
    if is_schema(inner) or typing.get_origin(inner) is dict or inner is dict:
        name = "a mapping"
    elif list_item(inner) is not None:
        name = f"a list of {describe(list_item(inner))}"
    else:
        name = TYPE_NAMES.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{name} or null" if optional else name


def join(path: str, key: Any) -> str:
    """Key paths as OmegaConf prints them: ``data.train[0].path``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)
