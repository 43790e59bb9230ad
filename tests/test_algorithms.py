"""Advantages, losses and KL against hand-computed numbers."""

import math

import pytest
import torch

from distrl.algorithms import (LEARNERS, aggregate, compute_advantages, get_learner, k3_kl,
                               policy_loss, token_logprobs, topk_indices)


def test_grpo_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    adv = compute_advantages("grpo", rewards)
    std0 = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    assert adv[0].tolist() == pytest.approx([0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0])
    std1 = math.sqrt(2 / 3)
    assert adv[1].tolist() == pytest.approx([1 / std1, -1 / std1, 0.0, 0.0])


def test_zero_std_group_gives_exactly_zero():
    rewards = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7 + 1e-9]])
    adv = compute_advantages("grpo", rewards)
    assert torch.equal(adv, torch.zeros_like(adv))


def test_pg_advantage_is_reward_minus_group_mean():
    adv = compute_advantages("pg", torch.tensor([[1.0, 0.0, 0.5]]))
    assert adv.tolist()[0] == pytest.approx([0.5, -0.5, 0.0])


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="grpo, pg"):
        compute_advantages("nope", torch.zeros(1, 2))
    with pytest.raises(KeyError, match="ppo_clip"):
        policy_loss("nope", None, None, None, None)
    with pytest.raises(KeyError, match="valid: dr_grpo, grpo, gspo, pg, reinforce_pp, rloo"):
        get_learner("ppo")
    assert set(LEARNERS) == {"pg", "grpo", "dr_grpo", "rloo", "reinforce_pp", "gspo"}


def test_topk_keeps_best_per_group_with_stable_ties():
    rewards = torch.tensor([[0.0, 1.0, 0.5, 1.0], [2.0, 2.0, 2.0, 0.0]])
    assert topk_indices(rewards, 2).tolist() == [[1, 3], [0, 1]]


def _ppo(logprobs, old, adv, eps=0.2):
    mask = torch.ones_like(logprobs)
    return policy_loss("ppo_clip", logprobs, old, adv, mask, clip_eps=eps)


@pytest.mark.parametrize("ratio,adv,clipped", [
    (1.19, 1.0, False), (1.21, 1.0, True),    # positive advantage: clipped above 1 + eps
    (0.81, -1.0, False), (0.79, -1.0, True),  # negative advantage: clipped below 1 - eps
    (0.5, 1.0, False), (1.5, -1.0, False),    # the pessimistic side is never clipped
])
def test_clipping_takes_effect_exactly_beyond_clip_eps(ratio, adv, clipped):
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = _ppo(lp, torch.zeros(1, 1), torch.tensor([adv]))
    loss.backward()
    assert metrics["clip_frac"].item() == (1.0 if clipped else 0.0)
    expected = -adv * (min(max(ratio, 0.8), 1.2) if clipped else ratio)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Clipped tokens carry no gradient; unclipped ones carry -A * ratio.
    assert lp.grad.item() == pytest.approx(0.0 if clipped else -adv * ratio, abs=1e-6)


def test_k3_kl_zero_when_equal_and_positive_otherwise():
    lp = torch.tensor([[-1.0, -2.0, -0.5]])
    assert torch.equal(k3_kl(lp, lp), torch.zeros_like(lp))
    ref = lp + torch.tensor([[0.3, -0.2, 0.0]])
    kl = k3_kl(lp, ref)
    assert kl[0, 0].item() == pytest.approx(math.exp(0.3) - 0.3 - 1)
    assert (kl >= 0).all()


def test_kl_term_enters_loss_with_beta():
    lp = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-0.5, -1.0]])
    mask = torch.ones_like(lp)
    base, _ = policy_loss("ppo_clip", lp, lp, torch.zeros(1), mask, ref_logprobs=ref, beta=0.0)
    with_kl, m = policy_loss("ppo_clip", lp, lp, torch.zeros(1), mask, ref_logprobs=ref, beta=0.1)
    per_token_kl = math.exp(0.5) - 0.5 - 1
    assert m["kl"].item() == pytest.approx(per_token_kl / 2)
    assert with_kl.item() - base.item() == pytest.approx(0.1 * per_token_kl / 2)


def test_all_zero_mask_gives_zero_loss_without_nan():
    lp = torch.randn(2, 3, requires_grad=True)
    for name in ("pg", "ppo_clip", "gspo"):
        for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
            loss, metrics = policy_loss(name, lp, lp.detach(), torch.ones(2), torch.zeros(2, 3), agg=agg,
                                        ref_logprobs=lp.detach() + 1.0, beta=0.1, entropy=torch.ones(2, 3),
                                        entropy_coef=0.01)
            loss.backward()
            assert loss.item() == 0.0 and not torch.isnan(lp.grad).any()
            assert all(not torch.isnan(v) for v in metrics.values())


