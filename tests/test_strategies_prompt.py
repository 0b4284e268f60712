"""The extraction prompt and the tolerant parser of teacher replies."""

import json

import pytest

from sgpo.testing import EXAMPLE_STRATEGY, strategy_reply
from sgpo.strategies.prompt import (PROMPT_VERSION, extraction_messages, find_json_object, parse_strategy,
                                    repair_latex_escapes)
from sgpo.schema import StrategyError


def test_messages_carry_problem_solution_and_answer_warning():
    msgs = extraction_messages(" Find x. ", "7", "x = 7 because ...")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "JSON" in msgs[0]["content"] and "final answer" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert user.startswith("Problem:\nFind x.\n")
    assert "x = 7 because ..." in user and "must not appear in the strategy" in user
    assert PROMPT_VERSION == "strategy-v1"


def test_plain_json_parses():
    s = parse_strategy(strategy_reply())
    assert s.to_dict() == EXAMPLE_STRATEGY


def test_code_fence_and_chatter_around_json():
    text = "Sure! Here is the strategy:\n```json\n" + strategy_reply() + "\n```\nLet me know {if} you need more."
    assert parse_strategy(text).key_insight == EXAMPLE_STRATEGY["key_insight"]


def test_braces_inside_strings_do_not_end_the_object():
    text = "Reply: " + strategy_reply(check='Plug the values back into {a, b} and "re-check".')
    assert parse_strategy(text).check == 'Plug the values back into {a, b} and "re-check".'


def test_a_json_object_before_the_strategy_is_skipped():
    text = 'Context {"note": 1} then ' + strategy_reply()
    assert find_json_object(text)["problem_type"] == EXAMPLE_STRATEGY["problem_type"]


def test_wrapper_object_is_unwrapped():
    text = json.dumps({"strategy": EXAMPLE_STRATEGY})
    assert parse_strategy(text).plan == EXAMPLE_STRATEGY["plan"]


def test_stray_open_brace_in_chatter_falls_back_to_decoding():
    text = "Think about the set {a, b ... anyway:\n" + strategy_reply()
    assert parse_strategy(text).problem_type == EXAMPLE_STRATEGY["problem_type"]


def test_single_backslash_latex_is_kept_literally():
    raw = '{"a": "use \\frac{a}{b} and \\times and \\sqrt{x}, line\\nbreak, quote \\" and \\u00e9, \\\\pi"}'
    assert json.loads(repair_latex_escapes(raw))["a"] == (
        'use \\frac{a}{b} and \\times and \\sqrt{x}, line\nbreak, quote " and \u00e9, \\pi')


def test_latex_in_a_strategy_field():
    text = strategy_reply(key_insight="Rewrite each term as \\frac{1}{n} - \\frac{1}{n+1} so the sum telescopes.")
    text = text.replace("\\\\", "\\")  # what a careless teacher sends: single backslashes
    assert "\\frac{1}{n}" in parse_strategy(text).key_insight


@pytest.mark.parametrize("text, match", [
    ("no json here", "no parsable JSON"),
    ('{"problem_type": "x", "key_insight": "y"', "no parsable JSON"),  # truncated reply
    (strategy_reply(plan=["only one step"]), "3-6 steps"),
    (strategy_reply(key_insight=None), "missing field 'key_insight'"),
    (strategy_reply(check=" ".join(["word"] * 150)), "too long"),
])
def test_invalid_replies_name_the_problem(text, match):
    with pytest.raises(StrategyError, match=match):
        parse_strategy(text)
