"""``--summary``: one pass over a whole split — trained-token fractions, per-role counts, every problem."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vlmtrain.data.policies import BuildSettings
from vlmtrain.errors import Reason
from vlmtrain.inspect.rows import PROBLEMS, InspectedRow, media_label
from vlmtrain.mask.pipeline import MaskedRenderer
from vlmtrain.render.row import MEDIA


def family_label(renderer: MaskedRenderer) -> str:
    """The resolved family, and whether a ``mask.role_boundaries`` override replaced its attribution."""
    if renderer.boundaries is None:
        if getattr(renderer, "derivation", None) is not None:
            return f"{renderer.family_name} (DERIVED by probing the model, not verified)"
        return renderer.family_name
    if renderer.family is None:
        return "none (mask.role_boundaries)"
    return f"{renderer.family_name} (attribution: mask.role_boundaries)"


def marker_ids(renderer: MaskedRenderer) -> list[tuple[str, str, list[int]]]:
    """(what, token text, ids) for every marker the mask is computed from: stop tokens, media tokens, and the
    start/end markers of a ``mask.role_boundaries`` override."""
    tokenizer = renderer.chat.tokenizer
    vocab = tokenizer.get_vocab()
    out: list[tuple[str, str, list[int]]] = []
    if renderer.boundaries is not None:
        for b in renderer.boundaries:
            out.append((f"{b.role} start", tokenizer.decode(list(b.start)), list(b.start)))
            if b.end is not None:
                out.append((f"{b.role} end", tokenizer.decode(list(b.end)), list(b.end)))
    elif renderer.family is not None:
        family = renderer.family.family
        for token in family.stop_tokens:
            if token in vocab:
                out.append(("stop", token, [vocab[token]]))
        if family.appends_final_stop:
            out.append(("appended after the final turn", renderer.family.final_stop,
                        [vocab[renderer.family.final_stop]]))
    for token_id in renderer.media_ids.tolist():
        out.append(("media", tokenizer.convert_ids_to_tokens(int(token_id)), [int(token_id)]))
    return out


def fates(settings: BuildSettings) -> dict[str, str]:
    """What ``fit`` does with the rows of each problem under this config's row policies."""

    def policy(reason: Reason, key: str) -> str:
        return f"fit stops ({key})" if settings.is_fatal(reason) else f"fit drops these rows ({key})"

    keep = "fit trains these rows as they are"
    return {
        "zero_trained": policy(Reason.EMPTY_MASK, f"mask.on_empty: {settings.on_empty}"),
        "untrained_stop": keep, "missing_stop": keep,
        "too_long": policy(Reason.TOO_LONG, f"data.on_too_long: {settings.on_too_long}"),
        "image_mismatch": policy(Reason.MEDIA_COUNT_MISMATCH, f"data.on_bad_row: {settings.on_bad_row}"),
        "bad_row": policy(Reason.BAD_ROW, f"data.on_bad_row: {settings.on_bad_row}"),
    }


@dataclass
class Summary:
    """Counts over every row of a split; ``problems`` maps each code of ``PROBLEMS`` to a message per case."""

    split: str
    family: str
    markers: list[tuple[str, str, list[int]]]
    max_length: int
    fates: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    rendered: int = 0
    tokens: int = 0
    trained: int = 0
    media_items: Counter = field(default_factory=Counter)  # per modality
    media: int = 0  # media tokens (never trained, not counted under any role)
    tokens_by_role: Counter = field(default_factory=Counter)
    trained_by_role: Counter = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=lambda: {code: [] for code in PROBLEMS})

    @classmethod
    def start(cls, renderer: MaskedRenderer, split: str, settings: BuildSettings) -> Summary:
        return cls(split=split, family=family_label(renderer), markers=marker_ids(renderer),
                   max_length=settings.max_length, fates=fates(settings))

    def add(self, item: InspectedRow) -> None:
        self.rows += 1
        self.media_items.update(m.modality for m in item.media)
        for problem in item.problems:
            self.problems[problem.code].append(problem.message)
        if item.row is None:
            return
        self.rendered += 1
        self.tokens += item.num_tokens
        self.trained += item.num_trained
        self.media += int(np.count_nonzero(item.row.kind == MEDIA))
        tokens, trained = item.role_counts()
        self.tokens_by_role.update(tokens)
        self.trained_by_role.update(trained)

    @property
    def media_label(self) -> str:
        return media_label(self.media_items)

    @property
    def problem_count(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def fraction(self) -> float:
        return self.trained / self.tokens if self.tokens else 0.0

    def role_rows(self) -> list[tuple[str, int, int, float, float]]:
        """(role, tokens, trained, trained share of the role's tokens, share of all trained tokens)."""
        out = []
        by_trained = sorted(self.tokens_by_role.items(), key=lambda kv: (-self.trained_by_role[kv[0]], kv[0]))
        for role, count in by_trained:
            trained = self.trained_by_role[role]
            out.append((role, count, trained, trained / count if count else 0.0,
                        trained / self.trained if self.trained else 0.0))
        return out
