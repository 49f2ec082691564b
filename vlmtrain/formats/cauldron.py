"""the_cauldron's shape (the SmolVLM training mix): ``images`` (paths or ``datasets.Image``) + ``texts``, a
list of ``{user, assistant, source}`` turns. The images belong to the first user turn, before its text."""

from __future__ import annotations

from typing import Any

from vlmtrain.formats.base import cell, check_unused_media, media_list, misfit


class CauldronFormat:
    name, kind, native = "cauldron", "chat", False

    def detect(self, row: dict[str, Any], source: Any) -> bool:
        texts = row.get("texts")
        return isinstance(texts, list) and bool(texts) and isinstance(texts[0], dict) and "user" in texts[0]

    def to_canonical(self, row: dict[str, Any], source: Any, where: str) -> dict[str, Any]:
        texts = cell(row, "texts", where)
        if not isinstance(texts, list) or not texts:
            raise misfit(where, self.name, "column 'texts' should be a non-empty list of {user, assistant} turns")
        images = media_list(cell(row, str(source.images_column), where))
        messages: list[dict[str, Any]] = []
        for k, turn in enumerate(texts):
            if not isinstance(turn, dict) or not all(isinstance(turn.get(r), str) for r in ("user", "assistant")):
                raise misfit(where, self.name, f"turn {k} of 'texts' is not a {{user, assistant}} pair of strings")
            user: Any = turn["user"]
            if k == 0 and images:
                user = [*({"type": "image"} for _ in images), {"type": "text", "text": user}]
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": turn["assistant"]}]
        check_unused_media(row, {"texts", str(source.images_column)}, where, self.name)
        return {"messages": messages, "images": images}

    def columns(self, source: Any) -> str:
        return f"turns=texts (user/assistant), images={source.images_column} (with the first user turn)"
