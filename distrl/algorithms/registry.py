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


LEARNERS: dict[str, Learner] = {
    # REINFORCE with the group-mean baseline (DistRL-LLM).
    "pg": Learner(advantage="pg", loss="pg"),
    # GRPO (DeepSeekMath): z-scored group advantages, PPO-clip, k3 KL to the reference.
    "grpo": Learner(advantage="grpo", loss="ppo_clip"),
    # Dr. GRPO (Liu et al. 2025): group mean baseline without std scaling, PPO-clip.
    "dr_grpo": Learner(advantage="dr_grpo", loss="ppo_clip"),
    # RLOO (Ahmadian et al. 2024): leave-one-out baseline, PPO-clip (on-policy: plain PG).
    "rloo": Learner(advantage="rloo", loss="ppo_clip"),
    # REINFORCE++ (Hu 2025): batch-normalised rewards, no group baseline, PPO-clip.
    "reinforce_pp": Learner(advantage="reinforce_pp", loss="ppo_clip"),
    # GSPO (Zheng et al. 2025): GRPO advantages with a sequence-level clipped ratio.
    "gspo": Learner(advantage="grpo", loss="gspo"),
}


def get_learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise KeyError(f"unknown learner '{name}'; valid: {', '.join(sorted(LEARNERS))}")
    return LEARNERS[name]
