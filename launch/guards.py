"""Checks on a run when something keeps going wrong step after step: updates skipped for
non-finite numbers and generators whose log-probs drift from the learner's (each warns on every
bad step and raises RunStopped at its limit), held-out accuracy that falls below where it
started, steps that give the learner no signal at all, steps whose completions are all cut
off, and completions or held-out answers that loop (warnings). The driver calls them and keeps the counts."""

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


def split_gap(train: dict[str, float], names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """The learner's log-prob gap sums by who sampled each rollout (taken out of `train`): the
    step's metrics and each actor's own gap at the version the learner trained from.
    `logprob_gap` is the generators' rollouts at that version, the cross-process proof;
    `logprob_gap_learner` the learner's own chunk (the learner against itself);
    `logprob_gap_stale` rollouts of older versions (async), whose gap is lag as well as sync
    error. nan where the step had no such rollout."""
    sums, tokens = {}, {}
    for key in [k for k in train if k.startswith(("gap_sum/", "gap_tokens/"))]:
        kind, source = key.split("/")
        (sums if kind == "gap_sum" else tokens)[source] = train.pop(key)

    def mean(sources: list[str]) -> float:
        n = sum(tokens.get(s, 0.0) for s in sources)
        return sum(sums.get(s, 0.0) for s in sources) / n if n else float("nan")

    fresh = [s for s in tokens if s != "stale" and tokens[s]]
    gaps = {"logprob_gap": mean([s for s in fresh if s != "0"]), "logprob_gap_learner": mean(["0"]),
            "logprob_gap_stale": mean(["stale"])}
    return gaps, {names[int(s)]: mean([s]) for s in sorted(fresh, key=int)}


def count_gap_breach(in_a_row: int, by_actor: dict[str, float], limit: float, max_in_a_row: int, step: int,
                     version: int, stop: bool = True) -> int:
    """Steps in a row where some actor's logprob_gap (its rollouts at the version the learner
    trained from) exceeded `limit`, after this one; warns on each naming the actor and the
    version, RunStopped at `max_in_a_row`: generators that sample other numbers than the learner
    computes (a half-loaded sync, another model) make every update off by an unknown amount.
    `stop` False (--on_logprob_gap warn): warnings only."""
    over = {name: gap for name, gap in by_actor.items() if gap > limit}
    if not over:
        return 0
    in_a_row += 1
    worst = max(over, key=over.get)
    print(f"warning: step {step}: logprob_gap {over[worst]:.2e} of {worst} at policy version {version} is above "
          f"{limit:g} (--max_logprob_gap): its log-probs differ from the learner's by more than this dtype's "
          "rounding", file=sys.stderr, flush=True)
    if in_a_row >= max_in_a_row and stop:
        raise RunStopped(f"logprob_gap above {limit:g} for {in_a_row} steps in a row (last: {worst}, "
                         f"{over[worst]:.2e} at policy version {version}): it does not sample from the weights the "
                         "learner trains (a failed sync?); if the gap is expected (e.g. another engine's "
                         "numerics), raise --max_logprob_gap or pass --on_logprob_gap warn")
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
              f"never be right yet: try --reward numeric_digits (partial credit for the trailing digits computed "
              f"right, none for copying the prompt), more "
              f"--num_candidates (now {cfg.run.num_candidates}), --dynamic_sampling, or a larger "
              f"--max_new_tokens (now {cfg.sampling.max_new_tokens}; see truncated_frac).",
              file=sys.stderr, flush=True)
    return in_a_row


CUT_STEPS = 5


def _drift_remedies(cfg: TrainConfig, since: str) -> str:
    """What to do about a policy that has drifted into a bad habit (cut-off or looping answers)."""
    kept = f"the newest {cfg.run.keep_checkpoints} are" if cfg.run.keep_checkpoints else "all are"
    return (f"lower --lr (now {cfg.algo.lr:g}) or raise the KL anchor --beta (now {cfg.algo.beta:g}), and "
            f"--resume from a checkpoint saved before {since} ({kept} kept; --keep_checkpoints 0 keeps all).")


def count_cut_steps(in_a_row: int, truncated_frac: float, prompt_copy_frac: float, step: int,
                    cfg: TrainConfig) -> int:
    """Steps in a row where every training completion was cut off at --max_new_tokens, after this
    one; at CUT_STEPS it warns once: the reward then only reads numbers out of unfinished text, so
    a budget too short for the task, or a model that has learned to run on (often repeating the
    prompt), trains on noise, silently otherwise."""
    if truncated_frac < 1.0:
        return 0
    in_a_row += 1
    if in_a_row == CUT_STEPS:
        print(f"warning: step {step}: {in_a_row} steps in a row (since step {step - in_a_row + 1}) where every "
              f"training completion was cut off at --max_new_tokens {cfg.sampling.max_new_tokens} (truncated_frac "
              f"1.0; prompt_copy_frac {prompt_copy_frac:.2f}): no answer is finished, so the reward reads numbers "
              f"out of unfinished text. If the untrained model did not finish either (eval_truncated_frac and "
              f"eval_len_mean at step 0 in metrics.jsonl; for a built-in task, python bench/learning.py --lengths), "
              f"the budget is too short for this task: raise --max_new_tokens. If it did, it has learned to run on "
              "(read samples.jsonl): " + _drift_remedies(cfg, "that step"), file=sys.stderr, flush=True)
    return in_a_row


LOOP_STEPS, LOOP_FRAC = 5, 0.1


def _loop_remedies(cfg: TrainConfig) -> str:
    return (f"Answers that loop run to the token budget (--max_new_tokens {cfg.sampling.max_new_tokens}) and are "
            f"scored on whatever number the loop ends with; read samples.jsonl. Nothing in the reward teaches the "
            "model to stop after its answer: " + _drift_remedies(cfg, "it began"))


def count_loop_steps(in_a_row: int, repeat_frac: float, step: int, cfg: TrainConfig) -> int:
    """Steps in a row where at least LOOP_FRAC of the training completions repeat one of their own
    lines three times or more (repeat_frac), after this one; at LOOP_STEPS it warns once: a policy
    degenerating into loops (e.g. "####" line after line) on a task it almost never gets right
    loses accuracy that the held-out check cannot see when step 0 scored 0, silently otherwise."""
    if repeat_frac < LOOP_FRAC:
        return 0
    in_a_row += 1
    if in_a_row == LOOP_STEPS:
        print(f"warning: step {step}: {in_a_row} steps in a row (since step {step - in_a_row + 1}) where at least "
              f"{LOOP_FRAC:.0%} of the training completions (now {repeat_frac:.0%}) repeat one of their own lines 3 "
              f"or more times (repeat_frac): the policy is degenerating into loops. "
              + _loop_remedies(cfg), file=sys.stderr, flush=True)
    return in_a_row


def check_eval_loops(warned: bool, repeat_frac: float, start: float, step: int, cfg: TrainConfig) -> bool:
    """Whether the held-out loop warning has been given, after this evaluation: it warns once when
    at least LOOP_FRAC more of the greedy held-out answers repeat one of their lines 3 or more times
    than at step 0 (eval_repeat_frac)."""
    if warned or repeat_frac < start + LOOP_FRAC:
        return warned
    print(f"warning: step {step}: {repeat_frac:.0%} of the held-out answers repeat one of their own lines 3 or "
          f"more times (eval_repeat_frac; step 0: {start:.0%}): the policy is degenerating into loops. "
          + _loop_remedies(cfg), file=sys.stderr, flush=True)
    return True
