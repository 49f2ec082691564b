"""Every supported model family, one declarative entry each.

To add a family: append one ``Family(...)`` below and one ``FamilySpec`` named after it to
``vlmtrain/tiny/specs.py``; ``tests/test_conformance.py`` then checks it against its real chat template.
"""

from __future__ import annotations

from vlmtrain.families.family import Family

_QWEN_VL_STYLE = dict(
    stop_tokens=("<|im_end|>",),
    media_tokens=("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
    image_placeholder="<|image_pad|>",
    vision_tower=("model.visual",),
    projector=("model.visual.merger",),
    language_model=("model.language_model",),
)
_QWEN_DEFAULT_SYSTEM = ("template adds a default system turn when none is given",)
_LLAVA_STYLE = dict(
    vision_tower=("model.vision_tower",),
    projector=("model.multi_modal_projector",),
    language_model=("model.language_model",),
)
_IDEFICS_STYLE = dict(
    stop_tokens=("<end_of_utterance>",),
    media_tokens=("<image>", "<fake_token_around_image>", "<global-img>"),
    media_token_patterns=(r"<row_\d+_col_\d+>",),
    image_placeholder="<image>",
    vision_tower=("model.vision_model",),
    projector=("model.connector",),
    language_model=("model.text_model",),
)
_TEXT_ONLY = dict(is_vlm=False, language_model=("model",))

FAMILIES: tuple[Family, ...] = (
    # --- vision-language models -------------------------------------------------------------------------
    Family(name="qwen2_vl", model_types=("qwen2_vl",), quirks=_QWEN_DEFAULT_SYSTEM, packing="mrope",
           **_QWEN_VL_STYLE),
    Family(name="qwen2_5_vl", model_types=("qwen2_5_vl",), quirks=_QWEN_DEFAULT_SYSTEM, packing="mrope",
           **_QWEN_VL_STYLE),
    Family(
        name="qwen3_vl",
        model_types=("qwen3_vl", "qwen3_vl_moe"),
        packing="mrope",
        **{**_QWEN_VL_STYLE, "projector": ("model.visual.merger", "model.visual.deepstack_merger_list")},
    ),
    Family(name="idefics3", model_types=("idefics3",), **_IDEFICS_STYLE),
    Family(name="smolvlm", model_types=("smolvlm",), **_IDEFICS_STYLE),
    Family(
        name="gemma3",
        model_types=("gemma3",),
        stop_tokens=("<end_of_turn>",),
        media_tokens=("<start_of_image>", "<image_soft_token>", "<end_of_image>"),
        image_placeholder="<start_of_image>",
        quirks=("template writes <bos> itself; the processor must not add a second one",),
        packing="mask",
        **_LLAVA_STYLE,
    ),
    Family(
        name="llava",
        model_types=("llava",),
        stop_tokens=("</s>",),
        stop_placement="absent",
        media_tokens=("<image>",),
        image_placeholder="<image>",
        quirks=("LLaVA-1.5's template writes no </s> after answers; vlmtrain appends it to the final turn",),
        template_varies=True,  # llava is also Pixtral's model type, whose template writes </s> after every answer
        packing="position_ids",
        **_LLAVA_STYLE,
    ),
    Family(
        name="llava_next",
        model_types=("llava_next",),
        stop_tokens=("</s>",),
        media_tokens=("<image>",),
        image_placeholder="<image>",
        quirks=("template does not write <s>; the processor adds it",),
        **_LLAVA_STYLE,
    ),
    Family(
        name="llava_onevision",
        model_types=("llava_onevision",),
        stop_tokens=("<|im_end|>",),
        media_tokens=("<image>", "<video>"),
        image_placeholder="<image>",
        **_LLAVA_STYLE,
    ),
    Family(
        name="mllama",
        model_types=("mllama",),
        stop_tokens=("<|eot_id|>",),
        media_tokens=("<|image|>",),
        image_placeholder="<|image|>",
        vision_tower=("model.vision_model",),
        projector=("model.multi_modal_projector",),
        language_model=("model.language_model",),
        quirks=("template writes today's date unless an image is present; vlmtrain pins the date",),
    ),
    Family(
        name="mistral3",
        model_types=("mistral3",),
        stop_tokens=("</s>",),
        media_tokens=("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
        image_placeholder="[IMG]",
        quirks=("template calls strftime_now and adds a default system prompt",),
        **_LLAVA_STYLE,
    ),
    Family(
        name="internvl",
        model_types=("internvl",),
        stop_tokens=("<|im_end|>",),
        media_tokens=("<IMG_CONTEXT>", "<img>", "</img>", "<video>"),
        image_placeholder="<IMG_CONTEXT>",
        **_LLAVA_STYLE,
    ),
    Family(
        name="lfm2_vl",
        model_types=("lfm2_vl",),
        stop_tokens=("<|im_end|>",),
        media_tokens=("<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"),
        media_token_patterns=(r"<\|img_row_\d+_col_\d+\|>",),
        image_placeholder="<image>",
        **_LLAVA_STYLE,
    ),
    Family(
        name="lfm2_5_vl",
        model_types=(),  # model type lfm2_vl: selected by model.family: lfm2_5_vl (LFM2.5-VL's own template)
        stop_tokens=("<|im_end|>",),
        media_tokens=("<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"),
        media_token_patterns=(r"<\|img_row_\d+_col_\d+\|>",),
        image_placeholder="<image>",
        **_LLAVA_STYLE,
    ),
    Family(
        name="glm4v",
        model_types=("glm4v", "glm4v_moe"),
        stop_tokens=("<|user|>", "<|observation|>", "<|endoftext|>"),
        stop_placement="next_turn",
        media_tokens=("<|begin_of_image|>", "<|end_of_image|>", "<|image|>", "<|begin_of_video|>",
                      "<|end_of_video|>", "<|video|>"),
        image_placeholder="<|image|>",
        vision_tower=("model.visual",),
        projector=("model.visual.merger",),
        language_model=("model.language_model",),
        quirks=("GLM-4.1V's template prints {{ msg.content }}: assistant and system text go in as strings",
                "the stop opens the next message; vlmtrain trains it and appends <|user|> at the end"),
    ),
    Family(
        name="pixtral",
        model_types=(),  # model type llava (LLaVA-1.5's entry): selected by model.family: pixtral
        stop_tokens=("</s>",),
        media_tokens=("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
        image_placeholder="[IMG]",
        quirks=("template writes </s> after every answer, from a string content only",),
        **_LLAVA_STYLE,
    ),
    Family(
        name="mistral3_2",
        model_types=(),  # model type mistral3: selected by model.family: mistral3_2
        stop_tokens=("</s>",),
        media_tokens=("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
        image_placeholder="[IMG]",
        quirks=("Mistral Small 3.2's template: strftime_now, a default system prompt, 9-character tool-call ids",),
        **_LLAVA_STYLE,
    ),
    Family(
        name="ministral3",
        model_types=(),  # model type mistral3: selected by model.family: ministral3
        stop_tokens=("</s>",),
        media_tokens=("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
        image_placeholder="[IMG]",
        quirks=("Ministral 3 Reasoning's template: [THINK] blocks from 'thinking' content parts (not "
                "conformance-tested); it refuses an empty answer given as a string",),
        **_LLAVA_STYLE,
    ),
    Family(
        name="qwen2_5_omni",
        model_types=("qwen2_5_omni_thinker", "qwen2_5_omni"),
        stop_tokens=("<|im_end|>",),
        media_tokens=("<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>", "<|audio_bos|>",
                      "<|audio_eos|>", "<|AUDIO|>"),
        image_placeholder="<|IMAGE|>",
        vision_tower=("model.visual",),
        projector=("model.visual.merger",),
        language_model=("model.model",),
        quirks=("the thinker (text + image); template adds a default system turn when none is given",),
    ),
    Family(
        name="llama4",
        model_types=("llama4",),
        stop_tokens=("<|eot|>", "<|eom|>"),
        media_tokens=("<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>",
                      "<|tile_y_separator|>"),
        image_placeholder="<|image|>",
        vision_tower=("model.vision_model",),
        projector=("model.multi_modal_projector",),
        language_model=("model.language_model",),
        quirks=("transformers 5.24's Llama4ForConditionalGeneration.forward fails (outputs.image_outputs); "
                "masks are verified, training needs a fixed transformers",),
    ),
    Family(
        name="gemma4",
        model_types=("gemma4",),
        stop_tokens=("<turn|>", "<|tool_response>"),
        media_tokens=("<|image>", "<|image|>", "<image|>", "<|video|>", "<|audio>", "<|audio|>", "<audio|>"),
        image_placeholder="<|image|>",
        quirks=("the thought channel is written only for answers after the last user turn; history drops it",),
        **_LLAVA_STYLE,
    ),
    Family(
        name="qwen3_5",
        model_types=("qwen3_5", "qwen3_5_moe"),
        quirks=("generation prompt opens <think>; the final turn samples its think block, history turns drop it",),
        **{**_QWEN_VL_STYLE, "projector": ("model.visual.merger",)},
    ),
    # --- text models --------------------------------------------------------------------------------------
    Family(
        name="llama",
        model_types=("llama",),
        stop_tokens=("<|eot_id|>", "<|eom_id|>"),
        quirks=("Llama 3.2's template writes today's date; vlmtrain pins it (data.template_date)",),
        packing="position_ids",
        **_TEXT_ONLY,
    ),
    Family(name="qwen2", model_types=("qwen2",), stop_tokens=("<|im_end|>",), packing="position_ids",
           **_TEXT_ONLY),
    Family(name="qwen3", model_types=("qwen3", "qwen3_moe"), stop_tokens=("<|im_end|>",), packing="position_ids",
           **_TEXT_ONLY),
    Family(
        name="phi3",
        model_types=("phi3",),
        stop_tokens=("<|end|>",),
        quirks=("template appends an extra <|end|> after the last turn; it is not trained",),
        packing="position_ids",
        **_TEXT_ONLY,
    ),
    Family(
        name="glm4_moe",
        model_types=("glm4_moe",),
        stop_tokens=("<|user|>", "<|observation|>", "<|endoftext|>"),
        stop_placement="next_turn",
        quirks=("the stop token opens the next message; vlmtrain trains it and appends <|user|> at the end",),
        **_TEXT_ONLY,
    ),
    Family(
        name="llama3_1",
        model_types=(),  # model type llama: selected by model.family: llama3_1 (Llama 3.1 and 3.3 share it)
        stop_tokens=("<|eot_id|>", "<|eom_id|>"),
        quirks=("Llama 3.1 / 3.3's template writes today's date; vlmtrain pins it (data.template_date)",),
        **_TEXT_ONLY,
    ),
    Family(
        name="deepseek_r1_distill_qwen",
        model_types=(),  # model type qwen2: selected by model.family
        stop_tokens=("<｜end▁of▁sentence｜>",),
        quirks=("the generation prompt opens <think>; the template drops every turn's reasoning, so answers are "
                "trained without it",),
        **_TEXT_ONLY,
    ),
    Family(
        name="deepseek_r1_distill_llama",
        model_types=(),  # model type llama: selected by model.family
        stop_tokens=("<｜end▁of▁sentence｜>",),
        quirks=("the generation prompt opens <think>; the template drops every turn's reasoning, so answers are "
                "trained without it",),
        **_TEXT_ONLY,
    ),
    Family(name="smollm3", model_types=("smollm3",), stop_tokens=("<|im_end|>",), **_TEXT_ONLY),
    Family(
        name="gemma4_text",
        model_types=("gemma4_text",),
        stop_tokens=("<turn|>", "<|tool_response>"),
        quirks=("the thought channel is written only for answers after the last user turn; history drops it",),
        **_TEXT_ONLY,
    ),
    Family(
        name="qwen3_5_text",
        model_types=("qwen3_5_text",),
        stop_tokens=("<|im_end|>",),
        quirks=("generation prompt opens <think>; the final turn samples its think block, history turns drop it",),
        **_TEXT_ONLY,
    ),
)


def _index(families: tuple[Family, ...]) -> dict[str, Family]:
    """Map family names and model types to entries, refusing duplicates (two entries must never race)."""
    index: dict[str, Family] = {}
    for family in families:
        for key in {family.name, *family.model_types}:
            if key in index and index[key] is not family:
                raise ValueError(f"duplicate family registration for {key!r}")
            index[key] = family
    return index


_BY_KEY = _index(FAMILIES)


def known_names() -> list[str]:
    return [f.name for f in FAMILIES]


def lookup(key: str) -> Family | None:
    """Exact-match lookup by family name or config.json model_type."""
    return _BY_KEY.get(key)
