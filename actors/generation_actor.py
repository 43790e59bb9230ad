"""GenerationActor: samples completions with the newest policy weights it was handed.

A plain class: `launch/` wraps it with `ray.remote`, tests build it in-process. It owns one
generation backend and the policy version of the weights it holds; it never computes rewards
or gradients.
"""

from __future__ import annotations

import torch

from distrl.config import ModelConfig
from distrl.generation import Rollout, SamplingParams, WeightsMissing, resolve_backend
from distrl.generation.hf import HFBackend
from distrl.models import (load_policy, load_tokenizer, pick_device, resolve_dtype, tokenizer_fingerprint,
                           where)
from distrl.weights import PackedWeights, WeightSyncError, same_fingerprint


class GenerationActor:
    def __init__(self, model_path: str, model_cfg: ModelConfig, backend: str = "hf",
                 seed: int = 0, torch_threads: int = 1, vllm_options: dict | None = None) -> None:
        """`vllm_options`: VLLMBackend keywords (tensor_parallel_size, gpu_memory_utilization,
        max_model_len, colocate, kv_cache_gb, torch_threads, device) when the backend resolves to vllm."""
        torch.set_num_threads(max(1, torch_threads))
        self.device = pick_device()
        dtype = str(resolve_dtype(model_cfg.dtype, self.device, lora=model_cfg.lora_rank > 0)).removeprefix("torch.")
        device = (vllm_options or {}).get("device", "")
        self.kind = resolve_backend(backend, model_path, dtype, model_cfg.lora_rank > 0, device)
        if self.kind == "vllm":
            from distrl.generation.vllm import VLLMBackend

            self.backend = VLLMBackend(model_path, model_cfg, seed=seed, **(vllm_options or {}))
        else:
            tokenizer = load_tokenizer(model_path, model_cfg.trust_remote_code)
            # Same seed as the learner: a LoRA adapter gets the same parameter names and shapes.
            model = load_policy(model_path, model_cfg, self.device, seed=seed)
            model.requires_grad_(False)
            model.eval()
            self.backend = HFBackend(model, tokenizer, self.device)
        self.policy_version = -1  # no weights from the learner yet

    def ready(self) -> dict:
        if self.kind == "vllm":
            tokenizer, eos_ids = self.backend.llm.get_tokenizer(), None
            if tokenizer.pad_token_id is None:  # what load_tokenizer gives the driver; vLLM never pads ids
                tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer, eos_ids = self.backend.tokenizer, self.backend.eos_ids
        return {**where(), "device": str(self.device), "threads": torch.get_num_threads(), "backend": self.kind,
                "tokenizer": tokenizer_fingerprint(tokenizer), "eos_ids": eos_ids}

    def load_weights(self, packed: PackedWeights | list) -> int:
        """Load a published policy version; return the version now held. `packed` is the
        PackedWeights, or `[ObjectRef]` to them (what the driver sends): a vLLM engine's workers
        then fetch full weights from their own node's object store."""
        ref = None
        if isinstance(packed, list):
            import ray

            (ref,) = packed
            packed = ray.get(ref)  # zero-copy: a view of this node's object store
        if self.kind == "vllm":
            version = self.backend.load_weights(packed, ref)
        else:
            self.backend.load_weights(packed)
            version = packed.policy_version
        # Checked on receipt: a load that took nothing (or part) leaves other values behind.
        held = self.backend.held_fingerprint()
        if packed.fingerprint is not None and (held is None or not same_fingerprint(held, packed.fingerprint)):
            self.policy_version = -1  # never sample from weights that are not a published version
            raise WeightSyncError(f"weight sync to policy version {packed.policy_version}: this generator "
                                  f"holds other weights (fingerprint {held} != published {packed.fingerprint})")
        self.policy_version = version
        return self.policy_version

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Rollout]]:
        if self.policy_version < 0:  # e.g. just restarted by Ray: never sample from stale weights
            raise WeightsMissing("generate called before any weights were loaded")
        return self.backend.generate(prompts, sampling, self.policy_version)
