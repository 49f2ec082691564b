"""Checks against the schema dataclasses: plain YAML values before merging, enum values after resolving.

The raw YAML and each override are checked *before* OmegaConf sees them, because OmegaConf's own merge
errors lose the key path inside lists and span several lines.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any, cast

from omegaconf import MISSING, BooleanNode, FloatNode, IntegerNode, OmegaConf, StringNode
from omegaconf.errors import ValidationError

from vlmtrain.config.errors import ConfigError, did_you_mean, type_error, unknown_key
from vlmtrain.config.introspect import (
    describe,
    field_choices,
    field_types,
    is_schema,
    join,
    list_item,
    unwrap_optional,
)
from vlmtrain.config.origins import Origins

_SCALAR_NODES = {int: IntegerNode, float: FloatNode, bool: BooleanNode, str: StringNode}


# ---------------------------------------------------------------- plain values (pre-merge)


def is_deferred(value: Any) -> bool:
    """Interpolations and ``???`` are checked only once resolved."""
    return isinstance(value, str) and ("${" in value or value == MISSING)


def check_value(value: Any, tp: Any, key_path: str, where: str) -> None:
    """Check a plain YAML value against a schema annotation: keys, container shapes, scalars."""
    if is_deferred(value) or tp is Any:
        return
    inner, optional = unwrap_optional(tp)
    if value is None:
        if not optional:
            raise type_error(where, key_path, value, describe(tp))
    elif is_schema(inner):
        check_mapping(value, inner, key_path, where)
    elif list_item(inner) is not None:
        if not isinstance(value, list):
            raise type_error(where, key_path, value, describe(tp))
        for i, item in enumerate(value):
            check_value(item, list_item(inner), join(key_path, i), where)
    elif typing.get_origin(inner) is dict or inner is dict:
        if not isinstance(value, dict):
            raise type_error(where, key_path, value, describe(tp))
    elif inner is str and isinstance(value, bool):  # StringNode would silently store "False"
        raise type_error(where, key_path, value, describe(tp))
    elif inner in _SCALAR_NODES:
        try:
            _SCALAR_NODES[inner](value=value, is_optional=False)
        except ValidationError:
            raise type_error(where, key_path, value, describe(tp)) from None


def check_mapping(value: Any, cls: type, key_path: str, where: str) -> None:
    """A mapping for a schema dataclass: every key must be a field, every value must fit."""
    if not isinstance(value, dict):
        raise type_error(where, key_path or "<top level>", value, "a mapping")
    fields = field_types(cls)
    for key, item in value.items():
        sub_path = join(key_path, key)
        if key not in fields:
            raise unknown_key(where, sub_path, key, list(fields))
        check_value(item, fields[key], sub_path, where)


# ---------------------------------------------------------------- resolved config (post-merge)


def schema_nodes(node: Any, cls: type, key_path: str = "") -> Iterator[tuple[Any, type, str]]:
    """Every (config node, schema dataclass, key path), lists of dataclasses included."""
    yield node, cls, key_path
    for name, tp in field_types(cls).items():
        inner, _ = unwrap_optional(tp)
        if is_schema(inner):
            yield from schema_nodes(node[name], inner, join(key_path, name))
        elif is_schema(list_item(inner)):
            for i, item in enumerate(node[name] or []):
                yield from schema_nodes(item, cast(type, list_item(inner)), join(join(key_path, name), i))


def check_fields(node: Any, cls: type, key_path: str, origins: Origins) -> None:
    """Enum-like strings take one of their values; required fields of list items are set."""
    choices_of = field_choices(cls)
    for name in field_types(cls):
        path = join(key_path, name)
        if OmegaConf.is_missing(node, name):
            if "[" in path:  # top-level required values are checked by validate_for_fit
                item_path = path.rsplit(".", 1)[0]  # the list item may come from an override
                raise ConfigError(f"{origins.of(item_path)}: {path} is required")
            continue
        choices = choices_of.get(name)
        value = node[name]
        if choices is not None and value not in choices:
            hint = did_you_mean(str(value), choices)
            raise ConfigError(
                f"{origins.of(path)}: {path}: invalid value {value!r}; allowed: "
                f"{', '.join(choices)}{'; ' if hint else ''}{hint}"
            )


def check_target_modules(value: Any, origins: Origins) -> None:
    ok = value == "auto" or (
        OmegaConf.is_list(value) and len(value) > 0 and all(isinstance(v, str) for v in value)
    )
    if not ok:
        where = origins.of("adapter.target_modules")
        raise type_error(where, "adapter.target_modules", value, "'auto' or a non-empty list of module names")
