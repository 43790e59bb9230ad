"""Prompt replay (`--replay_prompts K`): prompts whose last group had a learning signal are sampled
again in a later step.

On a task the model seldom gets right, most groups score all-equal rewards, so their advantages
are 0 and a step learns from the few groups where some completions were right and some wrong. A
prompt that gave such a group sits where the policy is learning: sampled again, it gives signal
far more often than a fresh prompt. Each step takes up to K prompts from this queue (newest
first: the policy has moved least since they were scored) and the rest from the data as usual,
so the data order and `data_position` are those of a run without replay. A prompt is replayed at
most `MAX_REPLAYS` times, so a step never trains on a handful of prompts over and over.

This module only keeps the queue; the driver decides which groups had signal and builds the batch.
"""

from __future__ import annotations

from typing import Any

MAX_REPLAYS = 2  # a prompt is seen at most 1 + this many times per pass over the data
CAPACITY = 64  # queued prompts kept at most; older ones fall out (the policy has moved on)


class ReplayQueue:
    def __init__(self, per_step: int) -> None:
        self.per_step = per_step
        self.queue: list[int] = []  # training-row indices, oldest first
        self.replays: dict[int, int] = {}  # index -> times replayed

    def take(self, fits: Any = None) -> list[int]:
        """Up to `per_step` indices for the next batch, newest first; `fits(index)` False skips one."""
        taken: list[int] = []
        while self.queue and len(taken) < self.per_step:
            index = self.queue.pop()
            if index not in taken and (fits is None or fits(index)):
                taken.append(index)
                self.replays[index] = self.replays.get(index, 0) + 1
        return taken

    def offer(self, indices: list[int], signal: list[bool]) -> None:
        """The step's prompts and whether each one's group had signal: those that did are queued,
        unless they were replayed MAX_REPLAYS times already or are queued now."""
        if not self.per_step:
            return
        for index, has_signal in zip(indices, signal):
            if has_signal and self.replays.get(index, 0) < MAX_REPLAYS and index not in self.queue:
                self.queue.append(index)
        del self.queue[:-CAPACITY]

    def state(self) -> dict:
        return {"queue": list(self.queue), "replays": {str(k): v for k, v in self.replays.items()}}

    def restore(self, state: dict | None) -> None:
        state = state or {}
        self.queue = [int(i) for i in state.get("queue", [])]
        self.replays = {int(k): int(v) for k, v in state.get("replays", {}).items()}
