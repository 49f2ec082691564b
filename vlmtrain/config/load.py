"""Load a run config: a YAML file and dot-list overrides merged onto the typed schema, then checked.

Every problem becomes a one-line ``ConfigError`` that names where the value came from (file or
override) and the full key path. The raw YAML and each override are checked against the schema
*before* OmegaConf sees them, because OmegaConf's own merge errors lose the key path inside lists
and span several lines; whatever OmegaConf still raises is caught and rewritten.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import importlib.metadata
import json
import os
import re
import tempfile
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union, cast

import yaml
from omegaconf import MISSING, BooleanNode, DictConfig, FloatNode, IntegerNode, OmegaConf, StringNode
from omegaconf.errors import OmegaConfBaseException, ValidationError

from vlmtrain.config.schema import (
    AdapterConfig,
    DataConfig,
    DataSource,
    MaskConfig,
    ModelConfig,
    VlmConfig,
)


class ConfigError(Exception):
    """A user-facing config problem; ``str()`` is one line, printed by the CLI as ``error: <message>``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


# Allowed values of enum-like string fields, keyed by (schema dataclass, field name).
ENUM_CHOICES: dict[tuple[type, str], tuple[str, ...]] = {
    (ModelConfig, "dtype"): ("auto", "float32", "bfloat16", "float16"),
    (ModelConfig, "attn_implementation"): ("auto", "sdpa", "eager", "flash_attention_2"),
    (AdapterConfig, "type"): ("none", "lora", "qlora"),
    (DataConfig, "on_too_long"): ("drop", "error"),
    (DataConfig, "on_bad_row"): ("error", "skip"),
    (DataSource, "format"): ("conversations", "pretrain"),
    (MaskConfig, "mode"): ("sampled", "all", "roles"),
    (MaskConfig, "train_on_eos"): ("turn", "all", "last", "none"),
    (MaskConfig, "on_empty"): ("error", "drop"),
}

_SCALAR_NODES = {int: IntegerNode, float: FloatNode, bool: BooleanNode, str: StringNode}
_TYPE_NAMES = {int: "int", float: "float", bool: "bool (true/false)", str: "string"}


# ---------------------------------------------------------------- public API


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> VlmConfig:
    """Schema defaults <- YAML file <- ``key=value`` overrides, resolved, normalised and checked.

    Returns an OmegaConf ``DictConfig`` typed as ``VlmConfig`` (attribute access works as on the
    dataclass). ``path=None`` loads the defaults plus overrides. Raises ``ConfigError``.
    """
    origins = _Origins(str(path) if path is not None else None)
    cfg = OmegaConf.structured(VlmConfig)
    # Blank the defaults that the axolotl knobs may replace, so normalize_mask can tell an
    # explicit `mode: sampled` (which conflicts with train_on_inputs) from the default.
    cfg.mask.mode = MISSING
    cfg.mask.roles = MISSING
    if path is not None:
        _merge_file(cfg, Path(path))
    for item in overrides:
        _apply_override(cfg, item, origins)
    try:  # before resolving, so that `${mask.mode}` elsewhere sees the normalised mode
        normalize_mask(cfg)
    except ConfigError as e:
        raise ConfigError(f"{origins.of('mask')}: {e}") from None
    except OmegaConfBaseException as e:
        raise _rewrite(e, origins.of("mask")) from None
    _resolve(cfg, origins)
    _validate(cfg, origins)
    return cast(VlmConfig, cfg)


