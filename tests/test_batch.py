"""Collating rollouts, micro-batch planning, and chunked log-probs against the plain path."""

import dataclasses

import pytest
import torch

from distrl.batch import collate, completion_logprobs, gap_rows, plan_microbatches
from distrl.config import ModelConfig
from distrl.generation import Rollout
from distrl.models import load_policy


def _rollouts(n=6, seed=0, vocab=60):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p, c = 3 + i % 4, 2 + (i * 3) % 7
        out.append(Rollout(torch.randint(4, vocab, (p,), generator=g).tolist(),
                           torch.randint(4, vocab, (c,), generator=g).tolist(), [0.0] * c, "length", 0))
    return out


def test_collate_masks_exactly_the_sampled_tokens():
    r = Rollout([5, 6, 7], [8, 2], [-0.5, -0.25], "stop", 0)
    short = Rollout([5], [9], [-1.0], "length", 0)
    b = collate([r, short], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 2], [5, 9, 0, 0, 0]]
    assert b.completion_ids.tolist() == [[8, 2], [9, 0]]
    assert b.completion_mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert b.positions.tolist()[0] == [2, 3]  # logits at 2 predict token 3 (the first completion id)
    assert b.old_logprobs.tolist() == [[-0.5, -0.25], [-1.0, 0.0]]


def test_microbatch_plan_respects_rows_and_token_budget():
    lengths = [5, 30, 7, 12, 12, 3, 50, 9]
    plans = plan_microbatches(lengths, max_rows=3, max_tokens=36)
    assert sorted(i for p in plans for i in p) == list(range(len(lengths)))  # each row exactly once
    for p in plans:
        assert len(p) <= 3
        assert len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 36
    assert [6] in plans  # longer than the budget: alone
    assert plan_microbatches(lengths, max_rows=4) == [[5, 0, 2, 7], [3, 4, 1, 6]]


def test_microbatch_plan_keeps_rows_without_gradient_apart():
    lengths = [5, 30, 7, 12, 12, 3, 50, 9]
    grad = [False, True, False, False, True, False, False, False]
    plans = plan_microbatches(lengths, max_rows=4, needs_grad=grad)
    assert sorted(i for p in plans for i in p) == list(range(len(lengths)))  # each row exactly once
    assert plans == [[4, 1], [5, 0, 2, 7], [3, 6]]  # rows with a gradient first, never mixed


def test_gap_rows_caps_each_sampler_and_spreads_over_its_groups():
    samplers = [0] * 16 + [1] * 24 + [2] * 3  # the learner's 2 groups of 8, a generator's 3, one with 3 rows
    picked = gap_rows(samplers, per_sampler=4)
    assert [samplers[i] for i in picked] == [0] * 4 + [1] * 4 + [2] * 3
    assert picked[:4] == [2, 6, 10, 14]  # both of the learner's groups, not its first rows only
    assert {i // 8 for i in picked[4:8]} == {2, 3, 4}  # each of the generator's groups
    assert gap_rows(samplers, per_sampler=0) == list(range(len(samplers)))


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_logprobs_match_the_plain_path(tiny_model_dir, chunk):
    model = load_policy(tiny_model_dir, ModelConfig(dtype="float32"), torch.device("cpu"))
    batch = collate(_rollouts(), pad_id=0)
    plain = completion_logprobs(model, batch, temperature=0.7)
    plain.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked = completion_logprobs(model, batch, temperature=0.7, chunk_size=chunk)
    chunked.sum().backward()
    assert torch.allclose(plain, chunked, atol=1e-5)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)
    assert (chunked[batch.completion_mask == 0] == 0).all()


def test_chunked_logprobs_work_through_a_lora_adapter(tiny_model_dir):
    model = load_policy(tiny_model_dir, ModelConfig(lora_rank=4, dtype="float32"), torch.device("cpu"), seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a non-trivial adapter
    batch = collate(_rollouts(), pad_id=0)
    assert torch.allclose(completion_logprobs(model, batch, 1.0),
                          completion_logprobs(model, batch, 1.0, chunk_size=2), atol=1e-5)


def _groups(prompts=3, per_prompt=4, seed=1, vocab=60):
    """Rows sharing prompts of different lengths (3-6 tokens), completions of 1-7, shuffled."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for u in range(prompts):
        prompt = torch.randint(4, vocab, (3 + u % 4,), generator=g).tolist()
        for k in range(per_prompt):
            c = 1 + (u + 3 * k) % 7
            out.append(Rollout(prompt, torch.randint(4, vocab, (c,), generator=g).tolist(), [0.0] * c, "length", 0))
    order = torch.randperm(len(out), generator=g).tolist()
    return [out[i] for i in order]


@pytest.mark.parametrize("lora", [0, 4])
def test_a_shared_prompt_runs_once_with_the_per_row_numbers(tiny_model_dir, lora):
    model = load_policy(tiny_model_dir, ModelConfig(dtype="float32", lora_rank=lora), torch.device("cpu"), seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a non-trivial adapter
    rows = _groups()
    batch = collate(rows, pad_id=0)
    assert batch.shared is not None and batch.shared.prefix_ids.shape[0] == 3
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    shared = completion_logprobs(model, batch, temperature=0.7, with_entropy=True)
    shared.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    per_row = completion_logprobs(model, dataclasses.replace(batch, shared=None), temperature=0.7, with_entropy=True)
    per_row.sum().backward()
    hook.remove()
    # Each prompt's tokens but its last once, then one row per sample: fewer tokens than the rows.
    longest_prompt = max(len(r.prompt_ids) for r in rows)
    longest_completion = max(len(r.completion_ids) for r in rows)
    longest_row = max(len(r.prompt_ids) + len(r.completion_ids) for r in rows)
    assert seen == [3 * (longest_prompt - 1), 12 * (1 + longest_completion), 12 * longest_row]
    assert seen[0] + seen[1] < seen[2]
    assert torch.allclose(shared, per_row, atol=1e-5)
    assert (shared[:, batch.completion_mask == 0] == 0).all()
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert (grads[n] - p.grad).norm() <= 1e-4 * p.grad.norm(), n  # fp32 summation order


def test_a_sliding_window_model_keeps_one_pass_per_row():
    """A window counts cache slots, which the padding after a short prompt would stretch: such a
    model (here Mistral's, window 4, shorter than the rows) keeps the per-row numbers."""
    from transformers import MistralConfig, MistralForCausalLM

    from distrl.batch import _can_share_prompts

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4)
    model = MistralForCausalLM(config).eval()
    assert not _can_share_prompts(model.get_decoder())
    batch = collate(_groups(), pad_id=0)
    assert torch.equal(completion_logprobs(model, batch, 1.0),
                       completion_logprobs(model, dataclasses.replace(batch, shared=None), 1.0))


def test_rows_with_distinct_prompts_keep_one_pass_each():
    assert collate(_rollouts(), pad_id=0).shared is None


def test_auto_microbatch_limits():
    from distrl.batch import microbatch_limits

    assert microbatch_limits(0, 0, low_precision_cpu=True) == (32, 2048)
    assert microbatch_limits(0, 512, low_precision_cpu=True) == (32, 512)
    assert microbatch_limits(0, 0, low_precision_cpu=False) == (8, 0)  # GPU
    assert microbatch_limits(0, 0, low_precision_cpu=False, cpu=True) == (16, 0)  # fp32 on CPU: shared prompts
    assert microbatch_limits(4, 0, low_precision_cpu=True) == (4, 0)
