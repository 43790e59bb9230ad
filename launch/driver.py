"""The training loop: generate -> reward -> advantages -> (reference) -> learn -> publish weights.

Only orchestration lives here: the math is in `distrl/algorithms/`, the model work in the
actors, the checks before start-up in `launch/preflight.py`, the deadlines on every wait in
`launch/calls.py`. Every rollout's policy version is checked against the version the step expects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

import ray
import torch
from tqdm import tqdm

from distrl import checkpoint
from distrl.algorithms.shaping import fill_with_informative
from distrl.checkpoint import Checkpoint
from distrl.config import ConfigError, RunStopped, TrainConfig
from distrl.data import PromptSampler
from distrl.data.datasets import FILE_ROW
from distrl.data.prompts import encode_prompt
from distrl.generation import Rollout, SamplingParams
from distrl.precision import GAP_LIMITS
from distrl.plot import draw as draw_plots
from distrl.rewards.answers import repeats_prompt
from distrl.rewards.pool import RewardPool, RewardStats
from distrl.weights import WeightSyncError
from launch import disk
from launch.calls import ActorLost, generator_lost, settle, wait
from launch.guards import count_bad_update, count_eval_drop, count_flat_steps, count_gap_breach, split_gap
from launch.cluster import Actors
from launch.learner_group import LearnerGroup
from launch.learning_signal import learning_signal
from launch.metrics import DashboardMetrics, ExtraLogs, MetricsLog, gap_summary, step_line
from launch.preflight import Setup, check_tokenizers
from launch.rounds import Batch, Round, length_percentiles
from launch.stop import StopSignals


class Trainer:
    """Holds the run's state between steps; `train()` is the loop."""

    def __init__(self, cfg: TrainConfig, setup: Setup, actors: Actors, stop: StopSignals | None = None) -> None:
        self.cfg, self.setup, self.actors, self.stop = cfg, setup, actors, stop
        self.learners = LearnerGroup(actors.learners or [actors.learner], cfg.run.fsdp)
        self.tokenizer = setup.tokenizer
        self.sampler = PromptSampler(len(setup.train_rows), cfg.run.seed)
        self.policy_version = 0  # the learner's
        self.gen_version = 0  # the generators' (after the loads already submitted)
        self.weights_ref = None  # the learner's newest published weights
        self.gen_weights_ref = None  # the weights the generators hold (or are loading)
        self.generator_restarts = self.bad_steps = self.gap_breaches = self.eval_drops = self.flat_steps = 0
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

    def _workers(self) -> list[tuple[Any, str]]:
        gens = [(g, f"distrl-generator-{i}") for i, g in enumerate(self.actors.generators)]
        return [(self.actors.learner, "distrl-learner")] + gens

    def _launch(self, batch: Batch, who: str = "all") -> None:
        """Start generation for `batch` on the learner (its first `learner_share` prompts), the
        generators (the rest, round-robin), or "all"; each call's seed depends on the worker."""
        workers = self._workers()
        share = batch.learner_share if len(workers) > 1 else len(batch.prompts)
        rest = batch.prompts[share:]
        gens = len(workers) - 1
        chunks = [batch.prompts[:share]] + [rest[i::gens] for i in range(gens)]
        for w, chunk in enumerate(chunks):
            if chunk and (who == "all" or (who == "learner") == (w == 0)):
                batch.calls[w] = (chunk, dataclasses.replace(batch.sampling, seed=batch.sampling.seed * 1009 + w))
                batch.refs[w] = workers[w][0].generate.remote(*batch.calls[w])

    def _gather(self, batch: Batch) -> tuple[list[list[Rollout]], list[int]]:
        """Wait for every chunk of `batch`; groups in prompt order, and who generated each."""
        workers = self._workers()
        results: dict[int, list[list[Rollout]]] = {}
        while len(results) < len(batch.refs):
            owners = [w for w in sorted(batch.refs) if w not in results]
            settle([batch.refs[w] for w in owners], [workers[w][1] for w in owners], self.cfg.run.timeout_s,
                   "generation")
            for w in owners:
                try:
                    results[w] = ray.get(batch.refs[w])
                except Exception as e:
                    if w == 0 or not generator_lost(e):
                        if isinstance(e, ray.exceptions.RayActorError):
                            raise ActorLost(workers[w][1], e) from e
                        raise
                    # Same prompts, same seed, the weights the batch expects: the step stays whole
                    # (and, on CPU, the rollouts are the ones the dead actor would have returned).
                    self._revive(w, e)
                    print(f"{workers[w][1]} regenerates its {len(batch.calls[w][0])} prompts of "
                          + (f"step {batch.step}" if batch.step else "the evaluation"), file=sys.stderr, flush=True)
                    batch.refs[w] = workers[w][0].generate.remote(*batch.calls[w])
        # Undo the round-robin split so groups line up with the prompts.
        groups: list[list[Rollout]] = list(results.get(0, []))
        made_by = [0] * len(groups)
        gens = len(workers) - 1
        for j in range(len(batch.prompts) - len(groups)):
            groups.append(results[1 + j % gens][j // gens])
            made_by.append(1 + j % gens)
        for group, w in zip(groups, made_by):  # the learner's gap is split by who sampled
            for r in group:
                r.source = w
        return groups, made_by

    def _generate(self, prompts: list[list[int]], sampling: SamplingParams,
                  learner_share: int) -> list[list[Rollout]]:
        batch = Batch(0, [], prompts, sampling, learner_share)
        self._launch(batch)
        return self._gather(batch)[0]

    def _sync(self, weights_ref: Any, version: int, block: bool = True) -> float:
        """Every generator loads `version`; returns the seconds waited. Refuses a generator that
        lags. With `block=False` the loads queue behind the generations already submitted (an
        actor runs its calls in order) and are checked, with the same deadline, before the next
        sync or when the run needs them."""
        start = time.perf_counter()
        self._finish_sync()
        if self.actors.generators:
            # Wrapped in a list, the ref reaches the actor unresolved: a vLLM engine's workers
            # fetch the object themselves (the hf backend resolves it in the actor).
            refs = [g.load_weights.remote([weights_ref]) for g in self.actors.generators]
            self._loading = (refs, version)
        self.gen_version, self.gen_weights_ref = version, weights_ref
        if block:
            self._finish_sync()
        return time.perf_counter() - start

    def _newest_weights(self) -> Any:
        """A ref to the learner's newest weights, packed now when its last update did not."""
        if self.weights_ref is None:
            self.weights_ref = self.learners.publish(self.cfg.run.timeout_s)
        return self.weights_ref

    def _finish_sync(self) -> None:
        if self._loading is None:
            return
        (refs, version), self._loading = self._loading, None
        names = [f"distrl-generator-{i}" for i in range(len(refs))]
        settle(refs, names, self.cfg.run.sync_timeout_s, f"weight sync to version {version}")
        loaded = []
        for i, ref in enumerate(refs):
            try:
                loaded.append(ray.get(ref))
            except ray.exceptions.RayActorError as e:
                loaded.append(self._revive(1 + i, e))
            except WeightSyncError as e:  # Ray raises the task's error as a subclass of its type
                raise RunStopped(f"{names[i]}: {str(e).splitlines()[-1]}; the run stops rather than "
                                 "train on rollouts from unknown weights") from e
        wrong = [n for n, v in zip(names, loaded) if v != version]
        if wrong:
            raise RuntimeError(f"weight sync: {', '.join(wrong)} did not load version {version}")

    def _revive(self, w: int, error: Exception) -> int:
        """Wait for Ray to restart generator `w` (at most --max_actor_restarts times) and load it
        with the weights the generators hold, before it generates again; returns that version."""
        actor, name = self._workers()[w]
        print(f"warning: {ActorLost(name, error)}; waiting for Ray to restart it", file=sys.stderr, flush=True)
        deadline = time.monotonic() + self.cfg.run.timeout_s
        while True:  # "unavailable" while Ray restarts it; "died" once restarts are used up
            try:
                info = ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"restarting {name}: not back within {self.cfg.run.timeout_s:g}s") from None
                time.sleep(0.5)
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"restarting {name}: not back within {self.cfg.run.timeout_s:g}s") from None
            except ray.exceptions.RayActorError as e:
                raise ActorLost(name, f"Ray could not restart it (--max_actor_restarts "
                                      f"{self.cfg.run.max_actor_restarts})") from e
        check_tokenizers(self.tokenizer, {name: info})
        version = wait([actor.load_weights.remote([self.gen_weights_ref])], [name], self.cfg.run.sync_timeout_s,
                       f"reloading policy version {self.gen_version} into restarted {name}")[0]
        if version != self.gen_version:
            raise RuntimeError(f"restarted {name} loaded version {version}, expected {self.gen_version}")
        if info.get("pid") != self._pids.get(name):  # one restart per new process, whoever noticed the death
            self.generator_restarts += 1
            self._pids[name] = info.get("pid")
        print(f"{name} is back (pid {info.get('pid')}) with policy version {version}", file=sys.stderr, flush=True)
        return version

    def _score(self, pool: RewardPool, prompts: list[str], completions: list[str],
               columns: dict[str, list]) -> tuple[list[float], RewardStats]:
        """Score in the reward process; stop on malformed results or too many failures."""
        scores, stats = pool.score(prompts, completions, columns)
        if stats.bad_results:
            raise ValueError(f"{stats.bad_results[0]} (in {len(stats.bad_results)} of "
                             f"{len(completions)} calls): fix the reward function")
        failed, calls = stats.errors + stats.timeouts, len(pool.specs) * len(completions)
        if failed > self.cfg.data.max_reward_error_rate * calls:
            raise RuntimeError(f"reward failed on {failed} of {calls} calls "
                               f"({stats.timeouts} timeouts), above --max_reward_error_rate "
                               f"{self.cfg.data.max_reward_error_rate}; first error:\n"
                               f"{stats.first_traceback or 'timeout'}")
        return scores, stats

    def _rewards(self, rows: list[dict], groups: list[list[Rollout]]) -> tuple[torch.Tensor, RewardStats, torch.Tensor]:
        """`(P, G)` rewards and `(P, G)` prompt copies (1.0 where a completion restates its
        prompt); completions decoded without special tokens."""
        flat_rows = [row for row, g in zip(rows, groups) for _ in g]
        completions = [self.tokenizer.decode(r.completion_ids, skip_special_tokens=True)
                       for g in groups for r in g]
        prompts = [row["prompt"] for row in flat_rows]
        columns = {k: [row[k] for row in flat_rows] for k in flat_rows[0] if k not in ("prompt", FILE_ROW)}
        scores, stats = self._score(self.rewards, prompts, completions, columns)
        copies = [float(repeats_prompt(p, c)) for p, c in zip(prompts, completions)]
        return torch.tensor(scores).view(len(groups), -1), stats, torch.tensor(copies).view(len(groups), -1)

    def evaluate(self) -> dict[str, float]:
        """On the held-out prompts, with the learner's newest weights (a sync out of turn when
        they lag), spread over the generators: greedy accuracy (main reward > 0.5) and mean
        completion length; with --eval_samples k, also pass@k of k sampled completions (fixed seed)."""
        if self.gen_version != self.policy_version:
            self._sync(self._newest_weights(), self.policy_version)
        cfg, rows = self.cfg, self.setup.eval_rows
        prompts = [self._encode(rows, i) for i in range(len(rows))]
        greedy = SamplingParams(n=1, max_new_tokens=cfg.sampling.eval_tokens, greedy=True)
        correct, lengths, cut = self._eval_pass(prompts, greedy)
        out = {"eval_accuracy": sum(1.0 for c in correct if c > 0.5) / len(correct),
               "eval_len_mean": sum(lengths) / len(lengths), "eval_truncated_frac": cut}
        if cfg.run.eval_samples:
            k = cfg.run.eval_samples
            sampled = SamplingParams(n=k, max_new_tokens=cfg.sampling.eval_tokens,
                                     temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                     seed=cfg.run.seed * 100_003 + 99_991)
            correct, _, _ = self._eval_pass(prompts, sampled)
            hits = [any(c > 0.5 for c in correct[i * k:(i + 1) * k]) for i in range(len(prompts))]
            out["eval_pass_at_k"] = sum(hits) / len(hits)
        return out

    def _eval_pass(self, prompts: list[list[int]],
                   sampling: SamplingParams) -> tuple[list[float], list[int], float]:
        """Main-reward scores and completion lengths of every held-out completion, flat, in order,
        and the fraction cut off at the token budget."""
        rows = self.setup.eval_rows
        share = 0 if self.actors.generators else len(prompts)
        groups = self._generate(prompts, sampling, learner_share=share)
        flat_rows = [row for row, g in zip(rows, groups) for _ in g]
        completions = [self.tokenizer.decode(r.completion_ids, skip_special_tokens=True) for g in groups for r in g]
        columns = {k: [row[k] for row in flat_rows] for k in rows[0] if k not in ("prompt", FILE_ROW)}
        scores, stats = self._score(self.eval_reward, [r["prompt"] for r in flat_rows], completions, columns)
        if stats.errors or stats.timeouts:
            print(f"warning: evaluation scored {stats.errors} reward errors and {stats.timeouts} "
                  "timeouts as --reward_default", file=sys.stderr, flush=True)
        flat = [r for g in groups for r in g]
        return scores, [len(r.completion_ids) for r in flat], sum(r.finish_reason == "length" for r in flat) / len(flat)

    # -- checkpoints ------------------------------------------------------------------
    def save(self, step: int) -> float:
        """Checkpoint after `step`: the learner writes its weights, optimizer and RNG state into
        a temporary folder, the driver adds its own state, then the folder is committed. A step
        whose update was skipped is not saved. Returns the seconds it took."""
        start = time.perf_counter()
        if self.bad_steps:
            print(f"warning: step {step} not checkpointed: its update was skipped", file=sys.stderr, flush=True)
            return 0.0
        root = self.setup.checkpoint_root
        try:
            folder = checkpoint.begin(root, step)
            self._write_checkpoint(folder, step)
            saved = checkpoint.commit(root, step, self.cfg.run.keep_checkpoints)
        except Exception as e:
            if not disk.out_of_space(e):
                raise
            return self._save_failed(step, e)
        print(f"checkpoint: {saved.path}", flush=True)
        return time.perf_counter() - start

    def _save_failed(self, step: int, error: Exception) -> float:
        """A full disk: the partial folder goes, and the run stops (or, with --on_save_error
        continue, goes on unsaved) with one line saying what it needed and what is left."""
        root = self.setup.checkpoint_root
        partial = os.path.join(root, f".tmp-{checkpoint.step_name(step)}")
        shutil.rmtree(partial, ignore_errors=True)
        last = checkpoint.latest(root)
        need = f"about {disk.size(self.setup.checkpoint_bytes)} needed, " if self.setup.checkpoint_bytes else ""
        message = (f"checkpoint of step {step} failed: no space left on the device of {root} ({need}"
                   f"{disk.size(disk.free_bytes(root))} free); removed the partial {partial}; last good "
                   f"checkpoint: {last.path if last else 'none'}")
        if self.cfg.run.on_save_error == "continue":
            print(f"warning: {message}; going on without it (--on_save_error continue)", file=sys.stderr, flush=True)
            return 0.0
        raise RunStopped(f"{message}. Free space or point --output_dir elsewhere, then --resume auto "
                         "(or --on_save_error continue to train on without checkpoints)") from error

    def _write_checkpoint(self, folder: str, step: int) -> None:
        self.learners.run("save_checkpoint", folder, timeout_s=self.cfg.run.timeout_s,
                          what=f"checkpoint of step {step}")
        # Generators hold no state of their own: each generate call seeds its sampler from
        # (--seed, step, worker), so the data position is all the sampling state there is.
        state = {"step": step, "policy_version": self.policy_version, "data_position": list(self.data_position),
                 "evals": {str(k): v for k, v in self.evals.items()},
                 "eval_cut": {str(k): v for k, v in self.eval_cut.items()},
                 "eval_tokens": self.cfg.sampling.eval_tokens,
                 "rollouts_generated": self.rollouts_generated, "rollouts_dropped": self.rollouts_dropped,
                 "generator_restarts": self.generator_restarts, "prompts_dropped": sorted(self._too_long),
                 "config": self.cfg.to_dict(),
                 "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(os.path.join(folder, checkpoint.TRAINER_STATE), "w") as f:
            json.dump(state, f, indent=2)

    def _restore(self, found: Checkpoint) -> None:
        """Load `found` into the learner and the driver; logs of later steps are dropped."""
        state = found.trainer_state()
        version = self.learners.run("load_checkpoint", found.path, timeout_s=self.cfg.run.timeout_s,
                                    what=f"loading checkpoint {found.path}")
        if version != state["policy_version"]:
            raise RuntimeError(f"checkpoint {found.path}: learner restored version {version}, the "
                               f"driver's state says {state['policy_version']}")
        self.policy_version = self.gen_version = version
        self._last_version = {}
        self.start_step = int(state["step"])
        self.sampler.restore(*state["data_position"])
        self.data_position = tuple(state["data_position"])
        if state.get("eval_tokens") == self.cfg.sampling.eval_tokens:
            self.evals = {int(k): v for k, v in state["evals"].items()}
            self.eval_cut = {int(k): v for k, v in state["eval_cut"].items()}
        else:  # another evaluator: its accuracies do not compare with this run's
            budget = state.get("eval_tokens", "the training budget's")  # older checkpoints: that one
            print(f"warning: the checkpoint's held-out accuracies were measured with {budget} new tokens, "
                  f"this run evaluates with {self.cfg.sampling.eval_tokens}: the summary compares this "
                  "run's evaluations only", file=sys.stderr, flush=True)
        self.rollouts_generated, self.rollouts_dropped = state["rollouts_generated"], state["rollouts_dropped"]
        self.generator_restarts = state.get("generator_restarts", 0)
        self._too_long = set(state.get("prompts_dropped", []))
        self.log.keep_through(self.start_step)
        self.samples.keep_through(self.start_step)
        print(f"resumed from {found.path}: step {self.start_step}, policy version {version}", flush=True)

    # -- the loop ---------------------------------------------------------------------
    def _new_batch(self, step: int) -> Batch:
        cfg, indices = self.cfg, []
        while len(indices) < cfg.run.batch_size:  # over-long prompts are skipped, counted once
            (i,) = self.sampler.next_batch(1)
            if len(self._prompt_ids(i)) <= cfg.data.max_prompt_tokens:
                indices.append(i)
            elif i not in self._too_long:
                self._too_long.add(i)
                if len(self._too_long) == len(self.setup.train_rows):
                    raise ConfigError(f"every training prompt is longer than --max_prompt_tokens "
                                      f"{cfg.data.max_prompt_tokens}: raise it")
        sampling = SamplingParams(n=cfg.run.num_candidates, max_new_tokens=cfg.sampling.max_new_tokens,
                                  temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                  seed=cfg.run.seed * 100_003 + step)
        return Batch(step, indices, [self._prompt_ids(i) for i in indices], sampling, cfg.run.learner_chunk_size,
                     data_position=(self.sampler.epoch, self.sampler.position))

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

    def _admit(self, step: int, groups: list[list[Rollout]], made_by: list[int]) -> tuple[list[int], list[int]]:
        """Which groups the learner may take (policy version within --async_staleness of its
        own), and the staleness of each rollout taken. A version newer than the learner's, or
        one going backwards on a worker, is a bug and stops the run."""
        k, names = self.cfg.run.async_staleness, [name for _, name in self._workers()]
        keep, staleness = [], []
        for p, (group, w) in enumerate(zip(groups, made_by)):
            versions = [r.policy_version for r in group]
            if max(versions) > self.policy_version or min(versions) < self._last_version.get(w, 0):
                raise RuntimeError(f"step {step}: {names[w]} sampled with policy version {versions[0]} "
                                   f"(learner at {self.policy_version}, that worker last at "
                                   f"{self._last_version.get(w, 0)})")
            self._last_version[w] = max(versions)
            if min(versions) >= self.policy_version - k:
                keep.append(p)
                staleness += [self.policy_version - v for v in versions]
            elif k == 0:
                raise RuntimeError(f"step {step}: {names[w]} sampled with policy version {versions[0]}, "
                                   f"expected {self.policy_version}: a generator missed a weight sync")
            else:
                self.rollouts_dropped += len(group)
        return keep, staleness

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
        rewards, stats, copies = self._rewards(rows, groups)
        return Round(groups, rows, rewards, stats.errors, stats.timeouts, staleness, t_gen - t0,
                     time.perf_counter() - t_gen, t_gen - batch.launched,
                     sum(len(r.completion_ids) for g in groups for r in g), copies)

    def _refill(self, step: int, first: Round) -> tuple[Round, int]:
        """--dynamic_sampling: sample fresh prompts until the batch holds --batch_size groups whose
        rewards differ (or --max_sampling_rounds rounds ran); returns them merged, and the rounds."""
        cfg, rounds = self.cfg, [first]

        def next_round(r: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
            if r > 0:
                extra = self._new_batch(step)
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
                       sum(x.tokens for x in rounds), torch.stack([rounds[r].copies[p] for r, p in kept]))
        return merged, used

    def _sample_during_sync(self, step: int) -> bool:
        """In lockstep, the learner samples its chunk of the next batch while the generators load
        the weights it just made (their own chunks queue behind the load). Not with
        --dynamic_sampling, whose extra rounds draw prompts before the next batch's, nor when the
        run stops after this step."""
        run = self.cfg.run
        return run.pipeline_depth == 0 and not run.dynamic_sampling and step < run.max_steps and not self.budget_spent

    def _out_of_time(self) -> bool:
        budget = self.cfg.run.time_budget_s
        return budget > 0 and time.perf_counter() - self.started >= budget

    def step(self, step: int) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        self._launch_ahead(step)
        batch = self._pending.pop(step)
        self.data_position = batch.data_position
        dropped_before = self.rollouts_dropped
        rnd = self._collect(step, batch)
        sampling_rounds = 1
        if cfg.run.dynamic_sampling:
            rnd, sampling_rounds = self._refill(step, rnd)
        groups, rows, rewards = rnd.groups, rnd.rows, rnd.rewards
        t_reward = time.perf_counter()
        for p in range(min(cfg.run.log_samples, len(groups))):  # what the model says, to read
            self.samples.write({"step": step, "prompt": rows[p]["prompt"], "reward": float(rewards[p, 0]),
                                "policy_version": groups[p][0].policy_version,
                                "completion": self.tokenizer.decode(groups[p][0].completion_ids,
                                                                    skip_special_tokens=True)})
        rollouts, adv, ref_lp, extra = learning_signal(self.cfg, rnd.groups, rnd.rewards, self.actors.reference)
        self.flat_steps = count_flat_steps(self.flat_steps, extra["frac_zero_std"], step, cfg)
        t_ref = time.perf_counter()
        # Weights are packed only for an update a broadcast follows (--weight_sync_every).
        publish = (self.policy_version + 1) % cfg.run.weight_sync_every == 0
        metrics_refs, weights_ref = self.learners.step(rollouts, adv, ref_lp, publish=publish)
        if cfg.run.pipeline_depth and step < cfg.run.max_steps:  # queued behind this update
            self._launch(self._pending[step + 1], "learner")
        train = self.learners.metrics(metrics_refs, cfg.run.timeout_s)
        check = cfg.run.learner_check_every
        if len(self.learners) > 1 and not cfg.run.fsdp and check and step % check == 0:
            self.learners.check_replicas(cfg.run.timeout_s, step)
        t_train = time.perf_counter()
        sampled_at, self.policy_version = self.policy_version, int(train["policy_version"])
        if self.policy_version != sampled_at:  # a new version: the published weights, or none yet
            self.weights_ref = weights_ref if publish else None
        self.bad_steps = count_bad_update(self.bad_steps, bool(train["skipped_update"]), cfg.run.max_bad_steps,
                                          step, self.policy_version, self.setup.checkpoint_root)
        gaps, by_actor = split_gap(train, [name for _, name in self._workers()])
        self.gap_breaches = count_gap_breach(self.gap_breaches, by_actor, self.gap_limit, cfg.run.max_bad_steps,
                                             step, sampled_at, stop=cfg.run.on_logprob_gap == "stop")
        self.budget_spent = self._out_of_time()  # decided once: this step is then the last
        if self._sample_during_sync(step):  # the learner holds the new weights already
            self._pending[step + 1] = self._new_batch(step + 1)
            self._launch(self._pending[step + 1], "learner")
        sync_s = 0.0
        if self.policy_version != self.gen_version and self.policy_version % cfg.run.weight_sync_every == 0:
            sync_s = self._sync(self._newest_weights(), self.policy_version, block=cfg.run.pipeline_depth == 0)
        all_rollouts = [r for g in groups for r in g]
        completion_tokens = sum(len(r.completion_ids) for r in all_rollouts)
        staleness = rnd.staleness
        metrics = {
            "step": step, "policy_version": self.policy_version,
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "accuracy": float((rewards > 0.5).float().mean()),
            "loss": train["loss"], "kl": train.get("kl", 0.0), "clip_frac": train["clip_frac"],
            **gaps, "grad_norm": train["grad_norm"],
            "skipped_update": train["skipped_update"],
            "completion_len_mean": completion_tokens / len(all_rollouts),
            **length_percentiles([len(r.completion_ids) for r in all_rollouts]),
            "truncated_frac": sum(r.finish_reason == "length" for r in all_rollouts) / len(all_rollouts),
            "prompt_copy_frac": float(rnd.copies.mean()),
            "reward_errors": rnd.reward_errors, "reward_timeouts": rnd.reward_timeouts,
            "gen_s": rnd.gen_s, "reward_s": rnd.reward_s, "ref_s": t_ref - t_reward,
            "train_s": t_train - t_ref, "learner_comm_s": train.get("comm_s", 0.0), "sync_s": sync_s,
            "tokens_per_s": rnd.tokens / max(rnd.gen_wait, 1e-9),
            "staleness_mean": sum(staleness) / len(staleness), "staleness_max": max(staleness),
            "rollouts": len(all_rollouts), "rollouts_dropped": self.rollouts_dropped - dropped_before,
            "generator_version": self.gen_version, "generator_restarts": self.generator_restarts,
            "prompts_dropped": len(self._too_long), "sampling_rounds": sampling_rounds, **extra,
        }
        for key in ("importance_weight", "entropy", "grad_offload_mb"):
            if key in train:
                metrics[key] = train[key]
        metrics["step_s"] = time.perf_counter() - t0
        metrics["samples_per_s"] = len(all_rollouts) / metrics["step_s"]
        return metrics

    def train(self) -> dict:
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
        evals = self.evals
        if self.setup.resume is None:
            first = self.evaluate()
            evals[0], self.eval_cut[0] = first["eval_accuracy"], first["eval_truncated_frac"]
            self.log.write({"step": 0, "policy_version": 0, **first})
            self.dashboard.record({"step": 0, "policy_version": 0, **first})
            self.extra.record({"step": 0, **first})
            print(f"step 0/{cfg.run.max_steps} | eval_accuracy {evals[0]:.3f}", flush=True)
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
                evals[step], self.eval_cut[step] = metrics["eval_accuracy"], metrics["eval_truncated_frac"]
                if 0 in evals:
                    self.eval_drops = count_eval_drop(self.eval_drops, evals[step], evals[0], step, cfg)
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

