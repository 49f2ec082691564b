"""Row policies and the report of what they did: which problems stop a build, which drop a row and count it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vlmtrain.errors import Reason
from vlmtrain.media.kinds import MediaLimits
from vlmtrain.media.transforms import TransformSpec, transform_from_config


@dataclass(frozen=True)
class BuildSettings:
    """The row policies and limits rendering needs, taken from ``data``/``mask`` config and the sources."""

    max_length: int
    limits: MediaLimits
    on_too_long: str = "drop"
    on_bad_row: str = "error"
    on_empty: str = "error"
    placeholders: tuple[str | None, ...] = ()  # per source index (pretrain format)
    image_transform: TransformSpec | None = None  # data.image_transform, validated (vlmtrain.media.transforms)

    @classmethod
    def from_config(cls, data_cfg: Any, mask_cfg: Any, sources: Sequence[Any] = ()) -> BuildSettings:
        return cls(max_length=int(data_cfg.max_length), limits=MediaLimits.from_config(data_cfg),
                   on_too_long=str(data_cfg.on_too_long), on_bad_row=str(data_cfg.on_bad_row),
                   on_empty=str(mask_cfg.on_empty), placeholders=tuple(s.image_placeholder for s in sources),
                   image_transform=transform_from_config(data_cfg))

    def is_fatal(self, reason: Reason) -> bool:
        """Whether a row with this problem stops the build (else it is dropped and counted)."""
        reason = Reason(reason)
        if reason.is_source_problem:
            return True
        if reason == Reason.TOO_LONG:
            return self.on_too_long == "error"
        if reason in (Reason.EMPTY_MASK, Reason.NO_ASSISTANT_TURN):
            return self.on_empty != "drop" and self.on_bad_row != "skip"
        return self.on_bad_row != "skip"


@dataclass
class BuildReport:
    """What happened to every row: kept, dropped by reason (with the first offenders), mask findings."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    fatal: int = 0  # problems the policies would not let through (preprocess --check exits non-zero)
    trained_tokens: int = 0
    total_tokens: int = 0
    untrained_stop_turns: int = 0
    turns_without_stop: int = 0
    merged_spans: int = 0
    linear_fallbacks: int = 0
    shown: int = 3

    def drop(self, reason: str, message: str) -> None:
        self.dropped[reason] += 1
        offenders = self.examples.setdefault(reason, [])
        if len(offenders) < self.shown:
            offenders.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": dict(self.dropped), "examples": self.examples,
                "trained_tokens": self.trained_tokens, "total_tokens": self.total_tokens,
                "untrained_stop_turns": self.untrained_stop_turns,
                "turns_without_stop": self.turns_without_stop, "merged_spans": self.merged_spans,
                "linear_fallbacks": self.linear_fallbacks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildReport:
        report = cls(**{k: v for k, v in data.items() if k not in ("dropped",)})
        report.dropped = Counter(data.get("dropped", {}))
        return report

    def lines(self) -> list[str]:
        out = [f"rows kept: {self.kept}; trained tokens {self.trained_tokens} of {self.total_tokens}"]
        for reason, count in sorted(self.dropped.items()):
            first = " | ".join(self.examples.get(reason, []))
            out.append(f"rows dropped ({reason}): {count}; first: {first}")
        if self.untrained_stop_turns:
            out.append(f"WARNING: {self.untrained_stop_turns} assistant turn(s) end with a stop token the "
                       "mask does not train: the model will not learn to stop there "
                       "(see mask.train_on_eos/mode)")
        if self.turns_without_stop:
            out.append(f"{self.turns_without_stop} assistant turn(s) have no stop token in the template's text "
                       "(the template writes none mid-conversation; the final turn gets one appended)")
        if self.merged_spans:
            out.append(f"{self.merged_spans} message span(s) joined the next message's because the template "
                       "cannot render the conversation up to them (display only: masks are unaffected)")
        if self.linear_fallbacks:
            out.append(f"{self.linear_fallbacks} row(s) attributed by prefix renders (the linear span strategy "
                       "could not place them exactly; same masks, time quadratic in their turns)")
        return out


