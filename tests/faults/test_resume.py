"""Exact resume: a run SIGKILLed after step 3 and resumed to step 6 ends where an uninterrupted
run ends, having seen the same prompts in the same order, across an epoch boundary: in fp32 (with
a decaying lr), and in bf16 with CPUAdamW's fp32 masters, bit for bit. The saved model is in the run's dtype: in bf16,
the weights the generators ran, not the masters."""

import json

import pytest
import torch

from safetensors.torch import load_file

from distrl.checkpoint import load_state
from tests.faults.runs import Run, metrics, run_args, write_rows


def _prompts_per_step(run_dir):
    with open(run_dir / "samples.jsonl") as f:
        rows = [json.loads(line) for line in f]
    by_step = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r["prompt"])
    return by_step


def _flat(state, prefix=""):
    """Every tensor of a nested optimizer state, by path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    return {k: v for key, value in items for k, v in _flat(value, f"{prefix}/{key}").items()}


@pytest.mark.parametrize("dtype,schedule", [("float32", "linear"), ("bfloat16", "constant")])
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tiny_model_dir, tmp_path, dtype, schedule):
    # 12 rows, 4 prompts a step: step 3 ends the first epoch exactly, and so does the checkpoint.
    train = write_rows(tmp_path / "train.jsonl", [f"Say {i} ones" for i in range(12)])
    held_out = write_rows(tmp_path / "eval.jsonl", [f"Eval {i}" for i in range(4)])
    # Replay off: every prompt of a step is a fresh one, so the epoch ends at step 3 (the replay
    # queue across a resume is the last test's).
    common = ["--dataset", train, "--eval_dataset", held_out, "--max_steps", "6", "--save_every", "3",
              "--seed", "3", "--dtype", dtype, "--replay_prompts", "0", "--lr_schedule", schedule]

    code, out, err = Run(run_args(tiny_model_dir, tmp_path, "straight", *common)).finish()
    assert code == 0, err[-3000:]

    broken = Run(run_args(tiny_model_dir, tmp_path, "broken", *common), gate=tmp_path / "gate", gate_step=4)
    broken.wait_at_gate()  # checkpoint 3 is written; step 4 has generated
    broken.kill()  # SIGKILL, driver and cluster
    ckpt = tmp_path / "broken" / "checkpoints" / "step-000003"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["data_position"] == [0, 12]  # exactly at the epoch boundary

    code, out, err = Run(run_args(tiny_model_dir, tmp_path, "broken", *common, "--resume", "auto")).finish()
    assert code == 0, err[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "broken")[1:]] == [1, 2, 3, 4, 5, 6]
    # --lr 1e-2 at every step, or decayed linearly over the 6 steps, on through the resume.
    expected = [1e-2 * (1 - (s - 1) / 6 if schedule == "linear" else 1) for s in range(1, 7)]
    for run in ("straight", "broken"):
        assert [m["lr"] for m in metrics(tmp_path / run)[1:]] == pytest.approx(expected), run

    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "final" / "model.safetensors")
    start = load_file(f"{tiny_model_dir}/model.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    print(f"resume exactness: max |param difference| = {diff:.3g} (training moved params by {moved:.3g})")
    assert diff == 0 and moved > 1e-3
    assert all(t.dtype == getattr(torch, dtype) for t in a.values())  # in bf16: the bf16 weights, not the masters
    # The optimizer state too (with bf16 weights: CPUAdamW's fp32 masters and moments).
    opt_a = _flat(load_state(str(tmp_path / "straight" / "checkpoints" / "step-000006"), "optimizer"))
    opt_b = _flat(load_state(str(tmp_path / "broken" / "checkpoints" / "step-000006"), "optimizer"))
    assert opt_a.keys() == opt_b.keys() and all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    if dtype == "bfloat16":
        masters = [t for k, t in opt_a.items() if "/masters/" in k]
        assert masters and all(t.dtype == torch.float32 for t in masters)

    straight, resumed = _prompts_per_step(tmp_path / "straight"), _prompts_per_step(tmp_path / "broken")
    assert straight == resumed  # same prompts, same order, every step
    first_epoch = sorted(p for s in (1, 2, 3) for p in straight[s])
    assert first_epoch == sorted(sorted(p for s in (4, 5, 6) for p in straight[s]))  # a second epoch
    assert len(set(first_epoch)) == 12


def test_a_resumed_run_replays_the_prompts_the_uninterrupted_one_replays(tiny_model_dir, tmp_path):
    """--replay_prompts: the checkpoint keeps the replay queue, so a run killed after step 3's
    checkpoint and resumed draws the same prompts, fresh and replayed, as one that ran straight to
    step 5, and ends with the same weights. (The learner samples its chunk of step 4 during step
    3's sync, from the queue as step 3 left it: the checkpoint must hold that queue, not what the
    draw left of it.) 8 rows: the data wraps around while prompts of its first pass are queued,
    and no batch replays a prompt the data drew fresh into it."""
    train = write_rows(tmp_path / "train.jsonl", [f"Say {i} ones" for i in range(8)])
    common = ["--dataset", train, "--max_steps", "5", "--save_every", "3", "--seed", "3", "--replay_prompts", "2"]
    code, out, err = Run(run_args(tiny_model_dir, tmp_path, "straight", *common)).finish()
    assert code == 0, err[-3000:]
    broken = Run(run_args(tiny_model_dir, tmp_path, "broken", *common), gate=tmp_path / "gate", gate_step=4)
    broken.wait_at_gate()  # checkpoint 3 is written; step 4 has generated
    broken.kill()
    code, out, err = Run(run_args(tiny_model_dir, tmp_path, "broken", *common, "--resume", "auto")).finish()
    assert code == 0, err[-3000:]
    replayed = [m["replayed_prompts"] for m in metrics(tmp_path / "straight")[1:]]
    assert replayed[:2] == [0, 2] and sum(replayed[3:]) > 0  # replays after the resume point too
    straight = _prompts_per_step(tmp_path / "straight")
    assert straight == _prompts_per_step(tmp_path / "broken")
    for step, k in enumerate(replayed, start=1):  # the replays are a batch's last k prompts
        fresh, again = straight[step][:4 - int(k)], straight[step][4 - int(k):]
        assert len(set(again)) == len(again) and not set(fresh) & set(again), straight
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
