"""`vlmtrain inspect-mask` on tiny offline models (tokenizer/processor only, no weights): terminal, JSON Lines
and HTML output on a ChatML VLM (qwen2_vl) and a family whose stop token opens the next message (glm4_moe,
with a tool call), a role_boundaries override, the --strict lint on planted problems, and the proof that the
JSON mask is the training collator's labels."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.errors import DataError
from vlmtrain.inspect.jsonl import ROW_KEYS, TOKEN_KEYS
from vlmtrain.inspect.select import parse_rows
from vlmtrain.tiny import make_shapes_dataset

TRAINED_BG = {"rgb(143, 214, 148)", "rgb(195, 236, 197)"}  # vlmtrain.inspect.html.TRAINED_RGB
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
GLM_ROWS = [
    {"messages": [{"role": "user", "content": "What is the weather in Paris?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function",
                                   "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "content": "sunny, 21C"},
                  {"role": "assistant", "content": "It is sunny in Paris."}], "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect-data")
    shapes = make_shapes_dataset(root / "shapes", rows=8)
    eval_rows = [json.loads(line) for line in shapes.read_text().splitlines()[:2]]
    return {
        "shapes": shapes,
        "shapes_eval": _jsonl(root / "shapes" / "eval.jsonl", eval_rows),
        "glm": _jsonl(root / "glm.jsonl", GLM_ROWS),
        # qwen, train_on_eos none: line 2 trains nothing; line 3 has an image part but no image file
        "planted_qwen": _jsonl(root / "planted_qwen.jsonl", [
            GLM_ROWS[1],
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
            {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                          {"role": "assistant", "content": "A cat."}]},
        ]),
        # glm, roles mode: line 2's first stop (<|user|>, in the next user message) is not trained;
        # line 3 has no assistant turn at all
        "planted_glm": _jsonl(root / "planted_glm.jsonl",
                              [GLM_ROWS[1], GLM_ROWS[2], {"messages": [{"role": "user", "content": "Hi"}]}]),
    }


def config(tmp_path: Path, model: Path, train: Path, *, eval_path: Path | None = None,
           **sections: dict) -> str:
    cfg: dict = {"model": {"name_or_path": str(model)},
                 "data": {"train": [{"path": str(train), "image_dir": str(train.parent)}],
                          "cache_dir": str(tmp_path / "cache")}}
    if eval_path is not None:
        cfg["data"]["eval"] = [{"path": str(eval_path), "image_dir": str(eval_path.parent)}]
    for key, values in sections.items():
        cfg.setdefault(key, {}).update(values)
    path = tmp_path / f"run-{len(list(tmp_path.glob('run-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def inspect(*args: str, code: int = 0, env: dict | None = None):
    result = CliRunner().invoke(app, ["inspect-mask", *args], env=env)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def json_rows(*args: str) -> list[dict]:
    return [json.loads(line) for line in inspect(*args, "--format", "json").stdout.splitlines()]


def trained_text(row: dict) -> str:
    return "".join(t for t, m in zip(row["tokens"], row["loss_mask"], strict=True) if m)


# ---------------------------------------------------------------- row selection


def test_parse_rows() -> None:
    assert parse_rows("17", 20) == [17]
    assert parse_rows("0:5", 3) == [0, 1, 2]
    assert parse_rows("3,8,9", 10) == [3, 8, 9]
    assert parse_rows("-1", 10) == [9]
    assert parse_rows("8:,0", 10) == [8, 9, 0]
    assert parse_rows("all", 4) == [0, 1, 2, 3]
    for bad in ("10", "x", "1:2:0"):
        with pytest.raises(DataError):
            parse_rows(bad, 10)


# ---------------------------------------------------------------- terminal


def test_terminal_qwen(tmp_path, tiny_dir, data) -> None:
    cfg = config(tmp_path, tiny_dir("qwen2_vl"), data["shapes"], eval_path=data["shapes_eval"])
    out = inspect(cfg, "--rows", "0:2").stdout
    assert out.startswith("legend: ⟦trained⟧")
    assert out.count("row ") >= 2 and f"{data['shapes']}:1" in out and f"{data['shapes']}:2" in out
    assert re.search(r"tokens \d+ · trained \d+ \(\d+%\) · trained by role: assistant \d+ · images 1", out)
    assert " user #0 " in out and " assistant #1 " in out  # message boundaries and roles
    assert re.search(r"<\|vision_start\|><\|image_pad\|> ×\d+<\|vision_end\|>", out)  # media run collapsed
    assert "<|im_start|>assistant↵\n⟦" in out  # the cue is not trained, the answer is, whitespace visible
    assert re.search(r"⟦[A-Z][^⟧]*\.<\|im_end\|>⟧↵", out)  # ...through its stop token, not the newline after
    assert "What·shape·is·this?" in out
    assert "summary · train split · family qwen2_vl" in out and "✗" not in out  # summary after the rows

    single = inspect(cfg, "--rows", "5", "--ids", "--no-summary").stdout
    assert f"row 5 · {data['shapes']}:6" in single and "summary" not in single
    assert re.search(r"<\|im_end\|>[₀-₉]+⟧↵[₀-₉]+", single)  # ids as subscripts

    evaluated = inspect(cfg, "--split", "eval", "--rows", "1").stdout
    assert f"row 1 · {data['shapes_eval']}:2" in evaluated and "summary · eval split" in evaluated

    colour = inspect(cfg, "--rows", "0", "--no-summary", env={"FORCE_COLOR": "1", "COLORTERM": "truecolor"})
    assert "\x1b[" in colour.stdout and "48;2;143;214;148" in colour.stdout and "⟦" not in colour.stdout
    basic = inspect(cfg, "--rows", "0", "--no-summary",
                    env={"FORCE_COLOR": "1", "COLORTERM": None, "TERM": "xterm"})
    assert "\x1b[30;42m" in basic.stdout  # 16 colours: black on green, not a pale grey


def test_terminal_glm_tool_call(tmp_path, tiny_dir, data) -> None:
    cfg = config(tmp_path, tiny_dir("glm4_moe"), data["glm"])
    out = inspect(cfg, "--rows", "0").stdout
    # the assistant's stop token <|observation|> opens the tool message, and is trained there
    assert " tool #2  ⟦<|observation|>⟧↵" in out
    assert "<tool_call>get_weather" in out and "⟦↵\n<think></think>↵\n<tool_call>" in out
    assert "Paris.<|user|>⟧" in out  # the final stop vlmtrain appends is trained
    assert "family glm4_moe" in out and "appended after the final turn <|user|>" in out


# ---------------------------------------------------------------- JSON Lines == the collator's labels


@pytest.mark.parametrize("family,source", [("qwen2_vl", "shapes"), ("glm4_moe", "glm")])
def test_json_is_the_training_mask(tmp_path, tiny_dir, data, family, source) -> None:
    from vlmtrain.collate import IGNORE, CompletionOnlyCollator
    from vlmtrain.config import load_config
    from vlmtrain.data.split import load_split
    from vlmtrain.mask.pipeline import make_renderer

    cfg_path = config(tmp_path, tiny_dir(family), data[source])
    rows = json_rows(cfg_path, "--rows", "all")
    assert len(rows) == len(data[source].read_text().splitlines())
    for row in rows:
        n = len(row["input_ids"])
        assert all(len(row[k]) == n for k in TOKEN_KEYS) and set(ROW_KEYS) == set(row)
        assert row["num_trained"] == sum(row["loss_mask"]) > 0 and row["family"] == family
        assert re.fullmatch(rf"{re.escape(str(data[source]))}:{row['index'] + 1}", row["row"])

    cfg = load_config(cfg_path)
    renderer = make_renderer(cfg)
    dataset = load_split(cfg, renderer, "train")  # what `fit` trains on
    collator = CompletionOnlyCollator(renderer.chat, renderer.media_ids)
    batch = collator([dataset[i] for i in range(len(dataset))])
    by_where = {row["row"]: row for row in rows}
    for i, where in enumerate(dataset["where"]):
        row = by_where[where]
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        labels = batch["labels"][i, :n].numpy()
        assert labels[0] == IGNORE
        assert ((labels != IGNORE)[1:] == np.asarray(row["loss_mask"], dtype=bool)[1:]).all(), where
        on = labels != IGNORE
        assert (labels[on] == np.asarray(row["input_ids"])[on]).all()

    if family == "qwen2_vl":
        assert "media" in rows[0]["kind"] and not any(
            m for m, k in zip(rows[0]["loss_mask"], rows[0]["kind"], strict=True) if k == "media")
        assert rows[0]["media"] and rows[0]["trained_by_role"] == {"assistant": rows[0]["num_trained"]}
    else:
        tool_row = rows[0]
        stop = tool_row["tokens"].index("<|observation|>")
        assert tool_row["role"][stop] == "tool" and tool_row["ends_turn"][stop] == 1
        assert tool_row["loss_mask"][stop] == 1 and tool_row["sampled"][stop] == 1
        assert trained_text(tool_row).endswith("It is sunny in Paris.<|user|>")


def test_role_boundaries_override(tmp_path, tiny_dir, data) -> None:
    boundaries = [{"role": "user", "start": "<|im_start|>user\n", "end": "<|im_end|>"},
                  {"role": "assistant", "start": "<|im_start|>assistant\n", "end": "<|im_end|>"}]
    cfg = config(tmp_path, tiny_dir("qwen2_vl"), data["shapes"], mask={"role_boundaries": boundaries})
    row = json_rows(cfg, "--rows", "0")[0]
    assert row["attribution"] == "role_boundaries" and row["roles"] == ["user", "assistant"]
    assert row["role"][0] == "" and row["message_index"][0] == -1  # the system block matches no boundary
    assert trained_text(row).endswith(".<|im_end|>") and "\n" not in trained_text(row)
    out = inspect(cfg, "--rows", "0").stdout
    assert " (template)  <|im_start|>system" in out and "(attribution: mask.role_boundaries)" in out
    assert "assistant start <|im_start|>assistant" in out  # the markers actually used


# ---------------------------------------------------------------- summary and --strict


def test_strict_names_planted_problems_qwen(tmp_path, tiny_dir, data) -> None:
    planted = data["planted_qwen"]
    cfg = config(tmp_path, tiny_dir("qwen2_vl"), planted, mask={"train_on_eos": "none"})
    result = inspect(cfg, "--summary", "--strict", "--rows", "1", code=1)
    out = result.stdout
    shown = out.split("row 1 ·")[1].split("summary ·")[0]
    assert "trained 0 (0%)" in shown and "⟦" not in shown  # the row is shown, and nothing in it is trained
    assert "⚠ rows with zero trained tokens" in out
    assert re.search(rf"✗ rows with zero trained tokens: 1 — fit stops \(mask.on_empty: error\)\n"
                     rf"\s+{re.escape(str(planted))}:2:", out)
    assert "✗ assistant turns whose stop token is not trained: 2 — fit trains these rows as they are\n" in out
    assert f"{planted}:1: the stop token ending assistant turn (message 1) is not trained" in out
    assert re.search(rf"✗ image / placeholder mismatches: 1 — .*\n\s+{re.escape(str(planted))}:3:", out)
    assert "--strict: 4 problem(s)" in result.stderr

    too_long = inspect(cfg, "--no-summary", "--strict", "--rows", "0", "data.max_length=10",
                       "mask.train_on_eos=turn", code=1)
    assert f"✗ rows longer than data.max_length: 2 — fit drops these rows (data.on_too_long: drop)\n    " \
           f"{planted}:1: " in too_long.stdout


def test_strict_names_planted_problems_glm(tmp_path, tiny_dir, data) -> None:
    planted = data["planted_glm"]
    cfg = config(tmp_path, tiny_dir("glm4_moe"), planted, mask={"mode": "roles", "roles": ["assistant"]})
    result = inspect(cfg, "--format", "json", "--rows", "1", "--strict", code=1)
    row = json.loads(result.stdout)
    assert [p["code"] for p in row["problems"]] == ["untrained_stop"]
    where = re.escape(str(planted))
    err = result.stderr
    assert re.search(rf"✗ assistant turns whose stop token is not trained: 1 — .*\n    {where}:2: ", err)
    assert re.search(rf"✗ rows with zero trained tokens: 1 — .*\n    {where}:3: no assistant turn", err)
    broken = json.loads(inspect(cfg, "--format", "json", "--rows", "2").stdout)
    assert broken["row"] == f"{planted}:3" and "error" in broken and "input_ids" not in broken

    clean = config(tmp_path, tiny_dir("glm4_moe"), data["glm"])
    assert "✓ assistant turns whose stop token is not trained: 0" in inspect(clean, "--strict").stdout


# ---------------------------------------------------------------- HTML in a real browser

PROBE = """<script>
const spans = [...document.querySelectorAll('pre.tokens .t')];
const out = spans.map(s => [s.classList.contains('tr') ? 1 : 0, getComputedStyle(s).backgroundColor,
                            s.classList.contains('md') ? 1 : 0]);
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _browser_styles(chromium: Path, page: Path, tmp_path: Path) -> list[list]:
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                      encoding="utf-8")
    dom = subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chr'}", "--window-size=1200,2000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=60, check=True).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.parametrize("family,source", [("qwen2_vl", "shapes"), ("glm4_moe", "glm")])
def test_html_in_headless_chromium(chromium, tmp_path, tiny_dir, data, family, source) -> None:
    """Skips outside CI without chromium (the ``chromium`` fixture says how to install it); required in CI."""
    cfg = config(tmp_path, tiny_dir(family), data[source])
    page = tmp_path / "masks.html"
    inspect(cfg, "--format", "html", "-o", str(page), "--rows", "0:2")
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=|@import|url\(|<script", html), "the page must be self-contained"
    assert "legend" in html and f"family {family}" in html and "summary" in html
    rows = json_rows(cfg, "--rows", "0:2")

    styles = _browser_styles(chromium, page, tmp_path)
    trained = [bg for is_trained, bg, _ in styles if is_trained]
    assert len(trained) == sum(r["num_trained"] for r in rows)  # one highlighted span per trained token
    assert set(trained) <= TRAINED_BG
    assert all(bg not in TRAINED_BG for is_trained, bg, _ in styles if not is_trained)
    if family == "qwen2_vl":
        assert any(is_media for *_, is_media in styles)  # media runs present, collapsed, never highlighted
        assert len(styles) < sum(r["num_tokens"] for r in rows)
