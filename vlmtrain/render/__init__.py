"""Rendering through the real chat template and per-token attribution (message, kind, sampled)."""

from vlmtrain.render.attribute import render_row
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.pipeline import MaskedRenderer
from vlmtrain.render.rendered import CONTENT, KIND_NAMES, MARKER, MEDIA, NO_MESSAGE, PAD, RenderedRow

__all__ = ["CONTENT", "KIND_NAMES", "MARKER", "MEDIA", "NO_MESSAGE", "PAD", "ChatRenderer", "MaskedRenderer",
           "RenderedRow", "render_row"]
