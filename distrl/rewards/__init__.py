"""Reward functions: plain callables `(prompts, completions, **row) -> list[float]`.

Built-ins are registered by name (`numeric`, `math_verify`, `format`); `--reward module:function`
imports a user's own. `score` checks what a reward returns: one finite float per completion.
Running rewards in a pool with timeouts is left to the caller.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

from distrl.rewards.answers import (format_reward, math_verify_reward, numeric_close_reward, numeric_digits_reward,
                                    numeric_reward)

RewardFn = Callable[..., list[float]]

REWARDS: dict[str, RewardFn] = {
    "numeric": numeric_reward,
    "numeric_close": numeric_close_reward,
    "numeric_digits": numeric_digits_reward,
    "math_verify": math_verify_reward,
    "format": format_reward,
}


def load_reward(spec: str) -> RewardFn:
    """A registered reward name, or `module:function` importable from the working directory."""
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown reward '{spec}': use one of {', '.join(sorted(REWARDS))} "
                         "or 'module:function'")
    module_name, fn_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--reward {spec}: cannot import module '{module_name}' ({e})") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"--reward {spec}: module '{module_name}' has no function '{fn_name}'")
    return fn


def score(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str],
          columns: dict[str, Sequence[Any]]) -> list[float]:
    """Call a reward and check it returned one finite number per completion."""
    rewards = fn(list(prompts), list(completions), **{k: list(v) for k, v in columns.items()})
    name = getattr(fn, "__name__", repr(fn))
    if rewards is None or len(rewards) != len(completions):
        got = "None" if rewards is None else f"{len(rewards)} values"
        raise ValueError(f"reward {name} returned {got} for {len(completions)} completions")
    try:
        out = [float(r) for r in rewards]
    except (TypeError, ValueError):
        odd = next(r for r in rewards if not isinstance(r, (int, float)))
        raise ValueError(f"reward {name} returned {odd!r}, not a number") from None
    bad = [r for r in out if not math.isfinite(r)]
    if bad:
        raise ValueError(f"reward {name} returned a non-finite value ({bad[0]})")
    return out
