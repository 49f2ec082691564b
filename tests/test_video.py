"""Video rows on a tiny Qwen2.5-VL: real files encoded at test time (PyAV), trained, cached, inspected, and every
bad input a one-line error or a counted skip naming file:row."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.collate import IGNORE, CompletionOnlyCollator
from vlmtrain.config import load_config
from vlmtrain.data.examples import Example
from vlmtrain.data.policies import BuildSettings
from vlmtrain.data.rows import render_example
from vlmtrain.errors import DataError, Reason
from vlmtrain.mask.pipeline import make_renderer
from vlmtrain.media.video import load_clip
from vlmtrain.train.fit import fit

FRAMES, FPS, WIDTH, HEIGHT = 12, 6, 64, 48


def encode_video(path: Path, frames: int = FRAMES, fps: int = FPS, size: tuple[int, int] = (WIDTH, HEIGHT),
                 codec: str = "libx264") -> Path:
    """A small real video: frame i is a flat grey of level 20*i (so decoded frames can be told apart)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            pixels = np.full((height, width, 3), min(20 * i, 255), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_row(video: str, answer: str = "It gets brighter.") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "videos": [video]}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qwen(tiny_dir) -> Path:
    return tiny_dir("qwen2_5_vl", with_model=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    encode_video(root / "clip.mp4")
    encode_video(root / "clip.webm", codec="libvpx-vp9")  # no frame count in the header
    encode_video(root / "long.mp4", frames=60)
    (root / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "empty.mp4").write_bytes(b"")
    return root


def overrides(qwen: Path, data: Path, tmp: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={qwen}", f"data.train.0.path={data}", f"data.cache_dir={tmp / 'cache'}",
            "data.video.num_frames=4", *extra]


def render(cfg, rows_file: Path, line: int = 0):
    """The masked row of one data line, through the same path preprocess takes."""
    from vlmtrain.data.examples import context_for, example_from_raw
    from vlmtrain.data.sources import RawRow

    source = cfg.data.train[0]
    ctx = context_for(source, 0, cfg, Path(cfg.data.cache_dir) / "media")
    raw = json.loads(rows_file.read_text().splitlines()[line])
    example: Example = example_from_raw(RawRow(f"{rows_file}:{line + 1}", raw), source, ctx)
    renderer = make_renderer(cfg)
    return renderer, render_example(renderer, example, BuildSettings.from_config(cfg.data, cfg.mask))


def test_video_expands_like_the_processor_and_is_never_trained(qwen, clips, tmp_path):
    data = write_rows(clips / "expand.jsonl", [video_row("clip.mp4"), video_row("clip.webm")])
    cfg = load_config(None, overrides(qwen, data, tmp_path))
    renderer, row = render(cfg, data)
    processor = renderer.chat.processing_class
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    (item,) = row.media
    assert (item.modality, item.frames, item.width, item.height) == ("video", 4, WIDTH, HEIGHT)
    # The stand-in expanded to exactly the tokens the processor gives the real, decoded frames.
    clip = load_clip(item.path, item.frames, item.width, item.height, "test")
    grid = processor.video_processor(videos=[clip.frames], video_metadata=[clip.metadata])["video_grid_thw"]
    expected = int(grid.prod()) // processor.video_processor.merge_size ** 2
    is_video = row.input_ids == video_id
    assert int(is_video.sum()) == expected > 0
    assert not row.loss_mask[is_video].any() and row.loss_mask.any()
    assert video_id in set(renderer.media_ids.tolist())
    # Sampled frames are the file's, spread over it: first frame black, last the brightest.
    levels = clip.frames.reshape(4, -1).mean(axis=1)
    assert levels[0] < 10 and levels[-1] > 20 * (FRAMES - 2) and np.all(np.diff(levels) > 0)

    # The collator's batch: the same ids (its check passes), video inputs present, no video label.
    _, webm_row = render(cfg, data, line=1)
    collator = CompletionOnlyCollator(renderer.chat, renderer.media_ids)
    batch = collator([{**r.to_record(), "where": "row"} for r in (row, webm_row)])
    assert batch["pixel_values_videos"].shape[0] > 0 and batch["video_grid_thw"].shape == (2, 3)
    assert not torch.any(batch["labels"][batch["input_ids"] == video_id] != IGNORE)
    assert torch.any(batch["labels"] != IGNORE)


def test_fit_trains_a_step_on_video_rows_and_preprocess_caches_them(qwen, clips, tmp_path):
    data = write_rows(clips / "fit.jsonl", [video_row("clip.mp4"), video_row("clip.webm", "It brightens.")])
    args = overrides(qwen, data, tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    runner = CliRunner()
    cold = runner.invoke(app, ["preprocess", str(config), *args])
    assert cold.exit_code == 0, cold.output
    assert "2 rows kept, 0 dropped" in cold.output and "cache hit" not in cold.output
    warm = runner.invoke(app, ["preprocess", str(config), *args])
    assert warm.exit_code == 0 and "cache hit" in warm.output, warm.output
    changed = runner.invoke(app, ["preprocess", str(config), *args, "data.video.num_frames=6"])
    assert changed.exit_code == 0 and "cache hit" not in changed.output, changed.output

    cfg = load_config(None, [*args, f"training.output_dir={tmp_path / 'run'}", "training.max_steps=1",
                             "training.per_device_train_batch_size=2", "training.report_to=none",
                             "training.save_strategy='no'", "training.logging_steps=1"])
    result = fit(cfg)
    assert result.steps == 1 and np.isfinite(result.first_loss) and result.first_loss > 0


def test_inspect_mask_json_shows_the_video_and_trains_none_of_it(qwen, clips, tmp_path):
    data = write_rows(clips / "inspect.jsonl", [video_row("clip.mp4")])
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    args = [str(config), *overrides(qwen, data, tmp_path)]
    out = CliRunner().invoke(app, ["inspect-mask", *args, "--format", "json", "--rows", "all"])
    assert out.exit_code == 0, out.output
    (row,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    (media,) = row["media"]
    assert media["modality"] == "video" and media["frames"] == 4 and media["path"].endswith("clip.mp4")
    video = [i for i, t in enumerate(row["tokens"]) if t == "<|video_pad|>"]
    assert video and not any(row["loss_mask"][i] for i in video)
    assert any(row["loss_mask"])
    text = CliRunner().invoke(app, ["inspect-mask", *args, "--rows", "0"])
    assert text.exit_code == 0 and "videos 1 (4 frames)" in text.output and "<|video_pad|> ×" in text.output


@pytest.mark.parametrize(("video", "extra", "reason", "says"), [
    ("missing.mp4", (), Reason.MISSING_VIDEO, "video file not found"),
    ("garbage.mp4", (), Reason.UNREADABLE_VIDEO, "cannot be decoded"),
    ("empty.mp4", (), Reason.UNREADABLE_VIDEO, "empty (0-byte) file"),
    ("long.mp4", ("data.video.max_seconds=5",), Reason.VIDEO_OVER_LIMIT, "over data.video.max_seconds=5"),
    ("clip.mp4", ("data.max_image_pixels=1000",), Reason.VIDEO_OVER_LIMIT, "over data.max_image_pixels=1000"),
])
def test_bad_videos_are_one_line_errors_naming_the_row(qwen, clips, tmp_path, video, extra, reason, says):
    data = write_rows(clips / f"bad-{video}.jsonl", [video_row("clip.mp4"), video_row(video)])
    cfg = load_config(None, overrides(qwen, data, tmp_path, *extra))
    with pytest.raises(DataError) as err:
        render(cfg, data, line=1)
    assert err.value.reason == reason and says in str(err.value)
    assert str(err.value).startswith(f"{data}:2: ") and "\n" not in str(err.value)


def test_bad_video_is_skipped_and_counted(qwen, clips, tmp_path):
    data = write_rows(clips / "skip.jsonl", [video_row("clip.mp4"), video_row("garbage.mp4")])
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    args = [str(config), *overrides(qwen, data, tmp_path)]
    failing = CliRunner().invoke(app, ["preprocess", *args])
    errors = [line for line in failing.output.splitlines() if "error:" in line]
    assert failing.exit_code == 2 and len(errors) == 1 and f"error: {data}:2: video" in errors[0]
    skipping = CliRunner().invoke(app, ["preprocess", *args, "data.on_bad_row=skip"])
    assert skipping.exit_code == 0, skipping.output
    assert "1 rows kept, 1 dropped" in skipping.output and "unreadable video" in skipping.output


def test_video_to_an_image_only_family_is_an_error(tiny_dir, clips, tmp_path):
    idefics = tiny_dir("idefics3")
    data = write_rows(clips / "idefics.jsonl", [video_row("clip.mp4")])
    cfg = load_config(None, [f"model.name_or_path={idefics}", f"data.train.0.path={data}",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DataError) as err:
        render(cfg, data)
    assert err.value.reason == Reason.MEDIA_NOT_SUPPORTED
    assert str(err.value).startswith(f"{data}:1: the row has 1 video(s)") and "takes no videos" in str(err.value)


def test_processors_that_resample_by_default_keep_every_frame_vlmtrain_sampled(tiny_dir, clips, tmp_path):
    """Qwen3-VL's video processor re-samples frames unless told not to: vlmtrain's data.video.num_frames must be
    what the model sees, at render time and at collate time alike."""
    model = tiny_dir("qwen3_vl")
    data = write_rows(clips / "qwen3.jsonl", [video_row("clip.mp4")])
    cfg = load_config(None, overrides(model, data, tmp_path, "data.video.num_frames=8"))
    renderer, row = render(cfg, data)
    (item,) = row.media
    assert item.frames == 8
    batch = CompletionOnlyCollator(renderer.chat, renderer.media_ids)([{**row.to_record(), "where": "row"}])
    temporal_patch = renderer.chat.processing_class.video_processor.temporal_patch_size
    assert int(batch["video_grid_thw"][0][0]) == 8 // temporal_patch


def test_a_video_given_as_frame_images_trains_like_a_file(qwen, clips, tmp_path):
    """`videos: [[f0.png, f1.png, ...]]` (LLaMA-Factory / LLaVA-Video): the frames are one video item, every frame
    used (they are taken to be sampled at data.video.fps), expanded as the processor expands them, never trained."""
    from PIL import Image

    frames_dir = clips / "frames"
    frames_dir.mkdir(exist_ok=True)
    names = []
    for i in range(6):
        Image.new("RGB", (WIDTH, HEIGHT), (40 * i, 40 * i, 40 * i)).save(frames_dir / f"{i}.png")
        names.append(f"frames/{i}.png")
    row = {**video_row("unused"), "videos": [names]}
    data = write_rows(clips / "frames.jsonl", [row])
    cfg = load_config(None, [*overrides(qwen, data, tmp_path)[:3], "data.video.num_frames=null"])
    renderer, masked = render(cfg, data)
    (item,) = masked.media
    assert item.modality == "video" and item.frames == 6 and (item.width, item.height) == (WIDTH, HEIGHT)
    assert item.fps == 2.0
    processor = renderer.chat.processing_class
    video_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    batch = CompletionOnlyCollator(renderer.chat, renderer.media_ids)([{**masked.to_record(), "where": "row"}])
    assert int(batch["video_grid_thw"][0][0]) == 6 // processor.video_processor.temporal_patch_size
    is_video = masked.input_ids == video_id
    assert is_video.any() and not masked.loss_mask[is_video].any()
    # the decoded frames are the listed images, in order
    from vlmtrain.media.kinds import kind_of

    loaded = kind_of("video").load(item, "row")
    assert [int(f.mean()) for f in loaded.frames] == [40 * i for i in range(6)]
    # a missing frame is a one-line error naming the row
    (frames_dir / "3.png").unlink()
    with pytest.raises(DataError, match=r"frames.jsonl:1: image file not found: .*3.png"):
        render(cfg, data)


def test_frames_are_sampled_by_the_processors_own_settings_unless_the_run_overrides_them(qwen, clips, tmp_path):
    """With data.video unset the model's video processor decides (its fps here); data.video.fps overrides it."""
    data = write_rows(clips / "sampling.jsonl", [video_row("long.mp4")])  # 60 frames at 6 fps = 10 s
    base = [f"model.name_or_path={qwen}", f"data.train.0.path={data}", f"data.cache_dir={tmp_path / 'cache'}"]
    renderer, row = render(load_config(None, base), data)
    assert renderer.chat.processing_class.video_processor.fps is None  # the tiny Qwen2.5-VL declares none
    assert row.media[0].frames == 20  # Qwen's published 2 fps over 10 s

    from vlmtrain.data.policies import BuildSettings as Settings

    cfg = load_config(None, base)
    renderer.chat.processing_class.video_processor.fps = 1.0  # a processor that samples 1 frame per second
    from vlmtrain.data.examples import context_for, example_from_raw
    from vlmtrain.data.sources import RawRow

    ctx = context_for(cfg.data.train[0], 0, cfg, tmp_path / "cache" / "media")
    example = example_from_raw(RawRow(f"{data}:1", json.loads(data.read_text())), cfg.data.train[0], ctx)
    assert render_example(renderer, example, Settings.from_config(cfg.data, cfg.mask)).media[0].frames == 10
    override = load_config(None, [*base, "data.video.fps=3"])
    assert render_example(renderer, example, Settings.from_config(override.data, override.mask)).media[0].frames == 30
