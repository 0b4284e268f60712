"""Reward functions of the user's own (sgpo.rewards.functions): weighted sums, None as not
applicable, failures (raise, hang, NaN, not a number) contained and counted, a failure share
above the limit stopping the run with the function's name; the built-in grader graded
concurrently with the verdicts of serial grading; and one training step of the real trainer
(scripted generator, tiny model) whose logged rewards and failure counts are computed here
independently from the completions."""

import json
import textwrap
import threading

import pytest

from sgpo import rewards as grader
from sgpo.rewards.functions import (BUILTIN, RewardConfig, RewardFunctionError, RewardFunctions,
                                    check_failure_share, run_calls)
from tests.conftest import SHARED

USER_MODULE = '''
import math
import re
import time

def format_reward(completion, answer, row):
    """1.0 when the answer is stated as 'So the answer is \\\\boxed{...}.', else 0.0."""
    return 1.0 if re.search(r"So the answer is \\\\boxed\\{[^{}]+\\}\\.$", completion) else 0.0

def flaky(completion, answer, row):
    """Not applicable to problem d; raises, hangs or returns NaN on some completions."""
    if row["id"] == "d":
        return None
    if completion.startswith("Maybe"):
        raise ValueError("cannot parse")
    if completion.startswith("Um"):
        return math.nan
    if completion.startswith("Hmm"):
        time.sleep(30)
    return 1.0

def always_raises(completion, answer, row):
    raise RuntimeError("broken")

def text_reward(completion, answer, row):
    return "1"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "myrewards"


def _fns(*specs, weights=(), timeout_s=30.0):
    return RewardFunctions(RewardConfig(functions=list(specs), weights=list(weights), timeout_s=timeout_s))


def test_weighted_sum_none_and_every_kind_of_failure_is_contained(user_module):
    fns = _fns(BUILTIN, f"{user_module}:format_reward", f"{user_module}:flaky", weights=(1.0, 0.5, 0.25),
               timeout_s=0.5)
    texts = ["So the answer is \\boxed{5}.", "Maybe \\boxed{5}", "Um, \\boxed{4}", "Hmm. \\boxed{5}",
             "So the answer is \\boxed{3}.", "So the answer is \\boxed{7}."]
    rows = [{"id": "a"}] * 5 + [{"id": "d"}]
    g = fns.grade(texts, ["5"] * 5 + ["7"], rows)
    assert g.values["math_reward"] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert g.values["format_reward"] == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert g.values["flaky"] == [1.0, None, None, None, 1.0, None]  # failed x3, not applicable x1
    assert g.failed["flaky"] == [False, True, True, True, False, False]
    assert g.failures == 3
    assert g.rewards == [1.75, 1.0, 0.0, 1.0, 0.75, 1.5]  # failures add nothing; the others still count
    assert [d.extracted for d in g.details] == ["5", "5", "4", "5", "3", "7"]


def test_a_function_that_fails_everywhere_is_stopped_with_its_name(user_module):
    fns = _fns(BUILTIN, f"{user_module}:always_raises", f"{user_module}:text_reward")
    g = fns.grade(["\\boxed{1}"] * 4, ["1"] * 4, [{}] * 4)
    assert g.rewards == [1.0] * 4  # not silently zeroed: the working grader's reward stays
    assert g.failed["always_raises"] == [True] * 4 and g.failed["text_reward"] == [True] * 4  # "1" is not a number
    with pytest.raises(RewardFunctionError, match="always_raises failed on 100% .*max_failure_share = 0.25"):
        check_failure_share({"math_reward": 0.0, "always_raises": 1.0}, 0.25)
    check_failure_share({"flaky": 0.25}, 0.25)  # at the limit: goes on


def test_config_errors_name_the_entry(user_module):
    with pytest.raises(ValueError, match="expected 'module:callable'"):
        RewardConfig(functions=["myrewards.format_reward"]).validate()
    with pytest.raises(ValueError, match="2 entries for 1 functions"):
        RewardConfig(weights=[1.0, 2.0]).validate()
    with pytest.raises(RewardFunctionError, match="cannot import module 'no_such_module'"):
        _fns("no_such_module:f")
    with pytest.raises(RewardFunctionError, match="has no attribute 'nope'"):
        _fns(f"{user_module}:nope")


def test_calls_run_concurrently():
    """Four calls that each wait for the other three: serial grading would time every one out."""
    barrier = threading.Barrier(4, timeout=20)
    got = run_calls([(barrier.wait, None)] * 4, threads=4)
    assert all(status == "ok" for status, _ in got), got


def test_parallel_grading_gives_the_verdicts_of_serial_grading():
    """The public grader cases (many go to the worker processes): the verdicts of a batch graded
    concurrently equal one-at-a-time grading, with the verdict memo cleared in between."""
    path = SHARED / "data" / "grader-cases" / "public.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    grader._CACHE.clear()
    serial = [grader.score_detailed(c["response"], c["gold"]) for c in cases]
    grader._CACHE.clear()
    fns = RewardFunctions(RewardConfig(threads=8))
    g = fns.grade([c["response"] for c in cases], [c["gold"] for c in cases], [{}] * len(cases))
    assert sum(s.reward for s in serial) > 100  # the cases exercise both verdicts
    assert g.details == serial
    assert g.rewards == [s.reward for s in serial]


# -- one training step with user reward functions ------------------------------------------


def _expected(texts_by_key, weights=(1.0, 0.5, 0.25)):
    """Each completion's reward from its text alone: the scripted completions say whether they
    are right (_right / _wrong in tests/test_trainer_step.py)."""
    import math
    import re

    out = {}
    for (pid, guided), texts in texts_by_key.items():
        vals = []
        for t in texts:
            correct = t.endswith(f"So the answer is \\boxed{{{ {'a': 5, 'b': 8, 'c': 7, 'd': 7}[pid] }}}.")
            fmt = 1.0 if re.search(r"So the answer is \\boxed\{[^{}]+\}\.$", t) else 0.0
            flaky = None if pid == "d" or t.startswith(("Maybe", "Um", "Hmm")) else 1.0
            vals.append(weights[0] * correct + weights[1] * fmt + (weights[2] * flaky if flaky is not None else 0.0))
            assert not math.isnan(vals[-1])
        out[(pid, guided)] = vals
    return out


@pytest.mark.slow
def test_training_step_logs_the_weighted_rewards_and_failures(tmp_path, tiny_model_dir, user_module):
    from tests.test_trainer_step import SCRIPT, _trainer

    specs = f"[{BUILTIN}, {user_module}:format_reward, {user_module}:flaky]"
    sets = [f"reward.functions={specs}", "reward.weights=[1.0, 0.5, 0.25]", "reward.timeout_s=0.5",
            "training.max_steps=1", "algorithm.weight_mode=constant"]
    trainer, _ = _trainer(tmp_path, tiny_model_dir, *sets)
    res = trainer.train()
    rec = json.loads((res.output_dir / "metrics.jsonl").read_text().splitlines()[0])
    expected = _expected(SCRIPT)
    auto = [v for (p, guided), vs in expected.items() if not guided for v in vs]
    guided = [v for (p, g), vs in expected.items() if g for v in vs]
    assert rec["reward/auto_mean"] == pytest.approx(sum(auto) / len(auto))
    assert rec["reward/guided_mean"] == pytest.approx(sum(guided) / len(guided))
    calls = len(auto) + len(guided)  # 16 autonomous + 6 guided completions, each graded by each function
    failing = sum(t.startswith(("Maybe", "Um", "Hmm")) for vs in SCRIPT.values() for t in vs)
    assert failing == 3
    assert rec["reward/failures"] == failing
    assert rec["reward/failure_share/flaky"] == pytest.approx(failing / calls)
    assert rec["reward/failure_share/math_reward"] == 0.0 and rec["reward/failure_share/format_reward"] == 0.0
    fmt = [1.0 if "So the answer is" in t else 0.0 for vs in SCRIPT.values() for t in vs]
    assert rec["reward/fn/format_reward_mean"] == pytest.approx(sum(fmt) / calls)
    # the advantages see the weighted rewards: p_a is the mean over problems of the mean reward
    per_problem = [sum(expected[(p, False)]) / 4 for p in "abcd"]
    assert rec["p_auto"] == pytest.approx(sum(per_problem) / 4)


@pytest.mark.slow
def test_training_stops_when_a_function_fails_too_often(tmp_path, tiny_model_dir, user_module):
    from tests.test_trainer_step import _trainer

    sets = [f"reward.functions=[{BUILTIN}, {user_module}:flaky]", "reward.timeout_s=0.5",
            "reward.max_failure_share=0.1", "training.max_steps=2"]
    trainer, _ = _trainer(tmp_path, tiny_model_dir, *sets)
    with pytest.raises(RewardFunctionError, match=r"reward function flaky failed on 14% of its calls in step 1"):
        trainer.train()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["reward/failures"] == 3  # the step is logged before the stop


# -- sgpo eval grades with the same functions ---------------------------------------------


def test_evaluation_scores_with_the_training_reward_functions(tmp_path, user_module):
    """evaluate_records with the reward section a training config holds: the scores are the
    weighted sums, each function's values are recorded, and the records' config hash changes
    with the functions (records graded by another reward are not reused)."""
    from sgpo.evaluation.runner import evaluate_records
    from sgpo.generation import SamplingConfig
    from tests.test_eval_runner import PlainTokenizer, ScriptedGenerator

    problems = [{"id": "a", "problem": "What is 2+3?", "answer": "5"},
                {"id": "d", "problem": "What is 5+2?", "answer": "7"}]
    gen = ScriptedGenerator({"2+3": ["So the answer is \\boxed{5}.", "Maybe \\boxed{5}"],
                             "5+2": ["So the answer is \\boxed{7}.", "I think \\boxed{8}."]})
    reward = RewardConfig(functions=[BUILTIN, f"{user_module}:format_reward", f"{user_module}:flaky"],
                          weights=[1.0, 0.5, 0.25], max_failure_share=0.5)
    kw = dict(generator=gen, output_dir=tmp_path, batch_size=4, model_id="m", show_progress=False)
    sampling = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0)
    result, records = evaluate_records(None, PlainTokenizer(), problems, "toy", sampling, 2, reward=reward, **kw)
    assert [r["scores"] for r in records] == [[1.75, 1.0], [1.5, 0.0]]
    assert records[0]["rewards"]["flaky"] == [1.0, None] and records[1]["rewards"]["flaky"] == [None, None]
    assert result["reward_failures"] == 1
    plain, _ = evaluate_records(None, PlainTokenizer(), problems, "toy", sampling, 2, **kw)
    assert plain["reused"] == 0 and plain["stale"] == 2  # another reward: graded again
    with pytest.raises(RewardFunctionError, match="flaky failed on 25%"):
        evaluate_records(None, PlainTokenizer(), problems, "toy2", sampling, 2,
                         reward=RewardConfig(functions=[f"{user_module}:flaky"], max_failure_share=0.2), **kw)


def test_sgpo_eval_takes_the_reward_of_the_training_config_or_its_flags(tmp_path, user_module):
    """`sgpo eval --train-config RUN/config.json` grades with the run's reward section;
    --reward-functions / --reward-weights replace it; neither: the built-in grader."""
    from sgpo.evaluation.runner import EvalConfig, reward_config
    from sgpo.io import DataError

    run_config = tmp_path / "config.json"
    run_config.write_text(json.dumps({"data": {}, "reward": {"functions": [BUILTIN, f"{user_module}:format_reward"],
                                                             "weights": [1.0, 0.2], "max_failure_share": 0.5}}))
    base = dict(model="m", benchmarks=("b",))
    assert reward_config(EvalConfig(**base)) == RewardConfig()
    got = reward_config(EvalConfig(**base, train_config=str(run_config)))
    assert got.functions == [BUILTIN, f"{user_module}:format_reward"] and got.weights == [1.0, 0.2]
    assert got.max_failure_share == 0.5
    flags = reward_config(EvalConfig(**base, train_config=str(run_config), reward_functions=(f"{user_module}:flaky",),
                                     reward_weights=(2.0,)))
    assert flags.functions == [f"{user_module}:flaky"] and flags.weights == [2.0]
    with pytest.raises(DataError, match="2 entries for 1 functions"):
        reward_config(EvalConfig(**base, reward_functions=(BUILTIN,), reward_weights=(1.0, 2.0)))
