"""Real vLLM on a real GPU: generation, a weight update through the object-store engine, and the
learner's log-probs against vLLM's (`logprob_gap`). Skipped, with the reason, where there is no
CUDA GPU or no vllm (CI, the CPU machines). Run on a GPU box after `pip install -r
requirements-gpu.txt`:  pytest -q tests/gpu
"""

from __future__ import annotations

import pytest
import torch

from distrl.generation.base import vllm_missing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or bool(vllm_missing()),
                                reason=vllm_missing() or "needs a CUDA GPU (tests/test_vllm_cpu.py runs the CPU engine)")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("lora_rank", [0, 16])
def test_vllm_generates_loads_a_new_version_and_matches_the_learner(ray_local, lora_rank):
    from actors.generation_actor import GenerationActor
    from distrl.config import AlgoConfig, ModelConfig
    from distrl.generation import SamplingParams
    from distrl.models import resolve_model
    from learners.learner_actor import LearnerActor

    path = resolve_model("smollm2-135m-instruct")
    model_cfg = ModelConfig(lora_rank=lora_rank, lora_alpha=2 * lora_rank, dtype="float32" if not lora_rank else "auto")
    learner = LearnerActor(path, model_cfg, AlgoConfig(lr=1e-4), temperature=1.0)
    generator = GenerationActor(path, model_cfg, backend="vllm",
                                vllm_options=dict(gpu_memory_utilization=0.3, max_model_len=512))
    assert generator.load_weights([ray_local.put(learner.publish())]) == 0
    prompts = [learner.tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} + 7?"}],
                                                     add_generation_prompt=True, tokenize=True)["input_ids"]
               for a in range(4)]
    sampling = SamplingParams(n=4, max_new_tokens=32, temperature=1.0, seed=1)
    groups = generator.generate(prompts, sampling)
    rollouts = [r for g in groups for r in g]
    assert len(rollouts) == 16 and all(r.policy_version == 0 for r in rollouts)
    metrics, packed = learner.step(rollouts, [1.0 if i % 2 else -1.0 for i in range(16)])
    print(f"vLLM logprob_gap (lora_rank={lora_rank}): {metrics['logprob_gap']:.2e}")
    assert metrics["logprob_gap"] < 2e-2  # same weights; kernels differ (bf16 with LoRA)
    assert generator.load_weights([ray_local.put(packed)]) == 1
    after = [r for g in generator.generate(prompts, sampling) for r in g]
    assert all(r.policy_version == 1 for r in after)
    metrics, _ = learner.step(after, [1.0 if i % 2 else -1.0 for i in range(16)])
    assert metrics["logprob_gap"] < 2e-2  # the new version really landed in the engine
