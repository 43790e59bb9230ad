"""A learner group (--num_learners 2, gloo) trains exactly like one learner on the same batches.

The ranks are real Ray actors joined into a torch.distributed group; the single learner runs
in-process. Both get the same rollouts and advantages for 3 steps; the batch is split over the
ranks by tokens, gradients are summed over them, and the weights must end up equal.
"""

from __future__ import annotations

import pytest
import ray
import torch

from actors.generation_actor import GenerationActor
from distrl import parallel
from distrl.batch import split_by_tokens
from distrl.config import AlgoConfig, ModelConfig
from distrl.data.prompts import encode_prompt
from distrl.generation import SamplingParams
from distrl.optim.sharded import owners
from distrl.weights import unpack
from launch.learner_group import LearnerGroup
from learners.learner_actor import LearnerActor


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _group(model_dir: str, cfg: ModelConfig, algo: AlgoConfig, n: int, fsdp: bool = False,
           sharding: str = "zero1") -> LearnerGroup:
    handles = [ray.remote(LearnerActor).options(num_cpus=0.5).remote(
        model_dir, cfg, algo, temperature=1.0, torch_threads=1, world_size=n, cpu_adamw_sharding=sharding)
        for _ in range(n)]
    address = ray.get(handles[0].rendezvous_address.remote())
    ray.get([h.join_group.remote(address, r, 60.0, fsdp) for r, h in enumerate(handles)])
    return LearnerGroup(handles, fsdp)


def _small_buckets(actor: LearnerActor) -> None:
    parallel.BUCKET_MB = 0.004  # 4 KB: the tiny model's gradients travel in dozens of buckets


def _batch(single: LearnerActor, generator: GenerationActor, step: int):
    """16 rollouts of different lengths from the current weights, with spread-out advantages."""
    generator.load_weights(single.publish())
    prompts = [encode_prompt(single.tokenizer, q) for q in ("What is 1+2?", "Hi 7*8?", "Sum 12 and 30", "x")]
    rollouts = [r for g in generator.generate(prompts, SamplingParams(n=4, max_new_tokens=10, seed=step))
                for r in g]
    adv = torch.linspace(-1.5, 1.5, len(rollouts)).roll(step).tolist()
    return rollouts, adv


@pytest.mark.parametrize("lora_rank,optimizer,fsdp,sharding,updates", [
    (0, "adamw", False, "", 1), (4, "adamw", False, "", 1), (0, "cpu_adamw", False, "zero1", 1),
    (4, "cpu_adamw", False, "zero1", 1), (0, "cpu_adamw", False, "rank0", 1), (0, "adamw", True, "", 1),
    (4, "adamw", True, "", 1), (0, "adamw", False, "", 2), (0, "adamw", True, "", 2)])
