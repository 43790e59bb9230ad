"""bf16 compute with nothing lost: the auto choice, fp32 masters, the sync check that still works
in bf16, the on-policy mismatch correction, and the per-dtype logprob_gap limit."""

import math

import pytest
import torch

from actors.generation_actor import GenerationActor
from distrl.config import AlgoConfig, ConfigError, ModelConfig, RunStopped, parse_args
from distrl.data.prompts import encode_prompt
from distrl.generation import SamplingParams
from distrl.optim import CPUAdamW, make_optimizer
from distrl.precision import choose_dtype
from distrl.weights import WeightSyncError, same_fingerprint
from launch.guards import count_gap_breach, split_gap
from learners.learner_actor import LearnerActor

AMX = {"fpu", "avx512f", "amx_tile", "amx_bf16"}
AVX512_BF16 = {"fpu", "avx512f", "avx512_bf16"}
NO_BF16 = {"fpu", "avx2", "avx512f"}


def test_auto_is_bf16_only_where_the_cpu_has_bf16_matrix_units():
    assert choose_dtype("auto", "cpu", flags=AMX)[0] == torch.bfloat16
    assert choose_dtype("auto", "cpu", flags=AVX512_BF16)[0] == torch.bfloat16
    dtype, reason = choose_dtype("auto", "cpu", flags=NO_BF16)
    assert dtype == torch.float32 and "no bf16 matrix units" in reason
    assert choose_dtype("auto", "cpu", lora=True, flags=NO_BF16)[0] == torch.float32
    # Full weights stay fp32 where the optimizer would step them in bf16; LoRA adapters are fp32 anyway.
    dtype, reason = choose_dtype("auto", "cpu", masters=False, flags=AMX)
    assert dtype == torch.float32 and "without fp32 masters" in reason
    assert choose_dtype("auto", "cpu", lora=True, masters=False, flags=AMX)[0] == torch.bfloat16
    assert choose_dtype("float32", "cpu", flags=AMX) == (torch.float32, "set by --dtype")
    assert choose_dtype("auto", "cuda", lora=True)[0] == torch.bfloat16
    assert choose_dtype("auto", "cuda", lora=False)[0] == torch.float32


@pytest.mark.parametrize("flags, argv, expected", [
    (AMX, [], "bfloat16"), (NO_BF16, [], "float32"), (AMX, ["--optimizer", "adamw"], "float32"),
    (AMX, ["--lora_rank", "16"], "bfloat16"), (NO_BF16, ["--dtype", "bfloat16"], "bfloat16"),
])
def test_the_run_prints_its_dtype_choice_once(monkeypatch, capsys, flags, argv, expected):
    import distrl.precision
    from launch.preflight import choose_run_dtype

    monkeypatch.setattr(distrl.precision, "cpu_flags", lambda: set(flags))  # the CPU, injected
    assert choose_run_dtype(parse_args(argv)) == expected
    out = capsys.readouterr().out
    assert out.startswith(f"dtype auto: {expected} (") if "--dtype" not in argv else out == ""


def test_auto_optimizer_gives_bf16_weights_fp32_masters():
    bf16 = [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))]
    fp32 = [torch.nn.Parameter(torch.ones(4))]
    assert isinstance(make_optimizer("auto", bf16, 1e-3, 0.0, 1.0), CPUAdamW)
    assert isinstance(make_optimizer("auto", fp32, 1e-3, 0.0, 1.0), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="use --optimizer cpu_adamw"):
        parse_args(["--dtype", "bfloat16", "--optimizer", "adamw"])


def test_fp32_masters_keep_the_updates_pure_bf16_drops():
    """50 updates of 1e-6 (relative to weights of 1.0, whose bf16 spacing is 2^-7 = 7.8e-3)."""
    pure = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    mixed = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    plain_opt = torch.optim.AdamW([pure], lr=1e-6, weight_decay=0.0)
    master_opt = CPUAdamW([mixed], lr=1e-6, max_grad_norm=0.0, dither_seed=None)  # masters at 1.0 exactly
    for _ in range(50):
        for p in (pure, mixed):
            p.grad = torch.ones_like(p)  # Adam's step is lr * sign: exactly -1e-6 each
        plain_opt.step()
        master_opt.step()
    assert torch.equal(pure, torch.ones_like(pure))  # every update rounded away
    moved = 1.0 - master_opt.masters[0]
    # all 50 kept (each rounded to fp32 near 1.0, whose spacing is 6e-8: within a few percent)
    assert torch.allclose(moved, torch.full_like(moved, 50e-6), rtol=3e-2)
    assert torch.equal(mixed, master_opt.masters[0].to(torch.bfloat16))  # compute copy = rounded masters


