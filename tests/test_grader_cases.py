"""The grader against labelled cases from other graders' test suites (Math-Verify, TRL,
open-r1, lighteval, copies of the Qwen2.5-Math and DAPO graders' checks), read from the
shared data folder beside the repository; skipped where it is absent.

Boxed responses count for agreement (target >= 97%); unboxed responses are read only through
the anchored fallback, which may miss answers but must never accept a wrong one. Known
disagreements: the cases whose source used non-default options (``nondefault``: rounding to
2 places, set-vs-relation comparison), and ``\\boxed{1}`` vs gold ``1.0001``, which a grader with
a relative tolerance of 1e-4 accepts and math-verify's 6-place rounding does not.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from sgpo.rewards import score_detailed
from sgpo.rewards.answers import normalize, split_parts
from tests.conftest import SHARED

CASES = SHARED / "data" / "grader-cases" / "public.jsonl"
BOXED_FORMS = {"as_is", "wrapped", "wrapped_span"}


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    if not CASES.exists():
        pytest.skip(f"{CASES} not present")
    return [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]


def test_agreement_with_public_grader_cases(cases: list[dict]) -> None:
    agree, total, false_positives, disagreements = Counter(), Counter(), [], []
    for case in cases:
        got = score_detailed(case["response"], case["gold"]).reward == 1.0
        if case["form"] in BOXED_FORMS:
            total[case["source"]] += 1
            if got == case["expected"]:
                agree[case["source"]] += 1
            else:
                disagreements.append((case["id"], case["source"], case["nondefault"], case["gold"][:60]))
        elif got and not case["expected"]:
            false_positives.append((case["id"], case["gold"], case["response"][-120:]))
    lines = [f"{source}: {agree[source]}/{n} = {agree[source] / n:.1%}" for source, n in sorted(total.items())]
    rate = sum(agree.values()) / sum(total.values())
    lines.append(f"all boxed: {sum(agree.values())}/{sum(total.values())} = {rate:.1%}")
    lines += [f"disagrees: {d}" for d in disagreements]
    report = "\n".join(lines)
    print("\n" + report)
    assert not false_positives, f"unboxed false positives: {false_positives}"
    assert rate >= 0.97, report


BENCHMARKS = SHARED / "data" / "benchmarks"


@pytest.mark.parametrize("name", ["math500", "olympiadbench", "minerva", "amc23", "aime24", "aime25", "amc83"])
def test_every_benchmark_gold_grades_itself(name: str) -> None:
    """Each gold answer, boxed as it is spelt, scores 1; a gold with several parts also
    scores 1 with its parts boxed one by one in reverse order (the splitter on real golds:
    7 of MATH-500's, 93 of OlympiadBench's have several parts)."""
    path = BENCHMARKS / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    failures = []
    for line in path.read_text().splitlines():
        gold = str(json.loads(line)["answer"])
        if score_detailed(f"So \\boxed{{{gold}}}.", gold).reward != 1.0:
            failures.append(gold)
        parts = split_parts(normalize(gold))
        if len(parts) > 1:
            boxed = " and ".join(f"\\boxed{{{p}}}" for p in reversed(parts))
            if score_detailed(boxed, gold).reward != 1.0:
                failures.append(f"parts of {gold}")
    assert not failures, failures[:10]