def to_yaml(cfg: Any) -> str:
    """The fully resolved config as YAML, written next to checkpoints so a run can be reproduced."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def normalize_mask(cfg: Any) -> None:
    """Fold axolotl's ``train_on_inputs``/``roles_to_train`` into ``mask.mode``/``mask.roles``.

    The rest of vlmtrain then reads only ``mode`` and ``roles``. A ``mode``/``roles`` left MISSING
    counts as "not set by the user" (the loader blanks those defaults) and gets its default here;
    a set one that contradicts a knob is a ``ConfigError``.
    """
    mask = cfg.mask
    mode_set = not OmegaConf.is_missing(mask, "mode")
    roles_set = not OmegaConf.is_missing(mask, "roles")
    implied = _mode_implied_by_knobs(mask)
    if implied is not None:
        if mode_set and mask.mode != implied:
            knob = "train_on_inputs: true" if implied == "all" else "roles_to_train"
            raise ConfigError(
                f"mask.{knob} means mask.mode '{implied}', but mask.mode is '{mask.mode}'; "
                "set only one of them"
            )
        mask.mode = implied
    elif mask.train_on_inputs is False and mode_set and mask.mode == "all":
        raise ConfigError("mask.train_on_inputs: false contradicts mask.mode 'all'; set only one of them")
    if mask.roles_to_train is not None:
        wanted = list(mask.roles_to_train)
        if roles_set and list(mask.roles) != wanted:
            raise ConfigError(
                f"mask.roles_to_train {wanted} contradicts mask.roles {list(mask.roles)}; "
                "set only one of them"
            )
        mask.roles = wanted
    defaults = MaskConfig()
    if OmegaConf.is_missing(mask, "mode"):
        mask.mode = defaults.mode
    if OmegaConf.is_missing(mask, "roles"):
        mask.roles = defaults.roles


def validate_for_fit(cfg: Any) -> None:
    """Checks that only training needs (a model and data), so ``load_config(None)`` stays usable."""
    if OmegaConf.is_missing(cfg.model, "name_or_path") or not str(cfg.model.name_or_path).strip():
        raise ConfigError("model.name_or_path is required: a local model directory or a hub id")
    if len(cfg.data.train) == 0:
        raise ConfigError("data.train is empty: add at least one training source (data.train[0].path)")


# ---------------------------------------------------------------- where values came from


class _Origins:
    """Remembers which override set which key, so post-merge errors can name their source."""

    def __init__(self, file: str | None) -> None:
        self.file = file
        self.overrides: list[tuple[str, str]] = []  # (key path, override text)

    def add(self, key_path: str, text: str) -> None:
        self.overrides.append((key_path, text))

    def of(self, key_path: str) -> str:
        """The override that last touched ``key_path`` (or a parent/child of it), else the file."""
        for set_path, text in reversed(self.overrides):
            if _related(set_path, key_path):
                return f"override '{text}'"
        return self.file or "config"


def _related(a: str, b: str) -> bool:
    """Whether one key path is the other or lies inside it."""
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith((short + ".", short + "["))


# ---------------------------------------------------------------- schema introspection


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a schema dataclass (schema.py uses postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def _describe(tp: Any) -> str:
    """A type as users read it in an error message."""
    inner, optional = _unwrap_optional(tp)
    if dataclasses.is_dataclass(inner) or typing.get_origin(inner) is dict or inner is dict:
        name = "a mapping"
    elif typing.get_origin(inner) is list:
        name = f"a list of {_describe(typing.get_args(inner)[0])}"
    else:
        name = _TYPE_NAMES.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{name} or null" if optional else name


def _join(path: str, key: Any) -> str:
    """Key paths as OmegaConf prints them: ``data.train[0].path``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{close[0]}'?" if close else ""


def _suggest(word: str, choices: Sequence[str], fallback: str = "") -> str:
    """``did you mean 'x'?`` when something is close, else ``fallback`` or the list of choices."""
    return _did_you_mean(word, choices) or fallback or f"valid keys: {', '.join(choices)}"


def _unknown_key(where: str, key_path: str, key: Any, valid: Sequence[str]) -> ConfigError:
    return ConfigError(f"{where}: unknown key '{key_path}'; {_suggest(str(key), valid)}")


def _type_error(where: str, key_path: str, value: Any, expected: str) -> ConfigError:
    shown = "null" if value is None else repr(value)
    hint = ""
    if isinstance(value, bool) and "str" in expected:
        hint = " (YAML reads unquoted no/yes/off/on as booleans: quote the value, e.g. 'no')"
    return ConfigError(f"{where}: {key_path}: expected {expected}, got {shown}{hint}")


