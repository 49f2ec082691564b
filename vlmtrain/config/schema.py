"""Typed schema of a vlmtrain run, usable as an OmegaConf structured config.

Dataclasses and the constants that define what a value may be: loading, merging and validation live in
the sibling modules (``load.py`` orchestrates them). ``MISSING`` (``???``) marks a value the user must supply.
Enum-like string fields declare their allowed values here (``one_of``); the rest of vlmtrain imports those
tuples from here (``mask.rules`` reads ``MODES``/``TRAIN_ON_EOS``), so each list of values has one owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
ADAPTER_TYPES = ("none", "lora", "qlora")
ON_TOO_LONG = ("drop", "error")
ON_BAD_ROW = ("error", "skip")
# data.<split>[i].format: auto = detected on the source's first row (vlmtrain.formats); conversations = messages.
DATA_FORMATS = ("auto", "messages", "conversations", "sharegpt", "llava", "cauldron", "pretrain")
MODES = ("sampled", "all", "roles")  # mask.mode
TRAIN_ON_EOS = ("turn", "all", "last", "none")  # mask.train_on_eos
ON_EMPTY = ("error", "drop")
IMAGE_TRANSFORMS = ("none", "tiling")  # data.image_transform.type (vlmtrain.media.transforms)
TILE_BUCKET_PRESETS = ("ocr_pages",)  # data.image_transform.buckets as a preset name

# ``training.*`` keys vlmtrain sets itself, with the value it hands to trl.SFTConfig: rows are pre-rendered,
# masked and length-checked by vlmtrain (never truncated, never packed by TRL), and the collator needs every
# column. A user value that differs is a ConfigError at load time; train/trainer.py forces these values.
MANAGED_TRAINING_KEYS: dict[str, Any] = {
    "remove_unused_columns": False,
    "dataset_kwargs": {"skip_prepare_dataset": True},
    "max_length": None,
    "packing": False,
}


def one_of(choices: tuple[str, ...], default: str | None = None) -> Any:
    """A string field that takes one of ``choices`` (default: the first); the loader checks the metadata."""
    return field(default=choices[0] if default is None else default, metadata={"choices": choices})


def _default_training() -> dict[str, Any]:
    """Defaults handed to ``trl.SFTConfig``; the rest of SFTConfig keeps TRL's own defaults."""
    return {
        "output_dir": "outputs/run",
        "learning_rate": 2e-4,
        "num_train_epochs": 1.0,
        "max_steps": -1,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_steps": 500,
        "save_strategy": "steps",
        "report_to": "none",
        "seed": 0,
        "bf16": False,
    }


@dataclass
class FreezeConfig:
    """Which parts of the model keep their weights fixed."""

    vision_tower: bool = False
    projector: bool = False
    language_model: bool = False


@dataclass
class ModelConfig:
    """The base model and how it is loaded."""

    name_or_path: str = MISSING  # local directory or hub id
    family: str = "auto"  # auto = from config.json model_type
    dtype: str = one_of(DTYPES)
    attn_implementation: str = one_of(ATTN_IMPLEMENTATIONS)
    trust_remote_code: bool = False
    freeze: FreezeConfig = field(default_factory=FreezeConfig)


@dataclass
class AdapterConfig:
    """Parameter-efficient adapter; ``none`` trains the (unfrozen) weights directly."""

    type: str = one_of(ADAPTER_TYPES)
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "auto"  # "auto" or a list of module names
    merge_on_save: bool = False


@dataclass
class DataSource:
    """One dataset: a local file/dir or a hub id, and how its columns map to samples."""

    path: str = MISSING
    image_dir: str | None = None
    format: str = one_of(DATA_FORMATS)
    split: str = "train"
    name: str | None = None
    messages_column: str = "messages"
    images_column: str = "images"
    text_column: str = "text"
    image_placeholder: str | None = None  # pretrain: the family's image token; sharegpt/llava: <image>
    videos_column: str = "videos"
    video_placeholder: str | None = None  # sharegpt: <video>
    system_column: str = "system"  # sharegpt: a system prompt column
    role_map: dict[str, str] | None = None  # sharegpt/llava speaker -> role (human: user, gpt: assistant, ...)
    weight: float = 1.0
    max_rows: int | None = None


