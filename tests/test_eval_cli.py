"""`sgpo eval` end to end on the tiny random model, and `sgpo report` over two runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sgpo.cli import main
from sgpo.evaluation.metrics import macro_average, summarize
from sgpo.evaluation.report import comparison_markdown, curve_groups, default_labels, write_report
from sgpo.io import write_json_atomic


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def fake_run(folder: Path, accuracy: dict[str, list[float]], model: str = "m", protocol: str | None = None) -> Path:
    """An eval output dir with results.json built by the real metric functions."""
    benches = {}
    for name, accs in accuracy.items():
        records = [{"scores": [a], "lengths": [5], "finish_reasons": ["stop"], "timed_out": [False]} for a in accs]
        benches[name] = summarize(records, k=1)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "results.json", {"benchmarks": benches, "macro": macro_average(benches, accuracy),
                                                "config": {"model": model, "protocol": protocol}})
    return folder


LUFFY_COLUMNS = "| method | AIME24 | AIME25 | AMC | MATH-500 | Minerva | OlympiadBench | Avg |"


def test_report_writes_the_luffy_table_in_its_column_order(tmp_path: Path) -> None:
    six = {"olympiadbench": [0.0, 1.0], "math500": [1.0, 1.0, 0.0, 0.0], "aime24": [0.5, 0.0], "aime25": [0.0, 0.0],
           "amc83": [0.25, 0.25], "minerva": [1.0]}
    a = fake_run(tmp_path / "a", six, protocol="luffy")
    b = fake_run(tmp_path / "b", {k: v for k, v in six.items() if k != "minerva"}, protocol="luffy")
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--output", str(out), "--labels", "GRPO", "SGPO"]) == 0
    md = (out / "report.md").read_text()
    assert "Protocol `luffy`" in md and LUFFY_COLUMNS in md
    # columns in LUFFY's order whatever the run's order: AIME24 25.0, AIME25 0.0, AMC 25.0, MATH-500 50.0,
    # Minerva 100.0, OlympiadBench 50.0; Avg = (25 + 0 + 25 + 50 + 100 + 50) / 6 = 41.666.. -> 41.7
    assert "| GRPO | 25.0 | 0.0 | 25.0 | 50.0 | 100.0 | 50.0 | 41.7 |" in md
    assert "| SGPO | 25.0 | 0.0 | 25.0 | 50.0 | – | 50.0 | – |" in md  # no Avg without all six columns
    assert md.index(LUFFY_COLUMNS) < md.index("| method | olympiadbench |")  # the paper's table first


def test_report_flags_runs_under_different_protocols(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "a", {"math500": [1.0]}, protocol="luffy")
    b = fake_run(tmp_path / "b", {"math500": [1.0]})  # written before protocols: the default one
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--output", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "different protocols** (a: luffy, b: default): their numbers are not comparable" in md
    assert LUFFY_COLUMNS not in md


def test_report_over_two_runs(tmp_path: Path) -> None:
    base = fake_run(tmp_path / "base" / "eval", {"math500": [1.0, 0.0, 0.0, 0.0], "aime24": [0.0, 0.0]})
    sgpo_dir = fake_run(tmp_path / "sgpo" / "eval", {"math500": [1.0, 1.0, 0.0, 0.0], "gsm8k": [1.0]})
    history = [{"step": s, "loss": 1.0 / s, "p_auto": 0.1 * s, "p_guided": 0.5, "weight/mean": 0.2,
                "distill/kl_mean": 0.01, "reward/auto_mean": 0.3, "lr": 1e-6, "note": "text", "nan": float("nan")}
               for s in range(1, 6)]
    (tmp_path / "sgpo" / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    out = tmp_path / "report"
    assert main(["report", str(base), str(sgpo_dir), "--output", str(out), "--labels", "base", "SGPO"]) == 0
    md = (out / "report.md").read_text()
    assert "| method | math500 | aime24 | gsm8k | macro |" in md
    # math500 avg 1/4 = 25.0; aime24 0 (CI collapses to a point); gsm8k absent for base
    assert "| base | 25.0 [" in md and "| 0.0 [0.0, 0.0] | – |" in md
    assert "| SGPO | 50.0 [" in md
    assert "Training curves: SGPO" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy.png", "training_SGPO_1.png", "training_SGPO_2.png"]  # 7 numeric keys, 4 per figure
    assert all((out / p).stat().st_size > 1000 for p in pngs)


def test_curve_groups_and_labels(tmp_path: Path) -> None:
    history = [{"step": 1, "zeta": 1, "loss": 2.0, "p_auto": 0.5, "flag": True, "s": "x"}]
    assert curve_groups(history, per_figure=2) == [["loss", "p_auto"], ["zeta"]]
    assert default_labels([tmp_path / "a" / "eval", tmp_path / "b" / "eval"]) == ["a/eval", "b/eval"]
    assert default_labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]


def test_comparison_without_ci() -> None:
    res = {"benchmarks": {"x": {"avg@k": 0.5}}, "macro": {}}
    assert comparison_markdown([("r", res)]).splitlines()[-1] == "| r | 50.0 | – |"


def test_report_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert "missing/results.json: file not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="2 labels for 1 run"):
        write_report([tmp_path], tmp_path / "out", labels=["a", "b"])


def test_eval_bad_benchmark_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": "1", "question": "1+1?", "answer": "2"}\n')
    code = main(["eval", "--model", "unused", "--benchmarks", str(bad), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}, row 1, field 'problem'" in err  # checked before any model loads


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("eval", "report"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "--output" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_end_to_end_tiny_model(tiny_model_dir: Path, benchmarks_dir: Path, tmp_path: Path) -> None:
    files = sorted(str(p) for p in benchmarks_dir.glob("*.jsonl"))
    out = tmp_path / "run"
    argv = ["eval", "--model", str(tiny_model_dir), "--benchmarks", *files, "--limit", "2", "--num-samples", "2",
            "--max-new-tokens", "8", "--batch-size", "8", "--output-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    names = sorted(Path(f).stem for f in files)
    assert sorted(results["benchmarks"]) == names and len(names) == 8  # the shared folder: every built-in
    for r in results["benchmarks"].values():
        assert r["n"] == 2 and r["k"] == 2 and r["avg@k"] == 0.0 and r["pass@k"] == 0.0
        assert r["ci95"] == [0.0, 0.0] and 0.0 <= r["truncation_rate"] <= 1.0 and 0 < r["mean_length"] <= 8
    assert results["macro"]["n"] == 16 and _finite(results)
    assert results["config"]["k"] == {n: 2 for n in names}
    records = (out / "records" / "gsm8k.jsonl").read_text().splitlines()
    assert len(records) == 2 and len(json.loads(records[0])["completions"]) == 2
    assert "| gsm8k | 2 | 2 | 0.0 |" in (out / "results.md").read_text()
    before = {p.name: p.read_text() for p in (out / "records").iterdir()}
    assert main(argv) == 0  # resumes: nothing generated, nothing appended
    assert {p.name: p.read_text() for p in (out / "records").iterdir()} == before


@pytest.mark.slow
def test_luffy_protocol_end_to_end_tiny_model(tiny_model_dir: Path, benchmarks_dir: Path, tmp_path: Path) -> None:
    """`sgpo eval --protocol luffy` on the six benchmarks (two problems each, 8 new tokens on CPU),
    then `sgpo report`: the protocol's k per benchmark and sampling, the six columns and Avg."""
    out = tmp_path / "run"
    argv = ["eval", "--protocol", "luffy", "--model", str(tiny_model_dir), "--benchmarks",
            "aime24,aime25,amc83,math500,minerva,olympiadbench", "--data-dir", str(benchmarks_dir), "--limit", "2",
            "--max-new-tokens", "8", "--batch-size", "64", "--output-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    cfg = results["config"]
    assert (cfg["protocol"], cfg["temperature"], cfg["top_p"], cfg["max_new_tokens"]) == ("luffy", 0.6, 1.0, 8)
    assert cfg["k"] == {"aime24": 32, "aime25": 32, "amc83": 32, "math500": 1, "minerva": 1, "olympiadbench": 1}
    assert all(r["n"] == 2 for r in results["benchmarks"].values()) and results["macro"]["benchmarks"] == 6
    lines = (out / "records" / "aime25.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(json.loads(lines[0])["completions"]) == 32
    assert LUFFY_COLUMNS in (out / "results.md").read_text()
    report = tmp_path / "report"
    assert main(["report", str(out), "--output", str(report), "--labels", "tiny"]) == 0
    md = (report / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| tiny |") and "[" not in line)
    assert LUFFY_COLUMNS in md and len(row.strip("|").split("|")) == 8  # label, six columns, Avg
    avg = sum(results["benchmarks"][b]["avg@k"] for b in ("aime24", "aime25", "amc83", "math500", "minerva",
                                                          "olympiadbench")) / 6
    assert row.endswith(f"| {100 * avg:.1f} |")


@pytest.mark.parametrize("recipe", ["qwen2.5-7b-instruct.yaml", "llama-3.1-8b-instruct.yaml"])
def test_the_7b_8b_recipes_evaluate_with_the_luffy_protocol(recipe: str) -> None:
    """The evaluation command in each shipped GPU recipe's header parses and selects LUFFY's
    protocol on its six benchmarks."""
    from sgpo.cli import build_parser

    lines = (Path(__file__).resolve().parents[1] / "configs" / recipe).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   sgpo eval "))
    command = ""
    for line in lines[start:]:
        command += line.lstrip("# ").rstrip("\\ ") + " "
        if not line.rstrip().endswith("\\"):
            break
    args = build_parser().parse_args(command.split()[1:])
    assert args.protocol == "luffy" and args.backend == "vllm" and args.train_config
    assert args.benchmarks == ["aime24,aime25,amc83,math500,minerva,olympiadbench"]
