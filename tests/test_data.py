"""Data formats and bad input: every source kind renders the same rows, every bad row is a one-line error
naming file:row (or is skipped and counted under ``data.on_bad_row: skip``), and odd images are converted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
from PIL import Image

from vlmtrain.config import load_config
from vlmtrain.data.mix import mix_indices
from vlmtrain.data.policies import BuildReport, BuildSettings
from vlmtrain.data.split import build_split, split_sources
from vlmtrain.errors import DataError, Reason
from vlmtrain.mask.pipeline import make_renderer
from vlmtrain.media import MediaLimits
from vlmtrain.media.image import open_image, probe_image, to_rgb
from vlmtrain.render.row import CONTENT, MARKER, MEDIA


def user(text: str, images: int = 1) -> dict:
    return {"role": "user", "content": [*[{"type": "image"}] * images, {"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def good_row(image: str = "images/0000.png") -> dict:
    return {"messages": [user("What shape is this?"), assistant("A red circle.")], "images": [image]}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def qwen(tiny_dir: Callable[..., Path]) -> Path:
    return tiny_dir("qwen2_vl")


@pytest.fixture(scope="module")
def renderer(qwen: Path) -> Any:
    return make_renderer(load_config(None, [f"model.name_or_path={qwen}"]))


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """A data folder with images/0000.png .. 0003.png of different sizes."""
    (tmp_path / "images").mkdir()
    for i, size in enumerate([(32, 32), (48, 32), (32, 48), (40, 40)]):
        Image.new("RGB", size, (200, 30 * i, 30)).save(tmp_path / "images" / f"{i:04d}.png")
    return tmp_path


def make_cfg(qwen: Path, tmp_path: Path, *overrides: str) -> Any:
    return load_config(
        None,
        [
            f"model.name_or_path={qwen}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.max_length=256",
            *overrides,
        ],
    )


def build(renderer: Any, cfg: Any, split: str = "train", **kwargs: Any) -> tuple[datasets.Dataset, BuildReport]:
    return build_split(cfg, renderer, split_sources(cfg, split), **kwargs)


# ------------------------------------------------------------------------------------------------ formats


def test_jsonl_images_column_inline_parts_and_openai_shape(renderer, qwen, images, tmp_path):
    rows = [
        good_row(),
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": "images/0001.png"},
                        {"type": "text", "text": "And this?"},
                    ],
                },
                assistant("A square."),
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "images/0002.png"}},
                        {"type": "text", "text": "This?"},
                    ],
                },
                {"role": "assistant", "content": "A triangle."},
            ]
        },
        {
            "messages": [user("Two?", images=2), assistant("Yes.")],
            "images": ["images/0003.png", "images/0000.png"],
        },
        {"messages": [{"role": "user", "content": "No image here."}, assistant("Fine.")]},
    ]
    cfg = make_cfg(qwen, tmp_path, f"data.train.0.path={write_jsonl(images / 'data.jsonl', rows)}")
    ds, report = build(renderer, cfg)
    assert report.kept == 5 and not report.dropped
    assert ds["where"][1] == f"{images / 'data.jsonl'}:2"
    assert [m["path"] for m in ds["media"][1]] == [str(images / "images" / "0001.png")]
    sizes = [[[m["width"], m["height"]] for m in row] for row in ds["media"]]
    assert sizes[1] == [[48, 32]] and sizes[3] == [[40, 40], [32, 32]]
    assert {m["modality"] for row in ds["media"] for m in row} == {"image"}
    messages = json.loads(ds["messages"][2])  # stored as JSON text, image parts normalised for the template
    assert messages[0]["content"][0] == {"type": "image"} and messages[1]["content"] == "A triangle."
    media = [int(np.sum(np.asarray(k) == MEDIA)) for k in ds["kind"]]
    assert media[4] == 0 and media[3] > media[0] > 0
    assert all(n > 0 for n in ds["num_trained"])


def test_json_parquet_and_datasets_folders_give_the_same_rows(renderer, qwen, images, tmp_path):
    rows = [
        good_row("images/0000.png"),
        {
            "messages": [
                user("Hi", images=0),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": [{"type": "text", "text": "3"}]},
                assistant("Done."),
            ],
            "images": [],
        },
        {
            "messages": [user("Two?", images=2), assistant("Yes.")],
            "images": ["images/0001.png", "images/0002.png"],
        },
    ]
    jsonl = write_jsonl(images / "data.jsonl", rows)
    (images / "data.json").write_text(json.dumps(rows))
    table = datasets.Dataset.from_list(rows)  # Arrow merges the schemas: null keys appear in every message
    table.to_parquet(str(images / "data.parquet"))
    # A datasets folder with renamed columns and images stored as bytes in an Image column.
    embedded = datasets.Dataset.from_dict(
        {
            "conv": [json.dumps(r["messages"]) for r in rows],
            "pics": [[{"bytes": (images / p).read_bytes(), "path": None} for p in r["images"]] for r in rows],
        },
        features=datasets.Features({"conv": datasets.Value("string"), "pics": datasets.List(datasets.Image())}),
    )
    datasets.DatasetDict({"validation": embedded}).save_to_disk(str(images / "saved"))

    def ids(*overrides: str) -> list[list[int]]:
        ds, report = build(renderer, make_cfg(qwen, tmp_path, *overrides))
        assert report.kept == 3, report.lines()
        return ds["input_ids"]

    reference = ids(f"data.train.0.path={jsonl}")
    assert ids(f"data.train.0.path={images / 'data.json'}") == reference
    assert ids(f"data.train.0.path={images / 'data.parquet'}", f"data.train.0.image_dir={images}") == reference
    assert (
        ids(
            f"data.train.0.path={images / 'saved'}",
            "data.train.0.split=validation",
            "data.train.0.messages_column=conv",
            "data.train.0.images_column=pics",
        )
        == reference
    )
    with pytest.raises(DataError, match="no split 'test'"):
        ids(f"data.train.0.path={images / 'saved'}", "data.train.0.split=test")


def test_local_dataset_folder_of_data_files_honours_split(renderer, qwen, images, tmp_path):
    folder = images / "hub_like"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [good_row(str(images / "images/0000.png"))] * 2)
    write_jsonl(folder / "test.jsonl", [good_row(str(images / "images/0001.png"))] * 3)
    cfg = make_cfg(
        qwen,
        tmp_path,
        f"data.train.0.path={folder}",
        "data.train.0.split=test",
        "data.allow_paths_outside_image_dir=true",
    )
    ds, report = build(renderer, cfg)
    assert report.kept == 3 and ds["where"][0] == f"{folder}:row 0"


def test_missing_source_is_a_config_error(renderer, qwen, tmp_path):
    with pytest.raises(DataError, match="cannot be loaded.*never downloads"):
        build(renderer, make_cfg(qwen, tmp_path, "data.train.0.path=nobody/no-such-dataset"))


def test_pretrain_rows_placeholders_by_token_id_and_mask_all(renderer, qwen, images, tmp_path):
    rows = [
        {"text": "A red <image> shape, then text.", "images": ["images/0000.png"]},
        {
            "text": "Pads <|vision_start|><|image_pad|><|vision_end|> written out.",
            "images": ["images/0001.png"],
        },
        {"text": "No images at all."},
    ]
    path = write_jsonl(images / "pre.jsonl", rows)
    base = [
        f"data.train.0.path={path}",
        "data.train.0.format=pretrain",
        "data.train.0.image_placeholder=<image>",
    ]
    ds, report = build(renderer, make_cfg(qwen, tmp_path, *base))
    assert report.kept == 3
    assert "<|vision_start|><|image_pad|><|vision_end|>" in ds["text"][0] and "<image>" not in ds["text"][0]
    for kind, mask in zip(ds["kind"], ds["loss_mask"], strict=True):
        kind, mask = np.asarray(kind), np.asarray(mask)
        assert not mask[kind == MEDIA].any()  # media never trained
        assert mask[kind != MEDIA].all()  # every text token trained (mask.mode defaults to all here)
    assert ds["roles"][0] == ["text"]

    bad = write_jsonl(
        images / "bad.jsonl",
        [
            {"text": "<image> and <image>", "images": ["images/0000.png"]},
            {"text": "<images> is not a placeholder token", "images": []},
        ],
    )
    with pytest.raises(DataError, match=r"bad.jsonl:1: 2 image placeholder\(s\) '<image>' in the text but 1"):
        build(renderer, make_cfg(qwen, tmp_path, f"data.train.0.path={bad}", *base[1:]))
    # Family token as placeholder: counted by id, so '<|image_pad|>' written twice with one image fails.
    twice = write_jsonl(images / "twice.jsonl", [{"text": "<|image_pad|><|image_pad|>", "images": ["images/0000.png"]}])
    with pytest.raises(DataError, match="2 image placeholder"):
        build(renderer, make_cfg(qwen, tmp_path, f"data.train.0.path={twice}", "data.train.0.format=pretrain"))


def test_mixing_weights_max_rows_and_seeded_order(renderer, qwen, images, tmp_path):
    a = write_jsonl(images / "a.jsonl", [good_row()] * 6)
    b = write_jsonl(images / "b.jsonl", [good_row("images/0001.png")] * 10)
    mix = [
        f"data.train.0.path={a}",
        "data.train.0.weight=2",
        f"data.train.1.path={b}",
        "data.train.1.weight=0.5",
        "data.train.1.max_rows=8",
    ]
    ds, report = build(renderer, make_cfg(qwen, tmp_path, *mix))
    sources = ds["source"]
    assert sources.count(0) == 12 and sources.count(1) == 4 and report.kept == 16
    again, _ = build(renderer, make_cfg(qwen, tmp_path, *mix))
    assert again["where"] == ds["where"]  # reproducible
    other, _ = build(renderer, make_cfg(qwen, tmp_path, *mix, "data.seed=1"))
    assert other["where"] != ds["where"]
    assert all(int(w.rsplit(":", 1)[1]) <= 8 for w in ds["where"] if "b.jsonl" in w)
    assert list(mix_indices([0, 0, 0], [1.0], 0)) == [0, 1, 2]  # one source keeps storage order


# ---------------------------------------------------------------------------------------------- bad input


def _truncated(folder: Path) -> str:
    data = (folder / "images" / "0000.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return "cut.png"


def _zero_byte(folder: Path) -> str:
    (folder / "empty.png").write_bytes(b"")
    return "empty.png"


def _not_an_image(folder: Path) -> str:
    (folder / "text.png").write_text("hello")
    return "text.png"


def _image_row(name: str) -> dict:
    return good_row(name)


# (case id, row or row factory, reason counted under skip, text the one-line error must contain)
BAD_ROWS: list[tuple[str, Any, str, str]] = [
    ("missing image", good_row("images/nope.png"), "missing image", "image file not found"),
    ("truncated image", lambda d: _image_row(_truncated(d)), "unreadable image", "cannot be decoded"),
    ("zero-byte image", lambda d: _image_row(_zero_byte(d)), "unreadable image", "empty (0-byte)"),
    ("unreadable image", lambda d: _image_row(_not_an_image(d)), "unreadable image", "cannot be decoded"),
    (
        "too many parts",
        {"messages": [user("x", images=2), assistant("y")], "images": ["images/0000.png"]},
        "image count mismatch",
        "image part 2 of 2 has no image left in 'images'",
    ),
    ("no images left", {"messages": [user("x"), assistant("y")]}, "image count mismatch", "no image left"),
    (
        "images left over",
        {"messages": [user("x"), assistant("y")], "images": ["images/0000.png", "images/0001.png"]},
        "image count mismatch",
        "lists 2 image(s) but the messages have 1",
    ),
    ("no assistant turn", {"messages": [user("x", images=0)]}, "no assistant turn", "no assistant turn"),
    (
        "unknown role",
        {"messages": [{"role": "human", "content": "x"}, assistant("y")]},
        "unknown role",
        "unknown role 'human'",
    ),
    (
        "non-string content",
        {"messages": [{"role": "user", "content": 42}, assistant("y")]},
        "non-string text",
        "content is a int, not a string",
    ),
    (
        "non-string text part",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}, assistant("y")]},
        "non-string text",
        "text part is a dict",
    ),
    ("malformed JSON", '{"messages": [}', "malformed JSON", "malformed JSON"),
    ("path escapes with ..", good_row("../outside.png"), "image path outside image_dir", "escapes image_dir"),
    ("absolute path", good_row("/etc/hostname"), "image path outside image_dir", "escapes image_dir"),
    ("remote URL", good_row("https://example.com/cat.png"), "remote image URL", "never fetches"),
    (
        "data URI",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
                },
                assistant("y"),
            ]
        },
        "remote image URL",
        "remote URL",
    ),
]


@pytest.mark.parametrize(("case", "bad", "reason", "text"), BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_bad_row_is_one_line_error_or_counted_skip(renderer, qwen, images, tmp_path, case, bad, reason, text):
    row = bad(images) if callable(bad) else bad
    path = write_jsonl(images / "data.jsonl", [good_row(), row, good_row("images/0001.png")])
    with pytest.raises(DataError) as info:
        build(renderer, make_cfg(qwen, tmp_path, f"data.train.0.path={path}"))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:2: ") and text in message, message
    ds, report = build(renderer, make_cfg(qwen, tmp_path, f"data.train.0.path={path}", "data.on_bad_row=skip"))
    assert report.kept == 2 and dict(report.dropped) == {reason: 1}
    assert report.examples[reason][0].startswith(f"{path}:2: ")
    assert any(f"rows dropped ({reason}): 1" in line for line in report.lines())


def test_image_over_pixel_cap_keeps_pillows_guard(renderer, qwen, images, tmp_path):
    pillow_default = Image.MAX_IMAGE_PIXELS
    path = write_jsonl(images / "data.jsonl", [good_row(), good_row("images/0003.png")])  # 40x40 = 1600 px
    with pytest.raises(DataError, match=r"data.jsonl:2: image .* 40x40 = 1600 pixels, over data.max_image_pixels=1500"):
        build(renderer, make_cfg(qwen, tmp_path, f"data.train.0.path={path}", "data.max_image_pixels=1500"))
    _, report = build(
        renderer,
        make_cfg(qwen, tmp_path, f"data.train.0.path={path}", "data.max_image_pixels=1500", "data.on_bad_row=skip"),
    )
    assert dict(report.dropped) == {"image over pixel limit": 1}
    # The cap is vlmtrain's own check: Pillow's process-wide guard is left exactly as it was.
    assert pillow_default == Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="1600 pixels, over data.max_image_pixels=100"):
        probe_image(str(images / "images/0003.png"), "x", 100)
    assert pillow_default == Image.MAX_IMAGE_PIXELS


def test_paths_outside_image_dir_allowed_when_configured(renderer, qwen, images, tmp_path):
    outside = images.parent / f"{images.name}-elsewhere.png"
    Image.new("RGB", (32, 32)).save(outside)
    path = write_jsonl(images / "data.jsonl", [good_row(str(outside)), good_row(f"../{outside.name}")])
    cfg = make_cfg(qwen, tmp_path, f"data.train.0.path={path}", "data.allow_paths_outside_image_dir=true")
    ds, report = build(renderer, cfg)
    assert report.kept == 2 and [[m["path"] for m in row] for row in ds["media"]] == [[str(outside)]] * 2


def test_empty_file_is_an_error_even_when_skipping(renderer, qwen, images, tmp_path):
    (images / "empty.jsonl").write_text("\n")
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match=r"empty.jsonl: the source holds no rows"):
            build(
                renderer,
                make_cfg(qwen, tmp_path, f"data.train.0.path={images / 'empty.jsonl'}", f"data.on_bad_row={policy}"),
            )


def test_too_long_rows_are_dropped_or_named_never_truncated(renderer, qwen, images, tmp_path):
    long = {"messages": [user("word " * 200), assistant("A red circle.")], "images": ["images/0000.png"]}
    path = write_jsonl(images / "data.jsonl", [good_row(), long])
    ds, report = build(renderer, make_cfg(qwen, tmp_path, f"data.train.0.path={path}", "data.max_length=128"))
    assert report.kept == 1 and dict(report.dropped) == {"longer than max_length=128": 1}
    assert max(ds["length"]) <= 128
    with pytest.raises(DataError, match=r"data.jsonl:2: \d+ tokens exceed data.max_length=128; rows are never "):
        build(
            renderer,
            make_cfg(qwen, tmp_path, f"data.train.0.path={path}", "data.max_length=128", "data.on_too_long=error"),
        )


def test_no_assistant_turn_is_fine_under_mask_mode_all(qwen, images, tmp_path):
    path = write_jsonl(images / "data.jsonl", [{"messages": [user("Describe.")], "images": ["images/0000.png"]}])
    cfg = make_cfg(qwen, tmp_path, f"data.train.0.path={path}", "mask.mode=all")
    _, report = build(make_renderer(cfg), cfg)
    assert report.kept == 1


# ------------------------------------------------------------------------------------------------- images


def _odd_images(folder: Path) -> dict[str, Path]:
    paths = {}
    frames = [Image.new("P", (32, 32), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    paths["animated"] = folder / "anim.gif"
    frames[0].save(paths["animated"], save_all=True, append_images=frames[1:], duration=50, loop=0)
    paths["cmyk"] = folder / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(paths["cmyk"])  # red
    paths["palette"] = folder / "palette.png"
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(paths["palette"], transparency=0)
    paths["16bit"] = folder / "gray16.png"
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(paths["16bit"])
    paths["rgba"] = folder / "rgba.png"
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(paths["rgba"])  # fully transparent black
    return paths


def test_odd_image_modes_are_converted_not_rejected(renderer, qwen, images, tmp_path):
    paths = _odd_images(images)
    expected = {
        "animated": (255, 0, 0),
        "cmyk": (255, 0, 0),
        "palette": (0, 0, 255),
        "16bit": (128, 128, 128),
        "rgba": (255, 255, 255),
    }
    for name, path in paths.items():
        image = open_image(str(path))
        assert image.mode == "RGB" and image.size == (32, 32)
        pixel = np.asarray(image)[16, 16]
        assert np.abs(pixel.astype(int) - expected[name]).max() <= 3, (name, pixel)
    rows = [good_row(p.name) for p in paths.values()]
    _, report = build(renderer, make_cfg(qwen, tmp_path, f"data.train.0.path={write_jsonl(images / 'd.jsonl', rows)}"))
    assert report.kept == len(paths) and not report.dropped


def test_to_rgb_respects_exif_orientation():
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90
    image.info["exif"] = exif.tobytes()
    image.getexif()[0x0112] = 6
    assert to_rgb(image).size == (20, 40)


def test_settings_policies():
    settings = BuildSettings(max_length=8, limits=MediaLimits(None), on_bad_row="skip", on_too_long="error")
    assert not settings.is_fatal(Reason.MISSING_MEDIA) and settings.is_fatal(Reason.TOO_LONG)
    assert not BuildSettings(8, MediaLimits(None), on_empty="drop").is_fatal(Reason.EMPTY_MASK)
    assert settings.is_fatal(Reason.CONFIG)  # a whole source's problem is never skipped


# --------------------------------------------------------------------------------------- other families


def test_string_content_and_pretrain_on_an_idefics3_template(tiny_dir, images, tmp_path):
    """IDEFICS3's template renders nothing for string content: vlmtrain hands it content parts."""
    model = tiny_dir("idefics3")
    conv = write_jsonl(
        images / "conv.jsonl",
        [{"messages": [user("Hi"), {"role": "assistant", "content": "A red square."}], "images": ["images/0000.png"]}],
    )
    cfg = make_cfg(model, tmp_path, f"data.train.0.path={conv}")
    ds, _ = build(make_renderer(cfg), cfg)
    assert "Assistant: A red square.<end_of_utterance>" in ds["text"][0]
    pre = write_jsonl(images / "pre.jsonl", [{"text": "Look <image> here.", "images": ["images/0000.png"]}])
    cfg = make_cfg(model, tmp_path, f"data.train.0.path={pre}", "data.train.0.format=pretrain")
    ds, _ = build(make_renderer(cfg), cfg)  # the family's own token is the default placeholder
    kind = np.asarray(ds["kind"][0])
    mask = np.asarray(ds["loss_mask"][0])
    assert (kind == MEDIA).sum() > 1 and not mask[kind == MEDIA].any()
    assert mask[kind == CONTENT].all() and kind[0] == MARKER  # BOS: scaffolding, nothing predicts it


def test_text_only_model_refuses_images_and_trains_pretrain_text(tiny_dir, images, tmp_path):
    model = tiny_dir("qwen2")
    path = write_jsonl(images / "data.jsonl", [good_row()])
    cfg = make_cfg(model, tmp_path, f"data.train.0.path={path}")
    with pytest.raises(DataError, match=r"data.jsonl:1: the row has 1 image\(s\) but the model is text-only"):
        build(make_renderer(cfg), cfg)
    pre = write_jsonl(images / "pre.jsonl", [{"text": "Plain text for continued pre-training."}])
    cfg = make_cfg(model, tmp_path, f"data.train.0.path={pre}", "data.train.0.format=pretrain")
    ds, report = build(make_renderer(cfg), cfg)
    assert report.kept == 1 and ds["num_trained"][0] == ds["length"][0]
