"""The object store stays flat over many published versions: the driver keeps only the newest
weights' ref, and an old version is freed once every generator has loaded the next one."""

import gc
import time

import pytest
import ray
import torch

from distrl.config import parse_args
from distrl.data import load_splits
from distrl.weights import pack
from launch.cluster import Actors
from launch.driver import Setup, Trainer
from launch.metrics import object_store_bytes_used

MB = 1 << 20


class Generator:
    def __init__(self):
        self.held = None

    def load_weights(self, packed):
        (ref,) = packed  # the driver sends [ref]; keep a resolved copy as a real generator would
        self.held = ray.get(ref)
        return self.held.policy_version


class _Tokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1, 2, 3]}


@pytest.mark.parametrize("staleness", [0, 1])
def test_store_does_not_grow_over_20_versions(tmp_path, staleness):
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        cfg = parse_args(["--number_of_actors", "2", "--async_staleness", str(staleness)])
        rows, eval_rows = load_splits(cfg.data, 0)
        gens = [ray.remote(Generator).options(num_cpus=0.1).remote() for _ in range(2)]
        trainer = Trainer(cfg, Setup("", _Tokenizer(), rows, eval_rows, [("numeric", 1.0)], str(tmp_path)),
                          Actors(None, gens, None))
        weights = {"w": torch.zeros(4 * MB // 4)}  # 4 MB per version

        def publish(version):
            trainer.weights_ref = ray.put(pack(weights, policy_version=version))
            trainer._sync(trainer.weights_ref, version, block=cfg.run.pipeline_depth == 0)

        publish(0)
        trainer._finish_sync()
        gc.collect()
        time.sleep(1)
        before = object_store_bytes_used()
        for version in range(1, 21):
            publish(version)
        trainer._finish_sync()
        gc.collect()
        time.sleep(2)
        growth = object_store_bytes_used() - before
        trainer.close()
        assert growth < 2 * 4 * MB, f"store grew {growth / MB:.1f} MB over 20 versions"
    finally:
        ray.shutdown()