# ---------------------------------------------------------------- raw value checks (pre-merge)


def _is_deferred(value: Any) -> bool:
    """Interpolations and ``???`` are checked only once resolved."""
    return isinstance(value, str) and ("${" in value or value == MISSING)


def _check_value(value: Any, tp: Any, key_path: str, where: str) -> None:
    """Check a plain YAML value against a schema annotation: keys, container shapes, scalars."""
    if _is_deferred(value) or tp is Any:
        return
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if not optional:
            raise _type_error(where, key_path, value, _describe(tp))
    elif dataclasses.is_dataclass(inner):
        _check_mapping(value, cast(type, inner), key_path, where)
    elif typing.get_origin(inner) is list:
        if not isinstance(value, list):
            raise _type_error(where, key_path, value, _describe(tp))
        for i, item in enumerate(value):
            _check_value(item, typing.get_args(inner)[0], _join(key_path, i), where)
    elif typing.get_origin(inner) is dict or inner is dict:
        if not isinstance(value, dict):
            raise _type_error(where, key_path, value, _describe(tp))
    elif inner in _SCALAR_NODES:
        try:
            _SCALAR_NODES[inner](value=value, is_optional=False)
        except ValidationError:
            raise _type_error(where, key_path, value, _describe(tp)) from None


def _check_mapping(value: Any, cls: type, key_path: str, where: str) -> None:
    """A mapping for a schema dataclass: every key must be a field, every value must fit."""
    if not isinstance(value, dict):
        raise _type_error(where, key_path or "<top level>", value, "a mapping")
    fields = _field_types(cls)
    for key, item in value.items():
        sub_path = _join(key_path, key)
        if key not in fields:
            raise _unknown_key(where, sub_path, key, list(fields))
        _check_value(item, fields[key], sub_path, where)


def _first_line(e: OmegaConfBaseException) -> str:
    text = (getattr(e, "msg", None) or str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _rewrite(e: OmegaConfBaseException, where: str) -> ConfigError:
    """Any OmegaConf error that slipped past the pre-checks, as a one-liner."""
    key = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
    return ConfigError(f"{where}: {key}{_first_line(e)}")


# ---------------------------------------------------------------- file and overrides


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file as plain data, interpolations unresolved."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start and start.line != mark.line:
            problem += f" ({context} that starts at line {start.line + 1})"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except OmegaConfBaseException as e:
        raise _rewrite(e, str(path)) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, ...)")
    return cast(dict[str, Any], OmegaConf.to_container(loaded, resolve=False))


def _merge_file(cfg: DictConfig, path: Path) -> None:
    raw = _read_yaml(path)
    _check_mapping(raw, VlmConfig, "", str(path))
    try:
        cfg.merge_with(raw)
    except OmegaConfBaseException as e:
        raise _rewrite(e, str(path)) from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b[0].c=value`` -> (["a", "b", "0", "c"], YAML-parsed value)."""
    key, sep, text = item.partition("=")
    key = re.sub(r"\[(\d+)\]", r".\1", key.strip())
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{item}': expected key.path=value")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]), resolve=False)
    except yaml.YAMLError:
        raise ConfigError(f"bad override '{item}': the value is not valid YAML") from None
    return key.split("."), cast(dict[str, Any], parsed)["v"]


def _apply_override(cfg: DictConfig, item: str, origins: _Origins) -> None:
    """Check one override against the schema, then set it (appending at index == list length)."""
    where = f"override '{item}'"
    parts, value = _parse_override(item)
    node: Any = cfg
    tp: Any = VlmConfig
    key_path = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            fields = _field_types(cast(type, inner))
            if part not in fields:
                raise _unknown_key(where, _join(key_path, part), part, list(fields))
            tp, key_path = fields[part], _join(key_path, part)
            if not last:
                if OmegaConf.is_missing(node, part):  # a default blanked for normalize_mask
                    node[part] = getattr(inner(), part)
                node = node[part]
        elif typing.get_origin(inner) is list:
            index = _list_index(node, part, key_path, where)
            tp, key_path = typing.get_args(inner)[0], _join(key_path, index)
            if index == len(node) and last:
                _check_value(value, tp, key_path, where)
                node.append(value)
                origins.add(key_path, item)
                return
            if index == len(node):
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{where}: {key_path} does not exist yet; set it with {key_path}=...")
                node.append(OmegaConf.structured(tp))
            node = node[index]
        else:  # a free mapping (training) or Any: no schema below this point
            tp = Any
            for rest in parts[i:]:
                key_path = _join(key_path, int(rest) if rest.isdigit() else rest)
            break
    _check_value(value, tp, key_path, where)
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except OmegaConfBaseException as e:
        raise _rewrite(e, where) from None
    origins.add(key_path, item)


def _list_index(node: Any, part: str, key_path: str, where: str) -> int:
    """A list index from an override; ``len(list)`` is allowed and appends."""
    if not part.isdigit():
        raise ConfigError(f"{where}: {key_path} is a list; expected an index, got '{part}'")
    if node is None:
        raise ConfigError(f"{where}: {key_path} is null; set the whole list instead")
    if int(part) > len(node):
        raise ConfigError(f"{where}: {key_path} has {len(node)} item(s); index {part} is out of range")
    return int(part)


def _resolve(cfg: DictConfig, origins: _Origins) -> None:
    """Resolve interpolations in place, so validation and to_yaml see final values."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        key = str(e.full_key or "")
        raise ConfigError(
            f"{origins.of(key)}: {key}: cannot resolve interpolation: {_first_line(e)}"
        ) from None


