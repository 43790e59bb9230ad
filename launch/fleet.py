"""The generator fleet, one role of the Trainer (launch/driver.py): where a step's prompts go
(the learner's own chunk and the generators' round-robin shares), gathering what comes back in
prompt order, admitting rollouts by policy version, reviving a generator Ray restarted, and
weight syncs. A mixin: it uses the Trainer's cfg, actors, tokenizer, policy and generator
versions and weights refs."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import ray

from distrl.config import RunStopped
from distrl.generation import Rollout, SamplingParams
from distrl.weights import WeightSyncError
from launch.calls import ActorLost, generator_lost, settle, wait
from launch.preflight import check_tokenizers
from launch.rounds import Batch


class GeneratorFleet:
    """Launch, gather, admit, revive, sync."""

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
