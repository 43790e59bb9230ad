"""Data: the built-in split, local files with chosen fields, bad files, seeded serving order."""

import json

import pytest

from distrl.config import ConfigError, DataConfig
from distrl.data import PromptSampler, load_splits
from distrl.data.datasets import FILE_ROW
from distrl.data.tasks import FAMILIES, TUNING_FAMILIES, task_splits
from distrl.data.prompts import encode_prompt
from distrl.rewards.answers import numeric_reward


def test_arithmetic_split_is_fixed_disjoint_and_correct():
    splits = task_splits("arithmetic")
    train, val, test = splits["train"], splits["validation"], splits["test"]
    assert len(test) == len(val) == 300 and len(train) == 90 * 90 * 3 - 600
    assert task_splits("arithmetic") == splits  # same on every call and machine
    # The 50 prompts the first defaults were tuned on are validation rows, not test rows.
    assert val[0]["prompt"] == "What is 12 + 72? Answer with just the number."
    for row in test[:50]:
        a, op, b = row["prompt"].removeprefix("What is ").split("?")[0].split()
        assert int(row["answer"]) == eval(f"{a}{op}{b}")
    assert numeric_reward([test[0]["prompt"]], [f"= {test[0]['answer']}"], answer=[test[0]["answer"]]) == [1.0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_has_three_disjoint_fixed_splits_of_integer_answers(family):
    splits = task_splits(family)
    assert set(splits) == {"train", "validation", "test"}
    prompts = {name: {r["prompt"] for r in rows} for name, rows in splits.items()}
    assert len(prompts["validation"]) == len(prompts["test"]) == 300 and len(prompts["train"]) > 4000
    assert prompts["train"].isdisjoint(prompts["test"]) and prompts["train"].isdisjoint(prompts["validation"])
    assert prompts["validation"].isdisjoint(prompts["test"])
    assert all(int(r["answer"]) == float(r["answer"]) for rows in splits.values() for r in rows)
    splits["train"].clear()  # callers get copies
    assert len(task_splits(family)["train"]) > 4000


def test_families_differ_from_the_tuning_families():
    """A held-out family shares no prompt with a tuning family's rows: reported gains are on
    problems no default was chosen on."""
    tuned = {r["prompt"] for f in TUNING_FAMILIES for rows in task_splits(f).values() for r in rows}
    for family in set(FAMILIES) - set(TUNING_FAMILIES):
        assert tuned.isdisjoint(r["prompt"] for rows in task_splits(family).values() for r in rows)


def test_built_in_tasks_are_scored_on_the_chosen_split():
    _, test = load_splits(DataConfig(dataset="word", num_eval=300), seed=0)
    train, val = load_splits(DataConfig(dataset="word", eval_split="validation", num_eval=300), seed=0)
    assert test == task_splits("word")["test"] and val == task_splits("word")["validation"]
    assert train == task_splits("word")["train"]
    _, val = load_splits(DataConfig(dataset="arithmetic", eval_dataset="two_step", eval_split="validation"), seed=0)
    assert val == task_splits("two_step")["validation"][:50]


def test_unknown_split_for_a_file_names_the_fix(tmp_path):
    spec = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(10)])
    with pytest.raises(ConfigError, match="give --eval_dataset your validation file"):
        load_splits(DataConfig(dataset=spec, eval_split="validation"), seed=0)


def test_eval_split_is_capped_by_num_eval():
    train, held_out = load_splits(DataConfig(num_eval=7), seed=0)
    assert len(held_out) == 7


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_local_jsonl_with_custom_fields_and_seeded_eval_fraction(tmp_path):
    rows = [{"question": f"q{i}", "solution": str(i), "level": i % 3} for i in range(40)]
    spec = _write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = DataConfig(dataset=spec, prompt_field="question", answer_field="solution", eval_fraction=0.25)
    train, held = load_splits(cfg, seed=1)
    assert len(train) == 30 and len(held) == 10
    assert set(train[0]) == {"prompt", "answer", "level", FILE_ROW}  # FILE_ROW never reaches a reward
    assert all(r["prompt"] == f"q{r[FILE_ROW] - 1}" for r in train + held)  # the file's own 1-based row
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert load_splits(cfg, seed=1) == (train, held)
    assert load_splits(cfg, seed=2)[1] != held


def test_csv_and_eval_dataset(tmp_path):
    (tmp_path / "t.csv").write_text("prompt,answer\nWhat is 1+1?,2\nWhat is 2+2?,4\n")
    spec = str(tmp_path / "t.csv")
    train, held = load_splits(DataConfig(dataset=spec, eval_dataset=spec), seed=0)
    assert len(train) == 2 and held == train


def test_missing_field_names_the_fields_it_has(tmp_path):
    spec = _write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(ConfigError, match="no field 'prompt'; its fields are question, answer"):
        load_splits(DataConfig(dataset=spec), seed=0)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_splits(DataConfig(dataset=str(tmp_path / "nope.jsonl")), seed=0)


def test_sampler_is_seeded_and_covers_each_epoch():
    a, b = PromptSampler(10, seed=3), PromptSampler(10, seed=3)
    first = a.next_batch(10)
    assert sorted(first) == list(range(10)) and first == b.next_batch(10)
    second = a.next_batch(10)
    assert sorted(second) == list(range(10)) and second != first  # a new order each epoch
    assert PromptSampler(10, seed=4).next_batch(10) != first


def test_prompts_use_the_chat_template(tiny_model_dir):
    from distrl.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    ids = encode_prompt(tok, "What is 1 + 2?", "Be brief.")
    assert tok.decode(ids) == "s:Be brief.\nu:What is 1 + 2?\na:"
