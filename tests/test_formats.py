"""Foreign data formats train as they are, with no ``format:`` key: LLaMA-Factory (its demo shape), ShareGPT,
LLaVA and the_cauldron rows render to exactly the tokens and masks of the same conversation written in the HF
shape — every answer and its stop token trained, every image expanded and never trained — and every row that
does not fit (placeholder/media counts, unused media columns, video, a misfit row) is a one-line error."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.config import load_config
from vlmtrain.config.schema import DATA_FORMATS
from vlmtrain.data.split import build_split, split_sources
from vlmtrain.errors import DataError
from vlmtrain.formats import ALIASES, BY_NAME
from vlmtrain.mask.pipeline import make_renderer
from vlmtrain.render.row import MEDIA

STOP = "<|im_end|>"
TOOLS = [{"name": "area", "description": "Area of a shape", "parameters": {"type": "object", "properties": {}}}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def parts(text: str, images: int = 0, after: str = "") -> list[dict]:
    out: list[dict] = [{"type": "text", "text": text}] if text else []
    out += [{"type": "image"}] * images
    return out + ([{"type": "text", "text": after}] if after else [])


@pytest.fixture(scope="module")
def qwen(tiny_dir: Callable[..., Path]) -> Path:
    return tiny_dir("qwen2_vl")


@pytest.fixture(scope="module")
def renderer(qwen: Path) -> Any:
    return make_renderer(load_config(None, [f"model.name_or_path={qwen}"]))


@pytest.fixture(scope="module")
def tokenizer(qwen: Path) -> Any:
    return AutoTokenizer.from_pretrained(qwen)


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for i, size in enumerate([(32, 32), (48, 32), (32, 48)]):
        Image.new("RGB", size, (200, 60 * i, 30)).save(tmp_path / "images" / f"{i}.png")
    return tmp_path


def build(renderer: Any, qwen: Path, tmp_path: Path, path: Path, *overrides: str) -> datasets.Dataset:
    cfg = load_config(None, [f"model.name_or_path={qwen}", f"data.cache_dir={tmp_path / 'cache'}",
                             "data.max_length=512", f"data.train.0.path={path}", *overrides])
    if not any(o.startswith("data.train.0.format=") for o in overrides):
        assert cfg.data.train[0].format == "auto"  # the default: detected from the first row
    ds, report = build_split(cfg, renderer, split_sources(cfg, "train"))
    assert not report.dropped, report.lines()
    return ds


def check_trained(ds: datasets.Dataset, tokenizer: Any, answers: list[list[str]]) -> None:
    """Exactly every answer plus its stop token is trained; media tokens exist and are never trained."""
    for ids, mask, kind, row_answers in zip(ds["input_ids"], ds["loss_mask"], ds["kind"], answers, strict=True):
        ids, mask, kind = np.asarray(ids), np.asarray(mask, bool), np.asarray(kind)
        assert tokenizer.decode(ids[mask]) == "".join(a + STOP for a in row_answers)
        assert not mask[kind == MEDIA].any()


def assert_same_rows(ds: datasets.Dataset, reference: datasets.Dataset) -> None:
    assert ds["input_ids"] == reference["input_ids"] and ds["loss_mask"] == reference["loss_mask"]
    assert [[(m["width"], m["height"]) for m in row] for row in ds["media"]] == \
        [[(m["width"], m["height"]) for m in row] for row in reference["media"]]


# LLaMA-Factory's demo shape (data/mllm_demo.json): string content, <image> in the text, an images column.
LF_ROWS = [
    {"messages": [{"role": "user", "content": "<image>Who are they?"},
                  {"role": "assistant", "content": "Two shapes."},
                  {"role": "user", "content": "And in <image> now?"},
                  {"role": "assistant", "content": "A square."}],
     "images": ["images/0.png", "images/1.png"]},
    {"messages": [{"role": "user", "content": "Compare <image><image>"}, {"role": "assistant", "content": "Equal."}],
     "images": ["images/2.png", "images/0.png"]},
    {"messages": [{"role": "user", "content": "No image."}, {"role": "assistant", "content": "Fine."}]},
]
LF_HF = [
    {"messages": [{"role": "user", "content": parts("", 1, "Who are they?")},
                  {"role": "assistant", "content": "Two shapes."},
                  {"role": "user", "content": parts("And in ", 1, " now?")},
                  {"role": "assistant", "content": "A square."}],
     "images": ["images/0.png", "images/1.png"]},
    {"messages": [{"role": "user", "content": parts("Compare ", 2)}, {"role": "assistant", "content": "Equal."}],
     "images": ["images/2.png", "images/0.png"]},
    {"messages": [{"role": "user", "content": "No image."}, {"role": "assistant", "content": "Fine."}]},
]
LF_ANSWERS = [["Two shapes.", "A square."], ["Equal."], ["Fine."]]


def test_format_values_are_the_registered_readers():
    assert set(DATA_FORMATS) == {"auto", *BY_NAME, *ALIASES}


def test_llama_factory_demo_shape_trains_like_hf_messages(renderer, qwen, tokenizer, images, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="vlmtrain"):
        ds = build(renderer, qwen, tmp_path, write_jsonl(images / "lf.jsonl", LF_ROWS))
    lines = [r.getMessage() for r in caplog.records if "format sharegpt (detected)" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"source 0 ({images / 'lf.jsonl'}): format sharegpt")
    reference = build(renderer, qwen, tmp_path, write_jsonl(images / "hf.jsonl", LF_HF))
    assert_same_rows(ds, reference)
    assert [len(m) for m in ds["media"]] == [2, 2, 0]
    check_trained(ds, tokenizer, LF_ANSWERS)
    # format: conversations (today's name for the HF shape) still reads HF rows.
    forced = build(renderer, qwen, tmp_path, images / "hf.jsonl", "data.train.0.format=conversations")
    assert forced["input_ids"] == reference["input_ids"]


def test_sharegpt_conversations_system_tools_and_function_calls(renderer, qwen, tokenizer, images, tmp_path):
    call = {"name": "area", "arguments": {"shape": "circle"}}
    rows = [{"conversations": [{"from": "human", "value": "<image>\nHow big?"},
                               {"from": "function_call", "value": json.dumps(call)},
                               {"from": "observation", "value": "12"},
                               {"from": "gpt", "value": "Twelve."}],
             "system": "Be brief.", "tools": json.dumps(TOOLS), "images": ["images/1.png"]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello."}]}]
    hf = [{"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": parts("", 1, "\nHow big?")},
                        {"role": "assistant", "content": "",
                         "tool_calls": [{"type": "function", "function": call}]},
                        {"role": "tool", "content": "12"},
                        {"role": "assistant", "content": "Twelve."}],
           "tools": [{"type": "function", "function": t} for t in TOOLS], "images": ["images/1.png"]},
          {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    path = write_jsonl(images / "sharegpt.jsonl", rows)
    with pytest.raises(DataError, match=r"sharegpt.jsonl:2: turn 1 is from 'bot'.*role_map"):
        build(renderer, qwen, tmp_path, path)
    ds = build(renderer, qwen, tmp_path, path, "data.train.0.role_map={bot: assistant}")
    reference = build(renderer, qwen, tmp_path, write_jsonl(images / "hf.jsonl", hf))
    assert_same_rows(ds, reference)
    assert "Be brief." in ds["text"][0] and "<|im_start|>tool\n12" in ds["text"][0]
    # Qwen2-VL's template writes no tool calls: that turn is its stop token alone, trained like any answer.
    check_trained(ds, tokenizer, [["", "Twelve."], ["Hello."]])


LLAVA_ROWS = [{"id": "1", "image": "images/0.png",
               "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."},
                                 {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
              {"id": "2", "image": "images/2.png",
               "conversations": [{"from": "human", "value": "Shape?\n<image>"}, {"from": "gpt", "value": "Tall."}]}]
LLAVA_HF = [{"messages": [{"role": "user", "content": parts("", 1, "\nWhat colour?")},
                          {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Sure?"},
                          {"role": "assistant", "content": "Yes."}], "images": ["images/0.png"]},
            {"messages": [{"role": "user", "content": parts("Shape?\n", 1)}, {"role": "assistant", "content": "Tall."}],
             "images": ["images/2.png"]}]


def test_llava_format_paths_and_image_bytes_in_parquet(renderer, qwen, tokenizer, images, tmp_path):
    reference = build(renderer, qwen, tmp_path, write_jsonl(images / "hf.jsonl", LLAVA_HF))
    ds = build(renderer, qwen, tmp_path, write_jsonl(images / "llava.jsonl", LLAVA_ROWS))
    assert_same_rows(ds, reference)
    check_trained(ds, tokenizer, [["Red.", "Yes."], ["Tall."]])
    embedded = datasets.Dataset.from_dict(
        {"image": [{"bytes": (images / r["image"]).read_bytes(), "path": None} for r in LLAVA_ROWS],
         "conversations": [r["conversations"] for r in LLAVA_ROWS]},
        features=datasets.Features({"image": datasets.Image(), "conversations": datasets.List(
            {"from": datasets.Value("string"), "value": datasets.Value("string")})}))
    embedded.to_parquet(str(tmp_path / "llava.parquet"))
    from_bytes = build(renderer, qwen, tmp_path, tmp_path / "llava.parquet")
    assert_same_rows(from_bytes, reference)
    assert all(str(tmp_path / "cache" / "media") in m["path"] for row in from_bytes["media"] for m in row)


CAULDRON_TEXTS = [[{"user": "What is shown?", "assistant": "Shapes.", "source": "shapes"},
                   {"user": "How many?", "assistant": "Two.", "source": "shapes"}],
                  [{"user": "Colour?", "assistant": "Red.", "source": "shapes"}]]
CAULDRON_IMAGES = [["images/0.png", "images/1.png"], ["images/2.png"]]


def test_cauldron_shape_as_datasets_image_folder_and_parquet_paths(renderer, qwen, tokenizer, images, tmp_path):
    hf = [{"messages": [{"role": "user", "content": parts("", 2, "What is shown?")},
                        {"role": "assistant", "content": "Shapes."}, {"role": "user", "content": "How many?"},
                        {"role": "assistant", "content": "Two."}], "images": CAULDRON_IMAGES[0]},
          {"messages": [{"role": "user", "content": parts("", 1, "Colour?")}, {"role": "assistant", "content": "Red."}],
           "images": CAULDRON_IMAGES[1]}]
    reference = build(renderer, qwen, tmp_path, write_jsonl(images / "hf.jsonl", hf))
    turn = {"user": datasets.Value("string"), "assistant": datasets.Value("string"), "source": datasets.Value("string")}
    folder = datasets.Dataset.from_dict(
        {"images": [[{"bytes": (images / p).read_bytes(), "path": None} for p in row] for row in CAULDRON_IMAGES],
         "texts": CAULDRON_TEXTS},
        features=datasets.Features({"images": datasets.List(datasets.Image()), "texts": datasets.List(turn)}))
    folder.save_to_disk(str(tmp_path / "cauldron"))
    ds = build(renderer, qwen, tmp_path, tmp_path / "cauldron")
    assert_same_rows(ds, reference)
    check_trained(ds, tokenizer, [["Shapes.", "Two."], ["Red."]])
    datasets.Dataset.from_dict({"images": CAULDRON_IMAGES, "texts": CAULDRON_TEXTS}).to_parquet(
        str(images / "cauldron.parquet"))
    assert_same_rows(build(renderer, qwen, tmp_path, images / "cauldron.parquet"), reference)


def test_inspect_mask_json_on_a_llama_factory_file(qwen, images, tmp_path):
    cfg = {"model": {"name_or_path": str(qwen)},
           "data": {"train": [{"path": str(write_jsonl(images / "lf.jsonl", LF_ROWS))}],
                    "cache_dir": str(tmp_path / "cache")}}
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    result = CliRunner().invoke(app, ["inspect-mask", str(tmp_path / "run.yaml"), "--rows", "all", "--format",
                                      "json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [len(r["media"]) for r in rows] == [2, 2, 0]
    for row, answers in zip(rows, LF_ANSWERS, strict=True):
        trained = "".join(t for t, m in zip(row["tokens"], row["loss_mask"], strict=True) if m)
        assert trained == "".join(a + STOP for a in answers)
        media = [m for m, k in zip(row["loss_mask"], row["kind"], strict=True) if k == "media"]
        assert len(media) >= 2 * len(row["media"]) and not any(media)


@pytest.mark.slow
def test_fit_a_few_steps_on_a_llama_factory_file(tiny_dir, images, tmp_path):
    from vlmtrain.train.fit import fit

    cfg = load_config(None, [
        f"model.name_or_path={tiny_dir('qwen2_vl', with_model=True)}",
        f"data.train.0.path={write_jsonl(images / 'lf.jsonl', LF_ROWS * 2)}", f"data.cache_dir={tmp_path / 'c'}",
        f"training.output_dir={tmp_path / 'run'}", "training.max_steps=3", "training.per_device_train_batch_size=2",
        "training.save_strategy='no'", "training.learning_rate=3e-3"])
    result = fit(cfg)
    assert result.steps == 3 and np.isfinite(result.final_loss) and result.final_loss < result.first_loss


# ------------------------------------------------------------------------------------------------ errors

GOOD = LF_ROWS[0]


def user_row(text: str, images: list[str] | None = None, **extra: Any) -> dict:
    row: dict = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "Ok."}], **extra}
    return {**row, "images": images} if images is not None else row


@pytest.mark.parametrize(("bad", "message"), [
    (user_row("<image><image> two?", ["images/0.png"]),
     r"2 image placeholder\(s\) '<image>' in the text but 'images' lists 1 image\(s\).*add the missing files"),
    (user_row("<image> one?", ["images/0.png", "images/1.png"]),
     r"1 image placeholder\(s\) '<image>' in the text but 'images' lists 2.*add placeholders"),
    (user_row("No placeholder", ["images/0.png"]), r"0 image placeholder\(s\)"),
    (user_row("<image> clip?", ["images/0.png"], videos=["clip.mp4"]),  # a video nothing in the text consumes
     r"0 video placeholder\(s\) '<video>' in the text but 'videos' lists 1 video\(s\).*add placeholders"),
    (user_row("<image><video> both?", ["images/0.png"]),  # a placeholder with no video behind it
     r"1 video placeholder\(s\) '<video>' in the text but 'videos' lists 0 video\(s\).*add the missing files"),
    (user_row("<image> hear?", ["images/0.png"], audios=["a.wav"]),
     r"column 'audios' holds 1 audio entr\(ies\) that format 'sharegpt' does not read; remove the column"),
    (user_row("<image> which?", ["images/0.png"], image="images/1.png"),
     r"column 'image' holds 1 image entr\(ies\).*set images_column: image"),
    ({"conversation": [], "images": ["images/0.png"]},
     r"does not fit format 'sharegpt' \(column 'conversations' should be a non-empty list of turns"),
    (user_row("<image>", ["images/0.png"], system=""), None),  # an empty system column is no system prompt
])
def test_rows_that_do_not_fit_are_one_line_errors(renderer, qwen, images, tmp_path, bad, message):
    path = write_jsonl(images / "bad.jsonl", [GOOD, bad])
    if message is None:
        assert len(build(renderer, qwen, tmp_path, path)) == 2
        return
    with pytest.raises(DataError, match=message) as info:
        build(renderer, qwen, tmp_path, path)
    assert str(info.value).startswith(f"{path}:2: ") and "\n" not in str(info.value)


def test_hf_sources_refuse_unused_media_and_name_the_fix(renderer, qwen, images, tmp_path):
    hf = LF_HF[0]
    cases = [({**hf, "videos": ["a.mp4"]}, "'videos' lists 1 video(s) but the messages have 0 video part(s)"),
             ({**hf, "image": "images/2.png"}, "column 'image' holds 1 image entr(ies) that format 'messages'"),
             (user_row("<image>", ["images/0.png"]), "set format: sharegpt for this source")]
    for row, message in cases:
        path = write_jsonl(images / "hf_bad.jsonl", [hf, row])
        with pytest.raises(DataError, match=f"^{path}:2: .*{re.escape(message)}"):
            build(renderer, qwen, tmp_path, path)
    # A text-only first row detects HF messages; format: sharegpt forces the placeholder reader.
    mixed = write_jsonl(images / "mixed.jsonl", [LF_ROWS[2], LF_ROWS[0]])
    ds = build(renderer, qwen, tmp_path, mixed, "data.train.0.format=sharegpt")
    assert [len(m) for m in ds["media"]] == [0, 2]
    with pytest.raises(DataError, match="fits no known format.*its columns: foo"):
        build(renderer, qwen, tmp_path, write_jsonl(images / "odd.jsonl", [{"foo": 1}]))
