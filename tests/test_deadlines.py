"""Every wait on an actor has a deadline: a stalled actor becomes an error that names it."""

import time

import pytest
import ray

from launch.calls import wait


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
    ray.get([fast.load_weights.remote(0.0), slow.load_weights.remote(0.0)], timeout=120)  # both started
    refs = [fast.load_weights.remote(0.0), slow.load_weights.remote(60.0)]
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"weight sync: no answer within 2s from distrl-generator-1$"):
        wait(refs, ["distrl-generator-0", "distrl-generator-1"], 2.0, "weight sync")
    assert time.perf_counter() - start < 10  # it did not wait for the stalled actor
    ray.kill(slow)
    assert wait([fast.load_weights.remote(0.0)], ["distrl-generator-0"], 5.0, "weight sync") == [1]


def test_dashboard_gauges_reach_the_metrics_export(tmp_path):
    """Run in its own Ray session with a known export port, scraped like Prometheus would."""
    import subprocess
    import sys

    code = '''
import time, urllib.request, ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", _metrics_export_port=18235)
from launch.metrics import DashboardMetrics
dash = DashboardMetrics("scrape-test")
for _ in range(40):
    dash.record({"step": 3, "reward_mean": 0.25, "logprob_gap": 2e-6})
    time.sleep(1)
    body = urllib.request.urlopen("http://127.0.0.1:18235/metrics", timeout=5).read().decode()
    lines = [l for l in body.splitlines() if 'run="scrape-test"' in l]
    if any(l.startswith("ray_distrl_reward_mean") for l in lines):
        print("\\n".join(lines))
        break
ray.shutdown()
'''
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert any(l.startswith("ray_distrl_reward_mean") and l.endswith(" 0.25") for l in lines), out.stderr[-2000:]
    assert any(l.startswith("ray_distrl_step") and l.endswith(" 3.0") for l in lines)
