"""Packed training computes exactly what each row computes alone (data.packing: true).

Per packable family (the registry's ``packing`` flag), on tiny random models in fp32: the logits and loss of a
packed batch equal the rows run one by one, and so do the gradients, with sdpa and eager; the flash-attention
varlen path runs on the CPU with a pure-torch varlen kernel in place of flash-attn's, so transformers' own
position_ids -> cu_seqlens logic is what keeps rows apart. The guards turn every known leak into an error, the
plan never splits a row, and ``fit`` takes the same first step packed as padded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlmtrain.collate import CompletionOnlyCollator
from vlmtrain.config import load_config
from vlmtrain.data.packing import pack_stats, plan_packs
from vlmtrain.families import FAMILIES, lookup
from vlmtrain.pack import PackingCollator, PackingError
from vlmtrain.pack.guard import find_rope_index, install
from vlmtrain.pack.setup import require_packable
from vlmtrain.tiny import make_shapes_dataset
from vlmtrain.tiny.specs import FAMILIES as TINY_SPECS

PACKABLE = [f.name for f in FAMILIES if f.packing != "no"]
REQUIRED = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "gemma3", "llama", "qwen2", "qwen3", "phi3")
SUMS = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?" + " Think." * (a * b)},
                      {"role": "assistant", "content": f"{a + b}." + " Indeed." * a}]}
        for a in range(3) for b in range(2)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=8)


@pytest.fixture(scope="module")
def sums(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sums") / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in SUMS))
    return path


def _cfg(model: Path, data: Path, out: Path, *overrides: str):
    image_dir = [f"data.train.0.image_dir={data.parent}"] if data.name == "train.jsonl" else []
    return load_config(None, [f"model.name_or_path={model}", f"data.train.0.path={data}", *image_dir,
                              f"training.output_dir={out}", "training.save_strategy='no'",
                              "training.report_to=none", *overrides])


def _setup(family: str, tiny_dir, shapes: Path, sums: Path, tmp_path: Path, attn: str):
    """The family's tiny model (fp32, ``attn``), its cached rows, and a packing collator over them."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from vlmtrain.collate import COLLATOR_COLUMNS
    from vlmtrain.data.split import load_split
    from vlmtrain.mask.pipeline import make_renderer

    entry = lookup(family)
    model_dir = tiny_dir(family, with_model=True)
    cfg = _cfg(model_dir, shapes if entry.is_vlm else sums, tmp_path / "run")
    renderer = make_renderer(cfg)
    rows = load_split(cfg, renderer, "train")
    features = [rows.select_columns(list(COLLATOR_COLUMNS))[i] for i in range(min(len(rows), 6))]
    auto = AutoModelForImageTextToText if entry.is_vlm else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    tokenizer = renderer.chat.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    single = CompletionOnlyCollator(renderer.chat, renderer.media_ids)
    rope = find_rope_index(model) if entry.packing == "mrope" else None
    return model, features, single, lambda flat=False: PackingCollator(single, entry.packing, pad,
                                                                      rope_index=rope, flat=flat)


def _alone(model, single, features):
    """Each row run alone: its logits and its summed token loss (and the token count)."""
    logits, total, count = [], 0.0, 0
    for feature in features:
        batch = single([feature])
        out = model(**batch, use_cache=False)
        labels = batch["labels"][0, 1:]
        n = int(labels.ne(-100).sum())
        logits.append(out.logits[0])
        total = total + out.loss * n
        count += n
    return logits, total / count


def _unpack(logits: torch.Tensor, packed: dict, features: list) -> list[torch.Tensor]:
    info = packed["vlmtrain_packed"]
    out, k = [], 0
    for b, pack in enumerate(info.lengths):
        start = 0
        for n in pack:
            if k < len(features) and n == len(features[k]["input_ids"]):
                out.append(logits[b, start:start + n])
                k += 1
            start += n
    assert k == len(features)
    return out


def _compare(model, features, single, packed: dict, guard) -> None:
    reference, ref_loss = _alone(model, single, features)
    model.zero_grad()
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    checked = guard.checked
    out = model(**packed)
    assert guard.checked == checked + 1, "the decoder guard did not see the packed forward"
    for got, want in zip(_unpack(out.logits, packed, features), reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-6, rtol=1e-6)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_required_families_are_packable_and_built() -> None:
    assert set(REQUIRED) <= set(PACKABLE), sorted(set(REQUIRED) - set(PACKABLE))
    assert all(name in TINY_SPECS for name in PACKABLE), "every packable family needs a tiny model to prove it"


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", PACKABLE)
def test_packed_equals_rows_alone(family, attn, tiny_dir, shapes, sums, tmp_path) -> None:
    torch.manual_seed(0)
    model, features, single, collator = _setup(family, tiny_dir, shapes, sums, tmp_path, attn)
    guard = install(model, lookup(family).packing)
    # several packs per batch, rows of different lengths, and a pad tail on the shorter pack
    packs = [features[0:3], features[3:6]] if len(features) >= 6 else [features[:2], features[2:]]
    packed = collator()(packs)
    assert "attention_mask" not in packed
    assert any(len(p) > len(rows) for p, rows in zip(packed["vlmtrain_packed"].lengths, packs, strict=True))
    _compare(model, [f for p in packs for f in p], single, packed, guard)