def _bf16_pair(model_dir, lora_rank):
    cfg = ModelConfig(lora_rank=lora_rank, lora_alpha=2 * lora_rank or 32, dtype="bfloat16")
    learner = LearnerActor(model_dir, cfg, AlgoConfig(), temperature=1.0, torch_threads=1)
    assert learner.algo.lr == 1e-5  # the default
    generator = GenerationActor(model_dir, cfg, torch_threads=1)
    return learner, generator


def _one_step(learner, generator, seed=0):
    prompts = [encode_prompt(learner.tokenizer, q) for q in ("What is 1+2?", "Hi 7*8?")]
    rollouts = [r for g in generator.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=seed)) for r in g]
    return learner.step(rollouts, [1.0 if i % 2 else -1.0 for i in range(len(rollouts))])


def test_a_bf16_learner_dithers_its_masters_only_when_asked(tiny_model_dir):
    """With --dither_masters every master of a bf16 weight sits off its cell's centre, and still
    rounds to the very weight the model computes with; by default they are the rounded weights."""
    for dither in (True, False):
        algo = AlgoConfig(dither_masters=True) if dither else AlgoConfig()
        learner = LearnerActor(tiny_model_dir, ModelConfig(dtype="bfloat16"), algo, temperature=1.0, torch_threads=1)
        pairs = list(zip(learner.params.values(), learner.optimizer.masters))
        assert pairs and all(p.dtype == torch.bfloat16 and torch.equal(m.to(p.dtype), p.detach()) for p, m in pairs)
        nonzero = sum(int((p != 0).sum()) for p, _ in pairs)
        off_centre = sum(int((m != p.detach().float()).sum()) for p, m in pairs)
        assert off_centre > 0.99 * nonzero if dither else off_centre == 0


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_a_sync_that_loads_nothing_is_caught_in_bf16(tiny_model_dir, monkeypatch, lora_rank):
    import distrl.generation.hf as hf

    learner, generator = _bf16_pair(tiny_model_dir, lora_rank)
    assert generator.load_weights(learner.publish()) == 0
    metrics, weights = _one_step(learner, generator)
    monkeypatch.setattr(hf, "load_packed", lambda params, packed: len(packed.index))  # takes nothing
    with pytest.raises(WeightSyncError, match="policy version 1: this generator holds other weights"):
        generator.load_weights(weights)
    with pytest.raises(Exception, match="before any weights were loaded"):
        generator.generate([[5, 6]], SamplingParams(n=1, max_new_tokens=2))  # nothing sampled from them
    monkeypatch.undo()
    assert generator.load_weights(weights) == 1  # the real load passes the same check


def test_a_bf16_model_is_saved_as_the_weights_the_generators_ran(tiny_model_dir, tmp_path):
    """The saved model is the policy that was trained: the bf16 weights every generator sampled
    from and every gradient was taken at, not CPUAdamW's fp32 masters (after a few small steps
    the masters are a different model: below the bf16 spacing, their drift never reached the
    policy)."""
    from safetensors.torch import load_file

    learner, generator = _bf16_pair(tiny_model_dir, 0)
    generator.load_weights(learner.publish())
    _, weights = _one_step(learner, generator)
    generator.load_weights(weights)
    saved = load_file(learner.save(str(tmp_path / "final")) + "/model.safetensors")
    ran = dict(generator.backend.model.named_parameters())
    assert ran and all(torch.equal(saved[n], p.detach()) for n, p in ran.items() if n in saved)
    masters = dict(zip(learner.params, learner.optimizer.masters))
    assert any(not torch.equal(saved[n].float(), m) for n, m in masters.items())  # not the masters


