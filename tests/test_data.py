"""Data: the built-in split, local files with chosen fields, bad files, seeded serving order."""

import json

import pytest

from distrl.config import ConfigError, DataConfig
from distrl.data import PromptSampler, load_splits
from distrl.data.arithmetic import arithmetic_splits
from distrl.data.prompts import encode_prompt
from distrl.rewards.answers import numeric_reward


def test_arithmetic_split_is_fixed_disjoint_and_correct():
    train, test = arithmetic_splits()
    assert len(test) == 500 and len(train) == 90 * 90 * 3 - 500
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test})
    assert arithmetic_splits()[1] == test  # same on every call and machine
    for row in test[:50]:
        a, op, b = row["prompt"].removeprefix("What is ").split("?")[0].split()
        assert int(row["answer"]) == eval(f"{a}{op}{b}")
    assert numeric_reward([test[0]["prompt"]], [f"= {test[0]['answer']}"], answer=[test[0]["answer"]]) == [1.0]


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
    assert set(train[0]) == {"prompt", "answer", "level"}
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
