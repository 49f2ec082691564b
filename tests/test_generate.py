"""`vlmtrain generate` / `vlmtrain merge` end to end on the embedded tiny model, the eval loss as an exact token
mean, and `eval.samples` answers logged during training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.config import ConfigError, load_config
from vlmtrain.train.fit import fit

SHAPE_ROWS = 4  # rows 0, 1 and 3 start with "What shape is this?" about one image


def _cfg(out: Path, *overrides: str):
    return load_config(None, [
        "model.name_or_path=tiny:qwen2_vl", "data.train.0.path=tiny:shapes", f"data.train.0.max_rows={SHAPE_ROWS}",
        f"training.output_dir={out}", "training.per_device_train_batch_size=4", "training.learning_rate=5e-3",
        "training.lr_scheduler_type=constant", "training.warmup_steps=0", "training.logging_steps=5",
        "training.save_strategy=no", "training.report_to=none", "training.seed=0", *overrides,
    ])


def _shape_rows(cfg) -> list[tuple[str, str]]:
    """(image path, trained answer) of the single-image shape questions the run trained on."""
    data = Path(str(cfg.data.train[0].path))
    rows = [json.loads(line) for line in data.read_text().splitlines()[:SHAPE_ROWS]]
    return [(str(data.parent / r["images"][0]), r["messages"][1]["content"][0]["text"])
            for r in rows if r["messages"][0]["content"][-1]["text"] == "What shape is this?"]


def cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A full fine-tune that has memorised 4 rows (80 steps, a few seconds on 2 CPU cores)."""
    out = tmp_path_factory.mktemp("gen") / "full"
    cfg = _cfg(out, "training.max_steps=80")
    result = fit(cfg)
    assert result.final_loss < 0.15, f"the tiny model did not overfit ({result.final_loss:.3f})"
    return out, _shape_rows(cfg)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "lora"
    cfg = _cfg(out, "training.max_steps=6", "adapter.type=lora", "adapter.r=4", "adapter.dropout=0.0")
    fit(cfg)
    return out, cfg


@pytest.mark.slow
def test_generate_answers_what_the_overfit_model_learned(overfit):
    run, rows = overfit
    assert len({answer for _, answer in rows}) > 1, "the test needs images with different answers"
    for image, answer in rows:
        result = cli("generate", str(run), "--image", image, "--prompt", "What shape is this?", "--device", "cpu")
        assert result.stdout.strip() == answer, (image, result.stdout, answer)


@pytest.mark.slow
def test_generate_streams_and_answers_a_batch_of_rows(overfit, tmp_path):
    run, rows = overfit
    image, answer = rows[0]
    streamed = cli("generate", str(run), "--image", image, "--prompt", "What shape is this?", "--stream")
    assert streamed.stdout.strip() == answer

    shapes = Path(image).parent.parent
    data = tmp_path / "rows.jsonl"  # images relative to --image-dir, final assistant turn = the reference
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is this?"}]},
        {"role": "assistant", "content": ref}], "images": [str(Path(img).relative_to(shapes))]}) + "\n"
        for img, ref in rows))
    batch = cli("generate", str(run), "--input", str(data), "--image-dir", str(shapes))
    lines = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [r["reference"] for r in lines] == [ref for _, ref in rows]
    assert [r["answer"] for r in lines] == [ref for _, ref in rows]
    assert all(r["finish"] == "stop" and r["where"].startswith(f"{data}:") for r in lines)


@pytest.mark.slow
def test_generate_one_line_errors(overfit, tmp_path):
    run, rows = overfit
    missing = cli("generate", str(run), "--image", str(tmp_path / "nope.png"), "--prompt", "Hi?", code=2)
    assert missing.stderr.strip() == f"error: --image {tmp_path / 'nope.png'}: file not found; pass the path of an " \
                                     "image file"
    empty = tmp_path / "crashed"
    empty.mkdir()
    (empty / "vlmtrain_config.yaml").write_text((run / "vlmtrain_config.yaml").read_text())
    no_model = cli("generate", str(empty), "--prompt", "Hi?", code=2)
    assert "holds no model" in no_model.stderr and len(no_model.stderr.strip().splitlines()) == 1
    not_run = cli("generate", str(tmp_path), "--prompt", "Hi?", code=2)
    assert "not a vlmtrain run directory" in not_run.stderr

    from transformers import ViTConfig, ViTModel

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8)).save_pretrained(vit)
    (vit / "vlmtrain_config.yaml").write_text((run / "vlmtrain_config.yaml").read_text())
    not_generative = cli("generate", str(vit), "--prompt", "Hi?", code=2)
    assert "'vit' is not a generative model" in not_generative.stderr
    assert len(not_generative.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_merge_round_trips_and_merged_folder_generates(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    run, cfg = lora_run
    out = tmp_path / "merged"
    result = cli("merge", str(run), "--output", str(out))
    assert "probe logits max |diff|" in result.stdout

    base_path = str(cfg.model.name_or_path)
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    adapter = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_path), run).eval()
    base = AutoModelForImageTextToText.from_pretrained(base_path).eval()

    from vlmtrain.generate.prompt import PromptEncoder, prompt_from_args

    image, answer = _shape_rows(cfg)[0]
    inputs = PromptEncoder(cfg).encode(prompt_from_args("What shape is this?", [image]), completion=answer)
    with torch.no_grad():
        want, got, before = (m(**inputs).logits for m in (adapter, merged, base))
    assert not torch.allclose(want, before, atol=1e-3), "the adapter must change the model for the test to mean much"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    via_adapter = cli("generate", str(run), "--image", image, "--prompt", "What shape is this?").stdout
    assert cli("generate", str(out), "--image", image, "--prompt", "What shape is this?").stdout == via_adapter


