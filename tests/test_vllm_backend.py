"""The vLLM backend's GPU-only branches, with an in-process stand-in for the `vllm` package, and
the conversion of vLLM-shaped outputs into rollouts.

The real engine runs on CPU in every test run (tests/test_vllm_cpu.py: generation, log-probs,
full and LoRA weight updates, the CLI end to end). What only a GPU has cannot run here, so a
stand-in records our calls for it: the colocated sleep/wake order (weights -> load -> KV cache;
the CPU build has no sleep mode), and the tensor-parallel Ray executor (several GPUs per
engine). tools/check_vllm_api.py checks the names we call against both wheels; tests/gpu runs the
GPU wheel for real where a GPU exists.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass

import pytest
import torch

import distrl.generation
from distrl.config import ModelConfig
from distrl.generation import SamplingParams
from distrl.generation.vllm import AdapterVersions, adapter_targets, max_lora_rank, to_rollouts
from distrl.weights import pack


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str
    text: str = ""


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


def completion(index, tokens, finish="stop"):
    # Each position holds the sampled token plus a decoy, as vLLM's top-logprobs dicts do.
    return CompletionOutput(index, tokens, [{t: Logprob(-0.1 * (j + 1)), 999: Logprob(-9.0)}
                                            for j, t in enumerate(tokens)], finish)


def test_outputs_become_groups_of_n_in_prompt_order_with_sampled_logprobs():
    prompts = [[1, 2], [3]]
    outputs = [RequestOutput([1, 2], [completion(1, [7, 2], "stop"), completion(0, [5, 6, 8], "length")]),
               RequestOutput([3], [completion(0, [4], "stop"), completion(1, [9, 9], "length")])]
    groups = to_rollouts(outputs, prompts, n=2, policy_version=3)
    assert [[r.completion_ids for r in g] for g in groups] == [[[5, 6, 8], [7, 2]], [[4], [9, 9]]]
    assert groups[0][0].logprobs == pytest.approx([-0.1, -0.2, -0.3])  # the sampled token's, not the decoy's
    assert [r.finish_reason for r in groups[0]] == ["length", "stop"]
    assert all(r.policy_version == 3 and r.prompt_ids == p for g, p in zip(groups, prompts) for r in g)


def test_aborted_or_missing_completions_are_errors_not_samples():
    with pytest.raises(RuntimeError, match="'abort'"):
        to_rollouts([RequestOutput([1], [completion(0, [2], "abort")])], [[1]], n=1, policy_version=0)
    with pytest.raises(RuntimeError, match="expected n=2"):
        to_rollouts([RequestOutput([1], [completion(0, [2])])], [[1]], n=2, policy_version=0)


def test_lora_ranks_round_up_to_what_vllm_accepts():
    assert [max_lora_rank(r) for r in (1, 4, 8, 16, 17)] == [1, 8, 8, 16, 32]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        max_lora_rank(1024)


# -- a stand-in vllm package ---------------------------------------------------------------
class FakeEngine:
    def __init__(self, calls):
        self.calls, self.loras = calls, set()

    def add_lora(self, request):
        self.calls.append(("add_lora", request.lora_int_id, request.lora_name))
        assert os.path.exists(os.path.join(request.lora_path, "adapter_model.safetensors"))
        self.loras.add(request.lora_int_id)
        return True

    def remove_lora(self, lora_id):
        self.calls.append(("remove_lora", lora_id))
        self.loras.discard(lora_id)
        return True


class FakeLLM:
    instances: list = []

    def __init__(self, model, **kwargs):
        self.model, self.kwargs, self.calls, self.version = model, kwargs, [], "default"
        self.llm_engine = FakeEngine(self.calls)
        FakeLLM.instances.append(self)

    def __getattr__(self, name):  # every other call is recorded in order
        if name in ("init_weight_transfer_engine", "start_weight_update", "update_weights",
                    "reset_prefix_cache", "sleep", "wake_up"):
            return lambda *a, **k: self.calls.append((name, a, k))
        raise AttributeError(name)

    def finish_weight_update(self, weight_version=None):
        self.calls.append(("finish_weight_update", weight_version))
        self.version = weight_version

    def get_weight_version(self):
        return self.version

    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        self.calls.append(("generate", lora_request.lora_name if lora_request else None))
        self.last_params = params
        return [RequestOutput(p["prompt_token_ids"], [completion(i, [5, 2]) for i in range(sp.n)])
                for p, sp in zip(prompts, params)]


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    logprobs: int | None = None
    seed: int | None = None


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


@dataclass
class FakeWeightTransferConfig:
    backend: str = "nccl"


class FakeTransferEngine:
    def __class_getitem__(cls, item):
        return cls


class FakeFactory:
    @classmethod
    def register_engine(cls, name, engine):
        FakeFactory.registered = (name, engine)


@pytest.fixture
def fake_vllm(monkeypatch):
    modules = {name: types.ModuleType(name) for name in (
        "vllm", "vllm.config", "vllm.lora", "vllm.lora.request", "vllm.distributed",
        "vllm.distributed.weight_transfer", "vllm.distributed.weight_transfer.base",
        "vllm.distributed.weight_transfer.factory")}
    modules["vllm"].LLM, modules["vllm"].SamplingParams = FakeLLM, FakeSamplingParams
    modules["vllm"].TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    modules["vllm.config"].WeightTransferConfig = FakeWeightTransferConfig
    modules["vllm.lora.request"].LoRARequest = FakeLoRARequest
    base = modules["vllm.distributed.weight_transfer.base"]
    base.WeightTransferEngine, base.WeightTransferInitInfo, base.WeightTransferUpdateInfo = FakeTransferEngine, object, object
    modules["vllm.distributed.weight_transfer.factory"].WeightTransferEngineFactory = FakeFactory
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "distrl.generation.vllm_engine", raising=False)
    # The import on the stand-in also binds the package's attribute, which `import
    # distrl.generation.vllm_engine as m` reads first: restored too, or a later test gets this module.
    monkeypatch.delattr(distrl.generation, "vllm_engine", raising=False)
    FakeLLM.instances.clear()
    yield FakeLLM
    sys.modules.pop("distrl.generation.vllm_engine", None)  # built on the stand-in: import it anew


def test_colocated_gpu_engine_sleeps_and_wakes_around_a_full_update(fake_vllm, tmp_path, monkeypatch):
    import ray

    from distrl.generation.vllm import VLLMBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU branch
    backend = VLLMBackend("/models/m", ModelConfig(model="/models/m"), colocate=True, adapter_root=str(tmp_path))
    llm = fake_vllm.instances[0]
    assert llm.kwargs["gpu_memory_utilization"] == 0.85 and "kv_cache_memory_bytes" not in llm.kwargs
    assert FakeFactory.registered[0] == llm.kwargs["weight_transfer_config"].backend == "distrl_object_store"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["enable_prefix_caching"]
    assert llm.kwargs["distributed_executor_backend"] == "uni" and llm.kwargs["enable_sleep_mode"]
    assert llm.kwargs["worker_extension_cls"] == "distrl.generation.vllm_engine.DistrlWorkerExtension"

    groups = backend.generate([[1, 2], [3]], SamplingParams(n=3, temperature=0.7, seed=5), policy_version=0)
    assert [len(g) for g in groups] == [3, 3]
    assert [(p.n, p.temperature, p.top_p, p.top_k, p.logprobs) for p in llm.last_params] == [(3, 0.7, 1.0, 0, 0)] * 2
    assert llm.calls[-1][0] == "sleep"  # colocated: the GPU goes back to the learner

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        packed = pack({"w": torch.ones(2)}, policy_version=4)
        llm.calls.clear()
        assert backend.load_weights(packed, ray.put(packed)) == 4
    finally:
        ray.shutdown()
    names = [c[0] for c in llm.calls]
    assert names == ["wake_up", "start_weight_update", "update_weights", "finish_weight_update",
                     "reset_prefix_cache", "wake_up"]
    assert llm.calls[0][2]["tags"] == ["weights"] and llm.calls[-1][2]["tags"] == ["kv_cache"]
    assert llm.calls[2][1][0]["update_info"]["policy_version"] == 4
    assert llm.get_weight_version() == "4"


def test_adapter_targets_are_read_off_the_tensor_names():
    assert adapter_targets({"a.q_proj.lora_A.default.weight": 0, "a.v_proj.lora_B.default.weight": 0,
                            "a.q_proj.lora_B.default.weight": 0}) == ["q_proj", "v_proj"]


def test_adapter_versions_ids_start_at_one(tmp_path):
    versions = AdapterVersions(str(tmp_path))
    assert versions.add(0, {"x.lora_A.default.weight": torch.ones(1)}, {"r": 1})[1] == 1


def test_tensor_parallel_engine_runs_its_workers_as_ray_actors(fake_vllm, tmp_path, monkeypatch):
    from distrl.generation.vllm import VLLMBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    VLLMBackend("/models/m", ModelConfig(model="/models/m"), tensor_parallel_size=2, adapter_root=str(tmp_path))
    kwargs = fake_vllm.instances[0].kwargs
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["distributed_executor_backend"] == "ray"
