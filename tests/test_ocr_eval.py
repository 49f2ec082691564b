"""`vlmtrain eval RUN --metric cer`: the CER metric exactly on known strings, and the command end to end on a tiny
model fitted on pages drawn from text at test time (tiled), reporting loss and CER per source and overall."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.eval.cer import CerTotals, edit_distance

LINES = ["INVOICE 2041", "total due 17.50", "ship to: Oslo", "paid in full"]


def reference_distance(a: str, b: str) -> int:
    """Textbook Levenshtein (the metric's implementation is vectorised; this one is obviously right)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@pytest.mark.parametrize("hyp,ref,edits", [
    ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "", 3), ("same", "same", 0),
    ("naïve café", "naive cafe", 2), ("abc", "cba", 2), ("aaaa", "aa", 2), ("日本語", "日本", 1),
])
def test_edit_distance_on_known_strings(hyp, ref, edits) -> None:
    assert edit_distance(hyp, ref) == edits == edit_distance(ref, hyp)


def test_edit_distance_matches_the_textbook_programme_and_cer_weights_characters() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        assert edit_distance(a, b) == reference_distance(a, b), (a, b)
    totals = CerTotals()
    totals.add("kitten", "sitting")  # 3 edits / 7 chars
    totals.add("abc", "abc")  # 0 / 3
    assert (totals.edits, totals.chars, totals.rows) == (3, 10, 2) and totals.cer == pytest.approx(0.3)
    assert CerTotals().cer is None  # no reference characters: undefined, not 0


def draw_page(path: Path, text: str) -> str:
    image = Image.new("RGB", (180, 120), "white")
    ImageDraw.Draw(image).text((6, 50), text, fill="black")
    image.save(path)
    return path.name


def ocr_rows(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Transcribe."}]},
                          {"role": "assistant", "content": [{"type": "text", "text": line}]}],
             "images": [draw_page(folder / f"page{i}.png", line)]} for i, line in enumerate(lines)]
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pretrain_rows(folder: Path, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"<|image_pad|>{line}", "images": [draw_page(folder / f"scan{i}.png", line)]}
            for i, line in enumerate(lines)]
    path = folder / "pretrain.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ocr_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Qwen2-VL fitted for a few steps on tiled OCR pages; data.eval: conversations + pretraining text."""
    from vlmtrain.config import load_config, to_yaml
    from vlmtrain.train.fit import fit

    root = tmp_path_factory.mktemp("ocr")
    train = ocr_rows(root / "train", LINES)
    eval_pages = ocr_rows(root / "eval", LINES[:2])
    eval_text = pretrain_rows(root / "eval_text", LINES[2:])
    out = root / "run"
    cfg = load_config(None, [
        "model.name_or_path=tiny:qwen2_vl", f"data.train.0.path={train}", f"data.eval.0.path={eval_pages}",
        f"data.eval.1.path={eval_text}", "data.eval.1.format=pretrain", f"data.cache_dir={root / 'cache'}",
        "data.image_transform.type=tiling", "data.image_transform.tile_size=32", f"training.output_dir={out}",
        "training.max_steps=3", "training.per_device_train_batch_size=2", "training.save_strategy=no",
        "training.report_to=none", "training.learning_rate=5e-3",
    ])
    fit(cfg)
    config = root / "ocr.yaml"
    config.write_text(to_yaml(cfg))
    return out, config


@pytest.mark.slow
def test_eval_reports_loss_and_cer_per_source_and_overall(ocr_run, monkeypatch) -> None:
    from vlmtrain.generate import run as generation

    run, config = ocr_run
    prompts = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda model, encoder, batch, **kw: (
        prompts.extend(batch), real(model, encoder, batch, **kw))[1])
    result = CliRunner().invoke(app, ["eval", str(config), "--metric", "cer", "--json", "--max-new-tokens", "6",
                                      "--device", "cpu"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    pages, text = report["sources"]
    assert pages["source"].startswith("eval[0]") and text["source"].startswith("eval[1]")
    assert pages["cer_rows"] == 2 and pages["reference_chars"] == sum(len(line) for line in LINES[:2])
    assert pages["cer"] == pytest.approx(pages["edits"] / pages["reference_chars"]) and pages["cer"] >= 0
    assert text["cer"] is None and text["no_reference"] == 2 and text["cer_rows"] == 0  # loss only
    for score in (pages, text):
        assert score["rows"] == 2 and score["loss_tokens"] > 0 and math.isfinite(score["loss"]) and score["loss"] > 0
    overall = report["overall"]
    assert overall["loss_tokens"] == pages["loss_tokens"] + text["loss_tokens"]
    weighted = (pages["loss"] * pages["loss_tokens"] + text["loss"] * text["loss_tokens"]) / overall["loss_tokens"]
    assert overall["loss"] == pytest.approx(weighted) and overall["cer"] == pytest.approx(pages["cer"])
    assert "CER" in result.stdout and "overall: loss" in result.stdout
    # generation saw the run's transform: each 180x120 page as overview + 3x2 tiles, labels before them
    assert len(prompts) == 2 and all(len(p.images) == 7 and "/tiles/" in p.images[0] for p in prompts)
    user_text = "".join(part.get("text", "") for part in prompts[0].messages[-1]["content"])
    assert user_text.startswith("<global_img><row1_col1>") and user_text.endswith("<row2_col3>Transcribe.")


@pytest.mark.slow
def test_eval_refuses_an_unknown_metric_in_one_line(ocr_run) -> None:
    _, config = ocr_run
    result = CliRunner().invoke(app, ["eval", str(config), "--metric", "wer", "--device", "cpu"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: --metric wer: unknown metric; use one of cer (the loss is always reported)")
