"""Rewards in a separate process: a hanging or raising reward costs a default score and a count,
never the run; a malformed result is reported, not guessed."""

import time

import pytest

from distrl.rewards.pool import RewardPool

COLUMNS = {"answer": ["1", "2", "3"]}
PROMPTS = ["p1", "p2", "p3"]


def _score_once(specs, completions, **kwargs):
    """A fresh pool scores PROMPTS/completions once and is closed again."""
    pool = RewardPool(specs, **kwargs)
    try:
        return pool.score(PROMPTS, completions, COLUMNS)
    finally:
        pool.close()


@pytest.fixture(scope="module")
def numeric_pool():
    pool = RewardPool([("numeric", 1.0)], timeout_s=5.0)
    yield pool
    pool.close()


def test_scores_like_the_reward_itself(numeric_pool):
    scores, stats = numeric_pool.score(PROMPTS, ["it is 1", "3", "= 3"], COLUMNS)
    assert scores == [1.0, 0.0, 1.0]
    assert (stats.errors, stats.timeouts, stats.bad_results) == (0, 0, [])


def test_weights_add_up():
    scores, _ = _score_once([("numeric", 1.0), ("format", 0.5)], ["it is 1", "3 apples", "nothing"], timeout_s=5.0)
    assert scores == [1.5, 0.0, 0.0]


def test_a_hanging_reward_times_out_and_the_pool_recovers():
    start = time.perf_counter()
    scores, stats = _score_once([("tests.helpers:hangs_on_x", 1.0)], ["ok", "x", "ok"], timeout_s=1.0, default=-1.0)
    assert time.perf_counter() - start < 20
    assert scores == [1.0, -1.0, 1.0]  # the calls after the hung one still ran
    assert stats.timeouts == 1 and stats.errors == 0


def test_a_raising_reward_is_counted_with_its_traceback():
    scores, stats = _score_once([("tests.helpers:raises_on_x", 1.0)], ["x", "ok", "x"], timeout_s=5.0)
    assert scores == [0.0, 1.0, 0.0] and stats.errors == 2
    assert "ZeroDivisionError" in stats.first_traceback


def test_nan_or_wrong_length_is_reported_not_scored():
    _, stats = _score_once([("tests.helpers:nan_on_x", 1.0)], ["x", "ok", "ok"], timeout_s=5.0)
    assert stats.bad_results and "non-finite" in stats.bad_results[0]


def test_a_dead_idle_worker_is_replaced_before_the_next_call(numeric_pool):
    for process in list(numeric_pool._executor._processes.values()):
        process.kill()
        process.join()
    scores, stats = numeric_pool.score(PROMPTS, ["1", "2", "0"], COLUMNS)
    assert scores == [1.0, 1.0, 0.0] and stats.errors == 0
