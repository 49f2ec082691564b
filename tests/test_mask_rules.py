"""Mask rules on hand-built rows (modes, roles, train_on_eos, checks), and the ``mask.role_boundaries``
override on a custom template the registry does not know."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import media_of
from omegaconf import OmegaConf
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerFast

from vlmtrain.families import FamilyError, known_names
from vlmtrain.mask import EmptyMaskError, MaskedRenderer, MaskRules, find_issues, loss_mask, require_trained_tokens
from vlmtrain.render import CONTENT, MARKER, MEDIA, NO_MESSAGE, MaskedRow
from vlmtrain.render.boundaries import BoundaryError

C, M, X = CONTENT, MARKER, MEDIA


def _row(tokens: list[tuple[int, int, bool, int]], roles: list[str]) -> MaskedRow:
    """tokens: (message_index, kind, sampled, ends_turn) per position; ids are the positions."""
    message_index, kind, sampled, ends_turn = (np.array(col) for col in zip(*tokens, strict=True))
    return MaskedRow(input_ids=np.arange(len(tokens)), message_index=message_index.astype(np.int64),
                       kind=kind.astype(np.int8), sampled=sampled.astype(bool),
                       ends_turn=ends_turn.astype(np.int64), roles=roles, text="")


N = NO_MESSAGE
# Qwen-like: every stop inside its own message. system 0, user 1, assistant 2, user 3, assistant 4.
IN_TURN = _row([
    (N, M, False, N),  # 0 bos
    (0, C, False, N), (0, M, False, 0),  # 1 system text, 2 its stop
    (1, M, False, N), (1, X, False, N), (1, C, False, N), (1, M, False, 1),  # 3 head, 4 image, 5 text, 6 stop
    (2, M, False, N), (2, C, True, N), (2, M, True, 2), (2, M, False, N),  # 7 head, 8 answer, 9 stop, 10 "\n"
    (3, M, False, N), (3, C, False, N), (3, M, False, 3),  # 11 head, 12 text, 13 stop
    (4, M, False, N), (4, C, True, N), (4, M, True, 4), (4, M, False, N),  # 14 head, 15 answer, 16 stop, 17
], ["system", "user", "assistant", "user", "assistant"])

# GLM-like: the stop opens the next message. user 0, assistant 1, tool 2, assistant 3 (appended final stop).
NEXT_TURN = _row([
    (N, M, False, N),  # 0 [gMASK]<sop>
    (0, M, False, N), (0, C, False, N),  # 1 <|user|>, 2 text
    (1, M, False, N), (1, C, True, N),  # 3 <|assistant|>, 4 tool call
    (2, M, True, 1), (2, C, False, N),  # 5 <|observation|> ends turn 1 inside the tool's span, 6 tool result
    (3, M, False, N), (3, C, True, N), (3, M, True, 3),  # 7 <|assistant|>, 8 answer, 9 appended <|user|>
], ["user", "assistant", "tool", "assistant"])


def _trained(row: MaskedRow, mode: str = "sampled", roles: tuple[str, ...] = ("assistant",),
             eos: str = "turn") -> set[int]:
    return set(np.flatnonzero(loss_mask(row, MaskRules(mode, roles, eos))).tolist())


@pytest.mark.parametrize(("mode", "roles", "eos", "want"), [
    ("sampled", ("assistant",), "turn", {8, 9, 15, 16}),
    ("sampled", ("assistant",), "all", {2, 6, 8, 9, 13, 15, 16}),
    ("sampled", ("assistant",), "last", {8, 15, 16}),
    ("sampled", ("assistant",), "none", {8, 15}),
    ("sampled", ("user",), "turn", {8, 9, 15, 16}),  # roles are ignored outside mode 'roles'
    ("roles", ("assistant",), "turn", {8, 9, 15, 16}),
    ("roles", ("assistant",), "all", {8, 9, 15, 16}),  # other turns' stops sit in untrained messages
    ("roles", ("user",), "turn", {5, 6, 12, 13}),
    ("roles", ("user", "assistant"), "turn", {5, 6, 8, 9, 12, 13, 15, 16}),
    ("roles", ("user", "assistant"), "last", {5, 8, 12, 15, 16}),
    ("roles", ("user", "assistant"), "none", {5, 8, 12, 15}),
    ("roles", ("system", "assistant"), "turn", {1, 2, 8, 9, 15, 16}),
    ("all", ("assistant",), "turn", set(range(18)) - {4}),
    ("all", ("assistant",), "none", set(range(18)) - {4}),
])
def test_in_turn_stops(mode: str, roles: tuple[str, ...], eos: str, want: set[int]) -> None:
    assert _trained(IN_TURN, mode, roles, eos) == want


@pytest.mark.parametrize(("mode", "roles", "eos", "want"), [
    ("sampled", ("assistant",), "turn", {4, 5, 8, 9}),  # <|observation|> trained: the model samples it
    ("sampled", ("assistant",), "last", {4, 8, 9}),
    ("sampled", ("assistant",), "none", {4, 8}),
    ("roles", ("assistant",), "turn", {4, 8, 9}),  # ... but it lives in the tool's span
    ("roles", ("assistant", "tool"), "turn", {4, 5, 6, 8, 9}),
    ("all", ("assistant",), "turn", set(range(10))),
])
def test_stops_that_open_the_next_message(mode: str, roles: tuple[str, ...], eos: str,
                                          want: set[int]) -> None:
    assert _trained(NEXT_TURN, mode, roles, eos) == want


def test_find_issues_reports_untrained_and_missing_stops() -> None:
    roles_mask = loss_mask(NEXT_TURN, MaskRules("roles", ("assistant",), "turn"))
    issues = find_issues(NEXT_TURN, roles_mask)
    assert issues.untrained_stop_turns == [1] and issues.turns_without_stop == [] and issues
    assert not find_issues(NEXT_TURN, loss_mask(NEXT_TURN, MaskRules()))
    none = find_issues(IN_TURN, loss_mask(IN_TURN, MaskRules(train_on_eos="none")))
    assert none.untrained_stop_turns == [2, 4]
    no_stop = _row([(0, C, False, N), (1, C, True, N)], ["user", "assistant"])
    assert find_issues(no_stop, loss_mask(no_stop, MaskRules())).turns_without_stop == [1]


def test_empty_mask_is_an_error() -> None:
    only_user = _row([(0, C, False, N), (0, M, False, 0)], ["user"])
    with pytest.raises(EmptyMaskError, match="zero tokens"):
        require_trained_tokens(loss_mask(only_user, MaskRules()), "row 3")
    require_trained_tokens(loss_mask(IN_TURN, MaskRules()), "row 0")


def test_rules_validate_and_read_config() -> None:
    with pytest.raises(ValueError, match="mask.mode"):
        MaskRules(mode="assistant_only")
    with pytest.raises(ValueError, match="train_on_eos"):
        MaskRules(train_on_eos="first")
    cfg = OmegaConf.create({"mode": "roles", "roles": ["user", "assistant"], "train_on_eos": "last"})
    assert MaskRules.from_config(cfg) == MaskRules("roles", ("user", "assistant"), "last")


# --- mask.role_boundaries on a template vlmtrain does not know -------------------------------------------

MISTRAL_STYLE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST]"
                 "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
                 "{% if p['type'] == 'image' %}[IMG]{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
                 "{% endif %}"
                 "[/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
USER = {"role": "user", "start": "[INST]", "end": "[/INST]", "include_end": False}
ASSISTANT = {"role": "assistant", "start": "[/INST]", "end": "eos_token"}
CHAT = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan?"}, {"role": "assistant", "content": "Tokyo, 東京."}]


def _cfg(boundaries: list[dict], mode: str = "sampled", roles: tuple[str, ...] = ("assistant",),
         eos: str = "turn") -> object:
    return OmegaConf.create({"mode": mode, "roles": list(roles), "train_on_eos": eos,
                             "role_boundaries": boundaries})


@pytest.fixture(scope="module")
def mistral_tokenizer(tiny_dir) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir("mistral3"))
    tokenizer.chat_template = MISTRAL_STYLE
    return tokenizer


def _runs(renderer: MaskedRenderer, row: MaskedRow) -> list[str]:
    tok, mask, ids = renderer.chat.tokenizer, renderer.mask(row), row.input_ids.tolist()
    runs, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and mask[j]:
            j += 1
        if j > i:
            runs.append(tok.decode(ids[i:j]))
        i = j + 1
    return runs


@pytest.mark.parametrize(("mode", "roles", "eos", "want"), [
    ("sampled", ("assistant",), "turn", ["Paris.</s>", "Tokyo, 東京.</s>"]),
    ("sampled", ("assistant",), "last", ["Paris.", "Tokyo, 東京.</s>"]),
    ("sampled", ("assistant",), "none", ["Paris.", "Tokyo, 東京."]),
    # The shared [/INST] ends the user turn without being its stop (include_end: false): never trained.
    ("sampled", ("assistant",), "all", ["Paris.</s>", "Tokyo, 東京.</s>"]),
    ("roles", ("user", "assistant"), "all", ["Capital of France?", "Paris.</s>", "And of Japan?",
                                             "Tokyo, 東京.</s>"]),
    ("roles", ("user",), "all", ["Capital of France?", "And of Japan?"]),
])
def test_shared_marker_role_boundaries(mistral_tokenizer, mode: str, roles: tuple[str, ...], eos: str,
                                       want: list[str]) -> None:
    cfg = _cfg([USER, ASSISTANT], mode, roles, eos)
    renderer = MaskedRenderer(mistral_tokenizer, "my_mistral_finetune", cfg)
    row = renderer.render(CHAT)
    text = mistral_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert row.text == text and row.roles == ["user", "assistant", "user", "assistant"]
    assert row.input_ids.tolist() == mistral_tokenizer.apply_chat_template(CHAT, tokenize=True,
                                                                            return_dict=True)["input_ids"]
    assert [r.strip() for r in _runs(renderer, row)] == want


def test_include_start_trains_the_start_marker(mistral_tokenizer) -> None:
    renderer = MaskedRenderer(mistral_tokenizer, "my_mistral_finetune",
                              _cfg([USER, {**ASSISTANT, "include_start": True}]))
    assert [r.strip() for r in _runs(renderer, renderer.render(CHAT))] == ["[/INST]Paris.</s>",
                                                                           "[/INST]Tokyo, 東京.</s>"]


def test_end_null_runs_to_the_end_of_the_sequence(mistral_tokenizer) -> None:
    renderer = MaskedRenderer(mistral_tokenizer, "my_mistral_finetune", _cfg([{**ASSISTANT, "end": None}]))
    assert [r.strip() for r in _runs(renderer, renderer.render(CHAT[:2]))] == ["Paris.</s>"]
    # Over several turns the first span swallows the rest: end: null is for single-answer rows.
    assert [r.strip() for r in _runs(renderer, renderer.render(CHAT))] == ["Paris.</s>[INST]And of Japan?"
                                                                           "[/INST]Tokyo, 東京.</s>"]


def test_role_boundaries_on_a_processor_never_train_media(tiny_dir) -> None:
    processor = AutoProcessor.from_pretrained(tiny_dir("mistral3"))
    processor.chat_template = MISTRAL_STYLE
    media = {processor.tokenizer.convert_tokens_to_ids(t) for t in ("[IMG]", "[IMG_BREAK]", "[IMG_END]")}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "A square."}]
    modes = [("sampled", ("assistant",)), ("roles", ("user", "assistant")), ("all", ("assistant",))]
    for mode, roles in modes:
        renderer = MaskedRenderer(processor, "my_pixtral_finetune", _cfg([USER, ASSISTANT], mode, roles))
        row = renderer.render(messages, media_of([Image.new("RGB", (32, 32), "red")]))
        ids = row.input_ids
        assert media <= set(ids.tolist())
        assert not renderer.mask(row)[np.isin(ids, list(media))].any(), mode


def test_unknown_family_without_boundaries_lists_known_families(mistral_tokenizer) -> None:
    # With no stop token to derive (the template writes none, the tokenizer has no eos), an unregistered model
    # type cannot be derived: the error lists the known families and explains role_boundaries.
    tokenizer = copy.deepcopy(mistral_tokenizer)
    tokenizer.eos_token = None
    with pytest.raises(FamilyError, match="my_mistral_finetune") as err:
        MaskedRenderer(tokenizer, "my_mistral_finetune", _cfg([]))
    assert all(name in str(err.value) for name in known_names())
    assert "role_boundaries" in str(err.value)


def test_empty_role_boundaries_mean_the_built_in_family(tiny_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir("qwen2"))
    renderer = MaskedRenderer(tokenizer, "qwen2", _cfg([]))
    assert renderer.boundaries is None and renderer.family_name == "qwen2"


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer without byte fallback, so that a marker can be unencodable."""
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", "<s>", "[INST]", "[/INST]", "hello", "hi"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", bos_token="<s>")
    fast.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    fast.chat_template = MISTRAL_STYLE
    return fast


