"""Answer-checking rewards for math-style tasks: exact numbers, math-verify, and format."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(text: str) -> str | None:
    """The content of the last `\\boxed{}` if any, else the last number in the text."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def numeric_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any],
                   **_: Any) -> list[float]:
    """1.0 when the extracted answer equals the reference number, else 0.0."""
    out = []
    for completion, ref in zip(completions, answer):
        got = extract_answer(completion)
        got_f, ref_f = (_as_float(got) if got else None), _as_float(str(ref))
        ok = got_f is not None and ref_f is not None and abs(got_f - ref_f) <= 1e-6 * max(1.0, abs(ref_f))
        out.append(1.0 if ok else 0.0)
    return out


def _numbers_in(text: str) -> set[float]:
    """Absolute values: "86-19" reads as 86 and -19, and copying it gives 19."""
    return {abs(f) for f in map(_as_float, _NUMBER.findall(text)) if f is not None}


def numeric_close_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any],
                         **_: Any) -> list[float]:
    """1.0 for the exact number; otherwise partial credit that shrinks with the distance,
    `0.5 / (1 + |got - ref| / scale)` with `scale = max(1, |ref| / 10)`, and 0 without a number
    or for a number the prompt contains.

    A dense signal for a model that is rarely exactly right yet: in a group of wrong answers the
    closer ones still get a positive advantage. Credit cannot be earned by copying: a number
    taken from the prompt is often nearer the answer than a wrong sum, and paying for it taught a
    model to restate the question and stop. Only exact answers exceed 0.5, so `accuracy`
    (reward > 0.5) and held-out evaluation still count exact answers only."""
    return _partial_credit(prompts, completions, answer,
                           lambda got, ref: 0.5 / (1.0 + abs(got - ref) / max(1.0, abs(ref) / 10)))


def _partial_credit(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any],
                    credit: Callable[[float, float], float]) -> list[float]:
    """1.0 for the exact number; 0 without a number or for a number the prompt contains (copying
    earns nothing); else `credit(got, ref)`, which must stay below 0.5."""
    out = []
    for prompt, completion, ref in zip(prompts, completions, answer):
        got = extract_answer(completion)
        got_f, ref_f = (_as_float(got) if got else None), _as_float(str(ref))
        if got_f is None or ref_f is None:
            out.append(0.0)
        elif abs(got_f - ref_f) <= 1e-6 * max(1.0, abs(ref_f)):
            out.append(1.0)
        elif abs(got_f) in _numbers_in(prompt):
            out.append(0.0)
        else:
            out.append(credit(got_f, ref_f))
    return out


def _trailing_digits_matched(got: float, ref: float) -> float:
    """The share of the reference's digits that the answer gets right, counted from the units
    digit up and stopping at the first wrong one (0 when the signs differ or either is not an
    integer)."""
    if (got < 0) != (ref < 0) or not (got.is_integer() and ref.is_integer()):
        return 0.0
    g, r = str(abs(int(got))), str(abs(int(ref)))
    k = 0
    while k < min(len(g), len(r)) and g[-1 - k] == r[-1 - k]:
        k += 1
    return k / len(r)


def numeric_digits_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any],
                          **_: Any) -> list[float]:
    """1.0 for the exact number; otherwise `0.5 * k / n` where the answer's last k digits match
    the last k of the reference's n (units first, stopping at the first wrong digit), and 0
    without a number, for a number the prompt contains, or for a non-integer reference.

    Dense credit that has to be computed: the units digit of 6279 + 1018 is (9 + 8) mod 10, the
    tens digit needs the carry, and so on up. A number copied from the prompt earns nothing, and a
    guess earns only chance: its units digit is right one time in ten, however close its size (a
    guess of the right size was what `numeric_close` paid for). Only exact answers exceed 0.5,
    so `accuracy` and held-out evaluation still count exact answers only."""
    return _partial_credit(prompts, completions, answer, lambda got, ref: 0.5 * _trailing_digits_matched(got, ref))


_WORD = re.compile(r"\w+")


def repeats_prompt(prompt: str, completion: str, span: int = 5) -> bool:
    """Whether the completion restates the prompt: it contains `span` consecutive words of it
    (case and punctuation ignored). A health signal, not a reward: a policy that learns to
    copy the question instead of answering it shows up here before it shows in accuracy."""
    words = _WORD.findall(prompt.lower())
    said = _WORD.findall(completion.lower())
    n = min(span, len(words))
    if n == 0 or len(said) < n:
        return False
    prompt_spans = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
    return any(tuple(said[i:i + n]) in prompt_spans for i in range(len(said) - n + 1))


def repeats_itself(completion: str, times: int = 3) -> bool:
    """Whether the completion has fallen into a loop: one of its lines (whitespace ignored) occurs
    `times` times or more. A health signal, not a reward: a policy rewarded for an answer line
    ("#### 12") with nothing that teaches it to stop can learn to repeat that line until the token
    budget cuts it off, and then repeats it without the answer."""
    seen: dict[str, int] = {}
    for line in completion.splitlines():
        line = line.strip()
        if line:
            seen[line] = seen.get(line, 0) + 1
            if seen[line] >= times:
                return True
    return False


def math_verify_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any],
                       **_: Any) -> list[float]:
    """1.0 when math-verify finds the completion's answer equivalent to the reference."""
    from math_verify import parse, verify

    out = []
    for completion, ref in zip(completions, answer):
        ref_text = str(ref)
        # math-verify reads LaTeX; a bare reference number parses better wrapped in $...$.
        gold = parse(ref_text if "$" in ref_text or "\\" in ref_text else f"${ref_text}$")
        pred = parse(completion)
        out.append(1.0 if gold and pred and verify(gold, pred) else 0.0)
    return out


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion ends with its answer (a number or a `\\boxed{}`), else 0.0."""
    tail = re.compile(r"(?:-?\d[\d,]*(?:\.\d+)?|\\boxed\{[^{}]*\})\W{0,3}$")
    return [1.0 if tail.search(c.strip()) else 0.0 for c in completions]
