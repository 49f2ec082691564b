"""Config loading: schema defaults, merging, interpolation, and the one-line errors users see."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vlmtrain.config import ConfigError, load_config, to_yaml, validate_for_fit

MINIMAL = """
model:
  name_or_path: /models/tiny
data:
  train:
    - path: data/train.jsonl
      image_dir: data/images
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def config_error(path: Path | None, overrides: tuple[str, ...] = ()) -> str:
    """The ConfigError message, checked to be printable as a single `error: ...` line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_load() -> None:
    cfg = load_config(None)
    assert OmegaConf.is_missing(cfg.model, "name_or_path")
    assert cfg.adapter.type == "none" and cfg.adapter.r == 16
    assert cfg.data.train == [] and cfg.data.template_date == "2024-07-26"
    assert cfg.data.max_image_pixels == 178956970
    assert cfg.mask.mode == "sampled" and list(cfg.mask.roles) == ["assistant"]
    assert cfg.training.learning_rate == 2e-4 and cfg.training.report_to == "none"
    assert cfg.launch.rdzv_backend == "c10d"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "adapter: {type: lora, r: 4}\n")
    cfg = load_config(
        path,
        [
            "adapter.r=8",
            "training.learning_rate=1e-4",
            "training.warmup_steps=10",  # not in the default training dict
            "data.train.0.path=other.jsonl",
            "data.train[1].path=second.jsonl",  # index == length appends
        ],
    )
    assert cfg.adapter.type == "lora" and cfg.adapter.r == 8
    assert cfg.training.learning_rate == 1e-4 and cfg.training.warmup_steps == 10
    assert [s.path for s in cfg.data.train] == ["other.jsonl", "second.jsonl"]
    assert cfg.data.train[0].image_dir == "data/images"
    assert cfg.data.train[1].format == "auto"  # schema defaults fill the new item


def test_interpolation_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMTRAIN_TEST_ROOT", "/srv/models")
    monkeypatch.setenv("VLMTRAIN_TEST_LR", "3e-5")
    path = write(
        tmp_path,
        """
        model: {name_or_path: "${oc.env:VLMTRAIN_TEST_ROOT}/tiny"}
        data: {cache_dir: "${training.output_dir}/cache"}
        training: {output_dir: out/a, learning_rate: "${oc.env:VLMTRAIN_TEST_LR}"}
        """,
    )
    cfg = load_config(path)
    assert cfg.model.name_or_path == "/srv/models/tiny"
    assert cfg.data.cache_dir == "out/a/cache"
    assert cfg.training.learning_rate == pytest.approx(3e-5)  # the env string became SFTConfig's float
    cfg.data.cache_dir = "${training.output_dir}/later"  # set after loading: still resolved
    assert "cache_dir: out/a/later" in to_yaml(cfg) and "${" not in to_yaml(cfg)


def test_interpolation_error_names_key(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {cache_dir: '${training.no_such_key}/x'}\n")
    message = config_error(path)
    assert str(path) in message and "data.cache_dir" in message and "no_such_key" in message


@pytest.mark.parametrize(
    ("text", "key_path", "suggestion"),
    [
        ("modle: {name_or_path: x}\n", "modle", "model"),
        ("model: {dtyp: auto}\n", "model.dtyp", "dtype"),
        ("data: {train: [{path: a, imgdir: b}]}\n", "data.train[0].imgdir", "image_dir"),
        (
            "mask: {role_boundaries: [{role: r, strat: s, end: null}]}\n",
            "mask.role_boundaries[0].strat",
            "start",
        ),
        ("training: {learnig_rate: 0.1}\n", "training.learnig_rate", "learning_rate"),
    ],
)
def test_unknown_key_suggests(tmp_path: Path, text: str, key_path: str, suggestion: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    assert f"'{key_path}'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_key_in_override_suggests() -> None:
    message = config_error(None, ("data.train.0.pth=x",))
    assert "data.train.0.pth=x" in message and "'data.train[0].pth'" in message
    assert "did you mean 'path'?" in message


@pytest.mark.parametrize(
    ("text", "key_path", "value", "expected"),
    [
        ("adapter: {r: eight}\n", "adapter.r", "'eight'", "int"),
        ("model: {trust_remote_code: maybe}\n", "model.trust_remote_code", "'maybe'", "bool"),
        ("data: {train: [{path: a, weight: heavy}]}\n", "data.train[0].weight", "'heavy'", "float"),
        ("mask: {roles: assistant}\n", "mask.roles", "'assistant'", "list"),
        ("training: {learning_rate: fast}\n", "training.learning_rate", "'fast'", "float"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key_path: str, value: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message and key_path in message and value in message
    assert f"expected {expected}" in message or f"expected a {expected}" in message


def test_bad_enum_value(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "model: {dtype: bf16}\n"))
    assert "model.dtype" in message and "'bf16'" in message
    assert "auto, float32, bfloat16, float16" in message
    assert "did you mean 'bfloat16'?" in message
    message = config_error(None, ("data.train.0.path=a", "data.train.0.format=pretrian"))
    assert "data.train[0].format" in message and "did you mean 'pretrain'?" in message


def test_axolotl_knobs_set_mode() -> None:
    cfg = load_config(None, ["mask.train_on_inputs=true"])
    assert cfg.mask.mode == "all"
    cfg = load_config(None, ["mask.roles_to_train=[user, assistant]"])
    assert cfg.mask.mode == "roles" and list(cfg.mask.roles) == ["user", "assistant"]
    cfg = load_config(None, ["mask.train_on_inputs=false"])
    assert cfg.mask.mode == "sampled"


@pytest.mark.parametrize(
    "overrides",
    [
        ("mask.train_on_inputs=true", "mask.mode=roles"),
        ("mask.train_on_inputs=true", "mask.mode=sampled"),  # explicit, though equal to the default
        ("mask.roles_to_train=[user]", "mask.mode=all"),
        ("mask.roles_to_train=[user]", "mask.roles=[assistant]"),
        ("mask.train_on_inputs=true", "mask.roles_to_train=[user]"),
    ],
)
def test_axolotl_knob_conflicts(overrides: tuple[str, ...]) -> None:
    message = config_error(None, overrides)
    assert "mask." in message and ("contradict" in message or "set only one" in message)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert config_error(path) == f"config file not found: {path}"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  name_or_path: x\nadapter: {r: 8\ndata: {}\n")
    message = config_error(path)
    assert message.startswith(f"{path}:4:") and "invalid YAML" in message


def test_to_yaml_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMTRAIN_TEST_ROOT", "/srv")
    path = write(
        tmp_path,
        MINIMAL
        + """
