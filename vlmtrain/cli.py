"""The ``vlmtrain`` command line (Typer): fit, preprocess, inspect-mask, families, version."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    help="Fine-tune vision-language models on exactly the tokens they sample. One YAML file describes a run; "
    "key=value arguments override it (OmegaConf dot-list, e.g. training.learning_rate=1e-4 adapter.r=8).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[str, typer.Argument(help="Run config (YAML).")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="Dot-list overrides: key=value ...")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(config: str, overrides: list[str] | None) -> Any:
    from vlmtrain.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail(str(err))


def _user_errors() -> type[BaseException]:
    """Errors that are the user's to fix: printed as one line, no traceback (every one derives from this base)."""
    from vlmtrain.errors import VlmtrainError

    return VlmtrainError


@app.command()
def fit(
    config: ConfigArg,
    overrides: OverridesArg = None,
    nproc_per_node: Annotated[int | None, typer.Option(help="Processes per node (re-launches via torchrun).")] = None,
    nnodes: Annotated[int | None, typer.Option(help="Number of nodes.")] = None,
    node_rank: Annotated[int | None, typer.Option(help="This node's rank.")] = None,
    master_addr: Annotated[str | None, typer.Option(help="Rendezvous host (static).")] = None,
    master_port: Annotated[int | None, typer.Option(help="Rendezvous port (static).")] = None,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="host:port for c10d rendezvous.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train (full, LoRA or QLoRA) on one device, or many through torchrun."""
    from vlmtrain.launch import needs_launch, relaunch
    from vlmtrain.log import setup_logging

    flags = {"nproc_per_node": nproc_per_node, "nnodes": nnodes, "node_rank": node_rank,
             "master_addr": master_addr, "master_port": master_port, "rdzv_endpoint": rdzv_endpoint}
    overrides = [*(overrides or []), *(f"launch.{k}={v}" for k, v in flags.items() if v is not None)]
    cfg = _load(config, overrides)
    from vlmtrain.config import ConfigError, validate_for_fit

    try:
        validate_for_fit(cfg)
    except ConfigError as err:
        _fail(str(err))
    if needs_launch(cfg.launch, cfg.training):
        raise typer.Exit(relaunch(cfg.launch, [config, *overrides]))
    setup_logging(verbose)
    from vlmtrain.train.fit import fit as run_fit

    try:
        result = run_fit(cfg)
    except _user_errors() as err:
        _fail(str(err), getattr(err, "exit_code", 2))  # a preempted run exits 3: saved, resumable
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"steps: {result.steps}  loss: {result.first_loss:.4f} -> {result.final_loss:.4f}  "
                   f"trained tokens/epoch: {result.trained_tokens_per_epoch}  saved: {result.output_dir}")


