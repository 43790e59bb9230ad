"""The driver's counters and its weight packing, on Ray actors that stand in for the learner and
the generators (they sample fixed tokens and count calls): what a user reads in metrics.jsonl
must count each event once, survive a resume, and cost nothing that is not used."""

import os
import time

import pytest
import ray

from distrl import checkpoint
from distrl.config import parse_args
from distrl.data import load_splits
from distrl.generation import Rollout
from launch.cluster import Actors
from launch.driver import Setup, Trainer


class Stub:
    """A learner or generator that samples two fixed tokens and records what it was asked."""

    def __init__(self):
        self.version, self.published, self.lr_scales = 0, [], []

    def ready(self):
        return {"pid": os.getpid()}

    def generate(self, prompts, sampling):
        return [[Rollout(p, [5, 6], [-1.0, -1.0], "length", self.version) for _ in range(sampling.n)] for p in prompts]

    def step(self, rollouts, advantages, ref_logprobs=None, publish=True, lr_scale=1.0):
        self.version += 1
        self.lr_scales.append(lr_scale)
        self.published.append(publish)
        metrics = dict(loss=0.0, kl=0.0, clip_frac=0.0, grad_norm=1.0, skipped_update=0.0, train_s=0.0,
                       policy_version=self.version, logprob_gap=0.0)
        return metrics, ({"policy_version": self.version} if publish else None)

    def publish(self):
        self.published.append("on demand")
        return {"policy_version": self.version}

    def load_weights(self, packed):
        (ref,) = packed
        self.version = ray.get(ref)["policy_version"]
        return self.version

    def save_checkpoint(self, folder):
        with open(os.path.join(folder, "stub_version"), "w") as f:
            f.write(str(self.version))
        return self.version

    def load_checkpoint(self, folder):
        with open(os.path.join(folder, "stub_version")) as f:
            self.version = int(f.read())
        return self.version

    def asked(self):
        return self.published

    def scales(self):
        return self.lr_scales


class _Tokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1, 2, 3]}

    def decode(self, ids, skip_special_tokens=True):
        return "42"


@pytest.fixture
def make_trainer(tmp_path):
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    made = []

    def make(*flags):
        cfg = parse_args(["--number_of_actors", "2", "--batch_size", "4", "--num_candidates", "2", "--eval_every",
                          "0", "--plot_every", "0", *flags])
        rows, eval_rows = load_splits(cfg.data, 0)
        stub = ray.remote(Stub).options(num_cpus=0)
        actors = Actors(stub.remote(), [stub.remote() for _ in range(2)], None)
        trainer = Trainer(cfg, Setup("", _Tokenizer(), rows, eval_rows, [("numeric", 1.0)], str(tmp_path / "run")),
                          actors)
        trainer.weights_ref = actors.learner.publish.remote()
        trainer._sync(trainer.weights_ref, 0)
        made.append(trainer)
        return trainer

    yield make
    for trainer in made:
        trainer.close()
    ray.shutdown()


def test_weights_are_packed_only_for_updates_a_broadcast_follows(make_trainer):
    trainer = make_trainer("--async_staleness", "1", "--weight_sync_every", "2")
    for step in range(1, 5):
        trainer.step(step)
    trainer._finish_sync()
    assert ray.get(trainer.actors.learner.asked.remote()) == ["on demand", False, True, False, True]
    trainer.evaluate()  # version 4 was published: nothing to pack again
    assert ray.get(trainer.actors.learner.asked.remote())[-1] is True
    trainer.step(5)
    trainer.evaluate()  # version 5 was not: packed now, once, for the evaluation's sync
    assert ray.get(trainer.actors.learner.asked.remote())[-2:] == [False, "on demand"]
    assert trainer.gen_version == 5


def test_a_restart_seen_by_two_calls_counts_once(make_trainer, monkeypatch):
    """In async mode a generator's death can surface in its generate call and in its weight load."""
    monkeypatch.setattr("launch.fleet.check_tokenizers", lambda tokenizer, info: None)
    trainer = make_trainer()
    for _ in range(2):
        trainer._revive(1, RuntimeError("distrl-generator-0 died"))
    assert trainer.generator_restarts == 1


def test_prompts_dropped_survive_a_resume(make_trainer):
    trainer = make_trainer()
    trainer._too_long, trainer.data_position = {3, 5}, (0, 4)
    trainer.save(1)
    resumed = make_trainer()
    resumed._restore(checkpoint.latest(trainer.setup.checkpoint_root))
    assert resumed._too_long == {3, 5}


def test_the_lr_schedule_follows_the_time_budget_and_a_resumed_budget_decays_again(make_trainer):
    """--lr_schedule linear over --time_budget_s 100 (--max_steps far away): half the budget spent
    when the step begins is half the lr, in the update and in metrics.jsonl. A resumed run's budget
    starts again, and so does its decay (the steps' share of --max_steps still counts)."""
    flags = ("--lr_schedule", "linear", "--time_budget_s", "100", "--max_steps", "10", "--lr", "1e-4")
    trainer = make_trainer(*flags)
    trainer.started = time.perf_counter() - 50
    metrics = trainer.step(1)
    assert metrics["lr"] == pytest.approx(0.5e-4, rel=0.01)
    assert ray.get(trainer.actors.learner.scales.remote()) == [pytest.approx(0.5, rel=0.01)]
    trainer.data_position = (0, 4)
    trainer.save(1)
    resumed = make_trainer(*flags)
    resumed._restore(checkpoint.latest(trainer.setup.checkpoint_root))
    resumed.weights_ref = resumed.actors.learner.publish.remote()  # as train() does after a restore
    resumed._sync(resumed.weights_ref, resumed.policy_version)
    resumed.started = time.perf_counter()  # the new budget's clock
    assert resumed.step(2)["lr"] == pytest.approx(0.9e-4, rel=0.01)  # step 2 of 10: the steps' share
    resumed.started = time.perf_counter() - 80
    assert resumed.step(3)["lr"] == pytest.approx(0.2e-4, rel=0.01)
    constant = make_trainer("--lr_schedule", "constant", "--time_budget_s", "100", "--lr", "1e-4")
    constant.started = time.perf_counter() - 50
    assert constant.step(1)["lr"] == 1e-4


@pytest.mark.parametrize("chunk", ["0", "1"])
def test_the_next_batch_starts_during_the_sync_only_for_a_learner_chunk(make_trainer, chunk):
    """A batch's generation clock (gen_wait, hence tokens_per_s) starts when it is made: made during
    the sync with nothing for the learner to sample, it would count the sync as generation."""
    trainer = make_trainer("--learner_chunk_size", chunk)
    trainer.step(1)
    assert (2 in trainer._pending) == (chunk == "1")
    if chunk == "1":
        assert list(trainer._pending[2].refs) == [0]  # the learner's chunk, sampled with the new weights
