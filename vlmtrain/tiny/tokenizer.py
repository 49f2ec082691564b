"""Train a ~1k-vocab BPE tokenizer locally and dress it with a family's real special tokens.

Two styles mirror the two tokenizer lineages the supported families use: GPT-2-style byte-level
BPE (Qwen, Llama 3, GLM, SmolLM) and SentencePiece-like Metaspace BPE with byte fallback
(Gemma, Llama 2 / LLaVA, Mistral, Phi-3).
"""

from __future__ import annotations

import json
import string

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from .corpus import corpus
from .schema import TokenizerSpec

VOCAB_SIZE = 1000
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
# The tiktoken-style word split used by Qwen2 (and, up to digit grouping, Llama 3 and GLM).
_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _train_byte_level() -> Tokenizer:
    """Split regex + ByteLevel, as Qwen2Tokenizer rebuilds it on load, so reloads encode identically."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def _train_metaspace(unk: str) -> Tokenizer:
    """SentencePiece-like: `▁` marks spaces; characters outside a small alphabet fall back to <0xNN> bytes."""
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    draft = Tokenizer(models.BPE(unk_token=unk))
    draft.pre_tokenizer = pre
    alphabet = [c for c in string.printable if not c.isspace()] + ["▁", "\n"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 257,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    draft.train_from_iterator(corpus(), trainer=trainer)
    learned = sorted(draft.get_vocab().items(), key=lambda kv: kv[1])
    # SentencePiece layout: <unk>, then the 256 byte pieces, then the learned pieces.
    pieces = [unk, *_BYTE_TOKENS, *(p for p, _ in learned if p != unk and p not in _BYTE_TOKENS)]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in _merges(draft)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok


def _merges(tok: Tokenizer) -> list:
    return json.loads(tok.to_str())["model"]["merges"]


def build_tokenizer(
    spec: TokenizerSpec, chat_template: str, more_special: list[str] | tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """Trained backend + the family's special tokens as single-id added tokens + the real chat template."""
    unk = spec.unk or "<unk>"
    backend = _train_byte_level() if spec.style == "byte_level" else _train_metaspace(unk)
    return dress_tokenizer(backend, spec, chat_template, more_special)


def dress_tokenizer(
    backend: Tokenizer, spec: TokenizerSpec, chat_template: str, more_special: list[str] | tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """A backend (trained here, or a real vocabulary) with the family's special tokens, bos rule and template.

    Tokens the backend already has keep their ids (a real vocabulary's ``<|im_end|>`` stays 151645); the others
    are appended."""
    core = [t for t in (spec.bos, spec.eos, spec.pad, spec.unk) if t]
    special = list(dict.fromkeys([*core, *spec.special, *spec.named.values(), *more_special]))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    plain = [t for t in spec.plain if t not in special]
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    if spec.add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B",
            special_tokens=[(spec.bos, backend.token_to_id(spec.bos))],
        )
    extra = [t for t in special if t not in core and t not in spec.named.values()]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        unk_token=spec.unk,
        extra_special_tokens=extra,
        chat_template=chat_template,
        model_max_length=4096,
        **spec.named,
    )
    check_single_ids(tokenizer, [*special, *plain])
    return tokenizer


def check_single_ids(tokenizer: PreTrainedTokenizerFast, tokens: list[str]) -> None:
    """Raise unless every special string encodes to exactly one id (templates and processors rely on it)."""
    bad = {t: ids for t in tokens if len(ids := tokenizer.encode(t, add_special_tokens=False)) != 1}
    if bad:
        raise ValueError(f"special tokens that do not encode to one id: {bad}")
