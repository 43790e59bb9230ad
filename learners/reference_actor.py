"""ReferenceActor: the frozen initial model, serving reference log-probs for the KL term.

A plain class (`launch/` applies `ray.remote`). It holds the base model without any adapter and
never changes; it knows nothing about advantages or optimizers.
"""

from __future__ import annotations

import dataclasses

import torch

from distrl.batch import collate, completion_logprobs
from distrl.config import ModelConfig
from distrl.generation import Rollout
from distrl.models import load_policy, load_tokenizer, pick_device, tokenizer_fingerprint, where


class ReferenceActor:
    def __init__(self, model_path: str, model_cfg: ModelConfig, temperature: float,
                 micro_batch_size: int = 8, torch_threads: int = 1) -> None:
        torch.set_num_threads(max(1, torch_threads))
        self.device = pick_device()
        self.temperature, self.micro_batch_size = temperature, micro_batch_size or 8  # 0: auto
        tokenizer = load_tokenizer(model_path, model_cfg.trust_remote_code)
        self.pad_id, self.fingerprint = tokenizer.pad_token_id, tokenizer_fingerprint(tokenizer)
        self.model = load_policy(model_path, dataclasses.replace(model_cfg, lora_rank=0), self.device)
        self.model.requires_grad_(False)
        self.model.eval()

    def ready(self) -> dict:
        return {**where(), "device": str(self.device), "tokenizer": self.fingerprint}

    @torch.no_grad()
    def logprobs(self, rollouts: list[Rollout]) -> list[list[float]]:
        """Reference log-probs of each rollout's completion tokens, one list per rollout."""
        out: list[list[float]] = []
        for start in range(0, len(rollouts), self.micro_batch_size):
            chunk = rollouts[start: start + self.micro_batch_size]
            lp = completion_logprobs(self.model, collate(chunk, self.pad_id), self.temperature).cpu()
            out.extend(lp[i, : len(r.completion_ids)].tolist() for i, r in enumerate(chunk))
        return out
