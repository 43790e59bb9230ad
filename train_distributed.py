"""Entry point: parse flags into a TrainConfig and run the distributed trainer.

    python train_distributed.py --number_of_actors 2 --learner grpo

Bad input ends the run before any actor starts, with one line on stderr and exit code 2; an
actor that misses a deadline, or is lost for good, ends it with one line naming the actor (and
the checkpoint to resume from) and exit code 1. SIGTERM or Ctrl-C stops it cleanly after the
current step and its checkpoint (launch/stop.py), exit code 143 or 130.
"""

from __future__ import annotations

import sys

from distrl.config import ConfigError, RunStopped, parse_args
from launch.stop import Interrupted


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        from launch.run import run  # imports ray; --help and flag errors stay fast without it

        run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TimeoutError as e:  # a deadline was missed; the message names the actor
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RunStopped as e:  # an actor lost for good, or updates that keep failing
        print(f"error: {e}", file=sys.stderr)  # names the actor and the checkpoint to resume from
        return 1
    except Interrupted as e:  # SIGTERM/SIGINT: one line on where it stopped; 143/130 by convention
        print(e, file=sys.stderr, flush=True)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
