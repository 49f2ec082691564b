"""``ConfigError`` and the builders of its messages: one line, where the value came from, the key, the fix."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from vlmtrain.errors import ConfigError  # the one config error type, re-exported for the config package


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``did you mean 'x'?`` for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean '{close[0]}'?" if close else ""


def suggest(word: str, choices: Sequence[str], fallback: str = "") -> str:
    """``did you mean 'x'?`` when something is close, else ``fallback`` or the list of choices."""
    return did_you_mean(word, choices) or fallback or f"valid keys: {', '.join(choices)}"


def unknown_key(where: str, key_path: str, key: Any, valid: Sequence[str]) -> ConfigError:
    return ConfigError(f"{where}: unknown key '{key_path}'; {suggest(str(key), valid)}")


def type_error(where: str, key_path: str, value: Any, expected: str) -> ConfigError:
    """``expected X, got Y``, with a hint when YAML turned an unquoted ``no``/``off`` into a bool."""
    shown = "null" if value is None else repr(value)
    hint = ""
    if isinstance(value, bool) and "str" in expected:
        hint = " (YAML reads unquoted true/false/yes/no/on/off as booleans: quote the value, e.g. 'no')"
    return ConfigError(f"{where}: {key_path}: expected {expected}, got {shown}{hint}")


def first_line(e: OmegaConfBaseException) -> str:
    text = (getattr(e, "msg", None) or str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def rewrite(e: OmegaConfBaseException, where: str) -> ConfigError:
    """Any OmegaConf error that slipped past the pre-checks, as a one-liner."""
    key = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
    return ConfigError(f"{where}: {key}{first_line(e)}")
