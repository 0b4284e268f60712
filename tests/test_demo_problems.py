"""The demo's procedural problems: deterministic, correct answers (recomputed here from the
problem text, independently of the generators), gradable worked solutions, clean strategies
and disjoint train/eval splits."""

from __future__ import annotations

import re

import pytest

from sgpo.arithmetic import (DEFAULT_FAMILIES, FAMILIES, check_no_leak, family_strategy, make_eval_problems,
                                make_problems, split_of)
from sgpo.rewards import extract_boxed, score
from sgpo.schema import validate_strategy

ALL = sorted(FAMILIES)
# conversion factors written out independently of the generator's table
PER_LARGER_UNIT = {("minutes", "hours"): 60, ("seconds", "minutes"): 60, ("hours", "days"): 24,
                   ("days", "weeks"): 7, ("centimeters", "meters"): 100, ("eggs", "dozens"): 12}


def expected_answer(family: str, problem: str) -> int:
    """Solve the problem from its text alone."""
    nums = [int(x) for x in re.findall(r"\d+", problem)]
    if family in ("addition", "subtraction", "multiplication"):
        a, op, b = re.fullmatch(r"What is (\d+) (\+|-|times) (\d+)\?", problem).groups()
        return {"+": int(a) + int(b), "-": int(a) - int(b), "times": int(a) * int(b)}[op]
    if family == "add_items":
        assert re.search(r"has \d+ \w+ and gets \d+ more\.", problem)
        return nums[0] + nums[1]
    if family == "take_away":
        assert re.search(r"has \d+ \w+ and gives away \d+\.", problem)
        return nums[0] - nums[1]
    if family == "groups":
        assert re.search(r"There are \d+ \w+ with \d+ \w+ in each", problem)
        return nums[0] * nums[1]
    if family == "unit_conversion":
        small, q, big = re.fullmatch(r"How many (\w+) are there in (\d+) (\w+)\?", problem).groups()
        return int(q) * PER_LARGER_UNIT[(small, big)]
    if family == "linear":
        b, c = map(int, re.fullmatch(r"Solve for x: x \+ (\d+) = (\d+)\.", problem).groups())
        return c - b
    if family == "square_perimeter":
        return 4 * nums[0]
    raise AssertionError(f"no independent solver for family '{family}'")


def arithmetic_key(rec: dict) -> tuple:
    """What decides the answer: the numbers (and, for conversions, the units) of the problem."""
    words = re.findall(r"in \d+ (\w+)\?", rec["problem"]) if rec["family"] == "unit_conversion" else []
    return rec["family"], tuple(re.findall(r"\d+", rec["problem"])), tuple(words)


def test_deterministic_per_seed_and_different_across_seeds():
    a, b = make_problems(40, seed=3, families=ALL), make_problems(40, seed=3, families=ALL)
    assert a == b
    assert [r["problem"] for r in make_problems(40, seed=4, families=ALL)] != [r["problem"] for r in a]


def test_round_robin_families_unique_ids_and_fields():
    recs = make_problems(24, seed=0, families=ALL)
    assert [r["family"] for r in recs] == [ALL[i % len(ALL)] for i in range(24)]
    assert len({r["id"] for r in recs}) == 24
    for r in recs:
        assert set(r) == {"id", "family", "problem", "answer", "solution", "teacher_response", "strategy"}
        assert isinstance(r["answer"], str) and r["teacher_response"] == r["solution"]
    assert {r["family"] for r in make_problems(8, seed=0)} == set(DEFAULT_FAMILIES)


@pytest.mark.parametrize("family", ALL)
def test_answers_match_an_independent_solution(family):
    for seed in range(3):
        for rec in make_problems(20, seed, [family]) + make_eval_problems(5, seed, [family]):
            assert rec["answer"] == str(expected_answer(family, rec["problem"])), rec
            assert int(rec["answer"]) > 0


@pytest.mark.parametrize("family", ALL)
def test_solutions_end_in_the_boxed_answer_and_grade_correct(family):
    for rec in make_problems(10, seed=1, families=[family]):
        assert rec["solution"].endswith(f"\\boxed{{{rec['answer']}}}")
        assert extract_boxed(rec["solution"]) == rec["answer"]
        assert score(rec["solution"], rec["answer"]) == 1.0
        assert score(rec["solution"], str(int(rec["answer"]) + 1)) == 0.0


@pytest.mark.parametrize("family", ALL)
def test_strategy_validates_is_short_and_abstract(family):
    strategy = family_strategy(family)
    s = validate_strategy(strategy)
    assert 3 <= len(s.plan) <= 6 and s.techniques and s.pitfalls and s.check
    text = s.render()
    assert len(text.split()) <= 90  # short strategies: a 135M model loses the problem behind long ones
    fields = [s.problem_type, s.key_insight, s.check, *s.plan, *s.techniques, *s.pitfalls]
    assert not any(re.search(r"\d", f) for f in fields), "a family strategy must not contain any number"


def test_strategies_never_leak_over_many_seeds():
    for seed in range(25):
        for rec in make_problems(30, seed, ALL) + make_eval_problems(12, seed, ALL):
            assert check_no_leak(rec) == [], rec


def test_check_no_leak_flags_a_leaking_strategy():
    rec = make_problems(1, seed=0, families=["add_items"])[0]
    leaky = dict(rec, strategy=dict(rec["strategy"], check=f"The answer is {rec['answer']}."))
    assert check_no_leak(leaky)


def test_train_and_eval_never_share_arithmetic():
    train = {arithmetic_key(r) for seed in range(5) for r in make_problems(60, seed, ALL)}
    held_out = [r for seed in range(5) for r in make_eval_problems(24, seed, ALL)]
    assert held_out and not train & {arithmetic_key(r) for r in held_out}
    for r in held_out:
        assert r["id"].startswith("demo-eval-")


def test_problems_within_a_set_are_distinct():
    recs = make_problems(60, seed=2, families=ALL)
    assert len({arithmetic_key(r) for r in recs}) == len(recs)


def test_split_is_a_fixed_function_of_the_instance():
    assert split_of("groups", (3, 4)) == split_of("groups", (3, 4))
    splits = [split_of("linear", (x, b)) for x in range(1, 40) for b in range(1, 40)]
    assert 0.15 < splits.count("eval") / len(splits) < 0.35


def test_errors():
    with pytest.raises(ValueError, match="unknown problem families"):
        make_problems(2, seed=0, families=["nope"])
    with pytest.raises(ValueError, match="no distinct train problem left"):
        make_problems(50, seed=0, families=["square_perimeter"], ranges={"square_perimeter": {"side": (2, 4)}})
    assert make_problems(0, seed=0) == []


def test_range_override_is_respected():
    recs = make_problems(10, seed=0, families=["square_perimeter"], ranges={"square_perimeter": {"side": (30, 60)}})
    assert all(120 <= int(r["answer"]) <= 240 for r in recs)


def test_demo_trains_and_evaluates_with_one_prompt_format(tmp_path):
    from sgpo.demo.run import DemoSettings, _train_config

    for model in ("smollm2", "world"):
        settings = DemoSettings.for_model(model)
        for method in ("grpo", "sgpo"):
            cfg = _train_config(method, tmp_path, settings, "unused-model").validate()
            assert cfg.data.style() == settings.style
            # one budget for every method: the trainer splits it (tests/test_method_table.py)
            assert cfg.algorithm.samples_per_problem == settings.samples_per_problem
        assert bool(settings.style.examples) == (model == "smollm2")  # the world uses the spec's default format
