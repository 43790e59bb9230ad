"""The training loop: generate -> reward -> advantages -> (reference) -> learn -> publish weights.

Only orchestration lives here, split by role: the step and the loop (this file), the generator
fleet (`launch/fleet.py`: launch, gather, admit, revive, sync), scoring and evaluation
(`launch/scoring.py`), checkpoints (`launch/checkpointing.py`). The math is in
`distrl/algorithms/`, the model work in the actors, the checks before start-up in
`launch/preflight.py`, the deadlines on every wait in `launch/calls.py`, the checks on a running
run in `launch/guards.py`. Every rollout's policy version is checked against the version the
step expects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from distrl import checkpoint
from distrl.algorithms.shaping import fill_with_informative, informative_groups
from distrl.config import ConfigError, TrainConfig
from distrl.data import PromptSampler
from distrl.data.prompts import encode_prompt
from distrl.generation import Rollout, SamplingParams
from distrl.generation.base import vllm_device
from distrl.optim import lr_scale
from distrl.precision import GAP_LIMITS
from distrl.plot import draw as draw_plots
from distrl.rewards.pool import RewardPool
from launch.guards import (check_eval_loops, count_bad_update, count_cut_steps, count_eval_drop, count_flat_steps,
                           count_gap_breach, count_loop_steps, split_gap)
from launch.cluster import Actors
from launch.learner_group import LearnerGroup
from launch.learning_signal import learning_signal
from launch.metrics import DashboardMetrics, ExtraLogs, MetricsLog, gap_summary, step_line
from launch.preflight import Setup
from launch.replay import ReplayQueue, replay_metrics
from launch.rounds import Batch, Round, length_percentiles
from launch.checkpointing import Checkpointing
from launch.fleet import GeneratorFleet
from launch.scoring import Scoring
from launch.stop import StopSignals


class Trainer(GeneratorFleet, Scoring, Checkpointing):
    """Holds the run's state between steps; `train()` is the loop. Its roles: the generator
    fleet (launch/fleet.py), scoring and evaluation (launch/scoring.py), checkpoints
    (launch/checkpointing.py); the step itself and the loop are here."""

    def __init__(self, cfg: TrainConfig, setup: Setup, actors: Actors, stop: StopSignals | None = None) -> None:
        self.cfg, self.setup, self.actors, self.stop = cfg, setup, actors, stop
        self.learners = LearnerGroup(actors.learners or [actors.learner], cfg.run.fsdp)
        self.tokenizer = setup.tokenizer
        self.sampler = PromptSampler(len(setup.train_rows), cfg.run.seed)
        self.replay = ReplayQueue(cfg.run.replay_prompts)
        self.replay_state = self.replay.state()  # the queue after the newest step's offer (checkpoints)
        # Prompts per step the learner samples itself (auto resolved as preflight printed it).
        self.learner_chunk = cfg.run.learner_chunk(setup.backend, vllm_device(cfg.run.num_gpus_per_actor))[0]
        self.policy_version = 0  # the learner's
        self.gen_version = 0  # the generators' (after the loads already submitted)
        self.weights_ref = None  # the learner's newest published weights
        self.gen_weights_ref = None  # the weights the generators hold (or are loading)
        self.generator_restarts = self.bad_steps = self.gap_breaches = 0
        self.eval_drops = self.flat_steps = self.cut_steps = self.loop_steps = 0  # the learning-health warnings' counts
        self.eval_repeat_warned = False
        self.eval_repeat_start: float | None = None  # step 0's eval_repeat_frac
        self.started = time.perf_counter()  # train() restarts it; the clock of --time_budget_s
        self.budget_spent = False
        self.gap_limit = cfg.run.max_logprob_gap or GAP_LIMITS.get(cfg.model.dtype, GAP_LIMITS["bfloat16"])
        self._too_long: set[int] = set()  # training rows over --max_prompt_tokens
        self._pids = {name: info.get("pid") for name, info in (actors.info or {}).items()}  # restarts count once
        self.evals: dict[int, float] = {}
        self.eval_cut: dict[int, float] = {}  # step -> fraction of held-out answers cut off at the budget
        self.start_step = 0
        self._loading: tuple[list[Any], int] | None = None
        self._pending: dict[int, Batch] = {}  # launched, not yet trained on
        self._last_version: dict[int, int] = {}  # worker -> newest policy version it sampled with
        self.rollouts_generated = self.rollouts_dropped = 0
        self._prompt_cache: dict[int, list[int]] = {}
        self.log = MetricsLog(os.path.join(setup.output_dir, "metrics.jsonl"))
        self.samples = MetricsLog(os.path.join(setup.output_dir, "samples.jsonl"))
        self.extra = ExtraLogs(setup.output_dir, os.path.basename(setup.output_dir), cfg.run.tensorboard,
                               cfg.run.wandb, cfg.to_dict())
        self.dashboard = DashboardMetrics(os.path.basename(setup.output_dir))
        timeout, default = cfg.data.reward_timeout_s, cfg.data.reward_default
        self.rewards = RewardPool(setup.reward_specs, timeout, default)
        self.eval_reward = RewardPool(setup.reward_specs[:1], timeout, default)

    def close(self) -> None:
        self.extra.close()
        self.rewards.close()
        self.eval_reward.close()

    # -- pieces of a step -------------------------------------------------------------
    def _encode(self, rows: list[dict], index: int) -> list[int]:
        return encode_prompt(self.tokenizer, rows[index]["prompt"], self.cfg.data.system_prompt)

    def _prompt_ids(self, index: int) -> list[int]:
        if index not in self._prompt_cache:
            self._prompt_cache[index] = self._encode(self.setup.train_rows, index)
        return self._prompt_cache[index]

    # -- the loop ---------------------------------------------------------------------
    def _new_batch(self, step: int, replay: bool = True) -> Batch:
        """The step's prompts: up to --replay_prompts replays (not with `replay` False: dynamic
        sampling's extra rounds draw fresh prompts only), the rest fresh from the data."""
        cfg = self.cfg
        fits = lambda i: len(self._prompt_ids(i)) <= cfg.data.max_prompt_tokens  # noqa: E731
        indices, replays = (self.replay.batch(cfg.run.batch_size, self._fresh, fits) if replay
                            else (self._fresh(cfg.run.batch_size), 0))
        sampling = SamplingParams(n=cfg.run.num_candidates, max_new_tokens=cfg.sampling.max_new_tokens,
                                  temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                  seed=cfg.run.seed * 100_003 + step)
        return Batch(step, indices, [self._prompt_ids(i) for i in indices], sampling, self.learner_chunk,
                     data_position=(self.sampler.epoch, self.sampler.position), replays=replays)

    def _fresh(self, count: int) -> list[int]:
        """The data's next `count` prompts; over-long ones are skipped, counted once."""
        cfg, indices = self.cfg, []
        while len(indices) < count:
            (i,) = self.sampler.next_batch(1)
            if len(self._prompt_ids(i)) <= cfg.data.max_prompt_tokens:
                indices.append(i)
            elif i not in self._too_long:
                self._too_long.add(i)
                if len(self._too_long) == len(self.setup.train_rows):
                    raise ConfigError(f"every training prompt is longer than --max_prompt_tokens "
                                      f"{cfg.data.max_prompt_tokens}: raise it")
        return indices

    def _launch_ahead(self, step: int) -> None:
        """Generators run `pipeline_depth` batches ahead of the learner (0: in lockstep with it),
        so they never make rollouts the staleness bound would drop; the learner's own chunk of a
        batch starts once the learner is free for it (with its newest weights)."""
        for s in range(step, min(step + self.cfg.run.pipeline_depth, self.cfg.run.max_steps) + 1):
            if s not in self._pending:
                self._pending[s] = self._new_batch(s)
            if not any(w > 0 for w in self._pending[s].refs):
                if 0 in self._pending[s].refs:  # the learner began during the sync; time from now on
                    self._pending[s].launched = time.perf_counter()
                self._launch(self._pending[s], "generators")
        if 0 not in self._pending[step].refs:
            self._launch(self._pending[step], "learner")

    def _collect(self, step: int, batch: Batch) -> Round:
        """Wait for `batch`'s rollouts, keep those fresh enough, and score them."""
        t0 = time.perf_counter()
        groups, made_by = self._gather(batch)
        t_gen = time.perf_counter()
        self.rollouts_generated += sum(len(g) for g in groups)
        keep, staleness = self._admit(step, groups, made_by)
        if not keep:
            raise RuntimeError(f"step {step}: every rollout was older than --async_staleness allows")
        groups = [groups[p] for p in keep]
        rows = [self.setup.train_rows[batch.indices[p]] for p in keep]
        rewards, stats, copies, loops = self._rewards(rows, groups)
        first_replay = len(batch.indices) - batch.replays
        return Round(groups, rows, rewards, stats.errors, stats.timeouts, staleness, t_gen - t0,
                     time.perf_counter() - t_gen, t_gen - batch.launched,
                     sum(len(r.completion_ids) for g in groups for r in g), copies, loops,
                     [batch.indices[p] for p in keep], [p >= first_replay for p in keep])

    def _refill(self, step: int, first: Round) -> tuple[Round, int]:
        """--dynamic_sampling: sample fresh prompts until the batch holds --batch_size groups whose
        rewards differ (or --max_sampling_rounds rounds ran); returns them merged, and the rounds."""
        cfg, rounds = self.cfg, [first]

        def next_round(r: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
            if r > 0:
                extra = self._new_batch(step, replay=False)
                extra.sampling = dataclasses.replace(extra.sampling, seed=extra.sampling.seed + 7919 * r)
                self._launch(extra)
                rounds.append(self._collect(step, extra))
            return [(r, p) for p in range(len(rounds[r].groups))], rounds[r].rewards

        min_std = max(cfg.algo.std_floor, cfg.algo.min_group_std)
        kept, _, used = fill_with_informative(next_round, cfg.run.batch_size, cfg.run.max_sampling_rounds, min_std)
        self.data_position = (self.sampler.epoch, self.sampler.position)
        if not kept:  # nothing informative within the cap: train on the first round (advantages 0)
            return first, used
        merged = Round([rounds[r].groups[p] for r, p in kept], [rounds[r].rows[p] for r, p in kept],
                       torch.stack([rounds[r].rewards[p] for r, p in kept]),
                       sum(x.reward_errors for x in rounds), sum(x.reward_timeouts for x in rounds),
                       [v for x in rounds for v in x.staleness], sum(x.gen_s for x in rounds),
                       sum(x.reward_s for x in rounds), sum(x.gen_wait for x in rounds),
                       sum(x.tokens for x in rounds), torch.stack([rounds[r].copies[p] for r, p in kept]),
                       torch.stack([rounds[r].loops[p] for r, p in kept]), [rounds[r].indices[p] for r, p in kept],
                       [rounds[r].replayed[p] for r, p in kept])
        return merged, used

    def _offer_replays(self, first: Round, final: Round) -> dict[str, float]:
        """--replay_prompts: queue the prompts of the groups trained on that have signal; the
        metrics of the replays, which all sit in the step's first round."""
        if not self.replay.per_step:
            return {}
        floor = max(self.cfg.algo.std_floor, self.cfg.algo.min_group_std)
        self.replay.offer(final.indices, informative_groups(final.rewards, floor).tolist())
        # A checkpoint of this step keeps the queue as it is now: the learner may draw the next
        # batch's prompts from it during the sync, and a resumed run draws them again.
        self.replay_state = self.replay.state()
        return replay_metrics(informative_groups(first.rewards, floor).tolist(), first.replayed)

    def _sample_during_sync(self, step: int) -> bool:
        """In lockstep, the learner samples its chunk of the next batch while the generators load
        the weights it just made (their own chunks queue behind the load). Not with
        --dynamic_sampling, whose extra rounds draw prompts before the next batch's, nor when the
        run stops after this step, nor without a chunk (the batch would start its clock early)."""
        run = self.cfg.run
        return (run.pipeline_depth == 0 and not run.dynamic_sampling and step < run.max_steps and not self.budget_spent
                and self.learner_chunk > 0)

    def _out_of_time(self) -> bool:
        budget = self.cfg.run.time_budget_s
        return budget > 0 and time.perf_counter() - self.started >= budget

    def step(self, step: int) -> dict:
        """One step, in the README's order: generate, reward, advantages (and reference), learn,
        publish the weights to the generators; returns the step's metrics."""
        cfg, t0 = self.cfg, time.perf_counter()
        self._launch_ahead(step)
        batch = self._pending.pop(step)
        self.data_position = batch.data_position
        dropped_before = self.rollouts_dropped
        first = rnd = self._collect(step, batch)  # generate and reward
        sampling_rounds = 1
        if cfg.run.dynamic_sampling:
            rnd, sampling_rounds = self._refill(step, rnd)
        t_reward = time.perf_counter()
        replayed = self._offer_replays(first, rnd)
        self._log_samples(step, rnd)
        rollouts, adv, ref_lp, extra = learning_signal(self.cfg, rnd.groups, rnd.rewards, self.actors.reference)
        self.flat_steps = count_flat_steps(self.flat_steps, extra["frac_zero_std"], step, cfg)
        t_ref = time.perf_counter()
        scale = self._lr_scale(step, t0)
        train, gaps = self._learn(step, rollouts, adv, ref_lp, scale)
        t_train = time.perf_counter()
        self.budget_spent = self._out_of_time()  # decided once: this step is then the last
        if self._sample_during_sync(step):  # the learner holds the new weights already
            self._pending[step + 1] = self._new_batch(step + 1)
            self._launch(self._pending[step + 1], "learner")
        sync_s = 0.0
        if self.policy_version != self.gen_version and self.policy_version % cfg.run.weight_sync_every == 0:
            sync_s = self._sync(self._newest_weights(), self.policy_version, block=cfg.run.pipeline_depth == 0)
        metrics = {"step": step, **self._metrics(rnd, train, gaps, extra), "gen_s": rnd.gen_s,
                   "reward_s": rnd.reward_s, "ref_s": t_ref - t_reward, "train_s": t_train - t_ref,
                   "learner_comm_s": train.get("comm_s", 0.0), "sync_s": sync_s, "lr": cfg.algo.lr * scale,
                   "rollouts_dropped": self.rollouts_dropped - dropped_before, "sampling_rounds": sampling_rounds,
                   **replayed}
        metrics["step_s"] = time.perf_counter() - t0
        metrics["samples_per_s"] = metrics["rollouts"] / metrics["step_s"]
        self.cut_steps = count_cut_steps(self.cut_steps, metrics["truncated_frac"], metrics["prompt_copy_frac"],
                                         step, cfg)
        self.loop_steps = count_loop_steps(self.loop_steps, metrics["repeat_frac"], step, cfg)
        return metrics

    def _log_samples(self, step: int, rnd: Round) -> None:
        """What the model says, to read: the first completion of the first --log_samples prompts."""
        for p in range(min(self.cfg.run.log_samples, len(rnd.groups))):
            first = rnd.groups[p][0]
            self.samples.write({"step": step, "prompt": rnd.rows[p]["prompt"], "reward": float(rnd.rewards[p, 0]),
                                "policy_version": first.policy_version,
                                "completion": self.tokenizer.decode(first.completion_ids, skip_special_tokens=True)})

    def _lr_scale(self, step: int, began: float) -> float:
        """--lr_schedule's factor for this step's update: the run's progress when the step `began`
        is the larger of the steps done over --max_steps and the time spent over --time_budget_s.
        The budget is checked after each update, so a step begins inside it and the last one
        still learns (unless the weight sync before it ran past the budget). The same steps give
        the same lr after a resume; a resumed time budget starts again, and so does its decay."""
        run = self.cfg.run
        progress = (step - 1) / max(run.max_steps, 1)
        if run.time_budget_s > 0:
            progress = max(progress, (began - self.started) / run.time_budget_s)
        return lr_scale(self.cfg.algo.lr_schedule, progress)

    def _learn(self, step: int, rollouts: list[Rollout], adv: list[float],
               ref_lp: list | None, scale: float = 1.0) -> tuple[dict, dict[str, float]]:
        """The update at --lr times `scale`, and the checks on it: skipped updates, replicas that
        differ, and each actor's logprob_gap; returns the learner's metrics and the gaps by source."""
        cfg = self.cfg
        # Weights are packed only for an update a broadcast follows (--weight_sync_every).
        publish = (self.policy_version + 1) % cfg.run.weight_sync_every == 0
        metrics_refs, weights_ref = self.learners.step(rollouts, adv, ref_lp, publish=publish, lr_scale=scale)
        if cfg.run.pipeline_depth and step < cfg.run.max_steps:  # queued behind this update
            self._launch(self._pending[step + 1], "learner")
        train = self.learners.metrics(metrics_refs, cfg.run.timeout_s)
        check = cfg.run.learner_check_every
        if len(self.learners) > 1 and not cfg.run.fsdp and check and step % check == 0:
            self.learners.check_replicas(cfg.run.timeout_s, step)
        sampled_at, self.policy_version = self.policy_version, int(train["policy_version"])
        if self.policy_version != sampled_at:  # a new version: the published weights, or none yet
            self.weights_ref = weights_ref if publish else None
        self.bad_steps = count_bad_update(self.bad_steps, bool(train["skipped_update"]), cfg.run.max_bad_steps,
                                          step, self.policy_version, self.setup.checkpoint_root)
        gaps, by_actor = split_gap(train, [name for _, name in self._workers()])
        self.gap_breaches = count_gap_breach(self.gap_breaches, by_actor, self.gap_limit, cfg.run.max_bad_steps,
                                             step, sampled_at, stop=cfg.run.on_logprob_gap == "stop")
        return train, gaps

    def _metrics(self, rnd: Round, train: dict, gaps: dict[str, float], extra: dict) -> dict:
        """What the step's rollouts, rewards and update say (metrics.jsonl; times are added by step)."""
        rewards, flat = rnd.rewards, [r for g in rnd.groups for r in g]
        out = {"policy_version": self.policy_version, "reward_mean": float(rewards.mean()),
               "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
               "accuracy": float((rewards > 0.5).float().mean()),
               "loss": train["loss"], "kl": train.get("kl", 0.0), "clip_frac": train["clip_frac"],
               **gaps, "grad_norm": train["grad_norm"], "skipped_update": train["skipped_update"],
               "completion_len_mean": sum(len(r.completion_ids) for r in flat) / len(flat),
               **length_percentiles([len(r.completion_ids) for r in flat]),
               "truncated_frac": sum(r.finish_reason == "length" for r in flat) / len(flat),
               "prompt_copy_frac": float(rnd.copies.mean()), "repeat_frac": float(rnd.loops.mean()),
               "reward_errors": rnd.reward_errors, "reward_timeouts": rnd.reward_timeouts,
               "tokens_per_s": rnd.tokens / max(rnd.gen_wait, 1e-9),
               "staleness_mean": sum(rnd.staleness) / len(rnd.staleness), "staleness_max": max(rnd.staleness),
               "rollouts": len(flat), "generator_version": self.gen_version,
               "generator_restarts": self.generator_restarts, "prompts_dropped": len(self._too_long), **extra}
        for key in ("importance_weight", "entropy", "grad_offload_mb", "clip_frac_reuse"):
            if key in train:
                out[key] = train[key]
        return out

    def train(self) -> dict:
        """Every step from the start (or the restored checkpoint) to --max_steps or the time
        budget, with evaluations, checkpoints and logs; returns the summary."""
        cfg = self.cfg
        self._begin()
        history = []
        # A bar with ETA on a terminal; in job logs (not a terminal) only the plain step lines.
        bar = tqdm(total=cfg.run.max_steps, desc="steps", unit="step", disable=not sys.stdout.isatty(),
                   leave=False)
        bar.update(self.start_step)
        self.started = time.perf_counter()
        for step in range(self.start_step + 1, cfg.run.max_steps + 1):
            metrics = self.step(step)
            last = step == cfg.run.max_steps or self.budget_spent
            if last or (cfg.run.eval_every and step % cfg.run.eval_every == 0):
                metrics.update(self.evaluate())
                self.evals[step], self.eval_cut[step] = metrics["eval_accuracy"], metrics["eval_truncated_frac"]
                if 0 in self.evals:
                    self.eval_drops = count_eval_drop(self.eval_drops, self.evals[step], self.evals[0], step, cfg)
                if self.eval_repeat_start is not None:
                    self.eval_repeat_warned = check_eval_loops(self.eval_repeat_warned,
                                                               metrics["eval_repeat_frac"], self.eval_repeat_start,
                                                               step, cfg)
            if last or (cfg.run.save_every and step % cfg.run.save_every == 0):
                metrics["save_s"] = self.save(step)
            self.log.write(metrics)
            self.dashboard.record(metrics)
            self.extra.record(metrics)
            history.append(metrics)
            line = step_line(metrics, cfg.run.max_steps)
            print(line, flush=True) if bar.disable else bar.write(line)
            bar.update(1)
            if last:
                break
            if self.stop is not None and self.stop.requested:  # SIGTERM/SIGINT: this step is the last
                if "save_s" not in metrics:
                    self.save(step)
                found = checkpoint.latest(self.setup.checkpoint_root)
                raise self.stop.stopped(step, found.path if found else None)
            if cfg.run.plot_every and step % cfg.run.plot_every == 0:
                draw_plots(self.setup.output_dir)
        bar.close()
        return self._finish(history)

    def _begin(self) -> None:
        """The run's files, the restored checkpoint, the first weights out, step 0's evaluation."""
        cfg = self.cfg
        os.makedirs(self.setup.output_dir, exist_ok=True)
        with open(os.path.join(self.setup.output_dir, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
        if self.actors.info:  # which node and process each actor landed on
            with open(os.path.join(self.setup.output_dir, "actors.json"), "w") as f:
                json.dump(self.actors.info, f, indent=2)
        if self.setup.resume is not None:
            self._restore(self.setup.resume)
        # Version 0 (or the restored one) goes out too: generators never sample from weights the
        # learner does not hold.
        self.weights_ref = self.learners.publish(self.cfg.run.timeout_s)
        self._sync(self.weights_ref, self.policy_version)
        if self.setup.resume is None:
            first = self.evaluate()
            self.evals[0], self.eval_cut[0] = first["eval_accuracy"], first["eval_truncated_frac"]
            self.eval_repeat_start = first["eval_repeat_frac"]
            self.log.write({"step": 0, "policy_version": 0, **first})
            self.dashboard.record({"step": 0, "policy_version": 0, **first})
            self.extra.record({"step": 0, **first})
            print(f"step 0/{cfg.run.max_steps} | eval_accuracy {self.evals[0]:.3f}", flush=True)

    def _finish(self, history: list[dict]) -> dict:
        """The last loads waited for, the plots, the final model, and the summary."""
        cfg, evals = self.cfg, self.evals
        self._finish_sync()
        draw_plots(self.setup.output_dir)
        final_dir = os.path.join(self.setup.output_dir, "final")
        self.learners.run("save", os.path.abspath(final_dir), timeout_s=cfg.run.timeout_s,
                          what="saving the final model")
        summary = {"steps": history[-1]["step"] if history else self.start_step,
                   "eval_accuracy_start": evals.get(0, float("nan")),
                   "eval_accuracy_end": evals[max(evals)], "eval_tokens": cfg.sampling.eval_tokens,
                   "eval_truncated_start": self.eval_cut.get(0), "eval_truncated_end": self.eval_cut.get(max(evals)),
                   "output_dir": self.setup.output_dir,
                   "final_model": final_dir, "plots": os.path.join(self.setup.output_dir, "plots")}
        if history:
            summary.update(
                median_step_s=statistics.median(m["step_s"] for m in history),
                tokens_per_s=statistics.median(m["tokens_per_s"] for m in history),
                **gap_summary(history),
                train_minutes=(time.perf_counter() - self.started) / 60)
        return summary
