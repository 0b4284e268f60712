"""String and symbolic answer-leak filters."""

from fractions import Fraction

import pytest

from sgpo.strategies.leaks import (as_fraction, latex_to_plain, leak_reasons, math_spans, normalize_math,
                                   string_leak, symbolic_leaks)


@pytest.mark.parametrize("latex, plain", [
    ("$\\frac{1}{2}$", "1/2"),
    ("\\dfrac12", "1/2"),
    ("\\frac{\\sqrt{3}}{2}", "sqrt(3)/2"),
    ("\\frac{a+b}{2}", "(a+b)/2"),
    ("x^{10} + \\sqrt[3]{y}", "x^10+root(3,y)"),
    ("\\text{(B)}", "(B)"),
    ("\\boxed{1,000}", "1000"),
    ("\\left( 3 \\cdot 4 \\right)", "(3*4)"),
    ("2 \\pi r", "2 pi r"),
    ("50\\%", "50%"),
])
def test_normalize_math(latex, plain):
    assert normalize_math(latex) == plain


def test_latex_to_plain_keeps_unknown_commands_as_words():
    assert latex_to_plain("\\sin x + \\alpha") == "sin x + alpha"


@pytest.mark.parametrize("text, gold, leaks", [
    ("Split the set into 2 groups.", "2", True),
    ("Use the first 12 terms.", "2", False),  # inside a longer number
    ("Scale by 2.5 first.", "2", False),  # a decimal
    ("Take half, that is 1/2 of it.", "2", False),  # a denominator
    ("Index the terms as x_2.", "2", False),  # a subscript
    ("The total is 2.", "2", True),  # sentence-final period
    ("Divide to get $\\frac{1}{2}$ of the area.", "1/2", True),
    ("The ratio is 1 / 2 in the end.", "\\frac12", True),
    ("Show that it equals \\sqrt{3}/2.", "\\frac{\\sqrt{3}}{2}", True),
    ("About 1,000 cases.", "1000", True),
    ("Choose option (B) at the end.", "\\text{(B)}", True),
    ("A careful count finishes it.", "A", False),  # single letters are left to the symbolic filter
    ("No numbers here.", "", False),
])
def test_string_leak(text, gold, leaks):
    assert string_leak(text, gold) is leaks


def test_math_spans_cover_delimiters_sides_boxes_fractions_and_numbers():
    text = "Let $x = 3$, then \\(y\\) and \\boxed{\\frac{1}{2}}; also \\sqrt{2} and 3/4 of 1,000."
    assert math_spans(text) == ["x = 3", "x", "3", "y", "\\frac{1}{2}", "\\sqrt{2}", "1", "2", "3/4", "1,000"]


@pytest.mark.parametrize("text, value", [
    ("-3", Fraction(-3)), ("1,000", Fraction(1000)), ("0.25", Fraction(1, 4)),
    ("3/4", Fraction(3, 4)), ("\\frac{6}{8}", Fraction(3, 4)), ("x", None), ("1/0", None),
])
def test_as_fraction(text, value):
    assert as_fraction(text) == value


def test_symbolic_numbers_compare_exactly_without_the_grader():
    def never(a, b):
        raise AssertionError("plain numbers must not reach the grader")

    # 6/2 = 3 and 0.5 = 1/2: equal values written differently
    assert symbolic_leaks("Halve it: $6/2$ apples.", "3", equivalent=never) == ["6/2"]
    assert symbolic_leaks("Use 0.5 as the rate.", "\\frac{1}{2}", equivalent=never) == ["0.5"]
    assert symbolic_leaks("Use 0.4 as the rate.", "\\frac{1}{2}", equivalent=never) == []


def test_symbolic_leak_with_math_verify():
    # 1/sqrt(2) = sqrt(2)/2, a different string: only the symbolic filter sees it
    text = "Normalise so the length becomes $\\frac{1}{\\sqrt{2}}$ before comparing."
    assert not string_leak(text, "\\frac{\\sqrt{2}}{2}")
    assert leak_reasons(text, "\\frac{\\sqrt{2}}{2}") == [
        "symbolic leak: '\\frac{1}{\\sqrt{2}}' equals the gold answer '\\frac{\\sqrt{2}}{2}'"]


def test_symbolic_leak_on_the_right_side_of_an_equation():
    assert symbolic_leaks("Conclude with $n = 2^{5}$.", "32") == ["n = 2^{5}"]


def test_clean_strategy_has_no_reasons():
    text = "Problem type: counting\nKey insight: count the complement.\nPlan:\n1. Count all.\n2. Subtract."
    assert leak_reasons(text, "\\frac{\\sqrt{2}}{2}") == []


def test_rendered_plan_numbers_are_not_content():
    # rendering numbers the plan 1. 2. 3.; gold answers 1-3 must not leak because of that
    text = "Plan:\n1. Count all.\n2. Count the bad ones.\n3. Subtract."
    assert [leak_reasons(text, g) for g in ("1", "2", "3")] == [[], [], []]
    assert leak_reasons("Plan:\n1. Split into 3 parts.", "3") != []


def test_string_filter_fires_first_and_alone():
    reasons = leak_reasons("The answer is 17.", "17", equivalent=lambda a, b: True)
    assert reasons == ["string leak: the gold answer '17' appears in the strategy"]


def test_symbolic_filter_can_be_switched_off():
    assert leak_reasons("Reach $6/2$ first.", "3", symbolic=False) == []
