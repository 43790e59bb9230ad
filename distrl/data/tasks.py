"""Built-in task families: procedural integer-answer problems with fixed train/validation/test splits.

Each family enumerates or samples its problems with a fixed seed, removes duplicate prompts and
deals them out: the first 300 to `validation`, the next 300 to `test`, the rest to `train`. The
splits are the same on every machine and for every `--seed`, and never share a prompt. (For
`arithmetic` the order is the one earlier releases used, so the 50 prompts the first defaults
were tuned on are now in its validation split, not its test split.)

Defaults are chosen on the validation split of the two TUNING families; the others exist so that
a gain can be reported on problems no choice was made on (see bench/learning.py):

- `arithmetic`: "What is 47 * 12?", 2-digit + - x (tuning).
- `word`: one-step word problems in our own templates, 2-digit numbers (tuning).
- `two_step`: two operations, in symbols ("What is 23 + 45 - 17?") or words ("twice as many").
- `big_numbers`: 3- and 4-digit + - and 3-digit x 1-digit, outside the tuning range; the
  untrained model is close to 0% here.
- `gsm_format`: multi-sentence problems that ask for the answer after `#### `, as GSM8K writes it.

Scoring is left to the rewards: every answer is an integer written as digits.
"""

from __future__ import annotations

import functools
import random
from typing import Callable

from distrl.config import ConfigError

Row = dict[str, str]
SPLITS = ("train", "validation", "test")
HELD_OUT_SIZE = 300
TUNING_FAMILIES = ("arithmetic", "word")
_SEED = 20261126
_NAMES = ("Hana", "Omar", "Lena", "Tariq", "Mia", "Jonas", "Priya", "Felix", "Ines", "Kofi")
_ITEMS = ("books", "stamps", "apples", "marbles", "pencils", "shells", "cards", "coins")


def _arithmetic(rng: random.Random) -> list[Row]:
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    return [{"prompt": f"What is {a} {op} {b}? Answer with just the number.", "answer": str(fn(a, b))}
            for a in range(10, 100) for b in range(10, 100) for op, fn in ops.items()]


def _word(rng: random.Random) -> list[Row]:
    rows = []
    for _ in range(9000):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b = rng.randint(20, 99), rng.randint(10, 99)
        kind = rng.randrange(5)
        if kind == 0:
            q, ans = f"{name} had {a} {item} and got {b} more. How many {item} does {name} have now?", a + b
        elif kind == 1:
            q, ans = f"One box holds {a} {item} and another holds {b}. How many {item} are in both boxes?", a + b
        elif kind == 2:
            a, b = max(a, b), min(a, b)
            q, ans = f"{name} had {a} {item} and gave away {b}. How many {item} does {name} have left?", a - b
        elif kind == 3:
            a, b = max(a, b), min(a, b)
            q, ans = f"A bus carried {a} people. At the stop, {b} got off. How many people are still on the bus?", a - b
        else:
            b = rng.randint(2, 9)
            q, ans = f"Each bag has {b} {item}. How many {item} are in {a} bags?", a * b
        rows.append({"prompt": q, "answer": str(ans)})
    return rows


def _two_step(rng: random.Random) -> list[Row]:
    rows = []
    for _ in range(9000):
        name, other, item = *rng.sample(_NAMES, 2), rng.choice(_ITEMS)
        a, b, c = rng.randint(10, 60), rng.randint(10, 60), rng.randint(5, 20)
        kind = rng.randrange(4)
        if kind == 0:
            q, ans = f"What is {a} + {b} - {c}? Answer with just the number.", a + b - c
        elif kind == 1:
            q, ans = f"What is {a} - {c} + {b}? Answer with just the number.", a - c + b
        elif kind == 2:
            q, ans = (f"{name} has {a} {item}. {other} has twice as many. How many {item} do they "
                      "have together?"), 3 * a
        else:
            q, ans = (f"{name} had {a} {item}, bought {b} more, then gave away {c}. How many {item} "
                      f"does {name} have now?"), a + b - c
        rows.append({"prompt": q, "answer": str(ans)})
    return rows


def _big_numbers(rng: random.Random) -> list[Row]:
    rows = []
    for _ in range(9000):
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randint(100, 9999), rng.randint(100, 9999)
            op, ans = "+", a + b
        elif kind == 1:
            a, b = sorted((rng.randint(100, 9999), rng.randint(100, 9999)), reverse=True)
            op, ans = "-", a - b
        else:
            a, b = rng.randint(100, 999), rng.randint(2, 9)
            op, ans = "*", a * b
        rows.append({"prompt": f"What is {a} {op} {b}? Answer with just the number.", "answer": str(ans)})
    return rows


def _gsm_format(rng: random.Random) -> list[Row]:
    rows = []
    tail = " Write the final answer after '#### '."
    for _ in range(9000):
        name = rng.choice(_NAMES)
        kind = rng.randrange(3)
        if kind == 0:
            per_day, days, sold = rng.randint(10, 40), rng.randint(2, 7), rng.randint(1, 9)
            q = (f"A bakery bakes {per_day} loaves every day and sells all but {sold} of them. "
                 f"How many loaves does it sell in {days} days?")
            ans = (per_day - sold) * days
        elif kind == 1:
            price, count, paid = rng.randint(2, 9), rng.randint(2, 9), 100
            q = (f"{name} buys {count} notebooks at ${price} each and pays with a ${paid} bill. "
                 "How many dollars of change does " + name + " get?")
            ans = paid - price * count
        else:
            pages, first, second = rng.randint(60, 200), rng.randint(10, 30), rng.randint(10, 30)
            q = (f"A book has {pages} pages. {name} reads {first} pages on Monday and {second} pages "
                 "on Tuesday. How many pages are left to read?")
            ans = pages - first - second
        rows.append({"prompt": q + tail, "answer": str(ans)})
    return rows


FAMILIES: dict[str, Callable[[random.Random], list[Row]]] = {
    "arithmetic": _arithmetic, "word": _word, "two_step": _two_step,
    "big_numbers": _big_numbers, "gsm_format": _gsm_format,
}


def task_splits(family: str) -> dict[str, list[Row]]:
    """{"train", "validation", "test"} rows of a built-in family: disjoint, fixed across runs."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown task '{family}': built-in tasks are {', '.join(FAMILIES)}")
    return {name: list(rows) for name, rows in _dealt(family).items()}


@functools.lru_cache(maxsize=None)
def _dealt(family: str) -> dict[str, list[Row]]:
    rng = random.Random(_SEED if family == "arithmetic" else f"{_SEED}-{family}")
    unique: dict[str, Row] = {}
    for row in FAMILIES[family](rng):
        unique.setdefault(row["prompt"], row)
    rows = list(unique.values())
    rng.shuffle(rows)
    n = HELD_OUT_SIZE
    return {"validation": rows[:n], "test": rows[n:2 * n], "train": rows[2 * n:]}