@pytest.mark.parametrize(("entry", "match"), [
    ({"role": "assistant", "start": "<|turn>model", "end": "<turn|>"}, r"start: marker '<\|turn>model'"),
    ({"role": "assistant", "start": "[/INST]", "end": "<turn|>"}, r"end: marker '<turn\|>'"),
    ({"role": "assistant", "start": "[/INST]", "end": ""}, "cannot be encoded"),
    ({"role": "assistant", "end": "eos_token"}, "'role' and 'start' are required"),
])
def test_unusable_markers_fail_at_construction(entry: dict, match: str) -> None:
    with pytest.raises(BoundaryError, match=match):
        MaskedRenderer(_word_tokenizer(), "custom", _cfg([entry]))


def test_eos_token_end_needs_an_eos() -> None:
    tokenizer = _word_tokenizer()
    renderer = MaskedRenderer(tokenizer, "custom", _cfg([USER, ASSISTANT]))
    row = renderer.render([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}])
    ids = row.input_ids[renderer.mask(row)].tolist()
    assert ids == tokenizer.convert_tokens_to_ids(["hi", "</s>"])
    tokenizer.eos_token = None
    with pytest.raises(BoundaryError, match="no EOS"):
        MaskedRenderer(tokenizer, "custom", _cfg([USER, ASSISTANT]))
