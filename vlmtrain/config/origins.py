"""Where each value came from (the file or an override), so errors found after merging can name their source."""

from __future__ import annotations


class Origins:
    """Remembers which override set which key path; everything else came from the file (or the defaults)."""

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
