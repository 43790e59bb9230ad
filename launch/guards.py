"""Checks on a run when something keeps going wrong step after step: updates skipped for
non-finite numbers and generators whose log-probs drift from the learner's (each warns on every
bad step and raises RunStopped at its limit), held-out accuracy that falls below where it
started, and steps that give the learner no signal at all (warnings). The driver calls them and
keeps the counts."""

from __future__ import annotations

import sys

from distrl import checkpoint
from distrl.config import RunStopped, TrainConfig


def count_bad_update(in_a_row: int, skipped: bool, limit: int, step: int, version: int,
                     checkpoint_root: str) -> int:
    """Updates skipped in a row (non-finite loss or gradient norm) after this one; RunStopped when
    they reach `limit` (--max_bad_steps), naming the last checkpoint."""
    if not skipped:
        return 0
    in_a_row += 1
    print(f"warning: step {step}: update skipped (non-finite loss or gradient norm); the weights stay "
          f"at policy version {version}", file=sys.stderr, flush=True)
    if in_a_row >= limit:
        last = checkpoint.latest(checkpoint_root)
        raise RunStopped(f"{in_a_row} updates in a row were skipped for a non-finite loss or gradient "
                         f"norm (--max_bad_steps {limit}); the weights stay at policy version {version}; "
                         + (f"last checkpoint: {last.path}" if last else "no checkpoint was written"))
    return in_a_row


def count_gap_breach(in_a_row: int, gap: float, limit: float, max_in_a_row: int, step: int) -> int:
    """Synchronous steps in a row whose logprob_gap exceeded `limit`, after this one; warns on each,
    RunStopped at `max_in_a_row`: generators that sample other numbers than the learner computes
    (a half-loaded sync, another model) make every update off by an unknown amount."""
    if gap <= limit:
        return 0
    in_a_row += 1
    print(f"warning: step {step}: logprob_gap {gap:.2e} is above {limit:g} (--max_logprob_gap): the "
          "generators' log-probs differ from the learner's by more than this dtype's rounding",
          file=sys.stderr, flush=True)
    if in_a_row >= max_in_a_row:
        raise RunStopped(f"logprob_gap above {limit:g} for {in_a_row} steps in a row: the generators do not "
                         "sample from the weights the learner trains (a failed sync?); if the gap is expected "
                         "(e.g. another engine's numerics), raise --max_logprob_gap")
    return in_a_row


def count_eval_drop(in_a_row: int, accuracy: float, start: float, step: int, cfg: TrainConfig) -> int:
    """Evaluations in a row whose held-out accuracy is below step 0's, after this one; at two it
    warns once, naming the usual causes (a run that gets worse must not pass unnoticed)."""
    if accuracy >= start:
        return 0
    in_a_row += 1
    if in_a_row == 2:
        print(f"warning: step {step}: held-out accuracy {accuracy:.3f} is below step 0's {start:.3f} at two "
              f"evaluations in a row: the model is getting worse. Usual causes: a reward that pays for "
              f"something other than the answer (partial credit a model can game, e.g. by copying the "
              f"prompt, prompt_copy_frac in metrics.jsonl, or by guessing a number of the right size "
              f"instead of working it out: read samples.jsonl), or a token budget that cuts answers off (truncated_frac in "
              f"training, eval_truncated_frac in evaluation). This run: --reward {cfg.data.reward}, "
              f"--max_new_tokens {cfg.sampling.max_new_tokens}, --eval_max_new_tokens {cfg.sampling.eval_tokens}, "
              f"--temperature {cfg.sampling.temperature:g}, --lr {cfg.algo.lr:g}.", file=sys.stderr, flush=True)
    return in_a_row


FLAT_STEPS = 5


def count_flat_steps(in_a_row: int, frac_zero_std: float, step: int, cfg: TrainConfig) -> int:
    """Steps in a row where every group's rewards were equal (so every advantage was 0 and the
    update learned nothing), after this one; at FLAT_STEPS it warns once, naming the remedies: an
    exact reward on a task the model never gets right trains nothing, silently otherwise."""
    if frac_zero_std < 1.0:
        return 0
    in_a_row += 1
    if in_a_row == FLAT_STEPS:
        print(f"warning: step {step}: {in_a_row} steps in a row without any reward difference within a group "
              f"(frac_zero_std 1.0): the learner got no signal. With --reward {cfg.data.reward} the model may "
              f"never be right yet: try --reward numeric_close (partial credit for near answers), more "
              f"--num_candidates (now {cfg.run.num_candidates}), --dynamic_sampling, or a larger "
              f"--max_new_tokens (now {cfg.sampling.max_new_tokens}; see truncated_frac).",
              file=sys.stderr, flush=True)
    return in_a_row
