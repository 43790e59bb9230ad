"""The learner and a generator built in-process: the sync proof, its failure, and learning."""

import statistics

import pytest
import torch

from actors.generation_actor import GenerationActor
from distrl.algorithms import compute_advantages
from distrl.batch import collate, completion_logprobs
from distrl.config import AlgoConfig, ModelConfig
from distrl.data.prompts import encode_prompt
from distrl.generation import SamplingParams, WeightsMissing
from learners.learner_actor import LearnerActor
from tests.helpers import ones_fraction


def _pair(model_dir, lora_rank=0, lr=1e-3, learner="grpo", gap_rows=8):
    # fp32: the sync proof at its sharpest (bf16's is the fingerprint: tests/test_precision.py).
    cfg = ModelConfig(lora_rank=lora_rank, lora_alpha=2 * lora_rank or 32, dtype="float32")
    learner_actor = LearnerActor(model_dir, cfg, AlgoConfig(learner=learner, lr=lr, gap_rows=gap_rows), temperature=1.0,
                                 torch_threads=1)
    generator = GenerationActor(model_dir, cfg, torch_threads=1)
    generator.load_weights(learner_actor.publish())
    return learner_actor, generator


def _rollouts(generator, learner_actor, seed):
    prompts = [encode_prompt(learner_actor.tokenizer, q) for q in ("What is 1+2?", "Hi 7*8?")]
    groups = generator.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=seed))
    rollouts = [r for g in groups for r in g]
    texts = [learner_actor.tokenizer.decode(r.completion_ids, skip_special_tokens=True) for r in rollouts]
    rewards = torch.tensor(ones_fraction([], texts)).view(len(groups), -1)
    return rollouts, compute_advantages("grpo", rewards + torch.arange(4.0) * 0.1).flatten().tolist()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_synced_generator_matches_learner_logprobs(tiny_model_dir, lora_rank):
    learner_actor, generator = _pair(tiny_model_dir, lora_rank)
    for step in range(3):
        rollouts, adv = _rollouts(generator, learner_actor, seed=step)
        assert all(r.policy_version == step for r in rollouts)
        metrics, packed = learner_actor.step(rollouts, adv)
        assert metrics["policy_version"] == step + 1 and packed.policy_version == step + 1
        assert metrics["logprob_gap"] < 1e-4
        assert generator.load_weights(packed) == step + 1


def test_broken_sync_makes_the_gap_jump(tiny_model_dir):
    learner_actor, generator = _pair(tiny_model_dir, lr=3e-2)
    rollouts, adv = _rollouts(generator, learner_actor, seed=0)
    synced_gap = learner_actor.step(rollouts, adv)[0]["logprob_gap"]
    # The bug this guards against: a sync that reports the new version but loads nothing.
    generator.policy_version = learner_actor.policy_version
    rollouts, adv = _rollouts(generator, learner_actor, seed=1)
    broken_gap = learner_actor.step(rollouts, adv)[0]["logprob_gap"]
    assert synced_gap < 1e-4
    assert broken_gap > 1e-2 and broken_gap > 1000 * synced_gap


