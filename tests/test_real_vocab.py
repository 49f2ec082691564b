"""Conformance on real vocabularies: the tiny builds' locally trained tokenizers cannot merge across the
prompt / answer boundary, the real ones do. ``../shared/vocab`` holds llama.cpp's vocab-only GGUF files (Qwen2,
Qwen3.5, Llama 3, Phi-3, Gemma 4) with llama.cpp's tokenizer test vectors; each is converted once per session,
restored where a GGUF does not carry what the checkpoint's tokenizer files do (``../shared/vocab/SOURCE.md``),
checked against the vectors, and dressed as every family that shares it: the family's template, special tokens
at their real ids, a processor and a config sized to the real vocabulary (tiny hidden size).

Then the conformance checks of ``test_conformance.py`` run on it, plus answers that start with newlines, spaces,
tabs, punctuation, emoji and CJK, where a real token straddles the end of the generation prompt: the engine
feeds that token, so it is never trained.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_conformance as conf
from conftest import SHARED_TEMPLATES, media_of, skip_outside_ci

from vlmtrain.families import lookup
from vlmtrain.tiny.build import write_build
from vlmtrain.tiny.specs import FAMILIES as TINY_SPECS
from vlmtrain.tiny.templates import shared_special_tokens, template_source
from vlmtrain.tiny.tokenizer import dress_tokenizer

VOCAB_DIR = SHARED_TEMPLATES.parent / "vocab"
pytestmark = pytest.mark.slow  # converting the five vocabularies takes about a minute

# Every verified family whose real tokenizer is one of these (DeepSeek-R1 distills, Qwen2.5-Omni and GLM rename or
# add tokens on a shared vocabulary, so they are left out rather than approximated).
VOCAB_OF = {
    "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "qwen3_vl": "qwen2", "qwen2": "qwen2", "qwen3": "qwen2",
    "qwen3_5": "qwen35", "qwen3_5_text": "qwen35",
    "llama": "llama-bpe", "llama3_1": "llama-bpe", "mllama": "llama-bpe",
    "phi3": "phi-3",
    "gemma4": "gemma-4", "gemma4_text": "gemma-4",
}  # fmt: skip

# What the GGUF files leave unnamed or lose (SOURCE.md): token names at their real ids, flags, BPE options.
_QWEN_NAMES = dict(enumerate((
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
    "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
), start=151646))  # fmt: skip
RESTORE: dict[str, dict[str, Any]] = {
    "qwen2": {"names": _QWEN_NAMES, "plain_from": 151657},
    "qwen35": {"names": _QWEN_NAMES, "plain_from": 151657},
    "llama-bpe": {"names": {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"},
                  "ignore_merges": True, "size": 128256},
    "phi-3": {"rstrip": ("<|assistant|>", "<|system|>", "<|end|>", "<|user|>", "</s>"), "plain": ("</s>",)},
    "gemma-4": {},
}


def _vectors(name: str) -> list[tuple[str, list[int]]]:
    base = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    inputs = base.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = base.with_suffix(".gguf.out").read_text(encoding="utf-8").splitlines()
    return [(text, [int(i) for i in ids.split()]) for text, ids in zip(inputs, outputs, strict=False)]


def _gemma4_backend(path: Path) -> Any:
    """transformers 5.24 cannot read this GGUF (its config parser fails on a per-layer list); the vocabulary and
    merges are read with ``gguf`` and assembled as Gemma's SentencePiece-style BPE with byte fallback."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    fields = GGUFReader(str(path)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token="<unk>",
                     byte_fallback=True, fuse_unk=True)
    backend = Tokenizer(bpe)
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    kinds = list(zip(tokens, types, strict=True))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in kinds if k == 3])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in kinds if k == 4])
    return backend


def _restore(backend: Any, names: dict[int, str] | None = None, plain_from: int | None = None,
             rstrip: tuple[str, ...] = (), plain: tuple[str, ...] = (), ignore_merges: bool | None = None,
             size: int | None = None) -> Any:
    """Edit the tokenizer's JSON: rename tokens at their ids, set their flags, drop tokens the converter
    invented past the real size, and drop its post-processor (the family's bos rule is set when dressed)."""
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    names = names or {}
    vocab = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items() if i in names}
    for i, new in names.items():
        if i in by_id:
            vocab[new] = vocab.pop(by_id[i])
    added = [t for t in data["added_tokens"] if size is None or t["id"] < size]
    have = {t["id"] for t in added}
    added += [{"id": i, "content": names[i], "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": True} for i in names if i not in have]
    for t in added:
        if t["id"] in names:
            t["content"], t["special"] = names[t["id"]], plain_from is None or t["id"] < plain_from
        t["rstrip"] = t["rstrip"] or t["content"] in rstrip
        t["special"] = t["special"] and t["content"] not in plain
    data["added_tokens"] = sorted(added, key=lambda t: t["id"])
    if size is not None:
        data["model"]["vocab"] = {t: i for t, i in vocab.items() if i < size}
    if ignore_merges is not None:
        data["model"]["ignore_merges"] = ignore_merges
    data["post_processor"] = None
    return Tokenizer.from_str(json.dumps(data))


