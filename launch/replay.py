"""Prompt replay (`--replay_prompts K`): prompts whose last group had a learning signal are sampled
again in a later step.

On a task the model seldom gets right, most groups score all-equal rewards, so their advantages
are 0 and a step learns from the few groups where some completions were right and some wrong. A
prompt that gave such a group sits where the policy is learning: sampled again, it gives signal
far more often than a fresh prompt. Each step takes up to K prompts from this queue (newest
first: the policy has moved least since they were scored) and the rest from the data, in the
data's order (a step then draws only `batch_size` minus its replays from it). A prompt is
replayed at most `MAX_REPLAYS` times a run, so no step trains on a handful of prompts over and over.

This module only keeps the queue; the driver decides which groups had signal and builds the
batch. Synchronous mode only: batches built ahead of an update would draw from a queue that
update has not filled yet, and a checkpoint could not say which replays they had taken.
"""

from __future__ import annotations

from typing import Callable

MAX_REPLAYS = 2  # a prompt is seen at most 1 + this many times a run (more across epochs)
CAPACITY = 64  # queued prompts kept at most; older ones fall out (the policy has moved on)


class ReplayQueue:
    """Training-row indices of prompts whose groups had signal, and how often each was replayed."""

    def __init__(self, per_step: int) -> None:
        self.per_step = per_step
        self.queue: list[int] = []  # oldest first
        self.replays: dict[int, int] = {}  # index -> times replayed

    def take(self, fits: Callable[[int], bool] | None = None) -> list[int]:
        """Up to `per_step` indices for the next batch, newest first; `fits(index)` False skips one."""
        taken: list[int] = []
        while self.queue and len(taken) < self.per_step:
            index = self.queue.pop()
            if index not in taken and (fits is None or fits(index)):
                taken.append(index)
                self.replays[index] = self.replays.get(index, 0) + 1
        return taken

    def batch(self, size: int, draw: Callable[[int], list[int]],
              fits: Callable[[int], bool] | None = None) -> tuple[list[int], int]:
        """(indices, k): a batch of `size` prompts whose last k are replays, the rest drawn fresh
        with `draw(n)`. A replay the data also drew (a new epoch began) is dropped and counted
        back, and one more is drawn fresh: a batch holds a queued prompt once."""
        replays = self.take(fits)
        fresh = draw(size - len(replays))
        while twice := set(fresh) & set(replays):
            for index in twice:
                replays.remove(index)
                self.replays[index] -= 1
            fresh += draw(size - len(replays) - len(fresh))
        return fresh + replays, len(replays)

    def offer(self, indices: list[int], signal: list[bool]) -> None:
        """A step's prompts and whether each one's group had signal: those that did are queued,
        unless they were replayed MAX_REPLAYS times already or are queued now."""
        if not self.per_step:
            return
        for index, has_signal in zip(indices, signal):
            if has_signal and self.replays.get(index, 0) < MAX_REPLAYS and index not in self.queue:
                self.queue.append(index)
        del self.queue[:-CAPACITY]

    def state(self) -> dict:
        """What a checkpoint keeps (JSON): the queue and the replay counts."""
        return {"queue": list(self.queue), "replays": {str(k): v for k, v in self.replays.items()}}

    def restore(self, state: dict | None) -> None:
        """Back to a `state()`; None (a checkpoint from before replay) is an empty queue."""
        state = state or {}
        self.queue = [int(i) for i in state.get("queue", [])]
        self.replays = {int(k): int(v) for k, v in state.get("replays", {}).items()}


def replay_metrics(signal: list[bool], replayed: list[bool]) -> dict[str, float]:
    """How many of a round's prompts were replays, and the share of those whose group had signal."""
    again = [s for s, r in zip(signal, replayed) if r]
    return {"replayed_prompts": float(len(again)), "replay_signal_frac": sum(again) / len(again) if again else 0.0}
