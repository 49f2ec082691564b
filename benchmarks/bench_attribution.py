"""Attribution time per row vs messages per row: the prefix reference against the linear span strategy.

Rows of 80, 320 and 1,280 short messages (text on tiny qwen2; with one image per user turn on tiny qwen2_vl)
are attributed by both strategies (``vlmtrain/render/template.py``); the report gives the time per row, the
growth exponent (slope of log time vs log messages), and the 1,280-message row's linear time as a multiple of
one full render + tokenize of the same row (for an image row: the render and the processor call that
``apply_chat_template(tokenize=True)`` makes, with same-size stand-in images). Targets: exponent <= 1.15, <= 3x.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401 - environment and sys.path

from vlmtrain.render.attributor import RenderInput  # noqa: E402
from vlmtrain.render.template import TemplateAttributor  # noqa: E402

SIZES = (80, 320, 1280)


def _row(n: int, images: bool) -> RenderInput:
    from vlmtrain.media import MediaItem

    messages, media = [], []
    for i in range(n // 2):
        user: object = f"Question {i}: what about item {i * 7 % 13}?"
        if images:
            user = [{"type": "image"}, {"type": "text", "text": user}]
            media.append(MediaItem("image", f"<in-memory {i}>", 32, 32))
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": f"Item {i} is fine."}]
    return RenderInput(messages=messages, media=tuple(media))


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _exponent(times: list[float]) -> float:
    return math.log(times[-1] / times[0]) / math.log(SIZES[-1] / SIZES[0])


def bench(family: str, images: bool) -> dict:
    from omegaconf import OmegaConf
    from transformers import AutoProcessor, AutoTokenizer

    from vlmtrain.families import lookup
    from vlmtrain.mask import MaskedRenderer
    from vlmtrain.tiny import build_tiny

    path = build_tiny(family, common.WORK / f"attr-{family}", templates_root=common.REPO.parent / "shared" /
                      "templates")
    pc = (AutoProcessor if lookup(family).is_vlm else AutoTokenizer).from_pretrained(path)
    import json
    model_type = json.loads((path / "config.json").read_text())["model_type"]
    cfg = OmegaConf.create({"mode": "sampled", "roles": ["assistant"], "train_on_eos": "turn", "role_boundaries": []})
    renderer = MaskedRenderer(pc, model_type, cfg)
    linear = renderer.conversations
    prefix = TemplateAttributor(renderer.chat, renderer.family, strategy="prefix")
    out = {"family": family, "images": images, "rows": []}
    for n in SIZES:
        sample = _row(n, images)
        linear.attribute(sample)  # probes and the shape check, once per template / shape
        lin = _best(lambda s=sample: linear.attribute(s), 3)
        pre = _best(lambda s=sample: prefix.attribute(s), 1 if n >= 1280 else 2)
        row = linear.attribute(sample)
        assert row.linear_fallbacks == 0 and (row.input_ids == prefix.attribute(sample).input_ids).all()
        from vlmtrain.render.messages import in_forms
        msgs = in_forms(sample.messages, renderer.chat.content_forms)
        if images:  # what apply_chat_template(tokenize=True) does for an image row: render, then the processor
            from vlmtrain.media.kinds import stand_ins

            one = _best(lambda m=msgs, s=sample, c=renderer.chat: c.encode([c.render(m)], stand_ins([s.media])), 3)
        else:
            one = _best(lambda m=msgs, c=renderer.chat: c.text_tokens(c.render(m)), 3)
        out["rows"].append({"messages": n, "tokens": len(row), "prefix_s": pre, "linear_s": lin, "render_s": one})
    out["prefix_exponent"] = _exponent([r["prefix_s"] for r in out["rows"]])
    out["linear_exponent"] = _exponent([r["linear_s"] for r in out["rows"]])
    out["linear_vs_render"] = out["rows"][-1]["linear_s"] / out["rows"][-1]["render_s"]
    return out


def main() -> None:
    common.quiet()
    results = [bench("qwen2", False), bench("qwen2_vl", True)]
    print("| family | messages | tokens | prefix s/row | linear s/row | one render+tokenize s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for res in results:
        for r in res["rows"]:
            print(f"| {res['family']}{' +images' if res['images'] else ''} | {r['messages']} | {r['tokens']} | "
                  f"{r['prefix_s']:.3f} | {r['linear_s']:.4f} | {r['render_s']:.4f} |")
    ok = True
    for res in results:
        print(f"{res['family']}: exponent prefix {res['prefix_exponent']:.2f}, linear {res['linear_exponent']:.2f}; "
              f"1,280-message row linear = {res['linear_vs_render']:.2f}x one render+tokenize")
        ok &= res["linear_exponent"] <= 1.15 and res["linear_vs_render"] <= 3
    print(f"SUMMARY attribution: {'PASS' if ok else 'FAIL'} (targets: exponent <= 1.15, <= 3x)")


if __name__ == "__main__":
    main()
