"""Reward faults in the real reward process: raising on some calls, hanging, returning garbage."""

import time

import pytest

from distrl.rewards.pool import RewardPool


def test_a_reward_raising_on_30_percent_of_calls_scores_the_default_and_is_counted():
    pool = RewardPool([("tests.helpers:raises_on_x", 1.0)], timeout_s=10.0, default=-1.0)
    try:
        completions = ["x", "a", "b", "x", "c", "d", "x", "e", "f", "g"]
        scores, stats = pool.score([""] * 10, completions, {})
    finally:
        pool.close()
    assert stats.errors == 3 and stats.timeouts == 0
    assert scores == [-1.0 if c == "x" else 1.0 for c in completions]
    assert "ZeroDivisionError" in stats.first_traceback


def test_a_hanging_reward_times_out_and_the_next_calls_still_score():
    pool = RewardPool([("tests.helpers:hangs_on_x", 1.0)], timeout_s=2.0, default=0.0)
    try:
        start = time.perf_counter()
        scores, stats = pool.score(["", "", ""], ["a", "x", "b"], {})
    finally:
        pool.close()
    assert scores == [1.0, 0.0, 1.0] and stats.timeouts == 1
    assert time.perf_counter() - start < 60  # the 3600 s sleep was cut off


@pytest.mark.parametrize("completion, problem", [("nan", "nan"), ("inf", "inf"), ("none", "None"),
                                                 ("two", "2 values")])
def test_nan_inf_none_or_wrong_length_is_an_error_not_a_score(completion, problem):
    pool = RewardPool([("tests.helpers:garbage", 1.0)], timeout_s=10.0)
    try:
        scores, stats = pool.score([""], [completion], {})
    finally:
        pool.close()
    assert len(stats.bad_results) == 1 and problem in stats.bad_results[0], stats.bad_results
    assert stats.errors == 0
