"""Dr. GRPO, RLOO, REINFORCE++, GSPO, clip-higher, aggregations, KL estimators, shaping and
filters against hand-computed numbers."""

import math

import pytest
import torch

from distrl.algorithms import aggregate, compute_advantages, kl_estimate, policy_loss
from distrl.algorithms.shaping import (fill_with_informative, informative_groups, kl_reward_penalty,
                                       overlong_penalty)
from distrl.config import AlgoConfig, RunConfig, SamplingConfig, TrainConfig
from distrl.generation import Rollout


@pytest.mark.parametrize("name, rewards, expected", [
    ("dr_grpo", [[1.0, 0.0, 0.0, 1.0]], [[0.5, -0.5, -0.5, 0.5]]),
    ("rloo", [[1.0, 0.0, 0.0, 0.0]], [[1.0, -1 / 3, -1 / 3, -1 / 3]]),
    ("reinforce_pp", [[1.0, 0.0], [0.0, 0.0]], [[1.5, -0.5], [-0.5, -0.5]]),
])
def test_advantages_hand_computed(name, rewards, expected):
    out = compute_advantages(name, torch.tensor(rewards))
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "pg"])
def test_equal_rewards_and_single_completions_give_zero(name):
    assert torch.equal(compute_advantages(name, torch.full((3, 4), 0.25)), torch.zeros(3, 4))
    if name != "reinforce_pp":  # a group of one has no baseline to compare with
        assert torch.equal(compute_advantages(name, torch.tensor([[1.0], [0.0]])), torch.zeros(2, 1))


def _one_token_loss(name, ratio, adv, **kw):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = policy_loss(name, logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    return loss.item(), metrics["clip_frac"].item()


def test_clip_higher_lets_good_tokens_rise_further():
    assert _one_token_loss("ppo_clip", 1.25, 1.0) == pytest.approx((-1.2, 1.0))
    assert _one_token_loss("ppo_clip", 1.25, 1.0, clip_eps=0.2, clip_eps_high=0.28) == pytest.approx((-1.25, 0.0))
    # The lower bound still holds for a bad token pushed down.
    assert _one_token_loss("ppo_clip", 0.75, -1.0, clip_eps=0.2, clip_eps_high=0.28) == pytest.approx((0.8, 1.0))


def test_gspo_clips_the_sequence_ratio_not_the_token_ratios():
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third position is padding
    logp = torch.tensor([[0.1, 0.3, 5.0]], requires_grad=True)
    s = math.exp(0.2)  # geometric mean of the two real token ratios
    loss, m = policy_loss("gspo", logp, old, torch.tensor([-1.0]), mask, clip_eps=3e-4, clip_eps_high=4e-4)
    assert loss.item() == pytest.approx(s) and m["clip_frac"].item() == 0.0  # unclipped side wins
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, torch.tensor([[s / 2, s / 2, 0.0]]), atol=1e-6)
    loss, m = policy_loss("gspo", logp, old, torch.tensor([1.0]), mask, clip_eps=3e-4, clip_eps_high=4e-4)
    assert loss.item() == pytest.approx(-1.0004) and m["clip_frac"].item() == 1.0
    assert torch.equal(torch.autograd.grad(loss, logp)[0], torch.zeros(1, 3))  # clipped: no gradient


def test_dr_grpo_aggregation_divides_by_a_constant():
    values, mask = torch.ones(2, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert aggregate(values, mask, "seq_mean_token_sum_norm", norm_len=8).item() == pytest.approx((2 / 8 + 4 / 8) / 2)
    assert aggregate(values, mask, "seq_mean_token_sum_norm").item() == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert aggregate(values, torch.zeros(2, 4), "seq_mean_token_sum_norm").item() == 0.0


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1.0))
    for name in ("k1", "k2", "k3"):
        assert kl_estimate(ref, ref, name).item() == 0.0


def test_entropy_bonus_lowers_the_loss_by_coef_times_entropy():
    logp, old, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -2.0]]), torch.ones(1, 2)
    entropy = torch.tensor([[2.0, 1.0]])
    base, _ = policy_loss("ppo_clip", logp, old, torch.tensor([1.0]), mask)
    bonus, m = policy_loss("ppo_clip", logp, old, torch.tensor([1.0]), mask, entropy=entropy, entropy_coef=0.1)
    assert bonus.item() == pytest.approx(base.item() - 0.1 * 1.5) and m["entropy"].item() == pytest.approx(1.5)


def test_overlong_penalty_and_kl_in_reward():
    lengths = torch.tensor([[24, 28, 32, 10]])
    assert torch.allclose(overlong_penalty(lengths, 32, 8), torch.tensor([[0.0, -0.5, -1.0, 0.0]]))
    assert torch.equal(overlong_penalty(lengths, 32, 0), torch.zeros(1, 4))
    penalty = kl_reward_penalty([[-1.0, -1.0], []], [[-2.0, -1.5], []], beta=0.1, estimator="k1")
    assert torch.allclose(penalty, torch.tensor([0.15, 0.0]))


def test_dynamic_sampling_fills_the_batch_and_stops_at_the_cap():
    rounds = [torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
              torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    calls = []

    def next_round(r):
        calls.append(r)
        return [(r, p) for p in range(2)], rounds[r]

    kept, rewards, used = fill_with_informative(next_round, need=2, max_rounds=5, min_std=1e-4)
    assert kept == [(0, 1), (1, 0)] and used == 2 and calls == [0, 1]
    assert torch.equal(rewards, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))

    flat = torch.ones(2, 2)
    kept, _, used = fill_with_informative(lambda r: ([r, r], flat), need=2, max_rounds=3, min_std=1e-4)
    assert kept == [] and used == 3  # the cap, not an endless loop


def test_min_group_std_and_positive_only_choose_what_the_learner_sees():
    from launch.learning_signal import learning_signal

    cfg = TrainConfig(algo=AlgoConfig(min_group_std=0.1, positive_only=True), run=RunConfig())
    groups = [[Rollout([1], [2, i], [-1.0, -1.0], "stop", 0) for i in range(4)] for _ in range(2)]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.52, 0.5, 0.5, 0.5]])  # group 1: std 0.01
    rollouts, adv, ref, extra = learning_signal(cfg, groups, rewards, reference=None)
    assert rollouts == [groups[0][0]] and adv == [pytest.approx(1.5)] and extra["rollouts_trained"] == 1
    assert informative_groups(rewards, 0.1).tolist() == [True, False]


def test_frac_zero_std_counts_the_groups_the_learner_gets_no_signal_from():
    from launch.learning_signal import learning_signal

    lengths = [[4, 4, 4, 4], [4, 8, 12, 16]]  # group 1: the last two run into the overlong buffer
    groups = [[Rollout([1], [2] * n, [-1.0] * n, "stop", 0) for n in row] for row in lengths]
    rewards = torch.zeros(2, 4)  # all wrong: as scored, no group has signal
    plain = TrainConfig(algo=AlgoConfig(), run=RunConfig())
    assert learning_signal(plain, groups, rewards, reference=None)[3]["frac_zero_std"] == 1.0
    shaped = TrainConfig(algo=AlgoConfig(overlong_buffer=8), run=RunConfig(),
                         sampling=SamplingConfig(max_new_tokens=16))
    extra = learning_signal(shaped, groups, rewards, reference=None)[3]
    assert extra["frac_zero_std"] == 0.5  # the penalty tells group 1's lengths apart
