"""Scoring, one role of the Trainer (launch/driver.py): rewards of a step's rollouts in the reward
process (with the checks that stop a run on a broken reward), and the held-out evaluation with
the learner's newest weights. A mixin: it uses the Trainer's cfg, setup, tokenizer, reward pools
and the fleet's generate and sync."""

from __future__ import annotations

import sys

import torch

from distrl.data.datasets import FILE_ROW
from distrl.generation import Rollout, SamplingParams
from distrl.rewards.answers import repeats_itself, repeats_prompt
from distrl.rewards.pool import RewardPool, RewardStats


def _columns(flat_rows: list[dict]) -> dict[str, list]:
    """What a reward function gets besides prompt and completion: every other column of the
    rows, one value per completion (not the file row number distrl keeps for its errors)."""
    return {k: [row[k] for row in flat_rows] for k in flat_rows[0] if k not in ("prompt", FILE_ROW)}


class Scoring:
    """Training rewards and the held-out evaluation."""

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

    def _rewards(self, rows: list[dict], groups: list[list[Rollout]]
                 ) -> tuple[torch.Tensor, RewardStats, torch.Tensor, torch.Tensor]:
        """`(P, G)` rewards, prompt copies (1.0 where a completion restates its prompt) and loops
        (1.0 where it repeats one of its own lines); completions decoded without special tokens."""
        flat_rows = [row for row, g in zip(rows, groups) for _ in g]
        completions = [self.tokenizer.decode(r.completion_ids, skip_special_tokens=True)
                       for g in groups for r in g]
        prompts = [row["prompt"] for row in flat_rows]
        columns = _columns(flat_rows)
        scores, stats = self._score(self.rewards, prompts, completions, columns)
        copies = [float(repeats_prompt(p, c)) for p, c in zip(prompts, completions)]
        loops = [float(repeats_itself(c)) for c in completions]
        return (torch.tensor(scores).view(len(groups), -1), stats, torch.tensor(copies).view(len(groups), -1),
                torch.tensor(loops).view(len(groups), -1))

    def evaluate(self) -> dict[str, float]:
        """On the held-out prompts, with the learner's newest weights (a sync out of turn when
        they lag), spread over the generators: greedy accuracy (main reward > 0.5) and mean
        completion length; with --eval_samples k, also pass@k of k sampled completions (fixed seed)."""
        if self.gen_version != self.policy_version:
            self._sync(self._newest_weights(), self.policy_version)
        cfg, rows = self.cfg, self.setup.eval_rows
        prompts = [self._encode(rows, i) for i in range(len(rows))]
        greedy = SamplingParams(n=1, max_new_tokens=cfg.sampling.eval_tokens, greedy=True)
        correct, lengths, cut, loops = self._eval_pass(prompts, greedy)
        out = {"eval_accuracy": sum(1.0 for c in correct if c > 0.5) / len(correct),
               "eval_len_mean": sum(lengths) / len(lengths), "eval_truncated_frac": cut,
               "eval_repeat_frac": loops}
        if cfg.run.eval_samples:
            k = cfg.run.eval_samples
            sampled = SamplingParams(n=k, max_new_tokens=cfg.sampling.eval_tokens,
                                     temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                     seed=cfg.run.seed * 100_003 + 99_991)
            correct, _, _, _ = self._eval_pass(prompts, sampled)
            hits = [any(c > 0.5 for c in correct[i * k:(i + 1) * k]) for i in range(len(prompts))]
            out["eval_pass_at_k"] = sum(hits) / len(hits)
        return out

    def _eval_pass(self, prompts: list[list[int]],
                   sampling: SamplingParams) -> tuple[list[float], list[int], float, float]:
        """Main-reward scores and completion lengths of every held-out completion, flat, in order,
        the fraction cut off at the token budget, and the fraction that repeat one of their lines."""
        rows = self.setup.eval_rows
        share = 0 if self.actors.generators else len(prompts)
        groups = self._generate(prompts, sampling, learner_share=share)
        flat_rows = [row for row, g in zip(rows, groups) for _ in g]
        completions = [self.tokenizer.decode(r.completion_ids, skip_special_tokens=True) for g in groups for r in g]
        columns = _columns(flat_rows)
        scores, stats = self._score(self.eval_reward, [r["prompt"] for r in flat_rows], completions, columns)
        if stats.errors or stats.timeouts:
            print(f"warning: evaluation scored {stats.errors} reward errors and {stats.timeouts} "
                  "timeouts as --reward_default", file=sys.stderr, flush=True)
        flat = [r for g in groups for r in g]
        cut = sum(r.finish_reason == "length" for r in flat) / len(flat)
        return scores, [len(r.completion_ids) for r in flat], cut, sum(map(repeats_itself, completions)) / len(completions)
