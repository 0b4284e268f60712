"""Testbed: procedural math problems (the SmolLM2 run of ``sgpo demo`` trains on them).

The demo trains SmolLM2-135M-Instruct on two CPU cores in minutes, so it cannot use real
benchmarks: a 135M model solves almost none of them and their solutions are hundreds of
tokens long. These families are short (answers fit in a few dozen generated tokens), come
with an exact answer, a worked solution (the strong-model response that the SFT and LUFFY
baselines imitate) and one hand-written strategy per family in the schema of
:mod:`sgpo.schema`. Number ranges are difficulty knobs, set by measuring the
model's autonomous and guided success (``benchmarks/measure_guidance.py``) so that the
initial success rate is clearly between 0 and 1.

Training and evaluation problems come from disjoint parts of each family's instance space:
an instance's split is a fixed hash of its family and numbers (not of the seed), so no
evaluation problem shares its arithmetic with any training problem, for any pair of seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from sgpo.schema import validate_strategy

Split = Literal["train", "eval"]
EVAL_SHARE = 0.25  # fraction of each family's instance space reserved for evaluation

_NAMES = ["Sam", "Mia", "Leo", "Ava", "Ben", "Zoe", "Tom", "Ivy"]
_THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "shells", "cards"]
_CONTAINERS = [("bags", "bag"), ("boxes", "box"), ("baskets", "basket"), ("jars", "jar")]
# (larger unit, its plural, smaller unit plural, smaller units per larger unit)
_UNITS = [("hour", "hours", "minutes", 60), ("minute", "minutes", "seconds", 60), ("day", "days", "hours", 24),
          ("week", "weeks", "days", 7), ("meter", "meters", "centimeters", 100), ("dozen", "dozens", "eggs", 12)]


@dataclass(frozen=True)
class Instance:
    """One drawn problem before it gets an id: ``key`` holds the numbers that decide the
    answer (the unit of train/eval disjointness); the names and objects are decoration."""

    key: tuple[int, ...]
    problem: str
    answer: str
    solution: str


@dataclass(frozen=True)
class Family:
    """A problem family: its strategy and a sampler. ``ranges`` are the difficulty knobs,
    inclusive integer bounds passed to ``draw``."""

    name: str
    description: str
    strategy: dict[str, Any]
    ranges: dict[str, tuple[int, int]]
    draw: Callable[[random.Random, dict[str, tuple[int, int]]], Instance] = field(repr=False)


def _boxed(answer: int) -> str:
    return f"The answer is \\boxed{{{answer}}}"


def _randint(rng: random.Random, ranges: dict[str, tuple[int, int]], name: str) -> int:
    lo, hi = ranges[name]
    return rng.randint(lo, hi)


def _draw_addition(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    a, b = _randint(rng, ranges, "a"), _randint(rng, ranges, "b")
    return Instance((a, b), f"What is {a} + {b}?", str(a + b), f"{a} + {b} = {a + b}.\n\n{_boxed(a + b)}")


def _draw_subtraction(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    result, b = _randint(rng, ranges, "result"), _randint(rng, ranges, "b")
    a = result + b
    return Instance((a, b), f"What is {a} - {b}?", str(result), f"{a} - {b} = {result}.\n\n{_boxed(result)}")


def _draw_multiplication(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    a, b = _randint(rng, ranges, "a"), _randint(rng, ranges, "b")
    return Instance((a, b), f"What is {a} times {b}?", str(a * b),
                    f"{a} \\times {b} = {a * b}.\n\n{_boxed(a * b)}")


def _draw_add_items(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    a, b = _randint(rng, ranges, "a"), _randint(rng, ranges, "b")
    name, things = rng.choice(_NAMES), rng.choice(_THINGS)
    problem = f"{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?"
    solution = (f"{name} starts with {a} {things} and gets {b} more, so {name} has "
                f"{a} + {b} = {a + b} {things}.\n\n{_boxed(a + b)}")
    return Instance((a, b), problem, str(a + b), solution)


def _draw_take_away(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    left, b = _randint(rng, ranges, "left"), _randint(rng, ranges, "b")
    a = left + b
    name, things = rng.choice(_NAMES), rng.choice(_THINGS)
    problem = f"{name} has {a} {things} and gives away {b}. How many {things} does {name} have left?"
    solution = (f"{name} starts with {a} {things} and gives away {b}, so {name} has "
                f"{a} - {b} = {left} {things} left.\n\n{_boxed(left)}")
    return Instance((a, b), problem, str(left), solution)


def _draw_groups(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    g, k = _randint(rng, ranges, "groups"), _randint(rng, ranges, "each")
    (plural, single), things = rng.choice(_CONTAINERS), rng.choice(_THINGS)
    problem = f"There are {g} {plural} with {k} {things} in each {single}. How many {things} are there in total?"
    solution = (f"There are {g} {plural} and each holds {k} {things}, so there are "
                f"{g} \\times {k} = {g * k} {things} in total.\n\n{_boxed(g * k)}")
    return Instance((g, k), problem, str(g * k), solution)


def _draw_unit_conversion(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    unit = rng.randrange(len(_UNITS))
    one, big, small, factor = _UNITS[unit]
    q = _randint(rng, ranges, "amount")
    problem = f"How many {small} are there in {q} {big}?"
    solution = (f"One {one} is {factor} {small}, so {q} {big} are "
                f"{q} \\times {factor} = {q * factor} {small}.\n\n{_boxed(q * factor)}")
    return Instance((unit, q), problem, str(q * factor), solution)


def _draw_linear(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    x, b = _randint(rng, ranges, "x"), _randint(rng, ranges, "b")
    c = x + b
    problem = f"Solve for x: x + {b} = {c}."
    solution = (f"Subtract {b} from both sides of x + {b} = {c}: x = {c} - {b} = {x}.\n\n{_boxed(x)}")
    return Instance((x, b), problem, str(x), solution)


def _draw_square_perimeter(rng: random.Random, ranges: dict[str, tuple[int, int]]) -> Instance:
    s = _randint(rng, ranges, "side")
    problem = f"A square has sides of length {s} cm. What is its perimeter in cm?"
    solution = (f"A square has four equal sides, so its perimeter is {s} + {s} + {s} + {s} = "
                f"4 \\times {s} = {4 * s} cm.\n\n{_boxed(4 * s)}")
    return Instance((s,), problem, str(4 * s), solution)


# Strategies: abstract, no digits at all, so no instance's answer can appear in them.
# Short on purpose: a 135M model loses the problem behind a long <strategy> block and tends
# to copy the plan line by line, so each step is something worth writing out. The last step
# asks for the answer sentence the grader reads; measured, that is much of what guidance
# does for a model this small (see benchmarks/results/guidance.md).
FINISH = "Finish with the sentence: The answer is \\boxed{...} with the result in the box."

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family(
        "addition", "sum of two whole numbers",
        dict(problem_type="Adding two numbers",
             key_insight="Add the ones digits first, then the tens digits, carrying when needed.",
             plan=["Write the two numbers joined by a plus sign.", "Add the ones, then the tens.", FINISH],
             techniques=["column addition"], pitfalls=["forgetting the carry"],
             check="The sum is larger than both numbers."),
        {"a": (2, 29), "b": (2, 29)}, _draw_addition),
    Family(
        "subtraction", "difference of two whole numbers",
        dict(problem_type="Subtracting two numbers",
             key_insight="Take the second number away from the first, ones digits first, borrowing when needed.",
             plan=["Write the first number minus the second.", "Subtract the ones, then the tens.", FINISH],
             techniques=["column subtraction"], pitfalls=["subtracting in the wrong order"],
             check="Adding the result to the second number gives the first."),
        {"result": (2, 25), "b": (2, 25)}, _draw_subtraction),
    Family(
        "multiplication", "product of two one-digit numbers",
        dict(problem_type="Multiplying two small numbers",
             key_insight="Multiplication is repeated addition of the first number.",
             plan=["Recall the times table for the first number.", "Read off the entry for the second number.", FINISH],
             techniques=["times tables"], pitfalls=["adding the numbers instead of multiplying"],
             check="Dividing the product by one number gives the other."),
        {"a": (2, 10), "b": (2, 10)}, _draw_multiplication),
    Family(
        "add_items", "word problem: a count plus a number gained",
        dict(problem_type="Word problem: combining amounts",
             key_insight="Getting more means adding the new amount to the starting amount.",
             plan=["Find the starting amount and the amount gained.", "Add the two numbers.", FINISH],
             techniques=["addition"], pitfalls=["subtracting instead of adding"],
             check="The total is larger than the starting amount."),
        {"a": (2, 15), "b": (2, 15)}, _draw_add_items),
    Family(
        "take_away", "word problem: a count minus a number given away",
        dict(problem_type="Word problem: taking away",
             key_insight="Giving away means subtracting the given amount from the starting amount.",
             plan=["Find the starting amount and the amount given away.", "Subtract the second from the first.",
                   FINISH],
             techniques=["subtraction"], pitfalls=["adding instead of subtracting"],
             check="The amount left is smaller than the starting amount."),
        {"left": (2, 15), "b": (2, 15)}, _draw_take_away),
    Family(
        "groups", "word problem: equal groups (multiplication)",
        dict(problem_type="Word problem: equal groups",
             key_insight="Equal groups mean multiplication: number of groups times items in each group.",
             plan=["Find the number of groups and the items in each group.", "Multiply the two numbers.", FINISH],
             techniques=["multiplication"], pitfalls=["adding the two numbers instead of multiplying"],
             check="Dividing the total by the number of groups gives the group size."),
        {"groups": (2, 9), "each": (2, 9)}, _draw_groups),
    Family(
        "unit_conversion", "convert a whole number of large units into small units",
        dict(problem_type="Unit conversion",
             key_insight="To change a larger unit into a smaller one, multiply by how many small units make one large unit.",
             plan=["Recall how many small units make one large unit.", "Multiply the given amount by that number.",
                   FINISH],
             techniques=["conversion factor"], pitfalls=["dividing instead of multiplying"],
             check="The answer in the smaller unit is a bigger number."),
        {"amount": (2, 12)}, _draw_unit_conversion),
    Family(
        "linear", "one-step linear equation x + b = c",
        dict(problem_type="One-step linear equation",
             key_insight="Undo the addition on x by subtracting the same number from both sides.",
             plan=["Find the number added to x.", "Subtract it from the right-hand side.", FINISH],
             techniques=["inverse operations"], pitfalls=["adding the number instead of subtracting it"],
             check="Substitute the value back into the equation."),
        {"x": (2, 20), "b": (2, 20)}, _draw_linear),
    Family(
        "square_perimeter", "perimeter of a square from its side",
        dict(problem_type="Perimeter of a square",
             key_insight="A square has four equal sides, so its perimeter is four times the side.",
             plan=["Find the side length.", "Multiply the side length by four.", FINISH],
             techniques=["perimeter formula"], pitfalls=["computing the area instead of the perimeter"],
             check="The perimeter divided by four is the side."),
        {"side": (2, 30)}, _draw_square_perimeter),
]}

# Measured with the demo's prompt (one few-shot exchange), temperature 0.7, 8 problems x 4 samples
# per family (benchmarks/results/guidance.md): unguided success addition 0.41, subtraction 0.19,
# add_items 0.25, groups 0.06, and guided success below it in every family. One-digit
# multiplication (~1.0 unguided in an earlier run: no learning signal) is left out.
DEFAULT_FAMILIES: list[str] = ["addition", "subtraction", "add_items", "groups"]


def family_strategy(family: str) -> dict[str, Any]:
    """The family's strategy as a JSON-able dict (validated against the schema)."""
    return validate_strategy(FAMILIES[family].strategy).to_dict()


