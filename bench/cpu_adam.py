"""One optimizer step on SmolLM2-135M-sized fp32 parameters: CPUAdamW vs torch's fused AdamW
(vs DeepSpeedCPUAdam when importable), side by side in one process; medians of several steps.

CPUAdamW's step here is the whole thing a learner pays for: taking the gradients, the global
norm (clipping and the NaN guard read it), the fused update (clipping applied inside the kernel
through its grad_scale) and freeing the gradients. `clip_grad_norm_ + fused` is what a plain
torch loop with clipping runs. With the model on CPU
in fp32 the parameters are their own masters (no copies). A second line times forced separate
masters (what a GPU model gets: copies in and out), for reference.

    python bench/cpu_adam.py [--steps 15]

Last line exactly: `cpu_adamw/fused = X.XX`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from distrl.optim import CPUAdamW  # noqa: E402

# SmolLM2-135M's parameter shapes (tied embedding counted once): 134.5M fp32 values.
HIDDEN, INTER, LAYERS, VOCAB, KV = 576, 1536, 30, 49152, 192


def smollm2_shapes() -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = [(VOCAB, HIDDEN), (HIDDEN,)]
    for _ in range(LAYERS):
        shapes += [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN),
                   (INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER), (HIDDEN,), (HIDDEN,)]
    return shapes


def make_params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s) * 0.02) for s in smollm2_shapes()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    shapes = smollm2_shapes()
    grads = [torch.randn(s) * 1e-3 for s in shapes]
    print(f"params: {sum(g.numel() for g in grads) / 1e6:.1f}M fp32, threads {torch.get_num_threads()}")

    contenders = {}
    params = make_params()
    fused = torch.optim.AdamW(params, lr=1e-5, fused=True)

    def fused_step() -> None:
        fused.step()
        fused.zero_grad(set_to_none=True)  # as CPUAdamW and the learner do

    contenders["torch fused AdamW"] = (params, fused_step)
    clip_params = make_params()
    clipped = torch.optim.AdamW(clip_params, lr=1e-5, fused=True)

    def clipped_step() -> None:  # what a training loop with clipping actually runs
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
        clipped.step()
        clipped.zero_grad(set_to_none=True)

    contenders["clip_grad_norm_ + fused"] = (clip_params, clipped_step)
    params = make_params()
    contenders["CPUAdamW (no copies)"] = (params, CPUAdamW(params, lr=1e-5, max_grad_norm=1.0).step)
    params = make_params()
    contenders["CPUAdamW (masters)"] = (params, CPUAdamW(params, lr=1e-5, max_grad_norm=1.0, master_copy=True).step)
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        params = make_params()
        contenders["DeepSpeedCPUAdam"] = (params, DeepSpeedCPUAdam(params, lr=1e-5).step)
    except Exception as e:  # not installed here: say so rather than pretend
        print(f"DeepSpeedCPUAdam: not measured ({type(e).__name__})")

    # Interleaved: each round times every contender once, so drift in the machine's memory
    # bandwidth hits all of them alike. The first round allocates the moments and is dropped.
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.steps + 1):
        for name, (params, step) in contenders.items():
            for p, g in zip(params, grads):
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:24s} {m:.3f} s/step (median of {args.steps})")
    print(f"cpu_adamw/fused = {medians['CPUAdamW (no copies)'] / medians['torch fused AdamW']:.2f}")


if __name__ == "__main__":
    main()