# ---------------------------------------------------------------- post-resolution checks


def _mode_implied_by_knobs(mask: Any) -> str | None:
    """The mask mode the axolotl knobs ask for, if any."""
    wants_all = mask.train_on_inputs is True
    wants_roles = mask.roles_to_train is not None
    if wants_all and wants_roles:
        raise ConfigError("mask.train_on_inputs: true and mask.roles_to_train contradict each other")
    if wants_roles and len(mask.roles_to_train) == 0:
        raise ConfigError("mask.roles_to_train is empty: no token would be trained")
    return "all" if wants_all else "roles" if wants_roles else None


def _schema_nodes(node: Any, cls: type, key_path: str = "") -> Iterator[tuple[Any, type, str]]:
    """Every (config node, schema dataclass, key path), lists of dataclasses included."""
    yield node, cls, key_path
    for name, tp in _field_types(cls).items():
        inner, _ = _unwrap_optional(tp)
        if dataclasses.is_dataclass(inner):
            yield from _schema_nodes(node[name], cast(type, inner), _join(key_path, name))
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            for i, item in enumerate(node[name] or []):
                yield from _schema_nodes(item, typing.get_args(inner)[0], _join(_join(key_path, name), i))


def _validate(cfg: DictConfig, origins: _Origins) -> None:
    for node, cls, key_path in _schema_nodes(cfg, VlmConfig):
        for name in _field_types(cls):
            _check_field(node, cls, name, _join(key_path, name), origins)
    _check_target_modules(cfg.adapter.target_modules, origins)
    _check_training(cfg, origins)


def _check_field(node: Any, cls: type, name: str, key_path: str, origins: _Origins) -> None:
    """Enum-like strings take one of their values; required fields of list items are set."""
    if OmegaConf.is_missing(node, name):
        if "[" in key_path:  # top-level required values are checked by validate_for_fit
            item_path = key_path.rsplit(".", 1)[0]  # the list item may come from an override
            raise ConfigError(f"{origins.of(item_path)}: {key_path} is required")
        return
    choices = ENUM_CHOICES.get((cls, name))
    value = node[name]
    if choices is not None and value not in choices:
        hint = _did_you_mean(str(value), choices)
        raise ConfigError(
            f"{origins.of(key_path)}: {key_path}: invalid value {value!r}; allowed: "
            f"{', '.join(choices)}{'; ' if hint else ''}{hint}"
        )


