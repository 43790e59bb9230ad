"""One run, start to end: checks before anything starts, the Ray cluster and actors, the
training loop (`launch/driver.py`), and, when an actor is lost, a restart of every actor from
the last checkpoint (--auto_resume) or an error naming what to resume from."""

from __future__ import annotations

import dataclasses
import sys

import ray

from distrl import checkpoint
from distrl.config import RunStopped, TrainConfig
from launch import run_lock
from launch.calls import ActorLost
from launch.cluster import Actors, check_resources, connect, create_actors, node_resources
from launch.driver import Trainer
from launch.metrics import summary_lines
from launch.preflight import check_tokenizers, preflight
from launch.stop import Interrupted, StopSignals


def run(cfg: TrainConfig) -> dict:
    """Train as configured; returns the summary it also prints. ConfigError on bad input;
    RunStopped when an actor is lost for good (naming it and the checkpoint to resume from)."""
    setup = preflight(cfg)
    # Every actor builds the backend and computes in the dtype chosen here (auto resolved once, printed).
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, backend=setup.backend),
                              model=dataclasses.replace(cfg.model, dtype=setup.dtype))
    connect(cfg)
    stop = StopSignals(cfg.run.stop_grace_s)
    stop.install()  # after ray.init: replaces Ray's handler, which aborts the driver
    resumes = 0
    try:
        check_resources(cfg, ray.available_resources(), node_resources())
        while True:
            actors = None
            try:
                actors = create_actors(cfg, setup.model_path)
                check_tokenizers(setup.tokenizer, actors.info)
                trainer = Trainer(cfg, setup, actors, stop)
                try:
                    summary = trainer.train()
                finally:
                    trainer.close()
                break
            except ActorLost as e:
                last = checkpoint.latest(setup.checkpoint_root)
                if cfg.run.auto_resume and last is not None and resumes < cfg.run.max_auto_resumes:
                    resumes += 1
                    print(f"warning: {e}; --auto_resume: restarting every actor from {last.path} "
                          f"({resumes}/{cfg.run.max_auto_resumes})", file=sys.stderr, flush=True)
                    setup = dataclasses.replace(setup, resume=last)
                    continue
                how = (f"resume with --resume {last.path}" if last is not None else
                       "no checkpoint was written yet (see --save_every): start again")
                raise RunStopped(f"{e}; {how}") from e
            except Interrupted as e:
                if e.at_once:  # mid-step: the last checkpoint on disk is where to go on from
                    last = checkpoint.latest(setup.checkpoint_root)
                    raise stop.stopped(0, last.path if last else None, at_once=True) from None
                raise
            finally:
                if actors is not None:
                    stop_actors(actors)
        for line in summary_lines(summary):
            print(line, flush=True)
        return summary
    finally:
        ray.shutdown()
        stop.uninstall()
        run_lock.release(setup.output_dir)


def stop_actors(actors: Actors) -> None:
    for handle in [*(actors.learners or [actors.learner]), *actors.generators, actors.reference]:
        if handle is not None:
            ray.kill(handle, no_restart=True)
    if actors.placement_group is not None:
        ray.util.remove_placement_group(actors.placement_group)
