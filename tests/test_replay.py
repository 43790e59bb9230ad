"""--replay_prompts: which prompts come back, how often, and that a checkpoint keeps the queue."""

import pytest

from distrl.config import ConfigError, RunConfig
from launch.replay import CAPACITY, MAX_REPLAYS, ReplayQueue, replay_metrics


def test_only_prompts_whose_group_had_signal_come_back_newest_first():
    queue = ReplayQueue(per_step=2)
    queue.offer([10, 11, 12], [True, False, True])
    queue.offer([13, 14], [False, True])
    assert queue.take() == [14, 12]  # newest first; 11 and 13 (all-equal groups) never queue
    assert queue.take() == [10]
    assert queue.take() == []


def test_a_prompt_comes_back_at_most_twice_and_never_twice_in_one_batch():
    queue = ReplayQueue(per_step=3)
    seen = 0
    for _ in range(5):  # it keeps its signal every time
        queue.offer([7], [True])
        queue.offer([7], [True])  # offered twice before a batch: queued once
        taken = queue.take()
        assert taken.count(7) <= 1
        seen += len(taken)
    assert seen == MAX_REPLAYS


def test_prompts_that_no_longer_fit_are_skipped_and_the_queue_is_bounded():
    queue = ReplayQueue(per_step=2)
    queue.offer([1, 2, 3], [True, True, True])
    assert queue.take(fits=lambda i: i != 3) == [2, 1]
    queue.offer(list(range(100, 100 + 2 * CAPACITY)), [True] * (2 * CAPACITY))
    assert len(queue.queue) == CAPACITY and queue.queue[0] == 100 + CAPACITY  # the oldest fell out


def test_off_queues_nothing_and_a_restored_queue_picks_up_where_it_was():
    off = ReplayQueue(per_step=0)
    off.offer([1, 2], [True, True])
    assert off.take() == [] and off.queue == []
    queue = ReplayQueue(per_step=1)
    queue.offer([4, 5, 6], [True, True, True])
    queue.take()
    restored = ReplayQueue(per_step=1)
    restored.restore(queue.state())
    assert restored.take() == queue.take() == [5]
    assert restored.replays == queue.replays == {6: 1, 5: 1}
    empty = ReplayQueue(per_step=1)
    empty.restore(None)  # a checkpoint from before replay existed
    assert empty.take() == []


def test_a_batch_never_holds_a_queued_prompt_twice():
    data = iter([5, 3, 9, 1, 8])  # a new epoch: the data draws 3, which is queued
    queue = ReplayQueue(per_step=2)
    queue.offer([3, 4], [True, True])
    indices, replays = queue.batch(4, lambda n: [next(data) for _ in range(n)])
    assert (indices, replays) == ([5, 3, 9, 4], 1)  # 3 once, fresh; 4 replayed; one more drawn
    assert queue.replays == {3: 0, 4: 1}
    for _ in range(MAX_REPLAYS):  # 3 was not replayed: it still may be, twice
        queue.offer([3], [True])
        assert queue.take() == [3]
    queue.offer([3], [True])
    assert queue.take() == []


def test_replay_metrics_count_only_the_replayed_groups():
    assert replay_metrics([True, False, True, False], [False, False, True, True]) == {
        "replayed_prompts": 2.0, "replay_signal_frac": 0.5}
    assert replay_metrics([True], [False]) == {"replayed_prompts": 0.0, "replay_signal_frac": 0.0}


def test_replay_needs_a_fresh_prompt_per_batch_groups_and_synchronous_mode():
    with pytest.raises(ConfigError, match="--replay_prompts must be in \\[0, --batch_size\\)"):
        RunConfig(batch_size=4, replay_prompts=4)
    for bad in (dict(async_staleness=1), dict(num_candidates=1)):
        with pytest.raises(ConfigError, match="synchronous mode .* and groups"):
            RunConfig(replay_prompts=2, **bad)
    RunConfig(batch_size=4, replay_prompts=3)  # one fresh prompt a step is enough
    with pytest.raises(ConfigError, match="--replay_prompts must be in"):
        RunConfig(replay_prompts=-1)
