"""Bad numbers and bad inputs: NaN weights, flat or infinite rewards, empty and truncated
completions, over-long prompts, malformed rows, a tokenizer that differs on one actor."""

import json
import math
import subprocess
import sys

import pytest
import torch

from actors.generation_actor import GenerationActor
from distrl.algorithms import compute_advantages
from distrl.config import ConfigError, ModelConfig
from distrl.generation import Rollout, SamplingParams, WeightsMissing
from tests.faults.runs import ROOT, write_rows
from tests.test_learner import _pair, _rollouts


def _cli(*args):
    return subprocess.run([sys.executable, "train_distributed.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_a_nan_weight_skips_the_update_and_is_never_checkpointed(tiny_model_dir, tmp_path):
    learner, generator = _pair(tiny_model_dir)
    rollouts, adv = _rollouts(generator, learner, seed=0)
    weight = learner.params["model.layers.0.mlp.up_proj.weight"]
    with torch.no_grad():
        weight[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in learner.params.items()}
    metrics, packed = learner.step(rollouts, adv)
    assert metrics["skipped_update"] == 1.0 and not math.isfinite(metrics["grad_norm"])
    assert learner.policy_version == 0 and packed.policy_version == 0
    for n, p in learner.params.items():  # nothing moved (NaN == NaN here)
        assert torch.equal(p.nan_to_num(7.0), before[n].nan_to_num(7.0)), n
    with pytest.raises(ValueError, match="non-finite values in model.layers.0.mlp.up_proj.weight.*not checkpointed"):
        learner.save_checkpoint(str(tmp_path))


def test_all_equal_and_infinite_rewards():
    flat = compute_advantages("grpo", torch.full((2, 4), 0.7) + torch.tensor([0.0, 1e-7, 0.0, 0.0]))
    assert torch.equal(flat, torch.zeros(2, 4))  # fp noise is not a signal: no 4000x blow-up
    with pytest.raises(ValueError, match="finite"):
        compute_advantages("grpo", torch.tensor([[1.0, float("inf"), 0.0, 0.0]]))


def test_empty_and_truncated_completions_train_without_nan(tiny_model_dir):
    learner, generator = _pair(tiny_model_dir)
    prompt = [5, 6, 7]
    (group,) = generator.generate([prompt], SamplingParams(n=2, max_new_tokens=2, seed=0))
    truncated = group[0]
    assert truncated.finish_reason == "length" and len(truncated.completion_ids) == 2
    only_eos = Rollout(prompt, [learner.tokenizer.eos_token_id], [-3.0], "stop", 0)
    empty = Rollout(prompt, [], [], "stop", 0)  # a backend that returned nothing at all
    metrics, _ = learner.step([truncated, only_eos, empty], [1.0, -1.0, 0.5])
    assert learner.policy_version == 1
    assert all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm", "logprob_gap"))
    assert metrics["skipped_update"] == 0.0


def test_a_restarted_generator_refuses_to_sample_without_weights(tiny_model_dir):
    generator = GenerationActor(tiny_model_dir, ModelConfig(), torch_threads=1)
    for sampling in (SamplingParams(n=2, seed=0), SamplingParams(greedy=True)):
        with pytest.raises(WeightsMissing):
            generator.generate([[5, 6]], sampling)


def test_a_tokenizer_that_differs_on_one_actor_is_refused(tiny_model_dir, tmp_path):
    from launch.preflight import check_tokenizers
    from tests.conftest import build_tiny_model

    other = build_tiny_model(str(tmp_path / "other"))
    with open(f"{other}/tokenizer_config.json") as f:
        config = json.load(f)
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with open(f"{other}/tokenizer_config.json", "w") as f:
        json.dump(config, f)
    (tmp_path / "other" / "chat_template.jinja").unlink(missing_ok=True)
    same = GenerationActor(tiny_model_dir, ModelConfig(), torch_threads=1).ready()
    odd = GenerationActor(other, ModelConfig(), torch_threads=1).ready()
    from distrl.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    check_tokenizers(tokenizer, {"distrl-generator-0": same})
    with pytest.raises(ConfigError, match="^distrl-generator-1 loaded a different tokenizer"):
        check_tokenizers(tokenizer, {"distrl-generator-0": same, "distrl-generator-1": odd})


def test_a_malformed_dataset_row_is_reported_with_its_number_in_the_file(tiny_model_dir, tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "", "answer": "2"}, {"prompt": "c", "answer": None},
            {"prompt": "d", "answer": "4"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _cli("--model", tiny_model_dir, "--dataset", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: dataset '{path}': 'prompt' missing or empty in 1 rows (row 2); 'answer' missing or empty "
        "in 1 rows (row 3) (rows count from 1 in the file's order): fix or remove those rows")


def test_over_long_prompts_are_refused_up_front_naming_their_rows_as_the_file_does(tiny_model_dir, tmp_path):
    """Rows 5 and 12 of the file (lines 5 and 12 of the .jsonl), also after the shuffled
    train/eval split has moved them."""
    prompts = [f"short {i}" for i in range(30)]
    prompts[4] = prompts[11] = "x" * 200
    path = write_rows(tmp_path / "rows.jsonl", prompts)
    proc = _cli("--model", tiny_model_dir, "--dataset", path, "--max_prompt_tokens", "64",
                "--long_prompts", "error", "--eval_fraction", "0.1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: 2 training prompts are longer than --max_prompt_tokens 64 (rows 5, 12 of {path}, counting from 1 "
        "in its order): raise the limit, shorten them, or --long_prompts drop")


def test_a_pickle_checkpoint_is_refused_before_anything_starts(tiny_model_dir, tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "step-000002"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    torch.save({"evil": 1}, folder / "optimizer.pt")
    proc = _cli("--model", tiny_model_dir, "--resume", str(folder))
    assert proc.returncode == 2
    assert "holds 'optimizer.pt', which is not safetensors or JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_run_stops_after_max_bad_steps_skipped_updates_in_a_row(tmp_path):
    from distrl.config import RunStopped
    from launch.guards import count_bad_update

    root = str(tmp_path / "checkpoints")
    in_a_row = 0
    for skipped in (True, True, False, True, True):  # a good update resets the count
        in_a_row = count_bad_update(in_a_row, skipped, 3, 1, 5, root)
    assert in_a_row == 2
    with pytest.raises(RunStopped, match=r"^3 updates in a row were skipped .* policy version 5; no "
                                         r"checkpoint was written$"):
        count_bad_update(in_a_row, True, 3, 6, 5, root)
