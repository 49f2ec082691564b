"""The packing collator: the padded collator's tensors, re-laid out as packs of whole rows.

Each pack is a row of the batch holding several dataset rows back to back, then a pad tail laid out as a row
of its own. Per token: ids, labels (-100 on each row's first token, on media and pad), token types; per row:
position ids restarting at 0 (and, for M-RoPE models, the 3-D positions the model's own ``get_rope_index``
gives that row alone); media tensors concatenated in row order. No ``attention_mask``: the model finds the
boundaries from the restarting positions (Gemma 3 gets an explicit mask from ``guard.py`` instead). With
``flat`` (flash-attention) the whole micro-batch is one sequence, and transformers derives ``cu_seqlens`` from
the positions. A ``PackInfo`` rides along under ``PACK_MARKER`` so the forward hooks can check what reaches
the decoder (``guard.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vlmtrain.collate import IGNORE, CompletionOnlyCollator
from vlmtrain.errors import Reason, VlmtrainError
from vlmtrain.pack.dataset import FILLER

PACK_MARKER = "vlmtrain_packed"
TOKEN_KEYS = ("input_ids", "labels", "token_type_ids", "mm_token_type_ids")
MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts",
              "image_sizes")
ROPE_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")


class PackingError(VlmtrainError):
    """Packing was asked for where it cannot be exact, or a packed batch would reach the model in a form that
    lets rows attend to each other."""


@dataclass(frozen=True)
class PackInfo:
    """Per pack (batch row), the lengths of its segments: the dataset rows, then the pad tail (if any)."""

    lengths: tuple[tuple[int, ...], ...]
    mode: str

    def text_positions(self, device: Any = None) -> torch.Tensor:
        """``0, 1, ...`` restarting at every segment: the positions each row has when run alone."""
        return torch.stack([torch.cat([torch.arange(n, device=device) for n in pack]) for pack in self.lengths])

    def segment_ids(self, device: Any = None) -> torch.Tensor:
        return torch.stack([torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(pack)])
                            for pack in self.lengths])


class PackingCollator:
    """Collates a list of packs (each a list of cached rows) into one packed batch.

    ``mode`` is the family's ``packing`` capability; ``rope_index`` the model's own ``get_rope_index`` (M-RoPE
    families only).
    """

    def __init__(self, rows: CompletionOnlyCollator, mode: str, pad_id: int, *,
                 rope_index: Callable[..., Any] | None = None, flat: bool = False) -> None:
        if mode not in ("position_ids", "mrope", "mask"):
            raise PackingError(f"packing mode {mode!r} cannot be collated", Reason.CONFIG)
        if mode == "mrope" and rope_index is None:
            raise PackingError("M-RoPE packing needs the model's get_rope_index", Reason.CONFIG)
        self.rows, self.mode, self.pad_id, self.rope_index, self.flat = rows, mode, int(pad_id), rope_index, flat

    def __call__(self, packs: list[list[dict[str, Any]]]) -> dict[str, Any]:
        features = [row for pack in packs for row in pack]
        fillers = [i for i, row in enumerate(features) if row.get(FILLER)]
        if fillers:  # a filler pack (PackedDataset): run it, train nothing
            features = [{k: v for k, v in row.items() if k != FILLER} for row in features]
        padded = self.rows(features)  # one processor call: ids checked, labels built, media in row order
        if fillers:
            padded["labels"][fillers] = IGNORE
        unknown = sorted(k for k in padded if k not in (*TOKEN_KEYS, *MEDIA_KEYS, "attention_mask"))
        if unknown:
            raise PackingError(f"packing does not know how to lay out the model input {unknown[0]!r}; set "
                               "data.packing: false for this model", Reason.CONFIG)
        lengths = [len(f["input_ids"]) for f in features]
        groups = [list(range(len(features)))] if self.flat else _groups(packs)
        used = [sum(lengths[i] for i in g) for g in groups]
        width = max(used)
        segments = [tuple(lengths[i] for i in g) + ((width - n,) if n < width else ())
                    for g, n in zip(groups, used, strict=True)]
        info = PackInfo(tuple(segments), self.mode)
        out: dict[str, Any] = {}
        fill = {"input_ids": self.pad_id, "labels": IGNORE}
        for key in TOKEN_KEYS:
            if key in padded:
                out[key] = _lay_out(padded[key], groups, lengths, width, fill.get(key, 0))
        text = info.text_positions()
        out["position_ids"] = self._mrope(padded, groups, lengths, width, text) if self.mode == "mrope" else text
        out.update({k: padded[k] for k in MEDIA_KEYS if k in padded})
        out["use_cache"] = False
        out[PACK_MARKER] = info
        return out

    def _mrope(self, padded: dict[str, Any], groups: list[list[int]], lengths: list[int], width: int,
               text: torch.Tensor) -> torch.Tensor:
        """(4, B, L): the text positions, then each row's (t, h, w) positions from the model, computed on the
        padded batch (``get_rope_index`` treats each row alone, consuming grids in row order)."""
        if any(padded.get(k) is not None for k in ("image_grid_thw", "video_grid_thw")):
            assert self.rope_index is not None
            extra = {k: padded[k] for k in ROPE_KEYS if padded.get(k) is not None}
            rope, _ = self.rope_index(input_ids=padded["input_ids"], mm_token_type_ids=padded["mm_token_type_ids"],
                                      attention_mask=padded["attention_mask"], **extra)
            rope = torch.stack([_lay_out(rope[axis], groups, lengths, width, None) for axis in range(3)])
            tail = torch.isnan(rope.float())  # pad tails: their own plain run, like the text positions
            rope = torch.where(tail, text.unsqueeze(0).expand(3, -1, -1), rope.nan_to_num(0)).long()
        else:
            rope = text.unsqueeze(0).expand(3, -1, -1)
        return torch.cat([text.unsqueeze(0), rope], dim=0)


def _groups(packs: list[list[dict[str, Any]]]) -> list[list[int]]:
    out, start = [], 0
    for pack in packs:
        out.append(list(range(start, start + len(pack))))
        start += len(pack)
    return out


def _lay_out(tensor: torch.Tensor, groups: list[list[int]], lengths: list[int], width: int,
             fill: float | None) -> torch.Tensor:
    """Rows of a right-padded (rows, L) tensor cut to their lengths, concatenated per group, padded to
    ``width`` with ``fill`` (None: NaN, so the caller can find the tail)."""
    dtype = torch.float64 if fill is None else tensor.dtype
    out = torch.full((len(groups), width), float("nan") if fill is None else fill, dtype=dtype)
    for b, group in enumerate(groups):
        parts = [tensor[i, :lengths[i]].to(dtype) for i in group]
        joined = torch.cat(parts)
        out[b, :joined.shape[0]] = joined
    return out