def test_rows_without_signal_are_sampled_for_the_gap_and_a_broken_generator_still_shows(tiny_model_dir, monkeypatch):
    """A step with no signal forwards only --gap_rows rows per sampler (the rest would only have
    measured logprob_gap); a generator that missed the last update still stands out in its own
    gap, and the step's gap reads as if every row had been measured."""
    import learners.learner_actor as la

    forwarded = []
    plain = la.completion_logprobs
    monkeypatch.setattr(la, "completion_logprobs", lambda model, batch, *a, **k: forwarded.append(
        batch.input_ids.shape[0]) or plain(model, batch, *a, **k))
    gaps = {}
    for rows in (0, 1):
        torch.manual_seed(0)
        learner_actor, generator = _pair(tiny_model_dir, lr=3e-2, gap_rows=rows)
        stale = GenerationActor(tiny_model_dir, ModelConfig(dtype="float32"), torch_threads=1)
        stale.load_weights(learner_actor.publish())
        learner_actor.step(*_rollouts(generator, learner_actor, seed=0))
        generator.load_weights(learner_actor.publish())
        stale.policy_version = learner_actor.policy_version  # reports the new version, holds the old weights
        good, _ = _rollouts(generator, learner_actor, seed=1)
        bad, _ = _rollouts(stale, learner_actor, seed=1)
        for r in good:
            r.source = 1
        for r in bad:
            r.source = 2
        forwarded.clear()
        metrics, _ = learner_actor.step(good + bad, [0.0] * 16)
        gaps[rows] = metrics["logprob_gap"], {s: metrics[f"gap_sum/{s}"] / metrics[f"gap_tokens/{s}"] for s in (1, 2)}
        assert sum(forwarded) == (16 if rows == 0 else 2)
    for total, by_sampler in gaps.values():
        assert by_sampler[1] < 1e-4 and by_sampler[2] > 1e-2
    assert 0.3 < gaps[1][0] / gaps[0][0] < 3  # two rows stand for sixteen: no 8x dilution


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_sync_that_loads_nothing_is_caught_at_the_default_lr(tiny_model_dir, monkeypatch, lora_rank):
    """At the default lr one step moves the log-probs too little for the gap to be sure (LoRA's
    B matrices start at 0): the generator compares the fingerprint of what it holds after loading
    with the one the learner published, and refuses to sample from anything else."""
    import distrl.generation.hf as hf
    from distrl.weights import WeightSyncError

    learner_actor, generator = _pair(tiny_model_dir, lora_rank, lr=AlgoConfig().lr)
    rollouts, adv = _rollouts(generator, learner_actor, seed=0)
    _, packed = learner_actor.step(rollouts, adv)
    monkeypatch.setattr(hf, "load_packed", lambda params, packed: packed.policy_version)  # reports, loads nothing
    with pytest.raises(WeightSyncError, match="policy version 1: this generator holds other weights"):
        generator.load_weights(packed)
    with pytest.raises(WeightsMissing):  # and it samples nothing until a real load
        _rollouts(generator, learner_actor, seed=1)
    monkeypatch.undo()
    assert generator.load_weights(packed) == 1


def test_all_zero_advantages_change_nothing_but_still_measure_the_gap(tiny_model_dir):
    learner_actor, generator = _pair(tiny_model_dir, lr=3e-2)
    before = {n: p.detach().clone() for n, p in learner_actor.params.items()}
    rollouts, _ = _rollouts(generator, learner_actor, seed=0)
    metrics, _ = learner_actor.step(rollouts, [0.0] * len(rollouts))
    assert metrics["loss"] == 0.0 and metrics["grad_norm"] == 0.0 and metrics["logprob_gap"] < 1e-4
    assert all(torch.equal(before[n], p) for n, p in learner_actor.params.items())


def test_backward_runs_only_on_the_rows_with_signal_and_the_update_is_unchanged(tiny_model_dir, monkeypatch):
    """One group of two with signal: its rows get a micro-batch of their own with a backward, the
    other group's a forward without autograd; the weights end as with the two groups mixed."""
    import learners.learner_actor as la
    from distrl.batch import plan_microbatches

    traced = []
    plain = la.completion_logprobs
    monkeypatch.setattr(la, "completion_logprobs", lambda model, batch, *a, **k: traced.append(
        (batch.input_ids.shape[0], torch.is_grad_enabled())) or plain(model, batch, *a, **k))
    weights = []
    for mixed in (False, True):
        if mixed:  # the plan before rows were kept apart: by length only
            monkeypatch.setattr(la, "plan_microbatches", lambda lengths, rows, tokens, needs_grad:
                                plan_microbatches(lengths, rows, tokens))
        torch.manual_seed(0)
        learner_actor, generator = _pair(tiny_model_dir, lr=3e-2)
        rollouts, _ = _rollouts(generator, learner_actor, seed=0)
        adv = [0.0] * 4 + [1.0, -1.0, 0.5, -0.5]
        traced.clear()
        learner_actor.step(rollouts, adv)
        if not mixed:
            assert sorted(traced) == [(4, False), (4, True)]
        weights.append({n: p.detach().clone() for n, p in learner_actor.params.items()})
    for name, p in weights[0].items():
        torch.testing.assert_close(p, weights[1][name], rtol=0, atol=1e-5)  # Adam moves each by ~lr = 3e-2