@dataclass
class VideoConfig:
    """``data.video``: frame sampling (transformers' names; num_frames wins over fps), the decoded frame size and
    the length cap (vlmtrain.media.video.VideoSampling). A sampling key left null takes the model's video
    processor's own setting, and Qwen's published one (2 fps, 4-768 frames) where the processor declares none."""

    fps: float | None = None
    num_frames: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    max_pixels: int | None = None  # frames above this are downscaled when decoded (aspect kept)
    max_seconds: float | None = None  # a longer video is an error naming the row (or a counted skip)


@dataclass
class ImageTransformConfig:
    """``data.image_transform``: one image becomes N before rendering (docs/tiling.md). ``none`` = unchanged."""

    type: str = one_of(IMAGE_TRANSFORMS)
    buckets: Any = "ocr_pages"  # a preset (TILE_BUCKET_PRESETS) or a list of {min_aspect, cols, rows}
    overlap: float = 0.0  # fraction of a tile its neighbour shares, 0 <= overlap < 0.5
    tile_size: int = 448  # every tile (and the overview) fitted into tile_size x tile_size, padded white
    native_resolution: bool = False  # tiles keep the crop's pixels, capped by max_tile_pixels
    max_tile_pixels: int | None = None  # native cap; null = the processor's max pixels
    overview: bool = True  # the whole image, downscaled, before the tiles
    labels: bool = True  # <global_img> / <row{r}_col{c}> text before each image (input only, never trained)
    min_area: int | None = None  # images with fewer pixels stay whole; null = tile_size ** 2
    hash_source: bool = False  # key the tile cache by the source's sha256 instead of path + size + mtime
    cache_dir: str | None = None  # default: <data.cache_dir>/tiles, or $VLMTRAIN_HOME/tiles


@dataclass
class DataConfig:
    """Training/eval sources and the row-level policies (rows are never truncated)."""

    train: list[DataSource] = field(default_factory=list)
    eval: list[DataSource] = field(default_factory=list)
    max_length: int = 2048
    packing: bool = False  # pack whole rows into sequences of <= max_length (a batching plan: not in the cache key)
    streaming: bool = False  # train split read from shards on the fly (vlmtrain/data/stream.py); needs max_steps
    shuffle_buffer: int = 1000  # streaming: raw rows per shuffle buffer (0 = storage order, shards unpermuted)
    pack_buffer: int = 256  # streaming + packing: rendered rows per window packed together (best-fit decreasing)
    on_too_long: str = one_of(ON_TOO_LONG)
    on_bad_row: str = one_of(ON_BAD_ROW)
    cache_dir: str | None = None  # default: $VLMTRAIN_HOME/data (~/.cache/vlmtrain/data), see vlmtrain.paths
    hash_data_files: bool = False  # fingerprint data files by content (sha256) instead of path/size/mtime
    template_date: str = "2024-07-26"  # the date chat templates see, pinned for reproducibility
    allow_paths_outside_image_dir: bool = False
    max_image_pixels: int | None = 178956970  # Pillow's decompression-bomb guard (video frames too)
    image_transform: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    seed: int = 0


@dataclass
class RoleBoundary:
    """Explicit span markers for a role, for templates whose spans cannot be derived."""

    role: str = MISSING
    start: str = MISSING
    end: str | None = MISSING  # a string, "eos_token", or null = the span runs to the end
    include_start: bool = False
    include_end: bool = True


@dataclass
class MaskConfig:
    """Which tokens the loss trains on."""

    mode: str = one_of(MODES)
    roles: list[str] = field(default_factory=lambda: ["assistant"])
    train_on_inputs: bool | None = None  # axolotl knob: true == mode all
    roles_to_train: list[str] | None = None  # axolotl knob: mode roles with these roles
    train_on_eos: str = one_of(TRAIN_ON_EOS)
    role_boundaries: list[RoleBoundary] = field(default_factory=list)
    on_empty: str = one_of(ON_EMPTY)


@dataclass
class LaunchConfig:
    """torchrun-style multi-process launch settings."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_backend: str = "c10d"


@dataclass
class EvalConfig:
    """What each evaluation shows besides the loss: answers the model generates for fixed eval prompts."""

    samples: int = 0  # generate for the first N data.eval rows at every evaluation (0 = off)
    max_new_tokens: int = 64


@dataclass
class VlmConfig:
    """A whole run. ``training`` is passed unchanged to ``trl.SFTConfig``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    training: dict[str, Any] = field(default_factory=_default_training)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