def test_two_learners_match_one_learner_after_three_steps(ray_cluster, tiny_model_dir, lora_rank, optimizer, fsdp,
                                                          sharding, updates):
    """With --updates_per_batch 2 the middle step has no signal: no rank may step again on it (an
    AdamW step on zero gradients still moves the weights by momentum)."""
    # fp32: the group's reductions must equal one learner's to 1e-4 (adamw/FSDP keep no masters).
    cfg = ModelConfig(lora_rank=lora_rank, lora_alpha=2 * lora_rank or 32, dtype="float32")
    # Clipping active (norms here are ~1-10): a gradient averaged instead of summed over ranks
    # would clip differently and report another norm.
    algo = AlgoConfig(lr=1e-3, optimizer=optimizer, micro_batch_size=3, max_grad_norm=0.5, updates_per_batch=updates)
    single = LearnerActor(tiny_model_dir, cfg, algo, temperature=1.0, torch_threads=1)
    generator = GenerationActor(tiny_model_dir, cfg, torch_threads=1)
    group = _group(tiny_model_dir, cfg, algo, 2, fsdp, sharding or "zero1")
    ray.get([h.__ray_call__.remote(_small_buckets) for h in group.handles])  # many buckets, not one
    start = {n: p.detach().clone() for n, p in single.params.items()}
    for step in range(3):
        rollouts, adv = _batch(single, generator, step)
        if updates > 1 and step == 1:
            adv = [0.0] * len(adv)
        expected, _ = single.step(rollouts, adv)
        refs, weights_ref = group.step(rollouts, adv, None)
        got = group.metrics(refs, timeout_s=120)
        assert got["policy_version"] == expected["policy_version"] == step + 1
        assert ("clip_frac_reuse" in got) == ("clip_frac_reuse" in expected) == (updates > 1 and step != 1)
        for key in ("loss", "logprob_gap", "grad_norm", "train_tokens", "clip_frac", "clip_frac_reuse"):
            if key not in expected:
                continue
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    weights = unpack(ray.get(weights_ref))
    assert set(weights) == set(single.params)
    diff = max(float((weights[n] - p.detach()).abs().max()) for n, p in single.params.items())
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in single.params.items())
    assert moved > 1e-3  # the steps really changed the weights
    print(f"N=2 vs N=1, lora_rank {lora_rank}, {optimizer} {sharding}, fsdp {fsdp}: max |param difference| "
          f"{diff:.2e} after 3 steps (training moved params by {moved:.2e})")
    assert diff < 1e-5, f"max |param difference| {diff} (training moved params by {moved})"
    if not fsdp:
        sums = ray.get([h.checksum.remote() for h in group.handles])
        assert sums[0] == sums[1]  # replicas hold identical weights


