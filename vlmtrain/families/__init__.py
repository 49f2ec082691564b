"""Model families: declarative entries (``registry.py``) and their resolution against a real tokenizer."""

from vlmtrain.families.family import Family
from vlmtrain.families.registry import FAMILIES, known_names, lookup
from vlmtrain.families.resolve import FamilyError, ResolvedFamily, find_family, resolve, unknown_family_message

__all__ = ["FAMILIES", "Family", "FamilyError", "ResolvedFamily", "find_family", "known_names", "lookup",
           "resolve", "unknown_family_message"]
