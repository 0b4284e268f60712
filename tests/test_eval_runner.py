"""`evaluate`: records, metrics, resume after an interruption and bad input, with a
scripted generator (fast) and, marked slow, the real HFGenerator on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgpo.errors import UserError
from sgpo.evaluation.benchmarks import BUILTIN, HUB_SOURCES, load_benchmark
from sgpo.evaluation.protocols import DEFAULT, LUFFY, PROTOCOLS
from sgpo.evaluation.runner import EvalConfig, config_hash, evaluate, evaluate_records, records_path
from sgpo.generation import Completion, SamplingConfig
from sgpo.io import DataError

SAMPLING = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0)
PROBLEMS = [
    {"id": "p1", "problem": "What is 1+1?", "answer": "2"},
    {"id": "p2", "problem": "What is half of one?", "answer": "\\frac{1}{2}"},
    {"id": "p3", "problem": "Name the day after Sunday.", "answer": "\\text{Monday}"},
]


class PlainTokenizer:
    """No chat template: sgpo.prompts.render falls back to plain text."""

    chat_template = None


class ScriptedGenerator:
    """Answers by problem: sample j of each problem is ``answers[problem][j]``; counts calls."""

    def __init__(self, answers: dict[str, list[str]], fail_after: int | None = None):
        self.answers, self.fail_after = answers, fail_after
        self.calls: list[int] = []  # prompts per call

    def generate(self, prompts: list[str], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # the run is killed mid-benchmark
        self.calls.append(len(prompts))
        out = []
        for prompt in prompts:
            texts = next(v for k, v in self.answers.items() if k in prompt)
            out.append([Completion(t, list(range(len(t.split()))), "length" if "cut" in t else "stop")
                        for t in texts[:n]])
        return out


ANSWERS = {
    "1+1": ["so \\boxed{2}", "\\boxed{(x+1)^{1000}}"],  # the second one makes sympy run for seconds
    "half": ["\\boxed{0.5}", "\\boxed{\\dfrac{1}{2}}"],
    "Sunday": ["the answer is cut", "\\boxed{Monday}"],
}


def test_evaluate_records_and_metrics(tmp_path: Path) -> None:
    gen = ScriptedGenerator(ANSWERS)
    result, records = evaluate_records(None, PlainTokenizer(), PROBLEMS, "toy", SAMPLING, 2, generator=gen,
                                       output_dir=tmp_path, batch_size=4, model_id="m", show_progress=False,
                                       grader_timeout_s=0.3)
    assert [r["scores"] for r in records] == [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    assert records[0]["timed_out"] == [False, True]
    assert result["n"] == 3 and result["k"] == 2
    assert result["avg@k"] == pytest.approx((0.5 + 1.0 + 0.5) / 3, abs=1e-12)
    assert result["pass@k"] == 1.0
    assert result["truncation_rate"] == pytest.approx(1 / 6, abs=1e-12)
    assert result["timeouts"] == 1
    assert gen.calls == [2, 1]  # batch 4 // k 2 = 2 problems per call
    stored = [json.loads(x) for x in records_path(tmp_path, "toy").read_text().splitlines()]
    assert [r["id"] for r in stored] == ["p1", "p2", "p3"]
    assert stored[0]["completions"] == ANSWERS["1+1"] and stored[0]["extracted"] == ["2", "(x+1)^{1000}"]
    assert [r["seed"] for r in stored] == [0, 0, 2]  # seed + index of the call's first problem


def test_rerun_generates_nothing_and_gives_the_same_result(tmp_path: Path) -> None:
    kwargs = dict(output_dir=tmp_path, batch_size=2, model_id="m", show_progress=False, grader_timeout_s=0.3)
    first = evaluate(None, PlainTokenizer(), PROBLEMS, "toy", SAMPLING, 2, generator=ScriptedGenerator(ANSWERS), **kwargs)
    again = ScriptedGenerator(ANSWERS)
    second = evaluate(None, PlainTokenizer(), PROBLEMS, "toy", SAMPLING, 2, generator=again, **kwargs)
    assert again.calls == [] and second == {**first, "reused": 3}


def test_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    kwargs = dict(output_dir=tmp_path, batch_size=2, model_id="m", show_progress=False, grader_timeout_s=0.3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(None, PlainTokenizer(), PROBLEMS, "toy", SAMPLING, 2, generator=ScriptedGenerator(ANSWERS, 2), **kwargs)
    path = records_path(tmp_path, "toy")
    with path.open("a") as f:
        f.write('{"benchmark": "toy", "id": "p3", "conf')  # a torn line from the kill
    resumed = ScriptedGenerator(ANSWERS)
    result = evaluate(None, PlainTokenizer(), PROBLEMS, "toy", SAMPLING, 2, generator=resumed, **kwargs)
    assert resumed.calls == [1]  # only p3 (batch 2 // k 2 = one problem per call; p1, p2 were done)
    assert result["n"] == 3
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["p1", "p2", "p3"]


def test_changed_config_is_not_resumed(tmp_path: Path) -> None:
    kwargs = dict(output_dir=tmp_path, batch_size=2, model_id="m", show_progress=False, grader_timeout_s=0.3)
    evaluate(None, PlainTokenizer(), PROBLEMS, "toy", SAMPLING, 2, generator=ScriptedGenerator(ANSWERS), **kwargs)
    hotter = ScriptedGenerator(ANSWERS)
    evaluate(None, PlainTokenizer(), PROBLEMS, "toy", SamplingConfig(1.0, 0.95, 16, 0), 2, generator=hotter, **kwargs)
    assert sum(hotter.calls) == 3


def test_config_hash_covers_model_prompt_sampling_and_k() -> None:
    tok = PlainTokenizer()
    base = config_hash("m", tok, SAMPLING, 4)
    assert base == config_hash("m", tok, SAMPLING, 4)
    assert base != config_hash("other", tok, SAMPLING, 4)
    assert base != config_hash("m", tok, SAMPLING, 8)
    assert base != config_hash("m", tok, SamplingConfig(0.6, 0.95, 32, 0), 4)

    class Templated:
        chat_template = "x"

        def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
            return "<user>" + msgs[-1]["content"]

    assert base != config_hash("m", Templated(), SAMPLING, 4)


@pytest.mark.parametrize("bad,field", [({"id": "a", "problem": "x"}, "answer"), ({"id": "a", "answer": "1"}, "problem"),
                                       ({"problem": "x", "answer": "1"}, "id"), ({"id": "a", "problem": " ", "answer": "1"},
                                                                                  "problem")])
def test_bad_problems_name_the_row_and_field(bad: dict, field: str) -> None:
    with pytest.raises(DataError) as err:
        evaluate(None, PlainTokenizer(), [PROBLEMS[0], bad], "toy", SAMPLING, 1, generator=ScriptedGenerator(ANSWERS))
    assert err.value.row == 2 and err.value.field == field and "toy" in str(err.value)


def test_duplicate_ids_and_empty_benchmarks_are_errors() -> None:
    with pytest.raises(DataError, match="duplicate id 'p1'"):
        evaluate(None, PlainTokenizer(), [PROBLEMS[0], PROBLEMS[0]], "toy", SAMPLING, 1, generator=ScriptedGenerator(ANSWERS))
    with pytest.raises(DataError, match="no problems"):
        evaluate(None, PlainTokenizer(), [], "toy", SAMPLING, 1, generator=ScriptedGenerator(ANSWERS))


# -- benchmark resolution ------------------------------------------------------------------------


def test_builtin_names_from_the_data_dir(benchmarks_dir: Path) -> None:
    for name in BUILTIN:
        bench = load_benchmark(name, data_dir_path=benchmarks_dir, limit=2)
        assert bench.name == name and len(bench.problems) == 2
        assert all(p["id"] and p["problem"] and p["answer"] for p in bench.problems)


# the problem counts of the published sets (aime25: AIME 2025 I+II; amc83: AMC 12 2022 and 2023 as LUFFY has them)
BUILTIN_COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "amc83": 83, "olympiadbench": 675,
                  "minerva": 272, "gsm8k": 1319}


def test_builtin_counts_and_hub_sources(benchmarks_dir: Path) -> None:
    assert set(BUILTIN) == set(BUILTIN_COUNTS) == set(HUB_SOURCES)
    for name, count in BUILTIN_COUNTS.items():
        bench = load_benchmark(name, data_dir_path=benchmarks_dir)
        assert len(bench.problems) == count, name
        assert len({p["id"] for p in bench.problems}) == count and bench.source.endswith(f"{name}.jsonl")
    amc = load_benchmark("amc83", data_dir_path=benchmarks_dir).problems
    assert amc[0]["id"] == "amc83-00" and amc[0]["answer"] == "142"  # the parquet's 142.0, as an integer
    assert HUB_SOURCES["amc83"].answer_fn(142.0) == "142" and HUB_SOURCES["amc83"].answer_fn("2.5") == "2.5"


# -- protocols ---------------------------------------------------------------------------------------


def test_luffy_protocol_settings() -> None:
    """LUFFY's generate_vllm.py: T 0.6, top-p 1.0, 8192 tokens, avg@32 on AIME24/25 and the
    83-problem AMC, one sample on MATH-500, Minerva and OlympiadBench; its table's order."""
    assert (LUFFY.temperature, LUFFY.top_p, LUFFY.max_new_tokens) == (0.6, 1.0, 8192)
    assert {b: LUFFY.k(b) for b in ("aime24", "aime25", "amc83", "math500", "minerva", "olympiadbench")} == \
        {"aime24": 32, "aime25": 32, "amc83": 32, "math500": 1, "minerva": 1, "olympiadbench": 1}
    assert [title for _, title in LUFFY.columns] == ["AIME24", "AIME25", "AMC", "MATH-500", "Minerva", "OlympiadBench"]
    assert [name for name, _ in LUFFY.columns] == ["aime24", "aime25", "amc83", "math500", "minerva", "olympiadbench"]
    # today's protocol, unchanged, stays the default
    assert (DEFAULT.temperature, DEFAULT.top_p, DEFAULT.max_new_tokens) == (0.6, 0.95, 8192)
    assert DEFAULT.k("aime24") == DEFAULT.k("amc23") == DEFAULT.k("aime25") == 32 and DEFAULT.k("math500") == 4
    assert DEFAULT.k("my_file") == 4 and DEFAULT.columns == () and set(PROTOCOLS) == {"default", "luffy"}


