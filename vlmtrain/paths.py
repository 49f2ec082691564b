"""The one per-user root of everything vlmtrain keeps on disk (tiny models, data caches, the SFTConfig field cache).

A leaf: it imports nothing of vlmtrain, so every package (config first) may import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$VLMTRAIN_HOME``, default ``~/.cache/vlmtrain``; read on every call so tests and runs can move it."""
    return Path(os.environ.get("VLMTRAIN_HOME") or Path.home() / ".cache" / "vlmtrain").expanduser()
