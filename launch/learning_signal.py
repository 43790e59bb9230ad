"""What the learner trains on, from a step's scored groups: reward shaping (overlong penalty, KL
in the reward), advantages, and the filters (--min_group_std, --topk, --positive_only), with the
reference actor's log-probs when the loss needs them. The math is in `distrl/algorithms/`; this
only chains it and asks the reference actor."""

from __future__ import annotations

from typing import Any

import torch

from distrl.algorithms import compute_advantages, topk_indices
from distrl.algorithms.shaping import informative_groups, kl_reward_penalty, overlong_penalty
from distrl.config import TrainConfig
from distrl.generation import Rollout
from launch.calls import wait


def learning_signal(cfg: TrainConfig, groups: list[list[Rollout]], rewards: torch.Tensor,
                    reference: Any | None) -> tuple[list[Rollout], list[float], list | None, dict]:
    """Shape rewards (overlong penalty, KL in reward), compute advantages, and choose what the
    learner trains on (--min_group_std, --topk, --positive_only); with reference log-probs."""
    algo, scores = cfg.algo, rewards.clone()
    extra: dict[str, float] = {}
    if algo.overlong_buffer:
        lengths = torch.tensor([[len(r.completion_ids) for r in g] for g in groups])
        penalty = overlong_penalty(lengths, cfg.sampling.max_new_tokens, algo.overlong_buffer,
                                   algo.overlong_penalty)
        scores += penalty
        extra["overlong_penalty_mean"] = float(penalty.mean())
    ref_all = None
    if algo.kl_in_reward:
        flat = [r for g in groups for r in g]
        ref_all = wait([reference.logprobs.remote(flat)], ["distrl-reference"], cfg.run.timeout_s,
                       "reference log-probs")[0]
        penalty = kl_reward_penalty([r.logprobs for r in flat], ref_all, algo.beta, algo.kl_estimator)
        scores -= penalty.view(len(groups), -1)
        extra["kl_reward_penalty_mean"] = float(penalty.mean())
    advantages = compute_advantages(algo.advantage_name, scores, algo.std_floor)
    size = scores.shape[1]
    # Groups without signal after shaping (an overlong penalty can give a flat group some).
    extra["frac_zero_std"] = 1.0 - float(informative_groups(scores, algo.std_floor).float().mean())
    informative = (informative_groups(scores, algo.min_group_std) if algo.min_group_std > 0
                   else torch.ones(len(groups), dtype=torch.bool))
    best = topk_indices(scores, algo.topk) if algo.topk else torch.arange(size).expand_as(scores)
    pairs = [(p, j) for p in range(len(groups)) if informative[p] for j in best[p].tolist()
             if not algo.positive_only or advantages[p, j] > 0]
    extra["rollouts_trained"] = len(pairs)
    if not pairs:  # every rollout filtered out: measure (logprob_gap) but learn nothing
        pairs = [(p, j) for p in range(len(groups)) for j in range(size)]
        advantages = torch.zeros_like(advantages)
    rollouts = [groups[p][j] for p, j in pairs]
    adv = [float(advantages[p, j]) for p, j in pairs]
    ref_lp = None
    if ref_all is not None:
        ref_lp = [ref_all[p * size + j] for p, j in pairs]
    elif reference is not None:
        ref_lp = wait([reference.logprobs.remote(rollouts)], ["distrl-reference"],
                      cfg.run.timeout_s, "reference log-probs")[0]
    return rollouts, adv, ref_lp, extra