def _check_target_modules(value: Any, origins: _Origins) -> None:
    ok = value == "auto" or (
        OmegaConf.is_list(value) and len(value) > 0 and all(isinstance(v, str) for v in value)
    )
    if not ok:
        where = origins.of("adapter.target_modules")
        raise _type_error(
            where, "adapter.target_modules", value, "'auto' or a non-empty list of module names"
        )


# ---------------------------------------------------------------- training (trl.SFTConfig) checks

_KINDS = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    type(None): "null",
    list: "list",
    dict: "dict",
}


def _check_training(cfg: DictConfig, origins: _Origins) -> None:
    """Keys must be ``trl.SFTConfig`` fields; values must not clearly mismatch their annotation."""
    fields = _sft_field_kinds()
    plain = cast(dict[str, Any], OmegaConf.to_container(cfg.training, resolve=True))
    for key, value in plain.items():
        key_path = _join("training", key)
        if key not in fields:
            raise ConfigError(
                f"{origins.of(key_path)}: unknown key '{key_path}' (not a trl.SFTConfig field); "
                + _suggest(str(key), sorted(fields), fallback="see trl.SFTConfig for the valid keys")
            )
        kinds = fields[key]
        if kinds is None:
            continue
        fixed = _coerce(value, kinds)
        if fixed is _MISMATCH:
            raise _type_error(origins.of(key_path), key_path, value, " or ".join(kinds))
        if fixed is not value:
            cfg.training[key] = fixed


_MISMATCH = object()


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "list"
    return _KINDS.get(type(value), type(value).__name__)


def _coerce(value: Any, kinds: Sequence[str]) -> Any:
    """``value`` if it fits, a converted value for numeric strings (e.g. from ``${oc.env:LR}``)
    and integral floats for int fields (``save_steps: 1e3``), else ``_MISMATCH``."""
    kind = _kind(value)
    if kind in kinds or (kind == "int" and "float" in kinds):
        return value
    if kind == "float" and "int" in kinds and value.is_integer():
        return int(value)
    if kind == "str":
        for target, convert in (("int", int), ("float", float)):
            if target in kinds:
                try:
                    return convert(value)
                except ValueError:
                    pass
        if "bool" in kinds and value.lower() in ("true", "false"):
            return value.lower() == "true"
    return _MISMATCH


def _annotation_kinds(tp: Any) -> list[str] | None:
    """Value kinds a field annotation accepts; None when it holds something we do not check."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    kinds: list[str] = []
    for member in members:
        origin = typing.get_origin(member) or member
        if origin is Literal:
            kinds += [_KINDS.get(type(v), "?") for v in typing.get_args(member)]
        elif isinstance(origin, type) and issubclass(origin, enum.Enum):
            kinds.append("str")  # TRL/transformers accept the enum's string values
        elif origin in _KINDS:
            kinds.append(_KINDS[origin])
        else:
            return None
    return None if "?" in kinds else list(dict.fromkeys(kinds))


def _cache_file() -> Path:
    """Per-version cache of SFTConfig's fields: importing trl costs seconds, reading JSON does not."""
    versions = "-".join(importlib.metadata.version(p) for p in ("trl", "transformers"))
    root = os.environ.get("VLMTRAIN_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "vlmtrain"
    )
    return Path(root, f"sftconfig-fields-{versions}.json")


@functools.cache
def _sft_field_kinds() -> dict[str, list[str] | None]:
    """SFTConfig field name -> accepted value kinds (None: unchecked); trl imported at most once."""
    cache = _cache_file()
    try:
        cached = json.loads(cache.read_text())
        if isinstance(cached, dict) and "learning_rate" in cached:
            return cached
    except (OSError, ValueError):
        pass
    from trl import SFTConfig  # slow: pulls in torch, transformers and peft

    hints = typing.get_type_hints(SFTConfig)
    kinds = {f.name: _annotation_kinds(hints[f.name]) for f in dataclasses.fields(SFTConfig) if f.init}
    _write_atomic(cache, json.dumps(kinds, indent=0, sort_keys=True))
    return kinds


def _write_atomic(path: Path, text: str) -> None:
    """Best effort: a read-only cache directory only costs speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, path)
    except OSError:
        pass
