"""The one error type for bad input rows, carrying a short reason so ``on_bad_row: skip`` can count by it."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input: ``str()`` is one line naming the file and row (or config key) and what to do about it.

    ``reason`` is a short stable label ("missing image", "malformed JSON", ...) used to count skipped rows.
    """

    def __init__(self, message: str, reason: str = "bad row") -> None:
        super().__init__(" ".join(str(message).split("\n")))
        self.reason = reason

    def __reduce__(self) -> tuple:
        """Keep ``reason`` when the error crosses a process boundary (``--num-proc``)."""
        return (type(self), (str(self), self.reason))