def test_eval_config_takes_the_protocol_and_explicit_values_win() -> None:
    cfg = EvalConfig(model="m", benchmarks=("aime25", "math500"), protocol="luffy").validate()
    assert (cfg.temperature, cfg.top_p, cfg.max_new_tokens) == (0.6, 1.0, 8192)
    assert cfg.k("aime25") == 32 and cfg.k("math500") == 1
    default = EvalConfig(model="m", benchmarks=("math500",)).validate()
    assert (default.protocol, default.top_p, default.k("math500")) == ("default", 0.95, 4)
    mine = EvalConfig(model="m", benchmarks=("aime25",), protocol="luffy", top_p=0.9, max_new_tokens=16,
                      num_samples=2).validate()
    assert (mine.temperature, mine.top_p, mine.max_new_tokens, mine.k("aime25")) == (0.6, 0.9, 16, 2)
    with pytest.raises(UserError, match="--protocol deepseek: must be one of default, luffy"):
        EvalConfig(model="m", benchmarks=("aime25",), protocol="deepseek").validate()


def test_data_dir_from_the_environment(benchmarks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGPO_DATA_DIR", str(benchmarks_dir))
    assert len(load_benchmark("AIME24").problems) == 30


def test_any_file_with_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"q": "1+1?", "a": 2}\n{"q": "2+2?", "a": 4}\n')
    bench = load_benchmark(str(path), problem_field="q", answer_field="a")
    assert bench.name == "mine"
    assert bench.problems == [{"id": "row-1", "problem": "1+1?", "answer": "2"},
                              {"id": "row-2", "problem": "2+2?", "answer": "4"}]