def test_a_tied_head_is_saved_once_and_reloads_tied(tmp_path):
    """SmolLM2 ties lm_head to embed_tokens: the saved model reloads tied, with the weights the
    learner computed with."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import build_tiny_model

    model_dir = build_tiny_model(str(tmp_path / "tied"), tie_word_embeddings=True)
    learner, generator = _bf16_pair(model_dir, 0)
    generator.load_weights(learner.publish())
    _one_step(learner, generator)
    trained = learner.params["model.embed_tokens.weight"].detach().float()
    reloaded = AutoModelForCausalLM.from_pretrained(learner.save(str(tmp_path / "final")), dtype=torch.float32)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded.model.embed_tokens.weight, trained)


def test_one_default_bf16_step_changes_the_fingerprint(tiny_model_dir):
    """What makes the check able to fail: the new version's fingerprint is not the old one's."""
    learner, generator = _bf16_pair(tiny_model_dir, 0)
    before = learner.publish().fingerprint
    generator.load_weights(learner.publish())
    _, weights = _one_step(learner, generator)
    assert not same_fingerprint(before, weights.fingerprint)


def test_mismatch_correction_is_a_no_op_in_fp32_with_hf(tiny_model_dir):
    cfg = ModelConfig(dtype="float32")
    generator = GenerationActor(tiny_model_dir, cfg, torch_threads=1)
    plain = LearnerActor(tiny_model_dir, cfg, AlgoConfig(lr=1e-2), temperature=1.0, torch_threads=1)
    corrected = LearnerActor(tiny_model_dir, cfg, AlgoConfig(lr=1e-2), temperature=1.0, torch_threads=1,
                             correct_mismatch=True)
    generator.load_weights(plain.publish())
    prompts = [encode_prompt(plain.tokenizer, q) for q in ("What is 1+2?", "Hi 7*8?")]
    rollouts = [r for g in generator.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=0)) for r in g]
    adv = [1.0 if i % 2 else -1.0 for i in range(len(rollouts))]
    start = {n: p.detach().clone() for n, p in plain.params.items()}
    a, _ = plain.step(rollouts, adv)
    b, _ = corrected.step(rollouts, adv)
    assert "importance_weight" not in a and b["importance_weight"] == pytest.approx(1.0, abs=1e-5)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["clip_frac"] == a["clip_frac"] == 0.0
    moved = max((p - start[n]).abs().max().item() for n, p in plain.params.items())
    diff = max((p - corrected.params[n]).abs().max().item() for n, p in plain.params.items())
    assert moved > 1e-3 and diff < 1e-3 * moved


def test_mismatch_correction_turns_on_where_the_numerics_differ():
    assert parse_args(["--dtype", "bfloat16"]).corrects_mismatch
    assert parse_args(["--dtype", "float32", "--backend", "vllm"]).corrects_mismatch
    assert not parse_args(["--dtype", "float32", "--backend", "hf"]).corrects_mismatch
    assert not parse_args(["--dtype", "bfloat16", "--mismatch_correction", "off"]).corrects_mismatch
    assert parse_args(["--dtype", "float32", "--backend", "hf", "--mismatch_correction", "on"]).corrects_mismatch


def test_a_gap_above_the_limit_warns_naming_the_actor_and_version_then_stops_the_run(capsys):
    fine = {"distrl-learner": 0.01, "distrl-generator-0": 0.05}
    assert count_gap_breach(0, fine, 0.1, 3, step=1, version=0) == 0 and capsys.readouterr().err == ""
    assert count_gap_breach(0, {**fine, "distrl-generator-1": 0.2}, 0.1, 3, step=2, version=1) == 1
    assert "step 2: logprob_gap 2.00e-01 of distrl-generator-1 at policy version 1 is above 0.1" in capsys.readouterr().err
    assert count_gap_breach(1, fine, 0.1, 3, step=3, version=2) == 0  # one good step resets the count
    with pytest.raises(RunStopped, match="above 0.1 for 3 steps in a row .last: distrl-generator-0, 3.00e-01 at "
                                         "policy version 3"):
        count_gap_breach(2, {"distrl-generator-0": 0.3}, 0.1, 3, step=4, version=3)
    # --on_logprob_gap warn: the same warnings, and the run goes on
    assert count_gap_breach(2, {"distrl-generator-0": 0.3}, 0.1, 3, step=4, version=3, stop=False) == 3
    assert "step 4: logprob_gap 3.00e-01 of distrl-generator-0" in capsys.readouterr().err


def test_the_gap_is_split_by_who_sampled_and_stale_rollouts_apart():
    """The number users watch is the generators' against the learner: the learner's own chunk
    (the learner against itself) and rollouts of older versions (lag) are reported apart."""
    names = ["distrl-learner", "distrl-generator-0", "distrl-generator-1"]
    train = {"loss": 0.5, "gap_sum/0": 0.0, "gap_tokens/0": 10.0, "gap_sum/1": 2.0, "gap_tokens/1": 10.0,
             "gap_sum/2": 1.0, "gap_tokens/2": 30.0, "gap_sum/stale": 6.0, "gap_tokens/stale": 20.0}
    gaps, by_actor = split_gap(train, names)
    assert gaps == {"logprob_gap": pytest.approx(3.0 / 40), "logprob_gap_learner": 0.0,
                    "logprob_gap_stale": pytest.approx(0.3)}
    assert by_actor == {"distrl-learner": 0.0, "distrl-generator-0": 0.2, "distrl-generator-1": pytest.approx(1 / 30)}
    assert train == {"loss": 0.5}  # the sums do not reach metrics.jsonl
    gaps, by_actor = split_gap({"gap_sum/0": 1.0, "gap_tokens/0": 4.0}, names)  # no generator: nothing to prove
    assert math.isnan(gaps["logprob_gap"]) and gaps["logprob_gap_learner"] == 0.25 and by_actor == {"distrl-learner": 0.25}


def test_compiled_bf16_training_kernels_keep_the_update_and_generation(tiny_model_dir):
    """--compile on (auto turns it on for >= 20M parameters): the same update as the plain
    forward up to bf16 rounding, and the learner's own generation still runs the plain layers."""
    from tests.test_learner_memory import _fixed_rollouts

    def one_step(compile):
        cfg = ModelConfig(dtype="bfloat16", compile=compile)
        learner = LearnerActor(tiny_model_dir, cfg, AlgoConfig(lr=1e-2), temperature=1.0, torch_threads=1)
        start = {n: p.detach().float().clone() for n, p in learner.params.items()}
        metrics, _ = learner.step(_fixed_rollouts(), [(-1.0) ** i for i in range(8)])
        return learner, metrics, {n: p.detach().float() - start[n] for n, p in learner.params.items()}

    plain_learner, plain, plain_delta = one_step("off")
    learner, compiled, delta = one_step("on")
    assert plain_learner.kernels.layers == [] and len(learner.kernels.layers) == 2
    assert compiled["loss"] == pytest.approx(plain["loss"], rel=2e-2, abs=1e-3)
    assert compiled["grad_norm"] == pytest.approx(plain["grad_norm"], rel=5e-2)
    # Adam turns a tiny gradient difference on a near-zero gradient into a whole lr step, so
    # the updates are compared on average: the same direction almost everywhere.
    moved = torch.cat([d.flatten() for d in plain_delta.values()])
    other = torch.cat([delta[n].flatten() for n in plain_delta])
    print(f"compiled vs plain bf16 update: mean |difference| {(other - moved).abs().mean():.2e}, "
          f"mean |update| {moved.abs().mean():.2e}")
    assert moved.abs().mean() > 1e-3 and (other - moved).abs().mean() < 0.2 * moved.abs().mean()
    assert all("forward" not in vars(layer) for layer in learner.kernels.layers)  # plain layers again
    assert learner.model.config._attn_implementation == plain_learner.model.config._attn_implementation
    groups = learner.generate([[5, 6, 7]], SamplingParams(n=2, max_new_tokens=4, seed=0))
    assert len(groups[0]) == 2