@pytest.fixture(scope="session")
def real_vocab() -> Callable[[str], Any]:
    """``real_vocab(name)``: the restored backend of one GGUF vocabulary, converted once and checked against
    llama.cpp's test vectors (every vector must match)."""
    if not VOCAB_DIR.is_dir():  # the GGUF files are local test data (../shared), not shipped with vlmtrain
        skip_outside_ci(f"no real vocabularies at {VOCAB_DIR} (../shared/vocab): real-vocabulary conformance "
                        "skipped")
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
            if name == "gemma-4":
                backend = _gemma4_backend(path)
            else:
                from transformers import AutoTokenizer

                backend = AutoTokenizer.from_pretrained(VOCAB_DIR, gguf_file=path.name).backend_tokenizer
            backend = _restore(backend, **RESTORE[name])
            bad = [(text, want, got) for text, want in _vectors(name)
                   if (got := backend.encode(text, add_special_tokens=False).ids) != want]
            assert not bad, f"{name}: {len(bad)} of llama.cpp's test vectors differ, first: {bad[0]}"
            cache[name] = backend
        return cache[name]

    return get


@pytest.fixture(scope="session")
def real_family(real_vocab, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], conf.Family]:
    """``real_family(family)``: the family's build on its real vocabulary, loaded the way the conformance test
    loads a tiny build (stops from generation_config.json, placement from rendering)."""
    from transformers import AutoProcessor, AutoTokenizer

    root, built = tmp_path_factory.mktemp("real-vocab"), {}

    def get(family: str, with_model: bool = False) -> conf.Family:
        if (family, with_model) not in built:
            from tokenizers import Tokenizer

            spec = TINY_SPECS[family]
            template = template_source(family, SHARED_TEMPLATES)
            # A copy of the backend per family: dressing adds tokens (mllama's <|image|>) in place.
            backend = Tokenizer.from_str(real_vocab(VOCAB_OF[family]).to_str())
            tokenizer = dress_tokenizer(backend, spec.tokenizer, template,
                                        shared_special_tokens(family, SHARED_TEMPLATES))
            path = write_build(family, tokenizer, root / f"{family}-{with_model}", with_model=with_model)
            pc = (AutoProcessor if spec.is_vlm else AutoTokenizer).from_pretrained(path)
            tok = getattr(pc, "tokenizer", pc)
            fam = conf.Family(family, spec.traits, pc, tok, spec.model_type, conf.generation_stops(path, tok))
            fam.placement, fam.final_stop = conf.stop_facts(fam)
            fam.path = path
            built[family, with_model] = fam
        return built[family, with_model]

    return get


# --- the conformance shapes on the real vocabulary ----------------------------------------------------------

CASES = [(f, s) for f, s in conf.RENDERABLE if f in VOCAB_OF]


def test_every_family_of_a_real_vocabulary_is_checked() -> None:
    verified = {f.name for f in conf.FAMILIES if f.verified}
    assert set(VOCAB_OF) <= verified
    assert {f for f, _ in CASES} == set(VOCAB_OF)


def _check_ids(r: conf.Rendered) -> None:
    ids, ref = r.row.input_ids.tolist(), r.reference
    if r.expected.appended is None:
        assert ids == ref and not r.row.appended_stop
        return
    stop_id = r.fam.token_id(r.expected.appended)
    assert r.row.appended_stop and len(ids) == len(ref) + 1
    p = next((i for i, (x, y) in enumerate(zip(ids, ref, strict=False)) if x != y), len(ref))
    assert ids[p] == stop_id and ids[:p] + ids[p + 1:] == ref


def _token_starts(fam: conf.Family, text: str) -> list[int]:
    return [a for a, _ in fam.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]


def _fed_to_token_boundary(fam: conf.Family, exp: conf.Expected) -> conf.Expected:
    """The sampled text of each turn starts at its first token that starts at or after the generation prompt's
    end: a real token that straddles the end (Qwen's "\n\n" after "<think>\n") is one the engine feeds."""
    starts = _token_starts(fam, exp.full)
    bodies = {k: (next((t for t in starts if t >= a), b), b) for k, (a, b) in exp.bodies.items()}
    return conf.Expected(exp.full, bodies, exp.stops, exp.contents, exp.appended)


def _render(fam: conf.Family, conv: conf.Conv) -> conf.Rendered:
    row = fam.renderer().render(conv.messages, media_of(conv.images), tools=conv.tools)
    expected = _fed_to_token_boundary(fam, conf.expected_for(fam, conv))
    return conf.Rendered(fam, conv, row, fam.reference_ids(conv), expected)


