"""Input formats: one small reader per shape people's data already has, behind one ``Format`` interface.

Each reader turns a raw row into the canonical HF/OpenAI-messages row that ``vlmtrain.data.examples``
validates; ``format_for`` picks a source's format (detected on its first row unless ``format:`` forces one).
"""

from vlmtrain.formats.base import CANONICAL, CanonicalColumns, Format
from vlmtrain.formats.registry import ALIASES, BY_NAME, FORMATS, canonical_columns, detect, format_for, named

__all__ = ["ALIASES", "BY_NAME", "CANONICAL", "FORMATS", "CanonicalColumns", "Format", "canonical_columns",
           "detect", "format_for", "named"]