def split_of(family: str, key: tuple[int, ...]) -> Split:
    """The split an instance belongs to: a fixed hash of family and numbers, so train and eval
    problems never share their arithmetic whatever seeds draw them."""
    digest = hashlib.sha256(f"{family}:{','.join(map(str, key))}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < EVAL_SHARE else "train"


def make_problems(n: int, seed: int, families: list[str] | None = None, split: Split = "train",
                  ranges: dict[str, dict[str, tuple[int, int]]] | None = None) -> list[dict[str, Any]]:
    """``n`` distinct problems of the given families (round-robin, default
    :data:`DEFAULT_FAMILIES`), deterministic for ``seed``. ``split="eval"`` draws held-out
    problems from the part of each family's instance space that training never sees.
    ``ranges`` overrides a family's number ranges (family -> knob -> (lo, hi)).

    Each record: ``id``, ``family``, ``problem``, ``answer`` (string), ``solution`` (worked,
    ending in ``\\boxed{answer}``), ``teacher_response`` (the same text, the field the trainer
    reads for SFT/LUFFY) and ``strategy`` (the family's strategy dict)."""
    families = list(families or DEFAULT_FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown problem families {unknown} (have {sorted(FAMILIES)})")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"sgpo-demo:{seed}:{split}")
    seen: set[tuple[str, tuple[int, ...]]] = set()
    out: list[dict[str, Any]] = []
    for i in range(n):
        fam = FAMILIES[families[i % len(families)]]
        fam_ranges = {**fam.ranges, **(ranges or {}).get(fam.name, {})}
        for _ in range(10_000):  # rejection sampling; a family's space is small enough to exhaust
            inst = fam.draw(rng, fam_ranges)
            if (fam.name, inst.key) not in seen and split_of(fam.name, inst.key) == split:
                break
        else:
            have = sum(1 for f, _ in seen if f == fam.name)
            raise ValueError(f"family '{fam.name}' has no distinct {split} problem left after {have}; "
                             "widen its ranges or ask for fewer problems")
        seen.add((fam.name, inst.key))
        out.append({"id": f"demo-{split}-{seed}-{i:05d}", "family": fam.name, "problem": inst.problem,
                    "answer": inst.answer, "solution": inst.solution, "teacher_response": inst.solution,
                    "strategy": family_strategy(fam.name)})
    return out


def make_eval_problems(n: int, seed: int, families: list[str] | None = None,
                       ranges: dict[str, dict[str, tuple[int, int]]] | None = None) -> list[dict[str, Any]]:
    """Held-out problems: :func:`make_problems` with ``split="eval"``."""
    return make_problems(n, seed, families, split="eval", ranges=ranges)


def check_no_leak(instance: dict[str, Any]) -> list[str]:
    """Why the instance's strategy would give its answer away (empty: clean), using the
    project's string and symbolic leak filters on the rendered strategy."""
    from sgpo.strategies.leaks import leak_reasons

    text = validate_strategy(instance["strategy"]).render()
    return leak_reasons(text, str(instance["answer"]))
