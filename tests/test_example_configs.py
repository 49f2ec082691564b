"""Every config shipped in configs/ loads and validates: examples that users copy must not rot."""

from pathlib import Path

import pytest

from vlmtrain.config import load_config, validate_for_fit

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path: Path) -> None:
    cfg = load_config(path)
    validate_for_fit(cfg)
    assert cfg.training.output_dir


def test_configs_exist() -> None:
    assert {"quickstart.yaml", "qwen2_5_vl_3b_lora.yaml", "smolvlm_full.yaml"} <= {p.name for p in CONFIGS}