def test_rows_sampled_for_the_gap_leave_the_update_and_the_loss_as_they_were(tiny_model_dir):
    """One group with signal, one without: forwarding one of the idle group's rows instead of all
    four changes neither the gradient nor the loss the step reports."""
    results = []
    for rows in (0, 1):
        torch.manual_seed(0)
        learner_actor, generator = _pair(tiny_model_dir, lr=3e-2, gap_rows=rows)
        rollouts, _ = _rollouts(generator, learner_actor, seed=0)
        metrics, _ = learner_actor.step(rollouts, [0.0] * 4 + [1.0, -1.0, 0.5, -0.5])
        results.append((metrics, {n: p.detach().clone() for n, p in learner_actor.params.items()}))
    (every, before), (sampled, after) = results
    assert every["grad_norm"] > 0 and sampled["grad_norm"] == pytest.approx(every["grad_norm"], rel=1e-5)
    assert sampled["loss"] == pytest.approx(every["loss"], rel=1e-5)
    for name, p in before.items():
        torch.testing.assert_close(p, after[name], rtol=0, atol=1e-6)


def test_updates_per_batch_step_again_on_the_batch_clipped_and_publish_once(tiny_model_dir):
    """--updates_per_batch 2: two optimizer steps on one step's rollouts, the second clipped
    around the batch's pre-update policy; one new policy version, loaded and proven as usual."""
    after = {}
    for updates in (1, 2):
        torch.manual_seed(0)
        cfg = ModelConfig(dtype="float32")
        learner_actor = LearnerActor(tiny_model_dir, cfg, AlgoConfig(lr=3e-3, updates_per_batch=updates),
                                     temperature=1.0, torch_threads=1)
        generator = GenerationActor(tiny_model_dir, cfg, torch_threads=1)
        generator.load_weights(learner_actor.publish())
        rollouts, adv = _rollouts(generator, learner_actor, seed=0)
        metrics, packed = learner_actor.step(rollouts, adv)
        assert metrics["policy_version"] == packed.policy_version == 1
        assert ("clip_frac_reuse" in metrics) == (updates == 2)
        # The objective the update climbs, sum(advantage x log-prob), on the batch it learned from.
        batch = collate(rollouts, learner_actor.tokenizer.pad_token_id)
        with torch.no_grad():
            lp = completion_logprobs(learner_actor.model, batch, 1.0)
        after[updates] = (torch.tensor(adv)[:, None] * lp * batch.completion_mask).sum().item(), metrics
        assert generator.load_weights(packed) == 1
        again, adv_again = _rollouts(generator, learner_actor, seed=1)
        assert learner_actor.step(again, adv_again)[0]["logprob_gap"] < 1e-4
        # A step without signal takes one update, whatever --updates_per_batch: more AdamW steps on
        # zero gradients would only replay the momentum of earlier batches.
        generator.load_weights(learner_actor.publish())
        idle, _ = _rollouts(generator, learner_actor, seed=2)
        assert "clip_frac_reuse" not in learner_actor.step(idle, [0.0] * len(idle))[0]
        first = next(iter(learner_actor.params.values()))
        assert int(learner_actor.optimizer.state[first]["step"]) == 2 * updates + 1  # 2 batches + the idle one
    assert after[2][0] > after[1][0]
    assert 0 < after[2][1]["clip_frac_reuse"] < 1  # a step of lr 3e-3 moves some ratios past 1.2


