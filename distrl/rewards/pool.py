"""Run reward functions in a separate process, one completion per call, each with a deadline.

A reward that raises or runs past `timeout_s` (a runaway sympy simplification, a user bug) scores
`default` for that completion and is counted; the worker process of a call that timed out is
killed and replaced, so the run never freezes on a reward. What a reward returns is still
checked strictly (one finite number): a wrong result is a bug to fix, not a score to guess.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import traceback
from dataclasses import dataclass, field
from typing import Any, Sequence

_FNS: dict[str, Any] = {}


def _call(spec: str, prompt: str, completion: str, row: dict[str, Any]) -> tuple[float | None, str | None]:
    """In the worker: (value, None), or (None, traceback) when the reward raised or returned
    something that is not one finite number."""
    from distrl.rewards import load_reward, score

    try:
        fn = _FNS.get(spec) or _FNS.setdefault(spec, load_reward(spec))
        return score(fn, [prompt], [completion], {k: [v] for k, v in row.items()})[0], None
    except Exception:
        return None, traceback.format_exc()


def _leave_stopping_to_the_driver() -> None:
    """In a new worker: Ctrl-C in a terminal reaches the whole process group, and a job stop
    signals every child; the driver decides how a run stops (launch/stop.py) and ends this
    process itself, so a signal must not kill a reward call halfway through the last step."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _warm(specs: list[str]) -> None:
    """In a new worker: import every reward before the first timed call, so a worker's start-up
    (torch via spawn's re-import, sympy for math_verify) never counts against a call's deadline."""
    from distrl.rewards import load_reward

    for spec in specs:
        _FNS.setdefault(spec, load_reward(spec))
        if spec == "math_verify":
            import math_verify  # noqa: F401  (imports sympy, seconds on a busy machine)


@dataclass
class RewardStats:
    errors: int = 0
    timeouts: int = 0
    first_traceback: str | None = None
    bad_results: list[str] = field(default_factory=list)


class RewardPool:
    def __init__(self, specs: Sequence[tuple[str, float]], timeout_s: float = 10.0, default: float = 0.0) -> None:
        self.specs, self.timeout_s, self.default = list(specs), timeout_s, default
        # spawn: the driver holds Ray's threads, which a fork would copy half-alive.
        self._context = multiprocessing.get_context("spawn")
        self._executor = self._start()

    def _start(self) -> cf.ProcessPoolExecutor:
        executor = cf.ProcessPoolExecutor(max_workers=1, mp_context=self._context,
                                          initializer=_leave_stopping_to_the_driver)
        executor.submit(_warm, [spec for spec, _ in self.specs]).result(timeout=max(120.0, self.timeout_s))
        return executor

    def _restart(self) -> None:
        for process in self._workers():
            process.kill()  # the hung call never returns on its own
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._start()

    def score(self, prompts: Sequence[str], completions: Sequence[str],
              columns: dict[str, Sequence[Any]]) -> tuple[list[float], RewardStats]:
        """Weighted sum of every reward per completion, and what went wrong along the way."""
        stats = RewardStats()
        totals = [0.0] * len(completions)
        for spec, weight in self.specs:
            for i, (p, c) in enumerate(zip(prompts, completions)):
                # One call in flight at a time: a call that hangs takes only itself down.
                value = self._result(self._submit(spec, p, c, {k: v[i] for k, v in columns.items()}), stats)
                totals[i] += weight * (self.default if value is None else value)
        return totals, stats

    def _workers(self) -> list:
        return list((getattr(self._executor, "_processes", None) or {}).values())

    def _submit(self, spec: str, prompt: str, completion: str, row: dict[str, Any]) -> cf.Future:
        # An idle worker that died (e.g. the OOM killer) is replaced before the call, not blamed
        # for it: the executor notices a death only some time later, on its own thread.
        if not all(process.is_alive() for process in self._workers()):
            self._restart()
        try:
            return self._executor.submit(_call, spec, prompt, completion, row)
        except cf.process.BrokenProcessPool:
            self._restart()
            return self._executor.submit(_call, spec, prompt, completion, row)

    def _result(self, future: cf.Future, stats: RewardStats) -> float | None:
        try:
            value, tb = future.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            stats.timeouts += 1
            self._restart()
            return None
        except cf.process.BrokenProcessPool:
            stats.errors += 1
            stats.first_traceback = stats.first_traceback or "the reward process died during the call"
            self._restart()
            return None
        if tb is not None:
            last = tb.strip().splitlines()[-1]
            if last.startswith("ValueError: reward ") and "returned" in last:
                stats.bad_results.append(last.removeprefix("ValueError: "))
            else:
                stats.errors += 1
                stats.first_traceback = stats.first_traceback or tb
        return value

    def close(self) -> None:
        for process in self._workers():
            process.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
