"""Rewards used by the tests through `--reward tests.helpers:NAME` (the plug-in path)."""

from __future__ import annotations

from typing import Any, Sequence


def ones_fraction(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """Fraction of the completion's characters that are '1': a task a tiny model can learn."""
    return [c.count("1") / max(1, len(c)) for c in completions]
