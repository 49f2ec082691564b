"""Inspect one row: render and mask it through the training path, and classify what is wrong with it.

Rows go through ``vlmtrain.data.rows.render_example`` — the function ``fit`` and ``preprocess`` use — with
the empty-mask check deferred, so a row that trains nothing is still shown token by token and *reported*
instead of stopping the scan at the first one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vlmtrain.data.examples import Example
from vlmtrain.data.policies import BuildSettings
from vlmtrain.data.rows import render_example
from vlmtrain.errors import DataError, Reason
from vlmtrain.mask.checks import EmptyMaskError, find_issues
from vlmtrain.mask.pipeline import MaskedRenderer
from vlmtrain.media.item import MediaItem
from vlmtrain.render.pretrain import image_token_of
from vlmtrain.render.row import MEDIA, NO_MESSAGE, MaskedRow

# Problem codes, in report order, with the label the summary prints. --strict fails on any of them.
PROBLEMS = {
    "zero_trained": "rows with zero trained tokens",
    "untrained_stop": "assistant turns whose stop token is not trained",
    "missing_stop": "assistant turns with no stop token at all",
    "too_long": "rows longer than data.max_length",
    "image_mismatch": "image / placeholder mismatches",
    "bad_row": "rows that cannot be loaded or rendered",
}
IMAGE_REASONS = (Reason.MEDIA_COUNT_MISMATCH, Reason.MEDIA_NOT_SUPPORTED)
SCAFFOLD = "(template)"  # display name of tokens outside every message


@dataclass(frozen=True)
class Problem:
    code: str
    message: str  # one line, naming the row


@dataclass
class InspectedRow:
    """One row of a split: its rendered, masked row (``row``, as ``render_example`` returns it) or the
    reason it has none (``error``), and its problems."""

    index: int
    where: str
    media: list[MediaItem] = field(default_factory=list)
    row: MaskedRow | None = None
    error: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.row) if self.row else 0

    @property
    def num_trained(self) -> int:
        return self.row.num_trained if self.row else 0

    @property
    def media_label(self) -> str:
        label = media_label(Counter(m.modality for m in self.media))
        frames = [m.frames for m in self.media if m.modality == "video"]
        return f"{label} ({' + '.join(map(str, frames))} frames)" if frames else label

    def token_roles(self) -> np.ndarray:
        """Per token, the role its loss belongs to: a stop token counts for the turn it ends (GLM's
        ``<|observation|>`` sits in the tool message but is the assistant's), other tokens for their message;
        scaffolding outside every message is ``(template)``."""
        assert self.row is not None
        names = np.array([*self.row.roles, SCAFFOLD], dtype=object)
        message, ends = self.row.message_index, self.row.ends_turn
        return names[np.where(ends != NO_MESSAGE, ends, message)]

    def role_counts(self) -> tuple[Counter, Counter]:
        """(tokens per role, trained tokens per role); media tokens are not counted as any role's tokens."""
        if self.row is None:
            return Counter(), Counter()
        roles = self.token_roles()
        not_media = self.row.kind != MEDIA
        mask = np.asarray(self.row.loss_mask, dtype=bool)
        return Counter(roles[not_media].tolist()), Counter(roles[mask].tolist())


def _image_token_count(renderer: MaskedRenderer, text: str) -> int | None:
    """Image placeholders in the rendered text (before the processor expands them), counted as token ids."""
    token = image_token_of(renderer.chat, renderer.family)
    if token is None:
        return None
    token_id = renderer.chat.tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id == renderer.chat.tokenizer.unk_token_id:
        return None
    ids, _ = renderer.chat.text_tokens(text)
    return int(np.sum(ids == token_id))


def _mask_problems(item: InspectedRow, renderer: MaskedRenderer, settings: BuildSettings) -> list[Problem]:
    row, where = item.row, item.where
    assert row is not None
    out: list[Problem] = []
    if item.num_trained == 0:
        out.append(Problem("zero_trained", f"{where}: the loss mask trains zero tokens"))
    issues = find_issues(row, np.asarray(row.loss_mask, dtype=bool))
    out += [Problem("untrained_stop", f"{where}: the stop token ending assistant turn (message {k}) is not "
                                      "trained") for k in issues.untrained_stop_turns]
    out += [Problem("missing_stop", f"{where}: assistant turn (message {k}) has no stop token")
            for k in issues.turns_without_stop]
    if item.num_tokens > settings.max_length:
        fate = "fit stops (data.on_too_long: error)" if settings.on_too_long == "error" else "fit drops it"
        out.append(Problem("too_long", f"{where}: {item.num_tokens} tokens > data.max_length="
                                       f"{settings.max_length}; {fate}"))
    images = sum(m.modality == "image" for m in item.media)
    if images or renderer.chat.is_processor:
        found = _image_token_count(renderer, row.text)
        if found is not None and found != images:
            out.append(Problem("image_mismatch", f"{where}: {images} image(s) but {found} image "
                                                 "placeholder(s) in the rendered text"))
    return out


def inspect_example(renderer: MaskedRenderer, example: Example, index: int,
                    settings: BuildSettings) -> InspectedRow:
    """Render and mask ``example`` exactly as training does; never raises for a problem of the row itself."""
    item = InspectedRow(index=index, where=example.where, media=list(example.media))
    try:
        item.row = render_example(renderer, example, settings, require_trained=False)
    except (DataError, EmptyMaskError) as err:
        return failed_row(index, example.where, err, media=item.media)
    item.media = list(item.row.media)
    item.problems = _mask_problems(item, renderer, settings)
    return item


def failed_row(index: int, where: str, err: Exception, media: list[MediaItem] | None = None) -> InspectedRow:
    """A row that could not be loaded or rendered, its problem classified by the error's reason."""
    reason = getattr(err, "reason", "")
    if isinstance(err, EmptyMaskError) or reason == Reason.NO_ASSISTANT_TURN:
        code = "zero_trained"
    elif reason in IMAGE_REASONS:
        code = "image_mismatch"
    else:
        code = "bad_row"
    message = str(err) if str(err).startswith(where) else f"{where}: {err}"
    return InspectedRow(index=index, where=where, media=list(media or []), error=str(err),
                        problems=[Problem(code, message)])


def media_label(counts: Counter) -> str:
    """``images 2`` (always shown, the common case), then any other modality present: ``videos 1``."""
    parts = [f"images {counts.get('image', 0)}"]
    parts += [f"{modality}s {n}" for modality, n in sorted(counts.items()) if modality != "image"]
    return " · ".join(parts)
