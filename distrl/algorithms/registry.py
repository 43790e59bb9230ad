"""Name registries shared by the algorithm modules, and the `--learner` presets built on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def make_register(table: dict[str, Callable], kind: str) -> Callable[[str], Callable[[F], F]]:
    """Return a decorator that files a function in `table` under a name, refusing duplicates."""

    def register(name: str) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            if name in table:
                raise ValueError(f"{kind} '{name}' is already registered")
            table[name] = fn
            return fn

        return wrap

    return register


def lookup(table: dict[str, Callable], kind: str, name: str) -> Callable:
    if name not in table:
        raise KeyError(f"unknown {kind} '{name}'; valid: {', '.join(sorted(table))}")
    return table[name]


@dataclass(frozen=True)
class Learner:
    """What `--learner NAME` means: an advantage estimator and a policy loss."""

    advantage: str
    loss: str
    needs_groups: bool  # the baseline comes from the other completions of the same prompt


LEARNERS: dict[str, Learner] = {
    # REINFORCE with the group-mean baseline (DistRL-LLM).
    "pg": Learner(advantage="pg", loss="pg", needs_groups=True),
    # GRPO (DeepSeekMath): z-scored group advantages, PPO-clip, k3 KL to the reference.
    "grpo": Learner(advantage="grpo", loss="ppo_clip", needs_groups=True),
}


def get_learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise KeyError(f"unknown learner '{name}'; valid: {', '.join(sorted(LEARNERS))}")
    return LEARNERS[name]
