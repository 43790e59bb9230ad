"""LearnerActor: updates the policy with PG/GRPO and publishes each new version's weights.

A plain class (`launch/` applies `ray.remote`). One `step` = the loss over micro-batches of the
rollouts it is given, one optimizer update, policy_version + 1, and the packed trainable weights
of the new version as a second return value (one object-store write). It also generates its own
chunk of each batch with its current weights. It does not compute rewards or advantages: those
arrive with the rollouts.

In a learner group (`--num_learners N`) each rank is one of these: `join_group` makes them one
torch.distributed group, each `step` gets a part of the batch and the whole batch's totals, the
gradients are summed over ranks (or reduce-scattered by FSDP2), and only rank 0 publishes weights.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import torch

from distrl.algorithms import policy_loss
from distrl.batch import Collated, collate, completion_logprobs, gap_rows, microbatch_limits, plan_microbatches
from distrl.checkpoint import check_safe, load_state, save_state
from distrl.config import AlgoConfig, ModelConfig
from distrl.generation import Rollout, SamplingParams
from distrl.generation.hf import HFBackend
from distrl.models import (TrainingKernels, load_policy, load_tokenizer, load_unsloth_policy, low_precision_cpu,
                           pick_device, tokenizer_fingerprint, trainable_parameters, wants_compile, where)
from distrl import parallel
from distrl.optim import ShardedCPUAdamW, clip_and_step, make_optimizer, set_hyperparameters, set_lr
from distrl.weights import PackedWeights, WeightPacker


class LearnerActor:
    def __init__(self, model_path: str, model_cfg: ModelConfig, algo_cfg: AlgoConfig,
                 temperature: float, ref_mode: str = "none", seed: int = 0, torch_threads: int = 0,
                 max_staleness: int = 0, max_new_tokens: int = 0, world_size: int = 1,
                 cpu_adamw_sharding: str = "zero1", correct_mismatch: bool = False,
                 sample_threads: int = 0) -> None:
        """`max_staleness` > 0: take rollouts up to that many versions old, with decoupled PPO.
        `max_new_tokens`: the generation budget, Dr. GRPO's constant loss normaliser.
        `world_size` > 1: one rank of a learner group; it trains once `join_group` ran.
        `cpu_adamw_sharding`: who owns CPUAdamW's state in a group (`zero1`; `rank0` for the bench).
        `correct_mismatch`: weight on-policy tokens by the truncated pi_learner / pi_generator too
        (generators with other numerics: bf16, vLLM), as off-policy ones always are.
        `sample_threads`: torch threads while it samples its chunk (0: its training threads)."""
        # Auto: the node's cores, shared by the learner ranks (placed together by default).
        torch.set_num_threads(torch_threads if torch_threads > 0 else max(1, (os.cpu_count() or 1) // world_size))
        torch.manual_seed(seed)
        self.seed = seed
        self.algo, self.temperature, self.ref_mode = algo_cfg, temperature, ref_mode
        self.max_staleness, self.max_new_tokens = max_staleness, max_new_tokens
        self.correct_mismatch, self.sample_threads = correct_mismatch, sample_threads
        self.device = pick_device()
        self.tokenizer = load_tokenizer(model_path, model_cfg.trust_remote_code)
        if model_cfg.unsloth:
            self.model = load_unsloth_policy(model_path, model_cfg, seed=seed)
        else:
            self.model = load_policy(model_path, model_cfg, self.device, seed=seed)
        if model_cfg.gradient_checkpointing and not model_cfg.unsloth:
            # Non-reentrant checkpointing needs no input grads, so it works with frozen embeddings (LoRA).
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.kernels = (TrainingKernels(self.model, wants_compile(model_cfg, self.model, self.device))
                        if low_precision_cpu(self.model, self.device) and not model_cfg.unsloth else None)
        self.params = trainable_parameters(self.model)
        # A prompt shared by a micro-batch's rows runs once (distrl/batch.py), except under
        # unsloth's patched forward and compiled layers, where that path was never measured.
        self.share_prompts = not model_cfg.unsloth and not (self.kernels and self.kernels.layers)
        self.rank, self.world_size, self.fsdp, self.cpu_group = 0, world_size, False, None
        self.sharding = cpu_adamw_sharding
        self.optimizer = self._make_optimizer() if world_size == 1 else None
        self.backend = HFBackend(self.model, self.tokenizer, self.device)
        self.packer = WeightPacker(self.params)  # one buffer, rewritten for every version
        self.policy_version = 0
        self.model_path, self.lora = model_path, model_cfg.lora_rank > 0

    def _make_optimizer(self):
        algo = self.algo
        return make_optimizer(algo.optimizer, self.params.values(), algo.lr, algo.weight_decay, algo.max_grad_norm,
                              algo.grad_offload, self.rank, self.world_size, self.cpu_group, self.sharding,
                              seed=self.seed if algo.dither_masters else None)

    # -- the learner group --------------------------------------------------------------
    def rendezvous_address(self) -> str:
        return parallel.free_address()

    def join_group(self, address: str, rank: int, timeout_s: float, fsdp: bool = False) -> dict:
        """Join the group of `world_size` ranks at `address` (all ranks call this at once). Rank
        0's weights are copied to every rank, or, with `fsdp`, the model is sharded over them."""
        parallel.join(address, rank, self.world_size, self.device, timeout_s)
        self.rank, self.fsdp = rank, fsdp
        self.cpu_group = parallel.cpu_group(self.device, timeout_s)
        if fsdp:
            parallel.fsdp_shard(self.model)
            self.params = trainable_parameters(self.model)  # now DTensors: this rank's shards
        else:
            parallel.broadcast_params(list(self.params.values()))
        self.optimizer = self._make_optimizer()
        return {"rank": rank, "world_size": self.world_size, "fsdp": fsdp,
                "local_params": sum(parallel.local(p).numel() for p in self.params.values())}

    def checksum(self) -> tuple[float, float]:
        """A cheap fingerprint of the weights, equal on every replica of a data-parallel group."""
        return parallel.checksum(list(self.params.values()))

    def ready(self) -> dict:
        return {**where(), "device": str(self.device), "threads": torch.get_num_threads(),
                "trainable_params": sum(p.numel() for p in self.params.values()),
                "tokenizer": tokenizer_fingerprint(self.tokenizer), "eos_ids": self.backend.eos_ids}

    def publish(self) -> PackedWeights | None:
        """The current version's trainable weights, packed (LoRA tensors only with LoRA), from
        rank 0; None from the other ranks. With FSDP every rank must call it: each tensor is
        gathered in turn, so the full model never sits on a device twice."""
        if self.fsdp:
            tensors = parallel.full_tensors(self.params)
            if self.rank == 0:
                return self.packer.pack_each(tensors, self.policy_version)
            for _ in tensors:
                pass
            return None
        return self.packer.pack(self.params, self.policy_version) if self.rank == 0 else None

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Rollout]]:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.sample_threads or threads)
        try:
            return self.backend.generate(prompts, sampling, self.policy_version)
        finally:
            torch.set_num_threads(threads)

    def step(self, rollouts: list[Rollout], advantages: list[float], ref_logprobs: list[list[float]] | None = None,
             batch_totals: tuple[float, int] | None = None, filler: Rollout | None = None,
             publish: bool = True, lr_scale: float = 1.0) -> tuple[dict, PackedWeights | None]:
        """One update on `rollouts` (flat) with one advantage each, at --lr times `lr_scale` (the
        driver's --lr_schedule); returns (metrics, new weights), the weights None without
        `publish` (no broadcast follows this update: nothing to pack).

        In a group, `rollouts` is this rank's part and `batch_totals` the whole batch's
        (completion tokens, rollouts), which normalise the loss; metrics are this rank's share
        of the batch's (the driver sums them). With FSDP every rank runs as many micro-batches
        as the busiest one (each forward and backward is a collective): the missing ones run on
        `filler` with weight 0."""
        start = time.perf_counter()
        oldest = self.policy_version - self.max_staleness
        stale = [r.policy_version for r in rollouts if not oldest <= r.policy_version <= self.policy_version]
        if stale:
            raise ValueError(f"rollouts from policy version {stale[0]} given to a learner at "
                             f"version {self.policy_version} (max staleness {self.max_staleness})")
        num_tokens, num_seqs = batch_totals or (float(sum(len(r.completion_ids) for r in rollouts)), len(rollouts))
        needs_grad = None if self._grad_always() else [a != 0.0 for a in advantages]
        rows, gap_weight = self._rows_to_run(rollouts, needs_grad)
        lengths = [len(rollouts[i].prompt_ids) + len(rollouts[i].completion_ids) for i in rows]
        plans = [[rows[j] for j in plan] for plan in plan_microbatches(
            lengths, *microbatch_limits(self.algo.micro_batch_size, self.algo.max_tokens_per_microbatch,
                                        self.kernels is not None, self.device.type == "cpu"),
            needs_grad=None if needs_grad is None else [needs_grad[i] for i in rows])]
        if self.fsdp:
            plans += [[]] * (parallel.max_over_ranks(len(plans), self.device) - len(plans))
        args = rollouts, advantages, ref_logprobs, num_tokens, num_seqs, filler, needs_grad, gap_weight
        totals, prox = self._forward_backward(plans, *args)
        grad_norm, comm_s = self._update(totals.get("loss", 0.0), lr_scale)
        changed = math.isfinite(grad_norm)
        # GRPO's mu: more updates on the same rollouts, each clipped around the batch's pre-update
        # policy (its first forward, `prox`). Only rows with a gradient run again; in a group every
        # rank takes each update (its steps are collectives), with or without rows of its own.
        again = [idx for idx in plans if idx and (needs_grad is None or needs_grad[idx[0]])]
        more_updates = self.algo.updates_per_batch > 1 and changed
        if more_updates:  # a batch without signal on any rank takes no more steps
            more_updates = any(a != 0.0 for a in advantages) or self._loss_grad_beyond_advantage()
            if self.world_size > 1:
                more_updates = parallel.any_rank(more_updates, self.device)
        if more_updates and self.fsdp:
            again += [[]] * (parallel.max_over_ranks(len(again), self.device) - len(again))
        reuse_clip = []
        for _ in range(self.algo.updates_per_batch - 1 if more_updates else 0):
            more, _ = self._forward_backward(again, *args, prox=prox)
            more_norm, more_comm = self._update(more.get("loss", 0.0), lr_scale)
            comm_s += more_comm
            if not math.isfinite(more_norm):
                break
            reuse_clip.append(more.get("clip_frac", 0.0))
        if reuse_clip:
            totals["clip_frac_reuse"] = sum(reuse_clip) / len(reuse_clip)
        if changed:
            self.policy_version += 1
        if self.algo.grad_offload:  # what the hooks moved off the model during backward (0: nothing to move)
            mover = self.optimizer.local if isinstance(self.optimizer, ShardedCPUAdamW) else self.optimizer
            moved, mover.offloaded_bytes = (mover.offloaded_bytes, 0) if mover is not None else (0, 0)
            totals["grad_offload_mb"] = moved / 2**20
        totals.update(grad_norm=grad_norm, skipped_update=float(not changed), train_tokens=num_tokens,
                      train_s=time.perf_counter() - start, policy_version=self.policy_version,
                      # Time in gradient/weight collectives outside backward (FSDP's are inside it).
                      comm_s=comm_s if self.world_size > 1 else 0.0)
        return totals, self.publish() if publish else None

    def _forward_backward(self, plans: list[list[int]], rollouts: list[Rollout], advantages: list[float],
                          ref_logprobs: list[list[float]] | None, num_tokens: float, num_seqs: int,
                          filler: Rollout | None, needs_grad: list[bool] | None, gap_weight: float,
                          prox: dict[tuple[int, ...], torch.Tensor] | None = None,
                          ) -> tuple[dict[str, float], dict[tuple[int, ...], torch.Tensor]]:
        """Forward (+ backward where there is a gradient) of every micro-batch in `plans` (row
        indices; [] = a filler one); returns the summed metrics and each micro-batch's log-probs
        before any update, which a later update on the same rows takes as `prox`."""
        totals: dict[str, float] = {}
        logprobs: dict[tuple[int, ...], torch.Tensor] = {}
        with self.kernels.active() if self.kernels else contextlib.nullcontext():
            for idx in plans:
                metrics, logprobs[tuple(idx)] = self._accumulate(
                    [rollouts[i] for i in idx] or [filler], [advantages[i] for i in idx] or [0.0],
                    [ref_logprobs[i] for i in idx] if ref_logprobs and idx else None,
                    num_tokens, num_seqs, weight=1.0 if idx else 0.0,
                    stands_for=1.0 if needs_grad is None or not idx or needs_grad[idx[0]] else gap_weight,
                    prox=prox.get(tuple(idx)) if prox and idx else None)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
        return totals, logprobs

    def _update(self, loss: float, lr_scale: float = 1.0) -> tuple[float, float]:
        """Sum the gradients over ranks where needed, clip and step at --lr times `lr_scale`;
        returns (grad_norm, comm_s). A non-finite loss (NaN weights, overflow) never reaches the
        weights: grad_norm NaN. The optimizer holds --lr between updates, so a checkpoint keeps
        the run's lr, not one step's."""
        bad_loss = not math.isfinite(loss)
        comm_start = time.perf_counter()
        if self.world_size > 1:  # every rank must skip together, or the collectives misalign
            bad_loss = parallel.any_rank(bad_loss, self.device)
        if bad_loss:
            self.optimizer.zero_grad()
            return float("nan"), time.perf_counter() - comm_start
        params = list(self.params.values())
        if self.world_size > 1 and not self.fsdp and not isinstance(self.optimizer, ShardedCPUAdamW):
            parallel.sum_grads(params)  # FSDP reduce-scatters in backward; ShardedCPUAdamW reduces itself
        comm_s = time.perf_counter() - comm_start
        set_lr(self.optimizer, self.algo.lr * lr_scale)
        try:
            grad_norm = clip_and_step(self.optimizer, params, self.algo.max_grad_norm)
        finally:
            set_lr(self.optimizer, self.algo.lr)
        return grad_norm, comm_s + getattr(self.optimizer, "comm_s", 0.0)

    def _rows_to_run(self, rollouts: list[Rollout], needs_grad: list[bool] | None) -> tuple[list[int], float]:
        """The rows this step forwards: every row with a gradient, and of those without one (their
        forward only measures logprob_gap) --gap_rows per sampler. Also the weight that makes those
        stand for all rows without a gradient in the step's token-mean metrics (their tokens over
        the sampled ones'; per-sequence ones, GSPO's importance_weight, only approximately). Each
        sampler's gap (gap_sum/gap_tokens) stays unweighted: the mean over the tokens measured."""
        if needs_grad is None or not self.algo.gap_rows:
            return list(range(len(rollouts))), 1.0
        idle = [i for i, grad in enumerate(needs_grad) if not grad]
        samplers = [self._sampler(rollouts[i]) for i in idle]
        picked = [idle[j] for j in gap_rows(samplers, self.algo.gap_rows)]
        tokens = [sum(len(rollouts[i].completion_ids) for i in part) for part in (idle, picked)]
        return sorted([i for i, grad in enumerate(needs_grad) if grad] + picked), tokens[0] / max(tokens[1], 1)

    def _sampler(self, rollout: Rollout) -> int | str:
        """Whose gap a row counts in: the sampler's, or "stale" for a rollout of an older version
        (its gap is lag as well as sync error)."""
        return "stale" if rollout.policy_version != self.policy_version else rollout.source

    def _grad_always(self) -> bool:
        """Whether rows with advantage 0 run a backward too: a KL or entropy term in the loss, or
        FSDP, whose every forward and backward is a collective."""
        return self._loss_grad_beyond_advantage() or self.fsdp

    def _loss_grad_beyond_advantage(self) -> bool:
        """Whether the loss has a gradient where every advantage is 0: a KL or entropy term."""
        kl_in_loss = self.algo.beta > 0 and not self.algo.kl_in_reward and self.ref_mode != "none"
        return kl_in_loss or self.algo.entropy_coef > 0

    def _accumulate(self, rollouts: list[Rollout], advantages: list[float],
                    ref_logprobs: list[list[float]] | None, num_tokens: float,
                    num_seqs: int, weight: float = 1.0, stands_for: float = 1.0,
                    prox: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
        """Forward + backward of one micro-batch; the loss is normalised over the whole batch.
        `weight` 0: a filler micro-batch (FSDP) that must run but count for nothing. `stands_for`:
        how many times its rows' share of the batch's metrics this micro-batch counts (rows without
        a gradient sampled for the gap, see `_rows_to_run`); the per-sampler gap sums ignore it.
        `prox`: these rows' log-probs before this step's first update (a later update on them).
        Returns the metrics and this forward's log-probs (B, T), detached."""
        batch = collate(rollouts, self.tokenizer.pad_token_id, self.share_prompts)
        mask = batch.completion_mask.to(self.device)
        # Rows with advantage 0 and no KL term have exactly zero gradient: when a whole
        # micro-batch is such rows, a forward without autograd still gives logprob_gap at about
        # a third of the cost (frequent early on, when most groups score all 0).
        needs_grad = any(a != 0.0 for a in advantages) or self._grad_always()
        entropy = None
        with torch.set_grad_enabled(needs_grad):
            logprobs = completion_logprobs(self.model, batch, self.temperature, self.algo.logprob_chunk_size,
                                           with_entropy=self.algo.entropy_coef > 0)
            if self.algo.entropy_coef > 0:
                logprobs, entropy = logprobs[0], logprobs[1]
        old = batch.old_logprobs.to(self.device)
        weigh_behaviour = bool(self.max_staleness or self.correct_mismatch)
        if prox is not None and not weigh_behaviour:  # a later update, with no correction asked for:
            old, prox = prox, None                     # the plain ratio against the pre-update policy
        ref = self._reference(batch, rollouts, ref_logprobs)
        low, high = self.algo.clip_range
        loss, metrics = policy_loss(
            self.algo.loss_name, logprobs, old, torch.tensor(advantages, device=self.device), mask,
            ref_logprobs=ref, beta=0.0 if self.algo.kl_in_reward else self.algo.beta, clip_eps=low,
            clip_eps_high=high, agg=self.algo.loss_agg, num_tokens=num_tokens, num_seqs=num_seqs,
            kl_estimator=self.algo.kl_estimator, entropy=entropy, entropy_coef=self.algo.entropy_coef,
            norm_len=self.max_new_tokens or None,
            # Off-policy, or sampled with other numerics: this forward (before the update) is the
            # proximal policy, and pi_prox / pi_generator (truncated) weights each token.
            prox_logprobs=prox if prox is not None else (logprobs.detach() if weigh_behaviour else None),
            max_importance_weight=self.algo.max_importance_weight)
        if needs_grad:
            (loss * weight if weight != 1.0 else loss).backward()
        # The proof the generators hold our weights, read off this same (pre-update) forward:
        # mean |generator log-prob - learner log-prob| over the sampled tokens.
        row_gap, row_tokens = ((logprobs.detach() - old).abs() * mask).sum(-1).tolist(), mask.sum(-1).tolist()
        out = {k: float(v) * weight * stands_for for k, v in metrics.items()}
        out["logprob_gap"] = sum(row_gap) / max(num_tokens, 1.0) * weight * stands_for
        # The same sums by who sampled each row (the driver splits the gap per actor, and apart
        # for rollouts of an older version, whose gap is lag as well as sync error).
        for r, g, n in zip(rollouts, row_gap, row_tokens):
            source = self._sampler(r)
            out[f"gap_sum/{source}"] = out.get(f"gap_sum/{source}", 0.0) + g * weight
            out[f"gap_tokens/{source}"] = out.get(f"gap_tokens/{source}", 0.0) + n * weight
        return out, logprobs.detach()

    def _reference(self, batch: Collated, rollouts: list[Rollout],
                   ref_logprobs: list[list[float]] | None) -> torch.Tensor | None:
        if self.ref_mode == "adapter_disabled":
            with torch.no_grad(), self.model.disable_adapter():
                return completion_logprobs(self.model, batch, self.temperature, self.algo.logprob_chunk_size)
        if ref_logprobs is None:
            return None
        ref = torch.zeros_like(batch.old_logprobs)
        for i, lp in enumerate(ref_logprobs):
            ref[i, : len(lp)] = torch.tensor(lp)
        return ref.to(self.device)

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, folder: str) -> int:
        """Write trainable weights, optimizer state, policy version and RNG state into `folder`
        (safetensors + JSON only). Non-finite weights are refused: a bad update is never saved.
        In a group rank 0 writes the weights (gathered, with FSDP) and the optimizer state; a
        sharded CPUAdamW has every rank write its own shard."""
        from safetensors.torch import save_file

        bad = [name for name, p in self.params.items() if not torch.isfinite(parallel.local(p).detach()).all()]
        if self.world_size > 1 and parallel.any_rank(bool(bad), self.device) and not bad:
            bad = ["a tensor on another rank"]
        if bad:
            raise ValueError(f"non-finite values in {bad[0]} (and {len(bad) - 1} more tensors) at "
                             f"policy version {self.policy_version}: not checkpointed")
        if self.rank == 0:
            weights = {n: t.contiguous() for n, t in parallel.full_tensors(self.params)}
            save_file(weights, os.path.join(folder, "policy.safetensors"))
            del weights
        elif self.fsdp:  # takes part in the gathering, keeps nothing
            for _ in parallel.full_tensors(self.params):
                pass
        if isinstance(self.optimizer, ShardedCPUAdamW):
            save_state(folder, f"optimizer-rank{self.rank}", self.optimizer.state_dict())
        elif self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            state = get_optimizer_state_dict(self.model, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.rank == 0:
                save_state(folder, "optimizer", state)
        elif self.rank == 0:
            save_state(folder, "optimizer", self.optimizer.state_dict())
        if self.rank == 0:
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            save_state(folder, "learner", {"policy_version": self.policy_version, "rng": rng,
                                           "world_size": self.world_size, "fsdp": self.fsdp})
        return self.policy_version

    def load_checkpoint(self, folder: str) -> int:
        """Restore what `save_checkpoint` wrote; returns the restored policy version. Every rank
        of a group reads the folder (a shared filesystem across nodes)."""
        from safetensors.torch import load_file

        check_safe(folder)
        if self.fsdp:
            self._load_sharded(folder)
        else:
            saved = load_file(os.path.join(folder, "policy.safetensors"))
            self._check_names(folder, saved)
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(saved[name])
            sharded = isinstance(self.optimizer, ShardedCPUAdamW)
            self.optimizer.load_state_dict(load_state(folder, f"optimizer-rank{self.rank}" if sharded else "optimizer"))
        saved_lr = set_hyperparameters(self.optimizer, self.algo.lr, self.algo.weight_decay)
        if self.rank == 0 and saved_lr is not None and saved_lr != self.algo.lr:
            print(f"resumed with --lr {self.algo.lr:g}; the checkpoint was trained at {saved_lr:g}", flush=True)
        state = load_state(folder, "learner")
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.policy_version = int(state["policy_version"])
        return self.policy_version

    def _check_names(self, folder: str, saved: dict) -> None:
        if set(saved) != set(self.params):
            missing, extra = set(self.params) - set(saved), set(saved) - set(self.params)
            raise ValueError(f"checkpoint {folder} does not match this model's trainable tensors "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}): same "
                             "--model/--lora_rank/--lora_target_modules as the run that wrote it?")

    def _load_sharded(self, folder: str) -> None:
        """FSDP: rank 0 reads the full weights and optimizer state and streams each rank its
        shards, so a node holds one full copy on the CPU, not one per rank."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        weights, optimizer = {}, {}
        if self.rank == 0:
            weights = load_file(os.path.join(folder, "policy.safetensors"))
            self._check_names(folder, weights)
            optimizer = load_state(folder, "optimizer")
        options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=True)
        set_model_state_dict(self.model, weights, options=options)
        set_optimizer_state_dict(self.model, self.optimizer, optimizer, options=options)

    def save(self, path: str) -> str:
        """Write the current policy: a full model folder, or an adapter folder with LoRA (rank 0;
        with FSDP the state is gathered to rank 0's CPU first).

        The policy is the weights the model computes with, the ones every generator ran and every
        gradient was taken at: with bf16 weights, their bf16 values, not CPUAdamW's fp32 masters,
        which differ from them below the bf16 spacing. Started at the rounded values (the default;
        `--dither_masters` places them at random in the cell) they are another, barely trained
        model: arithmetic, lr 1e-5, 55 steps: the bf16 weights 25.7% greedy in fp32, the masters 7.7%.
        They stay in the optimizer state of each checkpoint, for an exact resume."""
        state = None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
            self.model.save_pretrained(path, **({"state_dict": state} if state is not None else {}))
            self.tokenizer.save_pretrained(path)
        return path
