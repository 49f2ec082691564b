"""``--format html``: one self-contained page (inline CSS, no scripts, no network assets): the terminal's
colouring, a legend, per-row counts and the split summary.

Every token is a ``<span class="t …">`` with ``tr`` (trained) or ``un`` (untrained), plus ``sp`` (special
token), ``md`` (collapsed media run) and ``st`` (stop token); its ``title`` gives position, id, message, kind.
"""

from __future__ import annotations

from html import escape

from vlmtrain.inspect.rows import PROBLEMS, SCAFFOLD, InspectedRow
from vlmtrain.inspect.summary import Summary
from vlmtrain.inspect.terminal import counts_line
from vlmtrain.inspect.tokens import Pieces, Segment, segments, visible
from vlmtrain.render.row import KIND_NAMES, NO_MESSAGE

TRAINED_RGB = ((143, 214, 148), (195, 236, 197))  # alternating, so token boundaries show

CSS_TEMPLATE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.4em 0 .3em}
pre.tokens{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.7;white-space:pre-wrap;
  word-break:break-all;border:1px solid #ddd;border-radius:6px;padding:.6em .8em;background:#fcfcfc}
.t.tr{background:rgb(TRAINED0);color:#000}
.t.tr.alt{background:rgb(TRAINED1)}
.t.un{color:#8a8a8a}
.t.sp{font-weight:bold} .t.un.sp{color:#a46bb8}
.t.md{color:#2456c8;font-style:italic}
.t.st{text-decoration:underline}
.msg{display:inline-block;font:bold 11px system-ui,sans-serif;padding:0 .4em;margin-right:.4em;
  border-radius:3px;background:#666;color:#fff}
.msg.user{background:#2456c8}.msg.assistant{background:#2e9c48}.msg.system{background:#555}
.msg.tool{background:#c7a500;color:#000}
.id{font-size:9px;color:#888;vertical-align:sub}
.counts{font-weight:bold;margin:.2em 0}
.problem{color:#b35c00} .error{color:#c00;font-weight:bold}
table{border-collapse:collapse} td,th{padding:.15em .7em;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}
.ok{color:#2e9c48} .bad{color:#c00;font-weight:bold}
.legend span{margin-right:1em}
"""
CSS = CSS_TEMPLATE.replace("TRAINED0", ",".join(map(str, TRAINED_RGB[0]))).replace(
    "TRAINED1", ",".join(map(str, TRAINED_RGB[1])))


def _token(segment: Segment, n_trained: int, show_ids: bool) -> str:
    classes = ["t", "tr" if segment.trained else "un"]
    if segment.trained and n_trained % 2:
        classes.append("alt")
    if segment.special:
        classes.append("sp")
    if segment.is_media:
        classes.append("md")
    if segment.ends_turn != NO_MESSAGE:
        classes.append("st")
    where = SCAFFOLD if segment.message_index == NO_MESSAGE else \
        f"message {segment.message_index} ({segment.role})"
    last = segment.start + segment.count - 1
    span = f"{segment.start}" if segment.count == 1 else f"{segment.start}-{last}"
    title = f"pos {span} · id {segment.token_id} · {where} · {KIND_NAMES[segment.kind]}"
    if segment.ends_turn != NO_MESSAGE:
        title += f" · ends the turn of message {segment.ends_turn}"
    title += " · trained" if segment.trained else " · not trained"
    text = visible(segment.text) + (f" ×{segment.count}" if segment.count > 1 else "")
    body = escape(text.rstrip("\n")) + (f'<span class="id">{segment.token_id}</span>' if show_ids else "")
    newline = "\n" if text.endswith("\n") else ""
    return f'<span class="{" ".join(classes)}" title="{escape(title)}">{body}</span>{newline}'


def _row_html(item: InspectedRow, pieces: Pieces, show_ids: bool) -> str:
    head = f'<section class="row" id="row-{item.index}"><h2>row {item.index} · {escape(item.where)}</h2>'
    if item.row is None:
        return head + f'<p class="error">not rendered: {escape(str(item.error))}</p></section>'
    parts = [head, f'<p class="counts">{escape(counts_line(item))}</p><pre class="tokens">']
    previous: int | None = None
    n_trained = 0
    for segment in segments(item.row, pieces):
        if segment.message_index != previous:
            if previous is not None and not parts[-1].endswith("\n"):
                parts.append("\n")
            label = SCAFFOLD if segment.message_index == NO_MESSAGE else \
                f"{segment.role} #{segment.message_index}"
            parts.append(f'<span class="msg {escape(segment.role)}">{escape(label)}</span>')
            previous = segment.message_index
        parts.append(_token(segment, n_trained, show_ids))
        n_trained += segment.trained
    parts.append("</pre>")
    parts += [f'<p class="problem">⚠ {escape(PROBLEMS[p.code])}: {escape(p.message)}</p>'
              for p in item.problems]
    return "".join(parts) + "</section>"


def _summary_html(summary: Summary) -> str:
    out = [f'<section class="summary"><h2>summary · {escape(summary.split)} split · family '
           f'{escape(summary.family)}</h2>',
           f"<p>rows {summary.rows} (rendered {summary.rendered}) · {summary.media_label} · tokens "
           f"{summary.tokens} (media {summary.media}) · trained {summary.trained} "
           f"({summary.fraction():.1%})</p>",
           "<table><tr><th>role</th><th>tokens</th><th>trained</th><th>% of role</th>"
           "<th>% of trained</th></tr>"]
    out += [f"<tr><td>{escape(r)}</td><td>{t}</td><td>{n}</td><td>{f:.1%}</td><td>{s:.1%}</td></tr>"
            for r, t, n, f, s in summary.role_rows()]
    out.append("</table><p>markers: " + escape("  ".join(f"{w} {t}={','.join(map(str, ids))}"
                                                         for w, t, ids in summary.markers)) + "</p><ul>")
    for code, label in PROBLEMS.items():
        cases = summary.problems[code]
        css, mark = ("bad", "✗") if cases else ("ok", "✓")
        items = "".join(f"<li>{escape(m)}</li>" for m in cases)
        fate = f" — {summary.fates[code]}" if cases and code in summary.fates else ""
        head = f"{mark} {escape(label)}: {len(cases)}{escape(fate)}"
        out.append(f'<li class="{css}" data-problem="{code}">{head}' + (f"<ul>{items}</ul>" if items else "")
                   + "</li>")
    return "".join(out) + "</ul></section>"


LEGEND = ('<p class="legend"><span class="t tr">trained</span> in the loss '
          '<span class="t un">untrained</span> no loss '
          '<span class="t un sp">&lt;|special|&gt;</span> template/special token '
          '<span class="t un md">&lt;|image_pad|&gt; ×64</span> media run (never trained) '
          '<span class="t un st">stop</span> token ending a turn '
          '<span class="t un">· space → tab ↵ newline</span> '
          '<span class="msg user">user #0</span> message 0 starts; hover a token for its id</p>')


def render_html(items: list[InspectedRow], pieces: Pieces, summary: Summary | None, *, title: str,
                show_ids: bool = False) -> str:
    body = [f"<h1>{escape(title)}</h1>", LEGEND, *(_row_html(item, pieces, show_ids) for item in items)]
    if summary is not None:
        body.append(_summary_html(summary))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
