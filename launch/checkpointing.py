"""Checkpoints, one role of the Trainer (launch/driver.py): a step's checkpoint written by the
learner and the driver and committed atomically (a full disk stops the run in one line, or
with --on_save_error continue goes on), and a run restored from one. A mixin: it uses the
Trainer's cfg, setup, learners, counters, data position and logs."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from distrl import checkpoint
from distrl.checkpoint import Checkpoint
from distrl.config import RunStopped
from launch import disk


class Checkpointing:
    """Save and restore."""

    def save(self, step: int) -> float:
        """Checkpoint after `step`: the learner writes its weights, optimizer and RNG state into
        a temporary folder, the driver adds its own state, then the folder is committed. A step
        whose update was skipped is not saved. Returns the seconds it took."""
        start = time.perf_counter()
        if self.bad_steps:
            print(f"warning: step {step} not checkpointed: its update was skipped", file=sys.stderr, flush=True)
            return 0.0
        root = self.setup.checkpoint_root
        try:
            folder = checkpoint.begin(root, step)
            self._write_checkpoint(folder, step)
            saved = checkpoint.commit(root, step, self.cfg.run.keep_checkpoints)
        except Exception as e:
            if not disk.out_of_space(e):
                raise
            return self._save_failed(step, e)
        print(f"checkpoint: {saved.path}", flush=True)
        return time.perf_counter() - start

    def _save_failed(self, step: int, error: Exception) -> float:
        """A full disk: the partial folder goes, and the run stops (or, with --on_save_error
        continue, goes on unsaved) with one line saying what it needed and what is left."""
        root = self.setup.checkpoint_root
        partial = os.path.join(root, f".tmp-{checkpoint.step_name(step)}")
        shutil.rmtree(partial, ignore_errors=True)
        last = checkpoint.latest(root)
        need = f"about {disk.size(self.setup.checkpoint_bytes)} needed, " if self.setup.checkpoint_bytes else ""
        message = (f"checkpoint of step {step} failed: no space left on the device of {root} ({need}"
                   f"{disk.size(disk.free_bytes(root))} free); removed the partial {partial}; last good "
                   f"checkpoint: {last.path if last else 'none'}")
        if self.cfg.run.on_save_error == "continue":
            print(f"warning: {message}; going on without it (--on_save_error continue)", file=sys.stderr, flush=True)
            return 0.0
        raise RunStopped(f"{message}. Free space or point --output_dir elsewhere, then --resume auto "
                         "(or --on_save_error continue to train on without checkpoints)") from error

    def _write_checkpoint(self, folder: str, step: int) -> None:
        self.learners.run("save_checkpoint", folder, timeout_s=self.cfg.run.timeout_s,
                          what=f"checkpoint of step {step}")
        # Generators hold no state of their own: each generate call seeds its sampler from
        # (--seed, step, worker), so the data position is all the sampling state there is.
        state = {"step": step, "policy_version": self.policy_version, "data_position": list(self.data_position),
                 "evals": {str(k): v for k, v in self.evals.items()},
                 "eval_cut": {str(k): v for k, v in self.eval_cut.items()},
                 "eval_repeat_start": self.eval_repeat_start,
                 "eval_tokens": self.cfg.sampling.eval_tokens,
                 "rollouts_generated": self.rollouts_generated, "rollouts_dropped": self.rollouts_dropped,
                 "generator_restarts": self.generator_restarts, "prompts_dropped": sorted(self._too_long),
                 "replay": self.replay_state,
                 "config": self.cfg.to_dict(),
                 "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(os.path.join(folder, checkpoint.TRAINER_STATE), "w") as f:
            json.dump(state, f, indent=2)

    def _restore(self, found: Checkpoint) -> None:
        """Load `found` into the learner and the driver; logs of later steps are dropped."""
        state = found.trainer_state()
        version = self.learners.run("load_checkpoint", found.path, timeout_s=self.cfg.run.timeout_s,
                                    what=f"loading checkpoint {found.path}")
        if version != state["policy_version"]:
            raise RuntimeError(f"checkpoint {found.path}: learner restored version {version}, the "
                               f"driver's state says {state['policy_version']}")
        self.policy_version = self.gen_version = version
        self._last_version = {}
        self.start_step = int(state["step"])
        self.sampler.restore(*state["data_position"])
        self.data_position = tuple(state["data_position"])
        if state.get("eval_tokens") == self.cfg.sampling.eval_tokens:
            self.evals = {int(k): v for k, v in state["evals"].items()}
            self.eval_cut = {int(k): v for k, v in state["eval_cut"].items()}
            self.eval_repeat_start = state.get("eval_repeat_start")  # absent in older checkpoints
        else:  # another evaluator: its accuracies do not compare with this run's
            budget = state.get("eval_tokens", "the training budget's")  # older checkpoints: that one
            print(f"warning: the checkpoint's held-out accuracies were measured with {budget} new tokens, "
                  f"this run evaluates with {self.cfg.sampling.eval_tokens}: the summary compares this "
                  "run's evaluations only", file=sys.stderr, flush=True)
        self.rollouts_generated, self.rollouts_dropped = state["rollouts_generated"], state["rollouts_dropped"]
        self.generator_restarts = state.get("generator_restarts", 0)
        self._too_long = set(state.get("prompts_dropped", []))
        self.replay.restore(state.get("replay"))  # absent in older checkpoints: an empty queue
        self.replay_state = self.replay.state()
        self.log.keep_through(self.start_step)
        self.samples.keep_through(self.start_step)
        print(f"resumed from {found.path}: step {self.start_step}, policy version {version}", flush=True)
