"""``--rows``: which rows of a split to show (``17``, ``0:5``, ``3,8,9``, ``-1``, ``10:``, ``all``)."""

from __future__ import annotations

from vlmtrain.errors import DataError

USAGE = "use e.g. 17, 0:5, 3,8,9 or all"


def _number(text: str) -> int | None:
    if not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise DataError(f"--rows: {text!r} is not a row number; {USAGE}", "config") from None


def parse_rows(spec: str, n: int) -> list[int]:
    """Row indices (0-based, in order, without duplicates) that ``spec`` selects from a split of ``n`` rows.

    A single index must exist (negative counts from the end); slices follow Python's rules and are clipped.
    """
    spec = spec.strip()
    if spec in ("all", ":"):
        return list(range(n))
    picked: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if ":" in part:
            bounds = [_number(b) for b in part.split(":")]
            if len(bounds) > 3 or bounds[2:] == [0]:
                raise DataError(f"--rows: {part!r} is not a slice start:stop[:step]; {USAGE}", "config")
            picked.extend(range(n)[slice(*bounds)])
            continue
        value = _number(part)
        if value is None or not -n <= value < n:
            raise DataError(f"--rows: row {part} is out of range; the split has {n} row(s) (0..{n - 1})",
                            "config")
        picked.append(value % n)
    return list(dict.fromkeys(picked))
