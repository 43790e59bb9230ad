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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_speed import alternate, parser, print_phases  # noqa: E402


def main() -> None:
    ap = parser(__doc__, steps=8, repeats=2)
    args, args.extra = ap.parse_known_args()
    args.extra = [a for a in args.extra if a != "--"]
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    medians = alternate({"chunk2": ["--learner_chunk_size", "2"], "chunk0": ["--learner_chunk_size", "0"]}, args)
    print_phases(medians["chunk2"], medians["chunk0"], ("chunk 2", "chunk 0", "0/2"))
    print(f"chunk0/chunk2 step_s = {medians['chunk0']['step_s'] / medians['chunk2']['step_s']:.2f}")


if __name__ == "__main__":
    main()
