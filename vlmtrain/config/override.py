"""Apply one ``key.path=value`` override: walk the schema to the key, check the value, then set it.

A key that takes a string (and no bool) gets the text the user typed where YAML would read a boolean
(``training.save_strategy=no`` is the string ``no``): on a command line, quotes rarely survive the shell.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmtrain.config.boolwords import is_bool_word, wants_text
from vlmtrain.config.check import check_value
from vlmtrain.config.errors import ConfigError, rewrite, unknown_key
from vlmtrain.config.introspect import field_types, is_schema, join, list_item, unwrap_optional
from vlmtrain.config.origins import Origins
from vlmtrain.config.read import Override, parse_override
from vlmtrain.config.schema import VlmConfig


def apply_override(cfg: DictConfig, item: str, origins: Origins) -> None:
    """Check one override against the schema, then set it (appending at index == list length)."""
    where = f"override '{item}'"
    override = parse_override(item)
    parts, value = override.parts, override.value
    node: Any = cfg
    tp: Any = VlmConfig
    key_path = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        inner, _ = unwrap_optional(tp)
        if is_schema(inner):
            fields = field_types(inner)
            if part not in fields:
                raise unknown_key(where, join(key_path, part), part, list(fields))
            tp, key_path = fields[part], join(key_path, part)
            if not last:
                if OmegaConf.is_missing(node, part):  # a default blanked for normalize_mask
                    node[part] = getattr(inner(), part)
                node = node[part]
        elif list_item(inner) is not None:
            index = _list_index(node, part, key_path, where)
            tp, key_path = list_item(inner), join(key_path, index)
            if index == len(node) and last:
                value = _as_typed(override)
                check_value(value, tp, key_path, where)
                node.append(value)
                origins.add(key_path, item)
                return
            if index == len(node):
                if not is_schema(tp):
                    raise ConfigError(f"{where}: {key_path} does not exist yet; set it with {key_path}=...")
                node.append(OmegaConf.structured(tp))
            node = node[index]
        else:  # a free mapping (training) or Any: no schema below this point
            tp = Any
            for rest in parts[i:]:
                key_path = join(key_path, int(rest) if rest.isdigit() else rest)
            break
    value = _as_typed(override)
    check_value(value, tp, key_path, where)
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except OmegaConfBaseException as e:
        raise rewrite(e, where) from None
    origins.add(key_path, item)


def _as_typed(override: Override) -> Any:
    """The typed word instead of YAML's bool when the key takes a string and no bool (``no``, ``off``, ...)."""
    if isinstance(override.value, bool) and is_bool_word(override.text) and wants_text(override.parts):
        return override.text
    return override.value


def _list_index(node: Any, part: str, key_path: str, where: str) -> int:
    """A list index from an override; ``len(list)`` is allowed and appends."""
    if not part.isdigit():
        raise ConfigError(f"{where}: {key_path} is a list; expected an index, got '{part}'")
    if node is None:
        raise ConfigError(f"{where}: {key_path} is null; set the whole list instead")
    if int(part) > len(node):
        raise ConfigError(f"{where}: {key_path} has {len(node)} item(s); index {part} is out of range")
    return int(part)