def test_learner_refuses_rollouts_from_another_version(tiny_model_dir):
    learner_actor, generator = _pair(tiny_model_dir)
    rollouts, adv = _rollouts(generator, learner_actor, seed=0)
    learner_actor.step(rollouts, adv)
    with pytest.raises(ValueError, match="policy version 0"):
        learner_actor.step(rollouts, adv)


@pytest.mark.parametrize("learner", ["grpo", "pg", "dr_grpo", "rloo", "reinforce_pp", "gspo"])
def test_mean_reward_rises_on_a_toy_task(tiny_model_dir, learner):
    """Reward = share of '1' characters; a wrong sign or mask keeps it flat or sinks it."""
    torch.manual_seed(0)
    learner_actor = LearnerActor(tiny_model_dir, ModelConfig(), AlgoConfig(learner=learner, lr=1e-2),
                                 temperature=1.0, torch_threads=1)
    prompts = [encode_prompt(learner_actor.tokenizer, f"Say {i}") for i in range(4)]
    history = []
    for step in range(30):
        groups = learner_actor.generate(prompts, SamplingParams(n=8, max_new_tokens=8, seed=step))
        rollouts = [r for g in groups for r in g]
        texts = [learner_actor.tokenizer.decode(r.completion_ids, skip_special_tokens=True) for r in rollouts]
        rewards = torch.tensor(ones_fraction([], texts)).view(len(groups), -1)
        adv = compute_advantages(learner_actor.algo.advantage_name, rewards).flatten().tolist()
        learner_actor.step(rollouts, adv)
        history.append(rewards.mean().item())
    start, end = statistics.mean(history[:5]), statistics.mean(history[-5:])
    assert end > start + 0.2, history


def test_cpu_adamw_learner_trains_like_adamw(tiny_model_dir, monkeypatch):
    """Same rollouts, same advantages: CPUAdamW (forced master copies + grad offload, the path a
    GPU model takes) and torch AdamW end with the same weights."""
    import distrl.optim as optim

    class ForcedMasters(optim.CPUAdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, master_copy=True, **kwargs)

    # On CPU in fp32 the parameters are their own masters and nothing is offloaded: force copies.
    monkeypatch.setattr(optim, "CPUAdamW", ForcedMasters)
    results = []
    fp32 = ModelConfig(dtype="float32")
    for algo in (AlgoConfig(lr=1e-2, optimizer="adamw"), AlgoConfig(lr=1e-2, optimizer="cpu_adamw", grad_offload=True)):
        learner_actor = LearnerActor(tiny_model_dir, fp32, algo, temperature=1.0, torch_threads=1)
        offloading = algo.grad_offload
        if offloading:  # every parameter has a separate master, and a hook that moves its gradient
            assert all(learner_actor.optimizer.separate) and len(learner_actor.optimizer._hooks) == len(learner_actor.params)
        generator = GenerationActor(tiny_model_dir, fp32, torch_threads=1)
        generator.load_weights(learner_actor.publish())
        for step in range(3):
            rollouts, adv = _rollouts(generator, learner_actor, seed=step)
            metrics, packed = learner_actor.step(rollouts, adv)
            generator.load_weights(packed)
            if offloading:  # the hooks moved every gradient during backward, once per micro-batch at least
                grads_mb = sum(p.numel() * 4 for p in learner_actor.params.values()) / 2**20
                assert metrics["grad_offload_mb"] >= grads_mb, (metrics["grad_offload_mb"], grads_mb)
        results.append({n: p.detach().clone() for n, p in learner_actor.params.items()})
    for name, p in results[0].items():
        assert torch.allclose(p, results[1][name], atol=1e-5), name