mask:
  roles_to_train: [assistant, tool]
  role_boundaries: [{role: assistant, start: "<|im_start|>assistant\\n", end: eos_token}]
training: {output_dir: "${oc.env:VLMTRAIN_TEST_ROOT}/run", report_to: [tensorboard]}
""",
    )
    cfg = load_config(path, ["adapter.target_modules=[q_proj, v_proj]"])
    dumped = write(tmp_path, to_yaml(cfg), name="dumped.yaml")
    again = load_config(dumped)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert again.training.output_dir == "/srv/run" and again.mask.mode == "roles"


def test_validate_for_fit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.name_or_path"):
        validate_for_fit(load_config(None))
    with pytest.raises(ConfigError, match="data.train"):
        validate_for_fit(load_config(None, ["model.name_or_path=/m"]))
    validate_for_fit(load_config(write(tmp_path, MINIMAL)))


# ---------------------------------------------------------------- YAML booleans for string keys


def test_bool_words_on_command_line_take_the_typed_string() -> None:
    cfg = load_config(
        None,
        [
            "model.family=no",
            "training.save_strategy=no",  # HF's IntervalStrategy "no"
            "training.run_name=Off",
            "mask.roles_to_train=[assistant]",
            "data.train.0.path=a",
            "data.train.0.image_placeholder=yes",
        ],
    )
    assert cfg.model.family == "no" and cfg.training.save_strategy == "no" and cfg.training.run_name == "Off"
    assert cfg.data.train[0].image_placeholder == "yes"
    # keys that take a bool still read the word as one
    cfg = load_config(None, ["model.trust_remote_code=yes", "training.bf16=on", "training.resume_from_checkpoint=no"])
    assert cfg.model.trust_remote_code is True and cfg.training.bf16 is True
    assert cfg.training.resume_from_checkpoint is False


def test_bool_words_in_yaml_take_the_written_string(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        model: {family: no}
        data: {train: [{path: a, image_placeholder: Off}]}
        training: {save_strategy: no, bf16: no}
        """,
    )
    cfg = load_config(path)
    assert cfg.model.family == "no" and cfg.data.train[0].image_placeholder == "Off"
    assert cfg.training.save_strategy == "no" and cfg.training.bf16 is False


@pytest.mark.parametrize(
    ("text", "overrides", "key_path"),
    [
        ("model: {family: true}\n", (), "model.family"),
        ("training: {save_strategy: false}\n", (), "training.save_strategy"),
        (None, ("mask.roles=[no, assistant]",), "mask.roles[0]"),  # inside a list the word is not recovered
    ],
)
def test_explicit_bool_for_string_key_hints_quoting(
    tmp_path: Path, text: str | None, overrides: tuple[str, ...], key_path: str
) -> None:
    message = config_error(write(tmp_path, text) if text else None, overrides)
    assert key_path in message and "expected str" in message and "quote the value" in message


# ---------------------------------------------------------------- enum values owned by the schema


def test_mask_enum_errors_list_the_schema_values() -> None:
    from vlmtrain.config import schema

    message = config_error(None, ("mask.train_on_eos=turns",))
    assert "mask.train_on_eos" in message and ", ".join(schema.TRAIN_ON_EOS) in message
    assert "did you mean 'turn'?" in message
    message = config_error(None, ("mask.mode=sampeld",))
    assert ", ".join(schema.MODES) in message and "did you mean 'sampled'?" in message


# ---------------------------------------------------------------- training keys vlmtrain manages


