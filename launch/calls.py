"""Waiting on actors: every wait has a deadline, and a dead actor becomes an error naming it."""

from __future__ import annotations

from typing import Any, Sequence

import ray

from distrl.generation import WeightsMissing


class ActorLost(RuntimeError):
    """An actor died (or Ray could not restart it): the run cannot go on with these actors."""

    def __init__(self, name: str, cause: Any) -> None:
        self.name = name
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"{name} died ({first if isinstance(cause, str) else f'{type(cause).__name__}: {first}'})")


def wait(refs: Sequence[Any], names: Sequence[str], timeout_s: float, what: str) -> list[Any]:
    """ray.get with a deadline; a miss names the actors that did not answer."""
    settle(refs, names, timeout_s, what)
    out = []
    for ref, name in zip(refs, names):
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayActorError as e:
            raise ActorLost(name, e) from e
    return out


def settle(refs: Sequence[Any], names: Sequence[str], timeout_s: float, what: str) -> None:
    """Wait until every call has ended (answered or failed); a miss names the late actors."""
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = sorted({names[i] for i, r in enumerate(refs) if r in pending})
        raise TimeoutError(f"{what}: no answer within {timeout_s:g}s from {', '.join(late)}")


def generator_lost(error: Exception) -> bool:
    """A generator call failed because the actor died, or because Ray restarted it and it holds
    no weights yet: both are healed by reloading the weights and calling again."""
    return isinstance(error, ray.exceptions.RayActorError) or isinstance(
        getattr(error, "cause", None), WeightsMissing)
