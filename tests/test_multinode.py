"""Three simulated nodes on this machine (ray.cluster_utils.Cluster), joined through
--ray_address: the repository reaches the workers as the job's working_dir, the spread placement
group puts actors on different nodes, weights cross nodes through the object store, and
training proceeds with the generators holding the learner's weights."""

import json
import os

import pytest

from tests.test_system import read_metrics, tiny_run_args, train

pytestmark = pytest.mark.alone  # Cluster() writes the address ray.init() in a test beside it would join


def test_spread_over_three_nodes_trains_with_weights_crossing_nodes(tiny_model_dir, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        proc = train(tiny_run_args(tiny_model_dir, "--ray_address", cluster.address, "--placement_strategy",
                                   "spread", "--num_cpus_per_actor", "0.9"), tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        cluster.shutdown()
    with open(tmp_path / "run" / "actors.json") as f:
        nodes = {name: info["node"] for name, info in json.load(f).items()}
    assert len(set(nodes.values())) == 3, nodes  # learner and both generators on their own nodes
    steps = read_metrics(tmp_path)[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]
    assert all(m["logprob_gap"] < 1e-4 for m in steps)  # generators on other nodes hold our weights
    samples = [json.loads(line) for line in open(tmp_path / "run" / "samples.jsonl")]
    assert [s["step"] for s in samples] == [1, 1, 2, 2] and all("completion" in s for s in samples)
    assert os.path.getsize(tmp_path / "run" / "metrics.jsonl") > 0
