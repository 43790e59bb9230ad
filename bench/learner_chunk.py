"""One whole default step with the learner sampling its own chunk of 2 prompts against none, side by side.

Each side is a real run of `train_distributed.py` with the default flags (2 generators, 8 prompts
x 8 samples, the default token budget and backend); only `--learner_chunk_size` differs: 2 (the
default before auto) against 0 (what auto picks with vLLM generators on CPU). Both sides train on
the same 64 samples a step, so the ratio of step times is the ratio of samples per second. The
runs alternate `--repeats` times (a shared machine's speed drifts) and the first `--warmup` steps
are left out; the median per phase over all timed steps is reported (see bench/step_speed.py).

    python bench/learner_chunk.py [--steps 8] [--warmup 1] [--repeats 2] [--backend auto] [-- extra flags]

Last line: `chunk0/chunk2 step_s = X.XX`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_speed import PHASES, run  # noqa: E402

SIDES = {"chunk2": ["--learner_chunk_size", "2"], "chunk0": ["--learner_chunk_size", "0"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="steps per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="run the pair N times, alternating the sides")
    ap.add_argument("--backend", default="auto", help="the same generator backend on both sides")
    ap.add_argument("--model", default="", help="default: the embedded SmolLM2-135M")
    args, args.extra = ap.parse_known_args()
    args.extra = [a for a in args.extra if a != "--"]
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    steps: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            for side, flags in SIDES.items():  # one after the other: the two never share the cores
                timed, wall = run(flags, args, out, f"{side}-{r}")
                steps[side] += timed
                print(f"{side} (run {r + 1}/{args.repeats}): {args.steps} steps in {wall:.0f} s, "
                      "step_s " + " ".join(f"{m['step_s']:.1f}" for m in timed), flush=True)
    two, none = ({k: statistics.median(m[k] for m in steps[s]) for k in PHASES} for s in SIDES)
    print(f"median of steps {args.warmup + 1}..{args.steps} over {args.repeats} run(s) per side (seconds):")
    print(f"{'phase':<10}{'chunk 2':>10}{'chunk 0':>10}{'0/2':>8}")
    for k in PHASES:
        print(f"{k:<10}{two[k]:>10.2f}{none[k]:>10.2f}{none[k] / max(two[k], 1e-9):>8.2f}")
    print(f"chunk0/chunk2 step_s = {none['step_s'] / two['step_s']:.2f}")


if __name__ == "__main__":
    main()
