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


_calls = 0


def gated_ones(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """`ones_fraction`, with a pause a fault-injection test can use: with DISTRL_TEST_GATE set to
    "FOLDER:N", the N-th call made in this reward process writes FOLDER/paused and waits for
    FOLDER/go (once per FOLDER). The driver is then held between generation and the update."""
    import os
    import time

    global _calls
    gate = os.environ.get("DISTRL_TEST_GATE")
    if gate:
        folder, at = gate.rsplit(":", 1)
        _calls += 1
        if _calls == int(at) and not os.path.exists(os.path.join(folder, "fired")):
            for name in ("fired", "paused"):
                open(os.path.join(folder, name), "w").close()
            deadline = time.time() + 300
            while not os.path.exists(os.path.join(folder, "go")) and time.time() < deadline:
                time.sleep(0.05)
    return ones_fraction(prompts, completions)


def garbage(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list:
    """Returns what its completion names: NaN, inf, None, or two values for one completion."""
    return {"nan": [float("nan")], "inf": [float("inf")], "none": [None], "two": [1.0, 2.0]}[completions[0]]


def has_one(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1 when the completion contains a '1': a sparse 0/1 reward, so many groups are all 0."""
    return [float("1" in c) for c in completions]
