"""Learner memory and speed on a CUDA GPU: AdamW on the GPU vs CPUAdamW with and without
gradient offload, on a ~1B-parameter Llama built from a config (no download).

For a session that has the GPU machine: run once and report the card and the numbers. Each
configuration runs in its own process so peak GPU memory (torch.cuda.max_memory_allocated) is
its own. `--tiny` runs the same code on a small model (also on CPU) to check the script itself.

    python bench/gpu_learner.py            # on a GPU machine
    python bench/gpu_learner.py --tiny     # smoke test anywhere

Last line: `peak adamw/cpu_adamw+offload = X.XX`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    "adamw (GPU)": dict(name="adamw"),
    "cpu_adamw": dict(name="cpu_adamw"),
    "cpu_adamw + grad offload": dict(name="cpu_adamw", grad_offload=True),
}


def measure(name: str, tiny: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distrl.optim import clip_and_step, make_optimizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1000) if tiny else \
        dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=32000)  # ~1.1B parameters (TinyLlama's shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**size)).to(device=device, dtype=dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(lr=1e-5, weight_decay=0.0, max_grad_norm=1.0, params=params, **CONFIGS[name])
    ids = torch.randint(0, size["vocab_size"], (8, 512), device=device)

    def step() -> float:
        start = time.perf_counter()
        for micro in ids.split(2):
            model(input_ids=micro, labels=micro).loss.backward()
        clip_and_step(opt, params, 1.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # warm-up: optimizer state allocated
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = min(step() for _ in range(3))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"name": name, "params_b": sum(p.numel() for p in params) / 1e9, "peak_gib": peak, "step_s": seconds,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.tiny)))
        return
    rows = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--one", name] + (["--tiny"] if args.tiny else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not rows:
        return
    print(f"device: {rows[0]['device']}, model: {rows[0]['params_b']:.2f}B params, 8 x 512 tokens per step")
    for r in rows:
        print(f"{r['name']:26s} peak {r['peak_gib']:6.2f} GiB   {r['step_s']:6.2f} s/step")
    by = {r["name"]: r for r in rows}
    if len(by) == len(CONFIGS):
        print(f"peak adamw/cpu_adamw+offload = "
              f"{by['adamw (GPU)']['peak_gib'] / by['cpu_adamw + grad offload']['peak_gib']:.2f}")


if __name__ == "__main__":
    main()
