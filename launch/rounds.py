"""What a step is made of in the driver: a Batch (prompts and the generate calls producing their
rollouts), a Round (those rollouts scored), and the spread of completion lengths."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from distrl.generation import Rollout, SamplingParams


@dataclasses.dataclass
class Batch:
    """One step's prompts and the generation calls producing their rollouts."""

    step: int
    indices: list[int]
    prompts: list[list[int]]
    sampling: SamplingParams
    learner_share: int
    refs: dict[int, Any] = dataclasses.field(default_factory=dict)  # worker (0 = learner) -> ref
    calls: dict[int, tuple] = dataclasses.field(default_factory=dict)  # worker -> generate() args
    data_position: tuple[int, int] = (0, 0)  # the sampler's (epoch, position) after this batch
    replays: int = 0  # the last `replays` prompts are replayed ones (--replay_prompts)
    launched: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class Round:
    """One generation round of a step, scored: groups `(P,)` of rollouts and rewards `(P, G)`."""

    groups: list[list[Rollout]]
    rows: list[dict]
    rewards: torch.Tensor
    reward_errors: int
    reward_timeouts: int
    staleness: list[int]
    gen_s: float  # waiting for the rollouts
    reward_s: float
    gen_wait: float  # from launch to the last rollout (async batches launch a step early)
    tokens: int  # completion tokens generated
    copies: torch.Tensor  # (P, G): 1.0 where the completion restates its prompt (repeats_prompt)
    loops: torch.Tensor  # (P, G): 1.0 where the completion repeats one of its lines (repeats_itself)
    indices: list[int] = dataclasses.field(default_factory=list)  # (P,) training-row index of each group
    replayed: list[bool] = dataclasses.field(default_factory=list)  # (P,) the prompt was a replay


def length_percentiles(lengths: list[int]) -> dict[str, float]:
    """How completion lengths are spread in a step: 10th and 90th percentile, and the longest."""
    ordered = sorted(lengths)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {"completion_len_p10": at(0.1), "completion_len_p90": at(0.9), "completion_len_max": float(ordered[-1])}
