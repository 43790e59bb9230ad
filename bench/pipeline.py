"""Does --async_staleness 1 buy throughput? Measured for real, and simulated.

Real (the last line): train_distributed.py as a user runs it, with the real model (the embedded
SmolLM2-135M-Instruct unless --model), real actors and the real engines on this machine,
synchronous (--async_staleness 0) and then asynchronous (--async_staleness 1), the same number of
steps and flags; throughput is rollouts per second of training over every step but the first
(which fills the pipeline and compiles). On 2 cores generators and learner compete for the same
cores, so overlapping them buys little: that is what the real ratio shows.

Simulated (printed first, labelled so): the real driver loop (launch/driver.py's Trainer) on Ray
actors whose generate / train / weight load just sleep for set times, so the result does not
depend on how many cores this machine has, with and without a learner chunk. Synchronous, a step
costs about gen + train; asynchronous with k=1 about max(gen, train), so with gen = train the
ratio is ~2 by construction: it checks the pipeline's scheduling, not this machine's speed.
Rewards are scored for real (the numeric reward in its own process).

    python bench/pipeline.py [--steps 6] [--model M] [--gen_s 0.5] [--train_s 0.5] [--sim_steps 8]
        [-- extra train_distributed.py flags for both real runs]

Last line exactly: `async/sync throughput = X.XX (real)`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ray  # noqa: E402

from distrl.config import DEFAULT_MODEL, TrainConfig, parse_args  # noqa: E402
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

    def step(self, rollouts, advantages, ref_logprobs=None, publish=True, lr_scale=1.0):
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
                                   "--num_candidates", "2", "--max_steps", str(args.sim_steps), "--eval_every", "0",
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
        for step in range(1, args.sim_steps + 1):
            metrics = trainer.step(step)
            samples_per_s.append(metrics["samples_per_s"])
            print(f"  k={staleness} learner chunk {learner_chunk} step {step}: {metrics['step_s']:.2f}s, staleness max {metrics['staleness_max']}")
        trainer._finish_sync()
    finally:
        trainer.close()
        for a in [actors.learner, *actors.generators]:
            ray.kill(a)
    return statistics.median(samples_per_s[1:])  # step 1 fills the pipeline


def real_run(staleness: int, args, extra: list[str], out: str) -> tuple[float, int]:
    """train_distributed.py for --steps steps at this staleness: (rollouts per second over every
    step but the first, steps timed)."""
    name = f"async{staleness}"
    cmd = [sys.executable, "train_distributed.py", "--model", args.model, "--max_steps", str(args.steps),
           "--async_staleness", str(staleness), "--eval_every", "0", "--num_eval", "1", "--save_every", "0",
           "--plot_every", "0", "--output_dir", out, "--run_name", name, *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the --async_staleness {staleness} run failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, name, "metrics.jsonl")) as f:
        steps = [m for m in map(json.loads, f) if m.get("step", 0) > 1 and "step_s" in m]
    for m in steps:
        print(f"  real k={staleness} step {m['step']}: {m['step_s']:.2f}s, staleness max {m['staleness_max']}")
    return sum(m["rollouts"] for m in steps) / sum(m["step_s"] for m in steps), len(steps)


def simulate(args) -> float:
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
    print(f"simulated: gen {args.gen_s}s, train {args.train_s}s per step; 12 samples per step")
    print(f"simulated, learner chunk 2/6: sync {chunk_sync:.2f} samples/s, async {chunk_async:.2f} samples/s "
          f"({chunk_async / chunk_sync:.2f}x)")
    print(f"simulated, learner chunk 0:   sync {sync:.2f} samples/s ({12 / sync:.2f} s/step), "
          f"async {asynchronous:.2f} samples/s ({12 / asynchronous:.2f} s/step)")
    print(f"async/sync throughput = {asynchronous / sync:.2f} (simulated)")
    return asynchronous / sync


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="real runs: steps each (the first is not timed)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="real runs: the model (a smoke test: a tiny one)")
    ap.add_argument("--gen_s", type=float, default=0.5, help="simulation: generation seconds per step")
    ap.add_argument("--train_s", type=float, default=0.5, help="simulation: training seconds per step")
    ap.add_argument("--sync_s", type=float, default=0.02, help="simulation: weight load seconds")
    ap.add_argument("--sim_steps", type=int, default=8, help="simulation: steps per run")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2: the first step fills the pipeline and is not timed")
    simulate(args)
    out = tempfile.mkdtemp(prefix="distrl-pipeline-real-")
    sync, sync_steps = real_run(0, args, extra, out)
    asynchronous, async_steps = real_run(1, args, extra, out)
    print(f"real ({os.cpu_count()} cores, {args.model}, {' '.join(extra) or 'default flags'}): "
          f"sync {sync:.2f} samples/s, async {asynchronous:.2f} samples/s over {sync_steps}/{async_steps} steps")
    print(f"async/sync throughput = {asynchronous / sync:.2f} (real)")


class _Tokenizer:
    """Just enough of a tokenizer for the driver: prompts to ids, ids to text."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1, 2, 3]}

    def decode(self, ids, skip_special_tokens=True):
        return "42"


if __name__ == "__main__":
    main()
