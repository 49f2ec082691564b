"""``vlmtrain generate``: load a finished run, build its prompts, generate, print the answers."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from vlmtrain.generate.errors import GenerateError
from vlmtrain.generate.prompt import PromptEncoder, prompt_from_args, prompts_from_file
from vlmtrain.generate.run import Answer, generate, text_streamer
from vlmtrain.generate.rundir import load_model, locate, read_run


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_generate(target: str, *, prompt: str | None = None, images: list[str] | None = None,
                 system: str | None = None, input_path: str | None = None, image_dir: str | None = None,
                 max_new_tokens: int | None = None, stream: bool = False, device: str | None = None,
                 out: TextIO | None = None) -> list[Answer]:
    """Answers for one ``--prompt`` (plain text out) or every ``--input`` row (JSON Lines out)."""
    out = out or sys.stdout
    if (prompt is None) == (input_path is None):
        raise GenerateError("give exactly one of --prompt TEXT (with --image PATH ...) or --input ROWS")
    if input_path is not None and (images or system):
        raise GenerateError("--image and --system go with --prompt; --input rows carry their own images and "
                            "system messages")
    single = prompt_from_args(prompt, list(images or []), system) if prompt is not None else None
    run = read_run(locate(target))
    model = load_model(run, device=device or default_device())
    encoder = PromptEncoder(run.render_cfg())
    prompts = [single] if single is not None else prompts_from_file(run.cfg, input_path, image_dir)
    if not prompts:
        raise GenerateError(f"--input {input_path}: no rows to generate for")
    answers = []
    for p in prompts:  # one at a time, so answers are printed as they are ready
        if stream and single is None:
            print(f"== {p.where}", file=out, flush=True)
        answer = generate(model, encoder, [p], max_new_tokens=max_new_tokens,
                          streamer=text_streamer(encoder) if stream else None)[0]
        answers.append(answer)
        _print(answer, out, stream=stream, batch=single is None)
    return answers


def _print(answer: Answer, out: TextIO, *, stream: bool, batch: bool) -> None:
    if stream:  # the streamer already printed the text (and its final newline)
        pass
    elif batch:
        print(json.dumps(answer.record(), ensure_ascii=False), file=out, flush=True)
    else:
        print(answer.text, file=out, flush=True)
    if answer.finish == "length" and not (batch and not stream):
        print(f"(stopped after {answer.tokens} new tokens, the --max-new-tokens limit, before a stop token)",
              file=sys.stderr, flush=True)

