"""Checkpoint files: atomic under SIGKILL, never a pickle, and an exact round trip of the state."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from distrl import checkpoint
from distrl.config import AlgoConfig, ModelConfig
from learners.learner_actor import LearnerActor
from tests.faults.runs import ROOT

WRITER = """
import json, os, sys, torch
from distrl import checkpoint
root, step, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
folder = checkpoint.begin(root, step)
with open(os.path.join(folder, "trainer_state.json"), "w") as f:
    json.dump({"step": step}, f)
open(os.path.join(root, "writing"), "w").close()
checkpoint.save_state(folder, "optimizer", {"m": torch.full((mb * 2**18,), float(step))})
checkpoint.commit(root, step, keep=2)
"""


def _write(root, step, mb):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(step), str(mb)], cwd=ROOT)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    root = tmp_path / "checkpoints"
    assert _write(root, 1, 1).wait(timeout=120) == 0
    writer = _write(root, 2, 1500)  # 1.5 GB: still writing when the kill lands
    deadline = time.time() + 120
    while not (root / "writing").exists() or not (root / ".tmp-step-000002").exists():
        assert time.time() < deadline and writer.poll() is None
        time.sleep(0.01)
    (root / "writing").unlink()
    time.sleep(0.2)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    assert (root / "latest").read_text().strip() == "step-000001"
    found = checkpoint.latest(str(root))
    assert found.step == 1 and not (root / "step-000002").exists()
    assert checkpoint.load_state(found.path, "optimizer")["m"].eq(1.0).all()
    # The next save clears the half-written folder and moves the pointer.
    assert _write(root, 3, 1).wait(timeout=120) == 0
    assert sorted(os.listdir(root)) == ["latest", "step-000001", "step-000003", "writing"]
    assert checkpoint.latest(str(root)).step == 3


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    root = str(tmp_path)
    for step in (1, 2, 3):
        folder = checkpoint.begin(root, step)
        open(os.path.join(folder, checkpoint.TRAINER_STATE), "w").write("{}")
        checkpoint.commit(root, step, keep=2)
    assert [c.step for c in checkpoint.complete(root)] == [2, 3]


def test_a_checkpoint_holding_a_pickle_is_refused(tmp_path):
    folder = tmp_path / "step-000001"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    torch.save({"x": torch.zeros(1)}, folder / "optimizer.pt")
    with pytest.raises(checkpoint.CheckpointError, match="holds 'optimizer.pt', which is not safetensors or JSON"):
        checkpoint.check_safe(str(folder))


@pytest.mark.parametrize("optimizer, dtype", [("adamw", "float32"), ("cpu_adamw", "float32"),
                                              ("cpu_adamw", "bfloat16"), ("adamw_8bit", "float32")])
def test_learner_state_round_trips_exactly(tiny_model_dir_64, tmp_path, optimizer, dtype):
    """Weights, optimizer moments and version come back bit for bit: the next update of a
    restored learner equals the next update of the one that kept running."""
    from actors.generation_actor import GenerationActor
    from tests.test_learner import _rollouts

    def learner():
        return LearnerActor(tiny_model_dir_64, ModelConfig(dtype=dtype), AlgoConfig(lr=1e-2, optimizer=optimizer),
                            temperature=1.0, torch_threads=1)

    running, generator = learner(), GenerationActor(tiny_model_dir_64, ModelConfig(dtype=dtype), torch_threads=1)
    generator.load_weights(running.publish())
    rollouts, adv = _rollouts(generator, running, seed=0)
    running.step(rollouts, adv)
    running.save_checkpoint(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["learner.json", "learner.safetensors", "optimizer.json",
                                            "optimizer.safetensors", "policy.safetensors"]
    restored = learner()
    assert restored.load_checkpoint(str(tmp_path)) == 1
    generator.load_weights(running.publish())
    rollouts, adv = _rollouts(generator, running, seed=1)
    running.step(rollouts, adv)
    restored.step(rollouts, adv)
    for name, p in running.params.items():
        assert torch.equal(p, restored.params[name]), name
