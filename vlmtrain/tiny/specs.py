"""Declarative per-family table: tokens, stop ids, template source, processor settings, tiny model config.

One `FamilySpec` per registry family, keyed by its `Family.name` (the types and the checks against the
registry are in `schema.py`); builders in the sibling modules interpret it, so adding a family means adding
a table entry, not code. Token ids inside model configs are written as `Tok("<string>")` and resolved
against the trained tokenizer at build time. `generation_stops` copy the published model's
`generation_config.json` `eos_token_id`; `traits` state what the real template accepts (read by the
conformance tests).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .schema import VOCAB, FamilySpec, ProcessorSpec, TemplateTraits, Tok, TokenizerSpec, index_specs

# --- shared pieces -------------------------------------------------------------------------------


def _text(**over: Any) -> dict[str, Any]:
    """Tiny decoder: 2 layers, hidden 64, 4 heads (2 kv); enough to overfit, trains in milliseconds."""
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    return {**base, **over}


def _tower(**over: Any) -> dict[str, Any]:
    """Tiny ViT on 32 px images in 8 px patches (4x4 patches before any merging)."""
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return {**base, "image_size": 32, "patch_size": 8, **over}


def _qwen_vision(**over: Any) -> dict[str, Any]:
    base = dict(depth=1, num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2)
    return {**base, **over}


_MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3]}  # sums to head_dim / 2 = 8
# Patch 8 x merge 2: a 32 px image -> 4 tokens, 48 px -> 9, capped at 16 (64 px).
_QWEN_IMG = dict(
    patch_size=8,
    merge_size=2,
    temporal_patch_size=2,
    size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64},
)
_IDEFICS_IMG = dict(do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32})
_SQUARE32 = {"height": 32, "width": 32}
_LLAVA_PROC = {"patch_size": 8, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
_ROW_COL = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))

_QWEN_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
_QWEN3_PLAIN = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
_CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

QWEN_TOK = TokenizerSpec(
    "byte_level", eos="<|im_end|>", pad="<|endoftext|>", special=_QWEN_SPECIAL, plain=_QWEN3_PLAIN[:2]
)
QWEN3_TOK = TokenizerSpec(
    "byte_level", eos="<|im_end|>", pad="<|endoftext|>", special=_QWEN_SPECIAL, plain=_QWEN3_PLAIN
)
QWEN_VL_TOK = TokenizerSpec(
    "byte_level",
    eos="<|im_end|>",
    pad="<|endoftext|>",
    special=_QWEN_SPECIAL,
    plain=_QWEN3_PLAIN,
    named={
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
    },
)
LLAMA3_TOK = TokenizerSpec(
    "byte_level",
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    pad="<|finetune_right_pad_id|>",
    add_bos=True,
    special=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>"),
)
LLAMA2_TOK = TokenizerSpec(
    "metaspace", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
    named={"image_token": "<image>"},
)
DEEPSEEK_TOK = TokenizerSpec(  # DeepSeek-R1 distills: DeepSeek's markers on the Qwen2 / Llama 3 vocabulary
    "byte_level", bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", pad="<｜▁pad▁｜>", add_bos=True,
    special=("<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
             "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
             "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>"),
    plain=("<think>", "</think>"),
)
GEMMA4_TOK = TokenizerSpec(
    "metaspace", bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
    special=("<mask>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>", "<|tool>", "<tool|>",
             "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>', "<|video|>"),
    named={"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
           "boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>"},
)
_GEMMA4_TEXT = _text(
    head_dim=16, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
    vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8,
)
_QWEN_VL_IDS = dict(
    image_token_id=Tok("<|image_pad|>"),
    video_token_id=Tok("<|video_pad|>"),
    vision_start_token_id=Tok("<|vision_start|>"),
    vision_end_token_id=Tok("<|vision_end|>"),
)
_QWEN_STOPS = ("<|im_end|>", "<|endoftext|>")  # Qwen2/2.5/3(-VL) generation_config: [151645, 151643]
_LLAMA3_STOPS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")  # Llama 3.x: [128001, 128008, 128009]
_TOOLS = TemplateTraits(tools=True)
_REASONING = TemplateTraits(tools=True, history_rewrites=True, reasoning=True)
# Qwen3.5's hybrid decoder: one gated-delta-net (linear attention) layer, one full-attention layer.
_QWEN3_5_TEXT = _text(
    head_dim=16, layer_types=["linear_attention", "full_attention"], linear_key_head_dim=8,
    linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
    rope_parameters={**_MROPE, "mrope_interleaved": True, "partial_rotary_factor": 1.0},
)
_QWEN_VL_PROC = dict(image=("Qwen2VLImageProcessor", _QWEN_IMG), video=("Qwen2VLVideoProcessor", _QWEN_IMG))


_MISTRAL3_CONFIG = dict(  # Mistral 3.x: a Pixtral tower on a Mistral decoder, patches merged 2x2
    text_config=dict(model_type="mistral", **_text()),
    vision_config=_tower(model_type="pixtral", head_dim=16),
    image_token_index=Tok("[IMG]"),
    spatial_merge_size=2,
    vision_feature_layer=-1,
)


def _pixtral_processor(merge: int) -> ProcessorSpec:
    """Pixtral's processor on 32 px images in 8 px patches, ``merge`` x ``merge`` patches per image token."""
    return ProcessorSpec("PixtralProcessor",
                         ("PixtralImageProcessor", {"size": {"longest_edge": 32}, "patch_size": 8}),
                         kwargs={"patch_size": 8, "spatial_merge_size": merge})


