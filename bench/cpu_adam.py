"""One optimizer step on SmolLM2-135M-sized fp32 parameters: CPUAdamW vs torch's fused AdamW
(vs DeepSpeedCPUAdam when importable), side by side in one process; medians of several steps.

CPUAdamW's step here is the whole thing a learner pays for: taking the gradients, the global
norm (clipping and the NaN guard read it), the fused update and zeroing. With the model on CPU
in fp32 the parameters are their own masters (no copies). A second line times forced separate
masters (what a GPU model gets: copies in and out), for reference.

    python bench/cpu_adam.py [--steps 7]

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


def time_steps(params, grads, step, steps: int) -> float:
    times = []
    for _ in range(steps):
        for p, g in zip(params, grads):
            p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step allocates the moments


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    shapes = smollm2_shapes()
    grads = [torch.randn(s) * 1e-3 for s in shapes]
    print(f"params: {sum(g.numel() for g in grads) / 1e6:.1f}M fp32, threads {torch.get_num_threads()}")

    params = make_params()
    fused = torch.optim.AdamW(params, lr=1e-5, fused=True)

    def fused_step() -> None:
        fused.step()
        fused.zero_grad(set_to_none=False)

    t_fused = time_steps(params, grads, fused_step, args.steps)
    print(f"torch fused AdamW      {t_fused:.3f} s/step")

    params = make_params()
    cpu = CPUAdamW(params, lr=1e-5, max_grad_norm=1.0)
    t_cpu = time_steps(params, grads, cpu.step, args.steps)
    print(f"CPUAdamW (no copies)   {t_cpu:.3f} s/step")

    params = make_params()
    copies = CPUAdamW(params, lr=1e-5, max_grad_norm=1.0, master_copy=True)
    t_copies = time_steps(params, grads, copies.step, args.steps)
    print(f"CPUAdamW (masters)     {t_copies:.3f} s/step  (gradients and weights copied in and out)")

    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        params = make_params()
        ds = DeepSpeedCPUAdam(params, lr=1e-5)
        print(f"DeepSpeedCPUAdam       {time_steps(params, grads, ds.step, args.steps):.3f} s/step")
    except Exception as e:  # not installed here: say so rather than pretend
        print(f"DeepSpeedCPUAdam       not measured ({type(e).__name__})")
    print(f"cpu_adamw/fused = {t_cpu / t_fused:.2f}")


if __name__ == "__main__":
    main()
