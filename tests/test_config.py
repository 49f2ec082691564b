"""Config loading: schema defaults, merging, interpolation, and the one-line errors users see."""

from __future__ import annotations

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
    assert cfg.data.train[1].format == "conversations"  # schema defaults fill the new item


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
