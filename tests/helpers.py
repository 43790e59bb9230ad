"""Rewards used by the tests through `--reward tests.helpers:NAME` (the plug-in path)."""

from __future__ import annotations

from typing import Any, Sequence


def ones_fraction(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """Fraction of the completion's characters that are '1': a task a tiny model can learn."""
    return [c.count("1") / max(1, len(c)) for c in completions]


def hangs_on_x(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """Never returns for the completion 'x' (a runaway reward)."""
    if completions[0] == "x":
        import time

        time.sleep(3600)
    return [1.0]


def raises_on_x(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    return [1.0 / (completions[0] != "x")]


def nan_on_x(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    return [float("nan") if completions[0] == "x" else 1.0]


def always_raises(prompts: Sequence[str], completions: Sequence[str], **row: Any) -> list[float]:
    return [row["missing"]]
