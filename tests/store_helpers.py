"""Shared pieces of the store tests (the core store, the shift stream, the LLM gradient store)."""

from __future__ import annotations

from pathlib import Path


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a store directory by relative path (temporary files would show up here too)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
