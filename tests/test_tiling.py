"""`data.image_transform: {type: tiling}`: pages become an overview + a shape-bucketed grid, labels are input only,
the cache and the collator see the same tiles, the tile cache is reused, bad settings fail at start-up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.config import ConfigError, load_config

TILE = 32  # tiny Qwen2-VL: a 32 px tile is 4 media tokens
GRID = {"landscape": ((300, 200), 3, 2), "portrait": ((200, 300), 2, 3), "tall": ((100, 300), 2, 4)}


def page(path: Path, size: tuple[int, int], text: str = "The quick brown fox", fmt: str = "PNG",
         exif_orientation: int | None = None) -> Path:
    """A white page with black text lines, drawn now (nothing is downloaded)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for y in range(5, size[1] - 10, 14):
        draw.text((4, y), text, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, format=fmt, exif=exif.tobytes())
    else:
        image.save(path, format=fmt)
    return path


def conversation(image: str, answer: str = "The quick brown fox") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read the page."}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "images": [Path(image).name]}  # relative to the rows file's folder


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(tmp_path: Path, model: Path, *sources: str, **transform: object):
    overrides = [f"model.name_or_path={model}", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.image_transform.type=tiling", f"data.image_transform.tile_size={TILE}"]
    for i, source in enumerate(sources):
        overrides.append(f"data.train.{i}.path={source}")
        if source.endswith("pretrain.jsonl"):
            overrides.append(f"data.train.{i}.format=pretrain")
    overrides += [f"data.image_transform.{k}={v}" for k, v in transform.items()]
    return load_config(None, overrides)


def build(cfg):
    from vlmtrain.data.split import prepare_split
    from vlmtrain.mask.pipeline import make_renderer

    renderer = make_renderer(cfg)
    return renderer, prepare_split(cfg, renderer, "train")


@pytest.fixture(scope="module")
def qwen(tiny_dir) -> Path:
    return tiny_dir("qwen2_vl")


@pytest.mark.parametrize("shape", list(GRID))
def test_page_becomes_bucketed_grid_plus_overview_with_labels_in_order(tmp_path, qwen, shape) -> None:
    size, cols, rows = GRID[shape]
    write_rows(tmp_path / "rows.jsonl", [conversation(str(page(tmp_path / "page.png", size)))])
    renderer, result = build(make_cfg(tmp_path, qwen, str(tmp_path / "rows.jsonl")))
    row = result.dataset[0]

    assert len(row["media"]) == 1 + cols * rows
    assert all((m["width"], m["height"]) == (TILE, TILE) for m in row["media"])
    assert all(Path(m["path"]).is_file() and Path(m["path"]).parent.parent.parent.name == "tiles"
               for m in row["media"])
    labels = ["<global_img>", *(f"<row{r}_col{c}>" for r in range(1, rows + 1) for c in range(1, cols + 1))]
    found = [row["text"].find(label) for label in labels]
    assert -1 not in found and found == sorted(found), (labels, found)
    assert f"<row{rows + 1}_col1>" not in row["text"] and f"<row1_col{cols + 1}>" not in row["text"]
    # each label sits right before its image
    snippet = "<|vision_start|><|image_pad|><|vision_end|>"
    assert all(row["text"][f + len(label):].startswith(snippet) for label, f in zip(labels, found, strict=True))


def test_labels_are_untrained_markers_and_token_counts_match_the_collator(tmp_path, qwen) -> None:
    """SFT and pretraining rows, batched together: the collator's id check passes on the tiled rows, one
    image grid per tile, label tokens never in the labels (pretraining would otherwise train every text token)."""
    from vlmtrain.collate import IGNORE, CompletionOnlyCollator
    from vlmtrain.render.row import MARKER

    image = str(page(tmp_path / "page.png", (300, 200)))
    write_rows(tmp_path / "rows.jsonl", [conversation(image)])
    write_rows(tmp_path / "pretrain.jsonl", [{"text": "Scan: <|image_pad|> The quick brown fox",
                                               "images": ["page.png"]}])
    renderer, result = build(make_cfg(tmp_path, qwen, str(tmp_path / "rows.jsonl"), str(tmp_path / "pretrain.jsonl")))
    rows = [result.dataset[i] for i in range(len(result.dataset))]
    assert sorted(r["source"] for r in rows) == [0, 1]

    batch = CompletionOnlyCollator(renderer.chat, renderer.media_ids)(rows)  # raises StaleRowError on a mismatch
    assert batch["image_grid_thw"].shape[0] == sum(len(r["media"]) for r in rows) == 14
    pad = renderer.chat.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_tile = int(batch["image_grid_thw"][0].prod()) // 4  # merge 2x2
    for i, row in enumerate(rows):
        ids = np.asarray(row["input_ids"])
        assert (batch["input_ids"][i, :len(ids)].numpy() == ids).all()
        assert int((ids == pad).sum()) == len(row["media"]) * per_tile  # the cache's count == the pixels'
        labels = batch["labels"][i, :len(ids)].numpy()
        kind = np.asarray(row["kind"])
        tokens = renderer.chat.tokenizer.convert_ids_to_tokens(ids.tolist())
        scaffolding = {"<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|im_start|>", "<|im_end|>"}
        label_at = [j for j, (t, k) in enumerate(zip(tokens, kind, strict=True)) 
                    if k == MARKER and t not in scaffolding]
        label_text = "".join(tokens[j] for j in label_at)
        assert label_text.count("_col") == 6 and label_text.count("<global_img>") == 1
        assert all(labels[j] == IGNORE for j in label_at)
        trained = renderer.chat.tokenizer.decode(ids[labels != IGNORE])
        assert "quick brown fox" in trained and "_col" not in trained and "global" not in trained


def test_tile_cache_is_hit_on_the_second_run_and_a_changed_policy_misses(tmp_path, qwen) -> None:
    from vlmtrain.data.fingerprint import cache_key, key_components
    from vlmtrain.mask.pipeline import make_renderer
    from vlmtrain.media import MediaItem
    from vlmtrain.media.transforms import _bound, bind, transform_from_config

    source = page(tmp_path / "page.png", (300, 200))
    cfg = make_cfg(tmp_path, qwen)
    processor = make_renderer(cfg).chat.processing_class
    item = MediaItem("image", str(source), 300, 200)

    def run(cfg):
        _bound.cache_clear()  # a new process: fresh counters, only the disk cache carries over
        transform = bind(transform_from_config(cfg.data), processor)
        derived = transform.apply(item, "page.png")
        return transform.cache, [d.path for _, d in derived]

    cold, paths = run(cfg)
    assert (cold.hits, cold.misses) == (0, 1) and len(paths) == 7
    mtimes = [os.stat(p).st_mtime_ns for p in paths]
    warm, again = run(cfg)
    assert (warm.hits, warm.misses) == (1, 0) and again == paths
    assert [os.stat(p).st_mtime_ns for p in paths] == mtimes  # nothing rewritten

    changed = make_cfg(tmp_path, qwen, overlap=0.25)
    miss, other = run(changed)
    assert (miss.hits, miss.misses) == (0, 1) and set(other).isdisjoint(paths)
    renderer = make_renderer(cfg)  # the data cache key moves with the policy too
    assert cache_key(key_components(cfg, renderer, [], "")) != cache_key(key_components(changed, renderer, [], ""))

    page(source, (300, 200), text="edited page")  # the source changed: new size/mtime
    edited, _ = run(cfg)
    assert edited.misses == 1


def test_unknown_or_bad_transform_settings_fail_at_start_up(tmp_path, qwen, monkeypatch) -> None:
    from vlmtrain.media import transforms
    from vlmtrain.media.transforms import transform_from_config

    with pytest.raises(ConfigError, match="tiling"):
        load_config(None, [f"model.name_or_path={qwen}", "data.image_transform.type=tilling"])
    rows = write_rows(tmp_path / "rows.jsonl", [conversation(str(page(tmp_path / "p.png", (300, 200))))])
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"model: {{name_or_path: {qwen}}}\ndata:\n  train: [{{path: {rows}}}]\n"
                        "  image_transform: {type: tiles}\n")
    result = CliRunner().invoke(app, ["preprocess", str(cfg_file)])
    assert result.exit_code == 2 and "data.image_transform.type" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr

    for key, value, message in [("buckets", "pages", "unknown preset"), ("overlap", "0.7", "outside"),
                                ("buckets", "[{min_aspect: 1.0, cols: 3, rows: 2}]", "min_aspect: 0")]:
        with pytest.raises(ConfigError, match=message):
            transform_from_config(make_cfg(tmp_path, qwen, **{key: value}).data)
    monkeypatch.setattr(transforms, "BUILDERS", {})  # a type the schema lists but this install lacks
    with pytest.raises(ConfigError, match="not an available image transform"):
        transform_from_config(make_cfg(tmp_path, qwen).data)


