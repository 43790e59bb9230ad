"""One optimizer step on SmolLM2-135M-sized fp32 parameters: CPUAdamW against what a user would
otherwise run, side by side in one process; medians of several interleaved steps.

The baseline is a plain torch loop with clipping: `clip_grad_norm_` then torch's fused AdamW
(the fastest torch AdamW on CPU), then freeing the gradients. CPUAdamW's step is the same work:
taking the gradients, the global norm (clipping and the NaN guard read it), the fused update
(clipping applied inside the kernel through its grad_scale) and freeing the gradients.
DeepSpeedCPUAdam (its own AVX kernel) is timed too where `deepspeed` imports and its op builds;
otherwise a line says it was not measured and why. Also printed, for reference: fused AdamW
without clipping (less work than either) and CPUAdamW with forced separate masters (what a
GPU model gets: copies in and out). With the model on CPU in fp32 the parameters are their own
masters (no copies).

    python bench/cpu_adam.py [--steps 15]

Last line exactly: `cpu_adamw/fused = X.XX`: CPUAdamW's step time over `clip_grad_norm_` +
torch fused AdamW's (below 1: CPUAdamW is faster than the loop a user would write).
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
        deepspeed = DeepSpeedCPUAdam(params, lr=1e-5, adamw_mode=True)

        def deepspeed_step() -> None:  # it does not clip: clip as a user would, then step
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            deepspeed.step()
            deepspeed.zero_grad(set_to_none=True)

        contenders["clip + DeepSpeedCPUAdam"] = (params, deepspeed_step)
    except Exception as e:  # not installed, or its op does not build here: say so rather than pretend
        print(f"DeepSpeedCPUAdam: not measured ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")

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
        print(f"{name:26s} {m:.3f} s/step (median of {args.steps})")
    if "clip + DeepSpeedCPUAdam" in medians:
        print(f"cpu_adamw/deepspeed = {medians['CPUAdamW (no copies)'] / medians['clip + DeepSpeedCPUAdam']:.2f}")
    print("cpu_adamw/fused: CPUAdamW (no copies) over clip_grad_norm_ + torch fused AdamW")
    print(f"cpu_adamw/fused = {medians['CPUAdamW (no copies)'] / medians['clip_grad_norm_ + fused']:.2f}")


if __name__ == "__main__":
    main()
