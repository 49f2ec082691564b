"""Terminal output (rich): rows token by token — trained highlighted, the rest dimmed — and the summary.

Without colour (a pipe, a file, ``NO_COLOR``) trained spans are bracketed ``⟦…⟧`` so the mask stays visible.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from vlmtrain.inspect.rows import PROBLEMS, SCAFFOLD, InspectedRow
from vlmtrain.inspect.summary import Summary
from vlmtrain.inspect.tokens import Pieces, Segment, segments, visible
from vlmtrain.render.row import NO_MESSAGE

# Trained tokens alternate two greens so token boundaries show; 16-colour terminals get named greens (the pale
# greens would be rounded to white there).
TRAINED = {"rich": ("black on #8fd694", "black on #c3ecc5"),
           "standard": ("black on green", "black on bright_green"), "plain": ("", "")}
UNTRAINED = "grey50"
SPECIAL = "bold magenta"
MEDIA = "italic blue"
ROLE_STYLES = {"system": "bold white on grey37", "user": "bold white on blue",
               "assistant": "bold black on green3", "tool": "bold black on yellow3"}
SUBSCRIPT = str.maketrans("0123456789-", "₀₁₂₃₄₅₆₇₈₉₋")
OPEN, CLOSE = "⟦", "⟧"


def palette(console: Console) -> str:
    """plain (no colour: trained spans bracketed), standard (16 colours) or rich (256 colours or more)."""
    if console.color_system is None or console.no_color:
        return "plain"
    return "rich" if console.color_system in ("256", "truecolor") else "standard"


def legend(console: Console) -> Text:
    colours = palette(console)
    text = Text("legend: ", style="bold")
    text.append(f"{OPEN}trained{CLOSE}" if colours == "plain" else "trained", style=TRAINED[colours][0])
    text.append(" in the loss  ")
    text.append("untrained", style=UNTRAINED)
    text.append(" no loss  ")
    text.append("<|special|>", style=SPECIAL)
    text.append(" template/special token, literal  ")
    text.append("<|image_pad|> ×64", style=MEDIA)
    text.append(" media run (never trained)  ")
    text.append("stop", style="underline")
    text.append(" token ending a turn  ")
    text.append("· space  → tab  ↵ newline  ", style=UNTRAINED)
    text.append(" user #0 ", style=ROLE_STYLES["user"])
    text.append(" message 0 starts")
    return text


def _role_label(segment: Segment) -> Text:
    if segment.message_index == NO_MESSAGE:
        return Text(f" {SCAFFOLD} ", style="reverse")
    return Text(f" {segment.role} #{segment.message_index} ", style=ROLE_STYLES.get(segment.role, "reverse"))


def _segment_style(segment: Segment, n_trained: int, colours: str) -> str:
    if segment.is_media:
        style = MEDIA
    elif segment.trained:
        style = TRAINED[colours][n_trained % 2] + (" bold" if segment.special else "")
    elif segment.special:
        style = SPECIAL + " dim"
    else:
        style = UNTRAINED
    return style + (" underline" if segment.ends_turn != NO_MESSAGE else "")


def row_text(item: InspectedRow, pieces: Pieces, *, show_ids: bool = False, colours: str = "rich") -> Text:
    """The row's tokens as styled text: a role label where each message starts, whitespace visible; with the
    ``plain`` palette trained spans are bracketed ``⟦…⟧``."""
    plain = colours == "plain"
    assert item.row is not None
    out = Text()
    previous: int | None = None
    n_trained = 0
    open_span = False
    for segment in segments(item.row, pieces):
        if segment.message_index != previous:
            if open_span:
                out.append(CLOSE)
                open_span = False
            if out and not out.plain.endswith("\n"):
                out.append("\n")
            out.append_text(_role_label(segment))
            out.append(" ")
            previous = segment.message_index
        if plain and segment.trained != open_span:
            out.append(OPEN if segment.trained else CLOSE)
            open_span = segment.trained
        shown = visible(segment.text)
        if segment.count > 1:
            shown += f" ×{segment.count}"
        if show_ids:
            shown = shown.replace("\n", "") + str(segment.token_id).translate(SUBSCRIPT) + \
                ("\n" if shown.endswith("\n") else "")
        out.append(shown, style=_segment_style(segment, n_trained, colours))
        n_trained += segment.trained
    if open_span:
        out.append(CLOSE)
    out.rstrip()
    return out


def counts_line(item: InspectedRow) -> str:
    tokens, trained = item.role_counts()
    share = f" ({item.num_trained / item.num_tokens:.0%})" if item.num_tokens else ""
    by_role = ", ".join(f"{role} {n}" for role, n in trained.most_common()) or "none"
    return (f"tokens {item.num_tokens} · trained {item.num_trained}{share} · trained by role: {by_role} · "
            f"{item.media_label}")


def print_row(console: Console, item: InspectedRow, pieces: Pieces, show_ids: bool = False) -> None:
    console.rule(Text(f"row {item.index} · {item.where}", style="bold"), align="left")
    if item.row is None:
        console.print(Text(f"not rendered: {item.error}", style="bold red"), soft_wrap=True)
    else:
        console.print(Text(counts_line(item), style="bold"), soft_wrap=True)
        console.print(row_text(item, pieces, show_ids=show_ids, colours=palette(console)), soft_wrap=True)
    for problem in item.problems if item.row is not None else []:
        console.print(Text(f"⚠ {PROBLEMS[problem.code]}: {problem.message}", style="bold yellow"),
                      soft_wrap=True)
    console.print()


def print_summary(console: Console, summary: Summary, *, strict: bool = False, shown: int = 5) -> None:
    title = f"summary · {summary.split} split · family {summary.family}"
    console.rule(Text(title, style="bold"), align="left")
    console.print(Text(f"rows {summary.rows} (rendered {summary.rendered}) · {summary.media_label} · "
                       f"tokens {summary.tokens} (media {summary.media}) · trained {summary.trained} "
                       f"({summary.fraction():.1%})"), soft_wrap=True)
    for role, tokens, trained, fraction, share in summary.role_rows():
        console.print(Text(f"  {role:<12} tokens {tokens:>8}  trained {trained:>8}  {fraction:>6.1%} of the "
                           f"role's tokens  {share:>6.1%} of all trained"), soft_wrap=True)
    markers = "  ".join(f"{what} {token}={','.join(map(str, ids))}" for what, token, ids in summary.markers)
    console.print(Text(f"markers: {markers or 'none'}"), soft_wrap=True)
    for code, label in PROBLEMS.items():
        cases = summary.problems[code]
        mark, style = ("✗", "bold red") if cases else ("✓", "green")
        fate = f" — {summary.fates[code]}" if cases and code in summary.fates else ""
        console.print(Text(f"{mark} {label}: {len(cases)}{fate}", style=style), soft_wrap=True)
        limit = len(cases) if strict else shown
        for message in cases[:limit]:
            console.print(Text(f"    {message}"), soft_wrap=True)
        if len(cases) > limit:
            console.print(Text(f"    … and {len(cases) - limit} more (--strict lists all)"), soft_wrap=True)