def test_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "problem": ["1+1?"], "answer": ["2"]}), tmp_path / "p.parquet")
    assert load_benchmark(str(tmp_path / "p.parquet")).problems == [{"id": "a", "problem": "1+1?", "answer": "2"}]


def test_missing_file_and_field_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_benchmark(str(tmp_path / "nope.jsonl"))
    path = tmp_path / "x.jsonl"
    path.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    with pytest.raises(DataError) as err:
        load_benchmark(str(path))
    assert err.value.source == str(path) and err.value.row == 2 and err.value.field == "answer"


def test_unknown_name_and_offline_hub_say_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("mmlu")
    with pytest.raises(DataError, match="no local gsm8k.jsonl .* 'openai/gsm8k'"):
        load_benchmark("gsm8k", data_dir_path=tmp_path)  # empty dir, and HF_HUB_OFFLINE=1 in tests


# -- the real generator ----------------------------------------------------------------------------


class CountingGenerator:
    """Wraps a real generator and counts generate calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def generate(self, prompts, sampling, n=1):
        self.calls += 1
        return self.inner.generate(prompts, sampling, n)


@pytest.mark.slow
def test_resume_with_the_real_hf_generator(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sgpo.generation.hf import HFGenerator
    from sgpo.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    sampling = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=8, seed=0)
    first = CountingGenerator(HFGenerator(model, tok, batch_size=4))
    r1 = evaluate(model, tok, PROBLEMS, "toy", sampling, 2, generator=first, output_dir=tmp_path, batch_size=4,
                  show_progress=False)
    second = CountingGenerator(HFGenerator(model, tok, batch_size=4))
    r2 = evaluate(model, tok, PROBLEMS, "toy", sampling, 2, generator=second, output_dir=tmp_path, batch_size=4,
                  show_progress=False)
    assert first.calls == 2 and second.calls == 0 and r2 == {**r1, "reused": 3}
    assert r1["mean_length"] <= 8 and r1["avg@k"] == 0.0


def test_prompt_style_from_a_training_runs_config(tmp_path):
    """`sgpo eval --train-config RUN/config.json` evaluates with the run's prompt format."""
    from sgpo.evaluation.runner import prompt_style
    from sgpo.io import DataError
    from sgpo.prompts import PromptStyle
    from sgpo.trainer.config import load_config

    cfg = load_config(None, ["data.path=x", "data.system_prompt=Be brief.", "data.instruction=Box it."])
    cfg.data.fewshot = [{"problem": "What is 40 + 35?", "response": "The answer is \\boxed{75}."}]
    run_config = tmp_path / "config.json"
    run_config.write_text(json.dumps(cfg.to_dict()))
    style = prompt_style(str(run_config))
    assert style == cfg.data.style() and style.examples == (("What is 40 + 35?", "The answer is \\boxed{75}."),)
    assert prompt_style(None) == PromptStyle()
    run_config.write_text(json.dumps({"data": {"fewshot": [{"problem": "q"}]}}))
    with pytest.raises(DataError, match=r"config.json, field 'data.fewshot': data.fewshot\[0\]"):
        prompt_style(str(run_config))
    with pytest.raises(DataError, match="not found"):
        prompt_style(str(tmp_path / "missing.json"))
