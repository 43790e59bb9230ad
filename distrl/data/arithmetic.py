"""The built-in `arithmetic` task: 2-digit addition, subtraction and multiplication.

Every problem `a op b` with a, b in [10, 99] is enumerated and shuffled with a fixed seed, so
the train/test split is the same on every machine and for every `--seed`.
"""

from __future__ import annotations

import random

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
TEST_SIZE = 500
_SPLIT_SEED = 20261126


def _all_problems() -> list[dict[str, str]]:
    rows = []
    for a in range(10, 100):
        for b in range(10, 100):
            for op, fn in OPS.items():
                rows.append({"prompt": f"What is {a} {op} {b}? Answer with just the number.",
                             "answer": str(fn(a, b))})
    random.Random(_SPLIT_SEED).shuffle(rows)
    return rows


def arithmetic_splits() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, test): 23,800 and 500 problems, disjoint, fixed across runs."""
    rows = _all_problems()
    return rows[TEST_SIZE:], rows[:TEST_SIZE]