def test_prompt_and_padding_positions_never_count():
    lp = torch.tensor([[-1.0, -2.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert aggregate(lp, mask).item() == pytest.approx(-1.5)
    assert aggregate(lp, mask, "seq_mean_token_mean").item() == pytest.approx(-1.5)


def test_aggregations_weigh_tokens_vs_sequences():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(7 / 5)
    assert aggregate(values, mask, "seq_mean_token_mean").item() == pytest.approx((1 + 3) / 2)


def test_global_normalisers_make_microbatches_add_up():
    torch.manual_seed(0)
    lp, old, adv = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4)
    mask = (torch.rand(4, 5) > 0.3).float()
    for agg in ("token_mean", "seq_mean_token_mean"):
        whole, _ = policy_loss("ppo_clip", lp, old, adv, mask, agg=agg)
        n_tok = mask.sum().item()
        parts = sum(policy_loss("ppo_clip", lp[s:s + 2], old[s:s + 2], adv[s:s + 2], mask[s:s + 2],
                                agg=agg, num_tokens=n_tok, num_seqs=4)[0] for s in (0, 2))
        assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_pg_gradient_is_minus_advantage_times_grad_logprob():
    # A toy policy: softmax over 3 actions with logits theta; one sampled action per sequence.
    theta = torch.tensor([0.2, -0.1, 0.4], requires_grad=True)
    actions = torch.tensor([[2], [0]])
    adv = torch.tensor([1.5, -0.5])
    logp = torch.log_softmax(theta, -1)[actions]  # (2, 1)
    loss, _ = policy_loss("pg", logp, logp.detach(), adv, torch.ones(2, 1), agg="token_mean")
    (grad,) = torch.autograd.grad(loss, theta)
    probs = torch.softmax(theta, -1).detach()
    expected = torch.zeros(3)
    for a, A in zip(actions[:, 0].tolist(), adv.tolist()):
        grad_logp = -probs.clone()
        grad_logp[a] += 1.0
        expected += -A * grad_logp / 2  # token_mean over 2 tokens
    assert torch.allclose(grad, expected, atol=1e-6)


def test_token_logprobs_use_temperature_and_full_vocabulary():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    out = token_logprobs(logits, torch.tensor([[1]]), temperature=0.5)
    expected = torch.log_softmax(logits / 0.5, -1)[0, 0, 1]
    assert out.item() == pytest.approx(expected.item())


@pytest.mark.parametrize("name", ["pg", "ppo_clip"])
def test_decoupled_loss_weights_stale_tokens_by_truncated_importance(name):
    """Off-policy (async) rollouts: the gradient is the on-policy one scaled per token by
    pi_prox / pi_behaviour, capped; with fresh rollouts it is exactly the on-policy gradient."""
    theta = torch.tensor([0.2, -0.1, 0.4], requires_grad=True)
    actions = torch.tensor([[2], [0]])
    adv, mask = torch.tensor([1.5, -0.5]), torch.ones(2, 1)

    def grad(old_shift, cap=2.0):
        logp = torch.log_softmax(theta, -1)[actions]
        old = logp.detach() + old_shift  # the behaviour policy's log-probs
        loss, metrics = policy_loss(name, logp, old, adv, mask, prox_logprobs=logp.detach(),
                                    max_importance_weight=cap)
        return torch.autograd.grad(loss, theta)[0], metrics

    def grad_per_token(i):
        logp = torch.log_softmax(theta, -1)[actions]
        loss, _ = policy_loss(name, logp[i:i + 1], logp[i:i + 1].detach(), adv[i:i + 1], mask[i:i + 1], num_tokens=2)
        return torch.autograd.grad(loss, theta)[0]

    fresh, m = grad(torch.zeros(2, 1))
    assert torch.allclose(fresh, grad_per_token(0) + grad_per_token(1), atol=1e-7)
    assert m["importance_weight"].item() == pytest.approx(1.0)
    # Token 0 was sampled by a policy that liked it less (weight e^0.5), token 1 by one that liked
    # it far more (weight e^-3): each token's gradient is scaled by its weight.
    stale, m = grad(torch.tensor([[-0.5], [3.0]]))
    expected = math.exp(0.5) * grad_per_token(0) + math.exp(-3.0) * grad_per_token(1)
    assert torch.allclose(stale, expected, atol=1e-6)
    # A weight above the cap is truncated to it.
    capped, _ = grad(torch.tensor([[-5.0], [0.0]]), cap=2.0)
    assert torch.allclose(capped, 2.0 * grad_per_token(0) + grad_per_token(1), atol=1e-6)