@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        ("training: {max_length: 512}\n", "max_length", "set data.max_length"),
        ("training: {packing: true}\n", "packing", "remove it from the config"),
        ("training: {remove_unused_columns: true}\n", "remove_unused_columns", "remove it from the config"),
        ("training: {dataset_kwargs: {skip_prepare_dataset: false}}\n", "dataset_kwargs", "remove it"),
    ],
)
def test_managed_training_key_is_refused_at_load(tmp_path: Path, text: str, key: str, fix: str) -> None:
    path = write(tmp_path, MINIMAL + text)
    message = config_error(path)
    assert message.startswith(f"{path}: training.{key} is managed by vlmtrain") and fix in message


def test_managed_training_key_with_the_forced_value_is_accepted(tmp_path: Path) -> None:
    from vlmtrain.config import MANAGED_TRAINING_KEYS

    path = write(tmp_path, MINIMAL + "training: {packing: false, max_length: null}\n")
    cfg = load_config(path)
    assert cfg.training.packing is MANAGED_TRAINING_KEYS["packing"] is False
    assert cfg.training.max_length is None
    assert "training.max_length=4096" in config_error(path, ("training.max_length=4096",))


# ---------------------------------------------------------------- HF-style resume_from_checkpoint and fsdp


@pytest.mark.parametrize(
    ("resume", "fsdp"),
    [(True, True), ("last", "full_shard auto_wrap"), ("outputs/run/checkpoint-20", ["full_shard", "auto_wrap"]),
     (False, False)],
)
def test_resume_and_fsdp_accept_hf_values(tmp_path: Path, resume: object, fsdp: object) -> None:
    text = OmegaConf.to_yaml({"training": {"resume_from_checkpoint": resume, "fsdp": fsdp}})
    cfg = load_config(write(tmp_path, MINIMAL + text))
    assert cfg.training.resume_from_checkpoint == resume
    fsdp_value = cfg.training.fsdp
    assert (list(fsdp_value) if OmegaConf.is_list(fsdp_value) else fsdp_value) == fsdp


@pytest.mark.parametrize(
    ("text", "key_path", "expected"),
    [
        ("training: {resume_from_checkpoint: 3}\n", "training.resume_from_checkpoint", "bool"),
        ("training: {fsdp: {full_shard: true}}\n", "training.fsdp", "list of str"),
        ("training: {fsdp: [1, 2]}\n", "training.fsdp", "list of str"),
    ],
)
def test_resume_and_fsdp_refuse_wrong_types(tmp_path: Path, text: str, key_path: str, expected: str) -> None:
    message = config_error(write(tmp_path, text))
    assert f"{key_path}: expected" in message and expected in message


# ---------------------------------------------------------------- QLoRA needs CUDA and bitsandbytes


def fit_error(cfg: object) -> str:
    with pytest.raises(ConfigError) as info:
        validate_for_fit(cfg)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_qlora_without_bitsandbytes_or_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    cfg = load_config(write(tmp_path, MINIMAL + "adapter: {type: qlora}\n"))
    real_find_spec = importlib.util.find_spec
    installed = {"bitsandbytes": False}

    def find_spec(name: str, *args: object) -> object:
        if name == "bitsandbytes":
            return object() if installed["bitsandbytes"] else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = fit_error(cfg)
    assert message.startswith("adapter.type: qlora needs bitsandbytes") and "pip install" in message
    assert "adapter.type: lora" in message
    installed["bitsandbytes"] = True
    message = fit_error(cfg)
    assert message.startswith("adapter.type: qlora needs a CUDA GPU") and "adapter.type: lora" in message
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate_for_fit(cfg)  # both present: nothing to refuse
    validate_for_fit(load_config(write(tmp_path, MINIMAL + "adapter: {type: lora}\n")))


# ---------------------------------------------------------------- one cache root


def test_sftconfig_field_cache_lives_under_vlmtrain_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmtrain.config import training

    real = training.sft_field_kinds()
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    monkeypatch.setenv("VLMTRAIN_HOME", str(home))
    monkeypatch.setenv("VLMTRAIN_CACHE_DIR", str(elsewhere))  # the old second root: no longer read
    cache = training.field_cache_file()
    assert cache.parent == home
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({**real, "vlmtrain_probe_field": ["int"]}))
    training.sft_field_kinds.cache_clear()
    try:
        cfg = load_config(None, ["training.vlmtrain_probe_field=3"])  # known only to the cached file
        assert cfg.training.vlmtrain_probe_field == 3
    finally:
        training.sft_field_kinds.cache_clear()
    assert not elsewhere.exists()


# ---------------------------------------------------------------- the CLI: one line, exit 2, no traceback


@pytest.mark.parametrize(
    ("text", "overrides", "named"),
    [
        (MINIMAL + "training: {max_length: 512}\n", [], "training.max_length"),
        (MINIMAL, ["adapter.rank=8"], "adapter.rank"),
    ],
)
def test_cli_fit_config_mistake_is_one_line(tmp_path: Path, text: str, overrides: list[str], named: str) -> None:
    import subprocess
    import sys

    path = write(tmp_path, text)
    result = subprocess.run(
        [sys.executable, "-m", "vlmtrain", "fit", str(path), *overrides],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