def _emulate_flash(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Put a pure-torch varlen kernel where transformers loads flash-attn's; returns a call counter."""
    from transformers import modeling_flash_attention_utils as fa

    calls = [0]

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, deterministic=False):
        assert torch.equal(cu_seqlens_q, cu_seqlens_k) and dropout_p == 0.0 and not softcap
        calls[0] += 1
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        bounds = cu_seqlens_q.tolist()
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))
            rep = qs.shape[0] // ks.shape[0]
            ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
            o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=softmax_scale)
            out[s:e] = o.transpose(0, 1)
        return out

    def dense(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        b, n = q.shape[:2]
        cu = torch.arange(0, (b + 1) * n, n, dtype=torch.int32)
        flat = varlen(*(x.reshape(b * n, *x.shape[2:]) for x in (q, k, v)), cu, cu,
                      softmax_scale=softmax_scale, causal=causal)
        return flat.view(b, n, *flat.shape[1:])

    monkeypatch.setattr(fa, "_loaded_implementation", "flash_attention_2")
    monkeypatch.setattr(fa, "_flash_fn", dense)
    monkeypatch.setattr(fa, "_flash_varlen_fn", varlen)
    monkeypatch.setattr(fa, "_flash_with_kvcache_fn", None)
    monkeypatch.setattr(fa, "_pad_fn", fa._pad_input)
    monkeypatch.setattr(fa, "_unpad_fn", fa._unpad_input)
    monkeypatch.setattr(fa, "_process_flash_kwargs_fn", fa._lazy_define_process_function(varlen))
    monkeypatch.setattr(fa, "_process_with_kvcache_kwargs_fn", dict)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in PACKABLE if lookup(f).packing != "mask"])
def test_flash_attention_varlen_path_keeps_rows_apart(family, tiny_dir, shapes, sums, tmp_path, monkeypatch):
    """The micro-batch flattened to one sequence; transformers derives cu_seqlens from the restarting
    positions (``_is_packed_sequence``) and calls the varlen kernel: equal to each row alone under sdpa."""
    model, features, single, collator = _setup(family, tiny_dir, shapes, sums, tmp_path, "sdpa")
    reference, ref_loss = _alone(model, single, features)
    calls = _emulate_flash(monkeypatch)
    model.config._attn_implementation = "flash_attention_2"
    guard = install(model, lookup(family).packing)
    packed = collator(flat=True)([features[:3], features[3:]])
    assert packed["input_ids"].shape[0] == 1 and len(packed["vlmtrain_packed"].lengths[0]) == len(features)
    out = model(**packed)
    assert calls[0] > 0 and guard.checked == 1
    for got, want in zip(_unpack(out.logits, packed, features), reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-6, rtol=1e-6)
    with pytest.raises(PackingError, match="flat=True"):  # several sequences without cu_seq_lens: refused
        model(**collator()([features[:3], features[3:]]))


@pytest.mark.parametrize("leak", ["attention_mask", "cache", "2-D positions", "3-row positions"])
def test_a_packed_batch_that_would_leak_is_an_error(leak, tiny_dir, shapes, sums, tmp_path) -> None:
    model, features, _, collator = _setup("qwen2_vl", tiny_dir, shapes, sums, tmp_path, "sdpa")
    install(model, "mrope")
    packed = collator()([features[:3], features[3:]])
    if leak == "attention_mask":
        packed["attention_mask"] = torch.ones_like(packed["input_ids"])
    elif leak == "cache":
        packed["use_cache"] = True
    elif leak == "2-D positions":
        packed["position_ids"] = packed["position_ids"][0]
    else:
        packed["position_ids"] = packed["position_ids"][1:]
    with pytest.raises(PackingError, match="packed batch"):
        model(**packed)


def test_unpacked_forwards_pass_the_guard_untouched(tiny_dir, shapes, sums, tmp_path) -> None:
    """generate (eval.samples) and other plain forwards carry no PackInfo: the guard stays out of their way."""
    model, features, single, _ = _setup("qwen2", tiny_dir, shapes, sums, tmp_path, "sdpa")
    guard = install(model, "position_ids")
    batch = single(features[:1])
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=2,
                         do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 2 and guard.checked == 0


