"""Reward shaping and group filters applied between scoring and learning.

Shapes: rewards and lengths are `(P, G)` (P prompts, G completions each). These functions only
reshape numbers; which rollouts they belong to is the driver's business.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from distrl.algorithms.losses import kl_estimate

T = TypeVar("T")


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to `max_len - buffer` tokens, then falling linearly to
    `-factor` at `max_len`, so truncation is discouraged gradually rather than all at once."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_len - buffer)).clamp(min=0.0)
    return -factor * (over / buffer).clamp(max=1.0)


def kl_reward_penalty(old_logprobs: list[list[float]], ref_logprobs: list[list[float]], beta: float,
                      estimator: str = "k1") -> torch.Tensor:
    """`(N,)` sequence-level KL penalty for `--kl_in_reward` (REINFORCE++): `beta` times the sum
    over each completion's tokens of the per-token KL estimate between the sampling policy and
    the reference."""
    out = []
    for old, ref in zip(old_logprobs, ref_logprobs):
        if not old:
            out.append(0.0)
            continue
        kl = kl_estimate(torch.tensor(old), torch.tensor(ref), estimator)
        out.append(beta * float(kl.sum()))
    return torch.tensor(out)


def informative_groups(rewards: torch.Tensor, min_std: float) -> torch.Tensor:
    """`(P,)` bool: groups whose reward std reaches `min_std` (a flat group teaches nothing)."""
    if rewards.shape[-1] < 2:
        return torch.zeros(rewards.shape[0], dtype=torch.bool)
    return rewards.std(dim=-1) >= min_std


def fill_with_informative(next_round: Callable[[int], tuple[list[T], torch.Tensor]], need: int,
                          max_rounds: int, min_std: float) -> tuple[list[T], torch.Tensor, int]:
    """DAPO's dynamic sampling: call `next_round(r)` (r = 0, 1, ...), which samples fresh prompts
    and returns (groups, rewards `(P, G)`), keep the groups with std >= `min_std`, and stop once
    `need` are kept or after `max_rounds` calls. Returns (kept groups, their rewards, rounds)."""
    kept: list[T] = []
    kept_rewards: list[torch.Tensor] = []
    rounds = 0
    while len(kept) < need and rounds < max_rounds:
        groups, rewards = next_round(rounds)
        rounds += 1
        mask = informative_groups(rewards, min_std)
        for p in torch.nonzero(mask).flatten().tolist():
            kept.append(groups[p])
            kept_rewards.append(rewards[p])
    kept, kept_rewards = kept[:need], kept_rewards[:need]
    stacked = torch.stack(kept_rewards) if kept_rewards else torch.zeros(0, 0)
    return kept, stacked, rounds
