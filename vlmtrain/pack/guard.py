"""Forward hooks that make a packed batch exact or an error, never a silent leak.

transformers detects packed rows from restarting ``position_ids`` only when the decoder gets no
``attention_mask`` and no cache (``shared/PACKING.md``); an all-ones mask, a default cache, 2-D positions for
an M-RoPE model or flash-attention over several rows without ``cu_seq_lens`` let rows attend to each other
without any error. Two hooks:

- on the outermost model: take the collator's ``PackInfo`` out of the inputs (so it never reaches a forward)
  and, for ``mask`` families (Gemma 3), build the explicit per-layer-type mask: same row and (causal or same
  image block), the sliding layers also within the window;
- on the decoder: check what actually arrives there against the ``PackInfo``.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmtrain.errors import Reason
from vlmtrain.pack.collator import PACK_MARKER, PackInfo, PackingError


class PackGuard:
    """Holds the ``PackInfo`` of the forward in flight (None for an unpacked forward such as ``generate``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.info: PackInfo | None = None
        self.checked = 0  # decoder forwards verified (tests read it: the guard really ran)

    def outer(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        self.info = kwargs.pop(PACK_MARKER, None)
        if self.info is not None and self.mode == "mask":
            if kwargs.get("attention_mask") is not None:
                raise PackingError("packed batch: an attention_mask reached the model; the packing collator builds "
                                   "none (Gemma 3's mask is built here)", Reason.CONFIG)
            kwargs["attention_mask"] = block_masks(self.info, kwargs.get("token_type_ids"), _text_config(module),
                                                   _dtype(module))
        return args, kwargs

    def decoder(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        info = self.info
        if info is None:
            return
        config = module.config
        use_cache = kwargs.get("use_cache")
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None or use_cache or (
                use_cache is None and getattr(config, "use_cache", False)):
            raise PackingError("packed batch: the decoder would use a KV cache, which hides the row boundaries; "
                               "pass use_cache=False", Reason.CONFIG)
        mask = kwargs.get("attention_mask")
        if self.mode == "mask":
            if not isinstance(mask, dict):
                raise PackingError("packed batch: Gemma-style packing needs the explicit per-layer mask, got "
                                   f"{type(mask).__name__}", Reason.CONFIG)
        elif mask is not None:
            raise PackingError("packed batch: an attention_mask reached the decoder; with it transformers stops "
                               "detecting row boundaries and rows attend to each other", Reason.CONFIG)
        positions = kwargs.get("position_ids")
        expected = info.text_positions(device=positions.device if positions is not None else None)
        if self.mode == "mrope":
            ok = positions is not None and positions.ndim == 3 and positions.shape[0] == 4 \
                and torch.equal(positions[0], expected)
            form = "the 4-row (text, t, h, w) M-RoPE form"
        else:
            ok = positions is not None and positions.ndim == 2 and torch.equal(positions, expected)
            form = "per-row positions 0, 1, ... of shape (batch, length)"
        if not ok:
            got = None if positions is None else tuple(positions.shape)
            raise PackingError(f"packed batch: position_ids {got} are not {form}; rows would see each other or "
                               "get wrong rotary positions", Reason.CONFIG)
        attn = str(getattr(config, "_attn_implementation", "") or "")
        if "flash" in attn and expected.shape[0] > 1 and kwargs.get("cu_seq_lens_q") is None:
            raise PackingError("packed batch: flash-attention finds row boundaries only in a batch of one "
                               "sequence; the packing collator must run with flat=True", Reason.CONFIG)
        self.checked += 1


def install(model: Any, mode: str) -> PackGuard:
    """Register the hooks on ``model`` (the outermost module the trainer calls: PEFT wrapper or model)."""
    guard = PackGuard(mode)
    model.register_forward_pre_hook(guard.outer, with_kwargs=True)
    decoder = find_decoder(model)
    decoder.register_forward_pre_hook(guard.decoder, with_kwargs=True)
    return guard


def find_decoder(model: Any) -> Any:
    """The module that turns positions and the mask into attention: the text model holding the layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    if not hasattr(decoder, "layers"):
        raise PackingError(f"{type(base).__name__}: no decoder with layers found to guard packed batches",
                           Reason.CONFIG)
    return decoder


def find_rope_index(model: Any) -> Any:
    """The model's own ``get_rope_index`` (M-RoPE families)."""
    for module in model.modules():
        if callable(getattr(module, "get_rope_index", None)):
            return module.get_rope_index
    raise PackingError(f"{type(model).__name__} has no get_rope_index; it cannot be packed as an M-RoPE model",
                       Reason.CONFIG)


def block_masks(info: PackInfo, token_type_ids: torch.Tensor | None, config: Any, dtype: torch.dtype
                ) -> dict[str, torch.Tensor]:
    """``{"full_attention": M, "sliding_attention": M & window}``, M = same row and (causal or same image block):
    what Gemma 3 builds for each row alone, laid out block-diagonally (bool for sdpa, additive for eager)."""
    device = token_type_ids.device if token_type_ids is not None else None
    segments = info.segment_ids(device=device)
    length = segments.shape[1]
    q = torch.arange(length, device=device)
    causal = q[None, :] <= q[:, None]
    same_row = segments[:, :, None] == segments[:, None, :]
    if token_type_ids is not None:
        image = token_type_ids == 1
        start = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
        block = torch.where(image, torch.cumsum(start.long(), dim=1), -1)
        same_block = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
    else:
        same_block = torch.zeros_like(same_row)
    full = same_row & (causal[None] | same_block)
    window = int(getattr(config, "sliding_window", None) or length + 1)
    sliding = full & ((q[:, None] - q[None, :]) < window)[None]
    masks = {"full_attention": full, "sliding_attention": sliding}
    attn = str(getattr(config, "_attn_implementation", "sdpa") or "sdpa")
    if attn == "eager":
        low = torch.finfo(dtype).min
        return {k: torch.where(m, 0.0, low).to(dtype)[:, None] for k, m in masks.items()}
    return {k: m[:, None] for k, m in masks.items()}


def _text_config(module: Any) -> Any:
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    config = base.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _dtype(module: Any) -> torch.dtype:
    return next(p.dtype for p in module.parameters() if p.is_floating_point())