def test_small_images_stay_whole_and_labels_can_be_switched_off(tmp_path, qwen) -> None:
    small = str(page(tmp_path / "small.png", (30, 20)))  # 600 px < min_area (tile_size**2)
    big = str(page(tmp_path / "big.png", (300, 200)))
    write_rows(tmp_path / "rows.jsonl", [conversation(small), conversation(big)])
    _, result = build(make_cfg(tmp_path, qwen, str(tmp_path / "rows.jsonl"), labels="false"))
    first, second = (result.dataset[i] for i in range(2))
    assert len(first["media"]) == 1 and first["media"][0]["path"] == small and "<global_img>" not in first["text"]
    assert len(second["media"]) == 7 and "<row" not in second["text"] and "<global_img>" not in second["text"]


def test_exif_orientation_decides_the_grid(tmp_path, qwen) -> None:
    # stored 200x300 (portrait pixels) with orientation 6 (rotate 90): the upright page is landscape -> 3x2
    image = page(tmp_path / "rotated.jpg", (200, 300), fmt="JPEG", exif_orientation=6)
    write_rows(tmp_path / "rows.jsonl", [conversation(str(image))])
    _, result = build(make_cfg(tmp_path, qwen, str(tmp_path / "rows.jsonl")))
    text = result.dataset[0]["text"]
    assert "<row2_col3>" in text and "<row3_col1>" not in text