def test_the_batch_is_split_by_tokens_not_rows():
    lengths = [100, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    parts = split_by_tokens(lengths, 2)
    assert sorted(i for p in parts for i in p) == list(range(len(lengths)))
    loads = sorted(sum(lengths[i] for i in p) for p in parts)
    assert loads == [100, 100]  # rows 10 vs 1 would leave one rank waiting on the other
    assert split_by_tokens([5], 3) == [[0], [], []]


def test_zero1_spreads_the_optimizer_state_and_rank0_keeps_it():
    sizes = [1000, 10, 600, 400, 10]
    zero1 = owners(sizes, 2, "zero1")
    per_rank = [sum(s for s, o in zip(sizes, zero1) if o == r) for r in range(2)]
    assert per_rank == [1010, 1010]
    assert owners(sizes, 2, "rank0") == [0] * 5


def _bump_first_weight(actor: LearnerActor) -> None:
    with torch.no_grad():
        next(iter(actor.params.values())).view(-1)[0] += 1.0


def test_a_diverged_replica_stops_the_run(ray_cluster, tiny_model_dir):
    group = _group(tiny_model_dir, ModelConfig(), AlgoConfig(), 2)
    group.check_replicas(60, step=1)  # equal after joining: rank 0's weights were broadcast
    ray.get(group.handles[1].__ray_call__.remote(_bump_first_weight))
    with pytest.raises(RuntimeError, match="step 10: the learner ranks' weights differ"):
        group.check_replicas(60, step=10)


def _nan_first_weight(actor: LearnerActor) -> None:
    with torch.no_grad():
        next(iter(actor.params.values())).view(-1)[0] = float("nan")


def _version(actor: LearnerActor) -> int:
    return actor.policy_version


def test_a_non_finite_loss_on_one_rank_skips_the_update_on_every_rank(ray_cluster, tiny_model_dir):
    single = LearnerActor(tiny_model_dir, ModelConfig(), AlgoConfig(), temperature=1.0, torch_threads=1)
    generator = GenerationActor(tiny_model_dir, ModelConfig(), torch_threads=1)
    rollouts, adv = _batch(single, generator, 0)
    group = _group(tiny_model_dir, ModelConfig(), AlgoConfig(), 2)
    ray.get(group.handles[1].__ray_call__.remote(_nan_first_weight))  # rank 1 only
    refs, _ = group.step(rollouts, adv, None)
    metrics = group.metrics(refs, timeout_s=120)
    assert metrics["skipped_update"] == 1.0
    # Neither rank stepped (a rank that did would be a version ahead, its collectives misaligned).
    assert ray.get([h.__ray_call__.remote(_version) for h in group.handles]) == [0, 0]


def _flat_state(state, prefix=""):
    """Every tensor of a nested optimizer state, by path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    return {k: v for key, value in items for k, v in _flat_state(value, f"{prefix}/{key}").items()}


@pytest.mark.parametrize("optimizer,fsdp", [("cpu_adamw", False), ("adamw", True)])
def test_a_group_resumed_from_its_checkpoint_steps_bit_for_bit_like_the_one_that_went_on(
        ray_cluster, tiny_model_dir, tmp_path, optimizer, fsdp):
    """Exact resume with N=2: ZeRO-1 CPUAdamW (each rank saves its own shard of the masters and
    moments) and FSDP (rank 0 gathers the full optimizer state). Two steps, a checkpoint, a third
    step; a new group loads the checkpoint and takes the same third step: the same weights and
    the same optimizer state, bit for bit."""
    from distrl.checkpoint import load_state
    from distrl.models import load_tokenizer

    cfg = ModelConfig(dtype="float32")
    algo = AlgoConfig(lr=1e-3, optimizer=optimizer, micro_batch_size=3, max_grad_norm=0.5)
    tokenizer = load_tokenizer(tiny_model_dir)
    generator = GenerationActor(tiny_model_dir, cfg, torch_threads=1)
    prompts = [encode_prompt(tokenizer, q) for q in ("What is 1+2?", "Hi 7*8?", "Sum 12 and 30", "x")]

    def batch(weights, step):
        generator.load_weights(weights)
        rollouts = [r for g in generator.generate(prompts, SamplingParams(n=4, max_new_tokens=10, seed=step)) for r in g]
        return rollouts, torch.linspace(-1.5, 1.5, len(rollouts)).roll(step).tolist()

    def step(group, rollouts, adv):
        refs, weights_ref = group.step(rollouts, adv, None)
        group.metrics(refs, timeout_s=120)
        return ray.get(weights_ref)

    def save(group, name):
        folder = tmp_path / name
        folder.mkdir()
        group.run("save_checkpoint", str(folder), timeout_s=120, what="saving")
        shards = ["optimizer-rank0", "optimizer-rank1"] if optimizer == "cpu_adamw" else ["optimizer"]
        return {s: _flat_state(load_state(str(folder), s)) for s in shards}

    went_on = _group(tiny_model_dir, cfg, algo, 2, fsdp)
    weights = ray.get(went_on.publish(120))  # every rank takes part (FSDP gathers)
    for s in range(2):
        weights = step(went_on, *batch(weights, s))
    save(went_on, "step2")
    third = batch(weights, 2)
    a = unpack(step(went_on, *third))
    state_a = save(went_on, "a")
    for h in went_on.handles:
        ray.kill(h)

    resumed = _group(tiny_model_dir, cfg, algo, 2, fsdp)
    assert resumed.run("load_checkpoint", str(tmp_path / "step2"), timeout_s=120, what="loading") == 2
    b = unpack(step(resumed, *third))
    state_b = save(resumed, "b")
    for h in resumed.handles:
        ray.kill(h)

    moved = max(float((a[n] - weights_before).abs().max()) for n, weights_before in unpack(weights).items())
    assert moved > 0  # the third step changed the weights
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    for shard in state_a:  # masters and moments (ZeRO-1: each rank's own shard), step counts
        assert state_a[shard] and state_a[shard].keys() == state_b[shard].keys(), shard
        assert all(torch.equal(state_a[shard][k], state_b[shard][k]) for k in state_a[shard]), shard