@pytest.mark.slow
def test_merge_refuses_a_full_fine_tune(overfit):
    run, _ = overfit
    result = cli("merge", str(run), code=2)
    assert "not a LoRA adapter" in result.stderr


@pytest.mark.slow
def test_eval_loss_is_the_exact_token_mean(tmp_path):
    """Batches of 4 and 2 eval rows with different token counts: a mean of batch means would differ."""
    from transformers import AutoModelForImageTextToText

    from vlmtrain.collate import COLLATOR_COLUMNS, CompletionOnlyCollator
    from vlmtrain.data.split import load_split
    from vlmtrain.mask.pipeline import make_renderer

    out = tmp_path / "eval"
    cfg = _cfg(out, "training.max_steps=1", "data.eval.0.path=tiny:shapes", "data.eval.0.max_rows=6",
               "training.eval_strategy=steps", "training.eval_steps=1", "training.per_device_eval_batch_size=4",
               "training.save_strategy=steps", "training.save_steps=1")
    fit(cfg)
    history = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]
    reported = next(h["eval_loss"] for h in history if "eval_loss" in h)

    renderer = make_renderer(cfg)
    rows = load_split(cfg, renderer, "eval").select_columns(list(COLLATOR_COLUMNS))
    collate = CompletionOnlyCollator(renderer.chat, renderer.media_ids)
    model = AutoModelForImageTextToText.from_pretrained(out / "checkpoint-1").eval()
    sums, counts = [], []
    with torch.no_grad():
        for i in range(len(rows)):
            batch = collate([rows[i]])
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits[:, :-1]
            sums.append(float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                                                ignore_index=-100, reduction="sum")))
            counts.append(int(labels.ne(-100).sum()))
    exact = sum(sums) / sum(counts)
    by_batch = [sum(sums[:4]) / sum(counts[:4]), sum(sums[4:]) / sum(counts[4:])]
    mean_of_means = (4 * by_batch[0] + 2 * by_batch[1]) / 6  # what Trainer reports without the fix
    assert abs(mean_of_means - exact) > 1e-3, "the rows must differ enough for the test to tell the two apart"
    assert reported == pytest.approx(exact, rel=1e-5)


@pytest.mark.slow
def test_eval_samples_are_generated_and_logged_at_each_evaluation(tmp_path, caplog):
    out = tmp_path / "samples"
    cfg = _cfg(out, "training.max_steps=4", "data.eval.0.path=tiny:shapes", "data.eval.0.max_rows=4",
               "training.eval_strategy=steps", "training.eval_steps=2", "eval.samples=2", "eval.max_new_tokens=8")
    with caplog.at_level("INFO", logger="vlmtrain"):
        fit(cfg)
    lines = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 2, 4, 4]
    rows = [json.loads(line) for line in Path(str(cfg.data.eval[0].path)).read_text().splitlines()[:2]]
    assert [r["reference"] for r in lines[:2]] == [r["messages"][-1]["content"][0]["text"] for r in rows]
    assert [r["question"] for r in lines[:2]] == [r["messages"][-2]["content"][-1]["text"] for r in rows]
    assert all(r["tokens"] >= 1 and r["finish"] in ("stop", "length") for r in lines)
    assert caplog.text.count("eval sample step") == 4


def test_eval_samples_need_eval_data_and_an_eval_strategy(tmp_path):
    from types import SimpleNamespace

    from vlmtrain.train.samples import attach_eval_samples

    trainer = SimpleNamespace(args=SimpleNamespace(eval_strategy="no"))
    with pytest.raises(ConfigError, match="add a data.eval source"):
        attach_eval_samples(trainer, _cfg(tmp_path, "eval.samples=2"))
    with pytest.raises(ConfigError, match="training.eval_strategy is 'no'"):
        attach_eval_samples(trainer, _cfg(tmp_path, "eval.samples=2", "data.eval.0.path=x.jsonl"))


def test_eval_samples_reach_text_backends_and_name_the_others():
    from transformers.integrations import TensorBoardCallback

    from vlmtrain.generate.prompt import Prompt
    from vlmtrain.generate.run import Answer
    from vlmtrain.train.samples import send_to_backends

    class Writer:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def add_text(self, *args) -> None:
            self.calls.append(args)

    board = TensorBoardCallback.__new__(TensorBoardCallback)
    board.tb_writer = Writer()
    answers = [Answer(Prompt([{"role": "user", "content": "What shape | is this?"}], where="f.jsonl:1",
                             reference="A red circle."), "A red square.", 5, "stop")]
    left = send_to_backends([board], ["tensorboard", "comet_ml"], 7, answers)
    assert left == ["comet_ml"]
    (tag, text, step), = board.tb_writer.calls
    assert (tag, step) == ("eval/samples", 7)
    assert "| f.jsonl:1 | What shape \\| is this? | A red square. | A red circle. |" in text
