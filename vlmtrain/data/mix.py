"""Mix a split's sources: per-source ``weight`` (repeat / subsample) in one seeded, reproducible order.

``weight`` 2.0 repeats every kept row of a source twice, 0.5 takes a seeded half; the fractional part of a
weight picks that share of the rows without replacement. ``max_rows`` is applied earlier, when reading (the
first N rows of the source). One source of weight 1 keeps its storage order, so row N is line N's row;
several sources are shuffled together with ``data.seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlmtrain.errors import DataError


def mix_indices(source_of_row: Sequence[int], weights: Sequence[float], seed: int) -> np.ndarray:
    """Row indices of the mixed split (repeats allowed), deterministic for the same inputs and seed."""
    for i, weight in enumerate(weights):
        if weight < 0:
            raise DataError(f"data source {i}: weight {weight} is negative; use 0 to leave the source out",
                            "config")
    sources = np.asarray(source_of_row, dtype=np.int64)
    if len(weights) == 1 and weights[0] == 1.0:
        return np.arange(len(sources))
    rng = np.random.default_rng(seed)
    picked: list[np.ndarray] = []
    for index, weight in enumerate(weights):
        rows = np.flatnonzero(sources == index)
        whole, fraction = divmod(float(weight), 1.0)
        picked.extend([rows] * int(whole))
        extra = int(round(fraction * len(rows)))
        if extra:
            picked.append(np.sort(rng.choice(rows, size=extra, replace=False)))
    if not picked:
        return np.arange(0)
    return rng.permutation(np.concatenate(picked))