def test_plan_packs_whole_rows_best_fit_decreasing_deterministic_per_seed_and_epoch() -> None:
    lengths = [90, 10, 50, 50, 40, 30, 60, 20, 20, 20, 100, 5]
    plan = plan_packs(lengths, 100, seed=3, epoch=0)
    assert sorted(i for p in plan for i in p) == list(range(len(lengths))), "every row exactly once"
    assert all(sum(lengths[i] for i in p) <= 100 for p in plan)
    assert len(plan) == 5 == -(-sum(lengths) // 100), "495 tokens fill 5 packs of 100: the optimum"
    assert plan == plan_packs(lengths, 100, seed=3, epoch=0)
    ties = [30] * 6 + [40] * 3  # rows of equal length are regrouped each epoch, the pack count stays
    epochs = [plan_packs(ties, 100, seed=3, epoch=e) for e in range(6)]
    assert len({len(p) for p in epochs}) == 1 and len({str(p) for p in epochs}) > 1
    stats = pack_stats(plan, lengths, 100)
    assert stats.non_pad_share == pytest.approx(495 / 500) and stats.rows_per_pack == pytest.approx(12 / 5)
    with pytest.raises(Exception, match="never split"):
        plan_packs([101], 100)


def test_unpackable_families_are_refused_with_the_packable_list() -> None:
    for name in ("lfm2_vl", "mllama"):
        with pytest.raises(PackingError, match=f"not supported for family {name}.*packable families: qwen2_vl"):
            require_packable(lookup(name))
    with pytest.raises(PackingError, match="flash-attention cannot take"):
        require_packable(lookup("gemma3"), "flash_attention_2")
    assert require_packable(lookup("qwen3_vl")) == "mrope"


def _one_step(model: Path, data: Path, out: Path, *overrides: str):
    from vlmtrain.train.fit import fit

    cfg = _cfg(model, data, out, "training.max_steps=1", "training.optim=sgd", "training.learning_rate=1.0",
               "training.lr_scheduler_type=constant", "training.weight_decay=0.0", "training.max_grad_norm=0.0",
               "training.logging_steps=1", "data.train.0.max_rows=4", *overrides)
    return fit(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("family", PACKABLE)
def test_fit_packed_takes_the_same_first_step_as_padded(family, tiny_dir, shapes, sums, tmp_path) -> None:
    """Padded batch 4 x accumulation 1 vs packed: one pack per micro-batch, accumulated over every pack, so
    both steps see the same 4 rows; the loss (a token mean over the whole effective batch) and the weights
    after one SGD step agree."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from vlmtrain.data.split import load_split
    from vlmtrain.mask.pipeline import make_renderer

    entry = lookup(family)
    model_dir = tiny_dir(family, with_model=True)
    data = shapes if entry.is_vlm else sums
    cfg = _cfg(model_dir, data, tmp_path / "probe", "data.train.0.max_rows=4")
    lengths = list(load_split(cfg, make_renderer(cfg), "train")["length"])
    packs = len(plan_packs(lengths, max(lengths)))
    assert packs >= 2, "the test needs more than one pack"
    padded = _one_step(model_dir, data, tmp_path / "padded", "training.per_device_train_batch_size=4")
    packed = _one_step(model_dir, data, tmp_path / "packed", "data.packing=true", f"data.max_length={max(lengths)}",
                       "training.per_device_train_batch_size=1", f"training.gradient_accumulation_steps={packs}")
    assert packed.steps == padded.steps == 1
    assert packed.first_loss == pytest.approx(padded.first_loss, rel=1e-5)
    auto = AutoModelForImageTextToText if entry.is_vlm else AutoModelForCausalLM
    start = auto.from_pretrained(model_dir).state_dict()
    a = auto.from_pretrained(tmp_path / "padded").state_dict()
    b = auto.from_pretrained(tmp_path / "packed").state_dict()
    moved = [n for n in start if not torch.equal(start[n], a[n])]
    assert moved
    for name in moved:
        torch.testing.assert_close(b[name] - start[name], a[name] - start[name], rtol=1e-3, atol=1e-5)


def test_fit_refuses_an_unpackable_family_at_start_up(tiny_dir, shapes, tmp_path) -> None:
    from vlmtrain.train.fit import fit

    cfg = _cfg(tiny_dir("lfm2_vl"), shapes, tmp_path / "lfm", "data.packing=true")
    with pytest.raises(PackingError, match="not supported for family lfm2_vl"):
        fit(cfg)
