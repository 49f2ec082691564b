"""`vlmtrain preprocess` and the fingerprinted cache: the key covers every input, writes are atomic and
locked (a killed build is never served, concurrent builds end with one valid cache), `--check` writes
nothing, and `fit` reuses the cache."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.config import load_config
from vlmtrain.data import cache as cache_mod
from vlmtrain.data import fingerprint
from vlmtrain.data.cache import MARKER, CacheEntry, load_or_build
from vlmtrain.data.fingerprint import cache_key, key_components
from vlmtrain.data.split import prepare_split, split_sources
from vlmtrain.mask.pipeline import make_renderer
from vlmtrain.tiny import make_shapes_dataset


@pytest.fixture(scope="module")
def qwen(tiny_dir: Callable[..., Path]) -> Path:
    return tiny_dir("qwen2_vl", with_model=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), rows=12)


@pytest.fixture(scope="module")
def big_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough rows that a build takes a few seconds (a window to kill it in)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("big_shapes"), rows=400)


def overrides(qwen: Path, data: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={qwen}",
        f"data.train.0.path={data}",
        f"data.cache_dir={cache}",
        "data.max_length=512",
        *extra,
    ]


def make_cfg(qwen: Path, data: Path, cache: Path, *extra: str) -> Any:
    return load_config(None, overrides(qwen, data, cache, *extra))


def key_of(cfg: Any, renderer: Any) -> str:
    root = Path(cfg.data.cache_dir)
    return cache_key(key_components(cfg, renderer, split_sources(cfg, "train"), str(root / "hf")))


def entries(cache: Path) -> list[str]:
    return (
        sorted(
            p.name
            for p in cache.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in ("media", "hf")
        )
        if cache.exists()
        else []
    )


def write_config(path: Path, qwen: Path, data: Path, cache: Path) -> Path:
    path.write_text(
        f"model: {{name_or_path: {qwen}}}\n"
        f"data: {{train: [{{path: {data}}}], cache_dir: {cache}, max_length: 512}}\n"
    )
    return path


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLMTRAIN_HOME": str(tmp_path / "home"),
    }


# ---------------------------------------------------------------------------------------------- fingerprint


def test_same_inputs_same_key(qwen, shapes, tmp_path):
    cfg = make_cfg(qwen, shapes, tmp_path / "c")
    first = key_of(cfg, make_renderer(cfg))
    again = make_cfg(qwen, shapes, tmp_path / "c")
    assert key_of(again, make_renderer(again)) == first
    assert len(first) == fingerprint.KEY_LENGTH


CONFIG_CHANGES = [
    ("mask", "mask.train_on_eos=all"),
    ("max_length", "data.max_length=1024"),
    ("template_date", "data.template_date=2025-01-01"),
    ("row policy", "data.on_bad_row=skip"),
    ("pixel cap", "data.max_image_pixels=100000"),
    ("mixing seed", "data.seed=3"),
    ("source config", "data.train.0.weight=2"),
]


@pytest.mark.parametrize("change", [c[1] for c in CONFIG_CHANGES], ids=[c[0] for c in CONFIG_CHANGES])
def test_each_config_component_changes_the_key(qwen, shapes, tmp_path, change):
    cfg = make_cfg(qwen, shapes, tmp_path / "c")
    renderer = make_renderer(cfg)
    assert key_of(make_cfg(qwen, shapes, tmp_path / "c", change), renderer) != key_of(cfg, renderer)


def test_each_model_side_component_changes_the_key(qwen, shapes, tmp_path, monkeypatch):
    cfg = make_cfg(qwen, shapes, tmp_path / "c")
    renderer = make_renderer(cfg)
    seen = {key_of(cfg, renderer)}

    def changed(what: str) -> None:
        key = key_of(cfg, renderer)
        assert key not in seen, f"{what} did not change the key"
        seen.add(key)

    processor = renderer.chat.processing_class
    processor.chat_template = processor.chat_template + "{# edited #}"
    changed("chat template")
    processor.image_processor.size = dataclasses.replace(
        processor.image_processor.size, longest_edge=128 * 128
    )
    changed("image processor max pixels")
    processor.image_processor.merge_size = 1
    changed("image processor merge size")
    renderer.chat.tokenizer.add_tokens(["<brand_new_token>"])
    changed("tokenizer")
    family = renderer.family
    renderer.family = dataclasses.replace(
        family, family=dataclasses.replace(family.family, stop_tokens=("<x>",))
    )
    changed("family entry")
    monkeypatch.setattr(fingerprint, "CACHE_FORMAT_VERSION", fingerprint.CACHE_FORMAT_VERSION + 1)
    changed("cache format version")


def test_data_file_identity_and_content_hash(qwen, shapes, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(shapes.read_text())
    cfg = make_cfg(qwen, data, tmp_path / "c", f"data.train.0.image_dir={shapes.parent}")
    renderer = make_renderer(cfg)
    before = key_of(cfg, renderer)
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = key_of(cfg, renderer)
    assert touched != before  # mtime is part of the identity
    with data.open("a") as handle:
        handle.write("\n")
    assert key_of(cfg, renderer) not in (before, touched)  # size too

    hashed = make_cfg(
        qwen, data, tmp_path / "c", f"data.train.0.image_dir={shapes.parent}", "data.hash_data_files=true"
    )
    content_key = key_of(hashed, renderer)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    assert key_of(hashed, renderer) == content_key  # same bytes, same key
    data.write_text(shapes.read_text().replace("What shape", "Which shape"))
    assert key_of(hashed, renderer) != content_key


# --------------------------------------------------------------------------------------------------- cache


def test_preprocess_builds_then_hits(qwen, shapes, tmp_path):
    runner = CliRunner()
    config = write_config(tmp_path / "run.yaml", qwen, shapes, tmp_path / "cache")
    cold = runner.invoke(app, ["preprocess", str(config)])
    assert cold.exit_code == 0, cold.output
    assert "train: 12 rows kept, 0 dropped; trained tokens" in cold.output and "cache hit" not in cold.output
    cfg = load_config(str(config))
    key = key_of(cfg, make_renderer(cfg))
    assert entries(tmp_path / "cache") == [key]
    meta = json.loads((tmp_path / "cache" / key / MARKER).read_text())
    assert meta["key"] == key and meta["report"]["kept"] == 12
    warm = runner.invoke(app, ["preprocess", str(config)])
    assert warm.exit_code == 0 and f"train: cache hit {key}; 12 rows kept" in warm.output


def test_check_writes_nothing_and_fails_on_bad_rows(qwen, shapes, tmp_path):
    data = tmp_path / "bad.jsonl"
    lines = shapes.read_text().splitlines()
    lines[3] = lines[3].replace("images/0", "images/missing-0")
    data.write_text("\n".join([*lines, "{not json"]) + "\n")
    runner = CliRunner()
    argv = [
        "preprocess",
        str(write_config(tmp_path / "run.yaml", qwen, data, tmp_path / "cache")),
        "--check",
        f"data.train.0.image_dir={shapes.parent}",
    ]
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert (
        "missing image (1), first rows:" in result.output
        and f"{data}:4: image file not found" in result.output
    )
    assert f"{data}:13: malformed JSON" in result.output and "check failed: 2 row(s)" in result.output
    assert entries(tmp_path / "cache") == []
    skipping = runner.invoke(app, [*argv, "data.on_bad_row=skip"])
    assert (
        skipping.exit_code == 0
        and "check passed" in skipping.output
        and "11 rows kept, 2 dropped" in skipping.output
    )
    failing = runner.invoke(app, argv[:2] + argv[3:])  # without --check: the first bad row, one line
    assert failing.exit_code == 2 and failing.output.count("\n") == 1 and "error: " in failing.output


def test_num_proc_gives_identical_rows(qwen, shapes, tmp_path):
    cfg = make_cfg(qwen, shapes, tmp_path / "c")
    renderer = make_renderer(cfg)
    one = prepare_split(cfg, renderer, "train", check=True)
    serial = prepare_split(make_cfg(qwen, shapes, tmp_path / "a"), renderer, "train")
    parallel = prepare_split(make_cfg(qwen, shapes, tmp_path / "b"), renderer, "train", num_proc=2)
    assert one.report.kept == 12 and serial.key == parallel.key
    assert serial.dataset.to_dict() == parallel.dataset.to_dict()


def test_incomplete_entries_are_never_served(qwen, shapes, tmp_path):
    cfg = make_cfg(qwen, shapes, tmp_path / "c")
    renderer = make_renderer(cfg)
    key = key_of(cfg, renderer)
    root = tmp_path / "c"
    (root / key).mkdir(parents=True)  # e.g. a copy interrupted half-way: no marker
    (root / f".{key}.tmp-1-dead").mkdir()  # a killed build's temporary folder
    result = prepare_split(cfg, renderer, "train")
    assert not result.hit and result.key == key and len(result.dataset) == 12
    assert entries(root) == [key] and not list(root.glob(".*.tmp-*"))
    meta = json.loads((root / key / MARKER).read_text())
    meta["cache_format"] = -1
    (root / key / MARKER).write_text(json.dumps(meta))
    assert not prepare_split(cfg, renderer, "train").hit  # another format version is rebuilt


def test_other_local_ranks_wait_for_rank_zero(qwen, shapes, tmp_path, monkeypatch):
    entry = CacheEntry(tmp_path / "c", "k" * fingerprint.KEY_LENGTH)
    got: dict[str, Any] = {}

    def rank_one() -> None:
        got["result"] = load_or_build(entry, lambda _: pytest.fail("a non-zero rank must never build"))

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(cache_mod, "WAIT_TIMEOUT_S", 60.0)
    waiter = threading.Thread(target=rank_one)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not entry.is_valid()
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = make_cfg(qwen, shapes, tmp_path / "c")
    dataset = prepare_split(cfg, make_renderer(cfg), "train").dataset
    load_or_build(entry, lambda _: (dataset, {"split": "train"}))
    waiter.join(timeout=30)
    loaded, _, hit = got["result"]
    assert hit and len(loaded) == 12


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_killed_preprocess_leaves_nothing_a_later_run_accepts(qwen, big_shapes, tmp_path):
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "run.yaml", qwen, big_shapes, cache)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmtrain", "preprocess", str(config)],
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: any(cache.glob(".*.tmp-*/BUILDING")) or proc.poll() is not None, 240, "the build")
        time.sleep(0.5)  # mid-render
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert entries(cache) == [] and list(cache.glob(".*.tmp-*"))  # only the dead build's temporary folder
    cfg = load_config(str(config))
    result = prepare_split(cfg, make_renderer(cfg), "train")
    assert not result.hit and len(result.dataset) == 400  # rebuilt, not served
    assert entries(cache) == [result.key] and not list(cache.glob(".*.tmp-*"))


def test_concurrent_preprocess_runs_end_with_one_valid_cache(qwen, shapes, tmp_path):
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "run.yaml", qwen, shapes, cache)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vlmtrain", "preprocess", str(config)],
            env=cli_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    built = sum("built data cache" in err for _, err in outputs)
    hits = sum("cache hit" in out for out, _ in outputs)
    assert (built, hits) == (1, 1), outputs
    [key] = entries(cache)
    assert not list(cache.glob(".*.tmp-*"))
    assert len(CacheEntry(cache, key).load()) == 12  # both processes computed the same key


def test_fit_uses_the_cache(qwen, shapes, tmp_path, caplog):
    from vlmtrain.data.preprocess import run_preprocess
    from vlmtrain.train.fit import fit

    extra = (
        f"training.output_dir={tmp_path / 'run'}",
        "training.max_steps=2",
        "training.save_strategy='no'",
        "training.per_device_train_batch_size=2",
    )
    assert run_preprocess(make_cfg(qwen, shapes, tmp_path / "cache", *extra)) == 0
    [key] = entries(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="vlmtrain"):
        result = fit(make_cfg(qwen, shapes, tmp_path / "cache", *extra))
    assert result.steps == 2
    assert f"train: cache hit {key}" in caplog.text
    assert entries(tmp_path / "cache") == [key]