@pytest.mark.parametrize("optimizer", ["adamw", "cpu_adamw"])
def test_a_resumed_run_updates_at_its_own_lr_not_the_checkpoints(tiny_model_dir, tmp_path, optimizer):
    """torch's load_state_dict restores the saved lr with the moments: `--resume ... --lr 1e-3`
    after a run at 1e-2 must still step at 1e-3 (same state, same gradients: a 10x smaller step)."""
    fp32 = ModelConfig(dtype="float32")
    first = LearnerActor(tiny_model_dir, fp32, AlgoConfig(lr=1e-2, optimizer=optimizer), temperature=1.0,
                         torch_threads=1)
    generator = GenerationActor(tiny_model_dir, fp32, torch_threads=1)
    generator.load_weights(first.publish())
    generator.load_weights(first.step(*_rollouts(generator, first, seed=0))[1])
    first.save_checkpoint(str(tmp_path))
    rollouts, adv = _rollouts(generator, first, seed=1)
    moved = {}
    for lr in (1e-2, 1e-3):
        resumed = LearnerActor(tiny_model_dir, fp32, AlgoConfig(lr=lr, optimizer=optimizer), temperature=1.0,
                               torch_threads=1)
        assert resumed.load_checkpoint(str(tmp_path)) == 1
        before = {n: p.detach().clone() for n, p in resumed.params.items()}
        resumed.step(rollouts, adv)
        moved[lr] = max(float((p.detach() - before[n]).abs().max()) for n, p in resumed.params.items())
    assert moved[1e-3] == pytest.approx(0.1 * moved[1e-2], rel=0.02), moved


@pytest.mark.parametrize("optimizer", ["adamw", "cpu_adamw", "adamw_8bit"])
def test_an_update_steps_at_the_schedules_lr_and_the_optimizer_keeps_the_runs(tiny_model_dir, optimizer):
    """`lr_scale` (the driver's --lr_schedule) scales the update: from the same weights, state and
    rollouts, 0.25 moves the weights a quarter as far as 1.0 (Adam's first step is lr times the
    gradient's sign, so the ratio is exact), and 0 not at all. The optimizer is left at --lr, which
    is what a checkpoint saves and a resume compares with."""
    fp32 = ModelConfig(dtype="float32")
    generator = GenerationActor(tiny_model_dir, fp32, torch_threads=1)
    moved = {}
    for scale in (1.0, 0.25, 0.0):
        learner_actor = LearnerActor(tiny_model_dir, fp32, AlgoConfig(lr=1e-2, optimizer=optimizer), temperature=1.0,
                                     torch_threads=1)
        generator.load_weights(learner_actor.publish())
        rollouts, adv = _rollouts(generator, learner_actor, seed=0)
        before = {n: p.detach().clone() for n, p in learner_actor.params.items()}
        metrics, _ = learner_actor.step(rollouts, adv, lr_scale=scale)
        moved[scale] = max(float((p.detach() - before[n]).abs().max()) for n, p in learner_actor.params.items())
        inner = getattr(learner_actor.optimizer, "inner", learner_actor.optimizer)
        assert [g["lr"] for g in inner.param_groups] == [1e-2] * len(inner.param_groups)
    assert moved[1.0] > 1e-3 and moved[0.0] == 0.0, moved
    assert moved[0.25] == pytest.approx(0.25 * moved[1.0], rel=0.05), moved


def test_adamw_8bit_learner_updates(tiny_model_dir):
    fp32 = ModelConfig(dtype="float32")  # 8-bit AdamW keeps no fp32 masters
    learner_actor = LearnerActor(tiny_model_dir, fp32, AlgoConfig(lr=1e-2, optimizer="adamw_8bit"),
                                 temperature=1.0, torch_threads=1)
    generator = GenerationActor(tiny_model_dir, fp32, torch_threads=1)
    generator.load_weights(learner_actor.publish())
    assert type(learner_actor.optimizer).__name__ == "AdamW8bit"
    before = {n: p.detach().clone() for n, p in learner_actor.params.items()}
    rollouts, adv = _rollouts(generator, learner_actor, seed=0)
    metrics, _ = learner_actor.step(rollouts, adv)
    assert metrics["policy_version"] == 1
    assert any(not torch.equal(before[n], p) for n, p in learner_actor.params.items())