# --- the table -----------------------------------------------------------------------------------

_TABLE = (
    FamilySpec(
        "qwen2_vl", ("trl", "qwen2_5_vl.jinja"), QWEN_VL_TOK, "Qwen2VLConfig",
        dict(
            text_config=_text(rope_parameters=_MROPE),
            vision_config=_qwen_vision(embed_dim=32, hidden_size=64, mlp_ratio=2),
            **_QWEN_VL_IDS,
        ),
        ProcessorSpec("Qwen2VLProcessor", **_QWEN_VL_PROC),
        generation_stops=_QWEN_STOPS,
    ),
    FamilySpec(
        "qwen2_5_vl", ("trl", "qwen2_5_vl.jinja"), QWEN_VL_TOK, "Qwen2_5_VLConfig",
        dict(
            text_config=_text(rope_parameters=_MROPE),
            vision_config=_qwen_vision(
                hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=32,
                fullatt_block_indexes=[0],
            ),
            **_QWEN_VL_IDS,
        ),
        ProcessorSpec("Qwen2_5_VLProcessor", **_QWEN_VL_PROC),
        generation_stops=_QWEN_STOPS,
    ),
    FamilySpec(
        "qwen3_vl", ("trl", "qwen3_vl.jinja"), QWEN_VL_TOK, "Qwen3VLConfig",
        dict(
            text_config=_text(head_dim=16, rope_parameters={**_MROPE, "mrope_interleaved": True}),
            vision_config=_qwen_vision(
                hidden_size=32, intermediate_size=64, out_hidden_size=64, num_position_embeddings=64,
                deepstack_visual_indexes=[0],
            ),
            **_QWEN_VL_IDS,
        ),
        ProcessorSpec(
            "Qwen3VLProcessor", ("Qwen2VLImageProcessor", _QWEN_IMG), ("Qwen3VLVideoProcessor", _QWEN_IMG)
        ),
        generation_stops=_QWEN_STOPS,
        traits=_TOOLS,
    ),
    FamilySpec(
        "idefics3", ("trl", "idefics3.jinja"),  # Idefics3-8B-Llama3 template: Llama 3 tokens
        TokenizerSpec(
            "byte_level",
            bos="<|begin_of_text|>",
            eos="<end_of_utterance>",
            pad="<|reserved_special_token_0|>",
            add_bos=True,
            special=("<|end_of_text|>", "<|im_start|>", "<fake_token_around_image>", "<image>",
                     "<global-img>", *_ROW_COL),
        ),
        "Idefics3Config",
        dict(
            text_config=dict(model_type="llama", **_text()),
            vision_config=_tower(),
            scale_factor=2,
            image_token_id=Tok("<image>"),
        ),
        ProcessorSpec(
            "Idefics3Processor", ("Idefics3ImageProcessor", _IDEFICS_IMG), kwargs={"image_seq_len": 4}
        ),
    ),
    FamilySpec(
        "smolvlm", ("trl", "smolvlm.jinja"),
        TokenizerSpec(
            "byte_level",
            bos="<|im_start|>",
            eos="<end_of_utterance>",
            pad="<|im_end|>",
            unk="<|endoftext|>",
            special=("<|im_start|>", "<|im_end|>", *_ROW_COL),
            named={
                "fake_image_token": "<fake_token_around_image>",
                "image_token": "<image>",
                "end_of_utterance_token": "<end_of_utterance>",
                "global_image_token": "<global-img>",
                "video_token": "<video>",
            },
        ),
        "SmolVLMConfig",
        dict(
            text_config=dict(model_type="llama", **_text()),
            vision_config=_tower(),
            scale_factor=2,
            image_token_id=Tok("<image>"),
        ),
        ProcessorSpec(
            "SmolVLMProcessor",
            ("SmolVLMImageProcessor", _IDEFICS_IMG),
            ("SmolVLMVideoProcessor", _IDEFICS_IMG),
            kwargs={"image_seq_len": 4},
        ),
    ),
    FamilySpec(
        "gemma3", ("trl", "gemma3.jinja"),
        TokenizerSpec(
            "metaspace",
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            unk="<unk>",
            add_bos=True,
            special=("<start_of_turn>", "<end_of_turn>", "<mask>"),
            named={
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
                "image_token": "<image_soft_token>",
            },
        ),
        "Gemma3Config",
        dict(
            text_config=_text(
                head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                layer_types=["sliding_attention", "full_attention"],
            ),
            vision_config=_tower(),
            mm_tokens_per_image=4,
            boi_token_index=Tok("<start_of_image>"),
            eoi_token_index=Tok("<end_of_image>"),
            image_token_index=Tok("<image_soft_token>"),
        ),
        ProcessorSpec(
            "Gemma3Processor", ("Gemma3ImageProcessor", {"size": _SQUARE32, "do_pan_and_scan": False}),
            kwargs={"image_seq_length": 4},
        ),
        generation_stops=("<eos>", "<end_of_turn>"),  # Gemma 3: [1, 106]
        traits=TemplateTraits(refuses={"alternation": "alternate"}),
    ),
    FamilySpec(
        "llava", ("shared", "llava"), LLAMA2_TOK, "LlavaConfig",
        dict(
            text_config=dict(model_type="llama", **_text()),
            vision_config=_tower(model_type="clip_vision_model", num_hidden_layers=2, projection_dim=32),
            image_token_index=Tok("<image>"),
            vision_feature_layer=-1,
            image_seq_length=16,
        ),
        ProcessorSpec(
            "LlavaProcessor", ("CLIPImageProcessor", {"size": {"shortest_edge": 32}, "crop_size": _SQUARE32}),
            kwargs=_LLAVA_PROC,
        ),
    ),
    FamilySpec(
        "llava_next", ("trl", "llava_next.jinja"),  # llava-v1.6-mistral: pad is <unk>
        replace(LLAMA2_TOK, pad="<unk>"),
        "LlavaNextConfig",
        dict(
            text_config=dict(model_type="mistral", **_text()),
            vision_config=_tower(model_type="clip_vision_model", num_hidden_layers=2, projection_dim=32),
            image_token_index=Tok("<image>"),
            vision_feature_layer=-1,
            image_grid_pinpoints=[[32, 32]],
        ),
        ProcessorSpec(
            "LlavaNextProcessor",
            ("LlavaNextImageProcessor", {"size": {"shortest_edge": 32}, "crop_size": _SQUARE32,
                                         "image_grid_pinpoints": [[32, 32]]}),
            kwargs=_LLAVA_PROC,
        ),
    ),
    FamilySpec(
        "llava_onevision", ("shared", "llava_onevision"),
        TokenizerSpec(
            "byte_level", eos="<|im_end|>", pad="<|endoftext|>", special=_CHATML,
            named={"image_token": "<image>", "video_token": "<video>"},
        ),
        "LlavaOnevisionConfig",
        dict(
            text_config=dict(model_type="qwen2", **_text()),
            vision_config=_tower(model_type="siglip_vision_model"),
            image_token_index=Tok("<image>"),
            video_token_index=Tok("<video>"),
            vision_feature_layer=-1,
            image_grid_pinpoints=[[32, 32]],
        ),
        ProcessorSpec(
            "LlavaOnevisionProcessor",
            ("LlavaOnevisionImageProcessor", {"size": _SQUARE32, "image_grid_pinpoints": [[32, 32]]}),
            ("LlavaOnevisionVideoProcessor", {"size": _SQUARE32}),
            kwargs={"num_image_tokens": 16, "vision_feature_select_strategy": "full"},
        ),
    ),
    FamilySpec(
        "mllama", ("shared", "mllama"),
        replace(LLAMA3_TOK, special=(*LLAMA3_TOK.special, "<|image|>")),
        "MllamaConfig",
        dict(
            text_config=_text(cross_attention_layers=[1]),
            vision_config=_tower(
                attention_heads=2, num_global_layers=1, max_num_tiles=1, vision_output_dim=64,
                intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]],
            ),
            image_token_index=Tok("<|image|>"),
        ),
        ProcessorSpec("MllamaProcessor", ("MllamaImageProcessor", {"size": _SQUARE32, "max_image_tiles": 1})),
        generation_stops=_LLAMA3_STOPS,
        traits=TemplateTraits(system="str"),
    ),
    FamilySpec(
        "mistral3", ("shared", "mistral3"),  # special_tokens.json adds the tool markers
        TokenizerSpec(
            "metaspace", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
            special=("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]",
                     "[IMG_END]"),
        ),
        "Mistral3Config", _MISTRAL3_CONFIG, _pixtral_processor(merge=2),
        # Mistral-Small-3.1's alternation check never fires: it builds the checked list inside a loop scope.
        traits=TemplateTraits(),
    ),
    FamilySpec(
        "internvl", ("shared", "internvl"),
        TokenizerSpec(
            "byte_level", eos="<|im_end|>", pad="<|endoftext|>", special=_CHATML,
            named={
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            },
        ),
        "InternVLConfig",
        dict(
            text_config=dict(model_type="qwen2", **_text()),
            vision_config=_tower(image_size=[32, 32], patch_size=[8, 8]),
            image_token_id=Tok("<IMG_CONTEXT>"),
            image_seq_length=4,
            downsample_ratio=0.5,
        ),
        ProcessorSpec(
            "InternVLProcessor",
            # The processor turns tiling on; cap it so a non-square image is <= 2 tiles + a thumbnail.
            ("GotOcr2ImageProcessor", {"size": _SQUARE32, "max_patches": 2}),
            ("InternVLVideoProcessor", {"size": _SQUARE32}),
            kwargs={"image_seq_length": 4},
        ),
    ),
    FamilySpec(
        "lfm2_vl", ("shared", "lfm2_vl"),
        TokenizerSpec(
            "byte_level",
            bos="<|startoftext|>",
            eos="<|im_end|>",
            pad="<|pad|>",
            add_bos=True,
            special=("<|im_start|>", "<|tool_call_start|>", "<|tool_call_end|>",
                     *(f"<|img_row_{r}_col_{c}|>" for r in range(1, 4) for c in range(1, 4))),
            named={
                "image_token": "<image>",
                "image_start_token": "<|image_start|>",
                "image_end_token": "<|image_end|>",
                "image_thumbnail_token": "<|img_thumbnail|>",
            },
        ),
        "Lfm2VlConfig",
        dict(
            text_config=dict(model_type="lfm2", **_text(layer_types=["conv", "full_attention"])),
            vision_config=_tower(model_type="siglip2_vision_model", num_patches=64),
            image_token_id=Tok("<image>"),
            projector_hidden_size=64,
            downsample_factor=2,
        ),
        ProcessorSpec(
            "Lfm2VlProcessor",
            ("Lfm2VlImageProcessor", {"encoder_patch_size": 8, "downsample_factor": 2, "max_num_patches": 64,
                                      "do_image_splitting": False, "min_image_tokens": 4,
                                      "max_image_tokens": 16}),
        ),
        traits=_TOOLS,
    ),
    FamilySpec(
        "glm4v", ("shared", "glm4v"),  # GLM-4.1V-9B-Thinking's template
        TokenizerSpec(
            "byte_level",
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            special=("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
                     "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                     "<|end_of_video|>"),
            plain=("<think>", "</think>", "<answer>", "</answer>"),
            named={"image_token": "<|image|>", "video_token": "<|video|>"},
        ),
        "Glm4vConfig",
        dict(
            text_config=_text(rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                               "partial_rotary_factor": 1.0}),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8,
                               image_size=32, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64),
            image_token_id=Tok("<|image|>"),
            video_token_id=Tok("<|video|>"),
            image_start_token_id=Tok("<|begin_of_image|>"),
            image_end_token_id=Tok("<|end_of_image|>"),
            video_start_token_id=Tok("<|begin_of_video|>"),
            video_end_token_id=Tok("<|end_of_video|>"),
        ),
        ProcessorSpec(
            "Glm4vProcessor", ("Glm4vImageProcessor", _QWEN_IMG), ("Glm4vVideoProcessor", _QWEN_IMG),
        ),
        generation_stops=("<|endoftext|>", "<|user|>", "<|observation|>"),  # GLM-4.1V: [151329, 151336, 151338]
        traits=TemplateTraits(system="str", assistant="str"),
    ),
    FamilySpec(
        "pixtral", ("shared", "pixtral"),  # mistral-community/pixtral-12b: a llava model, PixtralProcessor
        TokenizerSpec(
            "metaspace", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
            special=("[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"),
        ),
        "LlavaConfig",
        dict(
            text_config=dict(model_type="mistral", **_text()),
            vision_config=_tower(model_type="pixtral", head_dim=16),
            image_token_index=Tok("[IMG]"),
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        ),
        _pixtral_processor(merge=1),
        traits=TemplateTraits(
            system="str", assistant="str", refuses={"alternation": "must alternate"},
            unsupported={"system_multi": "the system prompt is written only before the last user turn: a "
                                         "conversation that ends with an answer renders without it"},
        ),
        architecture="llava",
    ),
    FamilySpec(
        "mistral3_2", ("shared", "llama.cpp/Mistral-Small-3.2-24B-Instruct-2506.jinja"),
        TokenizerSpec(
            "metaspace", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
            special=("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]",
                     "[IMG_END]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]",
                     "[/TOOL_RESULTS]", "[CALL_ID]", "[ARGS]", "[TOOL_CONTENT]"),
        ),
        "Mistral3Config", _MISTRAL3_CONFIG, _pixtral_processor(merge=2),
        traits=TemplateTraits(refuses={"alternation": "must alternate"}),
        architecture="mistral3",
    ),
    FamilySpec(
        "ministral3", ("shared", "llama.cpp/mistralai-Ministral-3-14B-Reasoning-2512.jinja"),
        TokenizerSpec(  # Tekken: byte-level BPE
            "byte_level", bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True,
            special=("[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]",
                     "[IMG_END]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]",
                     "[/TOOL_RESULTS]", "[ARGS]", "[THINK]", "[/THINK]"),
        ),
        "Mistral3Config", _MISTRAL3_CONFIG, _pixtral_processor(merge=2),
        traits=TemplateTraits(tools=True, refuses={"alternation": "must alternate"}),
        architecture="mistral3",
    ),
    FamilySpec(
        "qwen2_5_omni", ("shared", "qwen2_5_omni"),  # Qwen2.5-Omni's thinker: text + image (+ video, audio)
        TokenizerSpec(
            "byte_level", eos="<|im_end|>", pad="<|endoftext|>", special=_CHATML,
            named={"image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "audio_token": "<|AUDIO|>",
                   "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                   "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"},
        ),
        "Qwen2_5OmniThinkerConfig",
        dict(
            text_config=_text(rope_parameters=_MROPE),
            vision_config=_qwen_vision(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=32,
                                       fullatt_block_indexes=[0]),
            audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                              d_model=16, output_dim=64, n_window=8, max_source_positions=64),
            image_token_index=Tok("<|IMAGE|>"),
            video_token_index=Tok("<|VIDEO|>"),
            audio_token_index=Tok("<|AUDIO|>"),
            audio_start_token_id=Tok("<|audio_bos|>"),
            audio_end_token_id=Tok("<|audio_eos|>"),
            vision_start_token_id=Tok("<|vision_bos|>"),
        ),
        ProcessorSpec(
            "Qwen2_5OmniProcessor", **_QWEN_VL_PROC,
            parts={"feature_extractor": ("WhisperFeatureExtractor", {"feature_size": 16})},
        ),
        generation_stops=_QWEN_STOPS,
    ),
    FamilySpec(
        "llama4", ("shared", "llama4"),
        TokenizerSpec(
            "byte_level",
            bos="<|begin_of_text|>",
            eos="<|eot|>",
            pad="<|finetune_right_pad|>",
            add_bos=True,
            special=("<|end_of_text|>", "<|header_start|>", "<|header_end|>", "<|eom|>", "<|python_start|>",
                     "<|python_end|>", "<|image|>", "<|image_start|>", "<|image_end|>", "<|patch|>",
                     "<|tile_x_separator|>", "<|tile_y_separator|>"),
        ),
        "Llama4Config",
        dict(
            text_config=_text(
                head_dim=16, intermediate_size_mlp=128, num_local_experts=2, num_experts_per_tok=1,
                moe_layers=[1], no_rope_layers=[1, 1], layer_types=["chunked_attention", "full_attention"],
                attention_chunk_size=64,
            ),
            # intermediate_size = hidden_size / pixel_shuffle_ratio**2: the pixel-shuffle MLP's input width.
            vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8, vision_output_dim=64, projector_input_dim=64,
                               projector_output_dim=64, pixel_shuffle_ratio=0.5, rope_theta=10000),
            boi_token_index=Tok("<|image_start|>"),
            eoi_token_index=Tok("<|image_end|>"),
            image_token_index=Tok("<|patch|>"),
            dtype="bfloat16",  # Llama4ImageProcessor returns bfloat16 pixel values, as the real checkpoint expects
        ),
        ProcessorSpec(
            "Llama4Processor", ("Llama4ImageProcessor", {"size": _SQUARE32, "max_patches": 1}),
            kwargs={"patch_size": 8, "pixel_shuffle_ratio": 0.5},
        ),
        generation_stops=("<|end_of_text|>", "<|eom|>", "<|eot|>"),  # Llama 4: [200001, 200007, 200008]
        traits=TemplateTraits(system="str"),
    ),
    FamilySpec(
        "gemma4", ("shared", "gemma4"),  # google/gemma-4-E2B-it's template (trl gemma4_v5.jinja)
        GEMMA4_TOK, "Gemma4Config",
        dict(
            text_config=_GEMMA4_TEXT,
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=2, head_dim=16, patch_size=8, pooling_kernel_size=2,
                               position_embedding_size=256),
            audio_config=None,
            boi_token_id=Tok("<|image>"),
            eoi_token_id=Tok("<image|>"),
            image_token_id=Tok("<|image|>"),
            video_token_id=Tok("<|video|>"),
            boa_token_id=Tok("<|audio>"),
            eoa_token_index=Tok("<audio|>"),
            audio_token_id=Tok("<|audio|>"),
        ),
        ProcessorSpec(
            "Gemma4Processor",
            ("Gemma4ImageProcessor", {"patch_size": 8, "pooling_kernel_size": 2, "max_soft_tokens": 70}),
            ("Gemma4VideoProcessor", {"patch_size": 8, "pooling_kernel_size": 2}),
            kwargs={"image_seq_length": 70},
            parts={"feature_extractor": ("Gemma4AudioFeatureExtractor", {})},
        ),
        # trl's gemma4 response schema stops on <turn|>, <|tool_response>, <eos> (generation_config not seen)
        generation_stops=("<eos>", "<turn|>", "<|tool_response>"),
        traits=TemplateTraits(history_rewrites=True, reasoning=True),
    ),
    FamilySpec(
        "qwen3_5", ("shared", "qwen3_5"),  # Qwen3.5-4B+ (think variant; trl qwen3_5_think.jinja)
        QWEN_VL_TOK, "Qwen3_5Config",
        dict(
            text_config=_QWEN3_5_TEXT,
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8,
                               spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                               num_position_embeddings=64),
            **_QWEN_VL_IDS,
        ),
        ProcessorSpec(
            "Qwen3VLProcessor", ("Qwen2VLImageProcessor", _QWEN_IMG), ("Qwen3VLVideoProcessor", _QWEN_IMG)
        ),
        generation_stops=_QWEN_STOPS,
        # Tools: a tool-call turn before the last user query renders without the think block the prompt opens,
        # and so do all prefixes up to the tool reply: no prefix-based oracle holds (tests/test_new_families.py).
        traits=TemplateTraits(history_rewrites=True, reasoning=True),
    ),
    # --- text-only families ----------------------------------------------------------------------
    FamilySpec(
        "llama", ("trl", "llama3_2.jinja"), LLAMA3_TOK, "LlamaConfig", _text(),
        generation_stops=_LLAMA3_STOPS,
        traits=TemplateTraits(tools=True, refuses={"parallel_tools": "single tool-calls"}),
    ),
    FamilySpec(
        "qwen2", ("trl", "qwen2_5.jinja"), QWEN_TOK, "Qwen2Config", _text(),
        generation_stops=_QWEN_STOPS, traits=_TOOLS,
    ),
    FamilySpec(
        "qwen3", ("trl", "qwen3.jinja"), QWEN3_TOK, "Qwen3Config", _text(head_dim=16),
        generation_stops=_QWEN_STOPS, traits=_REASONING,
    ),
    FamilySpec(
        "phi3", ("trl", "phi3.jinja"),
        TokenizerSpec(
            "metaspace", bos="<s>", eos="<|end|>", pad="<|endoftext|>", unk="<unk>",
            special=("</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|user|>"),
        ),
        "Phi3Config",
        _text(),
        generation_stops=("<|endoftext|>", "<|assistant|>", "<|end|>"),  # Phi-3: [32000, 32001, 32007]
    ),
    FamilySpec(
        "glm4_moe", ("trl", "glm4moe.jinja"),
        TokenizerSpec(
            "byte_level",
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            special=("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                     "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>"),
            plain=("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
                   "</tool_response>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"),
        ),
        "Glm4MoeConfig",
        _text(
            head_dim=16, moe_intermediate_size=32, n_routed_experts=4, n_shared_experts=1,
            num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1,
        ),
        generation_stops=("<|endoftext|>", "<|user|>", "<|observation|>"),  # GLM-4.5: [151329, 151336, 151338]
        traits=_REASONING,
    ),
    FamilySpec(
        "llama3_1", ("shared", "llama.cpp/meta-llama-Llama-3.1-8B-Instruct.jinja"),  # = Llama 3.3's, byte for byte
        LLAMA3_TOK, "LlamaConfig", _text(),
        generation_stops=_LLAMA3_STOPS,
        traits=TemplateTraits(tools=True, refuses={"parallel_tools": "single tool-calls"}),
        architecture="llama",
    ),
    FamilySpec(
        "deepseek_r1_distill_qwen", ("shared", "llama.cpp/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"),
        DEEPSEEK_TOK, "Qwen2Config", _text(),
        generation_stops=("<｜end▁of▁sentence｜>",),  # [151643]
        traits=TemplateTraits(history_rewrites=True),
        architecture="qwen2",
    ),
    FamilySpec(
        "deepseek_r1_distill_llama", ("shared", "llama.cpp/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"),
        DEEPSEEK_TOK, "LlamaConfig", _text(),
        generation_stops=("<｜end▁of▁sentence｜>",),  # [128001]
        traits=TemplateTraits(history_rewrites=True),
        architecture="llama",
    ),
    FamilySpec(
        "smollm3", ("shared", "llama.cpp/HuggingFaceTB-SmolLM3-3B.jinja"),
        TokenizerSpec(
            "byte_level", eos="<|im_end|>", pad="<|finetune_right_pad_id|>",
            special=("<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>"), plain=("<think>", "</think>"),
        ),
        "SmolLM3Config", _text(),
        generation_stops=("<|im_end|>",),  # [128012]
    ),
    FamilySpec(
        "gemma4_text", ("shared", "llama.cpp/google-gemma-4-31B-it.jinja"),  # an earlier revision than ../gemma4
        GEMMA4_TOK, "Gemma4TextConfig", _GEMMA4_TEXT,
        generation_stops=("<eos>", "<turn|>", "<|tool_response>"),
        traits=TemplateTraits(history_rewrites=True, reasoning=True),
    ),
    FamilySpec(
        "qwen3_5_text", ("shared", "llama.cpp/Qwen3.5-4B.jinja"),  # = ../qwen3_5's template, byte for byte
        QWEN3_TOK, "Qwen3_5TextConfig", _QWEN3_5_TEXT,
        generation_stops=_QWEN_STOPS,
        traits=TemplateTraits(history_rewrites=True, reasoning=True),
    ),
)  # fmt: skip

# LFM2.5-VL (LiquidAI/LFM2.5-VL-3B's template, trl lfm2_2_5_vl.jinja): LFM2-VL's architecture and tokens.
_LFM2_VL = next(spec for spec in _TABLE if spec.name == "lfm2_vl")
_TABLE += (replace(_LFM2_VL, name="lfm2_5_vl", template=("trl", "lfm2_2_5_vl.jinja"), architecture="lfm2_vl"),)

FAMILIES: dict[str, FamilySpec] = index_specs(_TABLE)
