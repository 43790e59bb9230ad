"""The learner ranks seen from the driver as one learner.

Every call that may involve a collective (step, publish, checkpoints, saving) goes to every rank
in the same order, so their collectives line up; generation goes to rank 0 only. A rank that
dies fails the whole call at once (the others would only wait in a collective until the group's
deadline), named, so the run stops or resumes from a checkpoint.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from distrl.batch import split_by_tokens
from distrl.generation import Rollout
from launch.calls import ActorLost
from launch.cluster import learner_names

# Metrics every rank reports alike (not shares of the batch to be summed).
_SAME_ON_EVERY_RANK = ("grad_norm", "skipped_update", "policy_version", "train_tokens")


class LearnerGroup:
    def __init__(self, handles: list[Any], fsdp: bool = False) -> None:
        self.handles, self.names, self.fsdp = handles, learner_names(len(handles)), fsdp

    def __len__(self) -> int:
        return len(self.handles)

    def call(self, method: str, *args: Any) -> list[Any]:
        """Submit `method(*args)` to every rank; its refs, rank 0 first."""
        return [getattr(h, method).remote(*args) for h in self.handles]

    def wait(self, refs: list[Any], timeout_s: float, what: str, first_rank: int = 0) -> list[Any]:
        """Every rank's answer (`refs` from rank `first_rank` on), or, as soon as one rank fails,
        that rank's error: a dead rank is ActorLost even while the others still wait in a
        collective for it."""
        names = self.names[first_rank:]
        pending, done = list(refs), {}
        deadline = time.monotonic() + timeout_s
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = sorted(names[refs.index(r)] for r in pending)
                raise TimeoutError(f"{what}: no answer within {timeout_s:g}s from {', '.join(late)}")
            for ref in ready:
                rank = refs.index(ref)
                try:
                    done[rank] = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    raise ActorLost(names[rank], e) from e
                except ray.exceptions.RayTaskError as e:
                    # A collective failing on a live rank usually means a peer died: name the dead one.
                    dead = self._dead(timeout_s=10.0)
                    if dead is not None:
                        raise ActorLost(dead[0], dead[1]) from e
                    raise
        return [done[r] for r in range(len(refs))]

    def _dead(self, timeout_s: float) -> tuple[str, Exception] | None:
        """The first rank found dead within `timeout_s`: all are asked at once; live ones stuck
        in a collective simply do not answer."""
        probes = [h.ready.remote() for h in self.handles]
        pending, deadline = list(probes), time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    return self.names[probes.index(ref)], e
        return None

    def publish(self, timeout_s: float) -> Any:
        """Every rank publishes (with FSDP all take part in gathering); rank 0's weights ref. The
        other ranks' answers are waited for, so their failure is theirs, not a failed sync."""
        refs = self.call("publish")
        if len(refs) > 1:
            self.wait(refs[1:], timeout_s, "publishing weights", first_rank=1)
        return refs[0]

    def run(self, method: str, *args: Any, timeout_s: float, what: str) -> Any:
        """`method` on every rank, waited for; rank 0's answer."""
        return self.wait(self.call(method, *args), timeout_s, what)[0]

    def step(self, rollouts: list[Rollout], advantages: list[float],
             ref_logprobs: list | None, publish: bool = True, lr_scale: float = 1.0) -> tuple[list[Any], Any]:
        """Start one update at --lr times `lr_scale`: the batch split over the ranks by tokens;
        (metrics refs, rank 0's weights ref, whose value is None without `publish`)."""
        if len(self.handles) == 1:
            metrics, weights = self.handles[0].step.options(num_returns=2).remote(rollouts, advantages, ref_logprobs,
                                                                                 publish=publish, lr_scale=lr_scale)
            return [metrics], weights
        totals = (float(sum(len(r.completion_ids) for r in rollouts)), len(rollouts))
        parts = split_by_tokens([len(r.prompt_ids) + len(r.completion_ids) for r in rollouts], len(self.handles))
        refs = []
        for handle, part in zip(self.handles, parts):
            refs.append(handle.step.options(num_returns=2).remote(
                [rollouts[i] for i in part], [advantages[i] for i in part],
                [ref_logprobs[i] for i in part] if ref_logprobs is not None else None,
                totals, rollouts[0] if self.fsdp else None, publish=publish, lr_scale=lr_scale))
        return [m for m, _ in refs], refs[0][1]

    def metrics(self, refs: list[Any], timeout_s: float) -> dict[str, float]:
        """The batch's metrics: each rank's share summed; step and communication times are the
        slowest rank's."""
        parts = self.wait(refs, timeout_s, "learner step")
        out = dict(parts[0])
        for part in parts[1:]:
            for key, value in part.items():
                if key in ("train_s", "comm_s"):
                    out[key] = max(out[key], value)
                elif key not in _SAME_ON_EVERY_RANK:
                    out[key] = out.get(key, 0.0) + value
        return out

    def check_replicas(self, timeout_s: float, step: int) -> None:
        """Data parallel: every rank must hold the same weights; a mismatch stops the run."""
        sums = self.wait(self.call("checksum"), timeout_s, "weight checksum")
        if any(s != sums[0] for s in sums[1:]):
            listed = ", ".join(f"{n} {s[0]:.9g}" for n, s in zip(self.names, sums))
            raise RuntimeError(f"step {step}: the learner ranks' weights differ ({listed}): the "
                               "group is out of step; resume from the last checkpoint")
