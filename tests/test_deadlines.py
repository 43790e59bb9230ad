"""Every wait on an actor has a deadline: a stalled actor becomes an error that names it."""

import time

import pytest
import ray

from launch.driver import wait


class Stalls:
    def load_weights(self, seconds: float) -> int:
        time.sleep(seconds)
        return 1


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_a_generator_that_misses_the_sync_deadline_is_named(local_ray):
    fast = ray.remote(Stalls).options(num_cpus=0.1).remote()
    slow = ray.remote(Stalls).options(num_cpus=0.1).remote()
    refs = [fast.load_weights.remote(0.0), slow.load_weights.remote(60.0)]
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"weight sync: no answer within 2s from distrl-generator-1$"):
        wait(refs, ["distrl-generator-0", "distrl-generator-1"], 2.0, "weight sync")
    assert time.perf_counter() - start < 10  # it did not wait for the stalled actor
    ray.kill(slow)
    assert wait([fast.load_weights.remote(0.0)], ["distrl-generator-0"], 5.0, "weight sync") == [1]
