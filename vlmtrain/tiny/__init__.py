"""Tiny, offline, random models with real chat templates, for tests and quick starts.

`build_tiny(family, out_dir)` trains a ~1k-vocab tokenizer locally, gives it the family's real special
tokens and chat template, wraps it in the family's real processor with tiny image sizes and (optionally)
saves a randomly initialised 2-layer model. `make_shapes_dataset` writes a small image+text dataset that
such a model can overfit.
"""

from .build import TINY_FAMILIES, build_tiny
from .shapes import make_shapes_dataset
from .templates import template_source

__all__ = ["TINY_FAMILIES", "build_tiny", "make_shapes_dataset", "template_source"]
