"""Families from probes: a model type the registry does not know gets its entry derived from its own files, and
a registered entry is checked against the same facts.

What is derived, and from where:

- stop tokens: the ids an inference engine stops on (``generation_config.json`` ``eos_token_id``, then the
  tokenizer's eos), the one the template writes after an answer first;
- stop placement: where the template writes it (``render/probe.py``: inside the turn, opening the next
  message, nowhere);
- media tokens: the processor's named media tokens and the special tokens its expansion of a blank image emits;
- vision tower / projector / language model prefixes: the model's module tree, built on the meta device from
  ``config.json`` (no weights).

Derivation fails, listing what could not be derived, only where it is ambiguous (no stop id, placement
unclear). Registry entries stay the verified set and the declared exceptions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmtrain.families.family import Family
from vlmtrain.families.resolve import FamilyError, unknown_family_message
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.probe import engine_stop_ids, probe_stop_placement, processor_media_tokens

log = logging.getLogger(__name__)

_PROJECTOR = re.compile(r"merger|projector|connector|adapter|aligner", re.I)


@dataclass(frozen=True)
class Derivation:
    """A derived family entry and what each field was read from (for the warning and ``families --probe``)."""

    family: Family
    sources: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()  # fields left empty (not needed to mask; named in the warning)

    def lines(self) -> list[str]:
        f = self.family
        rows = [("model types", ", ".join(f.model_types)), ("stop tokens", " ".join(f.stop_tokens)),
                ("stop placement", f.stop_placement), ("is_vlm", str(f.is_vlm)),
                ("media tokens", " ".join(f.media_tokens) or "-"), ("image placeholder", f.image_placeholder or "-"),
                ("vision tower", " ".join(f.vision_tower) or "-"), ("projector", " ".join(f.projector) or "-"),
                ("language model", " ".join(f.language_model) or "-")]
        out = [f"{k}: {v}" + (f"  ({self.sources[k]})" if k in self.sources else "") for k, v in rows]
        return out + [f"not derived: {m}" for m in self.missing]


def model_dir(processing_class: Any, model_path: str | Path | None = None) -> str | None:
    """Where the model's files are: the given path, else the folder the tokenizer was loaded from."""
    if model_path is not None:
        return str(model_path)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    name = getattr(tokenizer, "name_or_path", "") or ""
    return name or None


def _stop_strings(tokenizer: Any, ids: tuple[int, ...]) -> list[str]:
    return [t for t in tokenizer.convert_ids_to_tokens(list(ids)) if t is not None]


def derive_family(chat: ChatRenderer, model_type: str | None, model_path: str | Path | None) -> Derivation:
    """The family entry of an unregistered model, from its generation_config, template, processor and
    module tree; a FamilyError listing what could not be derived where that is ambiguous."""
    tokenizer = chat.tokenizer
    key = model_type or "unknown"
    ids, has_generation_config = engine_stop_ids(model_path, tokenizer)
    stops = _stop_strings(tokenizer, ids)
    where_stops = ("generation_config.json eos_token_id + tokenizer eos" if has_generation_config
                   else "tokenizer eos (no generation_config.json)")
    if not stops:
        raise FamilyError(f"{unknown_family_message(key)} Derivation failed: no stop id (generation_config.json "
                          "has no eos_token_id and the tokenizer has no eos_token).")
    probe = probe_stop_placement(chat, stops, tokenizer.eos_token)
    if probe.placement is None or probe.final_stop is None:
        raise FamilyError(f"{unknown_family_message(key)} Derivation failed: stop placement unclear: "
                          f"{probe.problem}.")
    ordered = (probe.final_stop, *[s for s in stops if s != probe.final_stop])
    media = processor_media_tokens(chat)
    placeholder = getattr(chat.processing_class, "image_token", None) if chat.is_processor else None
    placeholder = placeholder if isinstance(placeholder, str) and placeholder in media else (media[0] if media
                                                                                             else None)
    is_vlm = chat.is_processor
    prefixes, prefix_source = module_prefixes(model_path, is_vlm)
    family = Family(
        name=f"derived:{key}", model_types=(key,), stop_tokens=ordered,
        stop_placement=probe.placement,  # type: ignore[arg-type]
        is_vlm=is_vlm, media_tokens=media, image_placeholder=placeholder,
        vision_tower=prefixes.get("vision_tower", ()), projector=prefixes.get("projector", ()),
        language_model=prefixes.get("language_model", ()), verified=False,
        quirks=("derived by probing the model's own files, not verified against the registry",),
    )
    sources = {"stop tokens": where_stops, "stop placement": "rendered a probe chat through the template",
               "is_vlm": "a processor" if is_vlm else "a tokenizer only",
               "media tokens": "processor media tokens + its expansion of a blank image"}
    sources.update({k: prefix_source for k in ("vision tower", "projector", "language model")})
    wanted = ("vision_tower", "projector", "language_model") if is_vlm else ("language_model",)
    missing = tuple(f"{k.replace('_', ' ')} prefix ({prefix_source})" for k in wanted if not prefixes.get(k))
    if is_vlm and not media:
        missing += ("media tokens (the processor names none and its expansion emits none)",)
    return Derivation(family, sources, missing)


def warn_derived(derivation: Derivation) -> None:
    """The loud start-up warning: a derived family is not verified."""
    log.warning("family %s is DERIVED, not verified: model type %r is not in the registry, so vlmtrain probed "
                "the model's own files. Check the masks with `vlmtrain inspect-mask` before training. Derived: %s",
                derivation.family.name, derivation.family.model_types[0], "; ".join(derivation.lines()))


