"""Signs that a run is learning the wrong thing, in the log and on stderr."""

from distrl.config import parse_args
from launch.guards import (CUT_STEPS, FLAT_STEPS, LOOP_FRAC, LOOP_STEPS, check_eval_loops, count_cut_steps,
                           count_eval_drop, count_flat_steps, count_loop_steps)


def streak_warning(count, limit: int, capsys) -> tuple[int, str]:
    """Run a step counter (`count(in_a_row, step)`) over steps 1..limit of one streak: silent before
    the limit; returns the count and what it printed at the limit."""
    n = 0
    for step in range(1, limit):
        n = count(n, step)
    assert n == limit - 1 and capsys.readouterr().err == ""
    n = count(n, limit)
    return n, capsys.readouterr().err


def test_accuracy_below_the_start_twice_in_a_row_warns_once_naming_the_causes(capsys):
    cfg = parse_args(["--max_new_tokens", "16"])
    n = count_eval_drop(0, 0.06, 0.105, step=10, cfg=cfg)
    assert n == 1 and capsys.readouterr().err == ""  # one evaluation can be noise
    n = count_eval_drop(n, 0.05, 0.105, step=20, cfg=cfg)
    err = capsys.readouterr().err
    assert n == 2 and "below step 0's 0.105 at two evaluations in a row" in err
    assert "copying the prompt" in err and "--reward numeric," in err and "--max_new_tokens 16" in err
    assert count_eval_drop(n, 0.04, 0.105, step=30, cfg=cfg) == 3 and capsys.readouterr().err == ""  # once
    assert count_eval_drop(n, 0.12, 0.105, step=40, cfg=cfg) == 0  # back above the start: reset


def test_steps_without_any_signal_warn_once_naming_the_remedies(capsys):
    cfg = parse_args([])
    n, err = streak_warning(lambda n, step: count_flat_steps(n, 1.0, step, cfg), FLAT_STEPS, capsys)
    assert f"{FLAT_STEPS} steps in a row without any reward difference" in err
    assert "--reward numeric the model may never be right yet" in err and "--reward numeric_digits" in err
    assert count_flat_steps(n, 1.0, FLAT_STEPS + 1, cfg) == FLAT_STEPS + 1 and capsys.readouterr().err == ""
    assert count_flat_steps(n, 0.875, FLAT_STEPS + 2, cfg) == 0  # one group with signal: reset


def test_steps_whose_completions_are_all_cut_off_warn_once_naming_the_budget(capsys):
    cfg = parse_args([])
    n, err = streak_warning(lambda n, step: count_cut_steps(n, 1.0, 0.8, step, cfg), CUT_STEPS, capsys)
    assert f"{CUT_STEPS} steps in a row (since step 1) where every training completion was cut off at " \
           "--max_new_tokens 48" in err
    assert "prompt_copy_frac 0.80" in err and "eval_truncated_frac" in err and "bench/learning.py --lengths" in err
    assert "--lr (now 1e-05)" in err and "--beta (now 0)" in err and "the newest 2 are kept" in err
    assert count_cut_steps(n, 1.0, 0.8, CUT_STEPS + 1, cfg) == CUT_STEPS + 1 and capsys.readouterr().err == ""
    assert count_cut_steps(n, 0.98, 0.8, CUT_STEPS + 2, cfg) == 0  # one finished answer: reset


def test_training_completions_that_loop_warn_once_naming_the_remedies(capsys):
    cfg = parse_args([])
    n, err = streak_warning(lambda n, step: count_loop_steps(n, 0.25, step, cfg), LOOP_STEPS, capsys)
    assert f"{LOOP_STEPS} steps in a row (since step 1) where at least 10% of the training completions (now 25%) " \
           "repeat one of their own lines" in err
    assert "degenerating into loops" in err and "--lr (now 1e-05)" in err and "--beta (now 0)" in err
    assert count_loop_steps(n, 0.25, LOOP_STEPS + 1, cfg) == LOOP_STEPS + 1 and capsys.readouterr().err == ""
    assert count_loop_steps(n, LOOP_FRAC / 2, LOOP_STEPS + 2, cfg) == 0  # few loops: reset


def test_held_out_answers_that_loop_more_than_at_step_0_warn_once(capsys):
    """The gsm_format failure: step 0 scored 0 (so 'below step 0' could never fire) and the
    answers ended as "####" line after line."""
    cfg = parse_args([])
    assert not check_eval_loops(False, 0.08, 0.0, step=10, cfg=cfg) and capsys.readouterr().err == ""
    assert not check_eval_loops(False, 0.35, 0.3, step=10, cfg=cfg)  # as loopy as the untrained model
    assert check_eval_loops(False, 0.66, 0.0, step=110, cfg=cfg)
    err = capsys.readouterr().err
    assert "step 110: 66% of the held-out answers repeat one of their own lines" in err and "step 0: 0%" in err
    assert check_eval_loops(True, 0.9, 0.0, step=120, cfg=cfg) and capsys.readouterr().err == ""  # once