@pytest.mark.parametrize(("family", "shape"), CASES)
def test_conformance_on_the_real_vocabulary(real_family, family: str, shape: str,
                                            request: pytest.FixtureRequest) -> None:
    if (family, shape) in conf.KNOWN_BUGS:
        request.applymarker(pytest.mark.xfail(raises=AssertionError, strict=True,
                                              reason=conf.KNOWN_BUGS[family, shape]))
    r = _render(real_family(family), conf.build_conv(shape, family))
    _check_ids(r)
    media = set(r.fam.renderer().family.media_ids.tolist())
    pad = {r.fam.tokenizer.pad_token_id} - {None}
    never = np.isin(r.row.input_ids, [*media, *pad])
    for mode, roles in conf.MODES:
        for eos in conf.EOS_MODES:
            mask = r.fam.renderer(mode, roles, eos).mask(r.row)
            got = conf.trained_runs(r.fam.tokenizer, r.row.input_ids, mask)
            want = conf.expected_runs(r.expected, mode, roles, eos)
            where = f"mode={mode} roles={list(roles)} train_on_eos={eos}"
            if "user" in roles:
                assert [g.strip() for g in got] == [w.strip() for w in want], where
            else:
                assert got == want, where
            assert not (mask & never).any(), where


# --- answers whose first token can merge with the end of the generation prompt -------------------------------

OPENINGS = {"newline": "\nFirst line.", "newlines": "\n\nTwo blank.", "spaces": "  Indented.", "tab": "\tTabbed.",
            "punctuation": "...well, yes.", "emoji": "🙂 Sure.", "cjk": "東京です。", "space": " Lead."}


BYTE_LEVEL = {"qwen2", "qwen35", "llama-bpe"}


def _boundary_conv(family: str, answer: str) -> conf.Conv:
    b = conf._Builder(lookup(family).is_vlm, TINY_SPECS[family].traits)
    return b.conv([b.user("Say it."), b.assistant("Fine."), b.user("Again?"), b.assistant(answer)])


@pytest.mark.parametrize("family", sorted(VOCAB_OF))
def test_tokens_straddling_the_prompt_end_are_fed_not_trained(real_family, family: str) -> None:
    fam = real_family(family)
    straddled, keeps_newline = [], False
    for name, answer in OPENINGS.items():
        conv = _boundary_conv(family, answer)
        r = _render(fam, conv)
        _check_ids(r)
        msgs, final = conv.messages, len(conv.messages) - 1
        prompt = fam.render_text(msgs[:final], generation_prompt=True)
        full = r.expected.full
        start = r.expected.bodies[final][0]
        if start > len(prompt):
            straddled.append(name)
        if name == "newline":
            keeps_newline = prompt.endswith("\n") and full.startswith("\n", len(prompt))
        body_end = r.expected.bodies[final][1]
        stop = next(s for s in r.expected.stops if s.turn == final)
        got = conf.trained_runs(fam.tokenizer, r.row.input_ids, fam.renderer().mask(r.row))
        assert got[-1] == full[start:stop.end], (name, got, full[start:stop.end])
        # The part of the answer the engine feeds inside a prompt token is whitespace, never answer text.
        assert not full[len(prompt):start].strip(), (name, full[len(prompt):start])
        assert answer.strip() in full[start:body_end], name
    # Where the template writes the prompt's final "\n" and then the answer's (or Qwen3.5's think block's) "\n",
    # a byte-level BPE vocabulary merges them into one token. Llama 3.1's, Qwen3's, Phi-3's and Gemma 4's
    # templates trim the answer, so nothing reaches across their prompt's end.
    if keeps_newline and VOCAB_OF[family] in BYTE_LEVEL:
        assert "newline" in straddled, (family, straddled)


# --- a tiny model on a real vocabulary ------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_5_text", "llama", "phi3", "gemma4_text"])
def test_tiny_model_on_the_real_vocabulary_trains_on_the_mask(real_family, family: str) -> None:
    """One family per vocabulary: embeddings with the real vocabulary's rows at the tiny hidden size, and the
    loss on a rendered row's trained tokens is finite and reaches the embeddings of the trained ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    fam = real_family(family, with_model=True)
    auto = AutoModelForImageTextToText if lookup(family).is_vlm else AutoModelForCausalLM
    model = auto.from_pretrained(fam.path)
    assert model.get_input_embeddings().weight.shape == (len(fam.tokenizer), 64)
    assert len(fam.tokenizer) >= {"qwen2": 151936, "qwen35": 151936, "llama-bpe": 128256, "phi-3": 32064,
                                  "gemma-4": 262144}[VOCAB_OF[family]]
    conv = _boundary_conv(family, "\nFirst line.")
    r = _render(fam, conv)
    batch = fam.processing_class(text=[r.row.text], images=[conv.images] if conv.images else None,
                                 return_tensors="pt", add_special_tokens=False)
    assert batch["input_ids"][0].tolist() == r.row.input_ids.tolist()
    mask = torch.as_tensor(fam.renderer().mask(r.row))
    labels = torch.where(mask, batch["input_ids"][0], -100)[None]
    loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and grad[r.row.input_ids[mask.numpy()]].abs().sum() > 0