def test_native_resolution_keeps_crop_pixels_capped_by_the_processor(tmp_path, qwen) -> None:
    from vlmtrain.mask.pipeline import make_renderer
    from vlmtrain.media import MediaItem
    from vlmtrain.media.transforms import bind, processor_max_pixels, transform_from_config

    cfg = make_cfg(tmp_path, qwen, native_resolution="true", min_area=0)
    processor = make_renderer(cfg).chat.processing_class
    cap = processor_max_pixels(processor)
    assert cap == 64 * 64  # tiny Qwen2-VL: size.longest_edge is the max pixel area
    transform = bind(transform_from_config(cfg.data), processor)
    small = transform.apply(MediaItem("image", str(page(tmp_path / "a.png", (120, 80))), 120, 80), "a")
    assert [(d.width, d.height) for _, d in small[1:]] == [(40, 40)] * 6  # native crops, under the cap
    big = transform.apply(MediaItem("image", str(page(tmp_path / "b.png", (600, 400))), 600, 400), "b")
    overview, tiles = big[0][1], [d for _, d in big[1:]]
    assert all(d.width * d.height <= cap and abs(d.width - d.height) <= 1 for d in tiles)  # capped, aspect kept
    assert overview.width * overview.height <= max(d.width * d.height for d in tiles)  # costs no more than a tile
    assert abs(overview.width / overview.height - 1.5) < 0.05


def test_overlapping_tiles_cover_the_page() -> None:
    from vlmtrain.media.tiling import spans

    for length, count, overlap in [(300, 3, 0.0), (300, 3, 0.2), (1001, 4, 0.1), (7, 2, 0.4)]:
        got = spans(length, count, overlap)
        assert got[0][0] == 0 and got[-1][1] == length and len(got) == count
        for (a0, a1), (b0, b1) in zip(got, got[1:], strict=False):
            assert a0 < b0 <= a1 and b1 > a1  # neighbours touch or overlap, always move right
            assert abs((a1 - b0) - overlap * (a1 - a0)) <= 1.5  # they share `overlap` of a tile


def test_inspect_mask_shows_tiles_and_untrained_labels(tmp_path, qwen) -> None:
    rows = write_rows(tmp_path / "rows.jsonl", [conversation(str(page(tmp_path / "p.png", (300, 200))))])
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"model: {{name_or_path: {qwen}}}\ndata:\n  cache_dir: {tmp_path / 'cache'}\n"
                        f"  train: [{{path: {rows}}}]\n  image_transform: {{type: tiling, tile_size: {TILE}}}\n")
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(app, ["inspect-mask", str(cfg_file), "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    row = json.loads(out.read_text().splitlines()[0])
    assert len(row["media"]) == 7 and all("/tiles/" in m["path"] for m in row["media"])
    label_text = "".join(t for t, k, m in zip(row["tokens"], row["kind"], row["loss_mask"], strict=True)
                         if k == "marker" and not m and "|" not in t)
    assert "global_img" in label_text and label_text.count("col") == 6
    terminal = CliRunner().invoke(app, ["inspect-mask", str(cfg_file)])
    assert terminal.exit_code == 0 and "images 7" in terminal.stdout
    assert "<row1_col1><|vision_start|><|image_pad|> ×4<|vision_end|><row1_col2>" in terminal.stdout


def test_generate_prompts_are_tiled_like_the_training_rows(tmp_path, qwen) -> None:
    """`vlmtrain generate` on a tiled run must send the tiles and labels training used, not the whole page."""
    from vlmtrain.generate.prompt import PromptEncoder, prompt_from_args

    image = page(tmp_path / "page.png", GRID["landscape"][0])
    write_rows(tmp_path / "rows.jsonl", [conversation(str(image))])
    cfg = make_cfg(tmp_path, qwen, str(tmp_path / "rows.jsonl"))
    renderer, result = build(cfg)
    encoder = PromptEncoder(cfg, renderer)
    prompt = encoder.transformed(prompt_from_args("Read the page.", [str(image)]))
    trained = result.dataset[0]
    assert prompt.images == [m["path"] for m in trained["media"]]
    text = encoder.text(prompt)
    assert trained["text"].startswith(text[:text.index("Read the page.")])  # same labels and image snippets
    ids = encoder.encode(prompt)["input_ids"][0].tolist()
    assert ids == trained["input_ids"][:len(ids)]
