"""The one base of every user-facing error, and the stable reasons rows are dropped or refused for.

A ``VlmtrainError`` is the user's to fix: the CLI prints ``error: <message>`` on one line, with no traceback,
and exits 2. Its message names where the problem is (``file:row``, a config key or a path) and how to fix it.
Anything else that escapes is a bug in vlmtrain and keeps its traceback.

This module is a leaf: every package may import it, it imports nothing of vlmtrain.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a row (or a whole source) was refused: what ``on_bad_row: skip`` counts by and reports prints."""

    BAD_ROW = "bad row"
    MALFORMED_JSON = "malformed JSON"
    MALFORMED_ROW = "malformed row"
    UNKNOWN_ROLE = "unknown role"
    NON_STRING_TEXT = "non-string text"
    UNSUPPORTED_CONTENT = "unsupported content"
    NO_ASSISTANT_TURN = "no assistant turn"
    EMPTY_MASK = "nothing to train"
    TOO_LONG = "longer than max_length"
    TEMPLATE_ERROR = "template error"
    MISSING_MEDIA = "missing image"
    UNREADABLE_MEDIA = "unreadable image"
    MEDIA_OVER_LIMIT = "image over pixel limit"
    MEDIA_COUNT_MISMATCH = "image count mismatch"
    MEDIA_NOT_SUPPORTED = "media not supported by the model"
    MISSING_VIDEO = "missing video"
    UNREADABLE_VIDEO = "unreadable video"
    VIDEO_OVER_LIMIT = "video over length/pixel limit"
    REMOTE_MEDIA = "remote image URL"
    MEDIA_OUTSIDE_DIR = "image path outside image_dir"
    BAD_MEDIA_REFERENCE = "bad image reference"
    UNUSED_COLUMN = "unused media column"
    STALE_ROW = "stale row"
    # Problems of a whole source or of the run, never of one row: always fatal.
    CONFIG = "config"
    EMPTY_SOURCE = "empty source"
    NO_ROWS = "no rows"
    CACHE = "cache"

    def __str__(self) -> str:
        return self.value

    @property
    def is_source_problem(self) -> bool:
        """A problem no ``on_bad_row: skip`` can skip: the whole source or run is unusable."""
        return self in (Reason.CONFIG, Reason.EMPTY_SOURCE, Reason.NO_ROWS, Reason.CACHE)


class VlmtrainError(Exception):
    """A problem the user fixes; ``str()`` is one line (newlines folded), printed by the CLI without traceback."""

    def __init__(self, message: str, reason: Reason = Reason.CONFIG) -> None:
        super().__init__(" ".join(str(message).split("\n")))
        self.reason = Reason(reason)

    def __reduce__(self) -> tuple:
        """Keep ``reason`` when the error crosses a process boundary (``--num-proc`` workers)."""
        return (type(self), (str(self), self.reason))


class DataError(VlmtrainError):
    """Bad input: ``str()`` is one line naming the file and row (or config key) and what to do about it."""

    def __init__(self, message: str, reason: Reason = Reason.BAD_ROW) -> None:
        super().__init__(message, reason)



class ConfigError(VlmtrainError):
    """A user-facing config problem; ``str()`` is one line, printed by the CLI as ``error: <message>``."""

    def __init__(self, message: str, reason: Reason = Reason.CONFIG) -> None:
        super().__init__(message, reason)