def test_the_default_run_computes_in_the_cpus_dtype_end_to_end(tiny_model_dir, tmp_path):
    """The CLI with --dtype auto on this machine: the choice printed, recorded, and every step's
    gap within that dtype's limit, with the mismatch correction on wherever the dtype is not fp32."""
    import json

    from distrl.precision import GAP_LIMITS, choose_dtype, dtype_name
    from tests.test_system import read_metrics, tiny_run_args, train

    expected = dtype_name(choose_dtype("auto", "cpu")[0])
    proc = train(tiny_run_args(tiny_model_dir, "--dtype", "auto", "--backend", "hf"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"dtype auto: {expected} (" in proc.stdout
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["model"]["dtype"] == expected  # every actor got the concrete dtype
    steps = read_metrics(tmp_path)[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]
    assert all(m["logprob_gap"] < GAP_LIMITS[expected] for m in steps), [m["logprob_gap"] for m in steps]
    assert all(("importance_weight" in m) == (expected != "float32") for m in steps)


def test_masters_start_anywhere_in_their_cell_so_a_small_update_reaches_bf16_weights_from_the_first_step():
    """An Adam step of a tenth of the bf16 spacing (weights in [1, 2): spacing 2^-7). Masters at
    the cell's centre (the rounded weights) round it away: the policy does not move. Dithered
    masters cross the cell's edge in about a tenth of the weights: on average the bf16 weights
    move by the update, from the first step. The rounded weights before the step are unchanged."""
    g = torch.Generator().manual_seed(0)
    start = (1.0 + torch.rand(20_000, generator=g)).to(torch.bfloat16)
    spacing, lr = 2.0 ** -7, 2.0 ** -7 / 10
    moved = {}
    for seed in (None, 0):
        w = torch.nn.Parameter(start.clone())
        opt = CPUAdamW([w], lr=lr, max_grad_norm=0.0, dither_seed=seed)
        assert torch.equal(w.detach(), start)  # the masters' place in the cell changes no weight
        offset = (opt.masters[0] - start.float()) / spacing
        if seed is None:
            assert torch.equal(offset, torch.zeros_like(offset))
        else:  # uniform over the cell (inside its edges): |offset| averages a quarter of the spacing
            assert float(offset.abs().max()) <= 0.5 and abs(float(offset.abs().mean()) - 0.25) < 0.01
        w.grad = -torch.ones_like(w)  # Adam's first step is lr * sign: every master moves up by lr
        opt.step()
        moved[seed] = float((w.detach().float() - start.float()).mean())
    assert moved[None] == 0.0  # centred masters: the update is rounded away everywhere
    assert abs(moved[0] - lr) < 0.1 * lr  # dithered: the bf16 weights moved by the update on average
