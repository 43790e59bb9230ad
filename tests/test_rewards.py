"""Rewards: numeric answers, math-verify, format, user plug-ins and what `score` refuses."""

import pytest

from distrl.rewards import load_reward, score
from distrl.rewards.answers import extract_answer, format_reward, math_verify_reward, numeric_reward


def test_numeric_reward_takes_last_number_or_boxed():
    completions = ["12 + 35 = 47", "I think 46, no wait 47.", "\\boxed{47} is 12+35", "forty-seven", "47.0"]
    assert numeric_reward([""] * 5, completions, answer=["47"] * 5) == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_numeric_reward_handles_negatives_and_thousands():
    assert numeric_reward(["", ""], ["it is -25", "1,449"], answer=["-25", "1449"]) == [1.0, 1.0]
    assert numeric_reward([""], ["25"], answer=["-25"]) == [0.0]
    assert extract_answer("no digits here") is None


def test_numeric_close_gives_exact_answers_1_and_near_misses_partial_credit():
    f = load_reward("numeric_close")
    got = f([""] * 5, ["12 + 35 = 47", "= 50", "no number", "119", "-20"], answer=["47", "47", "47", "47", "-22"])
    assert got[0] == 1.0 and got[2] == 0.0
    assert got[1] == pytest.approx(0.5 / (1 + 3 / 4.7)) and got[4] == pytest.approx(0.5 / (1 + 2 / 2.2))
    assert 0 < got[3] < got[1] < 0.5  # farther is worth less, and never counts as correct


def test_numeric_close_pays_nothing_for_restating_the_prompt():
    """The exploit a model found: restate the question and stop. A number copied from the prompt
    is nearer the answer than many wrong sums, and used to earn up to 0.5."""
    f = load_reward("numeric_close")
    prompt = "Hana had 86 books and gave away 19. How many are left?"
    restated = ["Hana had 86 books and gave away 19.", "86 books, 19 given away", "She gave away 19"]
    assert f([prompt] * 3, restated, answer=["67"] * 3) == [0.0, 0.0, 0.0]
    assert f([prompt], ["86 - 19 = 65"], answer=["67"])[0] == pytest.approx(0.5 / (1 + 2 / 6.7))  # an attempt
    assert f([prompt], ["Hana had 86 books and gave away 19, so 67 are left"], answer=["67"]) == [1.0]
    assert f(["What is 7 * 1?"], ["7"], answer=["7"]) == [1.0]  # right is right, even in the prompt
    assert f(["What is 86-19?"], ["19"], answer=["67"]) == [0.0]  # "86-19" holds 19, not only -19


def test_numeric_digits_pays_for_computed_trailing_digits_not_for_copying_or_size():
    f = load_reward("numeric_digits")
    prompt = "What is 6279 + 1018? Answer with just the number."
    got = f([prompt] * 7, ["7297", "= 7397", "so 1297", "7290", "1018", "6279 + 1018 = 6279", "no number"],
            answer=["7297"] * 7)
    assert got[0] == 1.0  # exact
    assert got[1] == 0.5 * 2 / 4 and got[2] == 0.5 * 3 / 4  # units, tens (and hundreds) computed right
    assert got[3] == 0.0  # as near as a guess gets (numeric_close pays it ~0.45), but its units digit is wrong
    assert got[4:] == [0.0, 0.0, 0.0]  # restating the prompt's numbers, or no number at all
    assert f(["What is 12 - 40?"], ["28"], answer=["-28"]) == [0.0]  # the sign is part of the answer
    assert f([""], ["2.5"], answer=["1.5"]) == [0.0]  # no digit credit for non-integers
    assert max(f([""] * 2, ["997", "9297"], answer=["7297"] * 2)) < 0.5  # never counted as correct


def test_numeric_digits_pays_a_guess_of_the_right_size_only_chance():
    """A bare guess of the answer's size is what partial credit by distance paid for, and what
    taught the model to stop working out its sums. Here every 4-digit guess together earns what
    a random units digit earns: a tenth of the first digit's credit, and a little more."""
    f = load_reward("numeric_digits")
    guesses = [str(n) for n in range(1000, 10000)]
    mean = sum(f([""] * len(guesses), guesses, answer=["7297"] * len(guesses))) / len(guesses)
    assert mean < 1.2 * 0.1 * 0.5 / 4
    close = load_reward("numeric_close")
    assert sum(close([""] * len(guesses), guesses, answer=["7297"] * len(guesses))) / len(guesses) > 10 * mean


def test_repeats_prompt_flags_a_restated_question_not_an_answer():
    from distrl.rewards.answers import repeats_prompt

    prompt = "Hana had 86 books and gave away 19. How many books does Hana have left?"
    assert repeats_prompt(prompt, "Hana had 86 books and gave away 19.")
    assert repeats_prompt(prompt, "OK: how many books does hana have left? 67")
    assert not repeats_prompt(prompt, "86 - 19 = 67. Hana has 67 books left.")
    assert not repeats_prompt(prompt, "67")
    assert repeats_prompt("What is 2?", "what is 2")  # a prompt shorter than the span: all of it


def test_repeats_itself_flags_a_looping_answer_not_a_worked_one():
    from distrl.rewards.answers import repeats_itself

    # What gsm_format's answers degenerated into (bench/results/gsm_format, seed 1 at 7e8129c).
    looped = ("A bakery bakes 25 loaves every day and sells all but 2 of them, so it sells 25 * 2 = 50 "
              "loaves of bread.\n####\n####\n####\n####\n####")
    assert repeats_itself(looped)
    assert repeats_itself("It sells 19 * 7 = 144.\n#### \n#### \n####\n")  # whitespace ignored
    assert not repeats_itself("#### 23\n#### 23")  # twice is not a loop
    worked = "77 - 13 = 64\n64 - 10 = 54\n\n#### 54"
    assert not repeats_itself(worked) and not repeats_itself("54")


def test_math_verify_reward_checks_equivalence():
    got = math_verify_reward(["", "", ""], ["so $\\frac{1}{2}$", "0.5", "$\\frac{1}{3}$"], answer=["0.5", "1/2", "0.5"])
    assert got == [1.0, 1.0, 0.0]


def test_format_reward_wants_the_answer_last():
    assert format_reward(["", "", ""], ["the sum is 47", "47 is the sum", "\\boxed{3}."]) == [1.0, 0.0, 1.0]


def test_plugin_reward_loads_from_module_function():
    fn = load_reward("tests.helpers:ones_fraction")
    assert fn([""], ["1a1b"]) == [0.5]


@pytest.mark.parametrize("spec,msg", [("nope", "unknown reward"), ("tests.helpers:missing", "no function"),
                                      ("no_such_module_xyz:f", "cannot import")])
def test_bad_reward_specs_say_why(spec, msg):
    with pytest.raises(ValueError, match=msg):
        load_reward(spec)


@pytest.mark.parametrize("returned,msg", [(None, "returned None"), ([1.0], "returned 1 values"),
                                          ([1.0, float("nan")], "non-finite"), ([float("inf"), 0.0], "non-finite")])
def test_score_refuses_wrong_length_none_and_non_finite(returned, msg):
    def reward(prompts, completions, **_):
        return returned

    with pytest.raises(ValueError, match=msg):
        score(reward, ["p", "p"], ["a", "b"], {})


def test_score_passes_row_columns_to_the_reward():
    seen = {}

    def reward(prompts, completions, answer, level):
        seen.update(answer=answer, level=level)
        return [0.0] * len(completions)

    score(reward, ["p"], ["c"], {"answer": ["1"], "level": [3]})
    assert seen == {"answer": ["1"], "level": [3]}
