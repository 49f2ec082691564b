"""The types of the tiny-model table (``specs.py``): one ``FamilySpec`` per registry family.

A spec is keyed by the registry family it builds (``Family.name``) and reads from the registry what the
registry already says (the model type, whether it is a VLM); constructing a spec for a name the registry does
not know, or one whose processor contradicts the registry's ``is_vlm``, is an error at import time.

What a spec adds is what a published hub model carries and the registry must not be trusted to restate: its
tokenizer's special tokens, the stop ids its ``generation_config.json`` lists, its template, and the
``TemplateTraits`` the conformance test needs to write conversations the template accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmtrain.families.family import Family
from vlmtrain.families.registry import lookup


@dataclass(frozen=True)
class Tok:
    """Placeholder for the id of a token string in a model config."""

    text: str


VOCAB = "__vocab_size__"  # placeholder for len(tokenizer) in a model config


@dataclass(frozen=True)
class TokenizerSpec:
    """The family's real special tokens; `named` become tokenizer attributes processors read."""

    style: Literal["byte_level", "metaspace"]
    eos: str
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    add_bos: bool = False  # the real tokenizer prepends bos on encode
    special: tuple[str, ...] = ()
    plain: tuple[str, ...] = ()  # added but not special (e.g. <think>, <tool_call> in Qwen)
    named: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessorSpec:
    cls: str  # transformers processor class
    image: tuple[str, Mapping[str, Any]]  # image processor class, kwargs
    video: tuple[str, Mapping[str, Any]] | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Other components the processor requires, by argument name (Qwen2.5-Omni's, Gemma 4's feature_extractor).
    parts: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class TemplateTraits:
    """What the family's real chat template accepts and does, as data for ``tests/test_conformance.py``.

    Not the stop tokens nor where the template writes them: the test reads the stops from the build's
    ``generation_config.json`` and derives their placement by rendering, so both stay a check of the registry.

    ``system``, ``assistant``: the content form the template reads for a system / assistant message (``list``
    of parts or ``str``; text families always get strings): Pixtral's and GLM-4.1V's print or concatenate the
    assistant content, so a list fails or renders as its Python repr. ``tools``: it renders tool calls and tool
    messages. ``refuses``: the conversation shapes of the conformance test (``alternation``,
    ``parallel_tools``, ...) the template itself rejects, each with a regex of its error. ``unsupported``: shapes
    the template renders without error but with no faithful place for a message (Pixtral's writes the system
    prompt only before the *last* user turn, so a conversation ending with an answer loses it), each with the
    reason. ``history_rewrites``: it renders an earlier assistant turn differently once a later user turn exists
    (it drops the reasoning). ``reasoning``: it reads ``reasoning_content``.
    """

    system: Literal["list", "str"] = "list"
    assistant: Literal["list", "str"] = "list"
    tools: bool = False
    refuses: Mapping[str, str] = field(default_factory=dict)
    unsupported: Mapping[str, str] = field(default_factory=dict)
    history_rewrites: bool = False
    reasoning: bool = False


class TinySpecError(ValueError):
    """A tiny spec that contradicts the registry: a bug in the table, caught when ``specs.py`` is imported."""


@dataclass(frozen=True)
class FamilySpec:
    """How to build a tiny offline copy of one registry family.

    ``generation_stops``: the tokens the published model's ``generation_config.json`` lists as
    ``eos_token_id`` (what an inference engine stops on); empty means the tokenizer's eos only.
    ``architecture``: the ``config.json`` model type of a family that owns none (its registry entry has no
    ``model_types`` because another family's entry claims it: Pixtral is a ``llava`` model, and is selected
    with ``model.family: pixtral``).
    """

    name: str  # a registry Family.name
    template: tuple[Literal["trl", "shared"], str]  # trl file name, or folder under templates_root
    tokenizer: TokenizerSpec
    config_cls: str
    config: Mapping[str, Any]
    processor: ProcessorSpec | None = None  # None: text-only family, tokenizer only
    generation_stops: tuple[str, ...] = ()
    traits: TemplateTraits = field(default_factory=TemplateTraits)
    architecture: str | None = None

    def __post_init__(self) -> None:
        entry = lookup(self.name)
        if entry is None or entry.name != self.name:
            raise TinySpecError(
                f"tiny spec {self.name!r} names no registry family; key it by a Family.name in "
                "vlmtrain/families/registry.py"
            )
        if (self.processor is not None) != entry.is_vlm:
            kind = "a VLM (give it a ProcessorSpec)" if entry.is_vlm else "text-only (drop its ProcessorSpec)"
            raise TinySpecError(f"tiny spec {self.name!r}: the registry says the family is {kind}")
        if bool(entry.model_types) == bool(self.architecture):
            raise TinySpecError(
                f"tiny spec {self.name!r}: give architecture= exactly when the registry entry lists no model "
                f"types (it lists {list(entry.model_types)})"
            )

    @property
    def family(self) -> Family:
        family = lookup(self.name)
        assert family is not None  # checked in __post_init__
        return family

    @property
    def model_type(self) -> str:
        """The ``config.json`` ``model_type`` the build must produce: the registry's first, else ``architecture``."""
        return self.family.model_types[0] if self.family.model_types else str(self.architecture)

    @property
    def is_vlm(self) -> bool:
        return self.family.is_vlm

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop tokens written to ``generation_config.json``."""
        return self.generation_stops or (self.tokenizer.eos,)


def index_specs(specs: tuple[FamilySpec, ...]) -> dict[str, FamilySpec]:
    """Specs by family name, refusing a family specified twice."""
    index: dict[str, FamilySpec] = {}
    for spec in specs:
        if spec.name in index:
            raise TinySpecError(f"tiny spec {spec.name!r} is defined twice")
        index[spec.name] = spec
    return index
