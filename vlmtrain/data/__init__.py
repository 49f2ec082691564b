"""Data path: source files -> examples (messages + image paths) -> rendered, masked rows (Arrow, cached)."""