def module_prefixes(model_path: str | Path | None, is_vlm: bool) -> tuple[dict[str, tuple[str, ...]], str]:
    """Vision tower / projector / language model module prefixes from the module tree built on the meta device.

    The tower and the language model are the topmost modules built from ``config.vision_config`` /
    ``config.text_config``; the projector is what else holds parameters beside them (LLaVA's
    ``multi_modal_projector``, Idefics' ``connector``), or a merger inside the tower (Qwen2-VL's ``merger``).
    A text model's language model is its ``base_model_prefix``.
    """
    if model_path is None:
        return {}, "no model folder"
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        config = AutoConfig.from_pretrained(str(model_path))
        auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
        with torch.device("meta"):
            model = auto.from_config(config)
    except Exception as err:  # noqa: BLE001 - any failure only leaves the prefixes underived, and says why
        return {}, f"module tree unavailable: {type(err).__name__}"
    source = f"module tree of {type(model).__name__} (meta device)"
    if not is_vlm:
        prefix = getattr(model, "base_model_prefix", "")
        return ({"language_model": (prefix,)} if prefix and hasattr(model, prefix) else {}), source
    return _vlm_prefixes(model, config), source


def _topmost(model: Any, sub_config: Any) -> list[str]:
    found: list[str] = []
    if sub_config is None:
        return found
    for name, module in model.named_modules():
        if name and getattr(module, "config", None) is sub_config and not any(
                name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def _vlm_prefixes(model: Any, config: Any) -> dict[str, tuple[str, ...]]:
    tower = _topmost(model, getattr(config, "vision_config", None))
    language = _topmost(model, getattr(config, "text_config", None))
    modules = dict(model.named_modules())
    projector: list[str] = []
    if tower and language:
        parent = tower[0].rpartition(".")[0]
        for name, module in modules[parent].named_children() if parent in modules else ():
            full = f"{parent}.{name}" if parent else name
            if full not in (*tower, *language) and any(True for _ in module.parameters()):
                projector.append(full)
        if not projector:
            projector = [f"{tower[0]}.{n}" for n, _ in modules[tower[0]].named_children() if _PROJECTOR.search(n)]
    return {"vision_tower": tuple(tower), "projector": tuple(projector), "language_model": tuple(language)}


def check_registered(entry: Family, chat: ChatRenderer, model_path: str | Path | None) -> Family:
    """The registry entry, checked against the template and the engine's stop ids.

    A template that writes the stop elsewhere than the entry says is an error naming both — unless the entry's
    model type covers several templates (``template_varies``: ``llava`` is LLaVA-1.5, Pixtral and others), where
    the template's placement is taken. A generation_config.json whose stop ids miss the entry's trained stop is
    an error too: the model would be trained to emit a token its inference engine does not stop on.
    """
    tokenizer = chat.tokenizer
    vocab = tokenizer.get_vocab()
    ids, has_generation_config = engine_stop_ids(model_path, tokenizer)
    engine = _stop_strings(tokenizer, ids)
    if has_generation_config and entry.stop_tokens[0] in vocab and entry.stop_tokens[0] not in engine:
        raise FamilyError(
            f"family {entry.name!r} (registry) trains the stop {entry.stop_tokens[0]!r}, but this model's "
            f"generation_config.json stops on {engine}: fix eos_token_id in {model_path}/generation_config.json "
            "or set model.family to the model's real family")
    stops = [t for t in entry.stop_tokens if t in vocab]
    probe = probe_stop_placement(chat, stops, tokenizer.eos_token)
    if probe.placement is None or probe.placement == entry.stop_placement:
        if probe.placement is None:
            log.debug("family %s: stop placement probe inconclusive (%s); the registry's %s is used",
                      entry.name, probe.problem, entry.stop_placement)
        return entry
    if entry.template_varies:
        log.warning("family %s: this model's template writes %r %s (the registry's %s is for another template of "
                    "model type %s); using the template's placement", entry.name, probe.final_stop,
                    probe.placement, entry.stop_placement, "/".join(entry.model_types))
        stops_first = (probe.final_stop, *[s for s in entry.stop_tokens if s != probe.final_stop])
        return replace(entry, stop_placement=probe.placement, stop_tokens=stops_first)  # type: ignore[arg-type]
    raise FamilyError(
        f"family {entry.name!r}: the registry says its stop {entry.stop_tokens[0]!r} is {entry.stop_placement}, "
        f"but this model's chat template writes {probe.final_stop!r} {probe.placement}; set model.family to the "
        "family whose template this is, or declare mask.role_boundaries")


def probe_model(path: str, trust_remote_code: bool = False) -> list[str]:
    """``vlmtrain families --probe PATH``: the family a model folder resolves to, and what was derived or checked."""
    from types import SimpleNamespace

    from vlmtrain.families.registry import lookup
    from vlmtrain.render.load import load_processing_class, model_type_of

    model_cfg = SimpleNamespace(name_or_path=path, trust_remote_code=trust_remote_code)
    try:
        model_type = model_type_of(model_cfg)
        entry = lookup(model_type) if model_type else None
        chat = ChatRenderer(load_processing_class(model_cfg, entry.is_vlm if entry else True))
    except (OSError, ValueError) as err:
        raise FamilyError(f"--probe {path}: cannot load its config.json and tokenizer ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); pass a model folder") from None
    if entry is not None:
        checked = check_registered(entry, chat, path)
        state = "verified" if entry.verified else "UNVERIFIED"
        return [f"family {entry.name} (registered, {state}) for model type {model_type!r}",
                f"stop tokens: {' '.join(checked.stop_tokens)}",
                f"stop placement: {checked.stop_placement} (registry: {entry.stop_placement}; checked against "
                "the template and generation_config.json)"]
    derivation = derive_family(chat, model_type, path)
    return [f"family {derivation.family.name} (DERIVED, not verified) for model type {model_type!r}",
            *derivation.lines()]
