"""YAML 1.1 reads unquoted ``no``/``off``/``yes``/``on`` as booleans; a key that takes a string and no bool
gets the word the user wrote instead (``training.save_strategy: no`` is HF's ``"no"``, not ``False``).

The raw words come from the YAML node tree (``yaml.compose``), so only plain, unquoted scalars that YAML
turned into a bool are restored; ``true``/``false`` stay booleans (and a string key refuses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from vlmtrain.config.introspect import field_types, is_schema, list_item, unwrap_optional
from vlmtrain.config.schema import VlmConfig
from vlmtrain.config.training import field_kinds

YAML_BOOL_WORDS = frozenset({"yes", "no", "on", "off"})

Part = str | int


def is_bool_word(text: str) -> bool:
    return text.strip().lower() in YAML_BOOL_WORDS


def wants_text(parts: Sequence[Part]) -> bool:
    """Whether the key at ``parts`` takes a string but not a bool (schema annotation or SFTConfig field)."""
    kinds = kinds_at(parts)
    return "str" in kinds and "bool" not in kinds


def kinds_at(parts: Sequence[Part]) -> tuple[str, ...]:
    """Value kinds the key at ``parts`` accepts, as far as vlmtrain knows them (``()``: unknown/any)."""
    tp: Any = VlmConfig
    for i, part in enumerate(parts):
        inner, _ = unwrap_optional(tp)
        if is_schema(inner):
            tp = field_types(inner).get(str(part))
            if tp is None:
                return ()
        elif list_item(inner) is not None:
            tp = list_item(inner)
        elif list(parts[:i]) == ["training"] and i == len(parts) - 1:
            return tuple(field_kinds(str(part)) or ())
        else:
            return ()
    inner, _ = unwrap_optional(tp)
    return ("str",) if inner is str else ()


def restore_bool_words(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``raw`` (the file as loaded) with YAML-made booleans put back as the words written, where a string is
    wanted. A file that cannot be composed again is returned unchanged (it was already parsed once)."""
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return raw
    for parts, word in _bool_words(root, ()):
        if wants_text(parts):
            _set(raw, parts, word)
    return raw


def _bool_words(node: Any, parts: tuple[Part, ...]) -> list[tuple[tuple[Part, ...], str]]:
    """(key path, word) of every plain scalar YAML resolved to a bool from a yes/no/on/off word."""
    if isinstance(node, yaml.MappingNode):
        found = []
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                found += _bool_words(value, (*parts, key.value))
        return found
    if isinstance(node, yaml.SequenceNode):
        return [hit for i, item in enumerate(node.value) for hit in _bool_words(item, (*parts, i))]
    if isinstance(node, yaml.ScalarNode) and node.style is None and node.tag.endswith(":bool") and is_bool_word(
        node.value
    ):
        return [(parts, node.value)]
    return []


def _set(raw: Any, parts: tuple[Part, ...], word: str) -> None:
    """Replace the bool at ``parts`` with ``word``, if the loaded data still has a bool there."""
    node = raw
    for part in parts[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    last = parts[-1]
    try:
        if isinstance(node[last], bool):
            node[last] = word
    except (KeyError, IndexError, TypeError):
        return
