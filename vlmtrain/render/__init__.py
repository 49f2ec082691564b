"""Rendering through the real chat template and per-token attribution (message, kind, sampled)."""

from vlmtrain.render.attributor import Attributor, RenderInput
from vlmtrain.render.chat import ChatRenderer
from vlmtrain.render.row import CONTENT, KIND_NAMES, MARKER, MEDIA, NO_MESSAGE, PAD, MaskedRow

__all__ = ["CONTENT", "KIND_NAMES", "MARKER", "MEDIA", "NO_MESSAGE", "PAD", "Attributor", "ChatRenderer", "MaskedRow",
           "RenderInput"]