def test_model_dropout_is_off_so_learner_matches_generators(tmp_path):
    from tests.conftest import build_tiny_model

    model_dir = build_tiny_model(str(tmp_path / "dropout"), attention_dropout=0.5)
    learner_actor, generator = _pair(model_dir)
    rollouts, adv = _rollouts(generator, learner_actor, seed=0)
    assert learner_actor.step(rollouts, adv)[0]["logprob_gap"] < 1e-4


def test_model_generation_config_does_not_change_sampling(tmp_path, tiny_model_dir):
    """A repetition penalty shipped in a model's generation_config would bias the samples away
    from the distribution the log-probs describe; we sample with our own settings only."""
    import shutil

    from transformers import GenerationConfig

    penalised = str(tmp_path / "penalised")
    shutil.copytree(tiny_model_dir, penalised)
    # do_sample=True: transformers refuses to save sampling-only flags without it, and models that
    # ship such flags ship it too.
    GenerationConfig.from_pretrained(penalised, do_sample=True, repetition_penalty=5.0,
                                     min_p=0.5).save_pretrained(penalised)
    outputs = []
    for folder in (tiny_model_dir, penalised):
        _, generator = _pair(folder)
        groups = generator.generate([[5, 6, 7]], SamplingParams(n=4, max_new_tokens=12, seed=3))
        outputs.append([r.completion_ids for r in groups[0]])
    assert outputs[0] == outputs[1]


def test_the_learner_samples_with_its_sample_threads_and_trains_with_its_own(tiny_model_dir):
    """Beside generators the learner samples with one thread (launch/cluster.py); its training
    threads are back for the update, also after a failed generate call."""
    from launch.cluster import learner_sample_threads
    from distrl.config import parse_args

    assert learner_sample_threads(parse_args(["--number_of_actors", "2"]).run) == 1
    assert learner_sample_threads(parse_args(["--number_of_actors", "2", "--torch_threads", "2"]).run) == 0
    assert learner_sample_threads(parse_args(["--number_of_actors", "0", "--learner_chunk_size", "8"]).run) == 0
    threads = torch.get_num_threads()
    try:
        learner_actor = LearnerActor(tiny_model_dir, ModelConfig(dtype="float32"), AlgoConfig(), temperature=1.0,
                                     torch_threads=2, sample_threads=1)
        seen = []
        backend_generate = learner_actor.backend.generate
        learner_actor.backend.generate = lambda *a: seen.append(torch.get_num_threads()) or backend_generate(*a)
        prompts = [encode_prompt(learner_actor.tokenizer, "What is 1+2?")]
        groups = learner_actor.generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=0))
        assert len(groups[0]) == 2 and seen == [1] and torch.get_num_threads() == 2
        learner_actor.backend.generate = lambda *a: 1 / 0
        with pytest.raises(ZeroDivisionError):
            learner_actor.generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype,micro_batch_size,expected", [("bfloat16", 0, [32, 8]), ("float32", 0, [16, 16, 8]),
                                                               ("bfloat16", 8, [8] * 5)])
def test_auto_micro_batches_are_long_in_bf16_on_cpu(tiny_model_dir, dtype, micro_batch_size, expected):
    """--micro_batch_size 0 (the default): 32 rows where the learner trains in bf16 on CPU (AMX
    pays on long matrices), 16 in fp32 on CPU (prompts shared); a size given on the command line
    is kept."""
    learner_actor = LearnerActor(tiny_model_dir, ModelConfig(dtype=dtype), AlgoConfig(micro_batch_size=micro_batch_size),
                                 temperature=1.0, torch_threads=1)
    prompts = [encode_prompt(learner_actor.tokenizer, f"What is {i}+2?") for i in range(5)]
    rollouts = [r for g in learner_actor.generate(prompts, SamplingParams(n=8, max_new_tokens=4, seed=0)) for r in g]
    sizes = []
    accumulate = learner_actor._accumulate
    learner_actor._accumulate = lambda rs, *a, **k: sizes.append(len(rs)) or accumulate(rs, *a, **k)
    learner_actor.step(rollouts, [0.5 - (i % 2) for i in range(len(rollouts))])
    assert sorted(sizes, reverse=True) == expected
