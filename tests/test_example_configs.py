"""Every config shipped in configs/ is one a user can copy: it loads, its model resolves to a registered family
(or declares usable role_boundaries), its data sources load as written, and fit's checks pass; the ones whose
data is local lint clean with `vlmtrain preprocess --check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from typer.testing import CliRunner

from vlmtrain.cli import app
from vlmtrain.config import load_config, validate_for_fit
from vlmtrain.config.schema import DataSource
from vlmtrain.embedded import PREFIX
from vlmtrain.families import find_family
from vlmtrain.render.boundaries import resolve_boundaries
from vlmtrain.tiny import TINY_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# The model_type each hub model's published config.json declares; tests are offline and cannot read it. A new
# example on a hub model fails below until its model_type is stated here.
HUB_MODEL_TYPES = {
    "Qwen/Qwen2.5-VL-3B-Instruct": "qwen2_5_vl",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "HuggingFaceTB/SmolVLM-256M-Instruct": "idefics3",
}
EMBEDDED_DATA = {f"{PREFIX}shapes"}
ROLE_BOUNDARY_TOKENIZER = "mistral3"  # the examples' own role_boundaries describe a Mistral-style template


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _model_type(name: str) -> str | None:
    if name.startswith(PREFIX):
        family = name[len(PREFIX):]
        assert family in TINY_FAMILIES, f"model.name_or_path {name!r}: no tiny build of that family"
        return family
    if (ROOT / name / "config.json").is_file():
        return json.loads((ROOT / name / "config.json").read_text())["model_type"]
    return HUB_MODEL_TYPES.get(name)


def _sources(cfg) -> list:
    return [*cfg.data.train, *cfg.data.eval]


def _has_local_data(cfg) -> bool:
    return all(str(s.path) in EMBEDDED_DATA or (ROOT / str(s.path)).exists() for s in _sources(cfg))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_model_resolves_to_a_family_or_declares_role_boundaries(path: Path, tiny_dir) -> None:
    cfg = load_config(path)
    if len(cfg.mask.role_boundaries):
        tokenizer = AutoTokenizer.from_pretrained(tiny_dir(ROLE_BOUNDARY_TOKENIZER))
        boundaries = resolve_boundaries(OmegaConf.to_container(cfg.mask.role_boundaries), tokenizer)
        assert {b.role for b in boundaries} >= {"user", "assistant"}
        assert all(len(b.start) == 1 and (b.end is None or len(b.end) == 1) for b in boundaries), \
            "each marker should be one special token of the template it describes"
        return
    name = str(cfg.model.name_or_path)
    model_type = _model_type(name)
    assert model_type is not None, f"{path.name}: state the published model_type of {name!r} in HUB_MODEL_TYPES"
    family = find_family(str(cfg.model.family), model_type)
    assert family is not None, f"{path.name}: {name!r} (model_type {model_type!r}) matches no registered family"
    assert family.verified, f"{path.name}: an example should use a family verified by the conformance tests"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_data_sources_load_as_written(path: Path) -> None:
    cfg, raw = load_config(path), _raw(path)
    fields = set(DataSource.__dataclass_fields__)
    written = [*raw["data"].get("train", []), *raw["data"].get("eval", [])]
    assert written, f"{path.name}: no data sources"
    for given, loaded in zip(written, _sources(cfg), strict=True):
        assert set(given) <= fields, set(given) - fields
        assert {k: loaded[k] for k in given} == given  # nothing the user wrote is dropped or rewritten
        if str(loaded.path).startswith(PREFIX):
            assert str(loaded.path) in EMBEDDED_DATA


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_fit_validation_passes(path: Path) -> None:
    validate_for_fit(load_config(path))


@pytest.mark.parametrize("path", [p for p in CONFIGS if _has_local_data(load_config(p))], ids=lambda p: p.name)
def test_local_data_lints_clean(path: Path) -> None:
    result = CliRunner().invoke(app, ["preprocess", str(path), "--check"])
    assert result.exit_code == 0, result.output


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "qwen2_5_vl_3b_lora.yaml", "smolvlm_full.yaml"} <= names
    assert any(len(_raw(p).get("mask", {}).get("role_boundaries", [])) for p in CONFIGS)
