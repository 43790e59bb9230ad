"""GenerationActor: samples completions with the newest policy weights it was handed.

A plain class: `launch/` wraps it with `ray.remote`, tests build it in-process. It owns one
generation backend and the policy version of the weights it holds; it never computes rewards
or gradients.
"""

from __future__ import annotations

import os

import torch

from distrl.config import ModelConfig
from distrl.generation import Rollout, SamplingParams, resolve_backend
from distrl.generation.hf import HFBackend
from distrl.models import load_policy, load_tokenizer, pick_device
from distrl.weights import PackedWeights


class GenerationActor:
    def __init__(self, model_path: str, model_cfg: ModelConfig, backend: str = "hf",
                 seed: int = 0, torch_threads: int = 1) -> None:
        torch.set_num_threads(max(1, torch_threads))
        if resolve_backend(backend) != "hf":
            raise ValueError(f"backend {backend} is not available")
        self.device = pick_device()
        tokenizer = load_tokenizer(model_path, model_cfg.trust_remote_code)
        # Same seed as the learner: a LoRA adapter gets the same parameter names and shapes.
        model = load_policy(model_path, model_cfg, self.device, seed=seed)
        model.requires_grad_(False)
        model.eval()
        self.backend = HFBackend(model, tokenizer, self.device)
        self.policy_version = -1  # no weights from the learner yet

    def ready(self) -> dict:
        return {"pid": os.getpid(), "device": str(self.device), "threads": torch.get_num_threads()}

    def load_weights(self, packed: PackedWeights) -> int:
        """Copy a published policy version into the model; return the version now held."""
        self.backend.load_weights(packed)
        self.policy_version = packed.policy_version
        return self.policy_version

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Rollout]]:
        if self.policy_version < 0 and not sampling.greedy:
            raise RuntimeError("generate called before any weights were loaded")
        return self.backend.generate(prompts, sampling, self.policy_version)