@app.command()
def preprocess(
    config: ConfigArg,
    overrides: OverridesArg = None,
    num_proc: Annotated[int, typer.Option(help="Worker processes for rendering.")] = 1,
    check: Annotated[bool, typer.Option("--check", help="Validate every row without writing a cache.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Render, tokenize, mask and length-check every row into the fingerprinted cache that fit reuses."""
    from vlmtrain.data.preprocess import run_preprocess
    from vlmtrain.log import setup_logging

    cfg = _load(config, overrides)
    setup_logging(verbose)
    try:
        code = run_preprocess(cfg, num_proc=num_proc, check=check)
    except _user_errors() as err:
        _fail(str(err))
    raise typer.Exit(code)


@app.command("inspect-mask")
def inspect_mask(
    config: ConfigArg,
    overrides: OverridesArg = None,
    rows: Annotated[str | None, typer.Option(help="Rows to show: 17, 0:5, 3,8,9 or all (default 0:3, none "
                                             "with --summary).")] = None,
    split: Annotated[str, typer.Option(help="train or eval.")] = "train",
    fmt: Annotated[str, typer.Option("--format", help="terminal, json or html.")] = "terminal",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="Also print token ids.")] = False,
    summary: Annotated[bool | None, typer.Option("--summary/--no-summary",
                                                 help="Scan the whole split and report problems.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero if the summary finds problems.")] = False,
) -> None:
    """Show, token by token, what the loss trains on and why; lint the whole dataset."""
    from vlmtrain.inspect.command import run_inspect
    from vlmtrain.log import setup_logging

    cfg = _load(config, overrides)
    setup_logging(False)
    try:
        code = run_inspect(cfg, rows=rows, split=split, fmt=fmt, output=output, show_ids=ids, summary=summary,
                           strict=strict)
    except _user_errors() as err:
        _fail(str(err))
    raise typer.Exit(code)


@app.command()
def families(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
             probe: Annotated[str | None, typer.Option("--probe", help="A model folder: print the family it "
                                                      "resolves to, derived by probing when unregistered.")] = None,
             ) -> None:
    """List the registered model families: model types, stop tokens, media tokens."""
    from dataclasses import asdict

    from vlmtrain.families import FAMILIES

    if probe is not None:
        from vlmtrain.mask.derive import probe_model

        try:
            typer.echo("\n".join(probe_model(probe)))
        except _user_errors() as err:
            _fail(str(err))
        return
    if as_json:
        typer.echo(json.dumps([asdict(f) for f in FAMILIES], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("family", "model types", "stop tokens", "stop placement", "media tokens", "verified")
    for f in FAMILIES:
        table.add_row(f.name, ", ".join(f.model_types), " ".join(f.stop_tokens), f.stop_placement,
                      " ".join(f.media_tokens + f.media_token_patterns) or "-", "yes" if f.verified else "NO")
    Console().print(table)


@app.command()
def version() -> None:
    """Print vlmtrain's version and the versions of the libraries it drives."""
    import importlib.metadata as md

    from vlmtrain import __version__

    parts = [f"vlmtrain {__version__}"]
    for name in ("torch", "transformers", "trl", "peft", "datasets"):
        try:
            parts.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            parts.append(f"{name} missing")
    typer.echo("  ".join(parts))



RunArg = Annotated[str, typer.Argument(help="A fit run's output directory (or the config it was trained with).")]


@app.command()
def generate(
    run: RunArg,
    prompt: Annotated[str | None, typer.Option(help="The question to ask (one user turn).")] = None,
    image: Annotated[list[str] | None, typer.Option(help="An image for the prompt; repeat for several.")] = None,
    system: Annotated[str | None, typer.Option(help="A system message before the prompt.")] = None,
    input_path: Annotated[str | None, typer.Option("--input", help="Rows to answer (any format fit reads); a "
                                                   "final assistant turn is the reference and is regenerated. "
                                                   "Prints JSON Lines.")] = None,
    image_dir: Annotated[str | None, typer.Option(help="Folder --input image paths are relative to.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on new tokens (default: the model's "
                                                       "generation_config, else 256).")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they are generated.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if present).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ask the trained model: the run's own template, family stop tokens and generation_config."""
    from vlmtrain.log import setup_logging

    setup_logging(verbose)
    from vlmtrain.generate.command import run_generate

    try:
        run_generate(run, prompt=prompt, images=image, system=system, input_path=input_path, image_dir=image_dir,
                     max_new_tokens=max_new_tokens, stream=stream, device=device)
    except _user_errors() as err:
        _fail(str(err))


@app.command()
def merge(
    run: RunArg,
    output: Annotated[str | None, typer.Option(help="Where to write the merged model (default RUN/merged).")] = None,
    dtype: Annotated[str, typer.Option(help="auto (the base checkpoint's), float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="Device to merge and check on.")] = "cpu",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Merge a run's LoRA adapter into its base model; checks the merged logits equal the adapter model's."""
    from vlmtrain.log import setup_logging

    setup_logging(verbose)
    from vlmtrain.generate.merge import merge_run

    try:
        result = merge_run(run, output, dtype=dtype, device=device)
    except _user_errors() as err:
        _fail(str(err))
    typer.echo(f"merged: {result.output}  dtype: {str(result.dtype).removeprefix('torch.')}  probe logits max "
               f"|diff| {result.max_abs_diff:.3g} (allowed {result.tolerance:.3g})")


@app.command("eval")
def eval_(
    run: RunArg,
    metric: Annotated[str, typer.Option(help="What to score generated answers by: cer (character error rate).")
                      ] = "cer",
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on new tokens per answer (default: the model's "
                                                       "generation_config, else 256).")] = None,
    max_rows: Annotated[int | None, typer.Option(help="Evaluate at most N rows of each data.eval source.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: cuda if present).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the report as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score a finished run on data.eval: token-weighted loss and CER of generated answers, per source and overall."""
    from vlmtrain.log import setup_logging

    setup_logging(verbose)
    from vlmtrain.eval.command import run_eval

    try:
        report = run_eval(run, metric=metric, device=device, max_new_tokens=max_new_tokens, max_rows=max_rows)
    except _user_errors() as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
