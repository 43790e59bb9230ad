"""The real driver loop (launch/driver.py's Trainer) on Ray actors whose generate / train / weight
load just sleep for set times, so the result does not depend on how many cores this machine has:
synchronous (--async_staleness 0) vs asynchronous (--async_staleness 1), same steps, same sleeps,
with and without a learner chunk; the last line is the pure pipeline (no learner chunk).

Synchronous, a step costs about gen + train; asynchronous with k=1, generators sample batch t+1
while the learner trains on batch t, so a step costs about max(gen, train). Rewards are scored
for real (the numeric reward in its own process).

    python bench/pipeline.py [--gen_s 0.5] [--train_s 0.5] [--steps 8]

Last line exactly: `async/sync throughput = X.XX` (samples per second, medians over steps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

from distrl.config import TrainConfig, parse_args  # noqa: E402
from distrl.data import load_splits  # noqa: E402
from distrl.generation import Rollout  # noqa: E402
from launch.cluster import Actors  # noqa: E402
from launch.driver import Setup, Trainer  # noqa: E402

COMPLETION = [5, 6, 7]  # token ids; what they decode to does not matter here


class SleepyWorker:
    """Generates for `prompt_s` per prompt, trains `train_s` per update, loads weights in `sync_s`."""

    def __init__(self, prompt_s: float, train_s: float, sync_s: float) -> None:
        self.prompt_s, self.train_s, self.sync_s, self.policy_version = prompt_s, train_s, sync_s, 0

    def generate(self, prompts, sampling):
        time.sleep(self.prompt_s * len(prompts))
        return [[Rollout(p, COMPLETION, [-1.0] * len(COMPLETION), "length", self.policy_version)
                 for _ in range(sampling.n)] for p in prompts]

    def step(self, rollouts, advantages, ref_logprobs=None):
        time.sleep(self.train_s)
        self.policy_version += 1
        metrics = dict(loss=0.0, kl=0.0, clip_frac=0.0, logprob_gap=0.0, grad_norm=1.0,
                       skipped_update=0.0, train_s=self.train_s, policy_version=self.policy_version)
        return metrics, {"policy_version": self.policy_version}

    def publish(self):
        return {"policy_version": self.policy_version}

    def load_weights(self, packed) -> int:
        time.sleep(self.sync_s)
        if isinstance(packed, list):  # the driver sends [ObjectRef], as to a GenerationActor
            import ray

            packed = ray.get(packed[0])
        self.policy_version = packed["policy_version"]
        return self.policy_version


def run(staleness: int, learner_chunk: int, args, setup: Setup) -> float:
    cfg: TrainConfig = parse_args(["--number_of_actors", "2", "--batch_size", "6",
                                   "--learner_chunk_size", str(learner_chunk),
                                   "--num_candidates", "2", "--max_steps", str(args.steps), "--eval_every", "0",
                                   "--async_staleness", str(staleness), "--plot_every", "0"])
    worker = ray.remote(SleepyWorker).options(num_cpus=0)
    prompt_s = args.gen_s / 3  # without a learner chunk each generator gets 3 of the 6 prompts
    actors = Actors(worker.remote(prompt_s, args.train_s, args.sync_s),
                    [worker.remote(prompt_s, 0.0, args.sync_s) for _ in range(2)], None)
    trainer = Trainer(cfg, setup, actors)
    try:
        trainer.weights_ref = actors.learner.publish.remote()
        trainer._sync(trainer.weights_ref, 0)
        samples_per_s = []
        for step in range(1, args.steps + 1):
            metrics = trainer.step(step)
            samples_per_s.append(metrics["samples_per_s"])
            print(f"  k={staleness} learner chunk {learner_chunk} step {step}: {metrics['step_s']:.2f}s, staleness max {metrics['staleness_max']}")
        trainer._finish_sync()
    finally:
        trainer.close()
        for a in [actors.learner, *actors.generators]:
            ray.kill(a)
    return statistics.median(samples_per_s[1:])  # step 1 fills the pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen_s", type=float, default=0.5)
    ap.add_argument("--train_s", type=float, default=0.5)
    ap.add_argument("--sync_s", type=float, default=0.02)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    cfg = parse_args([])
    train_rows, eval_rows = load_splits(cfg.data, 0)
    setup = Setup("", _Tokenizer(), train_rows, eval_rows, [("numeric", 1.0)],
                  tempfile.mkdtemp(prefix="distrl-pipeline-"))
    try:
        # With a learner chunk the learner generates its share between updates, in async mode too
        # (always with the newest weights): its step is then chunk + train, which caps the gain.
        chunk_sync, chunk_async = run(0, 2, args, setup), run(1, 2, args, setup)
        sync, asynchronous = run(0, 0, args, setup), run(1, 0, args, setup)
    finally:
        ray.shutdown()
    print(f"gen {args.gen_s}s, train {args.train_s}s per step; 12 samples per step")
    print(f"learner chunk 2/6: sync {chunk_sync:.2f} samples/s, async {chunk_async:.2f} samples/s "
          f"({chunk_async / chunk_sync:.2f}x)")
    print(f"learner chunk 0:   sync {sync:.2f} samples/s ({12 / sync:.2f} s/step), "
          f"async {asynchronous:.2f} samples/s ({12 / asynchronous:.2f} s/step)")
    print(f"async/sync throughput = {asynchronous / sync:.2f}")


class _Tokenizer:
    """Just enough of a tokenizer for the driver: prompts to ids, ids to text."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1, 2, 3]}

    def decode(self, ids, skip_special_tokens=True):
        return "42"


if __name__ == "__main__":
    main()
